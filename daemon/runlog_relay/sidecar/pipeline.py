"""Wires the sidecar's stages together and owns start, drain and stop.

    FolderWatcher ──inbox──▶ Detector ──UploadQueue──▶ UploadWorkers ──▶ ObjectStore
                               ▲  ▲                          │
                        Lister ┘  └──── upload outcomes ─────┘

Start-up: the watcher starts first (so nothing written during the first sync is missed),
then the detector scans the folder and asks the lister for the local runs' objects, and
uploads only what differs. Shutdown (:meth:`Pipeline.shutdown`): stop watching, retry
everything that waits on a delay at once, rescan one last time, upload what is pending,
confirm every run against the bucket (objects can vanish behind a long-running sidecar),
upload again what is missing or differs, and report every local file that is not
mirrored, within the drain budget. ``--once`` is the same without the
watcher, and its budget is not a total: it gives up only after that long without any
progress (a listing page, a file read, an upload).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import ConfigError
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar import memory
from runlog_relay.sidecar.bucket import BucketKeeper
from runlog_relay.sidecar.detect import Detector, DetectorStatus
from runlog_relay.sidecar.events import FolderWatcher
from runlog_relay.sidecar.listing import Lister
from runlog_relay.sidecar.queue import UploadQueue
from runlog_relay.sidecar.retention import LocalRetention
from runlog_relay.sidecar.runs import RunSealer
from runlog_relay.sidecar.shard import shard_from_settings
from runlog_relay.sidecar.store import StoreHealth, UploadWorkers
from runlog_relay.sidecar.types import (
    Inbox,
    ListingPurpose,
    Reconfigure,
    Rescan,
    Stop,
    StorePort,
    Verify,
)

__all__ = ["DrainReport", "Pipeline", "source_problem"]

log = logging.getLogger(__name__)

StoreFactory = Callable[[SidecarSettings], StorePort]


def source_problem(source: os.PathLike[str] | str) -> str | None:
    """Why the source folder cannot be watched right now, or None."""
    try:
        info = os.stat(source)
    except FileNotFoundError:
        return f"source folder {source} does not exist"
    except OSError as exc:
        return f"source folder {source} cannot be read: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"source {source} is not a directory"
    try:
        # A folder that can be entered but not listed (mode 0311, a root-squashed NFS
        # export) passes stat: opening it for reading is the check the scan needs.
        os.scandir(source).close()
    except OSError as exc:
        return f"source folder {source} cannot be listed: {exc.strerror or exc}"
    return None


@dataclass
class DrainReport:
    """What shutdown (or ``--once``) achieved."""

    files: dict[str, str] = field(default_factory=dict)  #: not mirrored: path → why
    problem: str | None = None  #: a store-wide problem (unreachable, access denied)
    source: str | None = None  #: the source folder is missing or not a folder
    ran_out: str | None = None  #: the budget that ran out, and while doing what

    @property
    def complete(self) -> bool:
        # A budget that ran out means the work never settled: whatever was left (a scan
        # that kept failing, a listing) cannot be called a mirror, even with no file named.
        return not (self.files or self.source or self.ran_out)

    def lines(self) -> list[str]:
        """One line per problem, for the exit summary."""
        out = []
        if self.source:
            out.append(f"{self.source}: nothing was mirrored")
        out += [f"not mirrored: {path}: {why}" for path, why in self.files.items()]
        if (self.files or self.ran_out) and self.problem:
            out.append(f"object store: {self.problem}")
        if self.ran_out:
            out.append(self.ran_out)
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
        clock: Callable[[], float] = time.monotonic,
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
        self._clock = clock
        self._inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self._progress = threading.Condition()
        self._progress_count = 0
        self.store_health = StoreHealth(
            metrics,
            on_recovered=self._recovered,
            permanent_retry=lambda: self.settings.sync.permanent_error_retry_seconds,
        )
        self.queue = UploadQueue(max_pending_bytes=settings.sync.max_pending_bytes, clock=clock)
        # --create-bucket: one keeper for listers and uploads; a bucket created anew (it
        # vanished after start) holds none of the objects the ledger remembers.
        self.bucket = BucketKeeper(
            enabled=lambda: self.settings.create_bucket,
            name=lambda: self.settings.bucket_name,
            on_created=lambda: self._inbox.put(Verify(every_run=True)),
        )
        self.lister = Lister(self._current_store, self.store_health, self._post, bucket=self.bucket)
        self._synced = threading.Event()
        self.sealer = RunSealer(
            lambda: self.settings,
            metrics.runs,
            ledger=lambda run_id: self.detector.run_ledger(run_id),
            request_verify=lambda run_id: self.lister.request({run_id}, ListingPurpose.VERIFY),
            store=self._current_store,
            clock=clock,
        )
        self.retention = LocalRetention(lambda: self.settings, metrics.runs, self._current_store)
        self.sealer.observers.append(self.retention)
        # Scale-out (shard.group set): a membership change makes the detector compare its
        # new share with the bucket.
        if once and settings.shard.group:
            raise ConfigError(
                "--once mirrors the whole folder in one pass; shard.group (scale-out) is for"
                " long-running replicas: unset one of them"
            )
        self.shard = shard_from_settings(
            settings.shard,
            on_change=lambda why: self._inbox.put(Rescan(reason="scale-out", relist=True)),
        )
        self.detector = Detector(
            settings,
            self._inbox,
            submit=self.queue.put,
            has_room=self.queue.has_room,
            request_listing=self.lister.request,
            metrics=metrics,
            on_synced=self._synced.set,
            on_progress=self._made_progress,
            release_memory=memory.release_free_memory,
            owns=self.shard.owns if self.shard is not None else lambda run_id: True,
            clock=clock,
            on_file=self.sealer.post,
        )
        self._detector_thread = threading.Thread(
            target=self.detector.run, name="detector", daemon=True
        )
        self.workers: UploadWorkers | None = None
        self.watcher: FolderWatcher | None = None
        self._reconfigure_lock = threading.Lock()

    # ------------------------------------------------------------------ wiring
    def _current_store(self) -> StorePort:
        return self._store

    def _post(self, message: Inbox) -> None:
        self._inbox.put(message)
        self.sealer.post(message)  # listings and upload outcomes: the run stage seals with them

    def _recovered(self) -> None:
        """The store answers again: whatever waits on a delay goes now."""
        self.queue.expedite()
        self.lister.expedite()

    def _made_progress(self) -> None:
        with self._progress:
            self._progress_count += 1
            self._progress.notify_all()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        memory.limit_arenas()  # before the worker threads exist
        memory.freeze_startup_objects()
        self.workers = UploadWorkers(
            self.queue,
            self._current_store,
            self.metrics,
            self.store_health,
            concurrency=self.settings.sync.concurrency,
            on_outcome=self._post,
            fail_fast=self._once,
            max_stream_bytes=self.settings.sync.max_pending_bytes,
            release_memory=memory.release_free_memory,
            bucket=self.bucket,
        )
        self.lister.start()
        self.sealer.start()
        if not self._once:
            self.retention.start()
            assert self.settings.source is not None
            self.watcher = FolderWatcher(
                self.settings.source,
                self.settings.sync,
                self._inbox,
                self.metrics,
                layout=self.settings.layout,
            )
            self.watcher.start()
        if not self._once:
            # --once has its one full rescan posted by its drain (a second, 13 ms of CPU
            # for 2,000 files, would only find what the first found).
            self._inbox.put(Rescan(reason="start-up"))
        self._detector_thread.start()
        if self.shard is not None:
            self.shard.start()

    @property
    def synced_once(self) -> bool:
        """True after the first full comparison of folder and bucket."""
        return self._synced.is_set()

    @property
    def alive(self) -> bool:
        """Every stage's thread is running (liveness)."""
        watcher_ok = self.watcher is None or self.watcher.alive
        workers_ok = self.workers is None or self.workers.alive
        # Not started yet is not dead: the health server answers while start() runs.
        detector = self._detector_thread
        detector_ok = detector.ident is None or detector.is_alive() or self.detector.stopped
        runs_ok = self.sealer.alive and (self._once or self.retention.alive)
        shard_ok = self.shard is None or self.shard.alive
        return (
            watcher_ok and workers_ok and detector_ok and self.lister.alive and runs_ok and shard_ok
        )

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def status(self) -> DetectorStatus:
        return self.detector.status()

    def reconfigure(self, new: SidecarSettings) -> None:
        """Apply new settings without a restart and without losing pending uploads.

        A new endpoint, bucket, prefix, region, TLS option, credential, encryption or
        storage class swaps the store client; a new target (endpoint/bucket/prefix/layout/
        source/runs) also compares with the bucket again, so the mirror is completed at the
        new place. Watch tuning re-arms the watcher; concurrency resizes the worker pool.
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
            target_changed = (new.endpoint, new.bucket, new.layout, new.source, new.run_ids) != (
                old.endpoint,
                old.bucket,
                old.layout,
                old.source,
                old.run_ids,
            )
            if connection_changed:
                self._store = self._store_factory(new)
                self._store_credentials = credentials
                self._recovered()  # retry what the old client failed, with the new one
            self.settings = new
            self.queue.max_pending_bytes = new.sync.max_pending_bytes
            if self.workers is not None:
                self.workers.max_stream_bytes = new.sync.max_pending_bytes
                if new.sync.concurrency != old.sync.concurrency:
                    self.workers.resize(new.sync.concurrency)
            if self.watcher is not None and (
                new.sync != old.sync or new.source != old.source or new.layout != old.layout
            ):
                self.watcher.stop()
                assert new.source is not None
                self.watcher = FolderWatcher(
                    new.source, new.sync, self._inbox, self.metrics, layout=new.layout
                )
                self.watcher.start()
            if new.local_retention != old.local_retention:
                self.retention.reschedule(self.sealer.sealed_runs().values())
            if new.log_level != old.log_level:
                logging.getLogger().setLevel(new.log_level)
            if (new.metrics_host, new.metrics_port) != (old.metrics_host, old.metrics_port):
                log.warning("a new metrics address takes effect at the next restart")
            self._inbox.put(Reconfigure(settings=new, relist=target_changed))
            log.info("configuration reloaded: %s", new.describe())

    # ------------------------------------------------------------------ drain
    def _settled(self) -> bool:
        """Nothing left to do: every local file is mirrored, or has a problem of its own."""
        status = self.detector.status()
        return (
            status.scanned
            and status.contacted
            and status.unlisted_runs == 0
            and status.to_read == 0
            and status.pending == 0
            and status.verifying == 0
            and self.lister.idle
            and self.queue.idle
        )

    def _activity(self) -> str:
        """What the sidecar is busy with, for the message when a budget runs out."""
        status = self.detector.status()
        if status.unlisted_runs or not status.contacted:
            return (
                f"listing the bucket ({self.lister.objects_listed} objects listed,"
                f" {status.unlisted_runs} runs not listed yet)"
            )
        if status.to_read:
            return f"reading files ({status.to_read} not read yet)"
        if status.verifying:
            return (
                f"confirming {status.verifying} runs against the bucket"
                f" ({self.lister.objects_listed} objects listed)"
            )
        return f"uploading ({status.pending} files not in the bucket yet)"

    def _drain(self, budget: float, *, progress_based: bool) -> str | None:
        """Work until settled (then confirm doubtful runs); None when settled, else what
        ran out. ``progress_based``: the budget is the longest stretch without progress."""
        rescanned = threading.Event()
        self._inbox.put(Rescan(reason="shutdown" if not self._once else "once", done=rescanned))
        verified: threading.Event | None = None
        refused_before = self.store_health.permanent_failures
        # Whatever waits on a backoff goes now: the budget is for work, not for waiting.
        self.queue.expedite()
        self.lister.expedite()
        # Budgets are wall-clock seconds (a pod's grace period); ``clock`` runs the stages'
        # timers (backoff, holds, retries), which the drain must not wait for.
        deadline = time.monotonic() + budget
        last_seen = -1
        while True:
            with self._progress:
                if progress_based:
                    marker = self._progress_count + self.lister.objects_listed
                    if marker != last_seen:
                        last_seen = marker
                        deadline = time.monotonic() + budget
            if verified is not None and verified.is_set() and self._settled():
                return None
            if verified is None and rescanned.is_set() and self._settled():
                # Settled once: confirm every run against the bucket (objects may have
                # vanished, uploads may have landed late), then settle again: whatever is
                # missing or differs is uploaded once more. --once listed every run moments
                # ago, so only its doubtful runs are listed again.
                verified = threading.Event()
                self._inbox.put(Verify(done=verified, every_run=not self._once))
                continue
            health = self.store_health
            health.check_stalled()
            if not health.ok and (
                (self._once and self.queue.idle) or health.permanent_failures > refused_before
            ):
                # A permanent error (refused credentials, no bucket) that --once met, or that
                # the drain's own retry met again: waiting longer only delays the report.
                return f"gave up: {health.problem}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if progress_based:
                    return f"gave up after {budget:.0f}s without progress while {self._activity()}"
                return f"the drain budget of {budget:.0f}s ran out while {self._activity()}"
            with self._progress:
                self._progress.wait(min(remaining, 0.1))
            # Uploads notify hundreds of times a second in a first sync: look at most every
            # 10 ms, or the checks (each takes the detector's lock) cost more CPU than
            # the uploads' own bookkeeping (py-spy: ~6 % of a 2,000-file --once).
            time.sleep(min(0.01, remaining))

    def shutdown(self, drain_timeout: float | None = None) -> DrainReport:
        """Stop watching, rescan once more, upload what is pending, report the rest."""
        budget = (
            self.settings.sync.drain_timeout_seconds if drain_timeout is None else drain_timeout
        )
        if self.watcher is not None:
            self.watcher.stop()
        started = time.monotonic()
        ran_out = self._drain(budget, progress_based=False)
        if ran_out is None:
            self._seal_final_runs(budget - (time.monotonic() - started))
        return self._finish(ran_out)

    def run_once(self, timeout: float) -> DrainReport:
        """``--once``: one full reconcile, then report. Gives up after ``timeout`` seconds
        without progress."""
        self.start()
        ran_out = self._drain(timeout, progress_based=True)
        if ran_out is None:
            self._seal_final_runs(timeout)
        return self._finish(ran_out)

    def _seal_final_runs(self, budget: float) -> None:
        """Seal what is final before stopping (a pod's last moments are often just after
        its run ended). An unsealed run is no mirror problem: it is only logged."""
        if not self.sealer.flush(max(0.0, budget)):
            log.warning("the drain budget ran out before every final run was sealed")

    def _finish(self, ran_out: str | None) -> DrainReport:
        # Stop every stage before reading the ledger: nothing changes it any more.
        self.detector.abort.set()
        self.queue.close()
        self.lister.stop()
        self.sealer.stop()
        self.retention.stop()
        self._inbox.put(Stop())
        self._detector_thread.join(5.0)
        assert self.settings.source is not None
        report = DrainReport(
            files=self.detector.unmirrored(),
            problem=self.store_health.problem or self.store_health.outage,
            source=source_problem(self.settings.source),
            ran_out=ran_out,
        )
        if self.workers is not None:
            self.workers.join(2.0)
        if self.shard is not None:
            self.shard.leave()  # drained: the others take this replica's runs at once
        return report
