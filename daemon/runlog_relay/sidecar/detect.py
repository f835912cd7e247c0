"""Detect stage: decides which file versions are new, complete and worth uploading.

Runs in one thread, fed by the inbox (events, rescans, reconfiguration). For a changed
path it:

1. maps it through :mod:`runlog_relay.localtree` (no symlinks, regular files only, safe
   names) — anything else is skipped, counted and warned about once;
2. reads it *stably*: opened with ``O_NOFOLLOW``, ``fstat`` before and after the read, and
   ``lstat`` of the path after, must agree on size, mtime and inode, and the bytes must
   parse as JSON. runnable rewrites files in place with ``open(path, "w")``, so an empty
   or half-written file is normal for a moment: such a *torn* read is counted and
   retried on a short timer and on the next event; only if it stays torn past the grace
   period is it reported loudly (warning, ``runlog_relay_torn_files``);
3. computes the ETag the body will have in the bucket and compares it with what the
   bucket has (from the start-up listing) or what was last handed to the queue; only a
   difference becomes an :class:`UploadRequest`.

Rescans cost one ``lstat`` per file: a file whose signature is unchanged since a read
that happened well after its mtime is skipped (a signature taken within a second of the
write may be ambiguous on coarse-timestamp filesystems, so it is read again).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from runlog_relay import layout as layouts
from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import RelayError
from runlog_relay.localtree import Candidate, Skipped, classify_path, scan, to_candidate, walk_run
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.objectstore import expected_etag
from runlog_relay.sidecar.types import (
    FileSignature,
    Inbox,
    PathsChanged,
    Reconfigure,
    Rescan,
    Stop,
    UploadRequest,
)

__all__ = ["Detector", "TornRead", "read_stable"]

log = logging.getLogger(__name__)

#: A signature recorded less than this long after the file's mtime may not change on
#: the next write (coarse timestamps), so such a file is re-read on rescans.
SETTLE_SECONDS = 1.0
#: How often torn files are retried besides on their own events.
TORN_RETRY_SECONDS = 0.2
#: A rescan that read at least this much returns free memory to the system afterwards.
RELEASE_AFTER_BYTES = 4 * 1024 * 1024
#: Remember at most this many warned-about paths (a hostile writer cannot grow memory).
MAX_WARNED = 10_000


class TornRead(Exception):
    """The file was not a complete JSON document, or changed while being read."""


def read_stable(path: Path, root: Path | None = None) -> tuple[bytes, FileSignature]:
    """Read a complete version of ``path`` or raise TornRead / OSError.

    With ``root``, every component below it is opened relative to its parent's file
    descriptor with ``O_NOFOLLOW``, so a run folder swapped for a symlink between the
    scan and the read cannot make the sidecar read outside its volume.
    """
    dir_fds: list[int] = []
    try:
        if root is not None:
            parts = path.relative_to(root).parts
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            dir_fds.append(dir_fd)
            for part in parts[:-1]:
                dir_fd = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
                dir_fds.append(dir_fd)
            name: str | Path = parts[-1]
            parent: int | None = dir_fd
        else:
            name, parent = path, None
        return _read_at(name, parent, path)
    finally:
        for fd in reversed(dir_fds):
            os.close(fd)


def _read_at(name: str | Path, dir_fd: int | None, path: Path) -> tuple[bytes, FileSignature]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(f"{path} is not a regular file")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    at_path = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if (
        FileSignature.of(before) != FileSignature.of(after)
        or at_path.st_ino != after.st_ino
        or len(data) != after.st_size
    ):
        raise TornRead("changed while being read")
    if not data.strip():
        raise TornRead("empty")
    try:
        # Decoded here, not sniffed by json.loads(bytes): runnable writes UTF-8, and the
        # single layout re-encodes the text as UTF-8, which a UTF-16/32 file would crash.
        json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TornRead(f"not complete JSON ({type(exc).__name__})") from None
    return data, FileSignature.of(after)


@dataclass(slots=True)
class _FileState:
    """What the detector knows about one local file."""

    run_id: str
    signature: FileSignature | None = None  #: of the last complete version read
    settled: bool = False  #: signature taken well after the write: trust it on rescans
    etag: str | None = None  #: of the last complete version handed downstream / in bucket
    torn_since: float | None = None  #: monotonic time it was first seen torn
    torn_reported: bool = False
    unreadable: str | None = None  #: why the last read failed (permissions, I/O error)
    first_seen_change: float | None = None  #: monotonic time of the oldest unread change


class Detector:
    """The detect stage. ``run()`` is the thread body; everything else is its state."""

    def __init__(
        self,
        settings: SidecarSettings,
        inbox: queue.SimpleQueue[Inbox],
        submit: Callable[[UploadRequest], None],
        list_remote: Callable[[], Iterable[tuple[str, str]]],
        metrics: SidecarMetrics,
        on_synced: Callable[[], None] = lambda: None,
        release_memory: Callable[[], object] = lambda: None,
    ) -> None:
        self.settings = settings
        self._inbox = inbox
        self._submit = submit
        self._list_remote = list_remote
        self._metrics = metrics
        self._on_synced = on_synced
        self._release_memory = release_memory
        self._bytes_read = 0  # by the current rescan
        self._files: dict[str, _FileState] = {}  # relative path → state
        self._remote: dict[str, str] = {}  # key → etag as listed at start-up
        self._listed = False
        self._warned: set[str] = set()
        self._next_rescan = 0.0
        self.stopped = False

    # ----------------------------------------------------------------- thread body
    def run(self) -> None:
        """Process inbox messages until Stop; a rescan runs on the safety-net timer."""
        while True:
            timeout = self._next_timeout()
            try:
                message = self._inbox.get(timeout=timeout)
            except queue.Empty:
                message = None
            try:
                if isinstance(message, Stop):
                    self.stopped = True
                    return
                self._handle(message)
            except RelayError as exc:
                # Listing failed (endpoint down, bad credentials): retried by the timer.
                log.warning("could not list the bucket: %s; retrying", exc)
                self._next_rescan = time.monotonic() + min(
                    5.0, self.settings.sync.rescan_interval_seconds
                )
            except Exception:
                log.exception("detector error; continuing")

    def _next_timeout(self) -> float:
        now = time.monotonic()
        deadline = self._next_rescan
        if any(state.torn_since is not None for state in self._files.values()):
            deadline = min(deadline, now + TORN_RETRY_SECONDS)
        return max(0.0, deadline - now)

    def _handle(self, message: Inbox | None) -> None:
        now = time.monotonic()
        if isinstance(message, Reconfigure):
            old = self.settings
            self.settings = message.settings
            if (
                message.relist
                or old.layout != message.settings.layout
                or old.source != message.settings.source
            ):
                self._files.clear()
                self._listed = False
            self.rescan("reconfigured")
            return
        if isinstance(message, Rescan):
            if message.relist:
                self._listed = False
            self.rescan(message.reason)
            return
        if isinstance(message, PathsChanged):
            if not self._listed:
                self.rescan("first events")
                return
            for path in message.paths:
                self._on_path(path, message.seen_at)
        if now >= self._next_rescan:
            self.rescan("periodic")
        else:
            self._retry_torn()

    # ----------------------------------------------------------------- scanning
    @property
    def root(self) -> Path:
        assert self.settings.source is not None
        return self.settings.source

    def _ensure_listed(self) -> None:
        if self._listed:
            return
        self._remote = dict(self._list_remote())
        self._listed = True
        log.info(
            "listed %d objects in the bucket",
            len(self._remote),
            extra={"bucket": self.settings.bucket},
        )

    def rescan(self, reason: str) -> None:
        """Walk the whole folder and submit every file whose content is not in the bucket."""
        self._ensure_listed()
        started = time.monotonic()
        self._next_rescan = started + self.settings.sync.rescan_interval_seconds
        seen: set[str] = set()
        changed = 0  # files new or changed since their last trustworthy read
        layout = self.settings.layout
        for entry in scan(self.root, layout):
            if isinstance(entry, Skipped):
                self._skip(entry)
                continue
            seen.add(entry.relative)
            state = self._files.get(entry.relative)
            if (
                state is not None
                and state.settled
                and state.torn_since is None
                and state.signature == FileSignature.of(entry.info)
            ):
                # Unchanged since a trustworthy read: the common case, one lstat total.
                state.first_seen_change = None
                continue
            changed += 1
            item = to_candidate(entry, layout)
            if isinstance(item, Skipped):
                self._skip(item)
            else:
                self._consider(item, started)
        # Files deleted locally: forget them (their objects stay: run logs are records).
        for relative in [r for r in self._files if r not in seen]:
            del self._files[relative]
        if reason == "poll":
            # In polling mode the poll is the event source: count what it found.
            self._metrics.fs_events.inc(changed)
        self._update_gauges()
        if self._bytes_read >= RELEASE_AFTER_BYTES:
            # A big first sync reads the whole folder once; give that memory back.
            self._release_memory()
        self._bytes_read = 0
        log.debug("rescan (%s) took %.3fs", reason, time.monotonic() - started)
        self._on_synced()

    def _on_path(self, path: Path, seen_at: float) -> None:
        if path == self.root:
            return
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return
        if self.settings.layout is layouts.Layout.CHUNKED and len(relative.parts) == 1:
            # A new (or changed) run folder: inotify can miss files created before its
            # watch was armed, so scan it whole.
            try:
                info = os.lstat(path)
            except OSError:
                return
            if stat.S_ISDIR(info.st_mode):
                for item in walk_run(self.root, path, self.settings.layout):
                    self._dispatch(item, seen_at)
                self._update_gauges()
                return
        result = classify_path(self.root, path, self.settings.layout)
        if result is None:
            # Deleted or not a run-log file: forget local state, keep the object.
            if self._files.pop(str(relative), None) is not None:
                self._update_gauges()
            return
        self._dispatch(result, seen_at)
        self._update_gauges()

    def _dispatch(self, item: Candidate | Skipped, seen_at: float) -> None:
        if isinstance(item, Skipped):
            self._skip(item)
        else:
            self._consider(item, seen_at)

    def _retry_torn(self) -> None:
        torn = [r for r, s in self._files.items() if s.torn_since is not None]
        for relative in torn:
            result = classify_path(self.root, self.root / relative, self.settings.layout)
            if isinstance(result, Candidate):
                self._consider(result, time.monotonic())
            else:
                self._files.pop(relative, None)
        if torn:
            self._update_gauges()

    # ----------------------------------------------------------------- one file
    def _consider(self, item: Candidate, seen_at: float) -> None:
        state = self._files.get(item.relative)
        if state is None:
            state = self._files[item.relative] = _FileState(run_id=sys.intern(item.mapping.run_id))
            # The listing's entry moves into the file's state: memory stays one entry per
            # file, and _remote keeps only objects with no local file (yet).
            state.etag = self._remote.pop(item.mapping.key, None)
        if state.first_seen_change is None:
            state.first_seen_change = seen_at
        try:
            data, signature = read_stable(item.path, root=self.root)
        except TornRead as torn:
            self._torn(item, state, str(torn))
            return
        except FileNotFoundError:
            self._files.pop(item.relative, None)
            return
        except OSError as exc:
            # Kept in the state (and retried on every rescan): the file belongs in the
            # mirror, so shutdown reports it until it can be read.
            state.unreadable = exc.strerror or str(exc)
            self._skip(Skipped(item.path, "unreadable", state.unreadable))
            return
        state.unreadable = None
        read_at = time.time()
        self._bytes_read += len(data)
        state.signature = signature
        state.settled = read_at - signature.mtime_ns / 1e9 > SETTLE_SECONDS
        if state.torn_since is not None:
            log.info("file is complete again: %s", item.path, extra={"path": str(item.path)})
        state.torn_since = None
        state.torn_reported = False
        body = layouts.encode_body(data, self.settings.layout)
        etag = expected_etag(body)
        first_seen, state.first_seen_change = state.first_seen_change or seen_at, None
        if etag == state.etag:
            return
        state.etag = etag
        self._metrics.fs_versions.inc()
        self._metrics.fs_write_bytes.inc(len(data))
        self._submit(
            UploadRequest(
                key=item.mapping.key,
                run_id=item.mapping.run_id,
                path=item.path,
                body=body,
                etag=etag,
                seen_at=first_seen,
                file_size=len(data),
            )
        )

    def _torn(self, item: Candidate, state: _FileState, why: str) -> None:
        now = time.monotonic()
        self._metrics.torn_reads.inc()
        if state.torn_since is None:
            state.torn_since = now
            log.debug("torn read of %s (%s); will retry", item.path, why)
        grace = self.settings.sync.torn_grace_seconds
        if not state.torn_reported and now - state.torn_since >= grace:
            state.torn_reported = True
            log.warning(
                "file has not been complete JSON for %.0fs (%s): %s; the last complete version"
                " stays in the bucket and it is retried until it is complete",
                now - state.torn_since,
                why,
                item.path,
                extra={"path": str(item.path), "run_id": item.mapping.run_id, "reason": "torn"},
            )

    def _skip(self, item: Skipped) -> None:
        self._metrics.skipped_files.labels(reason=item.reason).inc()
        marker = f"{item.reason}:{item.path}"
        if marker in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(marker)
        log.warning(
            "not mirroring %r: %s",
            str(item.path),
            item.detail,
            extra={"path": repr(str(item.path)), "reason": item.reason},
        )

    def _update_gauges(self) -> None:
        now = time.monotonic()
        grace = self.settings.sync.torn_grace_seconds
        self._metrics.files_tracked.set(len(self._files))
        self._metrics.runs_tracked.set(len({s.run_id for s in self._files.values()}))
        self._metrics.torn_files.set(
            sum(
                1
                for s in self._files.values()
                if s.torn_since is not None and now - s.torn_since >= grace
            )
        )

    # ----------------------------------------------------------------- reporting
    def torn_paths(self) -> list[str]:
        """Files that are torn right now (for the shutdown report)."""
        return sorted(r for r, s in self._files.items() if s.torn_since is not None)

    def unreadable_paths(self) -> dict[str, str]:
        """Files that could not be read at the last attempt, with the reason."""
        return {r: s.unreadable for r, s in sorted(self._files.items()) if s.unreadable}
