"""sidecar.detect: stable reads, and the Detector driven synchronously with fakes.

The Detector's ports are plain callables (``submit``, ``list_remote``), so the fakes
here are a list of submitted requests and a listing that counts its calls; the stage
runs in the test's own thread through ``rescan()``/``_handle()`` or ``run()`` with a
``Stop`` at the end of its inbox.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from runlog_relay.config.models import SyncSpec
from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import RetryableError
from runlog_relay.layout import Layout
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar import detect
from runlog_relay.sidecar.detect import Detector, TornRead, read_stable
from runlog_relay.sidecar.types import (
    FileSignature,
    Inbox,
    PathsChanged,
    Reconfigure,
    Rescan,
    Stop,
    UploadRequest,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_json(path: Path, document: object) -> bytes:
    """Rewrite in place like runnable does (open "w", then dump)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(document, handle, indent=4)
    return path.read_bytes()


class FakeRemote:
    """``list_remote``: the bucket's (key, etag) pairs; counts listings; can fail."""

    def __init__(self, objects: dict[str, str] | None = None) -> None:
        self.objects = dict(objects or {})
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> Iterable[tuple[str, str]]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return list(self.objects.items())


class Rig:
    """A Detector over ``root`` with fakes for everything around it."""

    def __init__(
        self,
        root: Path,
        *,
        layout: Layout = Layout.CHUNKED,
        remote: dict[str, str] | None = None,
        grace: float = 3600.0,
    ) -> None:
        self.root = root
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry)
        self.remote = FakeRemote(remote)
        self.submitted: list[UploadRequest] = []
        self.inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self.synced = threading.Event()
        self.settings = settings_for(root, layout, grace)
        self.detector = Detector(
            self.settings,
            self.inbox,
            submit=self.submitted.append,
            list_remote=self.remote,
            metrics=self.metrics,
            on_synced=self.synced.set,
        )

    def keys(self) -> list[str]:
        return sorted(r.key for r in self.submitted)

    def take(self) -> list[UploadRequest]:
        out, self.submitted[:] = list(self.submitted), []
        return out

    def changed(self, *paths: Path, seen_at: float | None = None) -> None:
        self.detector._handle(
            PathsChanged(frozenset(paths), time.monotonic() if seen_at is None else seen_at)
        )

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def settings_for(root: Path, layout: Layout, grace: float) -> SidecarSettings:
    return SidecarSettings(source=root, layout=layout, sync=SyncSpec(torn_grace_seconds=grace))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "run_logs"
    path.mkdir()
    return path


# =========================================================================== read_stable


