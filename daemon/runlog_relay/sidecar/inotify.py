"""A minimal Linux inotify binding (ctypes), for the events stage only.

Why not a watch library: the sidecar must act on exactly the things libraries hide. The
kernel says when its event queue overflowed (``IN_Q_OVERFLOW``: events were lost, rescan
now), which folder could not be watched because the user's watch limit is exhausted
(``ENOSPC`` from ``inotify_add_watch``, per folder, so only that folder needs polling),
and when the per-user instance limit is exhausted (``EMFILE`` from ``inotify_init1``).
watchfiles (the notify crate) drops the overflow event, and with
``ignore_permission_denied`` swallows every watch error. It also wakes every few
milliseconds to look for events; a blocking ``poll`` on the descriptor costs nothing
while idle and wakes at once when a file is written, which is what leading-edge uploads
need. The layout is only two levels deep (the source folder and its run folders), so
recursion is a loop here, not a library's job.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_IGNORED",
    "IN_ISDIR",
    "IN_MODIFY",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_Q_OVERFLOW",
    "IN_UNMOUNT",
    "Event",
    "Inotify",
    "InotifyUnavailable",
]

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_READ_SIZE = 64 * 1024


class InotifyUnavailable(OSError):
    """This platform has no inotify (not Linux, or no C library to call it through)."""


@dataclass(frozen=True, slots=True)
class Event:
    wd: int  #: -1 for IN_Q_OVERFLOW
    mask: int
    name: str  #: entry name inside the watched folder ("" for the folder itself)


def _load() -> ctypes.CDLL:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # libc is loaded already; no ldconfig run
        for function in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            getattr(libc, function)
    except (OSError, AttributeError, TypeError) as exc:
        raise InotifyUnavailable(errno.ENOSYS, f"inotify is not available: {exc}") from None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC: ctypes.CDLL | None = None


class Inotify:
    """One inotify instance. OSError from the kernel keeps its errno: ``EMFILE`` (no
    instance left for this user), ``ENOSPC`` (no watch left), ``ENOENT``..."""

    def __init__(self) -> None:
        global _LIBC
        if _LIBC is None:
            _LIBC = _load()
        self._libc = _LIBC
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd: int = fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # EINVAL when already gone: fine

    def read(self) -> Iterator[Event]:
        """Every event waiting now (non-blocking; empty when there is none)."""
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                raw = data[start : start + length].split(b"\0", 1)[0]
                offset = start + length
                yield Event(wd=wd, mask=mask, name=os.fsdecode(raw))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
