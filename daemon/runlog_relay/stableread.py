"""Reading a run-log file *stably*: the one implementation the sidecar and ``verify`` share.

runnable rewrites files in place (``open(path, "w")`` then ``json.dump``), so a reader
can catch a file empty, half-written or changing. :func:`read_stable` returns a
:class:`Snapshot` of one complete version, or raises :class:`TornRead`:

* every component below ``root`` is opened relative to its parent's descriptor with
  ``O_NOFOLLOW``, so a run folder swapped for a symlink between a scan and the read
  cannot make it read outside the volume; only regular files are read (``O_NONBLOCK``:
  a FIFO never blocks);
* ``fstat`` before and after the read and ``lstat`` of the path after must agree on
  size, mtime, ctime and inode, and the bytes read must be the whole file;
* the bytes must be UTF-8 (runnable writes UTF-8; the single layout re-encodes the text)
  and one complete JSON document (:mod:`runlog_relay.jsoncheck` decides: any depth,
  constant memory; a file of at most 1 MiB is first given to ``json.loads``, which
  accepts the same documents at C speed, and only its refusals go to the checker).

Memory is bounded by the read size, not the file: the file is read in
:data:`READ_CHUNK` pieces that are checked, encoded for the layout
(:class:`~runlog_relay.layout.BodyEncoder`) and hashed (:class:`~runlog_relay.etag.BodyDigest`,
whole MD5 and per-part MD5s) as they go. Only a body of at most ``keep_body`` bytes is kept
(small files, the common case, go up straight from memory). A bigger body is read again
at upload time through :class:`SnapshotBody`, which checks each part's MD5 against the
snapshot before handing it out: the bytes uploaded are the bytes that were checked, or
the upload stops with :class:`SnapshotChanged`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from runlog_relay import etag as etags
from runlog_relay.etag import BodyDigest
from runlog_relay.jsoncheck import JsonChecker, NotJson
from runlog_relay.layout import BodyEncoder, Layout, relative_parts

__all__ = [
    "INLINE_BODY_BYTES",
    "READ_CHUNK",
    "FileSignature",
    "Snapshot",
    "SnapshotBody",
    "SnapshotChanged",
    "TooLarge",
    "TornRead",
    "read_stable",
]

#: Files are read, checked and hashed this much at a time.
READ_CHUNK = 1024 * 1024
#: Bodies up to this size are kept in memory by :func:`read_stable` by default.
INLINE_BODY_BYTES = 1024 * 1024
#: Files up to this size are checked whole by ``json.loads`` first (see _check_whole).
FAST_CHECK_BYTES = 1024 * 1024

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TornRead(Exception):
    """The file was not one complete UTF-8 JSON document, or changed while being read.

    ``signature``: of the version found torn, when it did not change while read (the
    same signature later means the same torn bytes: no need to read them again)."""

    def __init__(self, reason: str, signature: FileSignature | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signature = signature


class TooLarge(Exception):
    """The file is bigger than the configured limit; it is not read."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit


class SnapshotChanged(Exception):
    """The file no longer holds the version that was checked (read again at upload)."""


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What ``stat`` says about a file version; equal signatures mean "probably unchanged"."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileSignature:
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One complete version of a file, as its object body will be."""

    signature: FileSignature
    file_size: int
    body_size: int
    md5: str  #: hex MD5 of the body
    parts: tuple[bytes, ...]  #: MD5 digests of the body's PART_SIZE parts
    etag: str  #: what the bucket will report for the body
    body: bytes | None  #: the body, when it was small enough to keep


def _open_parent(path: Path | str, root: Path | None) -> tuple[list[int], str | Path, int | None]:
    """Descriptors of every folder from ``root`` down to ``path``'s parent (no links)."""
    if root is None:
        return [], path, None
    parts = relative_parts(root, path)
    if parts is None:
        raise ValueError(f"{path} is not under {root}")
    fds = [os.open(root, _OPEN_DIR)]
    try:
        for part in parts[:-1]:
            fds.append(os.open(part, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=fds[-1]))
    except BaseException:
        for fd in reversed(fds):
            os.close(fd)
        raise
    return fds, parts[-1], fds[-1]


