"""Small fakes for unit tests of the sidecar stages: a clock, a StorePort, requests.

The fake store keeps objects in a dict with the ETags a real S3 server would give, can
fail on purpose (any exception, for as many calls as asked, per key or for all), and
records every call, so tests assert what reached "the wire".
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from runlog_relay.errors import NotFoundError, PermanentError, RetryableError
from runlog_relay.etag import BodyDigest
from runlog_relay.layout import Layout
from runlog_relay.objectstore import BodyStream, RemoteObject
from runlog_relay.sidecar.types import UploadRequest
from runlog_relay.stableread import FileSignature, Snapshot


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def snapshot_of(body: bytes, *, keep: bool = True) -> Snapshot:
    digest = BodyDigest()
    digest.update(body)
    return Snapshot(
        signature=FileSignature(len(body), 1, 1, 1),
        file_size=len(body),
        body_size=len(body),
        md5=digest.md5,
        parts=digest.part_digests(),
        etag=digest.etag,
        body=body if keep else None,
    )


def request(key: str, body: bytes | str = b"{}", *, seen_at: float = 0.0) -> UploadRequest:
    data = body.encode() if isinstance(body, str) else body
    run_id = key.split("/")[0]
    return UploadRequest(
        key=key,
        run_id=run_id,
        relative=f"{key}.json",
        root=Path("/logs"),
        layout=Layout.CHUNKED,
        snapshot=snapshot_of(data),
        seen_at=seen_at,
    )


def unreachable(what: str = "uploading") -> RetryableError:
    return RetryableError(f"{what}: endpoint unreachable (ReadTimeoutError)", code="Unreachable")


def refused(what: str = "uploading") -> RetryableError:
    return RetryableError(
        f"{what}: endpoint unreachable (NewConnectionError)", code="Unreachable", unsent=True
    )


def denied(what: str = "uploading") -> PermanentError:
    return PermanentError(f"{what}: AccessDenied (Access Denied.)", code="AccessDenied")


@dataclass
class FakeStore:
    """An in-memory StorePort. ``fail_puts`` / ``fail_lists``: exceptions raised by the
    next calls, in order (a callable decides per key)."""

    objects: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # key → (body, etag)
    fail_puts: list[BaseException] = field(default_factory=list)
    fail_lists: list[BaseException] = field(default_factory=list)
    fail_put_for: Callable[[str], BaseException | None] = lambda key: None
    puts: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    block_puts: threading.Event | None = None  # when set, PUTs wait until it is cleared
    bucket_exists: bool = True
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # key → tags
    fail_tags: list[BaseException] = field(default_factory=list)
    modified: dict[str, datetime] = field(default_factory=dict)  # key → listed LastModified
    #: ETags are not the bodies' MD5s (SSE-KMS, SSE-C): listings show an opaque value,
    #: and matches_digests confirms with a (counted) HEAD of the stored MD5.
    opaque_etags: bool = False
    heads: list[str] = field(default_factory=list)
    fail_heads: list[BaseException] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(
        self,
        key: str,
        body: bytes | BodyStream,
        *,
        length: int | None = None,
        md5: str | None = None,
    ) -> str:
        with self._lock:
            self.puts.append(key)
            error = self.fail_puts.pop(0) if self.fail_puts else self.fail_put_for(key)
        if self.block_puts is not None:
            while self.block_puts.is_set():
                threading.Event().wait(0.01)
        if error is not None:
            raise error
        data = body if isinstance(body, bytes) else _read_all(body, length or 0)
        digest = BodyDigest()
        digest.update(data)
        etag = opaque_etag(digest.etag) if self.opaque_etags else digest.etag
        with self._lock:
            self.objects[key] = (data, etag)
        return etag

    def matches_digests(self, key: str, etag: str, *, expected: str, md5: str) -> bool:
        if etag == expected:
            return True
        with self._lock:
            self.heads.append(key)
            error = self.fail_heads.pop(0) if self.fail_heads else None
            found = self.objects.get(key)
        if error is not None:
            raise error
        if found is None:
            return False
        return hashlib.md5(found[0], usedforsecurity=False).hexdigest() == md5

    def list(self, sub_prefix: str = "") -> Iterator[RemoteObject]:
        with self._lock:
            self.lists.append(sub_prefix)
            error = self.fail_lists.pop(0) if self.fail_lists else None
            if error is None and not self.bucket_exists:
                error = PermanentError("listing: NoSuchBucket", code="NoSuchBucket")
            items = sorted(self.objects.items())
        if error is not None:
            raise error
        for key, (data, etag) in items:
            if key.startswith(sub_prefix):
                yield RemoteObject(
                    key=key, etag=etag, size=len(data), last_modified=self.modified.get(key)
                )

    def make_bucket(self) -> bool:
        created = not self.bucket_exists
        self.bucket_exists = True
        return created

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        with self._lock:
            error = self.fail_tags.pop(0) if self.fail_tags else None
            if error is None and key not in self.objects:
                error = NotFoundError(f"tagging {key}: NoSuchKey", code="NoSuchKey")
            if error is None:
                self.tags[key] = dict(tags)
        if error is not None:
            raise error

    def body(self, key: str) -> bytes | None:
        with self._lock:
            found = self.objects.get(key)
        return found[0] if found else None


def opaque_etag(etag: str) -> str:
    """What a bucket with SSE-KMS shows instead of an MD5: stable, MD5-shaped, unrelated."""
    return hashlib.md5(f"opaque:{etag}".encode(), usedforsecurity=False).hexdigest()


def _read_all(stream: BodyStream, length: int) -> bytes:
    out = b""
    while len(out) < length:
        piece = stream.read(length - len(out))
        if not piece:
            break
        out += piece
    return out
