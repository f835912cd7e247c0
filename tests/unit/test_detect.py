"""sidecar.detect: the Detector driven synchronously with fakes and a fake clock.

The Detector's ports are plain callables (``submit``, ``request_listing``), so the fakes
here are a list of submitted requests and a listing that answers from a dict (or waits
until the test answers); the stage runs in the test's own thread through ``step()``.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tests.support.fakes import FakeClock
from tests.support.files import write_json

from runlog_relay.config.models import SyncSpec
from runlog_relay.config.settings import SidecarSettings
from runlog_relay.layout import Layout
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar import detect
from runlog_relay.sidecar.detect import Detector
from runlog_relay.sidecar.types import (
    Inbox,
    Listed,
    ListingPurpose,
    PathsChanged,
    Reconfigure,
    Rescan,
    Stale,
    Stop,
    Uploaded,
    UploadFailed,
    UploadRequest,
    Verify,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def settings_for(root: Path, layout: Layout = Layout.CHUNKED, **sync: Any) -> SidecarSettings:
    run_ids = sync.pop("run_ids", ())
    sync.setdefault("torn_grace_seconds", 3600.0)
    return SidecarSettings(source=root, layout=layout, sync=SyncSpec(**sync), run_ids=run_ids)


class Rig:
    """A Detector over ``root`` with fakes for everything around it."""

    def __init__(
        self,
        root: Path,
        *,
        layout: Layout = Layout.CHUNKED,
        remote: dict[str, str] | None = None,
        answer_listings: bool = True,
        **sync: Any,
    ) -> None:
        self.root = root
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry)
        self.remote = dict(remote or {})  # key → etag, what the bucket holds
        self.answer_listings = answer_listings
        self.listings: list[tuple[frozenset[str], ListingPurpose]] = []
        self.unanswered: list[tuple[frozenset[str], ListingPurpose]] = []
        self.submitted: list[UploadRequest] = []
        self.accept = True
        self.inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self.synced = threading.Event()
        self.clock = FakeClock()
        self.settings = settings_for(root, layout, **sync)
        self.detector = Detector(
            self.settings,
            self.inbox,
            submit=self._submit,
            request_listing=self._request_listing,
            metrics=self.metrics,
            on_synced=self.synced.set,
            clock=self.clock,
        )

    def _submit(self, request: UploadRequest) -> bool:
        if self.accept:
            self.submitted.append(request)
        return self.accept

    def _request_listing(self, runs: frozenset[str], purpose: ListingPurpose) -> None:
        self.listings.append((runs, purpose))
        self.unanswered.append((runs, purpose))

    def answer(self) -> None:
        """Answer every listing asked for so far from ``remote``."""
        while self.unanswered:
            runs, purpose = self.unanswered.pop(0)
            objects = {
                key: etag
                for key, etag in self.remote.items()
                if any(key.startswith(f"{run}/") for run in runs)
            }
            self.step(Listed(run_ids=runs, objects=objects, purpose=purpose))

    def step(self, message: object = None) -> None:
        with self.detector._lock:
            self.detector._step(message)
        if self.answer_listings and self.unanswered:
            self.answer()

    def rescan(self, reason: str = "test") -> None:
        self.step(Rescan(reason=reason))

    def changed(self, *paths: Path, seen_at: float | None = None) -> None:
        self.step(PathsChanged(frozenset(paths), self.clock() if seen_at is None else seen_at))

    def settle_inbox(self, timeout: float = 5.0) -> None:
        """Process what other threads (the bulk reader) posted, until quiet."""
        deadline = time.monotonic() + timeout
        while self.detector.status().to_read and time.monotonic() < deadline:
            try:
                message = self.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            self.step(message)

    def uploaded(self, *requests: UploadRequest, bucket_etag: str | None = "md5") -> None:
        """Each request's PUT answered; the bucket's ETag is the MD5 (``"md5"``, as on
        S3, MinIO, moto), or ``bucket_etag`` (SSE-KMS), or not given (None)."""
        for request in requests:
            etag = request.etag if bucket_etag == "md5" else bucket_etag
            self.step(Uploaded(relative=request.relative, etag=request.etag, bucket_etag=etag))

    def keys(self) -> list[str]:
        return sorted(r.key for r in self.submitted)

    def take(self) -> list[UploadRequest]:
        out, self.submitted[:] = list(self.submitted), []
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "run_logs"
    path.mkdir()
    return path


# =========================================================================== comparing


def test_first_rescan_uploads_only_what_differs_from_the_bucket(root: Path) -> None:
    same = write_json(root / "run-a" / "RunLog.json", {"run": "a"})
    stale = write_json(root / "run-a" / "BranchLog-b.json", {"branch": "b", "v": 2})
    new = write_json(root / "run-b" / "RunLog.json", {"run": "b"})
    rig = Rig(
        root,
        remote={
            "run-a/RunLog": md5(same),
            "run-a/BranchLog-b": md5(b'{"branch": "b", "v": 1}'),
            "gone-run/RunLog": "0" * 32,  # objects without a local file are left alone
        },
    )
    rig.rescan("start")
    # Only the local runs are listed, each once.
    assert sorted(rig.listings[0][0]) == ["run-a", "run-b"]
    assert rig.synced.is_set()
    by_key = {r.key: r for r in rig.submitted}
    assert sorted(by_key) == ["run-a/BranchLog-b", "run-b/RunLog"]
    assert by_key["run-a/BranchLog-b"].body == stale
    assert by_key["run-b/RunLog"].body == new
    request = by_key["run-b/RunLog"]
    assert request.etag == md5(new)
    assert request.run_id == "run-b"
    assert request.path == root / "run-b" / "RunLog.json"
    assert request.snapshot.file_size == len(new)
    assert rig.value("runlog_relay_fs_versions_total") == 2
    assert rig.value("runlog_relay_fs_write_bytes_total") == len(stale) + len(new)
    assert rig.value("runlog_relay_pending_files") == 2
    rig.uploaded(*rig.take())
    assert rig.value("runlog_relay_pending_files") == 0
    assert rig.detector.unmirrored() == {}


def test_nothing_is_read_or_uploaded_before_the_runs_listing(root: Path) -> None:
    write_json(root / "r1" / "RunLog.json", {"a": 1})
    rig = Rig(root, answer_listings=False)
    rig.rescan("start")
    assert rig.submitted == []
    assert not rig.synced.is_set()
    # The bucket was never reached: the files on disk are still tracked and pending.
    assert rig.value("runlog_relay_files_tracked") == 1
    assert rig.value("runlog_relay_pending_files") == 1
    assert rig.detector.unmirrored() == {
        "r1/RunLog.json": "not compared with the bucket (its run was never listed)"
    }
    rig.answer()
    assert rig.keys() == ["r1/RunLog"]
    assert rig.synced.is_set()


def test_an_empty_folder_still_proves_the_bucket_answers(root: Path) -> None:
    rig = Rig(root, answer_listings=False)
    rig.rescan("start")
    assert rig.listings == [(frozenset({""}), ListingPurpose.COMPARE)]  # the probe
    assert not rig.synced.is_set()
    rig.answer()
    assert rig.synced.is_set()


def test_unchanged_files_are_not_resubmitted(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"v": 1})
    rig = Rig(root)
    rig.rescan("start")
    assert rig.keys() == ["r/RunLog"]
    rig.uploaded(*rig.take())

    rig.rescan("periodic")
    rig.changed(path)
    write_json(path, {"v": 1})  # rewritten with the same bytes: same ETag
    rig.changed(path)
    rig.rescan("periodic")
    assert rig.submitted == []
    assert len(rig.listings) == 1  # the run is listed once, not per rescan


def test_a_change_event_submits_the_new_version_once(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"status": "RUNNING"})
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())

    final = write_json(path, {"status": "SUCCESS"})
    rig.changed(path, seen_at=123.0)
    rig.changed(path, seen_at=124.0)
    (request,) = rig.take()
    assert request.body == final
    assert request.seen_at == 123.0
    assert request.etag == md5(final)


def test_each_file_of_a_batch_keeps_its_own_first_change_time(root: Path) -> None:
    """The lag of a file counts from its own change, not from the earliest change of the
    batch of paths it was posted with."""
    early, late = root / "r" / "RunLog.json", root / "r" / "BranchLog-b.json"
    write_json(early, {"status": "RUNNING"})
    write_json(late, {"status": "RUNNING"})
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())
    write_json(early, {"status": "SUCCESS"})
    write_json(late, {"status": "SUCCESS"})
    rig.step(PathsChanged(frozenset({early, late}), 100.0, seen={early: 100.0, late: 103.5}))
    times = {request.key: request.seen_at for request in rig.take()}
    assert times == {"r/RunLog": 100.0, "r/BranchLog-b": 103.5}


def test_a_new_run_folder_is_scanned_whole_and_listed_once_before_its_upload(root: Path) -> None:
    rig = Rig(root, answer_listings=False)
    rig.rescan("start")
    rig.answer()
    run = root / "run-2"
    a = write_json(run / "RunLog.json", {"a": 1})
    write_json(run / "BranchLog-x.json", {"b": 2})
    rig.changed(run)  # inotify reported only the folder
    assert rig.submitted == []  # nothing decided before the run's own listing
    assert rig.listings[-1] == (frozenset({"run-2"}), ListingPurpose.COMPARE)
    rig.remote["run-2/RunLog"] = md5(a)  # already in the bucket (a restarted run)
    rig.answer()
    assert rig.keys() == ["run-2/BranchLog-x"]


def test_a_file_of_a_listed_run_that_appears_later_uses_the_listing(root: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    later = {"b": 2}
    body = json.dumps(later, indent=4).encode()
    rig = Rig(root, remote={"r/BranchLog-late": md5(body)})
    rig.rescan("start")
    rig.uploaded(*rig.take())
    write_json(root / "r" / "BranchLog-late.json", later)
    rig.changed(root / "r" / "BranchLog-late.json")
    assert rig.submitted == []  # the bucket already has it: no PUT, no extra listing
    assert len(rig.listings) == 1


def test_rescan_with_relist_compares_again(root: Path) -> None:
    body = write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.rescan("start")
    rig.take()
    rig.remote = {"r/RunLog": md5(body)}
    rig.step(Rescan(reason="timer"))
    assert len(rig.listings) == 1
    rig.step(Rescan(reason="new target", relist=True))
    assert len(rig.listings) == 2
    assert rig.submitted == []  # the bucket has it


def test_reconfigure_to_a_new_source_rescans_there(root: Path, tmp_path: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.rescan("start")
    rig.take()
    other = tmp_path / "other"
    write_json(other / "s" / "RunLog.json", {"b": 1})
    rig.step(Reconfigure(settings=settings_for(other), relist=False))
    assert rig.keys() == ["s/RunLog"]
    assert rig.listings[-1][0] == frozenset({"s"})
    assert rig.value("runlog_relay_files_tracked") == 1


def test_run_ids_limit_the_runs_mirrored_and_listed(root: Path) -> None:
    for run in ("mine", "other"):
        write_json(root / run / "RunLog.json", {"run": run})
    rig = Rig(root, run_ids=("mine",))
    rig.rescan("start")
    assert rig.listings == [(frozenset({"mine"}), ListingPurpose.COMPARE)]
    assert rig.keys() == ["mine/RunLog"]
    rig.changed(root / "other" / "RunLog.json")
    rig.changed(root / "other")
    assert rig.keys() == ["mine/RunLog"]
    assert rig.value("runlog_relay_files_tracked") == 1


# =========================================================================== torn files


def torn_file(path: Path) -> Path:
    """A run-log file cut off half-way (in a run folder made for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"half": ')
    return path


def test_torn_file_backs_off_is_reported_after_the_grace_and_recovers(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runlog_relay")
    path = torn_file(root / "r" / "BranchLog-x.json")
    rig = Rig(root, torn_grace_seconds=5.0, rescan_interval_seconds=10.0)
    rig.rescan("start")
    assert rig.submitted == []
    assert rig.value("runlog_relay_torn_reads_total") == 1
    assert rig.value("runlog_relay_torn_files") == 0  # within its grace: quiet
    assert rig.value("runlog_relay_pending_files") == 0  # torn has its own count
    assert rig.detector.torn_paths() == ["r/BranchLog-x.json"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # Retries back off: 0.2 s doubling, capped at the rescan interval.
    file = rig.detector._files["r/BranchLog-x.json"]
    retries = [rig.clock()]
    for _ in range(8):
        rig.clock.now = file.retry_at
        rig.step()
        retries.append(rig.clock())
    gaps = [later - earlier for earlier, later in itertools.pairwise(retries)]
    for retry, gap in enumerate(gaps):
        ceiling = min(10.0, 0.2 * 2**retry)  # jittered in the upper half of the ceiling
        assert ceiling / 2 <= gap <= ceiling, (retry, gaps)
    # The grace period (5 s) is over: reported loudly, once.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert str(path) in warnings[0].getMessage()
    assert "has not been complete JSON" in warnings[0].getMessage()
    assert warnings[0].__dict__["run_id"] == "r"
    assert rig.value("runlog_relay_torn_files") == 1
    assert "torn" in rig.detector.unmirrored()["r/BranchLog-x.json"]

    # Its own event retries it at once, whatever the backoff says.
    final = write_json(path, {"half": 2})
    rig.changed(path)
    (request,) = rig.take()
    assert request.body == final
    assert rig.detector.torn_paths() == []
    assert rig.value("runlog_relay_torn_files") == 0
    assert any("complete again" in r.getMessage() for r in caplog.records)


def test_a_torn_file_that_completes_leaves_no_retry_behind(root: Path) -> None:
    # The retry scheduled while it was torn must not fire once it is complete: it would
    # mark the mirrored file dirty again, and a drain that ends meanwhile names it
    # "not read yet" (a false incomplete at exit).
    path = torn_file(root / "r" / "BranchLog-x.json")
    rig = Rig(root)
    rig.rescan("start")
    file = rig.detector._files["r/BranchLog-x.json"]
    retry_at = file.retry_at
    assert retry_at > rig.clock()
    write_json(path, {"half": 2})
    rig.changed(path)
    rig.uploaded(*rig.take())
    assert rig.detector.unmirrored() == {}
    rig.detector.abort.set()  # the drain is over: nothing is read any more
    rig.clock.now = retry_at
    rig.step()
    assert rig.detector.status().to_read == 0
    assert rig.detector.unmirrored() == {}


def test_retries_of_an_unchanged_torn_file_cost_an_lstat_not_a_read(root: Path) -> None:
    path = torn_file(root / "r" / "RunLog.json")
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))  # long written: its signature is trustworthy
    rig = Rig(root)
    rig.rescan("start")
    file = rig.detector._files["r/RunLog.json"]
    for _ in range(6):
        rig.clock.now = file.retry_at
        rig.step()
    assert rig.value("runlog_relay_torn_reads_total") == 1
    # Changed without an event reaching us (a missed event, polling): the retry reads it.
    final = write_json(path, {"half": 2})
    rig.clock.now = file.retry_at
    rig.step()
    assert [r.body for r in rig.take()] == [final]


def test_a_rescan_does_not_reread_a_torn_file_that_did_not_change(root: Path) -> None:
    torn_file(root / "r" / "RunLog.json")
    rig = Rig(root)
    rig.rescan("start")
    for _ in range(5):
        rig.rescan("periodic")
    assert rig.value("runlog_relay_torn_reads_total") == 1


def test_empty_file_is_torn_and_keeps_the_previous_version(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"v": 1})
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())
    path.write_bytes(b"")  # open(path, "w") just truncated it
    rig.changed(path)
    assert rig.submitted == []
    assert rig.detector.torn_paths() == ["r/RunLog.json"]
    final = write_json(path, {"v": 2})
    rig.changed(path)
    assert [r.body for r in rig.take()] == [final]


