"""sidecar.pipeline: start, drain and report, with a fake StorePort and a fake clock.

The stages run in their real threads over a temporary folder; the store is an
in-memory fake that can fail or block on purpose, and the queue's delays run on a fake
clock that never moves unless a test moves it: whatever is retried during a drain was
retried because the drain made it go, not because time passed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tests.support.fakes import FakeClock, FakeStore, denied, unreachable
from tests.support.files import write_json
from tests.support.waiting import wait_until

from runlog_relay.config.models import SyncSpec
from runlog_relay.config.settings import SidecarSettings
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.pipeline import Pipeline


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


class Sidecar:
    def __init__(
        self,
        root: Path,
        store: FakeStore,
        *,
        once: bool = False,
        bucket: str = "runnable",
        **sync: Any,
    ) -> None:
        self.root = root
        self.store = store
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        sync.setdefault("drain_timeout_seconds", 5.0)
        self.settings = SidecarSettings(source=root, bucket=bucket, sync=SyncSpec(**sync))
        self.pipeline = Pipeline(
            self.settings,
            SidecarMetrics(self.registry),
            lambda settings: store,
            once=once,
            clock=self.clock,
        )

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "run_logs"
    path.mkdir()
    return path


@pytest.fixture
def started() -> Iterator[list[Sidecar]]:
    sidecars: list[Sidecar] = []
    yield sidecars
    for sidecar in sidecars:  # never leave threads behind a failed test
        sidecar.pipeline.detector.abort.set()
        sidecar.pipeline.queue.close()
        sidecar.pipeline.lister.stop()
        if sidecar.pipeline.watcher is not None:
            sidecar.pipeline.watcher.stop()


def start(sidecar: Sidecar, started: list[Sidecar]) -> Sidecar:
    started.append(sidecar)
    sidecar.pipeline.start()
    return sidecar


def test_once_mirrors_the_folder_and_reports_complete(root: Path) -> None:
    bodies = {
        f"run-{run}/BranchLog-{index}": write_json(
            root / f"run-{run}" / f"BranchLog-{index}.json", {"run": run, "i": index}
        )
        for run in range(3)
        for index in range(4)
    }
    store = FakeStore()
    report = Sidecar(root, store, once=True).pipeline.run_once(timeout=10)
    assert report.complete, report.lines()
    assert {key: store.body(key) for key in bodies} == bodies
    assert sorted(store.lists) == ["run-0/", "run-1/", "run-2/"]  # per run, not the bucket


def test_once_with_unrecorded_metrics_mirrors_the_folder_too(root: Path) -> None:
    """``sidecar --once`` serves no /metrics, so its metrics record nowhere
    (``SidecarMetrics(None)``, no prometheus_client): the same sync, to the same result."""
    bodies = {
        f"run-{run}/BranchLog-{index}": write_json(
            root / f"run-{run}" / f"BranchLog-{index}.json", {"run": run, "i": index}
        )
        for run in range(2)
        for index in range(3)
    }
    write_json(root / "run-0" / "RunLog.json", {"run_id": "run-0", "status": "SUCCESS"})
    store = FakeStore()
    settings = SidecarSettings(source=root, sync={"drain_timeout_seconds": 5.0})
    pipeline = Pipeline(settings, SidecarMetrics(None), lambda settings: store, once=True)
    report = pipeline.run_once(timeout=10)
    assert report.complete, report.lines()
    assert {key: store.body(key) for key in bodies} == bodies


def test_a_drain_that_runs_out_names_every_file_not_uploaded(
    root: Path, started: list[Sidecar]
) -> None:
    for index in range(20):
        write_json(root / "r" / f"BranchLog-{index}.json", {"i": index})
    store = FakeStore(block_puts=threading.Event())
    store.block_puts.set()  # the endpoint accepts connections and never answers
    sidecar = start(Sidecar(root, store, max_pending_bytes=1 << 20), started)
    wait_until(lambda: store.puts, what="an upload under way")
    report = sidecar.pipeline.shutdown(drain_timeout=0.5)
    assert not report.complete
    assert sorted(report.files) == sorted(f"r/BranchLog-{index}.json" for index in range(20))
    assert any("drain budget of 0s ran out while uploading" in line for line in report.lines())
    store.block_puts.clear()


def test_files_behind_back_pressure_are_named_too(root: Path, started: list[Sidecar]) -> None:
    pad = "x" * 200_000  # 10 files fill the 1 MiB budget: the rest wait behind it
    for index in range(60):
        write_json(root / "r" / f"BranchLog-{index}.json", {"i": index, "pad": pad})
    store = FakeStore(block_puts=threading.Event())
    store.block_puts.set()
    sidecar = start(Sidecar(root, store, max_pending_bytes=1 << 20, concurrency=1), started)
    wait_until(lambda: store.puts, what="an upload under way")
    report = sidecar.pipeline.shutdown(drain_timeout=0.3)
    assert len(report.files) == 60, report.lines()
    reasons = set(report.files.values())
    assert reasons <= {"upload not finished", "not read yet"}
    assert "not read yet" in reasons  # the detector was still waiting for room
    store.block_puts.clear()


def test_when_the_bucket_was_never_reachable_every_file_is_named(
    root: Path, started: list[Sidecar]
) -> None:
    for run in ("a", "b", "c"):
        for name in ("RunLog", "BranchLog-x"):
            write_json(root / run / f"{name}.json", {"run": run})
    store = FakeStore(fail_lists=[unreachable("listing") for _ in range(10_000)])
    sidecar = start(Sidecar(root, store), started)
    wait_until(lambda: sidecar.value("runlog_relay_files_tracked") == 6, what="files tracked")
    assert sidecar.value("runlog_relay_pending_files") == 6  # not "nothing to do"
    report = sidecar.pipeline.shutdown(drain_timeout=0.5)
    assert len(report.files) == 6
    assert set(report.files.values()) == {"not compared with the bucket (its run was never listed)"}
    assert "unreachable" in "\n".join(report.lines())


def test_a_first_listing_that_failed_is_retried_within_the_drain(
    root: Path, started: list[Sidecar]
) -> None:
    body = write_json(root / "r" / "RunLog.json", {"a": 1})
    store = FakeStore(fail_lists=[unreachable("listing")])
    sidecar = start(Sidecar(root, store), started)
    wait_until(lambda: store.lists, what="the first listing (which fails)")
    # The lister now waits on its backoff; the drain must not wait for it to end.
    report = sidecar.pipeline.shutdown(drain_timeout=5)
    assert report.complete, report.lines()
    assert store.body("r/RunLog") == body


def test_a_permanent_error_fixed_just_before_the_drain_is_retried_at_once(
    root: Path, started: list[Sidecar]
) -> None:
    body = write_json(root / "r" / "RunLog.json", {"a": 1})
    store = FakeStore()
    store.fail_put_for = lambda key: denied()
    sidecar = start(Sidecar(root, store, permanent_error_retry_seconds=3600.0), started)
    wait_until(lambda: not sidecar.pipeline.store_health.ok, what="AccessDenied")
    store.fail_put_for = lambda key: None  # someone fixed the bucket policy
    started_at = time.monotonic()
    report = sidecar.pipeline.shutdown(drain_timeout=5)
    assert report.complete, report.lines()
    assert store.body("r/RunLog") == body
    assert time.monotonic() - started_at < 4  # not after a 30 s (here 3600 s) hold


def test_transient_failures_in_backoff_are_retried_when_the_drain_starts(
    root: Path, started: list[Sidecar]
) -> None:
    body = write_json(root / "r" / "RunLog.json", {"a": 1})
    store = FakeStore(fail_puts=[unreachable()])
    sidecar = start(Sidecar(root, store), started)
    wait_until(lambda: sidecar.value("runlog_relay_retries_total") == 1, what="a failure")
    # The fake clock never moves: only the drain can end the backoff.
    report = sidecar.pipeline.shutdown(drain_timeout=5)
    assert report.complete, report.lines()
    assert store.body("r/RunLog") == body


class LateLandingStore(FakeStore):
    """The first PUT of each key times out on the client, but the server still applies it
    after the next PUT of that key: the bucket ends with the older version."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, bytes] = {}

    def put(self, key: str, body: Any, *, length: int | None = None, md5: str | None = None) -> str:
        if key not in self.held and key not in self.objects:
            self.held[key] = body
            raise unreachable()
        etag = super().put(key, body, length=length, md5=md5)
        late = self.held.pop(key, None)
        if late is not None:
            super().put(key, late)  # the stale request lands now
            self.puts.pop()
        return etag