def _open_regular(
    path: Path | str, root: Path | None
) -> tuple[int, os.stat_result, str | Path, int | None, list[int]]:
    """The file's descriptor and ``fstat``, with its parent folders' descriptors."""
    dir_fds, name, parent = _open_parent(path, root)
    try:
        fd = os.open(name, _OPEN_FILE, dir_fd=parent)
    except BaseException:
        for dir_fd in reversed(dir_fds):
            os.close(dir_fd)
        raise
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        for dir_fd in reversed(dir_fds):
            os.close(dir_fd)
        raise
    return fd, before, name, parent, dir_fds


def read_stable(
    path: Path | str,
    *,
    root: Path | None = None,
    layout: Layout = Layout.CHUNKED,
    keep_body: int = INLINE_BODY_BYTES,
    max_size: int | None = None,
    chunk_size: int = READ_CHUNK,
) -> Snapshot:
    """A complete version of ``path``, or TornRead / TooLarge / OSError.

    ``keep_body``: keep the body in the snapshot when it is at most this many bytes.
    ``max_size``: refuse (TooLarge) a file bigger than this, before reading it.
    ``chunk_size``: read and check this much at a time (smaller pieces hold the GIL for
    shorter stretches when other threads must stay responsive).
    """
    fd, before, name, parent, dir_fds = _open_regular(path, root)
    try:
        if max_size is not None and before.st_size > max_size:
            raise TooLarge(before.st_size, max_size)
        checker = JsonChecker()
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        encoder = BodyEncoder(layout)
        digest = BodyDigest()
        kept: list[bytes] | None = [] if before.st_size <= keep_body else None

        def emit(piece: bytes) -> None:
            digest.update(piece)
            if kept is not None:
                kept.append(piece)

        emit(encoder.start())
        # A small file is checked whole with json.loads (C speed), a big one in pieces.
        whole: list[str] | None = [] if before.st_size <= FAST_CHECK_BYTES else None
        read = 0
        while True:
            # No more than fstat's size asks for (and one byte to see growth): os.read
            # allocates what it is asked, and a 1 MiB buffer for a 10 KiB file is an
            # mmap, page faults and a munmap per file (~25 us each, under the process's
            # memory lock that every upload thread's allocations take too).
            chunk = os.read(fd, min(chunk_size, max(before.st_size - read, 0) + 1))
            if not chunk:
                break
            read += len(chunk)
            if max_size is not None and read > max_size:
                raise TooLarge(read, max_size)
            if read > before.st_size:
                raise TornRead("changed while being read")
            try:
                text = decoder.decode(chunk)
                if whole is not None:
                    whole.append(text)
                else:
                    checker.feed(text)
            except UnicodeDecodeError:
                raise TornRead("not UTF-8 text", _unchanged(fd, before)) from None
            except NotJson as exc:
                raise TornRead(f"not complete JSON: {exc}", _unchanged(fd, before)) from None
            emit(encoder.piece(chunk, text))
            if read == before.st_size:
                # All the bytes fstat counted: no read for the end of the file (each
                # system call lets go of the interpreter lock, a hand-over to the upload
                # threads). Bytes written meanwhile change the size or times ``after``
                # reports, so the version is still refused as torn.
                break
        after = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        at_path = os.stat(name, dir_fd=parent, follow_symlinks=False)
    finally:
        for dir_fd in reversed(dir_fds):
            os.close(dir_fd)
    if (
        FileSignature.of(before) != FileSignature.of(after)
        or at_path.st_ino != after.st_ino
        or read != after.st_size
    ):
        raise TornRead("changed while being read")
    signature = FileSignature.of(after)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise TornRead("not UTF-8 text", signature) from None
    if whole is not None:
        _check_whole("".join(whole), checker, signature)
    elif checker.empty:
        raise TornRead("empty file", signature)
    else:
        try:
            checker.finish()
        except NotJson as exc:
            raise TornRead(f"not complete JSON: {exc}", signature) from None
    emit(encoder.end())
    return Snapshot(
        signature=signature,
        file_size=read,
        body_size=digest.size,
        md5=digest.md5,
        parts=digest.part_digests(),
        etag=digest.etag,
        body=b"".join(kept) if kept is not None else None,
    )


def _check_whole(text: str, checker: JsonChecker, signature: FileSignature) -> None:
    """A small file's text: json.loads accepts exactly what JsonChecker accepts (the
    jsoncheck tests prove it) except documents nested past Python's recursion limit and
    oversized integers, so its refusals are checked again by JsonChecker, which decides."""
    if not text.strip(" \t\n\r"):
        raise TornRead("empty file", signature)
    try:
        json.loads(text)
        return
    except (ValueError, RecursionError):
        pass
    try:
        checker.feed(text)
        checker.finish()
    except NotJson as exc:
        raise TornRead(f"not complete JSON: {exc}", signature) from None


