"""Upload queue: per-key coalescing, per-key ordering, delays, back-pressure.

Guarantees, all enforced here under one lock:

* **Coalescing.** At most one waiting request per key; a newer version replaces the
  waiting one. A file rewritten a thousand times during one upload is uploaded at most
  once more, with its final content.
* **Ordering.** At most one request per key is in flight, so the sidecar never has two
  versions of a key on the wire at once (a PUT that timed out may still land later; the
  pipeline confirms such runs against the bucket, see ``UploadFailed.doubtful``).
* **Nothing is dropped.** A failed upload goes back with the delay the store stage chose
  (the project's one backoff rule), unless a newer version arrived meanwhile, which then
  goes instead. Only ``fail()`` (``--once`` on a permanent error) gives a key up.
* **Bounded memory.** Bodies held waiting (small files travel with their body; big ones
  are read again at upload) are capped by ``max_pending_bytes``: the detector asks
  ``has_room`` before it reads a file and waits while the queue is full (a single
  oversized body is always admitted so a huge file cannot deadlock the queue).
* **Holding.** ``hold(seconds)`` stops handing out work (a permanent error such as
  AccessDenied needs a human; hammering the endpoint with every key helps nobody). When
  the hold ends one request goes out as a probe; ``release()`` (the store is writable
  again) or ``expedite()`` (drain, recovery) lets everything go at once.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

from runlog_relay.sidecar.types import UploadRequest

__all__ = ["UploadQueue"]

#: Uploads of at least this many bytes before the queue goes idle count as a burst.
BURST_BYTES = 4 * 1024 * 1024

Clock = Callable[[], float]


class UploadQueue:
    """Thread-safe; the detector calls ``put``, store workers ``take``/``done``/``retry``."""

    def __init__(self, *, max_pending_bytes: int, clock: Clock = time.monotonic) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._clock = clock
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
        self._held_until = 0.0  # no work handed out before this (clock time)
        self._probe_out = False  # a probe was handed out after a hold; wait for its result
        self._bytes = 0
        self._burst_bytes = 0  # uploaded since the queue was last idle
        self._counter = itertools.count()
        self._closed = False

    # ------------------------------------------------------------------ producer
    def has_room(self, size: int) -> bool:
        """Whether a body of ``size`` bytes fits now (the detector asks before reading a
        file, and waits while the answer is no: back-pressure without blocking it)."""
        with self._lock:
            return self._closed or self._bytes == 0 or self._bytes + size <= self.max_pending_bytes

    def put(self, request: UploadRequest) -> bool:
        """Queue a version; replaces a waiting older version of the same key. False when
        the queue is closed (the drain is over: nothing is queued)."""
        size = request.held_bytes
        with self._lock:
            if self._closed:
                return False
            older = self._waiting.get(request.key)
            if older is not None:
                self._bytes -= older.held_bytes
                # The bucket has been behind since the oldest unsent change.
                request = _with_seen_at(request, min(older.seen_at, request.seen_at))
            elif request.key in self._in_flight:
                pass  # becomes ready when the in-flight one finishes
            elif request.key not in self._not_before:
                self._ready.append(request.key)
            self._waiting[request.key] = request
            self._failed.pop(request.key, None)
            self._bytes += size
            self._work.notify()
            return True

    # ------------------------------------------------------------------ consumers
    def take(self, timeout: float | None = None) -> UploadRequest | None:
        """The next request whose key is not in flight and not delayed; None on timeout
        or once the queue is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    return None
                now = self._clock()
                request = self._next(now)
                if request is not None:
                    return request
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                # A delay or a hold ends at clock time: wake then (real seconds, at most one
                # second at a time so an injected clock is noticed too).
                wake = self._next_wake(now)
                if wake is not None:
                    wait = wake if wait is None else min(wait, wake)
                self._work.wait(wait)

    def _next(self, now: float) -> UploadRequest | None:
        if now < self._held_until or self._probe_out:
            return None
        self._promote_delayed(now)
        while self._ready:
            key = self._ready.popleft()
            request = self._waiting.pop(key, None)
            if request is None or key in self._in_flight:
                continue
            self._bytes -= request.held_bytes
            self._in_flight[key] = request
            if self._held_until:
                self._probe_out = True  # the first request after a hold is its probe
            self._lock.notify_all()
            return request
        return None

    def _next_wake(self, now: float) -> float | None:
        if self._probe_out:
            return None
        if now < self._held_until:
            return min(1.0, self._held_until - now)
        if self._delayed:
            return max(0.0, min(1.0, self._delayed[0][0] - now))
        return None

    def _promote_delayed(self, now: float) -> None:
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
            self._burst_bytes += request.snapshot.body_size
            self._attempts.pop(request.key, None)
            if request.key in self._waiting:
                self._ready.append(request.key)
                self._work.notify()
            self._lock.notify_all()
            if self._waiting or self._in_flight or self._burst_bytes < BURST_BYTES:
                return False
            self._burst_bytes = 0
            return True

    def retry(self, request: UploadRequest, delay: float) -> int:
        """Upload failed: try again after ``delay`` seconds (a newer waiting version
        takes its place). Returns the number of failed attempts of the key so far."""
        with self._lock:
            self._in_flight.pop(request.key, None)
            attempt = self._attempts.get(request.key, 0) + 1
            self._attempts[request.key] = attempt
            if request.key not in self._waiting:
                self._waiting[request.key] = request
                self._bytes += request.held_bytes
            not_before = self._clock() + delay
            self._not_before[request.key] = not_before
            heapq.heappush(self._delayed, (not_before, next(self._counter), request.key))
            self._lock.notify_all()
            self._work.notify_all()  # a sleeping worker must re-arm its timer for the delay
            return attempt

    def drop(self, request: UploadRequest) -> None:
        """Forget an in-flight request without retrying it (the file changed: the detector
        submits the new version)."""
        with self._lock:
            self._in_flight.pop(request.key, None)
            if request.key in self._waiting and request.key not in self._not_before:
                self._ready.append(request.key)
                self._work.notify()
            self._lock.notify_all()

    def fail(self, request: UploadRequest, reason: str) -> None:
        """Give the key up (``--once`` on a permanent error); reported at the end."""
        with self._lock:
            self._in_flight.pop(request.key, None)
            if request.key not in self._waiting:
                self._failed[request.key] = reason
            else:
                self._ready.append(request.key)
                self._work.notify()
            self._lock.notify_all()

    def attempts(self, key: str) -> int:
        with self._lock:
            return self._attempts.get(key, 0)

    # ------------------------------------------------------------------ holding
    def hold(self, seconds: float) -> None:
        """Hand out nothing for ``seconds``; then one probe, until release/expedite."""
        with self._lock:
            self._held_until = self._clock() + seconds
            self._probe_out = False
            self._work.notify_all()

    def release(self) -> None:
        """End a hold: the store accepts writes again."""
        with self._lock:
            if self._held_until or self._probe_out:
                self._held_until = 0.0
                self._probe_out = False
                self._work.notify_all()

    def expedite(self) -> int:
        """End every delay and hold now (drain started, the store is healthy again);
        returns how many keys were waiting on a delay."""
        with self._lock:
            self._held_until = 0.0
            self._probe_out = False
            waiting = len(self._not_before)
            for key in list(self._not_before):
                if key in self._waiting and key not in self._in_flight:
                    self._ready.append(key)
            self._not_before.clear()
            self._delayed.clear()
            self._work.notify_all()
            return waiting

    # ------------------------------------------------------------------ state
    def pending(self) -> list[str]:
        """Keys whose latest version is not in the bucket yet."""
        with self._lock:
            return sorted(set(self._waiting) | set(self._in_flight))

    def failed(self) -> dict[str, str]:
        with self._lock:
            return dict(self._failed)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not (self._waiting or self._in_flight)

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
        """Wake every waiter; ``put`` queues nothing and ``take`` returns None from now on."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            self._work.notify_all()


def _with_seen_at(request: UploadRequest, seen_at: float) -> UploadRequest:
    if seen_at == request.seen_at:
        return request
    return dataclasses.replace(request, seen_at=seen_at)
