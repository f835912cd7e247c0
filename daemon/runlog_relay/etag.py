"""The ETag S3 gives an object body, computed locally and in pieces.

Single-part PUTs have the body's MD5 as ETag. Bodies above :data:`MULTIPART_THRESHOLD`
go up in :data:`PART_SIZE` parts, and their ETag is S3's composite: the MD5 of the parts'
MD5s, then ``-N``. Computing it here lets a restart compare a local file with the
bucket's listing without a HEAD per object, and lets a file be hashed while it is read,
without ever holding its whole body. :func:`etag_verdict` is the one reading of a listed
ETag against a local body: other writers (runnable's own store, boto3, mc) PUT big bodies
whole, or in parts of another size. Pure (hashlib only): the object store, the stable read
and the tools share it.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "MULTIPART_THRESHOLD",
    "PART_SIZE",
    "BodyDigest",
    "composite_etag",
    "etag_verdict",
    "expected_etag",
]

#: Bodies larger than this are uploaded in parts (S3's single-PUT limit is far above it,
#: but parts keep retries of huge files cheap and memory bounded by one part).
MULTIPART_THRESHOLD = 16 * 1024 * 1024
#: Size of every part but the last. Changing it changes the ETag of every big object.
PART_SIZE = MULTIPART_THRESHOLD


class BodyDigest:
    """MD5 of a body fed in pieces, and of each :data:`PART_SIZE` part of it."""

    __slots__ = ("_part", "_part_fill", "_whole", "parts", "size")

    def __init__(self) -> None:
        self._whole = hashlib.md5(usedforsecurity=False)
        # None while the first part is filling: its MD5 is the whole body's so far, and
        # nearly every body is one part (a second hash over the same bytes was a third of
        # a small file's read cost).
        self._part: hashlib._Hash | None = None
        self._part_fill = 0
        self.parts: list[bytes] = []  #: MD5 digests of the completed parts
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        view = memoryview(data)
        self.size += len(view)
        while len(view):
            room = PART_SIZE - self._part_fill
            piece, view = view[:room], view[room:]
            self._whole.update(piece)
            if self._part is not None:
                self._part.update(piece)
            self._part_fill += len(piece)
            if self._part_fill == PART_SIZE:
                self.parts.append(self._current_part().digest())
                self._part = hashlib.md5(usedforsecurity=False)
                self._part_fill = 0

    def _current_part(self) -> hashlib._Hash:
        return self._whole if self._part is None else self._part

    @property
    def md5(self) -> str:
        """Hex MD5 of everything fed so far."""
        return self._whole.hexdigest()

    def part_digests(self) -> tuple[bytes, ...]:
        """MD5 digests of every part, the last (partial) one included."""
        if self._part_fill or not self.parts:
            return (*self.parts, self._current_part().digest())
        return tuple(self.parts)

    @property
    def etag(self) -> str:
        """The ETag the bucket reports for the body fed so far."""
        if self.size <= MULTIPART_THRESHOLD:
            return self.md5
        return composite_etag(self.part_digests())


def composite_etag(part_digests: tuple[bytes, ...]) -> str:
    """S3's ETag of a multipart object with these part MD5 digests."""
    combined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(part_digests)}"


def expected_etag(body: bytes) -> str:
    """The ETag S3 gives ``body`` when uploaded by :meth:`ObjectStore.put`."""
    digest = BodyDigest()
    digest.update(body)
    return digest.etag


def etag_verdict(etag: str, *, expected: str, md5: str | None) -> bool | None:
    """What a listed ``etag`` says about an object holding the body whose
    :func:`expected_etag` is ``expected`` and whose MD5 is ``md5``.

    ``True``: it is that body's ETag in one of the forms a writer gives it: one PUT (the
    MD5, whatever the size) or parts of :data:`PART_SIZE` (the composite). ``False``: an
    ETag of a form this body could have, but another value: other content where the
    bucket's ETags are digests (the caller knows whether they are; encrypted buckets'
    are not). ``None``: a multipart ETag with another part count: written in parts of
    another size, so the ETag cannot tell; only a stored MD5 (or the body) can.
    """
    etag = etag.strip('"').lower()
    if etag in (expected, md5):
        return True
    _, dash, count = etag.partition("-")
    if not dash:
        return False
    ours = expected if "-" in expected else None
    if ours is None and md5 is not None:
        ours = composite_etag((bytes.fromhex(md5),))  # one part: another tool's "-1"
    if ours is None or count != ours.partition("-")[2]:
        return None
    return etag == ours
