"""Typed messages passed between the sidecar's stages, and the ports they use.

The stages import only this module (and the lower layers: config, layout, stableread,
metrics):

    events ──PathsChanged/Rescan──▶ detect ──UploadRequest──▶ queue ──▶ store
                                    (inbox) ◀──Listed────── lister
                                            ◀──Uploaded/UploadFailed/Stale── store

Data flows one way; what comes back to the detector is *facts* it needs to keep its
ledger true (what the bucket holds, what an upload achieved), as messages in its inbox.
``pipeline.py`` creates the stages, connects them and owns start, drain and stop.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runlog_relay.config.settings import SidecarSettings
from runlog_relay.layout import Layout
from runlog_relay.objectstore import BodyStream, RemoteObject
from runlog_relay.stableread import FileSignature, Snapshot, SnapshotBody

__all__ = [
    "PER_RUN_LISTING_MAX_RUNS",
    "FileGone",
    "FileSignature",
    "FileVersion",
    "Inbox",
    "Listed",
    "ListingPurpose",
    "PathsChanged",
    "ReadDone",
    "Reconfigure",
    "Rescan",
    "RunLedger",
    "Stale",
    "Stop",
    "StorePort",
    "UploadFailed",
    "UploadRequest",
    "Uploaded",
    "Verify",
]

#: A batch of up to this many runs is listed one prefix each; a bigger one, with one
#: listing of the whole prefix (the lister's rule; the detector confirms this many runs
#: per full sweep, one batch).
PER_RUN_LISTING_MAX_RUNS = 64


@dataclass(frozen=True, slots=True)
class PathsChanged:
    """The events stage saw these paths change (files, or run folders to scan whole)."""

    paths: frozenset[Path]
    seen_at: float  #: time.monotonic() when the first of them was seen
    #: Run folders among ``paths`` made (``mkdir``) while the source was watched: they
    #: started empty under our eyes, so the bucket can hold nothing the local files would
    #: not replace anyway, and no listing is needed before their uploads.
    created: frozenset[Path] = frozenset()
    #: When each path's own first event was seen (the lag of a file counts from its own
    #: change, not from the earliest change of the batch it was posted with); a path
    #: missing here was seen at ``seen_at``.
    seen: Mapping[Path, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Rescan:
    """Walk the whole folder (start-up, safety-net timer, overflow, polling, shutdown)."""

    reason: str
    relist: bool = False  #: also compare with the bucket again (a new target)
    done: threading.Event | None = field(default=None, compare=False)  #: set once scanned


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """New settings took effect; the detector adopts them, and with ``relist`` (a new
    endpoint or bucket; a new layout or source always counts) forgets what it knew and
    compares again."""

    settings: SidecarSettings
    relist: bool


class ListingPurpose(enum.Enum):
    COMPARE = "compare"  #: before the first upload decision for these runs
    VERIFY = "verify"  #: the bucket still holds what the ledger says (doubtful PUT, sweep, drain)


@dataclass(frozen=True, slots=True)
class Listed:
    """What the bucket holds under these runs' prefixes (key → ETag)."""

    run_ids: frozenset[str]
    objects: Mapping[str, str]
    purpose: ListingPurpose


@dataclass(frozen=True, slots=True)
class Uploaded:
    """This version of the file is in the bucket (the PUT was answered with success).

    ``bucket_etag``: the ETag the bucket gave the object (the PUT's answer, or the listed
    one its stored MD5 confirmed); where it is not the MD5 (SSE-KMS, SSE-C) a later
    listing recognises the object by it."""

    relative: str
    etag: str
    bucket_etag: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class UploadFailed:
    """An upload of this version failed.

    ``doubtful``: it ended without an answer (timeout, reset connection, 5xx from a
    proxy), so the PUT may still land later, even after a newer one; the run's objects are
    confirmed with a listing before the mirror is called complete. ``given_up``: the key is
    not retried (``--once`` on a permanent error); ``reason`` names the problem."""

    relative: str
    etag: str
    reason: str
    doubtful: bool = False
    given_up: bool = False


@dataclass(frozen=True, slots=True)
class Stale:
    """At upload the file no longer held this version: read it again."""

    relative: str
    etag: str


