"""Events stage: turns filesystem activity under the source folder into messages.

The only module that imports watchfiles. It uses inotify by default; watchfiles already
coalesces a burst of events into one batch (``step`` of quiet, at most ``debounce``),
which is the per-file debounce the sidecar promises.

With ``sync.forcePolling`` (NFS, CIFS and some CSI volumes deliver no inotify events) it
does not use watchfiles' poller: that one compares modification times in whole seconds,
so a file rewritten twice within a second (runnable does that) would keep its first
version until the next safety-net rescan. Instead it asks the detector for a rescan every
poll interval; a rescan compares size, mtime and ctime in nanoseconds and inode, with one
``lstat`` per file.

The folder may not exist yet when the sidecar starts (an empty volume that runnable
creates later), and it may vanish and come back; in both cases the watcher waits,
re-arms and asks the detector for a rescan so nothing written meanwhile is missed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import watchfiles

from runlog_relay.config.models import SyncSpec
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.types import Inbox, PathsChanged, Rescan

__all__ = ["FolderWatcher"]

log = logging.getLogger(__name__)

#: How often a missing source folder is looked for.
WAIT_FOR_SOURCE_SECONDS = 0.5
#: How often the Rust watcher returns control when idle (a stop request is seen at once).
STOP_CHECK_MS = 500


class FolderWatcher:
    """A thread that watches ``root`` recursively and posts to ``inbox``."""

    def __init__(
        self,
        root: Path,
        sync: SyncSpec,
        inbox: queue.SimpleQueue[Inbox],
        metrics: SidecarMetrics,
    ) -> None:
        self.root = root
        self.sync = sync
        self._inbox = inbox
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    def _wait_for_root(self) -> bool:
        """Block until the folder exists; False when asked to stop first."""
        announced = False
        while not self._stop.is_set():
            if self.root.is_dir():
                return True
            if not announced:
                log.info("waiting for source folder %s to appear", self.root)
                announced = True
            self._stop.wait(WAIT_FOR_SOURCE_SECONDS)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wait_for_root():
                return
            try:
                if self.sync.force_polling:
                    self._poll()
                    continue
                self._watch()
            except FileNotFoundError:
                log.warning("source folder %s disappeared; waiting for it", self.root)
            except Exception as exc:
                # A watcher failure must not kill the sidecar: re-arm after a pause.
                log.error("file watcher failed (%s: %s); re-arming", type(exc).__name__, exc)
                self._stop.wait(1.0)

    def _poll(self) -> None:
        """Post a rescan every poll interval until stopped or the folder disappears."""
        while not self._stop.wait(self.sync.poll_interval_seconds):
            if not self.root.is_dir():
                return
            # Only rescans are posted in this mode: a non-empty inbox means one is still
            # waiting, so a slow detector is not buried under a backlog of polls.
            if self._inbox.qsize() == 0:
                self._inbox.put(Rescan(reason="poll"))

    def _watch(self) -> None:
        debounce_ms = max(1, int(self.sync.debounce_seconds * 1000))
        armed = False
        for changes in watchfiles.watch(
            self.root,
            watch_filter=None,
            debounce=debounce_ms,
            step=min(20, debounce_ms),
            stop_event=self._stop,
            rust_timeout=STOP_CHECK_MS,
            # The first yield (changes or a timeout) proves the watch is armed.
            yield_on_timeout=True,
            force_polling=False,
            recursive=True,
            ignore_permission_denied=True,
            raise_interrupt=False,
        ):
            if not armed:
                # Anything written before the watch was armed (start-up, the folder just
                # appeared, a re-arm after an error) produced no event: rescan once now.
                armed = True
                self._inbox.put(Rescan(reason="watch armed"))
            if not changes:
                continue
            seen_at = time.monotonic()
            self._metrics.fs_events.inc(len(changes))
            self._inbox.put(
                PathsChanged(paths=frozenset(Path(path) for _, path in changes), seen_at=seen_at)
            )
            if not self.root.is_dir():
                return
