"""Typed messages passed between the sidecar's stages, and the ports they use.

The stages import only this module (and the lower layers: config, layout, metrics):

    events ──PathsChanged/Rescan──▶ detect ──UploadRequest──▶ queue ──▶ store
                                    (inbox)                   (UploadQueue)

``pipeline.py`` creates the stages, connects them and owns start, drain and stop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runlog_relay.config.settings import SidecarSettings
from runlog_relay.objectstore import RemoteObject

__all__ = [
    "FileSignature",
    "Inbox",
    "PathsChanged",
    "Reconfigure",
    "Rescan",
    "Stop",
    "StorePort",
    "UploadRequest",
]


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What ``lstat`` says about a file version; equal signatures mean "probably unchanged"."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileSignature:
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


@dataclass(frozen=True, slots=True)
class PathsChanged:
    """The events stage saw these paths change (added, modified or deleted)."""

    paths: frozenset[Path]
    seen_at: float  #: time.monotonic() when the batch was received


@dataclass(frozen=True, slots=True)
class Rescan:
    """Walk the whole folder (start-up, safety-net timer, source appeared, shutdown)."""

    reason: str
    relist: bool = False  #: also list the bucket again (first sync, new target)


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """New settings took effect; the detector adopts them, and with ``relist`` (a new
    endpoint or bucket; a new layout or source always counts) forgets what it knew and
    compares again."""

    settings: SidecarSettings
    relist: bool


@dataclass(frozen=True, slots=True)
class Stop:
    """No more messages: the detector finishes what it has and exits."""


Inbox = PathsChanged | Rescan | Reconfigure | Stop


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """One verified, complete file version to put in the bucket."""

    key: str  #: object key relative to the prefix
    run_id: str
    path: Path
    body: bytes  #: the object body (already encoded for the layout)
    etag: str  #: the ETag the bucket will report for ``body``
    seen_at: float = field(compare=False)  #: monotonic time the change was first seen
    file_size: int = field(compare=False, default=0)


class StorePort(Protocol):
    """What the store stage needs from an object store (objectstore.ObjectStore fits)."""

    def put(self, key: str, body: bytes) -> str: ...

    def list(self, sub_prefix: str = "") -> Iterable[RemoteObject]: ...

    def make_bucket(self) -> bool: ...
