"""Store stage: worker threads that move queued versions into the bucket.

Each worker takes a request from the :class:`UploadQueue`, PUTs it through the current
object store (swapped atomically on reconfiguration) and reports the outcome to the
detector (``on_outcome``: Uploaded, UploadFailed or Stale). A worker survives every
exception; a key is never left "in flight". The rule for failures, one per class:

* ``RetryableError`` (5xx, timeouts, resets, refused connections): back to the queue with
  the project's backoff (0.2 s doubling to 10 s, jittered), forever while running; counted
  as ``retry``. One WARNING when the store becomes unreachable, one INFO when it is back;
  individual retries are DEBUG. Unless the connection was never opened, the PUT may still
  land later (``doubtful``): the detector confirms that run against the bucket.
  Except for ``CredentialsError`` (temporary credentials could not be renewed), the store
  stays ready: nothing can be written until they are, so readiness is false meanwhile.
* ``PermanentError`` (AccessDenied, NoSuchBucket, InvalidAccessKeyId, TLS): one ERROR per
  distinct problem, readiness false, and the whole queue holds: one probe upload every
  ``sync.permanentErrorRetrySeconds`` (30 s), so the sidecar heals by itself once the bucket or the
  credentials are fixed without hammering the endpoint. With ``fail_fast`` (``--once``)
  the key is given up and reported instead.
* Anything else (a bug, an exhausted resource): one ERROR with the traceback per kind of
  exception, counted as ``failure``, and retried with backoff like a transient error.
* The file changed between its check and the upload (:class:`SnapshotChanged`): the
  upload stops before the changed part is sent and the detector reads the file again.

Big bodies stream from the file one part at a time; the bytes held by streamed uploads
in flight are bounded by ``max_stream_bytes`` (one upload is always admitted).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from runlog_relay.backoff import backoff_delay
from runlog_relay.errors import CredentialsError, PermanentError, RetryableError
from runlog_relay.etag import PART_SIZE
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.bucket import BucketKeeper
from runlog_relay.sidecar.queue import UploadQueue
from runlog_relay.sidecar.types import (
    Inbox,
    Stale,
    StorePort,
    Uploaded,
    UploadFailed,
    UploadRequest,
)
from runlog_relay.stableread import SnapshotChanged

__all__ = [
    "RETRY_BASE_SECONDS",
    "RETRY_CAP_SECONDS",
    "StoreHealth",
    "UploadWorkers",
]

log = logging.getLogger(__name__)

#: Transient failures: the first retry after about this long, doubling...
RETRY_BASE_SECONDS = 0.2
#: ...up to this.
RETRY_CAP_SECONDS = 10.0
#: A request that has heard nothing from the store for this long is warned about while it
#: still waits for its read timeout (60 s): an endpoint that accepts connections and never
#: answers is otherwise silent for a minute. The connect timeout: the first timeout there is.
STALL_SECONDS = 5.0


class _Waiting:
    """One request in flight, as a context manager; ``heard()`` when the store says
    something (a page). A plain class, not a generator: it is entered once per PUT."""

    __slots__ = ("_flight", "heard_at", "what", "what_of")

    def __init__(self, flight: set[_Waiting], what: str, what_of: str = "") -> None:
        self._flight = flight
        self.what, self.what_of = what, what_of  # joined only for the warning
        self.heard_at = 0.0

    def __enter__(self) -> _Waiting:
        self.heard_at = time.monotonic()
        self._flight.add(self)  # one bytecode-atomic set operation under the GIL
        return self

    def __exit__(self, *exc: object) -> None:
        self._flight.discard(self)

    def heard(self) -> None:
        self.heard_at = time.monotonic()

    def describe(self) -> str:
        return f"{self.what} {self.what_of}" if self.what_of else self.what


class StoreHealth:
    """Whether the bucket answers and accepts our writes; feeds readiness, a gauge and the
    logs.

    The logging rule lives here: one line per distinct problem when it starts (ERROR for a
    permanent one, WARNING for an outage), one INFO line when it is over. A successful
    listing proves the bucket answers, not that it takes writes: it clears an outage and a
    listing's own problem, but not a refused upload."""

    def __init__(
        self,
        metrics: SidecarMetrics,
        on_recovered: Callable[[], object] = lambda: None,
        permanent_retry: Callable[[], float] = lambda: 30.0,
    ) -> None:
        self._metrics = metrics
        self._on_recovered = on_recovered
        self._permanent_retry = permanent_retry
        self._lock = threading.Lock()
        self.problem: str | None = None  #: a permanent problem: not ready until it is fixed
        self._problem_source = "any"  # "list" or "write": which success clears it
        self.outage: str | None = None  #: transient trouble (the store stays ready)
        self.checked = False  #: a bucket call has succeeded or failed at least once
        self.permanent_failures = 0  #: requests refused so far (the drain watches it)
        self._reported: str | None = None  # identity of the problem last logged
        self._in_flight: set[_Waiting] = set()

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def permanent_retry_seconds(self) -> float:
        """How often a permanent problem is tried again."""
        return self._permanent_retry()

    def healthy(self, *, source: str = "write") -> None:
        with self._lock:
            self.checked = True
            was_down = self.outage is not None
            self.outage = None
            if self.problem is not None and self._problem_source in {source, "any"}:
                was_down = was_down or self._reported is not None
                self.problem = None
                self._problem_source = "any"
            if (was_down and self._reported is not None) or self._reported == "stalled":
                log.info("object store is reachable and accepts requests again")
            if self.problem is None:
                self._reported = None
                self._metrics.store_ready.set(1)
        if was_down:
            self._on_recovered()

    def waiting(self, what: str, what_of: str = "") -> _Waiting:
        """Around one request (or listing) to the store, so :meth:`check_stalled` can tell
        one that hears nothing: ``with health.waiting("uploading", key):``."""
        return _Waiting(self._in_flight, what, what_of)

    def check_stalled(self, after: float = STALL_SECONDS) -> None:
        """One WARNING when a request has heard nothing for ``after`` seconds (called
        about once a second); the next answer, or a failure, ends the episode."""
        now = time.monotonic()
        in_flight = tuple(self._in_flight)  # a snapshot: the upload threads add and discard
        with self._lock:
            stalled = [w for w in in_flight if now - w.heard_at >= after]
            if not stalled or self._reported is not None:
                return  # nothing stalled, or a problem is already reported
            self._reported = "stalled"
            oldest = min(stalled, key=lambda w: w.heard_at)
            log.warning(
                "object store has not answered for %.0fs (%s); still waiting for it, up to"
                " the read timeout; nothing is dropped",
                now - oldest.heard_at,
                oldest.describe(),
            )

    def broken(
        self, problem: str, *, code: str = "", source: str = "write", refused: bool = True
    ) -> None:
        """A permanent problem: readiness false until a request of that kind succeeds.

        ``refused``: the store refused the request (counted for the drain), rather than
        the sidecar being unable to send it (expired credentials)."""
        with self._lock:
            self.problem = problem
            self._problem_source = source
            self.checked = True
            if refused:
                self.permanent_failures += 1
            self._metrics.store_ready.set(0)
            identity = f"permanent:{code or problem}"
            if self._reported != identity:
                self._reported = identity
                log.error(
                    "object store refuses requests: %s; retrying every %gs until it is fixed",
                    problem,
                    self._permanent_retry(),
                )

    def unreachable(self, problem: str, *, code: str = "") -> None:
        """A transient problem: logged, shown in readiness before the first sync, but the
        store stays ready afterwards (outages heal by themselves, nothing is dropped)."""
        with self._lock:
            self.checked = True
            self.outage = problem
            identity = f"transient:{code or problem}"
            if self._reported != identity:
                self._reported = identity
                log.warning(
                    "object store unreachable: %s; retrying with backoff (%.1fs doubling to"
                    " %.0fs), nothing is dropped",
                    problem,
                    RETRY_BASE_SECONDS,
                    RETRY_CAP_SECONDS,
                )