def test_a_deeply_nested_valid_run_log_is_uploaded(root: Path) -> None:
    # 1,000 levels, 2 KB: json.loads raises RecursionError on it; it is valid JSON.
    deep = root / "r" / "RunLog.json"
    deep.parent.mkdir()
    deep.write_text('{"a": ' * 1000 + "1" + "}" * 1000)
    other = write_json(root / "r" / "BranchLog-ok.json", {"ok": True})
    rig = Rig(root)
    rig.rescan("start")
    assert {r.key: r.body for r in rig.submitted} == {
        "r/RunLog": deep.read_bytes(),
        "r/BranchLog-ok": other,
    }
    assert rig.synced.is_set()


# =========================================================================== one bad file


def test_an_exception_while_handling_one_file_costs_only_that_file(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for run in ("a", "b", "c"):
        write_json(root / run / "RunLog.json", {"run": run})
    real = detect.read_file

    def read_file(path: Path | str, *args: Any, **kwargs: Any) -> Any:
        if Path(path).parent.name == "b":
            raise MemoryError("simulated")  # anything, not only the expected errors
        return real(path, *args, **kwargs)

    monkeypatch.setattr(detect, "read_file", read_file)
    rig = Rig(root)
    rig.rescan("start")
    assert rig.keys() == ["a/RunLog", "c/RunLog"]  # the rest of the rescan went on
    rig.uploaded(*rig.take())
    assert rig.synced.is_set()  # readiness is not blocked by one bad file
    assert rig.value("runlog_relay_skipped_files_total", reason="error") == 1
    assert rig.detector.unmirrored() == {"b/RunLog.json": "error: MemoryError: simulated"}
    assert any("handling" in r.getMessage() and r.exc_info for r in caplog.records)

    # Retried with backoff; once it works, it is mirrored like any other file.
    monkeypatch.setattr(detect, "read_file", real)
    rig.clock.advance(1.0)
    rig.step()
    assert rig.keys() == ["b/RunLog"]
    rig.uploaded(*rig.take())
    assert rig.detector.unmirrored() == {}


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
def test_out_of_descriptors_while_reading_is_retried_with_backoff_never_unreadable(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    for run in ("a", "b"):
        write_json(root / run / "RunLog.json", {"run": run})
    real = detect.read_file
    short = [True]

    def read_file(path: Path | str, *args: Any, **kwargs: Any) -> Any:
        if short[0]:  # what opening any file says with every descriptor taken
            return OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(detect, "read_file", read_file)
    rig = Rig(root)
    rig.rescan("start")
    assert rig.submitted == []
    # Not a problem of the files: pending, not "unreadable", named as not read yet.
    assert rig.detector.status().pending == 2
    assert not rig.value("runlog_relay_skipped_files_total", reason="unreadable")
    assert rig.detector.unmirrored() == {
        "a/RunLog.json": "not read yet",
        "b/RunLog.json": "not read yet",
    }
    # Still short at the first retries: one loud warning in all, naming the limit.
    for _ in range(3):
        rig.clock.advance(60.0)
        rig.step()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ulimit -n" in warnings[0], warnings
    # Descriptors free again: the next retry reads and uploads both.
    short[0] = False
    rig.clock.advance(60.0)
    rig.step()
    assert rig.keys() == ["a/RunLog", "b/RunLog"]
    rig.uploaded(*rig.take())
    assert rig.detector.unmirrored() == {}


def test_an_exception_while_handling_an_event_costs_only_that_path(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(root / "a" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.rescan("start")
    rig.take()
    real = detect.classify_path

    def classify_path(root_: Path, path: Path | str, layout: Layout, prefix: str = "") -> Any:
        if Path(path).name == "BranchLog-bad.json":
            raise RuntimeError("boom")
        return real(root_, path, layout, prefix)

    monkeypatch.setattr(detect, "classify_path", classify_path)
    good = write_json(root / "a" / "BranchLog-good.json", {"g": 1})
    write_json(root / "a" / "BranchLog-bad.json", {"b": 1})
    rig.changed(root / "a" / "BranchLog-bad.json", root / "a" / "BranchLog-good.json")
    assert [r.body for r in rig.take()] == [good]


def test_a_file_over_the_size_limit_is_refused_counted_and_named(root: Path) -> None:
    big = root / "r" / "RunLog.json"
    big.parent.mkdir()
    big.write_text(json.dumps({"pad": "x" * (2 << 20)}))
    ok = write_json(root / "r" / "BranchLog-a.json", {"a": 1})
    rig = Rig(root, max_file_bytes=1 << 20)
    rig.rescan("start")
    rig.settle_inbox()
    assert [r.body for r in rig.submitted] == [ok]
    assert rig.value("runlog_relay_skipped_files_total", reason="too_large") == 1
    reason = rig.detector.unmirrored()["r/RunLog.json"]
    assert reason.startswith("too large: ") and "maxFileBytes" in reason


def test_big_files_are_read_by_the_bulk_reader_and_streamed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = root / "r" / "RunLog.json"
    big.parent.mkdir()
    big.write_text(json.dumps({"pad": "x" * (3 << 20)}))
    small = write_json(root / "r" / "BranchLog-a.json", {"a": 1})
    threads: dict[str, str] = {}
    real = detect.read_file

    def read_file(path: Path | str, *args: Any, **kwargs: Any) -> Any:
        threads[Path(path).name] = threading.current_thread().name
        return real(path, *args, **kwargs)

    monkeypatch.setattr(detect, "read_file", read_file)
    rig = Rig(root)
    rig.rescan("start")
    assert [r.body for r in rig.submitted] == [small]  # not held up by the big one
    rig.settle_inbox()
    big_request = next(r for r in rig.submitted if r.key == "r/RunLog")
    assert big_request.body is None  # read again from the file at upload, part by part
    assert big_request.snapshot.body_size == big.stat().st_size
    assert threads == {
        "BranchLog-a.json": threading.current_thread().name,
        "RunLog.json": "bulk-reader",
    }


# =========================================================================== the ledger


def test_symlinks_and_unsafe_names_are_skipped_with_metric_labels(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runlog_relay")
    outside = tmp_path / "outside"
    write_json(outside / "secret.json", {"secret": 1})
    run = root / "run-1"
    good = write_json(run / "RunLog.json", {"ok": True})
    (run / "BranchLog-link.json").symlink_to(outside / "secret.json")
    (root / "linked-run").symlink_to(outside)
    write_json(run / "Bad\nName.json", {"x": 1})
    write_json(run / ".hidden.json", {"x": 1})
    os.mkfifo(run / "BranchLog-fifo.json")
    (run / "BranchLog-dir.json").mkdir()

    rig = Rig(root)
    rig.rescan("start")
    assert [r.body for r in rig.submitted] == [good]
    skipped = "runlog_relay_skipped_files_total"
    assert rig.value(skipped, reason="symlink") == 2
    assert rig.value(skipped, reason="unsafe_name") == 2
    assert rig.value(skipped, reason="not_regular") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6
    # A newline in a name cannot forge a log line: the path is shown repr-escaped.
    assert all("\n" not in message for message in warnings)
    assert any("Bad\\nName.json" in message for message in warnings)

    rig.rescan("periodic")
    assert rig.value(skipped, reason="symlink") == 4  # counted every time...
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 6  # ...warned once
    assert rig.value("runlog_relay_files_tracked") == 1


def test_a_symlink_event_is_skipped_too(root: Path, tmp_path: Path) -> None:
    rig = Rig(root)
    rig.rescan("start")
    target = tmp_path / "t.json"
    write_json(target, {"t": 1})
    link = root / "r" / "RunLog.json"
    link.parent.mkdir()
    link.symlink_to(target)
    rig.changed(link)
    assert rig.submitted == []
    assert rig.value("runlog_relay_skipped_files_total", reason="symlink") == 1


def _synced_run_and_a_folder_outside(
    root: Path, tmp_path: Path, pad: str = ""
) -> tuple[Rig, Path, Path, Path]:
    """A rig whose run ``r`` (one RunLog.json) is uploaded, and a folder outside the root
    holding a RunLog.json of its own (padded by ``pad``) for the run folder to be swapped
    for: the rig, the run folder, its file, the outside folder."""
    run = root / "r"
    path = run / "RunLog.json"
    write_json(path, {"v": 1})
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())
    outside = tmp_path / "outside"
    write_json(outside / "RunLog.json", {"outside": True, "pad": pad})
    return rig, run, path, outside


@pytest.mark.parametrize("size", [100, detect.INLINE_BODY_BYTES + 1], ids=["small", "bulk"])
def test_a_run_folder_that_becomes_a_link_before_its_read_is_skipped_as_a_link(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # The read of a tracked file starts from one lstat, which follows a link in the middle
    # of the path; the read itself does not, and the file must come out skipped as a link,
    # like one the first classification finds, not as an unreadable file kept as pending.
    rig, run, path, outside = _synced_run_and_a_folder_outside(root, tmp_path, "x" * size)
    real_read = detect.read_file

    def swap_then_read(*args: Any) -> object:
        # The folder is swapped for a link after the lstat, just before the read (for a
        # big file, on the bulk reader's thread).
        run.rename(tmp_path / "moved")
        run.symlink_to(outside)
        return real_read(*args)

    monkeypatch.setattr(detect, "read_file", swap_then_read)
    write_json(path, {"v": 2, "pad": "x" * size})
    rig.changed(path)
    rig.settle_inbox()
    assert rig.submitted == []
    assert rig.value("runlog_relay_skipped_files_total", reason="symlink") == 1
    assert rig.detector.unmirrored() == {}
    assert rig.value("runlog_relay_files_tracked") == 0


def test_a_read_that_met_a_link_gone_again_keeps_the_file_and_retries_it(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The link is back to a plain folder by the time the path is classified again: the
    # new version is not dropped, it stays unmirrored (unreadable) until a rescan reads it.
    rig, run, path, outside = _synced_run_and_a_folder_outside(root, tmp_path)
    real_read = detect.read_file

    def flap_around_the_read(*args: Any) -> object:
        run.rename(tmp_path / "moved")
        run.symlink_to(outside)
        try:
            return real_read(*args)
        finally:
            run.unlink()
            (tmp_path / "moved").rename(run)

    monkeypatch.setattr(detect, "read_file", flap_around_the_read)
    body = write_json(path, {"v": 2})
    rig.changed(path)
    assert rig.submitted == []
    assert rig.detector.unmirrored() == {"r/RunLog.json": "unreadable: Not a directory"}
    monkeypatch.setattr(detect, "read_file", real_read)
    rig.rescan("periodic")
    assert [r.body for r in rig.submitted] == [body]


def test_deleted_file_is_forgotten_and_nothing_is_deleted(root: Path) -> None:
    keep = root / "r1" / "RunLog.json"
    gone = root / "r2" / "RunLog.json"
    write_json(keep, {"a": 1})
    write_json(gone, {"b": 1})
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())
    assert rig.value("runlog_relay_files_tracked") == 2
    assert rig.value("runlog_relay_runs_tracked") == 2

    gone.unlink()
    rig.changed(gone)
    assert rig.value("runlog_relay_files_tracked") == 1
    assert rig.value("runlog_relay_runs_tracked") == 1
    assert rig.submitted == []

    # Missed the event? The rescan forgets it as well.
    keep.unlink()
    rig.rescan("periodic")
    assert rig.value("runlog_relay_files_tracked") == 0
    assert rig.submitted == []


def test_a_recreated_file_is_compared_with_what_was_uploaded_since_start(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    original = write_json(path, {"v": 1})
    write_json(root / "r" / "BranchLog-keep.json", {"keep": 1})  # the run stays local
    rig = Rig(root, remote={"r/RunLog": md5(original)})
    rig.rescan("start")
    rig.uploaded(*rig.take())
    newer = write_json(path, {"v": 2})
    rig.changed(path)
    taken = rig.take()
    assert [r.body for r in taken] == [newer]
    rig.uploaded(*taken)

    path.unlink()
    rig.changed(path)
    again = write_json(path, {"v": 1})  # the start-up content again
    rig.changed(path)
    # The bucket holds v2, so v1 must go up again; the start-up listing is stale.
    assert [r.body for r in rig.take()] == [again]


def test_a_version_equal_to_the_bucket_after_a_newer_one_left_is_uploaded(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    original = write_json(path, {"v": 1})
    rig = Rig(root, remote={"r/RunLog": md5(original)})
    rig.rescan("start")
    write_json(path, {"v": 2})
    rig.changed(path)
    (v2,) = rig.take()  # on its way, not confirmed yet
    write_json(path, {"v": 1})  # back to what the bucket had before v2 lands
    rig.changed(path)
    # v2 will land: v1 must follow it, or the bucket ends with v2.
    assert [r.body for r in rig.take()] == [original]
    rig.uploaded(v2)
    assert rig.value("runlog_relay_pending_files") == 1


def test_runs_files_and_pending_gauges(root: Path) -> None:
    for run, names in {"a": ["RunLog", "BranchLog-1", "BranchLog-2"], "b": ["RunLog"]}.items():
        for name in names:
            write_json(root / run / f"{name}.json", {"n": name})
    (root / "a" / "notes.txt").write_text("not a run log")
    rig = Rig(root)
    rig.rescan("start")
    assert rig.value("runlog_relay_files_tracked") == 4
    assert rig.value("runlog_relay_runs_tracked") == 2
    assert rig.value("runlog_relay_torn_files") == 0
    assert rig.value("runlog_relay_pending_files") == 4
    requests = rig.take()
    rig.uploaded(*requests[:3])
    assert rig.value("runlog_relay_pending_files") == 1
    status = rig.detector.status()
    assert (status.files, status.pending, status.to_read, status.unlisted_runs) == (4, 1, 0, 0)


def test_back_pressure_that_outlasts_the_drain_leaves_files_named(root: Path) -> None:
    for index in range(5):
        write_json(root / "r" / f"BranchLog-{index}.json", {"i": index})
    rig = Rig(root)
    rig.accept = False  # the queue was closed: nothing more is queued
    rig.rescan("start")
    assert rig.submitted == []
    assert rig.detector.unmirrored() == {
        f"r/BranchLog-{index}.json": "not read yet" for index in range(5)
    }
    assert rig.value("runlog_relay_pending_files") == 5


def test_an_upload_given_up_is_named(root: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.rescan("start")
    (request,) = rig.take()
    rig.step(
        UploadFailed(
            relative=request.relative, etag=request.etag, reason="AccessDenied", given_up=True
        )
    )
    assert rig.detector.unmirrored() == {"r/RunLog.json": "not uploaded: AccessDenied"}
    assert rig.value("runlog_relay_pending_files") == 0


def test_a_stale_upload_is_read_again(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"a": 1})
    rig = Rig(root)
    rig.rescan("start")
    (first,) = rig.take()
    newer = write_json(path, {"a": 2})
    rig.step(Stale(relative=first.relative, etag=first.etag))
    assert [r.body for r in rig.take()] == [newer]


def test_a_stale_upload_of_content_that_came_back_is_still_uploaded(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    body = write_json(path, {"a": 1})
    rig = Rig(root)
    rig.rescan("start")
    (first,) = rig.take()
    # The file changed while it was uploaded and then got the same content again.
    rig.step(Stale(relative=first.relative, etag=first.etag))
    assert [r.body for r in rig.take()] == [body]


# =========================================================================== doubtful uploads


def test_a_doubtful_upload_has_its_run_confirmed_against_the_bucket(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"v": 1})
    write_json(root / "r" / "BranchLog-b.json", {"b": 1})
    rig = Rig(root, answer_listings=False)
    rig.rescan("start")
    rig.answer()
    requests = {r.key: r for r in rig.take()}
    v1 = requests["r/RunLog"]
    rig.uploaded(requests["r/BranchLog-b"])
    # v1's PUT timed out: it may still land later.
    rig.step(UploadFailed(relative=v1.relative, etag=v1.etag, reason="timeout", doubtful=True))
    v2_body = write_json(path, {"v": 2})
    rig.changed(path)
    (v2,) = rig.take()
    listings = len(rig.listings)
    rig.uploaded(v2)
    # The run's uploads are over: its prefix is listed to confirm what landed...
    assert rig.listings[listings:] == [(frozenset({"r"}), ListingPurpose.VERIFY)]
    # ...and the late v1 did land after v2: uploaded again.
    rig.remote = {"r/RunLog": v1.etag, "r/BranchLog-b": requests["r/BranchLog-b"].etag}
    rig.answer()
    assert [r.body for r in rig.take()] == [v2_body]
    assert rig.value("runlog_relay_bucket_mismatches_total") == 1
    assert "landed late" in caplog.text


def test_verify_confirms_every_run_that_had_a_doubtful_upload(root: Path) -> None:
    for run in ("a", "b"):
        write_json(root / run / "RunLog.json", {"run": run})
    rig = Rig(root, answer_listings=False)
    rig.rescan("start")
    rig.answer()
    requests = {r.key: r for r in rig.take()}
    rig.remote = {key: r.etag for key, r in requests.items()}
    a = requests["a/RunLog"]
    rig.step(UploadFailed(relative=a.relative, etag=a.etag, reason="reset", doubtful=True))
    rig.uploaded(*requests.values())
    assert rig.unanswered == [(frozenset({"a"}), ListingPurpose.VERIFY)]
    rig.answer()  # all there
    assert rig.detector.status().verifying == 0
    # The drain asks again, for every run that ever had a doubtful upload (only "a").
    done = threading.Event()
    rig.step(Verify(done=done))
    assert done.is_set()
    assert rig.unanswered == [(frozenset({"a"}), ListingPurpose.VERIFY)]
    assert rig.detector.status().verifying == 1
    rig.answer()
    assert rig.detector.status().verifying == 0
    assert rig.submitted == []


def _synced(root: Path, runs: Iterable[str] = ("a", "b")) -> Rig:
    """A rig whose runs are uploaded and answered (an MD5 bucket), listings answered."""
    for run in runs:
        write_json(root / run / "RunLog.json", {"run": run})
    rig = Rig(root)
    rig.rescan("start")
    requests = {r.key: r for r in rig.take()}
    rig.uploaded(*requests.values())
    rig.remote = {key: r.etag for key, r in requests.items()}
    assert rig.detector.status().pending == 0
    return rig


def test_the_drain_confirms_every_run_and_uploads_what_vanished_from_the_bucket(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = _synced(root)
    del rig.remote["b/RunLog"]  # deleted by hand, a lifecycle rule, a store restarted empty
    rig.answer_listings = False
    listings = len(rig.listings)
    rig.step(Verify(every_run=True))
    # One request for every listed run (the lister lists each run's prefix).
    assert rig.listings[listings:] == [(frozenset({"a", "b"}), ListingPurpose.VERIFY)]
    assert rig.detector.status().verifying == 2
    # Until the listing answers, the exit report cannot call those files mirrored.
    assert rig.detector.unmirrored() == {
        "a/RunLog.json": "not confirmed in the bucket (its run's listing did not finish)",
        "b/RunLog.json": "not confirmed in the bucket (its run's listing did not finish)",
    }
    rig.answer()
    assert [r.key for r in rig.take()] == ["b/RunLog"]
    assert rig.value("runlog_relay_bucket_mismatches_total") == 1
    assert "lacks 1 object(s) of run b" in caplog.text
    assert rig.detector.status().verifying == 0


def test_full_sweeps_confirm_the_runs_listed_longest_ago_a_bounded_number_at_a_time(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detect, "RECONCILE_RUNS", 2)
    rig = _synced(root, runs=("a", "b", "c"))
    rig.answer_listings = False
    verifies = []
    for _ in range(2 * detect.FULL_SWEEP_EVERY):
        rig.clock.advance(60.0)
        listings = len(rig.listings)
        rig.rescan("periodic")
        verifies += rig.listings[listings:]
        rig.answer()
    # Only full sweeps list, each the two runs listed longest ago: every run in turn.
    assert [purpose for _, purpose in verifies] == [ListingPurpose.VERIFY] * 2
    (first, _), (second, _) = verifies
    assert len(first) == len(second) == 2
    assert {"a", "b", "c"} - first <= second  # the one left out comes first next time
    assert rig.submitted == []  # everything was there: nothing uploaded
    # A vanished object is uploaded again by the next full sweep that lists its run.
    del rig.remote["c/RunLog"]
    for _ in range(2 * detect.FULL_SWEEP_EVERY):
        rig.clock.advance(60.0)
        rig.rescan("periodic")
        rig.answer()
    assert [r.key for r in rig.take()] == ["c/RunLog"]


def test_a_bucket_whose_etags_are_not_md5s_is_confirmed_by_the_etag_it_answered(
    root: Path,
) -> None:
    write_json(root / "a" / "RunLog.json", {"run": "a"})
    rig = Rig(root)
    rig.rescan("start")
    (request,) = rig.take()
    rig.uploaded(request, bucket_etag="kms-etag-1")  # SSE-KMS: the ETag is not the MD5
    rig.remote = {"a/RunLog": "kms-etag-1"}
    rig.step(Verify(every_run=True))
    assert rig.submitted == []  # recognised by its own ETag: no HEAD, no PUT
    # Another ETag on such a bucket proves nothing: the upload path confirms it (with the
    # stored MD5, one HEAD) before any PUT, and it is no mismatch yet.
    rig.remote = {"a/RunLog": "kms-etag-2"}
    rig.step(Verify(every_run=True))
    (again,) = rig.take()
    assert again.listed_etag == "kms-etag-2"
    assert not rig.value("runlog_relay_bucket_mismatches_total")


# =========================================================================== layouts, costs


@pytest.mark.parametrize(
    ("layout", "files", "named"),
    [
        (Layout.CHUNKED, ["r1.json", "r2.json"], "file-system store (r1.json, r2.json)"),
        (Layout.SINGLE, ["r1/RunLog.json"], "chunked-fs store (r1/RunLog.json)"),
    ],
)
def test_files_of_the_other_layout_are_named_once_with_the_layout_option(
    root: Path, caplog: pytest.LogCaptureFixture, layout: Layout, files: list[str], named: str
) -> None:
    for name in files:
        write_json(root / name, {"run_id": "r1"})
    rig = Rig(root, layout=layout)
    rig.rescan("start")
    rig.rescan("overflow")  # another full sweep: still one warning
    assert rig.submitted == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    other = "single" if layout is Layout.CHUNKED else "chunked"
    assert len(warnings) == 1 and named in warnings[0], warnings
    assert f"--layout {other}" in warnings[0]


def test_a_folder_of_the_right_layout_gets_no_layout_warning(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_json(root / "r1" / "RunLog.json", {"a": 1})
    Rig(root).rescan("start")
    assert "layout" not in caplog.text


def test_single_layout_keys_and_double_encoded_bodies(root: Path) -> None:
    text = json.dumps({"run_id": "run-1", "note": "naïve"}, ensure_ascii=False, indent=4)
    (root / "run-1.json").write_text(text, encoding="utf-8")
    (root / "run-2.json").write_text('"unchanged doc"', encoding="utf-8")  # in the bucket
    write_json(root / "run-3" / "RunLog.json", {"chunked": True})  # not this layout
    rig = Rig(
        root,
        layout=Layout.SINGLE,
        remote={"run-2/run-2.json": md5(json.dumps('"unchanged doc"').encode())},
    )
    rig.rescan("start")
    (request,) = rig.submitted
    assert request.key == "run-1/run-1.json"
    assert request.run_id == "run-1"
    assert request.body == json.dumps(text).encode()
    assert json.loads(json.loads(request.body)) == {"run_id": "run-1", "note": "naïve"}
    assert request.etag == md5(request.body)  # the ETag of the body, not of the file
    assert request.snapshot.file_size == len(text.encode())


def test_single_layout_compares_the_encoded_body_with_the_bucket(root: Path) -> None:
    raw = write_json(root / "run-1.json", {"a": 1})
    rig = Rig(root, layout=Layout.SINGLE, remote={"run-1/run-1.json": md5(raw)})
    rig.rescan("start")
    # The bucket holds the raw bytes (a naive copy): not what runnable's minio store reads.
    assert [r.body for r in rig.submitted] == [json.dumps(raw.decode()).encode()]


def test_a_non_utf8_file_does_not_stop_the_rest_of_the_rescan(root: Path) -> None:
    (root / "a-run.json").write_bytes(json.dumps({"a": 1}).encode("utf-16"))
    good = write_json(root / "b-run.json", {"b": 1})
    rig = Rig(root, layout=Layout.SINGLE)
    rig.rescan("start")
    assert [r.key for r in rig.submitted] == ["b-run/b-run.json"]
    assert json.loads(rig.submitted[0].body or b"") == good.decode()
    assert rig.synced.is_set()
    assert rig.detector.torn_paths() == ["a-run.json"]


def test_settled_files_cost_no_read_on_rescans(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = root / "r" / "RunLog.json"
    write_json(old, {"old": True})
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    fresh = root / "r" / "BranchLog-now.json"
    write_json(fresh, {"fresh": True})
    reads: list[Path] = []
    real = detect.read_file

    def counting(path: Path | str, *args: Any, **kwargs: Any) -> Any:
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(detect, "read_file", counting)
    rig = Rig(root)
    rig.rescan("start")
    assert sorted(reads) == sorted([old, fresh])
    reads.clear()
    rig.rescan("periodic")
    # The old file's signature is trusted; the fresh one (mtime within a second of the
    # read, ambiguous on coarse clocks) is read again.
    assert reads == [fresh]


def test_a_run_folder_that_cannot_be_listed_is_retried_soon_and_not_forgotten(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())
    added = write_json(root / "r" / "BranchLog-new.json", {"b": 1})
    failing = {"on": True}

    def out_of_descriptors(real: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def listing(path: Any) -> Any:
            if failing["on"] and str(path).endswith("/r"):
                raise OSError(24, "Too many open files")
            return real(path)

        return listing

    # Both ways a folder is listed: a full sweep reads entries, a light rescan names.
    monkeypatch.setattr(os, "scandir", out_of_descriptors(os.scandir))
    monkeypatch.setattr(os, "listdir", out_of_descriptors(os.listdir))
    rig.rescan("periodic")
    assert rig.value("runlog_relay_files_tracked") == 1  # not seen is not deleted
    failing["on"] = False
    rig.clock.advance(1.0)  # well before the next rescan (60 s)
    rig.step()
    assert [r.body for r in rig.take()] == [added]


def test_run_processes_the_inbox_until_stop(root: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.inbox.put(Rescan(reason="start"))
    thread = threading.Thread(target=rig.detector.run)
    thread.start()
    deadline = time.monotonic() + 5
    while not rig.listings and time.monotonic() < deadline:
        time.sleep(0.01)
    (runs, purpose) = rig.listings[0]
    rig.inbox.put(Listed(run_ids=runs, objects={}, purpose=purpose))
    while not rig.submitted and time.monotonic() < deadline:
        time.sleep(0.01)
    rig.inbox.put(Stop())
    thread.join(5)
    assert rig.detector.stopped
    assert rig.keys() == ["r/RunLog"]


def keys_of(items: Iterable[UploadRequest]) -> list[str]:
    return sorted(item.key for item in items)


def test_periodic_rescans_are_light_but_every_tenth_is_a_full_sweep(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"v": 1})
    old = time.time() - 3600
    os.utime(path, (old, old))
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())
    # Changed behind inotify's back (no event, no overflow): a light rescan cannot see it...
    write_json(path, {"v": 2})
    os.utime(path, (old + 1, old + 1))
    for count in range(1, detect.FULL_SWEEP_EVERY):
        rig.step(Rescan(reason="periodic"))
        assert rig.submitted == [], count
    # ...the full sweep does (and so do rescans for any other reason, at once).
    rig.step(Rescan(reason="periodic"))
    assert [json.loads(r.body or b"") for r in rig.take()] == [{"v": 2}]


def test_a_light_rescan_still_sees_new_and_deleted_files(root: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"v": 1})
    gone = root / "r" / "BranchLog-gone.json"
    write_json(gone, {"g": 1})
    old = time.time() - 3600
    for path in root.glob("r/*.json"):
        os.utime(path, (old, old))
    rig = Rig(root)
    rig.rescan("start")
    rig.uploaded(*rig.take())
    gone.unlink()
    new = write_json(root / "r" / "BranchLog-new.json", {"n": 1})
    rig.step(Rescan(reason="periodic"))
    assert [r.body for r in rig.take()] == [new]
    assert sorted(rig.detector._files) == ["r/BranchLog-new.json", "r/RunLog.json"]
