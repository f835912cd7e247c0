"""Listing stage: tells the detector what the bucket holds for the runs it has locally.

The bucket is the source of truth, but only the local runs matter: the cost of start-up
must follow the local folder, not the bucket. Each request from the detector is a batch
of runs. A batch of up to :data:`PER_RUN_LISTING_MAX_RUNS` runs (the usual Job pod, a run
folder that just appeared, ``run_ids``) is listed one run prefix at a time, by a few
threads at once. A bigger batch (the start-up of a sidecar on a shared volume) is one
listing of the whole prefix instead of thousands of requests; it is read as a stream in
key order, each run's objects are handed over as soon as the listing has moved past
that run, and entries of runs that are not local are dropped as they arrive, so memory
stays one run's worth whatever the bucket holds.

The same stage confirms runs against the bucket (``ListingPurpose.VERIFY``): after a
doubtful upload, at each full sweep, and before the drain calls the mirror complete.
Listings are retried until they succeed: the project's backoff for an outage, a fixed
slow retry for a permanent error (missing bucket, refused credentials), both cut short
by :meth:`Lister.expedite` (the drain starts, the store is healthy again).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from runlog_relay.backoff import backoff_delay
from runlog_relay.errors import CredentialsError, PermanentError, RelayError, RetryableError
from runlog_relay.layout import run_id_of_key
from runlog_relay.objectstore import RemoteObject
from runlog_relay.sidecar.bucket import BucketKeeper
from runlog_relay.sidecar.store import RETRY_BASE_SECONDS, RETRY_CAP_SECONDS, StoreHealth
from runlog_relay.sidecar.types import (
    PER_RUN_LISTING_MAX_RUNS,
    Listed,
    ListingPurpose,
    StorePort,
)

__all__ = ["LISTING_THREADS", "PROBE_PREFIX", "Lister"]

log = logging.getLogger(__name__)

#: Run prefixes listed at once.
LISTING_THREADS = 4
#: Listed when no run is local yet, to learn whether the bucket answers (a hidden name:
#: no run id starts with a dot, so it holds nothing).
PROBE_PREFIX = ".runlog-relay-probe/"


@dataclass(eq=False)
class _Task:
    runs: set[str]  #: still to list (what is posted is removed)
    purpose: ListingPurpose
    whole: bool  #: one listing of the whole prefix, filtered to ``runs``
    retry_at: float = 0.0


class Lister:
    """Threads that list run prefixes on request and post :class:`Listed` results."""

    def __init__(
        self,
        store: Callable[[], StorePort],
        health: StoreHealth,
        on_listed: Callable[[Listed], object],
        *,
        bucket: BucketKeeper | None = None,
        threads: int = LISTING_THREADS,
    ) -> None:
        self._store = store
        self._health = health
        self._on_listed = on_listed
        self._bucket = bucket or BucketKeeper()
        self._cond = threading.Condition()
        self._tasks: deque[_Task] = deque()
        self._busy = 0
        self._failures = 0
        self._stopped = False
        self.objects_listed = 0  #: objects seen so far (progress, for ``--once``)
        self._threads = [
            threading.Thread(target=self._run, name=f"lister-{index}", daemon=True)
            for index in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        # A thread not started yet is not dead (the health server answers during start).
        return self._stopped or all(t.ident is None or t.is_alive() for t in self._threads)

    def request(self, run_ids: Iterable[str], purpose: ListingPurpose) -> None:
        runs = set(run_ids)
        with self._cond:
            if len(runs) > PER_RUN_LISTING_MAX_RUNS:
                self._tasks.append(_Task(runs, purpose, whole=True))
            else:
                self._tasks.extend(_Task({run}, purpose, whole=False) for run in sorted(runs))
            self._cond.notify_all()

    def expedite(self) -> None:
        """Retry a failed listing now instead of after its delay."""
        with self._cond:
            for task in self._tasks:
                task.retry_at = 0.0
            self._cond.notify_all()

    @property
    def idle(self) -> bool:
        """Nothing requested and nothing being listed."""
        with self._cond:
            return not self._busy and not self._tasks

    def waiting_runs(self) -> set[str]:
        with self._cond:
            return set().union(*(task.runs for task in self._tasks))

    # ----------------------------------------------------------------- threads
    def _next(self) -> _Task | None:
        """The first task due (blocking); None once stopped."""
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                soonest = None
                for task in self._tasks:
                    if task.retry_at <= now:
                        self._tasks.remove(task)
                        self._busy += 1
                        return task
                    soonest = task.retry_at if soonest is None else min(soonest, task.retry_at)
                self._cond.wait(None if soonest is None else soonest - now)
            return None

    def _run(self) -> None:
        while True:
            task = self._next()
            if task is None:
                return
            failed: RelayError | None = None
            try:
                self._list(task)
            except RelayError as exc:
                failed = exc
            except Exception as exc:  # a bug must not stop listing forever
                log.exception("listing the bucket failed unexpectedly")
                failed = RetryableError(f"listing failed: {type(exc).__name__}: {exc}")
            with self._cond:
                self._busy -= 1
                if failed is None:
                    self._failures = 0
                elif task.runs:
                    self._failures += 1
                    task.retry_at = time.monotonic() + self._failed(failed)
                    self._tasks.append(task)  # what was not listed goes round again
                self._cond.notify_all()

    def _failed(self, exc: RelayError) -> float:
        """Report the failure; the delay before the task is tried again."""
        if isinstance(exc, PermanentError):
            self._health.broken(str(exc), code=exc.code, source="list")
            return self._health.permanent_retry_seconds
        if isinstance(exc, CredentialsError):
            # No credentials, nothing can be listed or written: not ready (and --once gives
            # up), but retried with backoff: a renewal may work next time.
            self._health.broken(str(exc), code=exc.code, source="list", refused=False)
        else:
            self._health.unreachable(str(exc), code=getattr(exc, "code", ""))
        return backoff_delay(self._failures - 1, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)

    def _list(self, task: _Task) -> None:
        """List ``task.runs``, posting each run's objects as soon as they are known; every
        run posted is removed from ``task.runs``."""
        store = self._store()
        if not task.whole:
            for run_id in sorted(task.runs):
                # "" is the probe: prove the bucket answers when no run is local yet.
                sub_prefix = f"{run_id}/" if run_id else PROBE_PREFIX
                found = {obj.key: obj.etag for obj in self._listing(store, sub_prefix)}
                self._post(task, {run_id}, found)
            return
        # One listing of everything, in key order: a run's keys are contiguous, so a run is
        # complete once the listing is past "<run_id>/".
        pending = sorted(task.runs, key=lambda run_id: f"{run_id}/")
        prefixes = [f"{run_id}/" for run_id in pending]
        done = 0  # runs before this index were posted
        current: str | None = None
        objects: dict[str, str] = {}
        for obj in self._listing(store, ""):
            run_id = run_id_of_key(obj.key)
            if run_id != current:
                if current is not None and current in task.runs:
                    self._post(task, {current}, objects)
                objects = {}
                current = run_id
                # Local runs that sort before this key have no objects at all.
                stop = bisect.bisect_left(prefixes, obj.key, lo=done)
                empty = {r for r in pending[done:stop] if r != run_id and r in task.runs}
                if empty:
                    self._post(task, empty, {})
                done = max(done, stop)
            if run_id in task.runs:
                objects[obj.key] = obj.etag
        if current is not None and current in task.runs:
            self._post(task, {current}, objects)
        rest = {r for r in pending[done:] if r in task.runs}
        if rest:
            self._post(task, rest, {})

    def _listing(self, store: StorePort, sub_prefix: str) -> Iterator[RemoteObject]:
        sent_at = self._bucket.now()
        yielded = False
        try:
            with self._health.waiting("listing", sub_prefix or "the prefix") as waiting:
                for obj in store.list(sub_prefix):
                    waiting.heard()
                    self.objects_listed += 1
                    yielded = True
                    yield obj
        except PermanentError as exc:
            if not self._bucket.recreate(store, exc, sent_at) or yielded:
                raise  # (gone half-way through: the task goes round again, from the start)
            # It exists now (created, or by another request meanwhile): list it again
            # rather than take it for empty.
            for obj in store.list(sub_prefix):
                self.objects_listed += 1
                yield obj
        self._health.healthy(source="list")

    def _post(self, task: _Task, run_ids: set[str], objects: dict[str, str]) -> None:
        task.runs.difference_update(run_ids)
        self._on_listed(Listed(run_ids=frozenset(run_ids), objects=objects, purpose=task.purpose))
