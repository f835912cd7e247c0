"""Store stage: worker threads that move queued versions into the bucket.

Each worker takes a request from the :class:`UploadQueue`, PUTs it through the current
object store (swapped atomically on reconfiguration) and reports back. Errors arrive
already translated by :mod:`runlog_relay.objectstore`:

* ``RetryableError`` (5xx, timeouts, refused connections): back to the queue with
  backoff; counted as ``retry``; the store stays ready (outages heal by themselves),
  except for ``CredentialsError`` (temporary credentials could not be renewed): nothing
  can be written until they are, so readiness is false meanwhile.
* ``PermanentError`` (AccessDenied, NoSuchBucket, InvalidAccessKeyId): one clear log line
  per distinct problem, readiness false, and the version is retried slowly so the
  sidecar recovers by itself once the bucket or credentials are fixed. With
  ``fail_fast`` (``--once``) the key is given up and reported instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from runlog_relay.errors import CredentialsError, PermanentError, RelayError, RetryableError
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.queue import UploadQueue
from runlog_relay.sidecar.types import StorePort, UploadRequest

__all__ = ["PERMANENT_RETRY_CAP_SECONDS", "StoreHealth", "UploadWorkers"]

log = logging.getLogger(__name__)

#: A permanent error is retried at most this often: it needs a human, but must heal by
#: itself once fixed without hammering the endpoint.
PERMANENT_RETRY_CAP_SECONDS = 30.0


class StoreHealth:
    """Whether the bucket accepts our writes; feeds readiness and a gauge."""

    def __init__(self, metrics: SidecarMetrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self.problem: str | None = "not checked yet"
        self.checked = False  #: a bucket call has succeeded or failed at least once
        self._reported: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def healthy(self) -> None:
        with self._lock:
            if self.problem is not None and self._reported is not None:
                log.info("object store is writable again")
            self.problem = None
            self.checked = True
            self._reported = None
            self._metrics.store_ready.set(1)

    def broken(self, problem: str) -> None:
        with self._lock:
            self.problem = problem
            self.checked = True
            self._metrics.store_ready.set(0)
            if self._reported != problem:
                self._reported = problem
                log.error("object store refuses writes: %s", problem)


class UploadWorkers:
    """A resizable pool of upload threads."""

    def __init__(
        self,
        queue: UploadQueue,
        store: Callable[[], StorePort],
        metrics: SidecarMetrics,
        health: StoreHealth,
        *,
        concurrency: int,
        fail_fast: bool = False,
        release_memory: Callable[[], object] = lambda: None,
    ) -> None:
        self._queue = queue
        self._store = store
        self._metrics = metrics
        self._health = health
        self._fail_fast = fail_fast
        self._release_memory = release_memory
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._wanted = 0
        self.resize(concurrency)

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
            request = self._queue.take(timeout=1.0)
            if request is None:
                if self._queue.closed:
                    return
                continue
            self._upload(request)

    def _upload(self, request: UploadRequest) -> None:
        try:
            self._store().put(request.key, request.body)
        except RetryableError as exc:
            if isinstance(exc, CredentialsError):
                self._health.broken(str(exc))
            self._metrics.uploads.labels(result="retry").inc()
            self._metrics.retries.inc()
            attempt = self._queue.attempts(request.key) + 1
            if self._fail_fast and attempt >= 5:
                self._queue.fail(request, str(exc))
                return
            delay = self._queue.retry(request)
            log.warning(
                "upload of %s failed (%s); retry %d in %.1fs",
                request.key,
                exc,
                attempt,
                delay,
                extra={"key": request.key, "attempt": attempt, "run_id": request.run_id},
            )
            return
        except PermanentError as exc:
            self._metrics.uploads.labels(result="failure").inc()
            self._health.broken(str(exc))
            if self._fail_fast:
                self._queue.fail(request, str(exc))
                return
            self._metrics.retries.inc()
            self._queue.retry(request, cap=PERMANENT_RETRY_CAP_SECONDS)
            return
        except RelayError as exc:  # pragma: no cover - every RelayError is one of the above
            self._metrics.uploads.labels(result="failure").inc()
            self._queue.retry(request)
            log.error("upload of %s failed: %s", request.key, exc)
            return
        self._metrics.uploads.labels(result="success").inc()
        self._metrics.upload_bytes.inc(len(request.body))
        self._metrics.sync_lag.observe(max(0.0, time.monotonic() - request.seen_at))
        self._metrics.last_sync.set(time.time())
        self._health.healthy()
        if self._queue.done(request):
            self._release_memory()
        log.debug(
            "uploaded %s (%d bytes)", request.key, len(request.body), extra={"key": request.key}
        )