def _unchanged(fd: int, before: os.stat_result) -> FileSignature | None:
    """The signature of a file found torn part-way, if it did not change meanwhile."""
    signature = FileSignature.of(before)
    return signature if FileSignature.of(os.fstat(fd)) == signature else None


class SnapshotBody:
    """A snapshot's body read again from its file, as a stream for the object store.

    Checked part by part: a part is handed out only after its MD5 matched the
    snapshot's (minio reads exactly one part per ``read``), so the uploaded bytes are the
    checked bytes; otherwise :class:`SnapshotChanged`. A body of at most
    :data:`~runlog_relay.etag.MULTIPART_THRESHOLD` is one part whose MD5 is the body's.
    """

    def __init__(
        self, path: Path, snapshot: Snapshot, *, root: Path | None = None, layout: Layout
    ) -> None:
        self.snapshot = snapshot
        self.length = snapshot.body_size
        self._fd, _, _, _, dir_fds = _open_regular(path, root)
        for dir_fd in reversed(dir_fds):
            os.close(dir_fd)
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._encoder = BodyEncoder(layout)
        start = self._encoder.start()
        self._pending: deque[bytes] = deque([start] if start else [])
        self._pending_size = len(start)
        self._eof = False
        self._given = 0  # body bytes handed out
        single_part = snapshot.body_size <= etags.MULTIPART_THRESHOLD
        self._part_size = snapshot.body_size if single_part else etags.PART_SIZE
        self._expected = (bytes.fromhex(snapshot.md5),) if single_part else snapshot.parts
        self._part_start = 0  # body offset of the part being checked
        self._part_fill = 0  # bytes of it seen so far
        self._hasher = hashlib.md5(usedforsecurity=False)

    def __enter__(self) -> SnapshotBody:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _fill(self, size: int) -> None:
        """Read until ``size`` body bytes wait in ``_pending`` (or the file ends)."""
        while self._pending_size < size and not self._eof:
            # One read of exactly what is missing: a chunked body's part is then the very
            # bytes object os.read returned, never copied.
            want = size - self._pending_size
            if self._encoder.layout is not Layout.CHUNKED:
                want = min(want, READ_CHUNK)
            chunk = os.read(self._fd, max(want, 1))
            try:
                if chunk:
                    piece = self._encoder.piece(chunk, self._decoder.decode(chunk))
                else:
                    self._eof = True
                    self._decoder.decode(b"", final=True)
                    piece = self._encoder.end()
            except UnicodeDecodeError:
                raise SnapshotChanged("the file is no longer UTF-8 text") from None
            if piece:
                self._pending.append(piece)
                self._pending_size += len(piece)

    def read(self, size: int = -1, /) -> bytes:
        remaining = self.length - self._given
        if size < 0 or size > remaining:
            size = remaining
        self._fill(size)
        if self._pending_size < size:
            raise SnapshotChanged("the file is shorter than the version checked")
        taken: list[bytes] = []
        need = size
        while need:
            piece = self._pending[0]
            if len(piece) <= need:
                taken.append(self._pending.popleft())
                need -= len(piece)
            else:
                taken.append(piece[:need])
                self._pending[0] = piece[need:]
                need = 0
        data = taken[0] if len(taken) == 1 else b"".join(taken)
        self._pending_size -= size
        self._check(data)
        self._given += size
        if self._given == self.length:
            self._fill(1)
            if self._pending_size:
                raise SnapshotChanged("the file is longer than the version checked")
        return data

    def _check(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            part_length = min(self._part_size, self.length - self._part_start)
            piece, view = (
                view[: part_length - self._part_fill],
                view[part_length - self._part_fill :],
            )
            self._hasher.update(piece)
            self._part_fill += len(piece)
            if self._part_fill == part_length:
                index = self._part_start // self._part_size
                if index >= len(self._expected) or self._hasher.digest() != self._expected[index]:
                    raise SnapshotChanged("the file no longer holds the version checked")
                self._part_start += part_length
                self._part_fill = 0
                self._hasher = hashlib.md5(usedforsecurity=False)
