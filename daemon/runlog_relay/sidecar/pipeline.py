"""Wires the sidecar's stages together and owns start, drain and stop.

    FolderWatcher ──inbox──▶ Detector ──UploadQueue──▶ UploadWorkers ──▶ ObjectStore

Start-up: the watcher starts first (so nothing written during the first sync is
missed), then the detector lists the bucket once and rescans the folder, queueing only
what differs. Shutdown (:meth:`Pipeline.shutdown`): stop watching, rescan one last time,
upload everything pending within the drain budget, and report what is not mirrored.
``--once`` is the same without the watcher.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import PermanentError, RelayError
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar import memory
from runlog_relay.sidecar.detect import Detector
from runlog_relay.sidecar.events import FolderWatcher
from runlog_relay.sidecar.queue import UploadQueue
from runlog_relay.sidecar.store import StoreHealth, UploadWorkers
from runlog_relay.sidecar.types import Inbox, Reconfigure, Rescan, Stop, StorePort

__all__ = ["DrainReport", "Pipeline"]

log = logging.getLogger(__name__)

StoreFactory = Callable[[SidecarSettings], StorePort]


@dataclass
class DrainReport:
    """What shutdown (or ``--once``) achieved."""

    pending: list[str] = field(default_factory=list)  #: keys not uploaded in time
    failed: dict[str, str] = field(default_factory=dict)  #: keys given up, with reason
    torn: list[str] = field(default_factory=list)  #: files torn at the end
    unreadable: dict[str, str] = field(default_factory=dict)  #: files that cannot be read
    problem: str | None = None  #: a store-wide problem (unreachable, access denied)

    @property
    def complete(self) -> bool:
        return not (self.pending or self.failed or self.torn or self.unreadable or self.problem)

    def lines(self) -> list[str]:
        """One line per problem, for the exit summary."""
        out = [f"not uploaded (still pending): {key}" for key in self.pending]
        out += [f"not uploaded: {key}: {reason}" for key, reason in sorted(self.failed.items())]
        out += [f"torn (not complete JSON at the end): {path}" for path in self.torn]
        out += [f"unreadable: {path}: {why}" for path, why in self.unreadable.items()]
        if self.problem and not (self.pending or self.failed):
            out.append(f"object store: {self.problem}")
        return out


class Pipeline:
    """One sidecar: build with settings, ``start()``, later ``shutdown()``."""

    def __init__(
        self,
        settings: SidecarSettings,
        metrics: SidecarMetrics,
        store_factory: StoreFactory,
        *,
        once: bool = False,
    ) -> None:
        if settings.source is None:
            raise ValueError("settings.source is required")
        self.settings = settings
        self.metrics = metrics
        self._store_factory = store_factory
        self._store: StorePort = store_factory(settings)
        # What the store client was built with: credentials() and encryption() re-read
        # mounted files (keys, the SSE-C key), so the settings object alone cannot tell
        # whether a rotation already took effect.
        self._store_credentials = (settings.credentials(), settings.encryption())
        self._once = once
        self._inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self.store_health = StoreHealth(metrics)
        self.queue = UploadQueue(metrics, max_pending_bytes=settings.sync.max_pending_bytes)
        self._synced = threading.Event()
        self.detector = Detector(
            settings,
            self._inbox,
            submit=self.queue.put,
            list_remote=self._list_remote,
            metrics=metrics,
            on_synced=self._synced.set,
            release_memory=memory.release_free_memory,
        )
        self._detector_thread = threading.Thread(
            target=self.detector.run, name="detector", daemon=True
        )
        self.workers: UploadWorkers | None = None
        self.watcher: FolderWatcher | None = None
        self._reconfigure_lock = threading.Lock()

    # ------------------------------------------------------------------ store
    def _current_store(self) -> StorePort:
        return self._store

    def _list_remote(self) -> Iterable[tuple[str, str]]:
        """The bucket's keys and ETags: one paginated listing, no HEAD (a missing bucket
        shows up as NoSuchBucket on the listing itself, and is created if asked)."""
        store = self._store
        try:
            try:
                listing = [(obj.key, obj.etag) for obj in store.list()]
            except PermanentError as exc:
                if exc.code != "NoSuchBucket" or not self.settings.create_bucket:
                    raise
                if store.make_bucket():
                    log.info("created bucket %s", self.settings.bucket_name)
                listing = []
        except RelayError as exc:
            # Unreachable or refused: either way the mirror cannot be compared; say so in
            # readiness until a later attempt succeeds.
            self.store_health.broken(str(exc))
            raise
        self.store_health.healthy()
        return listing

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        memory.limit_arenas()  # before the worker threads exist
        self.workers = UploadWorkers(
            self.queue,
            self._current_store,
            self.metrics,
            self.store_health,
            concurrency=self.settings.sync.concurrency,
            fail_fast=self._once,
            release_memory=memory.release_free_memory,
        )
        if not self._once:
            assert self.settings.source is not None
            self.watcher = FolderWatcher(
                self.settings.source, self.settings.sync, self._inbox, self.metrics
            )
            self.watcher.start()
        self._inbox.put(Rescan(reason="start-up", relist=True))
        self._detector_thread.start()

    @property
    def synced_once(self) -> bool:
        """True after the first full comparison of folder and bucket."""
        return self._synced.is_set()

    @property
    def alive(self) -> bool:
        """Every stage's thread is running (liveness)."""
        watcher_ok = self.watcher is None or self.watcher.alive
        workers_ok = self.workers is None or self.workers.alive
        return (
            watcher_ok
            and workers_ok
            and (self._detector_thread.is_alive() or self.detector.stopped)
        )

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def reconfigure(self, new: SidecarSettings) -> None:
        """Apply new settings without a restart and without losing pending uploads.

        A new endpoint, bucket, prefix, region, TLS option, credential, encryption or
        storage class swaps the store client; a new target (endpoint/bucket/prefix/layout/
        source) also re-lists the bucket and rescans, so the mirror is completed at the
        new place. Watch tuning
        re-arms the watcher; concurrency resizes the worker pool.
        """
        with self._reconfigure_lock:
            old = self.settings
            # Settings classes are rebuilt per load, so compare values, not objects.
            credentials = (new.credentials(), new.encryption())
            if new.model_dump() == old.model_dump() and credentials == self._store_credentials:
                return
            connection_changed = (
                new.endpoint,
                new.bucket,
                new.region,
                new.tls,
                new.storage_class,
            ) != (
                old.endpoint,
                old.bucket,
                old.region,
                old.tls,
                old.storage_class,
            ) or credentials != self._store_credentials
            # Only a new place (or a new way of naming files) needs the bucket listed
            # again; a rotated credential just swaps the client, and uploads it failed
            # are still queued and retried with the new one.
            target_changed = (new.endpoint, new.bucket, new.layout, new.source) != (
                old.endpoint,
                old.bucket,
                old.layout,
                old.source,
            )
            if connection_changed:
                self._store = self._store_factory(new)
                self._store_credentials = credentials
            self.settings = new
            self.queue.max_pending_bytes = new.sync.max_pending_bytes
            if self.workers is not None and new.sync.concurrency != old.sync.concurrency:
                self.workers.resize(new.sync.concurrency)
            if self.watcher is not None and (new.sync != old.sync or new.source != old.source):
                self.watcher.stop()
                assert new.source is not None
                self.watcher = FolderWatcher(new.source, new.sync, self._inbox, self.metrics)
                self.watcher.start()
            if new.log_level != old.log_level:
                logging.getLogger().setLevel(new.log_level)
            if (new.metrics_host, new.metrics_port) != (old.metrics_host, old.metrics_port):
                log.warning("a new metrics address takes effect at the next restart")
            self._inbox.put(Reconfigure(settings=new, relist=target_changed))
            log.info("configuration reloaded: %s", new.describe())

    def shutdown(self, drain_timeout: float | None = None) -> DrainReport:
        """Stop watching, rescan once more, upload what is pending, report the rest."""
        budget = (
            self.settings.sync.drain_timeout_seconds if drain_timeout is None else drain_timeout
        )
        deadline = time.monotonic() + budget
        if self.watcher is not None:
            self.watcher.stop()
        self._inbox.put(Rescan(reason="shutdown"))
        self._inbox.put(Stop())
        self._detector_thread.join(max(0.0, deadline - time.monotonic()))
        idle = self.queue.wait_idle(max(0.0, deadline - time.monotonic()))
        report = DrainReport(
            pending=[] if idle else self.queue.pending(),
            failed=self.queue.failed(),
            torn=self.detector.torn_paths(),
            unreadable=self.detector.unreadable_paths(),
        )
        if not self._synced.is_set():
            # Never managed to compare folder and bucket (unreachable from the start).
            report.problem = self.store_health.problem or "the bucket could not be listed"
        elif (report.pending or report.failed) and not self.store_health.ok:
            report.problem = self.store_health.problem
        self.queue.close()
        if self.workers is not None:
            self.workers.join(2.0)
        return report

    def run_once(self, timeout: float) -> DrainReport:
        """``--once``: one full reconcile, then drain and report."""
        self.start()
        deadline = time.monotonic() + timeout
        while not self._synced.wait(0.2):
            if time.monotonic() > deadline:
                break
            if self.store_health.checked and not self.store_health.ok:
                break  # unreachable or refused: report now rather than at the deadline
        return self.shutdown(drain_timeout=max(0.0, deadline - time.monotonic()))
