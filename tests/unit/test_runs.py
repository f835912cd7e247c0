"""sidecar.runs: when a run is sealed, unsealed and tagged, step by step.

The stage is driven without its thread (``process``) on a fake clock; its ports are
small fakes: the detector's ledger is a dict the test edits, VERIFY requests are
recorded, the store is tests.support.fakes.FakeStore. RunLogs are real files (the stage
reads them with the shared stable read); their documents are the last versions real
runnable runs wrote (tests/fixtures/runlog-versions-0.50.json).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tests.support.fakes import FakeClock, FakeStore, denied, opaque_etag, unreachable

from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import PermanentError
from runlog_relay.layout import Layout, encode_body
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar import runs
from runlog_relay.sidecar.runs import STATUS_TAG, RunSealer, Seal
from runlog_relay.sidecar.types import (
    FileGone,
    FileVersion,
    Listed,
    ListingPurpose,
    RunLedger,
    Uploaded,
)
from runlog_relay.stableread import read_stable

FIXTURE = Path(__file__).parent.parent / "fixtures" / "runlog-versions-0.50.json"
VERSIONS = json.loads(FIXTURE.read_text())
FINAL = VERSIONS["success"][-1]  # status SUCCESS, success step done
NOT_FINAL = VERSIONS["success"][-2]  # status SUCCESS, success step still PROCESSING
FAILED = VERSIONS["failed"][-1]


@dataclass
class Observer:
    events: list[tuple[str, Any]] = field(default_factory=list)

    def run_evaluated(self, run_id: str, status: str | None, mtime: float, first: bool) -> None:
        self.events.append(("evaluated", (run_id, status, first)))

    def run_sealed(self, seal: Seal) -> None:
        self.events.append(("sealed", seal))

    def run_unsealed(self, run_id: str) -> None:
        self.events.append(("unsealed", run_id))

    def run_gone(self, run_id: str) -> None:
        self.events.append(("gone", run_id))

    def seals(self) -> list[Seal]:
        return [event for kind, event in self.events if kind == "sealed"]


class Harness:
    """A run stage over ``root`` with a ledger the test controls."""

    def __init__(
        self,
        root: Path,
        *,
        layout: Layout = Layout.CHUNKED,
        tag: bool = False,
        lister: Callable[[Harness, str], None] | None = None,
    ) -> None:
        self.root = root
        self.layout = layout
        self.settings = SidecarSettings(source=root, layout=layout, tag_sealed_runs=tag)
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry)
        self.store = FakeStore()
        self.ledgers: dict[str, RunLedger] = {}
        self.verify_requests: list[str] = []
        self.observer = Observer()
        self.sealer = RunSealer(
            lambda: self.settings,
            self.metrics.runs,
            ledger=self.ledgers.get,
            request_verify=(
                self.verify_requests.append if lister is None else lambda r: lister(self, r)
            ),
            store=lambda: self.store,
            observers=[self.observer],
            clock=self.clock,
        )

    # ------------------------------------------------------------------ files
    def relative(self, run_id: str, name: str = "RunLog") -> str:
        if self.layout is Layout.SINGLE:
            return f"{run_id}.json"
        return f"{run_id}/{name}.json"

    def key(self, run_id: str, name: str = "RunLog") -> str:
        if self.layout is Layout.SINGLE:
            return f"{run_id}/{run_id}.json"
        return f"{run_id}/{name}"

    def write(
        self, run_id: str, document: object, name: str = "RunLog", *, new: bool = True
    ) -> str:
        """Write a file, tell the stage (as the detector would), return its ETag."""
        path = self.root / self.relative(run_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
        etag = read_stable(path, root=self.root, layout=self.layout).etag
        self.sealer.process(
            FileVersion(run_id, self.relative(run_id, name), etag, True, self.clock())
        )
        return etag

    def mirrored(self, run_id: str, **unmirrored: str) -> RunLedger:
        """The ledger says every file of the run on disk is in the bucket; the fake bucket
        holds exactly those versions."""
        files: dict[str, tuple[str, str | None]] = {}
        names = (
            [self.relative(run_id)]
            if self.layout is Layout.SINGLE
            else [f"{run_id}/{p.name}" for p in sorted((self.root / run_id).glob("*.json"))]
        )
        for relative in names:
            etag = read_stable(self.root / relative, root=self.root, layout=self.layout).etag
            key = self.key(run_id, Path(relative).stem)
            files[relative] = (key, etag)
            self.store.objects[key] = (b"{}", etag)
        ledger = RunLedger(run_id, files, dict(unmirrored), newest_mtime_ns=10**18)
        self.ledgers[run_id] = ledger
        return ledger

    def listing(self, run_id: str) -> Listed:
        objects = {k: e for k, (_, e) in self.store.objects.items() if k.startswith(f"{run_id}/")}
        return Listed(frozenset({run_id}), objects, ListingPurpose.VERIFY)

    def settle(self) -> None:
        self.clock.advance(runs.SEAL_SETTLE_SECONDS)
        self.sealer.process()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path / "logs")


def test_a_final_mirrored_run_is_verified_once_then_sealed(harness: Harness) -> None:
    harness.write("r1", {"branch": 1}, "BranchLog-map.a")
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    harness.sealer.process()
    assert harness.verify_requests == []  # writes come in bursts: wait for the settle time
    harness.clock.advance(0.4)
    harness.settle()
    assert harness.verify_requests == ["r1"]
    harness.sealer.process()
    assert harness.verify_requests == ["r1"]  # one listing per seal
    harness.clock.advance(0.25)
    harness.sealer.process(harness.listing("r1"))
    (seal,) = harness.observer.seals()
    assert (seal.run_id, seal.status) == ("r1", "SUCCESS")
    assert set(seal.files) == {"r1/RunLog.json", "r1/BranchLog-map.a.json"}
    assert seal.clock_start == seal.sealed_at  # written while watched: retention counts from now
    assert harness.value("runlog_relay_runs_sealed_total", status="SUCCESS") == 1
    assert harness.value("runlog_relay_sealed_runs") == 1
    # Final status seen → sealed, on the stage's clock.
    assert harness.value("runlog_relay_run_seal_lag_seconds_sum") == pytest.approx(1.65)
    assert ("evaluated", ("r1", "SUCCESS", True)) in harness.observer.events


def test_a_run_complete_at_start_up_counts_from_its_last_write(harness: Harness) -> None:
    path = harness.root / "r1" / "RunLog.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(FINAL))
    etag = read_stable(path, root=harness.root).etag
    # The detector's first read: already in the bucket (nothing new was written).
    harness.sealer.process(FileVersion("r1", "r1/RunLog.json", etag, False, harness.clock()))
    ledger = harness.mirrored("r1")
    harness.settle()
    harness.sealer.process(harness.listing("r1"))
    (seal,) = harness.observer.seals()
    assert seal.clock_start == ledger.newest_mtime_ns / 1e9 < seal.sealed_at


def test_a_run_that_is_not_final_is_not_listed(harness: Harness) -> None:
    harness.write("r1", NOT_FINAL)
    harness.mirrored("r1")
    harness.settle()
    assert harness.verify_requests == []
    assert ("evaluated", ("r1", None, True)) in harness.observer.events
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    harness.settle()
    assert harness.verify_requests == ["r1"]
    assert ("evaluated", ("r1", "SUCCESS", False)) in harness.observer.events


def test_a_listing_that_misses_a_file_does_not_seal(harness: Harness) -> None:
    harness.write("r1", {"b": 1}, "BranchLog-x")
    harness.write("r1", FAILED)
    harness.mirrored("r1")
    harness.settle()
    listing = harness.listing("r1")
    stale = dict(listing.objects)
    stale["r1/BranchLog-x"] = "0" * 32  # an older version landed late
    harness.sealer.process(Listed(listing.run_ids, stale, ListingPurpose.VERIFY))
    assert harness.observer.seals() == []
    # The detector uploads the file again; the next look asks for a new listing.
    harness.clock.advance(runs.BLOCKED_RECHECK_BASE)
    harness.sealer.process()
    assert harness.verify_requests == ["r1", "r1"]
    harness.sealer.process(harness.listing("r1"))
    assert [s.status for s in harness.observer.seals()] == ["FAIL"]


def test_pending_torn_or_doubtful_files_block_the_seal(harness: Harness) -> None:
    harness.write("r1", {"b": 1}, "BranchLog-x")
    harness.write("r1", FINAL)
    ledger = harness.mirrored("r1", **{"r1/BranchLog-x.json": "upload not finished"})
    harness.settle()
    assert harness.verify_requests == []
    # The upload's answer brings the run back at once.
    harness.mirrored("r1")
    harness.sealer.process(Uploaded(relative="r1/BranchLog-x.json", etag="e"))
    assert harness.verify_requests == ["r1"]
    # A VERIFY listing that arrives while the ledger doubts an upload does not seal.
    harness.ledgers["r1"] = RunLedger("r1", ledger.files, {}, 0, doubtful=True)
    harness.sealer.process(harness.listing("r1"))
    assert harness.observer.seals() == []
    # A torn file that becomes complete with the same content sends no event: the run
    # is looked at again on a timer.
    harness.ledgers["r1"] = RunLedger("r1", ledger.files, {"r1/BranchLog-x.json": "torn"}, 0)
    harness.clock.advance(runs.BLOCKED_RECHECK_BASE)
    harness.sealer.process()
    assert harness.verify_requests == ["r1"]
    harness.mirrored("r1")
    harness.clock.advance(runs.BLOCKED_RECHECK_BASE * 2)
    harness.sealer.process()
    assert harness.verify_requests == ["r1", "r1"]


def test_a_run_written_again_is_unsealed_then_sealed_again(harness: Harness) -> None:
    harness.write("r1", FAILED)
    harness.mirrored("r1")
    harness.settle()
    harness.sealer.process(harness.listing("r1"))
    first = harness.observer.seals()[-1]
    # runnable's retry rewrites the RunLog (a step PROCESSING), then finishes it.
    harness.write("r1", VERSIONS["retried"][0])
    assert ("unsealed", "r1") in harness.observer.events
    assert harness.value("runlog_relay_runs_unsealed_total") == 1
    assert harness.value("runlog_relay_sealed_runs") == 0
    harness.mirrored("r1")
    harness.settle()
    assert harness.verify_requests == ["r1"]  # not final: no listing for the rewrite
    harness.write("r1", VERSIONS["retried"][-1])
    harness.mirrored("r1")
    harness.settle()
    harness.sealer.process(harness.listing("r1"))
    second = harness.observer.seals()[-1]
    assert (first.status, second.status) == ("FAIL", "SUCCESS")
    assert second.serial > first.serial
    assert harness.value("runlog_relay_runs_sealed_total", status="SUCCESS") == 1
    assert harness.value("runlog_relay_runs_sealed_total", status="FAIL") == 1


def test_the_status_read_must_be_the_version_the_detector_has(harness: Harness) -> None:
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    # runnable rewrites the file before the stage reads it: the detector has not seen
    # this version, so its status does not count yet.
    (harness.root / "r1" / "RunLog.json").write_text(json.dumps(NOT_FINAL))
    harness.settle()
    assert harness.verify_requests == [] and not harness.observer.events


def test_each_new_version_restarts_the_settle_time(harness: Harness) -> None:
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    harness.clock.advance(0.6)
    harness.write("r1", {"b": 1}, "BranchLog-late")  # still writing
    harness.mirrored("r1")
    harness.clock.advance(0.5)  # the first version's timer is due, the second's is not
    harness.sealer.process()
    assert harness.verify_requests == []
    harness.clock.advance(0.5)
    harness.sealer.process()
    assert harness.verify_requests == ["r1"]


def opaque(harness: Harness, run_id: str, *, body: bytes | None = None) -> None:
    """The bucket holds the run's files as SSE-KMS shows them: ETags that are not MD5s."""
    for relative, (key, etag) in harness.ledgers[run_id].files.items():
        data = (
            body
            if body is not None
            else encode_body((harness.root / relative).read_bytes(), harness.layout)
        )
        harness.store.objects[key] = (data, opaque_etag(str(etag)))


