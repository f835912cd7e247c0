"""sidecar.events and sidecar.inotify: what the watcher posts, and when.

The watcher runs its real thread on real inotify over a temporary folder; the detector
is replaced by the inbox the test reads. Where the kernel cannot be made to misbehave
from here, the inotify binding is exercised for real on its own and the watcher is fed
the same event through a fake instance.
"""

from __future__ import annotations

import errno
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from runlog_relay.config.models import SyncSpec
from runlog_relay.layout import Layout
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar import events, inotify
from runlog_relay.sidecar.events import FolderWatcher
from runlog_relay.sidecar.types import Inbox, PathsChanged, Rescan

PATIENCE = 10.0
_RealInotify = inotify.Inotify


class Watching:
    def __init__(self, root: Path, *, layout: Layout = Layout.CHUNKED, **sync: float) -> None:
        self.root = root
        self.inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self.registry = CollectorRegistry()
        self.watcher = FolderWatcher(
            root, SyncSpec(**sync), self.inbox, SidecarMetrics(self.registry), layout=layout
        )

    def start(self) -> Watching:
        self.watcher.start()
        self.expect(lambda m: isinstance(m, Rescan) and m.reason == "watch armed")
        return self

    def expect(self, match, timeout: float = PATIENCE) -> Inbox:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("expected message not posted")
            try:
                message = self.inbox.get(timeout=remaining)
            except queue.Empty:
                continue
            if match(message):
                return message

    def posted_paths(self, seconds: float) -> list[frozenset[Path]]:
        out = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if isinstance(message, PathsChanged):
                out.append(message.paths)
        return out

    def value(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "run_logs"
    path.mkdir()
    return path


@pytest.fixture
def watching(root: Path) -> Iterator[list[Watching]]:
    started: list[Watching] = []
    yield started
    for item in started:
        item.watcher.stop()


def start(started: list[Watching], root: Path, **kwargs) -> Watching:  # type: ignore[no-untyped-def]
    item = Watching(root, **kwargs)
    started.append(item)
    return item.start()


def changed_with(path: Path):  # type: ignore[no-untyped-def]
    return lambda m: isinstance(m, PathsChanged) and path in m.paths


def test_a_file_closed_after_writing_is_posted_at_once(
    root: Path, watching: list[Watching]
) -> None:
    (root / "r").mkdir()
    item = start(watching, root, debounce_seconds=30.0)  # a debounce that never ends in time
    path = root / "r" / "RunLog.json"
    written = time.monotonic()
    with open(path, "w") as handle:  # runnable's open("w") ... close
        handle.write('{"a": 1}')
    message = item.expect(changed_with(path), timeout=5.0)
    assert isinstance(message, PathsChanged)
    assert time.monotonic() - written < 5.0  # leading edge: not after the 30 s debounce
    assert message.seen_at >= written - 0.01


def test_a_file_written_without_closing_is_posted_after_the_debounce(
    root: Path, watching: list[Watching]
) -> None:
    (root / "r").mkdir()
    item = start(watching, root, debounce_seconds=0.3)
    path = root / "r" / "RunLog.json"
    with open(path, "w") as handle:
        handle.write('{"a": ')
        handle.flush()
        written = time.monotonic()
        item.expect(changed_with(path))
        waited = time.monotonic() - written
        handle.write("1}")
    assert 0.25 <= waited < 5.0


def test_a_rewrite_storm_is_read_at_most_once_per_debounce(
    root: Path, watching: list[Watching]
) -> None:
    (root / "r").mkdir()
    item = start(watching, root, debounce_seconds=0.25)
    path = root / "r" / "RunLog.json"
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        with open(path, "w") as handle:
            handle.write('{"a": 1}')
    posts = [p for p in item.posted_paths(1.0) if path in p]
    # 1 s of rewrites plus the trailing post: about 1 / 0.25 + 1, never one per write.
    assert 2 <= len(posts) <= 7, len(posts)
    assert item.value("runlog_relay_fs_events_total") > 50


def test_a_new_run_folder_is_posted_and_watched(root: Path, watching: list[Watching]) -> None:
    item = start(watching, root, debounce_seconds=0.05)
    run = root / "new-run"
    run.mkdir()
    item.expect(changed_with(run))
    path = run / "RunLog.json"
    path.write_text("{}")
    item.expect(changed_with(path))


def test_single_layout_files_at_the_top_are_watched(root: Path, watching: list[Watching]) -> None:
    item = start(watching, root, layout=Layout.SINGLE, debounce_seconds=0.05)
    path = root / "run-1.json"
    path.write_text("{}")
    item.expect(changed_with(path))


def test_a_replaced_source_folder_is_watched_again(root: Path, watching: list[Watching]) -> None:
    item = start(watching, root, debounce_seconds=0.05)
    root.rename(root.with_name("old"))
    root.mkdir()
    item.expect(lambda m: isinstance(m, Rescan) and m.reason == "watch armed")
    (root / "r").mkdir()
    item.expect(changed_with(root / "r"))  # posted once its own watch is armed
    path = root / "r" / "RunLog.json"
    path.write_text("{}")
    item.expect(changed_with(path))


def test_a_source_swapped_without_an_event_is_noticed_by_its_inode(
    root: Path, watching: list[Watching], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = start(watching, root, debounce_seconds=0.05)
    # The folder under the path changes without any event reaching our watch (a mount on
    # top, a volume swapped by the kubelet): only its inode tells.
    real_stat = os.stat
    other = real_stat(tmp_path)

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        return other if Path(str(path)) == root else real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(events.os, "stat", stat)
    item.expect(
        lambda m: isinstance(m, Rescan) and m.reason == "watch armed",
        timeout=events.ROOT_CHECK_SECONDS + 5,
    )


def test_polling_mode_posts_rescans_and_uses_no_inotify(
    root: Path, watching: list[Watching], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_inotify() -> None:
        raise AssertionError("inotify used in polling mode")

    monkeypatch.setattr(inotify, "Inotify", no_inotify)
    item = Watching(root, force_polling=True, poll_interval_seconds=0.05)
    watching.append(item)
    item.watcher.start()
    for _ in range(3):
        item.expect(lambda m: isinstance(m, Rescan) and m.reason == "poll")
        while not item.inbox.empty():
            item.inbox.get()


# --------------------------------------------------------------------------- overflow


def test_the_kernel_reports_a_queue_overflow_through_the_binding(tmp_path: Path) -> None:
    limit = int(events.inotify_limit("max_queued_events"))
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("{}")
    second.write_text("{}")
    with inotify.Inotify() as watch:
        watch.add_watch(str(tmp_path), inotify.IN_ATTRIB)
        # More events than the kernel queues, nobody reading; alternating files, because
        # the kernel merges an event identical to the last one queued.
        for _ in range(limit // 2 + 100):
            os.utime(first)
            os.utime(second)
        masks = [event.mask for event in watch.read()]
    assert any(mask & inotify.IN_Q_OVERFLOW for mask in masks)


class OverflowingInotify:
    """A fake instance whose first read is the kernel's overflow event."""

    def __init__(self) -> None:
        self._read, self.fd = os.pipe()
        os.write(self.fd, b"x")  # readable at once
        self._sent = False

    def add_watch(self, path: str, mask: int) -> int:
        return 1 if path.endswith("run_logs") else 2

    def rm_watch(self, wd: int) -> None:
        pass

    def read(self) -> Iterator[inotify.Event]:
        if not self._sent:
            self._sent = True
            yield inotify.Event(wd=-1, mask=inotify.IN_Q_OVERFLOW, name="")

    def close(self) -> None:
        os.close(self._read)
        os.close(self.fd)


def test_an_overflow_triggers_a_rescan_at_once(
    root: Path, watching: list[Watching], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inotify, "Inotify", OverflowingInotify)
    item = Watching(root, rescan_interval_seconds=3600.0)
    watching.append(item)
    item.watcher.start()
    item.expect(lambda m: isinstance(m, Rescan) and m.reason == "inotify queue overflow")
    assert item.value("runlog_relay_watch_overflows_total") == 1


# --------------------------------------------------------------------------- limits


class LimitedInotify:
    """Watches beyond ``limit`` fail like the kernel's ENOSPC; see the integration tests
    for the real limit, provoked in a user namespace."""

    limit = 2

    def __init__(self) -> None:
        self._real = _RealInotify()
        self.fd = self._real.fd
        self._count = 0

    def add_watch(self, path: str, mask: int) -> int:
        if self._count >= self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        self._count += 1
        return self._real.add_watch(path, mask)

    def rm_watch(self, wd: int) -> None:
        self._count -= 1
        self._real.rm_watch(wd)

    def read(self) -> Iterator[inotify.Event]:
        return self._real.read()

    def close(self) -> None:
        self._real.close()


def test_folders_beyond_the_watch_limit_are_polled(
    root: Path, watching: list[Watching], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c", "d"):
        (root / name).mkdir()
    monkeypatch.setattr(inotify, "Inotify", LimitedInotify)
    item = start(watching, root, poll_interval_seconds=0.1)
    assert item.value("runlog_relay_unwatched_folders") == 3  # root + one run watched
    assert item.watcher.problem is not None
    assert "max_user_watches" in item.watcher.problem
    # The unwatched folders are posted every poll interval: the detector scans them.
    polled = item.expect(
        lambda m: isinstance(m, PathsChanged) and len(m.paths & {root / n for n in "abcd"}) >= 3
    )
    assert isinstance(polled, PathsChanged)


def test_without_an_instance_the_whole_folder_is_polled(
    root: Path, watching: list[Watching], monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted() -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(inotify, "Inotify", exhausted)
    item = Watching(root, poll_interval_seconds=0.05)
    watching.append(item)
    item.watcher.start()
    item.expect(lambda m: isinstance(m, Rescan) and m.reason == "poll")
    item.expect(lambda m: isinstance(m, Rescan) and m.reason == "poll")
    assert item.watcher.problem is not None and "max_user_instances" in item.watcher.problem
    assert item.value("runlog_relay_unwatched_folders") == 1


def test_a_missing_source_is_waited_for_with_a_warning(
    tmp_path: Path, watching: list[Watching], caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "later"
    item = Watching(root)
    watching.append(item)
    item.watcher.start()
    deadline = time.monotonic() + PATIENCE
    while "does not exist" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "not mirroring until it appears" in caplog.text
    root.mkdir()
    item.expect(lambda m: isinstance(m, Rescan) and m.reason == "watch armed")