def test_read_stable_returns_the_bytes_and_their_signature(tmp_path: Path) -> None:
    path = tmp_path / "RunLog.json"
    data = write_json(path, {"run_id": "r", "steps": list(range(100))})
    got, signature = read_stable(path)
    assert got == data
    info = os.stat(path)
    assert signature == FileSignature.of(info)
    assert signature.size == len(data)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty"),
        (b"  \n\t", "empty"),
        (b'{"run_id": "r", "steps": [1, 2', "not complete JSON"),
        (b'{"run_id": "r"', "not complete JSON"),
        (b'{"a": 1}{', "not complete JSON"),
        (b'{"a": "\xff\xfe"}', "not complete JSON"),  # not UTF-8
    ],
)
def test_read_stable_rejects_torn_content(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(TornRead, match=why):
        read_stable(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_read_stable_requires_utf8(tmp_path: Path, encoding: str) -> None:
    # json.loads(bytes) sniffs UTF-16/32, but runnable writes UTF-8 and the single layout
    # must decode the text as UTF-8 to encode it again.
    path = tmp_path / "x.json"
    path.write_bytes(json.dumps({"a": "b"}).encode(encoding))
    with pytest.raises(TornRead):
        read_stable(path)


def test_read_stable_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_stable(fifo)  # O_NONBLOCK: opening a FIFO with no writer must not hang


def test_read_stable_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        read_stable(tmp_path / "dir.json")


def test_read_stable_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "outside.json"
    write_json(target, {"secret": True})
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(OSError) as caught:
        read_stable(link)
    assert not isinstance(caught.value, TornRead)


def test_read_stable_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_stable(tmp_path / "gone.json")


def test_read_stable_detects_a_file_replaced_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "RunLog.json"
    write_json(path, {"v": 1})
    replacement = tmp_path / "RunLog.json.tmp"
    write_json(replacement, {"v": 2})
    real_fstat = os.fstat
    fstats: list[int] = []

    def fstat_then_replace(fd: int) -> os.stat_result:
        # The second fstat is the "after" one: take it, then let a writer rename a new
        # file over the path. Size and times of the open file agree; only the inode at
        # the path tells the version read is no longer the file's.
        info = real_fstat(fd)
        fstats.append(fd)
        if len(fstats) == 2:
            os.replace(replacement, path)
        return info

    monkeypatch.setattr(os, "fstat", fstat_then_replace)
    with pytest.raises(TornRead, match="changed while being read"):
        read_stable(path)
    assert len(fstats) == 2
    assert json.loads(path.read_bytes()) == {"v": 2}


def test_read_stable_detects_a_write_during_the_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "RunLog.json"
    write_json(path, {"v": 1})
    real_read = os.read
    calls = []

    def read_then_writer_appends(fd: int, size: int) -> bytes:
        chunk = real_read(fd, size)
        if not calls:
            calls.append(fd)
            with open(path, "a") as handle:  # the writer is still at it
                handle.write(" ")
        return chunk

    monkeypatch.setattr(os, "read", read_then_writer_appends)
    with pytest.raises(TornRead, match="changed while being read"):
        read_stable(path)
    assert calls


# =========================================================================== Detector


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
    rig.detector.rescan("start")
    assert rig.remote.calls == 1
    assert rig.synced.is_set()
    by_key = {r.key: r for r in rig.submitted}
    assert sorted(by_key) == ["run-a/BranchLog-b", "run-b/RunLog"]
    assert by_key["run-a/BranchLog-b"].body == stale
    assert by_key["run-b/RunLog"].body == new
    request = by_key["run-b/RunLog"]
    assert request.etag == md5(new)
    assert request.run_id == "run-b"
    assert request.path == root / "run-b" / "RunLog.json"
    assert request.file_size == len(new)
    assert rig.value("runlog_relay_fs_versions_total") == 2
    assert rig.value("runlog_relay_fs_write_bytes_total") == len(stale) + len(new)


def test_unchanged_files_are_not_resubmitted(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"v": 1})
    rig = Rig(root)
    rig.detector.rescan("start")
    assert rig.keys() == ["r/RunLog"]
    rig.take()

    rig.detector.rescan("periodic")
    rig.changed(path)
    write_json(path, {"v": 1})  # rewritten with the same bytes: same ETag
    rig.changed(path)
    rig.detector.rescan("periodic")
    assert rig.submitted == []
    assert rig.remote.calls == 1  # the bucket is listed once, not per rescan


def test_a_change_event_submits_the_new_version_once(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"status": "RUNNING"})
    rig = Rig(root)
    rig.detector.rescan("start")
    rig.take()

    final = write_json(path, {"status": "SUCCESS"})
    rig.changed(path, seen_at=123.0)
    rig.changed(path, seen_at=124.0)
    (request,) = rig.take()
    assert request.body == final
    assert request.seen_at == 123.0
    assert request.etag == md5(final)


def test_a_new_run_folder_event_scans_the_folder_whole(root: Path) -> None:
    rig = Rig(root)
    rig.detector.rescan("start")
    assert rig.submitted == []
    run = root / "run-2"
    write_json(run / "RunLog.json", {"a": 1})
    write_json(run / "BranchLog-x.json", {"b": 2})
    rig.changed(run)  # inotify reported only the folder
    assert rig.keys() == ["run-2/BranchLog-x", "run-2/RunLog"]


def test_events_before_the_first_listing_trigger_a_full_rescan(root: Path) -> None:
    write_json(root / "r1" / "RunLog.json", {"a": 1})
    write_json(root / "r2" / "RunLog.json", {"b": 1})
    rig = Rig(root)
    rig.changed(root / "r1" / "RunLog.json")
    assert rig.keys() == ["r1/RunLog", "r2/RunLog"]
    assert rig.remote.calls == 1


def test_rescan_with_relist_lists_the_bucket_again(root: Path) -> None:
    body = write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.detector._handle(Rescan(reason="start"))
    rig.take()
    rig.remote.objects = {"r/RunLog": md5(body)}
    rig.detector._handle(Rescan(reason="timer"))
    assert rig.remote.calls == 1
    rig.detector._handle(Rescan(reason="new target", relist=True))
    assert rig.remote.calls == 2
    assert rig.submitted == []  # the bucket has it