def test_a_bucket_whose_etags_are_not_md5s_is_confirmed_by_the_stored_md5(
    harness: Harness,
) -> None:
    harness.write("r1", {"b": 1}, "BranchLog-x")
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    opaque(harness, "r1")
    harness.settle()
    harness.sealer.process(harness.listing("r1"))
    assert [s.run_id for s in harness.observer.seals()] == ["r1"]
    assert sorted(harness.store.heads) == ["r1/BranchLog-x", "r1/RunLog"]  # one HEAD each


def test_a_bucket_that_keeps_disagreeing_is_listed_less_and_less_often(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    opaque(harness, "r1", body=b'{"another": "version"}')
    harness.settle()
    waits = []
    with caplog.at_level(logging.WARNING, logger="runlog_relay.sidecar.runs"):
        for _ in range(7):
            assert harness.verify_requests
            harness.verify_requests.clear()
            harness.sealer.process(harness.listing("r1"))
            start = harness.clock()
            while not harness.verify_requests:
                harness.clock.advance(0.25)
                harness.sealer.process()
            waits.append(harness.clock() - start)
    assert harness.observer.seals() == []
    assert waits == sorted(waits) and waits[-1] >= 8 * waits[0], waits
    assert len([r for r in caplog.records if "did not hold every file" in r.message]) == 1


def test_single_layout_reads_the_status_from_the_run_file(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "logs", layout=Layout.SINGLE)
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    harness.settle()
    harness.sealer.process(harness.listing("r1"))
    assert [(s.run_id, s.status) for s in harness.observer.seals()] == [("r1", "SUCCESS")]


def test_tagging_tags_every_object_of_the_run(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "logs", tag=True)
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    harness.store.objects["r1/BranchLog-deleted-locally"] = (b"{}", "e")
    harness.store.objects["r10/RunLog"] = (b"{}", "e")  # another run: same prefix start
    harness.settle()
    harness.sealer.process(harness.listing("r1"))
    assert harness.store.tags == {
        "r1/RunLog": {STATUS_TAG: "SUCCESS"},
        "r1/BranchLog-deleted-locally": {STATUS_TAG: "SUCCESS"},
    }
    assert harness.value("runlog_relay_object_tagging_total", result="success") == 2
    # The detector repairs an object of the sealed run: the new PUT has no tags.
    del harness.store.tags["r1/RunLog"]
    harness.sealer.process(Uploaded(relative="r1/RunLog.json", etag="e"))
    assert harness.store.tags["r1/RunLog"] == {STATUS_TAG: "SUCCESS"}


def test_a_server_without_tagging_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(tmp_path / "logs", tag=True)
    harness.store.fail_tags.append(PermanentError("tagging: NotImplemented", code="NotImplemented"))
    for run_id in ("r1", "r2"):
        harness.write(run_id, FINAL)
        harness.mirrored(run_id)
    with caplog.at_level(logging.INFO, logger="runlog_relay.sidecar.runs"):
        harness.settle()
        for run_id in ("r1", "r2"):
            harness.sealer.process(harness.listing(run_id))
    assert len(harness.observer.seals()) == 2  # sealed all the same
    assert harness.store.tags == {}
    warnings = [r for r in caplog.records if "does not support object tagging" in r.message]
    assert len(warnings) == 1
    assert harness.value("runlog_relay_object_tagging_total", result="unsupported") == 2


def test_refused_or_failing_tagging_never_blocks_the_seal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "backoff_delay", lambda *args, **kwargs: 0.0)
    harness = Harness(tmp_path / "logs", tag=True)
    harness.write("r1", {"b": 1}, "BranchLog-x")
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    # RunLog: refused; BranchLog-x: two transient failures, then it works.
    harness.store.fail_tags += [denied("tagging"), unreachable("tagging"), unreachable("tagging")]
    harness.settle()
    with caplog.at_level(logging.ERROR, logger="runlog_relay.sidecar.runs"):
        harness.sealer.process(harness.listing("r1"))
    assert len(harness.observer.seals()) == 1
    assert harness.store.tags == {"r1/RunLog": {STATUS_TAG: "SUCCESS"}}
    assert harness.value("runlog_relay_object_tagging_total", result="failure") == 1
    assert any("s3:PutObjectTagging" in r.message for r in caplog.records)


