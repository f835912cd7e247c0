"""Detect stage: decides which file versions are new, complete and worth uploading, and
keeps the ledger of what is mirrored.

One thread, fed by its inbox (events, rescans, listings, upload outcomes). It owns one
record per local run-log file, so it can say at any moment, in O(1), how many files are
not mirrored yet, and at exit exactly which ones and why:

1. A path is mapped through :mod:`runlog_relay.localtree` (no symlinks, regular files
   only, safe names); anything else is skipped, counted and warned about once.
2. Nothing is uploaded for a run before the bucket's objects of that run are known
   (:mod:`.listing`: per run prefix, or one listing filtered to the local runs).
3. A file is read *stably* (:func:`runlog_relay.stableread.read_stable`); files bigger
   than :data:`~runlog_relay.stableread.INLINE_BODY_BYTES` are read by a second thread
   so a huge or torn file never delays the healthy ones.
4. The body's ETag is compared with what the bucket has (listing, or an upload's
   answer); only a difference becomes an :class:`UploadRequest`.

A file that is torn (runnable rewrites in place) is counted and retried with backoff
(0.2 s doubling to the rescan interval; its own events retry it at once), and reported
loudly only after the grace period. A file that cannot be mirrored for another reason
(unreadable, too large, any exception while handling it) is that file's problem only:
counted by reason, warned about once, retried, and named at exit. After an upload that
ended without an answer (the PUT may land later, even after a newer one), the run is
confirmed against the bucket once its uploads are done; every run is confirmed before
the mirror is called complete (objects can vanish: deleted, a lifecycle rule, a store
restarted empty), and a few at each full sweep; whatever is missing or differs is
uploaded again.

Everything per change is O(1): counters for the gauges, one heap for every timer. Rescans
cost one ``lstat`` per file: a file whose signature is unchanged since a read that
happened well after its mtime is not read again (a signature taken within a second of
the write may be ambiguous on coarse-timestamp filesystems, so it is read again).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import queue
import resource
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runlog_relay import layout as layouts
from runlog_relay.backoff import backoff_delay
from runlog_relay.config.settings import ENV_PREFIX, SidecarSettings
from runlog_relay.localtree import (
    TRANSIENT_ERRNOS,
    Candidate,
    Entry,
    FolderError,
    Skipped,
    classify_path,
    other_layout_files,
    scan,
    scan_run,
    to_candidate,
)
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.types import (
    PER_RUN_LISTING_MAX_RUNS,
    FileGone,
    FileVersion,
    Inbox,
    Listed,
    ListingPurpose,
    PathsChanged,
    ReadDone,
    Reconfigure,
    Rescan,
    RunLedger,
    Stale,
    Stop,
    Uploaded,
    UploadFailed,
    UploadRequest,
    Verify,
)
from runlog_relay.stableread import (
    INLINE_BODY_BYTES,
    FileSignature,
    Snapshot,
    TooLarge,
    TornRead,
    read_stable,
)

__all__ = ["Detector", "DetectorStatus"]

log = logging.getLogger(__name__)

#: A signature recorded less than this long after the file's mtime may not change on
#: the next write (coarse timestamps), so such a file is re-read on rescans.
SETTLE_SECONDS = 1.0
#: A torn (or failing) file is read again after this long, doubling up to the rescan
#: interval; its own events retry it at once.
TORN_RETRY_BASE_SECONDS = 0.2
#: A run folder that could not be listed for want of a resource (EMFILE) is retried
#: after this long, doubling, instead of waiting for the next rescan.
FOLDER_RETRY_BASE_SECONDS = 0.5
#: A run is confirmed against the bucket again this long after its last doubtful upload
#: (a PUT stuck in a proxy can land late).
VERIFY_WINDOW_SECONDS = 60.0
#: Every this many periodic rescans, one is a full sweep (an lstat per file); the others
#: only look at names (plus files not settled yet).
FULL_SWEEP_EVERY = 10
#: Runs confirmed against the bucket by one full sweep (one LIST of each run's prefix):
#: a Job pod's runs every sweep, a shared volume's in turn, oldest listing first.
RECONCILE_RUNS = PER_RUN_LISTING_MAX_RUNS
#: Files read between two looks at the inbox, so events stay responsive during a backlog.
WORK_BATCH = 32
#: While the upload queue is full, look again this often.
BACK_PRESSURE_WAIT = 0.02
#: Files bigger than this are read by the bulk reader thread, in smaller pieces.
BULK_CHUNK = 64 * 1024
#: Remember at most this many warned-about paths (a hostile writer cannot grow memory).
MAX_WARNED = 10_000

#: size, mtime, ctime and inode packed in 32 bytes (a tuple of four big ints costs ~200).
Signature = bytes
_SIGNATURE = struct.Struct("qqqq")


@dataclass(frozen=True, slots=True)
class DetectorStatus:
    """What the detector still has to do; all zero (and ``listed``) means quiescent."""

    scanned: bool  #: at least one full rescan happened
    contacted: bool  #: the bucket answered a listing at least once
    unlisted_runs: int  #: local runs whose objects are not known yet
    to_read: int  #: files waiting to be read (or being read)
    pending: int  #: files whose latest version is not confirmed in the bucket
    verifying: int  #: runs being confirmed against the bucket
    files: int


@dataclass(slots=True, eq=False)
class _Run:
    run_id: str
    layout: layouts.Layout
    files: dict[str, _File] = field(default_factory=dict)
    listed: bool = False  #: the bucket's objects of this run are known
    requested: bool = False  #: a COMPARE listing is on its way
    unclaimed: dict[str, str] = field(default_factory=dict)  #: listed keys with no file yet
    pending: int = 0  #: files of this run counted as pending
    doubtful_at: float | None = None  #: last upload that may land late
    ever_doubtful: bool = False
    verifying: bool = False
    checked_at: float = float("-inf")  #: when the bucket's objects of it were last listed


@dataclass(slots=True, eq=False)
class _File:
    relative: str
    run: _Run
    signature: Signature | None = None  #: of the last complete version read
    settled: bool = False  #: signature taken well after the write: trust it on rescans
    etag: str | None = None  #: latest complete local version handed downstream
    remote: str | None = None  #: the version the bucket holds (listing or upload answer)
    remote_listed: bool = False  #: ``remote`` is a listed ETag (maybe not an MD5)
    #: The bucket's own ETag for ``remote`` where it is not the MD5 (SSE-KMS, SSE-C): how
    #: a confirming listing recognises the object without a HEAD. None on MD5 buckets.
    alias: str | None = None
    dirty: bool = False  #: must be read
    reading: bool = False  #: with the bulk reader
    first_change: float | None = None  #: monotonic time of the oldest unmirrored change
    torn_since: float | None = None
    torn_signature: Signature | None = None  #: of the version found torn
    torn_settled: bool = False  #: that signature was taken well after the write
    torn_reason: str = ""
    torn_reported: bool = False
    retries: int = 0  #: consecutive torn or failed reads (backoff)
    retry_at: float = 0.0
    problem: str | None = None  #: why it cannot be mirrored now (named at exit)
    given_up: str | None = None  #: the upload of this version was given up (--once)
    seen: int = 0  #: rescan generation that last saw it
    counted_pending: bool = False
    counted_torn: bool = False

    @property
    def key(self) -> str:
        """Its object key (derived, not stored: one string less per file)."""
        return layouts.key_of(self.relative, self.run.layout)


def _why_unmirrored(file: _File) -> str | None:
    """Why the file's latest content is not known to be in the bucket, or None."""
    if file.problem is not None:
        return f"{file.problem.replace('_', ' ')}: {file.torn_reason}"
    if file.torn_since is not None:
        return f"torn (not complete JSON at the end): {file.torn_reason}"
    if file.given_up is not None:
        return f"not uploaded: {file.given_up}"
    if not file.run.listed:
        return "not compared with the bucket (its run was never listed)"
    if file.dirty or file.reading or file.etag is None:
        return "not read yet"
    if file.etag != file.remote:
        return "upload not finished"
    return None


