"""``--create-bucket``: the one place that creates the bucket when a request meets
``NoSuchBucket``, at start-up or later (deleted by hand, an ephemeral MinIO restarted
empty).

Listers and upload workers all meet the missing bucket at about the same time; each asks
:meth:`BucketKeeper.recreate`, which creates it once (a lock, and the time of the last
creation: a request sent before it only needs to be sent again) and logs it once. A
bucket that vanished after start took the objects with it, so ``on_created`` tells the
detector to confirm every run against the new bucket (what it holds is uploaded again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from runlog_relay.errors import PermanentError
from runlog_relay.sidecar.types import StorePort

__all__ = ["BucketKeeper"]

log = logging.getLogger(__name__)


class BucketKeeper:
    def __init__(
        self,
        enabled: Callable[[], bool] = lambda: False,
        name: Callable[[], str] = lambda: "",
        on_created: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._enabled = enabled
        self._name = name
        self._on_created = on_created
        self._clock = clock
        self._lock = threading.Lock()
        self._created_at = float("-inf")

    def now(self) -> float:
        """The time to pass as ``sent_at`` (taken just before a request)."""
        return self._clock()

    def recreate(self, store: StorePort, exc: PermanentError, sent_at: float) -> bool:
        """Whether the request that failed with ``exc`` (sent at ``sent_at``) should just be
        sent again: the bucket was missing, creating it is allowed, and it exists now.
        Raises what creating it raised (a RelayError)."""
        if exc.code != "NoSuchBucket" or not self._enabled():
            return False
        with self._lock:
            if self._created_at >= sent_at:
                return True  # created by another request meanwhile
            # On us-east-1 (and moto) creating an existing bucket of one's own succeeds:
            # the lock, not the answer, is what keeps this to one creation and one line.
            created = store.make_bucket()
            self._created_at = self._clock()
        if created:
            log.info("created bucket %s", self._name())
            self._on_created()
        return True