def test_a_stale_put_that_landed_late_is_found_and_fixed_before_complete(
    root: Path, started: list[Sidecar]
) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"v": 1})
    store = LateLandingStore()
    sidecar = start(Sidecar(root, store), started)
    wait_until(lambda: store.held, what="the first PUT timed out")
    v2 = write_json(path, {"v": 2})  # the writer moved on; v1's PUT is still travelling
    # v2 replaces v1 in the queue (v1 waits on its backoff; the fake clock never moves).
    wait_until(lambda: sidecar.value("runlog_relay_fs_versions_total") == 2, what="v2 queued")
    report = sidecar.pipeline.shutdown(drain_timeout=5)
    assert report.complete, report.lines()
    assert store.body("r/RunLog") == v2  # confirmed against the bucket, not assumed
    assert sidecar.value("runlog_relay_bucket_mismatches_total") == 1


def test_once_gives_up_without_progress_and_says_what_ran_out(root: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    store = FakeStore(fail_lists=[unreachable("listing") for _ in range(10_000)])
    report = Sidecar(root, store, once=True).pipeline.run_once(timeout=0.5)
    assert not report.complete
    assert any(
        "gave up after 0s without progress while listing the bucket" in line
        for line in report.lines()
    ), report.lines()


def test_once_over_an_empty_folder_is_not_complete_when_the_bucket_never_answered(
    root: Path,
) -> None:
    # Nothing local to upload, but "the bucket mirrors the folder" is still a fact to
    # check: a budget that ran out before the bucket answered is no mirror.
    root.mkdir(parents=True, exist_ok=True)
    store = FakeStore(fail_lists=[unreachable("listing") for _ in range(10_000)])
    report = Sidecar(root, store, once=True).pipeline.run_once(timeout=0.5)
    assert report.files == {}
    assert not report.complete
    lines = "\n".join(report.lines())
    assert "gave up" in lines and "unreachable" in lines, lines


def test_files_whose_keys_are_too_long_with_the_prefix_are_never_sent_and_named(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 600 + 1 + 200 + 1 + 250 bytes: every component is fine, the whole key is not. S3
    # would answer KeyTooLongError, permanent, holding the queue for --permanent-retry.
    prefix, run_id, name = "p" * 600, "r" * 200, "B" * 250
    body = write_json(root / run_id / "RunLog.json", {"a": 1})
    write_json(root / run_id / f"{name}.json", {"long": 1})
    store = FakeStore()
    sidecar = Sidecar(root, store, once=True, bucket=f"runnable/{prefix}")
    report = sidecar.pipeline.run_once(timeout=10)
    assert store.body(f"{run_id}/RunLog") == body
    assert store.body(f"{run_id}/{name}") is None  # never sent
    assert report.files == {
        f"{run_id}/{name}.json": "key too long: its object key with the prefix is 1052 bytes,"
        " over S3's limit of 1024 (never uploaded)"
    }
    assert sidecar.value("runlog_relay_skipped_files_total", reason="key_too_long") == 1
    assert caplog.text.count("over S3's limit of 1024") == 1  # warned once


def test_once_names_run_log_files_whose_names_cannot_be_keys(root: Path) -> None:
    body = write_json(root / "ok" / "RunLog.json", {"a": 1})
    write_json(root / "run\u200b1" / "RunLog.json", {"hidden": 1})  # a zero-width space
    write_json(root / "ok" / "BranchLog-x\t.json", {"tab": 1})
    store = FakeStore()
    report = Sidecar(root, store, once=True).pipeline.run_once(timeout=10)
    assert store.body("ok/RunLog") == body
    assert not report.complete
    assert set(report.files) == {"run\u200b1/RunLog.json", "ok/BranchLog-x\t.json"}
    assert all(why.startswith("unsafe name: ") for why in report.files.values()), report.files
    # Renamed to a safe name: the next pass is complete.
    (root / "run\u200b1").rename(root / "run1")
    (root / "ok" / "BranchLog-x\t.json").rename(root / "ok" / "BranchLog-x.json")
    assert Sidecar(root, store, once=True).pipeline.run_once(timeout=10).complete


def test_once_reports_a_permanent_error_at_once(root: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    store = FakeStore()
    store.fail_put_for = lambda key: denied()
    started_at = time.monotonic()
    report = Sidecar(root, store, once=True).pipeline.run_once(timeout=60)
    assert time.monotonic() - started_at < 10
    assert report.files == {"r/RunLog.json": f"not uploaded: {denied()}"}


def test_a_missing_source_is_not_a_complete_mirror(tmp_path: Path, started: list[Sidecar]) -> None:
    sidecar = start(Sidecar(tmp_path / "misspelt", FakeStore()), started)
    report = sidecar.pipeline.shutdown(drain_timeout=0.3)
    assert not report.complete
    assert report.lines() == [
        f"source folder {tmp_path / 'misspelt'} does not exist: nothing was mirrored"
    ]


def test_a_permanent_error_that_fails_again_in_the_drain_ends_it_early(
    root: Path, started: list[Sidecar]
) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    store = FakeStore()
    store.fail_put_for = lambda key: denied()
    sidecar = start(Sidecar(root, store, permanent_error_retry_seconds=3600.0), started)
    wait_until(lambda: not sidecar.pipeline.store_health.ok, what="AccessDenied")
    started_at = time.monotonic()
    report = sidecar.pipeline.shutdown(drain_timeout=30)
    assert time.monotonic() - started_at < 10  # its retry failed too: no point waiting 30 s
    assert report.files == {"r/RunLog.json": "upload not finished"}
    assert any("gave up: uploading" in line and "AccessDenied" in line for line in report.lines())


def test_a_restart_on_a_bucket_with_opaque_etags_confirms_with_one_head_each(
    root: Path,
) -> None:
    """SSE-KMS/SSE-C buckets list ETags that are not MD5s: every listed ETag differs from
    the local one, yet nothing has changed. The stored MD5 confirms it, one HEAD per object
    and no PUT; a file that did change is still uploaded."""
    for index in range(5):
        write_json(root / "r" / f"BranchLog-{index}.json", {"i": index})
    store = FakeStore(opaque_etags=True)
    first = Sidecar(root, store, once=True).pipeline.run_once(timeout=10)
    assert first.complete, first.lines()
    assert len(store.puts) == 5 and store.heads == []  # new files: nothing to confirm
    store.puts.clear()
    changed = write_json(root / "r" / "BranchLog-0.json", {"i": "changed"})
    again = Sidecar(root, store, once=True).pipeline.run_once(timeout=10)
    assert again.complete, again.lines()
    assert store.puts == ["r/BranchLog-0"]
    assert store.body("r/BranchLog-0") == changed
    assert sorted(store.heads) == sorted(f"r/BranchLog-{index}" for index in range(5))


def test_a_failed_confirmation_uploads_rather_than_assumes(root: Path) -> None:
    body = write_json(root / "r" / "RunLog.json", {"a": 1})
    store = FakeStore(opaque_etags=True)
    assert Sidecar(root, store, once=True).pipeline.run_once(timeout=10).complete
    store.puts.clear()
    store.fail_heads.append(unreachable("reading the metadata"))
    report = Sidecar(root, store, once=True).pipeline.run_once(timeout=10)
    assert report.complete, report.lines()
    assert store.puts == ["r/RunLog"] and store.body("r/RunLog") == body


def test_where_a_listed_etag_matched_an_md5_a_changed_file_costs_no_head(
    root: Path, started: list[Sidecar]
) -> None:
    for index in range(3):
        write_json(root / "r" / f"BranchLog-{index}.json", {"i": index})
    store = FakeStore()
    assert Sidecar(root, store, once=True).pipeline.run_once(timeout=10).complete
    store.puts.clear()
    sidecar = start(Sidecar(root, store), started)
    assert sidecar.pipeline.wait_synced(10)  # every listed ETag matched its file's MD5
    changed = write_json(root / "r" / "BranchLog-0.json", {"i": "changed"})
    wait_until(lambda: store.body("r/BranchLog-0") == changed, what="the change uploaded")
    assert store.puts == ["r/BranchLog-0"]
    assert store.heads == []  # an MD5 bucket: a different ETag is a real difference
    assert sidecar.pipeline.shutdown(drain_timeout=5).complete


def test_a_run_folder_made_while_watched_is_uploaded_without_a_listing(
    root: Path, tmp_path: Path, started: list[Sidecar], caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 new runs a minute on a shared volume: a folder made under the watcher's eyes
    started empty, so listing its prefix first would only delay its uploads. A folder
    moved in may be an old run: it is listed."""
    caplog.set_level(logging.DEBUG, logger="runlog_relay.sidecar.detect")
    store = FakeStore()
    sidecar = start(Sidecar(root, store), started)
    # The detector has handled the rescan the watcher posts once its watches are armed:
    # from then on a new folder is seen being made.
    wait_until(
        lambda: any("rescan (watch armed)" in r.getMessage() for r in caplog.records),
        what="the watch armed",
    )
    made = write_json(root / "new-run" / "RunLog.json", {"new": True})
    wait_until(lambda: store.body("new-run/RunLog") == made, what="the new run uploaded")
    elsewhere = tmp_path / "old-run"
    moved = write_json(elsewhere / "RunLog.json", {"old": True})
    os.rename(elsewhere, root / "old-run")
    wait_until(lambda: store.body("old-run/RunLog") == moved, what="the moved run uploaded")
    assert "new-run/" not in store.lists
    assert "old-run/" in store.lists
    assert sidecar.pipeline.shutdown(drain_timeout=5).complete