def _signature(info: os.stat_result) -> Signature:
    return _SIGNATURE.pack(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def _packed(signature: FileSignature) -> Signature:
    return _SIGNATURE.pack(signature.size, signature.mtime_ns, signature.ctime_ns, signature.inode)


#: Skip reasons of run-log files that are never uploaded (their name cannot be a key):
#: named at exit as not mirrored, with these words.
_NEVER_UPLOADED = {"unsafe_name": "unsafe name", "key_too_long": "key too long"}

#: What opening a path without following links says when a component is a link.
_LINKED = frozenset({errno.ELOOP, errno.ENOTDIR})


def _regular_size(path: Path | str) -> int | None:
    """The size of a tracked file that is still a regular file, from one lstat; None when
    it is gone or something else now. Its name was checked when it was first tracked, and
    the read opens every folder below the root without following links, so the rest of
    :func:`classify_path` (an lstat of each folder, the key's checks: ~25 µs a file, 10 %
    of the detector's CPU per file read) is only for a path that fails this."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def read_file(
    path: Path | str, root: Path, layout: layouts.Layout, max_size: int, chunk_size: int
) -> Snapshot | BaseException:
    """Read one file; any exception is returned, not raised: it is that file's problem."""
    try:
        return read_stable(
            path,
            root=root,
            layout=layout,
            keep_body=INLINE_BODY_BYTES,
            max_size=max_size,
            chunk_size=chunk_size,
        )
    except Exception as exc:
        return exc


class _BulkReader:
    """A thread for big files: their reads take long and must not hold up small ones."""

    def __init__(self, post: Callable[[Inbox], object]) -> None:
        self._post = post
        self._work: queue.SimpleQueue[tuple[str, Path | str, Path, layouts.Layout, int] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def submit(
        self, relative: str, path: Path | str, root: Path, layout: layouts.Layout, limit: int
    ) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bulk-reader", daemon=True)
            self._thread.start()
        self._work.put((relative, path, root, layout, limit))

    def stop(self) -> None:
        if self._thread is not None:
            self._work.put(None)

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            relative, path, root, layout, limit = item
            self._post(ReadDone(relative, read_file(path, root, layout, limit, BULK_CHUNK)))


class Detector:
    """The detect stage. ``run()`` is the thread body; everything else is its state."""

    def __init__(
        self,
        settings: SidecarSettings,
        inbox: queue.SimpleQueue[Inbox],
        submit: Callable[[UploadRequest], bool],
        request_listing: Callable[[frozenset[str], ListingPurpose], object],
        metrics: SidecarMetrics,
        *,
        has_room: Callable[[int], bool] = lambda size: True,
        on_synced: Callable[[], None] = lambda: None,
        on_progress: Callable[[], None] = lambda: None,
        release_memory: Callable[[], object] = lambda: None,
        owns: Callable[[str], bool] = lambda run_id: True,
        clock: Callable[[], float] = time.monotonic,
        on_file: Callable[[FileVersion | FileGone], object] = lambda event: None,
    ) -> None:
        self.settings = settings
        self._on_file = on_file  # the run tracker (sealing) follows each run's files
        self._owns = owns  # scale-out: whether this replica mirrors the run (shard.py)
        self._inbox = inbox
        self._submit = submit
        self._has_room = has_room
        self._full = False  # the queue had no room at the last try: wait a little
        self._request_listing = request_listing
        self._metrics = metrics
        self._on_synced = on_synced
        self._on_progress = on_progress
        self._release_memory = release_memory
        self._clock = clock
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._runs: dict[str, _Run] = {}
        self._dirty: deque[_File] = deque()
        self._to_read = 0  # files dirty or reading
        self._pending = 0
        self._torn_reported = 0
        self._unlisted = 0  # runs not listed yet
        self._verifying = 0
        self._want_listing: set[str] = set()
        self._timers: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._generation = 0
        self._periodic = 0  # periodic rescans so far (every FULL_SWEEP_EVERY-th is full)
        self._scanned = False
        self._contacted = False
        # A listed ETag has equalled a local body's: this bucket's ETags are MD5s, so a
        # listed ETag that differs is a real difference (no HEAD needed to confirm it).
        self._etags_are_md5 = False
        # Run folders made while watched, not tracked yet: no listing needed (PathsChanged).
        self._born: set[str] = set()
        self._synced = False
        self._warned: set[str] = set()
        self._short_warned = False  # out of descriptors: warned about once
        self._layout_warned = False  # files of the other layout: warned about once
        # Run folders of ours that could not be listed (permissions): their files are
        # unknown, so they are named at exit like any file that is not mirrored.
        self._unlistable: dict[str, str] = {}
        # Files of ours whose names cannot be keys (unsafe, or too long with the prefix):
        # never uploaded, so named at exit too (path -> why); rebuilt by every rescan,
        # which sees them again while they exist.
        self._unsafe: dict[str, str] = {}
        self._bytes_read = 0
        self._next_rescan = float("inf")  # set by the first rescan (start-up, or --once's)
        self._bulk = _BulkReader(self._inbox.put)
        self.abort = threading.Event()  #: the drain is over: stop reading, report
        self.stopped = False

    # ----------------------------------------------------------------- thread body
    def run(self) -> None:
        """Process inbox messages until Stop; timers and read work in between."""
        try:
            while True:
                with self._lock:
                    if self._dirty and not self.abort.is_set():
                        timeout = BACK_PRESSURE_WAIT if self._full else 0.0
                    else:
                        timeout = self._timeout()
                try:
                    message: object = self._inbox.get(timeout=timeout)
                except queue.Empty:
                    message = None
                if isinstance(message, Stop):
                    return
                with self._lock:
                    try:
                        self._step(message)
                    except Exception:
                        # A bug in the detector must not stop the mirror: log and go on.
                        log.exception("detector error; continuing")
                if message is not None:
                    self._on_progress()
        finally:
            self.stopped = True
            self._bulk.stop()

    def _step(self, message: object) -> None:
        if message is not None:
            self._handle(message)
            # Take what else is waiting before reading files: a burst of events is one
            # batch of work, and listings or upload outcomes are cheap.
            for _ in range(256):
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, Stop):
                    self._inbox.put(more)
                    break
                self._handle(more)
        now = self._clock()
        self._fire_timers(now)
        if not self.abort.is_set():
            self._work(WORK_BATCH)
        self._flush()
        self._update_gauges()

    def _handle(self, message: object) -> None:
        now = self._clock()
        if isinstance(message, PathsChanged):
            if len(self._born) + len(message.created) > MAX_WARNED:
                self._born.clear()  # empty folders by the thousand: list them instead
            for path in message.created:
                if path.parent == self.root and path.name not in self._runs:
                    self._born.add(path.name)
            seen = message.seen
            for path in message.paths:
                self._guard_path(path, seen.get(path, message.seen_at))
        elif isinstance(message, ReadDone):
            file = self._files.get(message.relative)
            if file is not None and file.reading:
                file.reading = False
                self._to_read -= 1
                self._guard(file, lambda f=file: self._apply(f, message.outcome, now))  # type: ignore[misc]
                if file.dirty and self._files.get(file.relative) is file:
                    self._to_read += 1  # changed while it was read: read it again
                    self._dirty.append(file)
        elif isinstance(message, Uploaded):
            self._uploaded(message)
        elif isinstance(message, UploadFailed):
            self._upload_failed(message, now)
        elif isinstance(message, Stale):
            file = self._files.get(message.relative)
            if file is not None and file.etag == message.etag:
                file.etag = None
                self._mark_dirty(file, now)
        elif isinstance(message, Listed):
            self._listed(message, now)
        elif isinstance(message, Rescan):
            if message.relist:
                self._reset()
            self._rescan(message.reason, now)
            if message.done is not None:
                message.done.set()
        elif isinstance(message, Reconfigure):
            self._reconfigure(message, now)
        elif isinstance(message, Verify):
            self._verify_all(every_run=message.every_run)
            if message.done is not None:
                message.done.set()

    # ----------------------------------------------------------------- timers
    def _timeout(self) -> float:
        now = self._clock()
        deadline = self._next_rescan
        if self._timers:
            deadline = min(deadline, self._timers[0][0])
        return max(0.0, min(deadline - now, 3600.0))

    def _schedule(self, due: float, kind: str, ref: object) -> None:
        heapq.heappush(self._timers, (due, next(self._seq), kind, ref))

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            due, _, kind, ref = heapq.heappop(self._timers)
            if kind == "retry":
                file = ref
                assert isinstance(file, _File)
                if self._files.get(file.relative) is file and file.retry_at == due:
                    self._retry(file, now)
            elif kind == "grace":
                file = ref
                assert isinstance(file, _File)
                if self._files.get(file.relative) is file:
                    self._report_torn(file, now)
            elif kind == "folder":
                assert isinstance(ref, tuple)
                run_dir, attempt = ref
                self._scan_folder(run_dir, now, attempt=attempt)
            elif kind == "verify":
                run = ref
                assert isinstance(run, _Run)
                if self._runs.get(run.run_id) is run:
                    self._maybe_verify(run, now, force=True)
        if now >= self._next_rescan:
            self._rescan("periodic", now)

    # ----------------------------------------------------------------- scanning
    @property
    def root(self) -> Path:
        assert self.settings.source is not None
        return self.settings.source

    def _wanted(self, run_id: str) -> bool:
        return (not self.settings.run_ids or run_id in self.settings.run_ids) and self._owns(run_id)

    def _rescan(self, reason: str, now: float) -> None:
        """Walk the whole folder: track new files, read changed ones, forget deleted ones.

        A periodic rescan is *light* (names only for files known and settled: it catches
        a missed creation or deletion) except every :data:`FULL_SWEEP_EVERY`-th one; every
        other rescan (start-up, overflow, re-armed watch, polling, shutdown) is a full
        sweep with one ``lstat`` per file. With inotify healthy a change cannot be missed
        without an overflow, which triggers a full sweep at once."""
        self._next_rescan = now + self.settings.sync.rescan_interval_seconds
        started = time.monotonic()
        cpu, own_cpu = time.process_time(), time.thread_time()
        self._generation += 1
        generation = self._generation
        changed = 0
        checked = 0  # files the scan looked at (an lstat each); a light rescan trusts the rest
        layout = self.settings.layout
        light = False
        if reason == "periodic":
            self._periodic += 1
            light = self._periodic % FULL_SWEEP_EVERY != 0
            if not light:
                # Before the sweep marks unsettled files to read: "pending" here means
                # uploads on their way, which their own answers confirm.
                self._reconcile()
        trust = self._trusting(generation) if light else None
        unlistable: set[str] = set()  # run folders this scan could not list
        unsafe_before, self._unsafe = self._unsafe, {}
        try:
            for entry in scan(self.root, layout, trust):
                try:
                    if isinstance(entry, Entry):
                        checked += 1
                        changed += self._observe(entry, generation, now)
                    elif isinstance(entry, FolderError):
                        unlistable.add(entry.run_id)
                        self._folder_failed(entry, generation, now)
                    else:
                        self._skip(entry)
                except Exception:
                    log.exception("handling %s during a rescan failed; going on", entry.path)
        except OSError as exc:
            # The source folder itself could not be listed (EMFILE, EACCES): nothing was
            # seen, so nothing is forgotten; try again soon.
            log.warning("could not scan %s (%s); retrying", self.root, exc.strerror or exc)
            self._unsafe = {**unsafe_before, **self._unsafe}
            self._next_rescan = now + FOLDER_RETRY_BASE_SECONDS
            return
        for file in [f for f in self._files.values() if f.seen != generation]:
            self._forget(file)  # deleted locally: its object stays (run logs are records)
        for run_id in [r for r in self._unlistable if r not in unlistable]:
            del self._unlistable[run_id]  # listed this time, or gone
        if reason == "poll":
            # In polling mode the poll is the event source: count what it found.
            self._metrics.fs_events.inc(changed)
        self._scanned = True
        if not light and not self._layout_warned:
            self._check_layout()
        if not self._runs and not self._contacted:
            # Nothing local to compare: still prove the bucket answers before "ready".
            self._want_listing.add("")
        self._update_gauges()
        log.debug(
            # The process's CPU (what a pod pays) and this thread's (the rescan's own):
            # other threads' work meanwhile (uploads, a listing) is the difference.
            "rescan (%s%s) of %d files took %.3fs (%.3f CPU-s, %.3f in the rescan's thread;"
            " %d checked)",
            reason,
            ", light" if light else "",
            len(self._files),
            time.monotonic() - started,
            time.process_time() - cpu,
            time.thread_time() - own_cpu,
            checked,
        )

    def _check_layout(self) -> None:
        """Warn once when the source holds files of the other layout, which this one
        never reads (runnable's file-system store watched as chunked, or the reverse):
        without it every file is ignored without a word and the mirror called complete."""
        layout = self.settings.layout
        found = other_layout_files(self.root, layout)
        if not found:
            return
        self._layout_warned = True
        other = (
            layouts.Layout.SINGLE if layout is layouts.Layout.CHUNKED else layouts.Layout.CHUNKED
        )
        store = "file-system" if other is layouts.Layout.SINGLE else "chunked-fs"
        log.warning(
            "the source holds files of runnable's %s store (%s%s), which the %s layout does"
            " not read: they are not mirrored; if they are the run logs, set --layout %s"
            " (%sLAYOUT, layout: in the config file)",
            store,
            ", ".join(found),
            ", ..." if len(found) >= 5 else "",
            layout.value,
            other.value,
            ENV_PREFIX,
            extra={"reason": "layout"},
        )

    def _trusting(self, generation: int) -> Callable[[str], bool]:
        """For a light rescan: whether a file needs no ``lstat`` (known, settled, quiet),
        marking it seen by this rescan if so (one lookup per file)."""
        files = self._files

        def trusted(relative: str) -> bool:
            file = files.get(relative)
            if (
                file is None
                or not file.settled
                or file.problem is not None
                or file.torn_since is not None
                or file.dirty
                or file.reading
            ):
                return False
            file.seen = generation
            return True

        return trusted

    def _observe(self, entry: Entry, generation: int, now: float) -> int:
        """One file found by a scan; 1 when it needs a read."""
        file = self._files.get(entry.relative)
        if file is None:
            item = to_candidate(entry, self.settings.layout, self.settings.prefix)
            if isinstance(item, Skipped):
                self._skip(item)
                return 0
            if not self._wanted(item.mapping.run_id):
                return 0
            file = self._track(item)
            file.seen = generation
            self._mark_dirty(file, now)
            return 1
        file.seen = generation
        signature = _signature(entry.info)
        if file.dirty or file.reading:
            return 0
        if file.torn_since is not None:
            if signature == file.torn_signature:
                return 0  # the same torn bytes: the retry timer handles it
        elif file.problem is None and file.settled and signature == file.signature:
            return 0  # unchanged since a trustworthy read: the common case, one lstat
        self._mark_dirty(file, now)
        return 1

    def _folder_failed(
        self, error: FolderError, generation: int, now: float, attempt: int = 0
    ) -> None:
        run = self._runs.get(error.run_id)
        if run is not None:
            for file in run.files.values():
                file.seen = generation  # not seen is not deleted
        if self._wanted(error.run_id):
            self._unlistable[error.run_id] = error.detail
        self._skip(Skipped(error.path, "unreadable", error.detail))
        if error.transient:
            delay = backoff_delay(
                attempt,
                base=FOLDER_RETRY_BASE_SECONDS,
                cap=self.settings.sync.rescan_interval_seconds,
            )
            self._schedule(now + delay, "folder", (error.path, attempt + 1))

    def _scan_folder(self, run_dir: Path, now: float, *, attempt: int = 0) -> None:
        """One run folder (a new folder, an unwatched one being polled, a retry)."""
        run_id = run_dir.name
        if not self._wanted(run_id):
            return
        self._generation += 1
        generation = self._generation
        self._unlistable.pop(run_id, None)  # a FolderError below puts it back
        for entry in scan_run(run_dir):
            if isinstance(entry, Entry):
                self._observe(entry, generation, now)
            elif isinstance(entry, FolderError):
                self._folder_failed(entry, generation, now, attempt)
            else:
                self._skip(entry)
        run = self._runs.get(run_id)
        if run is not None:
            for file in [f for f in run.files.values() if f.seen != generation]:
                self._forget(file)

    def _guard_path(self, path: Path, seen_at: float) -> None:
        try:
            self._on_path(path, seen_at)
        except Exception:
            log.exception("handling a change of %s failed; it is retried at the next rescan", path)

    def _on_path(self, path: Path, seen_at: float) -> None:
        root = self.root
        if path == root:
            return
        try:
            relative = path.relative_to(root)
        except ValueError:
            return
        now = self._clock()
        if self.settings.layout is layouts.Layout.CHUNKED and len(relative.parts) == 1:
            # A run folder: new, changed, deleted, or polled because it is not watched.
            # inotify misses files created before a new folder's watch was armed: scan it.
            try:
                info = os.lstat(path)
            except OSError:
                info = None
            if info is not None and stat.S_ISDIR(info.st_mode):
                self._scan_folder(path, now)
            else:
                run = self._runs.get(relative.parts[0])
                if run is not None and info is None:
                    for gone in list(run.files.values()):
                        self._forget(gone)
            self._update_gauges()
            return
        file = self._files.get("/".join(relative.parts))
        result = classify_path(root, path, self.settings.layout, self.settings.prefix)
        if result is None or isinstance(result, Skipped):
            self._not_a_candidate(file, result)
        elif file is None:
            if self._wanted(result.mapping.run_id):
                file = self._track(result)
                self._mark_dirty(file, seen_at)
        else:
            file.retries = 0  # its own event: no backoff
            self._mark_dirty(file, seen_at)
        self._update_gauges()

    # ----------------------------------------------------------------- the ledger
    def _track(self, item: Candidate) -> _File:
        run_id = item.mapping.run_id
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _Run(run_id=sys.intern(run_id), layout=self.settings.layout)
            if run_id in self._born:
                self._born.discard(run_id)
                run.listed = True  # made under our eyes: nothing in the bucket to compare
            else:
                self._unlisted += 1
                self._want_listing.add(run_id)
        file = _File(relative=item.relative, run=run)
        if run.listed:
            file.remote = run.unclaimed.pop(file.key, None)
            file.remote_listed = file.remote is not None
        run.files[file.relative] = file
        self._files[file.relative] = file
        return file

    def _forget(self, file: _File) -> None:
        if self._files.pop(file.relative, None) is None:
            return
        if file.dirty or file.reading:
            self._to_read -= 1
        file.dirty = file.reading = False
        if file.counted_pending:
            file.counted_pending = False
            self._pending -= 1
            file.run.pending -= 1
        if file.counted_torn:
            file.counted_torn = False
            self._torn_reported -= 1
        run = file.run
        run.files.pop(file.relative, None)
        self._on_file(FileGone(run.run_id, file.relative, run_gone=not run.files))
        if not run.files:
            del self._runs[run.run_id]
            if not run.listed:
                self._unlisted -= 1
            if run.verifying:
                self._verifying -= 1
            self._want_listing.discard(run.run_id)

    def _reset(self) -> None:
        """Forget everything known (a new target): every file is compared again."""
        for file in list(self._files.values()):
            self._forget(file)
        self._dirty.clear()
        self._contacted = False
        self._etags_are_md5 = False
        self._born.clear()

    def _account(self, file: _File) -> None:
        """Keep the pending counters true after any change to ``file``."""
        pending = (
            file.problem is None
            and file.torn_since is None
            and file.given_up is None
            and (file.dirty or file.reading or file.etag is None or file.etag != file.remote)
        )
        if pending != file.counted_pending:
            file.counted_pending = pending
            delta = 1 if pending else -1
            self._pending += delta
            file.run.pending += delta
        if not pending and file.first_change is not None and file.etag == file.remote:
            file.first_change = None

    def _mark_dirty(self, file: _File, seen_at: float) -> None:
        if file.first_change is None:
            file.first_change = seen_at
        if file.reading:
            file.dirty = True  # read again when the bulk read returns
        elif not file.dirty:
            file.dirty = True
            self._to_read += 1
            self._dirty.append(file)
        self._account(file)

    def _work(self, budget: int) -> None:
        self._full = False
        while budget > 0 and self._dirty and not self.abort.is_set() and not self._full:
            file = self._dirty.popleft()
            if not file.dirty or self._files.get(file.relative) is not file:
                continue
            if not file.run.listed:
                continue  # read once the listing arrives (_listed queues it again)
            budget -= 1
            self._guard(file, lambda f=file: self._consider(f))  # type: ignore[misc]

    def _guard(self, file: _File, action: Callable[[], None]) -> None:
        """The one place that owns an exception while handling one file: counted with a
        reason, named at exit, retried with backoff; the rest goes on."""
        try:
            action()
        except Exception as exc:
            self._failed(file, exc, self._clock())

    def _consider(self, file: _File) -> None:
        now = self._clock()
        file.dirty = False
        self._to_read -= 1
        # A string, not root / relative: a Path per file read was a few per cent of the
        # detector's CPU in a first sync, and every call below takes either.
        path = f"{os.fspath(self.root)}/{file.relative}"
        size = _regular_size(path)
        if size is None:
            size = self._classified_size(file, path)
            if size is None:
                return
        limit = self.settings.sync.max_file_bytes
        if size <= INLINE_BODY_BYTES and not self._has_room(size):
            # The queue is full (back-pressure): read it when there is room, then in its
            # latest version. It stays counted as pending and is named if the drain ends.
            file.dirty = True
            self._to_read += 1
            self._dirty.appendleft(file)
            self._full = True
            return
        if size > INLINE_BODY_BYTES:
            file.reading = True
            self._to_read += 1
            self._bulk.submit(file.relative, path, self.root, self.settings.layout, limit)
            self._account(file)
            return
        self._apply(file, read_file(path, self.root, self.settings.layout, limit, 1 << 20), now)

    def _classified_size(self, file: _File, path: Path | str) -> int | None:
        """The full classification of a path that is no longer a plain regular file where
        it was: its size when it still is a candidate, else None (see
        :meth:`_not_a_candidate`)."""
        item = classify_path(self.root, path, self.settings.layout, self.settings.prefix)
        if item is None or isinstance(item, Skipped):
            self._not_a_candidate(file, item)
            return None
        return item.size

    def _not_a_candidate(self, file: _File | None, result: Skipped | None) -> None:
        """A path the classification did not take, and its tracked file if any: forgotten
        when gone or no longer a run-log file (the object is kept), kept with a problem
        when unreadable, else forgotten and the path skipped (a link, not a regular
        file, an unsafe name)."""
        if result is None:
            if file is not None:
                self._forget(file)
        elif file is not None and result.reason == "unreadable":
            self._set_problem(file, "unreadable", result.detail)
        else:
            if file is not None:
                self._forget(file)
            self._skip(result)

    def _apply(self, file: _File, outcome: Snapshot | BaseException, now: float) -> None:
        if isinstance(outcome, Snapshot):
            self._complete(file, outcome, now)
        elif isinstance(outcome, TornRead):
            sig = outcome.signature
            file.torn_signature = _packed(sig) if sig is not None else None
            # Like ``settled``: a signature taken right after the write may not change on
            # the next one (coarse timestamps), so such a file is read again on retries.
            file.torn_settled = (
                sig is not None and time.time() - sig.mtime_ns / 1e9 > SETTLE_SECONDS
            )
            self._torn(file, outcome.reason, now)
        elif isinstance(outcome, TooLarge):
            self._set_problem(
                file,
                "too_large",
                f"{outcome.size} bytes, over the limit of {outcome.limit} (sync.maxFileBytes)",
            )
        elif isinstance(outcome, FileNotFoundError):
            self._forget(file)
        elif isinstance(outcome, OSError) and outcome.errno in TRANSIENT_ERRNOS:
            self._short_of_resources(file, outcome, now)
        elif isinstance(outcome, OSError):
            if (
                outcome.errno in _LINKED
                and self._classified_size(file, self.root / file.relative) is None
            ):
                # A folder on the way is a link now (the read never follows one; the
                # lstat before it does): classified again, it is skipped as a link.
                return
            # Kept (and retried on every rescan and event): the file belongs in the mirror,
            # so shutdown reports it until it can be read. A path that met a link but
            # looks whole again is kept too, not read again at once: no busy loop on a
            # flapping link.
            self._set_problem(file, "unreadable", outcome.strerror or str(outcome))
        elif isinstance(outcome, Exception):
            self._failed(file, outcome, now)
        else:  # pragma: no cover - BaseException from a reader thread
            raise outcome

    def _complete(self, file: _File, snapshot: Snapshot, now: float) -> None:
        if file.torn_since is not None:
            log.info(
                "file is complete again: %s",
                self.root / file.relative,
                extra={"path": str(self.root / file.relative)},
            )
        self._clear_torn(file)
        file.problem = None
        file.retries = 0
        # Cancels the retry a torn or failed read scheduled (the timer checks retry_at):
        # fired late, it would mark this mirrored file dirty, and a drain ending meanwhile
        # would name it "not read yet".
        file.retry_at = 0.0
        file.signature = _packed(snapshot.signature)
        file.settled = time.time() - snapshot.signature.mtime_ns / 1e9 > SETTLE_SECONDS
        self._bytes_read += snapshot.file_size
        etag = snapshot.etag
        if etag == file.remote and file.remote_listed:
            self._etags_are_md5 = True
        if etag != file.etag:
            seen_at = file.first_change if file.first_change is not None else now
            self._on_file(
                FileVersion(file.run.run_id, file.relative, etag, etag != file.remote, seen_at)
            )
        if etag == file.etag or (etag == file.remote and file.etag is None):
            # Already handed downstream, or in the bucket with nothing else on its way.
            # One string for both where they agree: a 100,000-file ledger stays small.
            file.etag = file.remote if etag == file.remote else etag
            self._account(file)
            return
        file.etag = etag
        file.given_up = None
        self._metrics.fs_versions.inc()
        self._metrics.fs_write_bytes.inc(snapshot.file_size)
        request = UploadRequest(
            key=file.key,
            run_id=file.run.run_id,
            relative=file.relative,
            root=self.root,
            layout=self.settings.layout,
            snapshot=snapshot,
            seen_at=file.first_change if file.first_change is not None else now,
            listed_etag=file.remote if file.remote_listed and not self._etags_are_md5 else None,
        )
        self._account(file)
        # May block while the queue is full (back-pressure); False once the drain is over.
        if not self._submit(request):
            file.etag = None
            self._account(file)

    def _retry(self, file: _File, now: float) -> None:
        """A torn or failing file's backoff is over: read it again, unless it is the very
        version found torn (one lstat: the same torn bytes cost nothing twice)."""
        if file.torn_since is not None and file.torn_signature is not None and file.torn_settled:
            try:
                info = os.lstat(self.root / file.relative)
            except OSError:
                info = None
            if info is not None and _signature(info) == file.torn_signature:
                self._schedule_retry(file, now)
                return
        self._mark_dirty(file, now)

    def _short_of_resources(self, file: _File, exc: OSError, now: float) -> None:
        """The process could not open the file for want of a resource (EMFILE, ENFILE:
        out of descriptors): the file is fine. Never dropped nor called unreadable: it
        stays pending ("not read yet") and is read again on the one backoff (its events
        and the drain's sweep retry it at once)."""
        if not self._short_warned:
            self._short_warned = True
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning(
                "cannot open %s: %s; files are read again with backoff and nothing is"
                " dropped, but the sidecar is short of resources: its descriptor limit is"
                " %d (ulimit -n; hard limit %d): raise it, or lower sync.concurrency",
                self.root / file.relative,
                exc.strerror or exc,
                soft,
                hard,
                extra={"path": str(self.root / file.relative), "reason": "resources"},
            )
        file.etag = None  # the latest version is unknown: pending until it is read
        self._schedule_retry(file, now)
        self._account(file)

    def _schedule_retry(self, file: _File, now: float) -> None:
        delay = backoff_delay(
            file.retries,
            base=TORN_RETRY_BASE_SECONDS,
            cap=self.settings.sync.rescan_interval_seconds,
        )
        file.retries += 1
        file.retry_at = now + delay
        self._schedule(file.retry_at, "retry", file)

    def _torn(self, file: _File, reason: str, now: float) -> None:
        self._metrics.torn_reads.inc()
        path = self.root / file.relative
        if file.torn_since is None:
            file.torn_since = now
            log.debug("torn read of %s (%s); will retry", path, reason)
            grace = self.settings.sync.torn_grace_seconds
            self._schedule(now + grace, "grace", file)
        file.torn_reason = reason
        self._schedule_retry(file, now)
        self._account(file)
        if now - file.torn_since >= self.settings.sync.torn_grace_seconds:
            self._report_torn(file, now)

    def _report_torn(self, file: _File, now: float) -> None:
        if file.torn_since is None or file.torn_reported:
            return
        grace = self.settings.sync.torn_grace_seconds
        if now - file.torn_since < grace:
            self._schedule(file.torn_since + grace, "grace", file)
            return
        file.torn_reported = True
        file.counted_torn = True
        self._torn_reported += 1
        self._update_gauges()
        path = self.root / file.relative
        log.warning(
            "file has not been complete JSON for %.0fs (%s): %s; the last complete version"
            " stays in the bucket and it is retried until it is complete",
            now - file.torn_since,
            file.torn_reason,
            path,
            extra={"path": str(path), "run_id": file.run.run_id, "reason": "torn"},
        )

    def _clear_torn(self, file: _File) -> None:
        file.torn_since = None
        file.torn_reason = ""
        file.torn_reported = False
        if file.counted_torn:
            file.counted_torn = False
            self._torn_reported -= 1

    def _set_problem(self, file: _File, reason: str, detail: str) -> None:
        self._clear_torn(file)
        file.problem = reason
        file.torn_reason = detail  # the detail shown at exit
        self._account(file)
        self._skip(Skipped(self.root / file.relative, reason, detail))

    def _failed(self, file: _File, exc: BaseException, now: float) -> None:
        """An unexpected exception while handling this file (a bug, an odd file)."""
        if self._files.get(file.relative) is not file:
            return
        detail = f"{type(exc).__name__}: {exc}"
        marker = f"error:{file.relative}"
        if marker not in self._warned and len(self._warned) < MAX_WARNED:
            log.error(
                "handling %s failed (%s); it is retried with backoff and named at exit",
                self.root / file.relative,
                detail,
                exc_info=exc,
                extra={"path": str(self.root / file.relative), "reason": "error"},
            )
        self._set_problem(file, "error", detail)
        if file.dirty:
            file.dirty = False
            self._to_read -= 1
        self._schedule_retry(file, now)
        self._account(file)

    def _skip(self, item: Skipped) -> None:
        self._metrics.skipped_files.labels(reason=item.reason).inc()
        if item.reason in _NEVER_UPLOADED:
            relative = layouts.relative_parts(self.root, item.path)
            if relative and (len(relative) == 1 or self._wanted(relative[0])):
                why = _NEVER_UPLOADED[item.reason]
                self._unsafe["/".join(relative)] = f"{why}: {item.detail} (never uploaded)"
        marker = f"{item.reason}:{item.path}"
        if marker in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(marker)
        if item.reason == "error":
            return  # logged with its traceback by _failed
        log.warning(
            "not mirroring %r: %s",
            str(item.path),
            item.detail,
            extra={"path": repr(str(item.path)), "reason": item.reason},
        )

    # ----------------------------------------------------------------- the bucket
    def _flush(self) -> None:
        """Ask for the listings the new runs need, and say when the first sync is done."""
        if self._want_listing:
            runs = frozenset(self._want_listing)
            self._want_listing.clear()
            for run_id in runs:
                run = self._runs.get(run_id)
                if run is not None:
                    run.requested = True
            self._request_listing(runs, ListingPurpose.COMPARE)
        if self._bytes_read >= 4 * 1024 * 1024 and not self._dirty:
            # A big first sync reads the whole folder once; give that memory back.
            self._bytes_read = 0
            self._release_memory()
        if (
            not self._synced
            and self._scanned
            and self._contacted
            and self._unlisted == 0
            and self._to_read == 0
        ):
            self._synced = True
            self._on_synced()

    def _listed(self, message: Listed, now: float) -> None:
        self._contacted = True
        for run_id in message.run_ids:
            run = self._runs.get(run_id)
            if run is None:
                continue  # no local file any more, or the probe ("")
            if message.purpose is ListingPurpose.VERIFY:
                self._verified(run, message, now)
                continue
            if run.listed:
                continue  # known already; uploads' answers since are newer than this
            run.listed = True
            self._unlisted -= 1
            run.requested = False
            run.checked_at = now
            prefix = f"{run_id}/"
            local_keys = {f.key for f in run.files.values()}
            run.unclaimed = {
                key: etag
                for key, etag in message.objects.items()
                if key.startswith(prefix) and key not in local_keys
            }
            for file in run.files.values():
                file.remote = message.objects.get(file.key)
                file.remote_listed = file.remote is not None
                file.alias = None
                if file.dirty:
                    self._dirty.append(file)  # it waited for this listing
                self._account(file)

    def _uploaded(self, message: Uploaded) -> None:
        file = self._files.get(message.relative)
        if file is None:
            return
        if file.etag == message.etag:
            file.remote = file.etag
            file.given_up = None
        else:
            file.remote = message.etag
        file.remote_listed = False
        bucket_etag = message.bucket_etag
        file.alias = bucket_etag if bucket_etag and bucket_etag != message.etag else None
        if bucket_etag == message.etag:
            self._etags_are_md5 = True  # the bucket answered a PUT with the body's MD5
        self._account(file)
        self._maybe_verify(file.run, self._clock())

    def _upload_failed(self, message: UploadFailed, now: float) -> None:
        file = self._files.get(message.relative)
        if file is None:
            return
        if message.doubtful:
            run = file.run
            run.doubtful_at = now
            run.ever_doubtful = True
            self._schedule(now + VERIFY_WINDOW_SECONDS, "verify", run)
        if message.given_up and file.etag == message.etag:
            file.given_up = message.reason
            self._account(file)

    def _maybe_verify(self, run: _Run, now: float, *, force: bool = False) -> None:
        """Confirm a run against the bucket once its doubtful uploads are over."""
        if run.doubtful_at is None or run.verifying or run.pending:
            return
        if not force and now - run.doubtful_at >= VERIFY_WINDOW_SECONDS:
            return
        self._start_verify(run)

    def _start_verify(self, *runs: _Run) -> None:
        """One VERIFY request for ``runs``: the lister lists each run's prefix (or, for
        many runs, the prefix once, filtered to them)."""
        for run in runs:
            run.verifying = True
            self._verifying += 1
        if runs:
            self._request_listing(frozenset(r.run_id for r in runs), ListingPurpose.VERIFY)

    def _verify_all(self, *, every_run: bool) -> None:
        """Confirm against the bucket every run that ever had a doubtful upload, or with
        ``every_run`` every listed one: the ledger is what the bucket answered, and
        objects can vanish since (deleted by hand, a lifecycle rule, a store restarted
        empty), so "complete" is checked, not remembered."""
        self._start_verify(
            *(
                run
                for run in self._runs.values()
                if not run.verifying and (run.ever_doubtful or (every_run and run.listed))
            )
        )

    def _reconcile(self) -> None:
        """Part of each full sweep: the runs listed longest ago (at most
        :data:`RECONCILE_RUNS`, none with uploads on their way) are confirmed against the
        bucket, one LIST of each run's prefix, so a vanished object is uploaded again
        without waiting for the drain, at a cost that does not grow with the runs."""
        quiet = (r for r in self._runs.values() if r.listed and not r.verifying and not r.pending)
        self._start_verify(*heapq.nsmallest(RECONCILE_RUNS, quiet, key=lambda r: r.checked_at))

    def _verified(self, run: _Run, message: Listed, now: float) -> None:
        if run.verifying:
            run.verifying = False
            self._verifying -= 1
        run.checked_at = now
        mismatches = 0
        lost: list[str] = []
        for file in run.files.values():
            if file.counted_pending or file.etag is None:
                continue  # still on its way: confirmed by its own upload's answer
            actual = message.objects.get(file.key)
            if actual == file.etag or (
                actual is not None and actual == file.alias and file.remote == file.etag
            ):
                continue
            if actual is None or self._etags_are_md5:
                mismatches += 1
                self._metrics.bucket_mismatches.inc()
                if run.doubtful_at is not None:
                    log.warning(
                        "the bucket holds another version of %s than the last one uploaded"
                        " (an upload that timed out landed late); uploading the latest"
                        " version again",
                        file.key,
                        extra={"key": file.key, "run_id": run.run_id},
                    )
                else:
                    lost.append(file.key)
            # else: a bucket whose ETags may not be MD5s; the upload path confirms with
            # the stored MD5 (one HEAD) before any PUT.
            file.remote = actual
            file.remote_listed = actual is not None
            file.alias = None
            file.etag = None
            self._mark_dirty(file, now)
        if lost:
            log.warning(
                "the bucket lacks %d object(s) of run %s the sidecar uploaded, or holds"
                " other versions of them (%s): deleted or changed behind its back;"
                " uploading the local versions again",
                len(lost),
                run.run_id,
                ", ".join(sorted(lost)[:5]) + (", ..." if len(lost) > 5 else ""),
                extra={"run_id": run.run_id},
            )
        if not mismatches and run.doubtful_at is not None:
            if now - run.doubtful_at >= VERIFY_WINDOW_SECONDS:
                run.doubtful_at = None  # confirmed after the window: done
            else:
                self._schedule(run.doubtful_at + VERIFY_WINDOW_SECONDS, "verify", run)

    def _reconfigure(self, message: Reconfigure, now: float) -> None:
        old = self.settings
        self.settings = message.settings
        if (
            message.relist
            or old.layout != message.settings.layout
            or old.source != message.settings.source
            or old.run_ids != message.settings.run_ids
        ):
            self._reset()
        elif old.sync.torn_grace_seconds != message.settings.sync.torn_grace_seconds:
            for file in self._files.values():
                if file.torn_since is not None and not file.torn_reported:
                    self._report_torn(file, now)
        self._rescan("reconfigured", now)

    # ----------------------------------------------------------------- reporting
    def _update_gauges(self) -> None:
        self._metrics.files_tracked.set(len(self._files))
        self._metrics.runs_tracked.set(len(self._runs))
        self._metrics.torn_files.set(self._torn_reported)
        self._metrics.pending_files.set(self._pending)

    def status(self) -> DetectorStatus:
        with self._lock:
            self._update_gauges()
            return DetectorStatus(
                scanned=self._scanned,
                contacted=self._contacted,
                unlisted_runs=self._unlisted,
                to_read=self._to_read,
                pending=self._pending,
                verifying=self._verifying,
                files=len(self._files),
            )

    def unmirrored(self, timeout: float = 5.0) -> dict[str, str]:
        """Every local file whose latest content is not known to be in the bucket, with
        the reason (for the exit report)."""
        locked = self._lock.acquire(timeout=timeout)
        try:
            reasons = ((r, _why_unmirrored(self._files[r])) for r in sorted(self._files))
            unmirrored = {relative: why for relative, why in reasons if why is not None}
            for run in self._runs.values():
                if run.verifying:  # the drain's check of the bucket did not answer
                    for relative in run.files:
                        unmirrored.setdefault(
                            relative,
                            "not confirmed in the bucket (its run's listing did not finish)",
                        )
            for relative, why in sorted(self._unsafe.items()):
                unmirrored[relative] = why
            for run_id, detail in sorted(self._unlistable.items()):
                unmirrored[f"{run_id}/"] = f"unreadable folder: {detail} (its files are unknown)"
            return unmirrored
        finally:
            if locked:
                self._lock.release()

    def run_ledger(self, run_id: str) -> RunLedger | None:
        """One run's files as the ledger knows them (O(files of the run)); None when no
        file of the run is tracked."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            files = run.files.values()
            return RunLedger(
                run_id=run_id,
                files={f.relative: (f.key, f.etag) for f in files},
                unmirrored={
                    f.relative: why for f in files if (why := _why_unmirrored(f)) is not None
                },
                newest_mtime_ns=max((f.signature[1] for f in files if f.signature), default=0),
                doubtful=run.doubtful_at is not None,
                problems={
                    f.relative: why
                    for f in files
                    if (f.problem is not None or f.torn_reported)
                    and (why := _why_unmirrored(f)) is not None
                },
            )

    def torn_paths(self) -> list[str]:
        with self._lock:
            return sorted(r for r, f in self._files.items() if f.torn_since is not None)
