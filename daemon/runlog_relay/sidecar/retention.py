"""Local retention (``--retain-local DURATION``): delete sealed runs from the volume.

Shared volumes fill up (an RWX PVC under every Argo step, the k8s-job executor's
``pvc_claim_name``); Vector's file source has ``remove_after_secs`` for the same reason.
Opt-in, and careful, because a deleted run log cannot be pulled back from anywhere but
the bucket:

* A run is deleted ``delete_after`` after it was **sealed** (:mod:`.runs`: final, every
  file verified in the bucket), never before. A run written again is unsealed, which
  cancels its deletion; its next seal restarts the clock. After a restart, a run that was
  already complete in the bucket was sealed by an earlier process at a time nobody
  recorded: it counts from the later of its last local write and the last time the bucket
  received one of its objects (the listing's LastModified), the earliest it can have been
  sealed; so no restart makes the wait start over, and no object uploaded within the last
  DURATION has its run deleted.
* Right before deleting, it is **verified again**: one listing of the run's prefix, and
  every local file of the run read again (the shared stable read) and compared with its
  object's ETag. Anything that differs (the bucket lost an object, the run changed since)
  keeps the run, counted and logged.
* It **never follows symlinks and never leaves the source**: the run folder is opened
  with ``O_NOFOLLOW`` relative to the source's descriptor, files are unlinked relative to
  the run folder's descriptor, and the folder must still be the one that was verified. A
  run folder holding anything else (a symlink, a subfolder, a file that is not a mirrored
  run-log file) is left whole.
* ``dry_run`` does all of it except the deletion: it logs and counts what it would
  delete.

It runs in its own thread (timers, one listing and one read of the run per deletion),
and hears about seals from the run stage (:class:`~.runs.RunObserver`). Deleted files are
then forgotten by the detector like any deleted file; their objects stay.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runlog_relay import layout as layouts
from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import RelayError
from runlog_relay.metrics import RunMetrics
from runlog_relay.objectstore import RemoteObject
from runlog_relay.runstate import run_log_relative
from runlog_relay.sidecar.runs import Seal
from runlog_relay.stableread import FileSignature, Snapshot, TornRead, read_stable

__all__ = ["RETRY_SECONDS", "ListingPort", "LocalRetention"]

log = logging.getLogger(__name__)

#: A deletion that failed for a reason that may pass (permissions fixed, a listing that
#: failed) is tried again after this long.
RETRY_SECONDS = 600.0

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class ListingPort(Protocol):
    """What retention needs from the object store (objectstore.ObjectStore fits)."""

    def list(self, sub_prefix: str = "") -> Iterable[RemoteObject]: ...

    def matches_digests(self, key: str, etag: str, *, expected: str, md5: str) -> bool: ...


class _NotYet(Exception):
    """The run's seal is more recent than planned: due again at ``due`` (wall-clock)."""

    def __init__(self, due: float) -> None:
        super().__init__(due)
        self.due = due


