"""Events stage: turns filesystem activity under the source folder into messages.

It watches the source folder and each run folder with inotify (:mod:`.inotify`; the
layout is two levels deep) and posts :class:`PathsChanged` to the detector:

* **Leading edge.** A file closed after writing (``IN_CLOSE_WRITE``, what runnable's
  ``open(path, "w")`` … ``close`` ends with) or renamed into place is posted at once, so a
  quiet file's change is read and uploaded without waiting. A file written without being
  closed (``IN_MODIFY`` only) is posted ``debounce`` after its first write.
* **Throttle.** A file posted less than ``debounce`` ago is posted again only when that
  interval is over (its latest state then): a file rewritten a thousand times a second
  is read at most once per interval.

Watching never degrades silently:

* **Watch limit** (``ENOSPC``: ``fs.inotify.max_user_watches``, shared by every process
  of the user on the node). The folders that could not be watched are polled every
  ``pollInterval`` (one ``lstat`` per file) and retried as watches free up; logged once
  with the fix, counted in ``runlog_relay_unwatched_folders``, shown in ``/readyz``.
* **Instance limit** (``EMFILE`` from ``inotify_init1``:
  ``fs.inotify.max_user_instances``): the whole folder is polled, and inotify retried
  every :data:`REARM_SECONDS`; logged, counted and shown the same way.
* **Queue overflow** (``IN_Q_OVERFLOW``: events were lost): a rescan is posted at once.
* **Source replaced** (renamed away, deleted, another folder put in its place): noticed
  by its watch or, within :data:`ROOT_CHECK_SECONDS`, by its inode; the watch is re-armed
  on the new folder and a rescan posted.

With ``sync.forcePolling`` (NFS, CIFS and some CSI volumes deliver no inotify events) no
watch is made: a rescan is posted every poll interval. A rescan compares size, mtime and
ctime in nanoseconds and inode, with one ``lstat`` per file.

The folder may not exist yet when the sidecar starts (an empty volume that runnable
creates later), and it may vanish and come back; the watcher waits, warning every
:data:`MISSING_WARNING_SECONDS`, re-arms and posts a rescan so nothing written meanwhile
is missed.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
import queue
import select
import stat
import threading
import time
from pathlib import Path

from runlog_relay.config.settings import SyncSettings
from runlog_relay.layout import Layout
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar import inotify
from runlog_relay.sidecar.types import Inbox, PathsChanged, Rescan

__all__ = ["FolderWatcher", "inotify_limit"]

log = logging.getLogger(__name__)

#: How often a missing source folder is looked for.
WAIT_FOR_SOURCE_SECONDS = 0.5
#: How often a missing source folder is warned about.
MISSING_WARNING_SECONDS = 60.0
#: How often the source folder's inode is compared with the watched one.
ROOT_CHECK_SECONDS = 1.0
#: How often inotify is tried again after the instance limit was hit.
REARM_SECONDS = 30.0
#: How often an overflow is logged (each one triggers a rescan regardless).
OVERFLOW_LOG_SECONDS = 60.0

_ROOT_MASK = (
    inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_MODIFY
    | inotify.IN_ATTRIB
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
    | inotify.IN_DONT_FOLLOW
    | inotify.IN_EXCL_UNLINK
)
_RUN_MASK = _ROOT_MASK & ~(inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF)
#: Events after which a file is complete (closed after writing, renamed into place) or
#: gone: posted at once unless throttled.
_NOW = inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_DELETE | inotify.IN_MOVED_FROM
#: Events in the middle of a write (or a chmod): posted after the debounce.
_SOON = inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_ATTRIB
_ROOT_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT | inotify.IN_IGNORED


def inotify_limit(name: str) -> str:
    """The current value of ``fs.inotify.<name>``, for messages ("?" if unreadable)."""
    try:
        return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
    except OSError:
        return "?"


class _Rearm(Exception):
    """The watched source folder is gone or was replaced: arm again."""


class FolderWatcher:
    """A thread that watches ``root`` and its run folders and posts to ``inbox``."""

    def __init__(
        self,
        root: Path,
        sync: SyncSettings,
        inbox: queue.SimpleQueue[Inbox],
        metrics: SidecarMetrics,
        *,
        layout: Layout = Layout.CHUNKED,
    ) -> None:
        self.root = root
        self.sync = sync
        self.layout = layout
        self._inbox = inbox
        self._metrics = metrics
        self._stop = threading.Event()
        # stop() writes here so a watcher blocked in poll() returns at once.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self.problem: str | None = None  #: why watching is degraded (readiness)
        self._announced: set[str] = set()
        self._last_overflow_log = -OVERFLOW_LOG_SECONDS
        # Per-path posting state (leading edge and throttle).
        self._last_post: dict[Path, float] = {}
        self._created: set[Path] = set()  # run folders made while watched, not posted yet
        self._first_event: dict[Path, float] = {}
        self._due: dict[Path, float] = {}
        self._due_heap: list[tuple[float, str]] = []
        self._ready: set[Path] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # already closed: nothing to wake
            os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_read = self._wake_write = -1

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    # ----------------------------------------------------------------- outer loop
    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wait_for_root():
                return
            try:
                if self.sync.force_polling:
                    self._poll_everything(until_rearm=None)
                else:
                    self._watch()
            except _Rearm:
                continue
            except Exception as exc:
                # A watcher failure must not kill the sidecar: re-arm after a pause.
                log.error("file watcher failed (%s: %s); re-arming", type(exc).__name__, exc)
                self._inbox.put(Rescan(reason="watcher re-armed"))
                self._stop.wait(1.0)

    def _wait_for_root(self) -> bool:
        """Block until the folder exists; False when asked to stop first."""
        warned_at: float | None = None
        while not self._stop.is_set():
            try:
                if stat.S_ISDIR(os.stat(self.root).st_mode):
                    if warned_at is not None:
                        log.info("source folder %s appeared; watching it", self.root)
                    return True
                why = "is not a directory"
            except OSError:
                why = "does not exist"
            now = time.monotonic()
            if warned_at is None or now - warned_at >= MISSING_WARNING_SECONDS:
                log.warning("source folder %s %s; not mirroring until it appears", self.root, why)
                warned_at = now
            self._stop.wait(WAIT_FOR_SOURCE_SECONDS)
        return False

    def _degrade(self, problem: str, fix: str) -> None:
        self.problem = problem
        if problem not in self._announced:
            self._announced.add(problem)
            log.warning("%s; %s", problem, fix)

    def _root_changed(self, identity: tuple[int, int]) -> bool:
        try:
            info = os.stat(self.root)
        except OSError:
            return True
        return (info.st_dev, info.st_ino) != identity or not stat.S_ISDIR(info.st_mode)

    # ----------------------------------------------------------------- polling
    def _poll_everything(self, until_rearm: float | None) -> None:
        """Post a rescan every poll interval (polling mode, or no inotify instance)."""
        info = os.stat(self.root)
        identity = (info.st_dev, info.st_ino)
        self._inbox.put(Rescan(reason="poll"))
        while not self._stop.wait(self.sync.poll_interval_seconds):
            if self._root_changed(identity):
                raise _Rearm
            if until_rearm is not None and time.monotonic() >= until_rearm:
                raise _Rearm
            # A non-empty inbox means a rescan is probably still waiting: do not bury a
            # slow detector under a backlog of polls.
            if self._inbox.qsize() == 0:
                self._inbox.put(Rescan(reason="poll"))

    # ----------------------------------------------------------------- inotify
    def _watch(self) -> None:
        try:
            watch = inotify.Inotify()
        except inotify.InotifyUnavailable as exc:
            self._degrade(
                f"inotify is not available ({exc.strerror}): polling {self.root} every"
                f" {self.sync.poll_interval_seconds:g}s",
                "set sync.forcePolling to say so explicitly",
            )
            self._metrics.unwatched_folders.set(1)
            self._poll_everything(until_rearm=None)
            return
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
            self._degrade(
                f"inotify instance limit reached (fs.inotify.max_user_instances ="
                f" {inotify_limit('max_user_instances')}, shared by every process of this"
                f" user on the node): polling {self.root} every"
                f" {self.sync.poll_interval_seconds:g}s instead",
                "raise it, e.g. sysctl -w fs.inotify.max_user_instances=1024",
            )
            self._metrics.unwatched_folders.set(1)
            self._poll_everything(until_rearm=time.monotonic() + REARM_SECONDS)
            return
        try:
            self._watch_with(watch)
        finally:
            watch.close()
            self._metrics.unwatched_folders.set(0)

    def _watch_with(self, watch: inotify.Inotify) -> None:
        info = os.stat(self.root)
        identity = (info.st_dev, info.st_ino)
        try:
            root_wd = watch.add_watch(str(self.root), _ROOT_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise _Rearm from None
            if exc.errno != errno.ENOSPC:
                raise
            self._watch_limit(1)
            self._metrics.unwatched_folders.set(1)
            self._poll_everything(until_rearm=time.monotonic() + REARM_SECONDS)
            return
        folders: dict[int, str] = {}  # wd → run folder name
        watched: dict[str, int] = {}  # run folder name → wd
        unwatched: set[str] = set()
        if self.layout is Layout.CHUNKED:
            for entry in os.scandir(self.root):
                if entry.is_dir(follow_symlinks=False):
                    self._add_folder(watch, entry.name, folders, watched, unwatched)
        self._unwatched_changed(unwatched)
        # Anything written before the watches were armed produced no event: rescan once.
        self._inbox.put(Rescan(reason="watch armed"))
        poller = select.poll()
        poller.register(watch.fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        next_root_check = time.monotonic() + ROOT_CHECK_SECONDS
        next_poll = time.monotonic() + self.sync.poll_interval_seconds
        while not self._stop.is_set():
            now = time.monotonic()
            wake = min(next_root_check, self._due_heap[0][0] if self._due_heap else now + 1.0)
            if unwatched:
                wake = min(wake, next_poll)
            poller.poll(max(0, int((wake - now) * 1000) + 1))
            now = time.monotonic()
            for event in watch.read():
                if event.mask & inotify.IN_Q_OVERFLOW:
                    self._overflow(now)
                elif event.wd == root_wd:
                    if event.mask & _ROOT_GONE:
                        raise _Rearm
                    self._root_event(watch, event, now, folders, watched, unwatched)
                elif event.wd in folders:
                    self._folder_event(event, now, folders, watched)
            self._post_due(now)
            if unwatched and now >= next_poll:
                self._poll_unwatched(watch, folders, watched, unwatched, now)
                next_poll = now + self.sync.poll_interval_seconds
            if now >= next_root_check:
                if self._root_changed(identity):
                    log.info("source folder %s was replaced; watching the new one", self.root)
                    raise _Rearm
                next_root_check = now + ROOT_CHECK_SECONDS
                self._prune(now)

    def _add_folder(
        self,
        watch: inotify.Inotify,
        name: str,
        folders: dict[int, str],
        watched: dict[str, int],
        unwatched: set[str],
    ) -> bool:
        try:
            wd = watch.add_watch(str(self.root / name), _RUN_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                unwatched.add(name)
                return False
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return True  # gone again, or a link: nothing to watch
            raise
        folders[wd] = name
        watched[name] = wd
        unwatched.discard(name)
        return True

    def _watch_limit(self, count: int) -> None:
        self._degrade(
            f"inotify watch limit reached (fs.inotify.max_user_watches ="
            f" {inotify_limit('max_user_watches')}, shared by every process of this user on the"
            f" node): polling {count} folder(s) every {self.sync.poll_interval_seconds:g}s"
            " instead",
            "raise it, e.g. sysctl -w fs.inotify.max_user_watches=1048576",
        )

    def _unwatched_changed(self, unwatched: set[str]) -> None:
        self._metrics.unwatched_folders.set(len(unwatched))
        if unwatched:
            self._watch_limit(len(unwatched))
            self.problem = (
                f"inotify watch limit reached (fs.inotify.max_user_watches): polling"
                f" {len(unwatched)} folder(s) every {self.sync.poll_interval_seconds:g}s"
            )
        elif self.problem is not None:
            log.info("every run folder is watched again")
            self.problem = None

    def _poll_unwatched(
        self,
        watch: inotify.Inotify,
        folders: dict[int, str],
        watched: dict[str, int],
        unwatched: set[str],
        now: float,
    ) -> None:
        # Watches may have freed up (runs deleted, other processes gone): try again first.
        for name in sorted(unwatched):
            if not self._add_folder(watch, name, folders, watched, unwatched):
                break
            self._ready.add(self.root / name)  # scan it once: it was unwatched until now
        for name in unwatched:
            self._ready.add(self.root / name)
        self._unwatched_changed(unwatched)
        self._flush(now)

    def _overflow(self, now: float) -> None:
        self._metrics.watch_overflows.inc()
        if now - self._last_overflow_log >= OVERFLOW_LOG_SECONDS:
            self._last_overflow_log = now
            log.warning(
                "inotify event queue overflowed (fs.inotify.max_queued_events ="
                " %s): events were lost; rescanning now",
                inotify_limit("max_queued_events"),
            )
        self._inbox.put(Rescan(reason="inotify queue overflow"))

    def _root_event(
        self,
        watch: inotify.Inotify,
        event: inotify.Event,
        now: float,
        folders: dict[int, str],
        watched: dict[str, int],
        unwatched: set[str],
    ) -> None:
        path = self.root / event.name
        if event.mask & inotify.IN_ISDIR:
            if self.layout is not Layout.CHUNKED:
                return
            self._metrics.fs_events.inc()
            if event.mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                if event.mask & inotify.IN_CREATE:
                    self._created.add(path)  # moved in: it may be an old run, list it
                if not self._add_folder(watch, event.name, folders, watched, unwatched):
                    self._unwatched_changed(unwatched)
            elif event.mask & (inotify.IN_DELETE | inotify.IN_MOVED_FROM):
                wd = watched.pop(event.name, None)
                if wd is not None:
                    folders.pop(wd, None)
                    watch.rm_watch(wd)  # a folder moved away keeps its watch otherwise
                if event.name in unwatched:
                    unwatched.discard(event.name)
                    self._unwatched_changed(unwatched)
            else:
                return
            # The detector scans a new folder whole (files written before its watch was
            # armed made no event) and forgets a removed one.
            self._ready.add(path)
            self._first_event.setdefault(path, now)
            self._flush(now)
            return
        if self.layout is Layout.SINGLE:
            self._file_event(path, event.mask, now)

    def _folder_event(
        self, event: inotify.Event, now: float, folders: dict[int, str], watched: dict[str, int]
    ) -> None:
        name = folders[event.wd]
        if event.mask & inotify.IN_IGNORED:
            folders.pop(event.wd, None)
            if watched.get(name) == event.wd:
                del watched[name]
            return
        if not event.name or event.mask & inotify.IN_ISDIR:
            return
        self._file_event(self.root / name / event.name, event.mask, now)

    # ----------------------------------------------------------------- posting
    def _file_event(self, path: Path, mask: int, now: float) -> None:
        self._metrics.fs_events.inc()
        self._first_event.setdefault(path, now)
        last = self._last_post.get(path)
        throttled_until = last + self.sync.debounce_seconds if last is not None else 0.0
        if mask & _NOW:
            if now >= throttled_until:
                self._ready.add(path)
                self._due.pop(path, None)
            else:
                self._set_due(path, throttled_until)
        elif mask & _SOON:
            self._set_due(path, max(now + self.sync.debounce_seconds, throttled_until))

    def _set_due(self, path: Path, due: float) -> None:
        current = self._due.get(path)
        if current is not None and current <= due:
            return
        self._due[path] = due
        heapq.heappush(self._due_heap, (due, str(path)))

    def _post_due(self, now: float) -> None:
        while self._due_heap and self._due_heap[0][0] <= now:
            due, name = heapq.heappop(self._due_heap)
            path = Path(name)
            if self._due.get(path) == due:
                del self._due[path]
                self._ready.add(path)
        self._flush(now)

    def _flush(self, now: float) -> None:
        if not self._ready:
            return
        paths = frozenset(self._ready)
        self._ready.clear()
        seen = {path: self._first_event.pop(path, now) for path in paths}
        seen_at = min(seen.values())
        for path in paths:
            self._last_post[path] = now
            self._due.pop(path, None)
        created = frozenset(self._created)
        self._created.clear()
        self._inbox.put(PathsChanged(paths=paths, seen_at=seen_at, created=created, seen=seen))

    def _prune(self, now: float) -> None:
        """Forget throttle state older than the debounce (memory stays per active file)."""
        horizon = now - self.sync.debounce_seconds
        for path in [p for p, t in self._last_post.items() if t < horizon]:
            del self._last_post[path]