@dataclass(frozen=True, slots=True)
class Verify:
    """Confirm every run that ever had a doubtful upload against the bucket (drain), or
    with ``every_run`` every listed run (the drain, a bucket created anew: objects can
    vanish behind the sidecar's back); ``done`` is set once the listings are requested."""

    done: threading.Event | None = field(default=None, compare=False)
    every_run: bool = False


@dataclass(frozen=True, slots=True)
class ReadDone:
    """The detector's bulk reader finished reading one (big) file."""

    relative: str
    outcome: Snapshot | BaseException


@dataclass(frozen=True, slots=True)
class Stop:
    """No more messages: the detector finishes what it has and exits."""


Inbox = (
    PathsChanged
    | Rescan
    | Reconfigure
    | Listed
    | Uploaded
    | UploadFailed
    | Stale
    | Verify
    | ReadDone
    | Stop
)


@dataclass(frozen=True, slots=True)
class FileVersion:
    """detect → runs: a run's file holds a version the detector had not seen (or read it
    for the first time). ``new``: it differs from what the bucket holds."""

    run_id: str
    relative: str
    etag: str
    new: bool
    seen_at: float  #: monotonic time the change was first seen


@dataclass(frozen=True, slots=True)
class FileGone:
    """detect → runs: the detector forgot a file (deleted locally, or a new target);
    ``run_gone``: it was the run's last one."""

    run_id: str
    relative: str
    run_gone: bool


@dataclass(frozen=True, slots=True)
class RunLedger:
    """What the detector's ledger says about one run (for sealing and retention)."""

    run_id: str
    files: Mapping[str, tuple[str, str | None]]  #: relative path → (key, latest local ETag)
    unmirrored: Mapping[str, str]  #: relative path → why it is not known to be mirrored
    newest_mtime_ns: int  #: of the versions read (the run's last write)
    doubtful: bool = False  #: an upload that ended without an answer may still land
    #: the files among ``unmirrored`` that waiting does not fix (torn past the grace
    #: period, unreadable, too large, failing): a human has to look
    problems: Mapping[str, str] = field(default_factory=dict)

    @property
    def mirrored(self) -> bool:
        """Every file's latest version is in the bucket as far as the ledger knows, and no
        older version can still land over it."""
        return not self.unmirrored and not self.doubtful


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """One checked, complete file version to put in the bucket.

    A small body travels in ``body``; a big one (``body`` None) is read again from
    ``root/relative`` at upload through :class:`~runlog_relay.stableread.SnapshotBody`,
    which refuses any part that is not the checked version."""

    key: str  #: object key relative to the prefix
    run_id: str
    relative: str  #: the file, relative to ``root``
    root: Path
    layout: Layout
    snapshot: Snapshot = field(compare=False)
    seen_at: float = field(compare=False)  #: monotonic time the change was first seen
    #: The ETag the bucket's listing gave this key, when it differs from ``etag``. On a
    #: bucket whose ETags are not MD5s (SSE-KMS, SSE-C, some gateways) that is no proof
    #: of a difference: the store stage confirms with the stored MD5 before a PUT.
    listed_etag: str | None = field(default=None, compare=False)

    @property
    def body(self) -> bytes | None:
        return self.snapshot.body

    @property
    def etag(self) -> str:
        return self.snapshot.etag

    @property
    def held_bytes(self) -> int:
        """Memory this request holds while it waits."""
        return len(self.snapshot.body) if self.snapshot.body is not None else 0

    @property
    def path(self) -> Path:
        return self.root / self.relative

    def open_body(self) -> bytes | SnapshotBody:
        """The body to upload: in memory, or a checked stream over the file (close it)."""
        if self.snapshot.body is not None:
            return self.snapshot.body
        return SnapshotBody(self.path, self.snapshot, root=self.root, layout=self.layout)


class StorePort(Protocol):
    """What the store stage needs from an object store (objectstore.ObjectStore fits)."""

    def put(
        self,
        key: str,
        body: bytes | BodyStream,
        *,
        length: int | None = None,
        md5: str | None = None,
    ) -> str: ...

    def list(self, sub_prefix: str = "") -> Iterable[RemoteObject]: ...

    def matches_digests(self, key: str, etag: str, *, expected: str, md5: str) -> bool:
        """Whether the object at ``key``, listed with ``etag``, holds the body whose
        ETag would be ``expected`` and MD5 ``md5`` (at most one HEAD)."""
        ...

    def make_bucket(self) -> bool: ...

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None: ...