class _Keep(Exception):
    """The run is not deleted now; ``reason`` is a metric label, ``retry`` says whether
    to try again later (until then the run stays)."""

    def __init__(self, reason: str, detail: str, *, retry: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retry = retry


@dataclass(frozen=True, slots=True)
class _Verified:
    """The local files of a run, each read and found identical to its object."""

    names: dict[str, FileSignature]  #: file name (in the run folder, or the source) → signature
    size: int


class LocalRetention:
    """The retention stage (inert while ``local_retention.delete_after`` is unset)."""

    def __init__(
        self,
        settings: Callable[[], SidecarSettings],
        metrics: RunMetrics,
        store: Callable[[], ListingPort],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._store = store
        self._clock = clock  # wall-clock: the seal times it compares with are wall-clock
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, str]] = []  # (when, seal serial, run id)
        self._sealed: dict[str, int] = {}  # run id → serial of its current seal
        self._decided: dict[str, int] = {}  # run id → its seal dealt with for good (dry run, kept)
        self._stopped = False
        self._reported: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._warn_if_read_only()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False only once the thread died: not before it started (the health server
        answers while the pipeline is starting), nor after a stop."""
        return self._thread.ident is None or self._thread.is_alive() or self._stopped

    def reschedule(self, seals: Iterable[Seal]) -> None:
        """The settings changed: plan again for the runs sealed now."""
        with self._cond:
            self._due.clear()
            self._sealed.clear()
            self._decided.clear()
        self._warn_if_read_only()
        for seal in seals:
            self.run_sealed(seal)

    def pending(self) -> dict[str, float]:
        """Run id → when its deletion is due (wall-clock), for tests and logs."""
        with self._cond:
            return {run_id: due for due, serial, run_id in self._due if self._valid(run_id, serial)}

    def _valid(self, run_id: str, serial: int) -> bool:
        """The run is still sealed by this seal, and nothing was decided about it yet."""
        return self._sealed.get(run_id) == serial and self._decided.get(run_id) != serial

    # ----------------------------------------------------------------- observer
    def run_evaluated(self, run_id: str, status: str | None, mtime: float, first: bool) -> None:
        pass

    def run_sealed(self, seal: Seal) -> None:
        after = self._settings().local_retention.seconds
        if after is None:
            return
        with self._cond:
            self._sealed[seal.run_id] = seal.serial
            heapq.heappush(self._due, (seal.clock_start + after, seal.serial, seal.run_id))
            self._cond.notify_all()

    def run_unsealed(self, run_id: str) -> None:
        with self._cond:
            self._sealed.pop(run_id, None)  # written again: its next seal restarts the clock
            self._decided.pop(run_id, None)

    def run_gone(self, run_id: str) -> None:
        with self._cond:
            self._sealed.pop(run_id, None)
            self._decided.pop(run_id, None)

    # ----------------------------------------------------------------- thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._due and self._due[0][0] <= self._clock():
                        break
                    timeout = self._due[0][0] - self._clock() if self._due else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
            self.expire_due()

    def expire_due(self) -> None:
        """Deal with every run whose time has come (the thread body; tests call it)."""
        while True:
            with self._cond:
                if not self._due or self._due[0][0] > self._clock():
                    return
                _, serial, run_id = heapq.heappop(self._due)
                if not self._valid(run_id, serial):
                    continue  # unsealed, sealed again or gone since
            try:
                self._expire(run_id)
            except _NotYet as later:
                with self._cond:
                    heapq.heappush(self._due, (later.due, serial, run_id))
                continue
            except _Keep as keep:
                self._kept(run_id, serial, keep)
            except Exception as exc:  # a bug must not stop retention of other runs
                log.exception("local retention of run %s failed", run_id)
                failure = _Keep("error", f"{type(exc).__name__}: {exc}", retry=True)
                self._kept(run_id, serial, failure)
            else:
                with self._cond:
                    self._decided[run_id] = serial

    def _kept(self, run_id: str, serial: int, keep: _Keep) -> None:
        self._metrics.retention_failures.labels(reason=keep.reason).inc()
        retry = f"; trying again in {RETRY_SECONDS:.0f}s" if keep.retry else ""
        level = logging.WARNING if keep.reason not in self._reported else logging.DEBUG
        self._reported.add(keep.reason)
        log.log(
            level,
            "local retention keeps run %s: %s%s",
            run_id,
            keep,
            retry,
            extra={"run_id": run_id, "reason": keep.reason},
        )
        with self._cond:
            if keep.retry:
                # Only while the same seal holds: an unsealed run is never tried again.
                heapq.heappush(self._due, (self._clock() + RETRY_SECONDS, serial, run_id))
                self._cond.notify_all()
            else:
                self._decided[run_id] = serial  # until the run is sealed again

    def _warn_if_read_only(self) -> None:
        settings = self._settings()
        if not settings.local_retention.deletes or settings.source is None:
            return
        try:
            read_only = bool(os.statvfs(settings.source).f_flag & os.ST_RDONLY)
        except OSError:
            return  # the folder may not exist yet
        if read_only or not os.access(settings.source, os.W_OK):
            log.warning(
                "local retention is on but %s is not writable (a read-only mount?): sealed"
                " runs cannot be deleted; mount the volume read-write or turn retention off",
                settings.source,
            )

    # ----------------------------------------------------------------- one run
    def _expire(self, run_id: str) -> None:
        settings = self._settings()
        retention = settings.local_retention
        if retention.seconds is None or settings.source is None:
            return  # turned off since it was planned
        root = settings.source
        chunked = settings.layout is layouts.Layout.CHUNKED
        try:
            # The run id becomes a path below the source: one safe name, never a path.
            layouts.key_for(run_log_relative(run_id, settings.layout), settings.layout)
        except layouts.UnsafeNameError as exc:
            raise _Keep("not_removable", f"{run_id!r} is not a run id", retry=False) from exc
        try:
            listed = list(self._store().list(f"{run_id}/"))
        except RelayError as exc:
            raise _Keep("error", f"listing its prefix failed: {exc}", retry=True) from exc
        uploaded = [o.last_modified.timestamp() for o in listed if o.last_modified is not None]
        if uploaded and max(uploaded) + retention.seconds > self._clock():
            # An object of the run reached the bucket within DURATION (a seal follows its
            # last upload): its seal is that recent at least.
            raise _NotYet(max(uploaded) + retention.seconds)
        objects = {o.key: o.etag for o in listed}
        root_fd = os.open(root, _OPEN_DIR)
        try:
            if chunked:
                verified, run_fd = self._verify_folder(root, root_fd, run_id, objects)
                try:
                    if retention.dry_run:
                        self._would_delete(run_id, verified)
                        return
                    self._delete_folder(root_fd, run_fd, run_id, verified)
                finally:
                    os.close(run_fd)
            else:
                name = f"{run_id}{layouts.JSON_SUFFIX}"
                signature = self._verify(root, name, objects)
                verified = _Verified({name: signature}, signature.size)
                if retention.dry_run:
                    self._would_delete(run_id, verified)
                    return
                self._unlink(root_fd, name, verified.names[name])
        finally:
            os.close(root_fd)
        self._metrics.deleted_runs.inc()
        self._metrics.deleted_bytes.inc(verified.size)
        log.info(
            "local retention deleted run %s (%d files, %d bytes), sealed and verified in the"
            " bucket again",
            run_id,
            len(verified.names),
            verified.size,
            extra={"run_id": run_id},
        )

    def _would_delete(self, run_id: str, verified: _Verified) -> None:
        self._metrics.would_delete_runs.inc()
        self._metrics.would_delete_bytes.inc(verified.size)
        log.info(
            "local retention (dry run) would delete run %s (%d files, %d bytes): sealed and"
            " verified in the bucket again",
            run_id,
            len(verified.names),
            verified.size,
            extra={"run_id": run_id},
        )

    def _verify(self, root: Path, relative: str, objects: dict[str, str]) -> FileSignature:
        """Read one local file and compare it with its object; its signature."""
        settings = self._settings()
        try:
            key = layouts.key_for(relative, settings.layout).key
        except layouts.UnsafeNameError as exc:
            raise _Keep("not_removable", f"{relative} is not a run-log file", retry=False) from exc
        try:
            snapshot = read_stable(root / relative, root=root, layout=settings.layout, keep_body=0)
        except TornRead as exc:
            raise _Keep("changed", f"{relative} is being written", retry=False) from exc
        except OSError as exc:
            raise _Keep(
                "not_removable", f"{relative} cannot be read: {exc.strerror}", retry=True
            ) from exc
        found = objects.get(key)
        if found is None:
            raise _Keep("bucket_differs", f"the bucket has no object {key}", retry=False)
        if found != snapshot.etag and not self._same_content(key, found, snapshot):
            raise _Keep(
                "bucket_differs",
                f"the bucket's {key} is not the local {relative} (ETag {found}, local"
                f" {snapshot.etag})",
                retry=False,
            )
        return snapshot.signature

    def _same_content(self, key: str, listed: str, snapshot: Snapshot) -> bool:
        """A bucket whose ETags are not MD5s (SSE-KMS, SSE-C): one HEAD of the object's
        stored MD5 decides; any doubt keeps the run."""
        try:
            return self._store().matches_digests(
                key, listed, expected=snapshot.etag, md5=snapshot.md5
            )
        except RelayError:
            return False

    def _verify_folder(
        self, root: Path, root_fd: int, run_id: str, objects: dict[str, str]
    ) -> tuple[_Verified, int]:
        try:
            run_fd = os.open(run_id, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Keep("not_removable", f"{run_id} is not a folder", retry=False) from exc
            raise _Keep("not_removable", f"{run_id}: {exc.strerror}", retry=True) from exc
        try:
            identity = os.fstat(run_fd)
            names: dict[str, FileSignature] = {}
            size = 0
            with os.scandir(run_fd) as entries:
                listed = sorted(entries, key=lambda e: e.name)
            for entry in listed:
                if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                    raise _Keep(
                        "not_removable",
                        f"{run_id}/{entry.name} is not a regular file; the folder is left whole",
                        retry=False,
                    )
                signature = self._verify(root, f"{run_id}/{entry.name}", objects)
                names[entry.name] = signature
                size += signature.size
            # The folder verified by path must be the one this descriptor holds.
            now = os.stat(run_id, dir_fd=root_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (identity.st_dev, identity.st_ino):
                raise _Keep("changed", f"{run_id} was replaced while it was verified", retry=False)
        except BaseException:
            os.close(run_fd)
            raise
        return _Verified(names, size), run_fd

    def _delete_folder(self, root_fd: int, run_fd: int, run_id: str, verified: _Verified) -> None:
        for name, signature in verified.names.items():
            self._unlink(run_fd, name, signature, shown=f"{run_id}/{name}")
        try:
            os.rmdir(run_id, dir_fd=root_fd)
        except OSError as exc:
            # Something appeared in the folder since (a retry started): keep it.
            raise _Keep(
                "changed" if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) else "not_removable",
                f"{run_id} could not be removed after its files: {exc.strerror}",
                retry=False,
            ) from exc

    def _unlink(
        self, dir_fd: int, name: str, signature: FileSignature, shown: str | None = None
    ) -> None:
        shown = shown or name
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # already gone
        if not stat.S_ISREG(now.st_mode) or FileSignature.of(now) != signature:
            raise _Keep("changed", f"{shown} changed since it was verified", retry=False)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _Keep(
                "not_removable", f"{shown} cannot be deleted: {exc.strerror}", retry=True
            ) from exc
