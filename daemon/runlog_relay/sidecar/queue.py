"""Upload queue: per-key coalescing, per-key ordering, backoff, back-pressure.

Guarantees, all enforced here under one lock:

* **Coalescing.** At most one waiting request per key; a newer version replaces the
  waiting one. A file rewritten a thousand times during one upload is uploaded at most
  once more, with its final content.
* **Ordering.** At most one request per key is in flight, so an older version can never
  land after a newer one.
* **Nothing is dropped.** A failed upload goes back with a delay (exponential backoff
  with full jitter) unless a newer version arrived meanwhile, which then goes instead.
  Only ``fail()`` (used by ``--once`` for permanent errors) gives a key up.
* **Bounded memory.** Bodies held waiting are capped by ``max_pending_bytes``; ``put``
  blocks the detector until workers catch up (a single oversized body is always admitted
  so a huge file cannot deadlock the queue).
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import deque

from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.types import UploadRequest

__all__ = ["UploadQueue", "backoff_delay"]

BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 10.0
#: Uploads of at least this many bytes before the queue goes idle count as a burst.
BURST_BYTES = 4 * 1024 * 1024


def backoff_delay(attempt: int, *, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Exponential backoff with full jitter (AWS architecture blog), in seconds."""
    ceiling = min(cap, BACKOFF_BASE_SECONDS * (2 ** min(attempt, 16)))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


class UploadQueue:
    """Thread-safe; the detector calls ``put``, store workers ``take``/``done``/``retry``."""

    def __init__(self, metrics: SidecarMetrics, *, max_pending_bytes: int) -> None:
        self._metrics = metrics
        self.max_pending_bytes = max_pending_bytes
        lock = threading.Lock()
        # Two conditions on one lock: workers wait for work, the detector and drain wait
        # for room/idleness. A put wakes one worker instead of every thread.
        self._lock = threading.Condition(lock)
        self._work = threading.Condition(lock)
        self._waiting: dict[str, UploadRequest] = {}  # key → latest version not in flight
        self._ready: deque[str] = deque()  # keys in _waiting that may go now, FIFO
        self._delayed: list[tuple[float, int, str]] = []  # (not_before, tiebreak, key)
        self._not_before: dict[str, float] = {}
        self._in_flight: dict[str, UploadRequest] = {}
        self._attempts: dict[str, int] = {}
        self._failed: dict[str, str] = {}  # key → reason, given up (only --once)
        self._bytes = 0
        self._burst_bytes = 0  # uploaded since the queue was last idle
        self._counter = itertools.count()
        self._closed = False

    # ------------------------------------------------------------------ producer
    def put(self, request: UploadRequest) -> None:
        """Queue a version; replaces a waiting older version of the same key."""
        with self._lock:
            while (
                self._bytes + len(request.body) > self.max_pending_bytes
                and self._bytes > 0
                and not self._closed
            ):
                self._lock.wait(0.5)
            older = self._waiting.get(request.key)
            if older is not None:
                self._bytes -= len(older.body)
                # The bucket has been behind since the oldest unsent change.
                request = _with_seen_at(request, min(older.seen_at, request.seen_at))
            elif request.key in self._in_flight:
                pass  # becomes ready when the in-flight one finishes
            elif request.key not in self._not_before:
                self._ready.append(request.key)
            self._waiting[request.key] = request
            self._failed.pop(request.key, None)
            self._bytes += len(request.body)
            self._update()
            self._work.notify()

    # ------------------------------------------------------------------ consumers
    def take(self, timeout: float | None = None) -> UploadRequest | None:
        """The next request whose key is not in flight and not backing off, or None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._promote_delayed()
                while self._ready:
                    key = self._ready.popleft()
                    request = self._waiting.pop(key, None)
                    if request is None or key in self._in_flight:
                        continue
                    self._bytes -= len(request.body)
                    self._in_flight[key] = request
                    self._lock.notify_all()
                    return request
                if self._closed:
                    return None
                now = time.monotonic()
                wait = None if deadline is None else deadline - now
                if self._delayed:
                    until_delayed = self._delayed[0][0] - now
                    wait = until_delayed if wait is None else min(wait, until_delayed)
                if wait is not None and wait <= 0:
                    if deadline is not None and now >= deadline:
                        return None
                    continue
                self._work.wait(wait)

    def _promote_delayed(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if self._not_before.get(key, 0.0) <= now:
                self._not_before.pop(key, None)
                if key in self._waiting and key not in self._in_flight:
                    self._ready.append(key)

    def done(self, request: UploadRequest) -> bool:
        """The request's version is in the bucket. True when this ends a burst of uploads
        of at least :data:`BURST_BYTES` (a good moment to give memory back)."""
        with self._lock:
            self._in_flight.pop(request.key, None)
            self._burst_bytes += len(request.body)
            self._attempts.pop(request.key, None)
            if request.key in self._waiting:
                self._ready.append(request.key)
                self._work.notify()
            self._update()
            self._lock.notify_all()
            if self._waiting or self._in_flight or self._burst_bytes < BURST_BYTES:
                return False
            self._burst_bytes = 0
            return True

    def retry(self, request: UploadRequest, *, cap: float = BACKOFF_CAP_SECONDS) -> float:
        """Upload failed: try again later (a newer waiting version takes its place)."""
        with self._lock:
            self._in_flight.pop(request.key, None)
            attempt = self._attempts.get(request.key, 0) + 1
            self._attempts[request.key] = attempt
            delay = backoff_delay(attempt, cap=cap)
            if request.key not in self._waiting:
                self._waiting[request.key] = request
                self._bytes += len(request.body)
            not_before = time.monotonic() + delay
            self._not_before[request.key] = not_before
            heapq.heappush(self._delayed, (not_before, next(self._counter), request.key))
            self._update()
            self._lock.notify_all()
            self._work.notify()  # a sleeping worker must re-arm its timer for the new delay
            return delay

    def fail(self, request: UploadRequest, reason: str) -> None:
        """Give the key up (``--once`` on a permanent error); reported at the end."""
        with self._lock:
            self._in_flight.pop(request.key, None)
            if request.key not in self._waiting:
                self._failed[request.key] = reason
            else:
                self._ready.append(request.key)
                self._work.notify()
            self._update()
            self._lock.notify_all()

    def attempts(self, key: str) -> int:
        with self._lock:
            return self._attempts.get(key, 0)

    # ------------------------------------------------------------------ state
    def pending(self) -> list[str]:
        """Keys whose latest version is not in the bucket yet."""
        with self._lock:
            return sorted(set(self._waiting) | set(self._in_flight))

    def failed(self) -> dict[str, str]:
        with self._lock:
            return dict(self._failed)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is waiting or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._waiting or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.5))
            return True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake every waiter; ``take`` returns None from now on."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            self._work.notify_all()

    def _update(self) -> None:
        # O(concurrency), not O(pending): this runs on every put and take.
        in_flight_only = sum(1 for key in self._in_flight if key not in self._waiting)
        self._metrics.pending_files.set(len(self._waiting) + in_flight_only)


def _with_seen_at(request: UploadRequest, seen_at: float) -> UploadRequest:
    if seen_at == request.seen_at:
        return request
    return UploadRequest(
        key=request.key,
        run_id=request.run_id,
        path=request.path,
        body=request.body,
        etag=request.etag,
        seen_at=seen_at,
        file_size=request.file_size,
    )
