"""Listing stage: tells the detector what the bucket holds for the runs it has locally.

The bucket is the source of truth, but only the local runs matter: the cost of start-up
must follow the local folder, not the bucket. For a handful of runs (the usual Job pod,
or ``run_ids``), each run's prefix is listed on its own (one LIST page for a run of a
few hundred files). For many runs (a shared volume) one listing of the whole prefix is
cheaper than thousands of requests; it is read as a stream in key order, each run's
objects are handed over as soon as the listing has moved past that run, and entries of
runs that are not local are dropped as they arrive, so memory stays one run's worth
whatever the bucket holds. A run folder that appears later is listed on its own before
its first upload decision.

The same stage confirms runs after a doubtful upload (``ListingPurpose.VERIFY``).
Listings are retried until they succeed: the project's backoff for an outage, a fixed
slow retry for a permanent error (missing bucket, refused credentials), both cut short
by :meth:`Lister.expedite` (the drain starts, the store is healthy again).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from runlog_relay.backoff import backoff_delay
from runlog_relay.errors import PermanentError, RelayError, RetryableError
from runlog_relay.layout import run_id_of_key
from runlog_relay.objectstore import RemoteObject
from runlog_relay.sidecar.store import (
    RETRY_BASE_SECONDS,
    RETRY_CAP_SECONDS,
    StoreHealth,
)
from runlog_relay.sidecar.types import Listed, ListingPurpose, StorePort

__all__ = ["PER_RUN_LISTING_MAX_RUNS", "Lister"]

log = logging.getLogger(__name__)

#: Up to this many runs at once are listed one prefix each; more, with one listing.
PER_RUN_LISTING_MAX_RUNS = 64
#: Listed when no run is local yet, to learn whether the bucket answers (a hidden name:
#: no run id starts with a dot, so it holds nothing).
PROBE_PREFIX = ".runlog-relay-probe/"


class Lister:
    """A thread that lists run prefixes on request and posts :class:`Listed` results."""

    def __init__(
        self,
        store: Callable[[], StorePort],
        health: StoreHealth,
        on_listed: Callable[[Listed], object],
        *,
        create_bucket: Callable[[], bool] = lambda: False,
        bucket_name: Callable[[], str] = lambda: "",
    ) -> None:
        self._store = store
        self._health = health
        self._on_listed = on_listed
        self._create_bucket = create_bucket
        self._bucket_name = bucket_name
        self._cond = threading.Condition()
        self._wanted: dict[ListingPurpose, set[str]] = {p: set() for p in ListingPurpose}
        self._failures = 0
        self._retry_at = 0.0
        self._stopped = False
        self._busy = False
        self.objects_listed = 0  #: objects seen so far (progress, for ``--once``)
        self._thread = threading.Thread(target=self._run, name="lister", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._stopped

    def request(self, run_ids: Iterable[str], purpose: ListingPurpose) -> None:
        with self._cond:
            self._wanted[purpose].update(run_ids)
            self._cond.notify_all()

    def expedite(self) -> None:
        """Retry a failed listing now instead of after its delay."""
        with self._cond:
            self._retry_at = 0.0
            self._cond.notify_all()

    @property
    def idle(self) -> bool:
        """Nothing requested and nothing being listed."""
        with self._cond:
            return not self._busy and not any(self._wanted.values())

    def waiting_runs(self) -> set[str]:
        with self._cond:
            return set().union(*self._wanted.values())

    # ----------------------------------------------------------------- thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    delay = self._retry_at - time.monotonic()
                    if any(self._wanted.values()) and delay <= 0:
                        break
                    self._cond.wait(delay if delay > 0 else None)
                if self._stopped:
                    return
                purpose = (
                    ListingPurpose.VERIFY
                    if self._wanted[ListingPurpose.VERIFY]
                    else ListingPurpose.COMPARE
                )
                runs = self._wanted[purpose]
                self._wanted[purpose] = set()
                self._busy = True
            left: set[str] = set(runs)
            try:
                self._list(left, purpose)
            except RelayError as exc:
                self._failed(exc)
            except Exception as exc:  # a bug must not stop listing forever
                log.exception("listing the bucket failed unexpectedly")
                self._failed(RetryableError(f"listing failed: {type(exc).__name__}: {exc}"))
            else:
                self._failures = 0
            finally:
                with self._cond:
                    self._busy = False
                    self._wanted[purpose] |= left  # what was not listed goes round again
                    self._cond.notify_all()

    def _failed(self, exc: RelayError) -> None:
        self._failures += 1
        if isinstance(exc, PermanentError):
            self._health.broken(str(exc), code=exc.code, source="list")
            delay = self._health.permanent_retry_seconds
        else:
            code = getattr(exc, "code", "")
            self._health.unreachable(str(exc), code=code)
            delay = backoff_delay(
                self._failures - 1, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS
            )
        with self._cond:
            self._retry_at = time.monotonic() + delay

    def _list(self, runs: set[str], purpose: ListingPurpose) -> None:
        """List ``runs``, posting each run's objects as soon as they are known; every run
        posted is removed from ``runs``."""
        store = self._store()
        if len(runs) <= PER_RUN_LISTING_MAX_RUNS:
            for run_id in sorted(runs):
                # "" is the probe: prove the bucket answers when no run is local yet.
                sub_prefix = f"{run_id}/" if run_id else PROBE_PREFIX
                found: dict[str, str] = {
                    obj.key: obj.etag for obj in self._listing(store, sub_prefix)
                }
                self._post({run_id}, found, purpose, runs)
            return
        # One listing of everything, in key order: a run's keys are contiguous, so a run is
        # complete once the listing is past "<run_id>/".
        pending = sorted(runs, key=lambda run_id: f"{run_id}/")
        prefixes = [f"{run_id}/" for run_id in pending]
        done = 0  # runs before this index were posted
        current: str | None = None
        objects: dict[str, str] = {}
        for obj in self._listing(store, ""):
            run_id = run_id_of_key(obj.key)
            if run_id != current:
                if current is not None and current in runs:
                    self._post({current}, objects, purpose, runs)
                objects = {}
                current = run_id
                # Local runs that sort before this key have no objects at all.
                stop = bisect.bisect_left(prefixes, obj.key, lo=done)
                empty = {r for r in pending[done:stop] if r != run_id and r in runs}
                if empty:
                    self._post(empty, {}, purpose, runs)
                done = max(done, stop)
            if run_id in runs:
                objects[obj.key] = obj.etag
        if current is not None and current in runs:
            self._post({current}, objects, purpose, runs)
        rest = {r for r in pending[done:] if r in runs}
        if rest:
            self._post(rest, {}, purpose, runs)

    def _listing(self, store: StorePort, sub_prefix: str) -> Iterator[RemoteObject]:
        try:
            for obj in store.list(sub_prefix):
                self.objects_listed += 1
                yield obj
        except PermanentError as exc:
            if exc.code != "NoSuchBucket" or not self._create_bucket():
                raise
            if store.make_bucket():
                log.info("created bucket %s", self._bucket_name())
        self._health.healthy(source="list")

    def _post(
        self, run_ids: set[str], objects: dict[str, str], purpose: ListingPurpose, runs: set[str]
    ) -> None:
        runs.difference_update(run_ids)
        self._on_listed(Listed(run_ids=frozenset(run_ids), objects=objects, purpose=purpose))