_NOT_WATCHED = contextlib.nullcontext()


class _StreamBudget:
    """Bytes held by streamed uploads in flight (one part each)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._cond:
            while self._used and self._used + size > self.limit:
                self._cond.wait()
            self._used += size

    def release(self, size: int) -> None:
        with self._cond:
            self._used -= size
            self._cond.notify_all()


class UploadWorkers:
    """A resizable pool of upload threads (``concurrency`` 0: none; call ``work_once``)."""

    def __init__(
        self,
        queue: UploadQueue,
        store: Callable[[], StorePort],
        metrics: SidecarMetrics,
        health: StoreHealth,
        *,
        concurrency: int,
        on_outcome: Callable[[Inbox], object] = lambda message: None,
        fail_fast: bool = False,
        max_stream_bytes: int = PART_SIZE,
        release_memory: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        bucket: BucketKeeper | None = None,
    ) -> None:
        self._queue = queue
        self._bucket = bucket or BucketKeeper()  # --create-bucket
        self._store = store
        self._metrics = metrics
        # The labelled child every successful PUT counts: looked up once, not per file.
        self._uploaded_ok = metrics.uploads.labels(result="success")
        self._health = health
        self._on_outcome = on_outcome
        self._fail_fast = fail_fast
        self._release_memory = release_memory
        self._clock = clock
        self._budget = _StreamBudget(max_stream_bytes)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._wanted = 0
        self._reported_bugs: set[str] = set()
        self.resize(concurrency)

    @property
    def max_stream_bytes(self) -> int:
        return self._budget.limit

    @max_stream_bytes.setter
    def max_stream_bytes(self, value: int) -> None:
        self._budget.limit = value

    def resize(self, concurrency: int) -> None:
        """Grow now; shrink as surplus workers finish their current upload."""
        with self._lock:
            self._wanted = concurrency
            self._threads = [t for t in self._threads if t.is_alive()]
            for index in range(len(self._threads), concurrency):
                thread = threading.Thread(
                    target=self._work, args=(index,), name=f"upload-{index}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    @property
    def alive(self) -> bool:
        with self._lock:
            return any(t.is_alive() for t in self._threads) or self._wanted == 0

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self, index: int) -> None:
        while True:
            with self._lock:
                if index >= self._wanted:
                    return
            if not self.work_once(timeout=1.0) and self._queue.closed:
                return

    def work_once(self, timeout: float | None = 0.0) -> bool:
        """Take one request and upload it; False when there was none in time."""
        request = self._queue.take(timeout=timeout)
        if request is None:
            return False
        try:
            self._upload(request)
        except BaseException as exc:  # pragma: no cover - _upload handles Exception itself
            self._queue.retry(request, RETRY_BASE_SECONDS)
            if not isinstance(exc, Exception):
                raise
        return True

    def _already_there(self, request: UploadRequest) -> bool:
        """Whether the bucket holds this version although its listed ETag differs (a
        bucket whose ETags are not MD5s): one HEAD at most, none where they are MD5s.
        Any doubt means upload: a needless PUT costs less than a lost version."""
        if request.listed_etag is None:
            return False
        try:
            return self._store().matches_digests(
                request.key,
                request.listed_etag,
                expected=request.etag,
                md5=request.snapshot.md5,
            )
        except Exception as exc:
            log.debug(
                "could not confirm %s without uploading it (%s); uploading",
                request.key,
                exc,
                extra={"key": request.key},
            )
            return False

    def _upload(self, request: UploadRequest) -> None:
        snapshot = request.snapshot
        if self._already_there(request):
            self._health.healthy(source="list")  # it answered (writes are not proven)
            self._queue.done(request)
            self._on_outcome(
                Uploaded(
                    relative=request.relative,
                    etag=request.etag,
                    bucket_etag=request.listed_etag,
                )
            )
            log.debug(
                "%s is already in the bucket (its stored MD5 matches)",
                request.key,
                extra={"key": request.key},
            )
            return
        streamed = snapshot.body is None
        held = min(snapshot.body_size, PART_SIZE) if streamed else 0
        if streamed:
            self._budget.acquire(held)
        body = None
        store = self._store()
        sent_at = self._bucket.now()
        try:
            body = request.open_body()
            # A streamed body may take long for good reasons (parts of 16 MiB): only a
            # small one is a sign of a store that does not answer.
            with self._health.waiting("uploading", request.key) if not streamed else _NOT_WATCHED:
                etag = store.put(request.key, body, length=snapshot.body_size, md5=snapshot.md5)
        except SnapshotChanged:
            self._changed(request, "changed since it was read")
            return
        except FileNotFoundError:
            self._changed(request, "deleted since it was read")
            return
        except RetryableError as exc:
            self._retryable(request, exc)
            return
        except PermanentError as exc:
            self._permanent(request, exc, store, sent_at)
            return
        except Exception as exc:
            self._unexpected(request, exc)
            return
        finally:
            if body is not None and not isinstance(body, bytes):
                body.close()
            if streamed:
                self._budget.release(held)
        # The checked parts are the proof of content; the server's ETag is kept where it
        # is not the MD5 (SSE-KMS, SSE-C), so a later listing can recognise the object.
        self._uploaded_ok.inc()
        self._metrics.upload_bytes.inc(snapshot.body_size)
        self._metrics.sync_lag.observe(max(0.0, time.monotonic() - request.seen_at))
        self._metrics.last_sync.set(time.time())
        self._health.healthy()
        self._queue.release()
        burst_over = self._queue.done(request)
        self._on_outcome(Uploaded(relative=request.relative, etag=request.etag, bucket_etag=etag))
        if burst_over:
            self._release_memory()
        log.debug(
            "uploaded %s (%d bytes)", request.key, snapshot.body_size, extra={"key": request.key}
        )

    def _changed(self, request: UploadRequest, why: str) -> None:
        log.debug("not uploading %s: the file %s", request.key, why, extra={"key": request.key})
        self._queue.drop(request)
        self._on_outcome(Stale(relative=request.relative, etag=request.etag))

    def _retryable(self, request: UploadRequest, exc: RetryableError) -> None:
        self._metrics.uploads.labels(result="retry").inc()
        self._metrics.retries.inc()
        if isinstance(exc, CredentialsError):
            # Nothing can be written until the credentials are renewed: not ready, but not
            # a refusal either (the drain does not count it as one).
            self._health.broken(str(exc), code=exc.code, refused=False)
        else:
            self._health.unreachable(str(exc), code=exc.code)
        attempt = self._queue.attempts(request.key)
        delay = (
            exc.delay
            if exc.delay is not None
            else backoff_delay(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
        )
        self._queue.retry(request, delay)
        self._on_outcome(
            UploadFailed(
                relative=request.relative,
                etag=request.etag,
                reason=str(exc),
                doubtful=not exc.unsent,
            )
        )
        log.debug(
            "upload of %s failed (%s); retry %d in %.1fs",
            request.key,
            exc,
            attempt + 1,
            delay,
            extra={"key": request.key, "attempt": attempt + 1, "run_id": request.run_id},
        )

    def _permanent(
        self, request: UploadRequest, exc: PermanentError, store: StorePort, sent_at: float
    ) -> None:
        try:
            if self._bucket.recreate(store, exc, sent_at):
                self._queue.retry(request, 0.0)  # the bucket is back (--create-bucket)
                return
        except PermanentError as failed:
            exc = failed  # could not create it: that is the problem to report
        except RetryableError as failed:
            self._retryable(request, failed)  # creating it failed for now: retried
            return
        self._metrics.uploads.labels(result="failure").inc()
        if self._fail_fast:
            # The outcome goes to the detector before the drain can see the refusal (it
            # ends on one) and before the queue turns idle: the report must already name
            # this file as given up.
            self._on_outcome(
                UploadFailed(
                    relative=request.relative, etag=request.etag, reason=str(exc), given_up=True
                )
            )
            self._health.broken(str(exc), code=exc.code)
            self._queue.fail(request, str(exc))
            return
        self._health.broken(str(exc), code=exc.code)
        self._metrics.retries.inc()
        retry = self._health.permanent_retry_seconds
        self._queue.retry(request, retry)
        self._queue.hold(retry)
        self._on_outcome(
            UploadFailed(relative=request.relative, etag=request.etag, reason=str(exc))
        )

    def _unexpected(self, request: UploadRequest, exc: Exception) -> None:
        self._metrics.uploads.labels(result="failure").inc()
        self._metrics.retries.inc()
        kind = type(exc).__name__
        if kind not in self._reported_bugs:
            self._reported_bugs.add(kind)
            log.error(
                "upload of %s failed unexpectedly (%s: %s); retrying with backoff",
                request.key,
                kind,
                exc,
                exc_info=exc,
                extra={"key": request.key, "run_id": request.run_id},
            )
        attempt = self._queue.attempts(request.key)
        self._queue.retry(
            request, backoff_delay(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
        )
        self._on_outcome(
            UploadFailed(
                relative=request.relative,
                etag=request.etag,
                reason=f"{kind}: {exc}",
                doubtful=True,
            )
        )
