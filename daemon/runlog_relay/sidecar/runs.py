"""Run stage: seals runs whose RunLog turned final once the bucket holds every file.

No log shipper knows what a run is; this stage does, from runnable's RunLog. It runs in
its own thread, fed with facts only, and never uploads anything itself:

    detect ──FileVersion/FileGone──▶ runs ◀──Listed/Uploaded── lister, store
      ▲  (run_ledger: what detect knows)  │
      └──────── VERIFY listing ◀──────────┘ (requested through the lister)

For each run it follows:

1. Every new version of one of the run's files restarts a short settle timer
   (:data:`SEAL_SETTLE_SECONDS`): runnable writes a run's files in bursts, and between two
   steps of a retry the RunLog can look final for a moment.
2. When the RunLog changed, the stage reads it (the one stable read, bounded in size)
   and asks :mod:`runlog_relay.runstate` whether the run is final; the version read
   must be the one the detector handed downstream (same ETag), so the status belongs to
   what is mirrored.
3. A final run whose files the detector's ledger calls mirrored (no upload pending, no
   torn or unreadable file, no doubtful PUT that could still land) is confirmed with one
   listing of its prefix (``ListingPurpose.VERIFY``, batched by the lister). The detector
   gets the same listing and uploads again whatever differs; this stage compares it with
   the ledger's latest local ETags and, when every file matches, **seals** the run: one
   INFO line, ``runlog_relay_runs_sealed_total{status}``,
   ``runlog_relay_run_seal_lag_seconds`` (final status seen → sealed), and with
   ``tagSealedRuns`` a ``runlog-relay/status=<status>`` tag on each of the run's objects.
4. A sealed run written again (runnable's retry or a resume) is unsealed, counted, and
   sealed again once it is final and verified again.

Observers (:class:`RunObserver`: local retention, ``--exit-when-sealed``) hear about
every evaluation, seal, unseal and vanished run, on this stage's thread.

During the drain (:meth:`RunSealer.flush`) the settle time is skipped: whatever is final
when the sidecar stops is sealed before it exits, if the budget allows.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from runlog_relay import layout as layouts
from runlog_relay.backoff import backoff_delay
from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import PermanentError, RelayError, RetryableError
from runlog_relay.metrics import RunMetrics
from runlog_relay.runstate import SEAL_TAG, final_status_of, run_log_relative
from runlog_relay.sidecar.types import (
    FileGone,
    FileVersion,
    Listed,
    ListingPurpose,
    RunLedger,
    Uploaded,
)
from runlog_relay.stableread import TooLarge, TornRead, read_stable

__all__ = [
    "SEAL_SETTLE_SECONDS",
    "STATUS_TAG",
    "RunObserver",
    "RunSealer",
    "Seal",
    "TaggingPort",
]

log = logging.getLogger(__name__)

#: A run is looked at this long after the last new version of one of its files.
SEAL_SETTLE_SECONDS = 1.0
#: The tag a sealed run's objects get (``tagSealedRuns``); lifecycle rules can filter on it.
STATUS_TAG = SEAL_TAG
#: A RunLog bigger than this is not parsed for its status (its run is never sealed): the
#: parse holds the whole document in memory. Chunked RunLogs are a few KiB; a single-layout
#: file holds the whole run.
STATUS_READ_LIMIT = 32 * 1024 * 1024
#: A final run whose files are not all mirrored yet is looked at again after this long,
#: doubling to :data:`BLOCKED_RECHECK_CAP` (a torn file that becomes complete again with
#: the content already uploaded sends no event).
BLOCKED_RECHECK_BASE = 0.5
BLOCKED_RECHECK_CAP = 30.0
#: The RunLog could not be read as the version the detector has (being rewritten):
#: looked at again this soon.
NOT_READY_RETRY = 0.2
#: How long the stage lets facts (file versions, uploads) gather before it takes them.
FACT_BATCH_SECONDS = 0.01
#: A final run whose VERIFY listings disagreed this many times in a row is logged once.
VERIFY_MISSES_REPORTED = 5
#: Error codes of a server that has no object tagging.
TAGGING_UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "XNotImplemented"})
#: Transient tagging failures are retried this many times per object.
TAGGING_ATTEMPTS = 3


class TaggingPort(Protocol):
    """What sealing needs from the object store (objectstore.ObjectStore fits)."""

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None: ...

    def matches_digests(self, key: str, etag: str, *, expected: str, md5: str) -> bool:
        """Whether the object listed with ``etag`` holds the body whose ETag would be
        ``expected`` and MD5 ``md5`` (a bucket whose ETags are not MD5s: one HEAD)."""
        ...


@dataclass(frozen=True, slots=True)
class Seal:
    """A run sealed: final, and every local file verified in the bucket."""

    run_id: str
    status: str
    serial: int  #: increases with every seal of any run (a re-seal is a new one)
    sealed_at: float  #: wall-clock time of the seal
    clock_start: float  #: wall-clock time local retention counts from (see retention)
    files: Mapping[str, tuple[str, str]]  #: relative path → (key, ETag), as verified
    objects: Mapping[str, str]  #: every object of the run in the bucket: key → ETag
    lag_seconds: float = 0.0  #: final status seen → sealed
    tagged: int = 0  #: objects tagged with the status (``tagSealedRuns``)


class RunObserver(Protocol):
    """Hears what the run stage decides (called on its thread; keep it quick)."""

    def run_evaluated(self, run_id: str, status: str | None, mtime: float, first: bool) -> None:
        """The RunLog was read: ``status`` is its final status or None (not over);
        ``mtime`` its modification time; ``first``: the first look in this process."""

    def run_sealed(self, seal: Seal) -> None: ...

    def run_unsealed(self, run_id: str) -> None: ...

    def run_gone(self, run_id: str) -> None:
        """No file of the run is on the volume any more."""


@dataclass(slots=True, eq=False)
class _Run:
    run_id: str
    generation: int = 0  #: new local versions of any file of the run
    changed_at: float = 0.0  #: monotonic time of the last one
    runlog_etag: str | None = None  #: the RunLog version the detector has
    runlog_seen_at: float | None = None
    evaluated_etag: str | None = None  #: the RunLog version whose status is known
    status: str | None = None  #: final status of that version, or None
    final_seen_at: float | None = None  #: when the final status was first seen
    verify_for: int = -1  #: generation a VERIFY listing was requested for
    blocked_checks: int = 0  #: looks in a row that found files not mirrored
    verify_misses: int = 0  #: VERIFY listings in a row that did not hold every file
    looked: bool = False
    changed_here: bool = False  #: a version new to the bucket was seen by this process
    sealed: Seal | None = None
    timer: float | None = None  #: when the next look is due (one timer per run)


@dataclass(frozen=True, slots=True)
class _Flush:
    done: threading.Event = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Message = FileVersion | FileGone | Listed | Uploaded | _Flush | _Stop


class RunSealer:
    """The run stage. ``start()``; ``post()`` facts; ``flush()`` on drain; ``stop()``."""

    def __init__(
        self,
        settings: Callable[[], SidecarSettings],
        metrics: RunMetrics,
        ledger: Callable[[str], RunLedger | None],
        request_verify: Callable[[str], object],
        store: Callable[[], TaggingPort],
        *,
        observers: Iterable[RunObserver] = (),
        settle: float = SEAL_SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._ledger = ledger
        self._request_verify = request_verify
        self._store = store
        self.observers: list[RunObserver] = list(observers)
        self._settle = settle
        self._clock = clock
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._runs: dict[str, _Run] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._serials = itertools.count(1)
        self._draining = False
        self._flushes: list[threading.Event] = []
        self._tagging_unsupported: str | None = None  # the code the server answered
        self._tagging_reported: set[str] = set()
        self._unreadable_reported: set[str] = set()
        self._sealed_changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="runs", daemon=True)
        self._stopped = False

    # ----------------------------------------------------------------- interface
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._inbox.put(_Stop())
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False only once the thread died: not before it started (the health server
        answers while the pipeline is starting), nor after a stop."""
        return self._thread.ident is None or self._thread.is_alive() or self._stopped

    def post(self, message: object) -> None:
        """A fact from another stage; anything this stage does not follow is ignored."""
        if isinstance(message, Listed):
            if message.purpose is ListingPurpose.VERIFY:
                self._inbox.put(message)
        elif isinstance(message, (FileVersion, FileGone, Uploaded)):
            self._inbox.put(message)

    def flush(self, timeout: float) -> bool:
        """Seal now whatever is final (no settle time from here on); True when every run
        is sealed, not final, or blocked by a file that cannot be mirrored."""
        done = threading.Event()
        self._inbox.put(_Flush(done))
        return done.wait(timeout)

    def sealed_runs(self) -> dict[str, Seal]:
        """The runs sealed right now (a snapshot; for tests and the demo)."""
        return {run_id: run.sealed for run_id, run in list(self._runs.items()) if run.sealed}

    def wait_sealed(self, run_id: str, timeout: float) -> Seal | None:
        """Block until ``run_id`` is sealed; its seal, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._sealed_changed:
            while True:
                run = self._runs.get(run_id)
                if run is not None and run.sealed is not None:
                    return run.sealed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._sealed_changed.wait(remaining)

    # ----------------------------------------------------------------- thread body
    def _run(self) -> None:
        while True:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - self._clock())
            try:
                batch: list[_Message | None] = [self._inbox.get(timeout=timeout)]
            except queue.Empty:
                batch = [None]
            if isinstance(batch[0], (FileVersion, Uploaded)):
                # Facts come in bursts, two per file in a first sync: rest a moment and
                # take the ones that came meanwhile together. Waking for each made this
                # stage the second busiest hand-over of the interpreter lock (strace of
                # 2,000 files: 9,000 wake-ups); sealing waits seconds of settle time anyway.
                time.sleep(FACT_BATCH_SECONDS)
                batch += self._queued()
            for message in batch:
                if isinstance(message, _Stop):
                    self._stopped = True  # asked to: a thread that dies otherwise is not alive
                    return
                try:
                    self.process(message)
                except Exception:
                    # A bug here must not stop the mirror (or sealing of other runs).
                    log.exception("run stage error; continuing")

    def _queued(self) -> list[_Message | None]:
        """Every message waiting in the inbox, without blocking."""
        messages: list[_Message | None] = []
        while True:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                return messages

    def process(self, message: object = None) -> None:
        """One step of the thread body: handle ``message`` (if any), then every look that
        is due. Tests without the thread call it directly."""
        if isinstance(message, (FileVersion, FileGone, Listed, Uploaded, _Flush)):
            self._handle(message)
        self._fire_timers()
        if self._flushes and self._flush_done():
            for done in self._flushes:
                done.set()
            self._flushes.clear()

    def _handle(self, message: _Message) -> None:
        now = self._clock()
        if isinstance(message, FileVersion):
            self._version(message, now)
        elif isinstance(message, FileGone):
            if message.run_gone:
                self._gone(message.run_id)
        elif isinstance(message, Listed):
            for run_id in message.run_ids:
                run = self._runs.get(run_id)
                if run is not None:
                    self._verified(run, message.objects, now)
        elif isinstance(message, Uploaded):
            self._uploaded(message, now)
        elif isinstance(message, _Flush):
            self._draining = True
            self._flushes.append(message.done)
            for run in self._runs.values():
                if run.sealed is None:
                    self._schedule(run, now)

    # ----------------------------------------------------------------- timers
    def _schedule(self, run: _Run, due: float) -> None:
        if run.timer is not None and run.timer <= due:
            return  # an earlier look is already due
        run.timer = due
        heapq.heappush(self._timers, (due, next(self._seq), run.run_id))

    def _fire_timers(self) -> None:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, run_id = heapq.heappop(self._timers)
            run = self._runs.get(run_id)
            if run is None or run.timer != due:
                continue  # forgotten, or superseded by an earlier timer
            run.timer = None
            self._look(run, now)

    # ----------------------------------------------------------------- facts
    def _version(self, event: FileVersion, now: float) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            run = self._runs[event.run_id] = _Run(event.run_id)
        layout = self._settings().layout
        if event.relative == run_log_relative(event.run_id, layout):
            run.runlog_etag = event.etag
            run.runlog_seen_at = event.seen_at
        if not event.new:
            # Read for the first time and already in the bucket (start-up): nothing new
            # was written, a look is enough.
            self._schedule(run, now if self._draining else now + self._settle)
            return
        run.generation += 1
        run.changed_at = now
        run.changed_here = True
        run.blocked_checks = 0
        run.verify_misses = 0
        if run.sealed is not None:
            self._unseal(run)
        self._schedule(run, now if self._draining else now + self._settle)

    def _uploaded(self, message: Uploaded, now: float) -> None:
        # The detector validated the name when it began to track the file.
        key = layouts.key_of(message.relative, self._settings().layout)
        run = self._runs.get(layouts.run_id_of_key(key))
        if run is None:
            return
        if run.sealed is not None:
            # An object of a sealed run was written again with the same content (the
            # detector repaired a late PUT): a new PUT carries no tags.
            if self._settings().tag_sealed_runs:
                self._tag(run.run_id, {key: message.etag}, run.sealed.status)
            return
        if run.status is not None:
            self._schedule(run, max(now, run.changed_at + (0 if self._draining else self._settle)))

    def _gone(self, run_id: str) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        if run.sealed is not None:
            self._metrics.sealed_now.dec()
        for observer in self.observers:
            observer.run_gone(run_id)

    # ----------------------------------------------------------------- looking
    def _look(self, run: _Run, now: float) -> None:
        """Decide what the run needs next: a status read, a verify listing, or nothing."""
        if run.sealed is not None:
            return
        settle_until = run.changed_at + self._settle
        if not self._draining and now < settle_until:
            self._schedule(run, settle_until)
            return
        if run.runlog_etag is None:
            return  # no RunLog (yet): nothing to decide
        if run.evaluated_etag != run.runlog_etag and not self._evaluate(run, now):
            self._schedule(run, now + NOT_READY_RETRY)
            return
        if run.status is None:
            return  # not over: the next new version brings it back here
        ledger = self._ledger(run.run_id)
        if ledger is None:
            return
        if not ledger.mirrored:
            delay = min(BLOCKED_RECHECK_CAP, BLOCKED_RECHECK_BASE * 2**run.blocked_checks)
            run.blocked_checks += 1
            self._schedule(run, now + delay)
            return
        run.blocked_checks = 0
        if run.verify_for != run.generation:
            run.verify_for = run.generation
            self._request_verify(run.run_id)

    def _evaluate(self, run: _Run, now: float) -> bool:
        """Read the RunLog the detector has; False when it is not that version right now."""
        settings = self._settings()
        assert settings.source is not None
        relative = run_log_relative(run.run_id, settings.layout)
        try:
            snapshot = read_stable(
                settings.source / relative,
                root=settings.source,
                layout=settings.layout,
                keep_body=STATUS_READ_LIMIT,
                max_size=STATUS_READ_LIMIT,
            )
        except TooLarge as exc:
            status, mtime = None, 0.0
            if run.run_id not in self._unreadable_reported:
                self._unreadable_reported.add(run.run_id)
                log.warning(
                    "the RunLog of run %s is %d bytes, over %d: its status is not read and"
                    " the run is not sealed",
                    run.run_id,
                    exc.size,
                    STATUS_READ_LIMIT,
                    extra={"run_id": run.run_id},
                )
            etag = run.runlog_etag
        except (TornRead, OSError):
            return False  # being rewritten, or gone: the detector will tell
        else:
            if snapshot.etag != run.runlog_etag or snapshot.body is None:
                return False  # not the version the detector has (yet)
            etag = snapshot.etag
            mtime = snapshot.signature.mtime_ns / 1e9
            status = final_status_of(layouts.decode_body(snapshot.body, settings.layout))
        first = not run.looked
        run.looked = True
        run.evaluated_etag = etag
        if status is not None and (run.status is None or run.final_seen_at is None):
            run.final_seen_at = run.runlog_seen_at if run.runlog_seen_at is not None else now
        elif status is None:
            run.final_seen_at = None
        run.status = status
        for observer in self.observers:
            observer.run_evaluated(run.run_id, status, mtime, first)
        return True

    def _verified(self, run: _Run, objects: Mapping[str, str], now: float) -> None:
        """A VERIFY listing of the run's prefix: seal when it holds every local file."""
        if run.sealed is not None or run.status is None or run.verify_for != run.generation:
            return
        ledger = self._ledger(run.run_id)
        if ledger is None:
            return
        differs = [
            relative
            for relative, (key, etag) in ledger.files.items()
            if not self._holds(relative, key, objects.get(key), etag)
        ]
        if differs or not ledger.mirrored:
            # The detector uploads what differs; look again once that is done, less and
            # less often while the bucket keeps disagreeing with what the ledger says.
            run.verify_for = -1
            delay = min(BLOCKED_RECHECK_CAP, BLOCKED_RECHECK_BASE * 2**run.verify_misses)
            run.verify_misses += 1
            if run.verify_misses == VERIFY_MISSES_REPORTED:
                log.warning(
                    "run %s is final but %d listings in a row did not hold every file (%s);"
                    " it is not sealed until they do",
                    run.run_id,
                    run.verify_misses,
                    ", ".join(sorted(differs)[:3]) or "an upload pending",
                    extra={"run_id": run.run_id},
                )
            self._schedule(run, now + delay)
            return
        run.verify_misses = 0
        self._seal(run, ledger, objects, now)

    def _holds(self, relative: str, key: str, listed: str | None, etag: str | None) -> bool:
        """Whether the object listed with ``listed`` is the local version ``etag``. Equal
        ETags say so at once; a bucket whose ETags are not MD5s (SSE-KMS, SSE-C) is
        asked once more with the local file's MD5 (one HEAD, none on MD5 buckets)."""
        if etag is None or listed is None:
            return False
        if listed == etag:
            return True
        settings = self._settings()
        assert settings.source is not None
        try:
            snapshot = read_stable(
                settings.source / relative,
                root=settings.source,
                layout=settings.layout,
                keep_body=0,
            )
        except (TornRead, OSError):
            return False  # being rewritten: a new version comes, and a new look
        if snapshot.etag != etag:
            return False
        try:
            return self._store().matches_digests(key, listed, expected=etag, md5=snapshot.md5)
        except RelayError:
            return False

    # ----------------------------------------------------------------- sealing
    def _seal(self, run: _Run, ledger: RunLedger, objects: Mapping[str, str], now: float) -> None:
        assert run.status is not None
        prefix = f"{run.run_id}/"
        own = {key: etag for key, etag in objects.items() if key.startswith(prefix)}
        sealed_at = time.time()
        lag = max(0.0, now - (run.final_seen_at if run.final_seen_at is not None else now))
        # Retention counts from the seal. A run already complete in the bucket when this
        # process found it was sealed before, at some time after its last write (retention
        # also waits for its newest object's LastModified, which it lists anyway).
        clock_start = sealed_at if run.changed_here else ledger.newest_mtime_ns / 1e9
        self._metrics.sealed.labels(status=run.status).inc()
        self._metrics.seal_lag.observe(lag)
        self._metrics.sealed_now.inc()
        count = self._tag(run.run_id, own, run.status) if self._settings().tag_sealed_runs else 0
        seal = Seal(
            run_id=run.run_id,
            status=run.status,
            serial=next(self._serials),
            sealed_at=sealed_at,
            clock_start=clock_start,
            files={rel: (key, etag) for rel, (key, etag) in ledger.files.items() if etag},
            objects=own,
            lag_seconds=lag,
            tagged=count,
        )
        with self._sealed_changed:
            run.sealed = seal
            self._sealed_changed.notify_all()
        tagged = ""
        if self._settings().tag_sealed_runs:
            tagged = f"; {count} of {len(own)} objects tagged {STATUS_TAG}={run.status}"
        log.info(
            "run %s sealed: %s, %d files verified in the bucket, %.2fs after its final status%s",
            run.run_id,
            run.status,
            len(seal.files),
            lag,
            tagged,
            extra={"run_id": run.run_id, "status": run.status},
        )
        for observer in self.observers:
            observer.run_sealed(seal)

    def _unseal(self, run: _Run) -> None:
        run.sealed = None
        run.verify_for = -1
        run.final_seen_at = None
        self._metrics.unsealed.inc()
        self._metrics.sealed_now.dec()
        log.info(
            "run %s was written again after its seal (retried or resumed): unsealed until"
            " it is final and verified again",
            run.run_id,
            extra={"run_id": run.run_id},
        )
        for observer in self.observers:
            observer.run_unsealed(run.run_id)

    def _tag(self, run_id: str, objects: Mapping[str, str], status: str) -> int:
        """Tag the objects; the number tagged. Never fails the seal."""
        if self._tagging_unsupported is not None:
            self._metrics.tagging.labels(result="unsupported").inc(len(objects))
            return 0
        store = self._store()
        tagged = 0
        for key in sorted(objects):
            for attempt in range(TAGGING_ATTEMPTS):
                try:
                    store.set_tags(key, {STATUS_TAG: status})
                except RetryableError as exc:
                    if attempt + 1 < TAGGING_ATTEMPTS:
                        time.sleep(backoff_delay(attempt, base=0.2, cap=2.0))
                        continue
                    self._tagging_failed(run_id, key, exc)
                except PermanentError as exc:
                    if exc.code in TAGGING_UNSUPPORTED:
                        self._tagging_unsupported = exc.code
                        log.warning(
                            "the object store does not support object tagging (%s):"
                            " sealed runs are not tagged; turn tagSealedRuns off to silence"
                            " this",
                            exc.code,
                        )
                        self._metrics.tagging.labels(result="unsupported").inc(
                            len(objects) - tagged
                        )
                        return tagged
                    self._tagging_failed(run_id, key, exc)
                except RelayError as exc:  # pragma: no cover - every RelayError is one of them
                    self._tagging_failed(run_id, key, exc)
                else:
                    tagged += 1
                    self._metrics.tagging.labels(result="success").inc()
                break
        return tagged

    def _tagging_failed(self, run_id: str, key: str, exc: RelayError) -> None:
        self._metrics.tagging.labels(result="failure").inc()
        code = getattr(exc, "code", "") or type(exc).__name__
        if code in self._tagging_reported:
            log.debug("tagging %s failed: %s", key, exc, extra={"run_id": run_id, "key": key})
            return
        self._tagging_reported.add(code)
        log.error(
            "tagging the objects of sealed run %s failed: %s (the run is sealed untagged;"
            " tagging needs s3:PutObjectTagging)",
            run_id,
            exc,
            extra={"run_id": run_id, "key": key},
        )

    # ----------------------------------------------------------------- drain
    def _flush_done(self) -> bool:
        """Nothing left that a look could seal: every run sealed, not final, or blocked."""
        for run in self._runs.values():
            if run.sealed is not None or run.runlog_etag is None:
                continue
            if run.evaluated_etag != run.runlog_etag:
                return False  # status not read yet
            if run.status is None:
                continue
            if run.verify_for == run.generation:
                return False  # its listing is on its way
            ledger = self._ledger(run.run_id)
            if ledger is not None and ledger.mirrored:
                return False  # a look will ask for its listing
        return True