def test_a_vanished_run_is_forgotten(harness: Harness) -> None:
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    harness.settle()
    harness.sealer.process(harness.listing("r1"))
    harness.sealer.process(FileGone("r1", "r1/RunLog.json", run_gone=True))
    assert ("gone", "r1") in harness.observer.events
    assert harness.value("runlog_relay_sealed_runs") == 0
    assert harness.sealer.sealed_runs() == {}


def test_a_run_log_too_big_to_parse_is_not_sealed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runs, "STATUS_READ_LIMIT", 64)
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    with caplog.at_level(logging.WARNING, logger="runlog_relay.sidecar.runs"):
        harness.settle()
    assert harness.verify_requests == []
    assert any("its status is not read" in r.message for r in caplog.records)


def test_flush_seals_at_once_and_waits_for_the_listing(tmp_path: Path) -> None:
    def lister(harness: Harness, run_id: str) -> None:
        harness.verify_requests.append(run_id)
        # The lister answers from its own thread, as in the pipeline.
        threading.Timer(0.05, harness.sealer.post, [harness.listing(run_id)]).start()

    harness = Harness(tmp_path / "logs", lister=lister)
    harness.write("r1", FINAL)
    harness.mirrored("r1")
    harness.write("r2", NOT_FINAL)
    harness.mirrored("r2")

    harness.sealer.start()
    try:
        assert harness.sealer.flush(5.0)  # no settle time, and r2 is not final
    finally:
        harness.sealer.stop()
    assert [s.run_id for s in harness.observer.seals()] == ["r1"]


def test_the_stage_is_alive_from_before_it_starts_until_its_thread_dies(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert harness.sealer.alive  # the health server answers while the pipeline starts
    stopped = Harness(harness.root.parent / "other")
    stopped.sealer.start()
    assert stopped.sealer.alive
    stopped.sealer.stop()
    assert stopped.sealer.alive  # stopped on purpose (the drain): not a dead stage

    def dies(message: object = None) -> None:
        raise SystemExit  # what no `except Exception` catches: the thread ends

    monkeypatch.setattr(harness.sealer, "process", dies)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # expected: quiet
    harness.sealer.start()
    harness.sealer.post(FileVersion("r1", "r1/RunLog.json", "e", True, 0.0))
    harness.sealer._thread.join(5)
    assert not harness.sealer.alive