def test_reconfigure_to_a_new_source_rescans_there(root: Path, tmp_path: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.detector.rescan("start")
    rig.take()
    other = tmp_path / "other"
    write_json(other / "s" / "RunLog.json", {"b": 1})
    rig.detector._handle(
        Reconfigure(settings=settings_for(other, Layout.CHUNKED, 3600.0), relist=False)
    )
    assert rig.keys() == ["s/RunLog"]
    assert rig.remote.calls == 2  # a new target is compared with a fresh listing
    assert rig.value("runlog_relay_files_tracked") == 1


def test_torn_file_is_counted_retried_and_reported_after_the_grace_period(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runlog_relay")
    path = root / "r" / "BranchLog-x.json"
    path.parent.mkdir()
    path.write_text('{"half": ')
    rig = Rig(root, grace=3600.0)
    rig.detector.rescan("start")
    assert rig.submitted == []
    assert rig.value("runlog_relay_torn_reads_total") == 1
    assert rig.value("runlog_relay_torn_files") == 0  # within its grace: quiet
    assert rig.detector.torn_paths() == ["r/BranchLog-x.json"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # The grace period is over (grace 0 now): reported loudly, once.
    over = settings_for(root, Layout.CHUNKED, 0.0)
    rig.detector._handle(Reconfigure(settings=over, relist=False))
    rig.detector.rescan("periodic")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert str(path) in warnings[0].getMessage()
    assert "has not been complete JSON" in warnings[0].getMessage()
    assert warnings[0].__dict__["run_id"] == "r"
    assert rig.value("runlog_relay_torn_files") == 1
    assert rig.value("runlog_relay_torn_reads_total") == 3
    assert rig.submitted == []

    # Completed: the retry timer (no event needed) picks it up.
    final = write_json(path, {"half": 2})
    rig.detector._handle(None)
    (request,) = rig.take()
    assert request.body == final
    assert rig.detector.torn_paths() == []
    assert rig.value("runlog_relay_torn_files") == 0
    assert any("complete again" in r.getMessage() for r in caplog.records)


def test_empty_file_is_torn_and_keeps_the_previous_version(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    write_json(path, {"v": 1})
    rig = Rig(root)
    rig.detector.rescan("start")
    rig.take()
    path.write_bytes(b"")  # open(path, "w") just truncated it
    rig.changed(path)
    assert rig.submitted == []
    assert rig.detector.torn_paths() == ["r/RunLog.json"]
    final = write_json(path, {"v": 2})
    rig.changed(path)
    assert [r.body for r in rig.take()] == [final]


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
    rig.detector.rescan("start")
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

    rig.detector.rescan("periodic")
    assert rig.value(skipped, reason="symlink") == 4  # counted every time...
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 6  # ...warned once
    assert rig.value("runlog_relay_files_tracked") == 1


def test_a_symlink_event_is_skipped_too(root: Path, tmp_path: Path) -> None:
    rig = Rig(root)
    rig.detector.rescan("start")
    target = tmp_path / "t.json"
    write_json(target, {"t": 1})
    link = root / "r" / "RunLog.json"
    link.parent.mkdir()
    link.symlink_to(target)
    rig.changed(link)
    assert rig.submitted == []
    assert rig.value("runlog_relay_skipped_files_total", reason="symlink") == 1


def test_deleted_file_is_forgotten_and_nothing_is_deleted(root: Path) -> None:
    keep = root / "r1" / "RunLog.json"
    gone = root / "r2" / "RunLog.json"
    write_json(keep, {"a": 1})
    write_json(gone, {"b": 1})
    rig = Rig(root)
    rig.detector.rescan("start")
    rig.take()
    assert rig.value("runlog_relay_files_tracked") == 2
    assert rig.value("runlog_relay_runs_tracked") == 2

    gone.unlink()
    rig.changed(gone)
    assert rig.value("runlog_relay_files_tracked") == 1
    assert rig.value("runlog_relay_runs_tracked") == 1
    assert rig.submitted == []

    # Missed the event? The rescan forgets it as well.
    keep.unlink()
    rig.detector.rescan("periodic")
    assert rig.value("runlog_relay_files_tracked") == 0
    assert rig.submitted == []


def test_a_recreated_file_is_compared_with_what_was_uploaded_since_start(root: Path) -> None:
    path = root / "r" / "RunLog.json"
    original = write_json(path, {"v": 1})
    rig = Rig(root, remote={"r/RunLog": md5(original)})
    rig.detector.rescan("start")
    assert rig.submitted == []
    newer = write_json(path, {"v": 2})
    rig.changed(path)
    assert [r.body for r in rig.take()] == [newer]  # the bucket now holds v2

    path.unlink()
    rig.changed(path)
    again = write_json(path, {"v": 1})  # the start-up content again
    rig.changed(path)
    # The bucket holds v2, so v1 must go up again; the start-up listing is stale.
    assert [r.body for r in rig.take()] == [again]


def test_runs_and_files_tracked_gauges(root: Path) -> None:
    for run, names in {"a": ["RunLog", "BranchLog-1", "BranchLog-2"], "b": ["RunLog"]}.items():
        for name in names:
            write_json(root / run / f"{name}.json", {"n": name})
    (root / "a" / "notes.txt").write_text("not a run log")
    rig = Rig(root)
    rig.detector.rescan("start")
    assert rig.value("runlog_relay_files_tracked") == 4
    assert rig.value("runlog_relay_runs_tracked") == 2
    assert rig.value("runlog_relay_torn_files") == 0


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
    rig.detector.rescan("start")
    (request,) = rig.submitted
    assert request.key == "run-1/run-1.json"
    assert request.run_id == "run-1"
    assert request.body == json.dumps(text).encode()
    assert json.loads(json.loads(request.body)) == {"run_id": "run-1", "note": "naïve"}
    assert request.etag == md5(request.body)  # the ETag of the body, not of the file
    assert request.file_size == len(text.encode())


def test_single_layout_compares_the_encoded_body_with_the_bucket(root: Path) -> None:
    raw = write_json(root / "run-1.json", {"a": 1})
    rig = Rig(root, layout=Layout.SINGLE, remote={"run-1/run-1.json": md5(raw)})
    rig.detector.rescan("start")
    # The bucket holds the raw bytes (a naive copy): not what runnable's minio store reads.
    assert [r.body for r in rig.submitted] == [json.dumps(raw.decode()).encode()]


def test_a_non_utf8_file_does_not_stop_the_rest_of_the_rescan(root: Path) -> None:
    (root / "a-run.json").write_bytes(json.dumps({"a": 1}).encode("utf-16"))
    good = write_json(root / "b-run.json", {"b": 1})
    rig = Rig(root, layout=Layout.SINGLE)
    rig.detector.rescan("start")
    assert [r.key for r in rig.submitted] == ["b-run/b-run.json"]
    assert json.loads(rig.submitted[0].body) == good.decode()
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
    real = detect.read_stable

    def counting(path: Path, *args: Any, **kwargs: Any) -> tuple[bytes, FileSignature]:
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(detect, "read_stable", counting)
    rig = Rig(root)
    rig.detector.rescan("start")
    assert sorted(reads) == sorted([old, fresh])
    reads.clear()
    rig.detector.rescan("periodic")
    # The old file's signature is trusted; the fresh one (mtime within a second of the
    # read, ambiguous on coarse clocks) is read again.
    assert reads == [fresh]
    assert rig.submitted and len(rig.submitted) == 2


def test_run_processes_the_inbox_until_stop(root: Path) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.inbox.put(Rescan(reason="start"))
    rig.inbox.put(Stop())
    rig.detector.run()
    assert rig.detector.stopped
    assert rig.keys() == ["r/RunLog"]


def test_run_survives_a_listing_failure_and_retries(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_json(root / "r" / "RunLog.json", {"a": 1})
    rig = Rig(root)
    rig.remote.error = RetryableError("listing runnable/run-logs: endpoint unreachable")
    rig.inbox.put(Rescan(reason="start"))
    rig.inbox.put(Rescan(reason="again"))
    rig.inbox.put(Stop())
    rig.detector.run()
    assert rig.submitted == []
    assert not rig.synced.is_set()
    assert rig.remote.calls == 2
    assert "could not list the bucket" in caplog.text

    rig.remote.error = None  # the endpoint is back
    rig.inbox.put(Rescan(reason="timer"))
    rig.inbox.put(Stop())
    rig.detector.run()
    assert rig.keys() == ["r/RunLog"]
    assert rig.synced.is_set()
