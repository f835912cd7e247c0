"""Live reload of the sidecar's config file and mounted credential files.

The operator renders each store's sidecar config into a ConfigMap, and the credentials
live in a Secret; the pod mounts both as volumes. When either changes, the kubelet writes
the new files into a fresh timestamped directory and atomically swaps the ``..data``
symlink in the mount directory, so the visible files (themselves symlinks through
``..data``) change all at once, some time after the API object did. Watching the files
with inotify misses that (the watched inode never changes; the symlink above it does),
so :class:`ConfigWatcher` polls: every ``interval`` it hashes the content of the config
file and of every file the current config names (``accessKeyIdFile``,
``secretAccessKeyFile``, ``sessionTokenFile``, ``tls.caFile``). A different hash set
means a reload:

- the settings are rebuilt with :func:`~runlog_relay.config.settings.load_sidecar_settings`
  (same overrides and environment as at start-up, so command-line options keep winning)
  and the credential files are read once to prove they are usable;
- valid → ``on_change(new_settings)`` (the pipeline's ``reconfigure``), counted as
  ``applied``;
- invalid → one clear ERROR line naming the problem (never a secret value), counted as
  ``rejected``; the last good config stays in force, and the same bad content is not
  reported again on every poll.

Polling a handful of small files once a second costs nothing, works on every volume
type, and needs no watch library (watchfiles belongs to the events stage).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from runlog_relay.config.settings import SidecarSettings, load_sidecar_settings
from runlog_relay.errors import ConfigError
from runlog_relay.metrics import SidecarMetrics

__all__ = ["ConfigWatcher", "watched_files"]

log = logging.getLogger(__name__)

Loader = Callable[[dict[str, Any] | None, Path | None], SidecarSettings]
#: path → sha256 of its content, or None when it cannot be read (missing, mid-swap).
Snapshot = dict[Path, str | None]


def watched_files(config_file: Path, settings: SidecarSettings) -> list[Path]:
    """The config file and every file it points to."""
    paths = [config_file]
    for extra in settings.mounted_files():
        if extra not in paths:
            paths.append(extra)
    return paths


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _snapshot(paths: Iterable[Path]) -> Snapshot:
    return {path: _digest(path) for path in paths}


class ConfigWatcher:
    """Polls the config file and the credential files; applies valid changes.

    ``initial`` is the settings the process started with (loaded from ``config_file``
    with ``overrides``); without it the watcher loads them itself. :meth:`poll` does one
    check synchronously (tests, or a caller with its own loop); :meth:`start` runs it
    every ``interval`` seconds in a daemon thread until :meth:`stop`.
    """

    def __init__(
        self,
        config_file: Path,
        on_change: Callable[[SidecarSettings], None],
        *,
        overrides: Mapping[str, Any] | None = None,
        initial: SidecarSettings | None = None,
        interval: float = 1.0,
        metrics: SidecarMetrics | None = None,
        loader: Loader = load_sidecar_settings,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.config_file = Path(config_file)
        self.interval = interval
        self._on_change = on_change
        self._overrides = dict(overrides or {})
        self._metrics = metrics
        self._loader = loader
        self._current = initial if initial is not None else self._load()
        self._snapshot = _snapshot(watched_files(self.config_file, self._current))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    @property
    def current(self) -> SidecarSettings:
        """The settings in force: the last ones that validated."""
        return self._current

    @property
    def watched(self) -> list[Path]:
        return list(self._snapshot)

    def _load(self) -> SidecarSettings:
        settings = self._loader(self._overrides, self.config_file)
        # Credential files must be readable, UTF-8 and non-empty, and the source must
        # resolve (a whole key pair): else the last good config stays in force.
        settings.credentials()
        settings.encryption()
        return settings

    def poll(self) -> SidecarSettings | None:
        """Check once; the new settings when a change was applied, else None."""
        with self._poll_lock:
            snapshot = _snapshot(self._snapshot)
            if snapshot == self._snapshot:
                return None
            changed = sorted(str(p) for p in snapshot if snapshot[p] != self._snapshot.get(p))
            # Remember the content even if it turns out invalid: a bad version is reported
            # once, and fixing it (any new content) triggers the next attempt.
            self._snapshot = snapshot
            try:
                settings = self._load()
            except ConfigError as exc:
                log.error(
                    "rejected the new sidecar config (changed: %s); the last good config"
                    " stays in force: %s",
                    ", ".join(changed),
                    exc,
                    extra={"path": str(self.config_file)},
                )
                self._count("rejected")
                return None
            # The new config may name other files: watch those from now on.
            self._snapshot = {
                path: snapshot.get(path) or _digest(path)
                for path in watched_files(self.config_file, settings)
            }
            log.debug("sidecar config changed (%s)", ", ".join(changed))
            try:
                self._on_change(settings)
            except Exception:
                log.exception("applying the new sidecar config failed")
                self._count("rejected")
                return None
            self._current = settings
            self._count("applied")
            return settings

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.config_reloads.labels(result=result).inc()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let the watcher die: the next poll may succeed
                log.exception("config watcher poll failed")

    def start(self) -> ConfigWatcher:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ConfigWatcher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
