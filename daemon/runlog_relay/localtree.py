"""Walking a run-log folder safely: the one place that turns a directory into candidates.

Used by the sidecar's detect stage (start-up scan, rescans, new run folders) and by the
``verify`` tool. It never follows symlinks (a link to a file or a folder outside the
volume is reported and skipped), only yields regular files, and maps each name through
:mod:`runlog_relay.layout` so unsafe names are reported instead of becoming keys.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runlog_relay.layout import (
    JSON_SUFFIX,
    KeyTooLongError,
    Layout,
    Mapping,
    UnsafeNameError,
    key_for,
    relative_parts,
)

__all__ = [
    "TRANSIENT_ERRNOS",
    "Candidate",
    "Entry",
    "FolderError",
    "Skipped",
    "classify_path",
    "other_layout_files",
    "scan",
    "scan_run",
    "to_candidate",
    "walk",
]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A regular file that maps to an object key."""

    #: The file's path as found. A :class:`Path` is built only when asked for: one per
    #: scanned file was a few per cent of a first sync's CPU, and the detector needs none.
    location: str
    relative: str
    mapping: Mapping
    size: int = -1  #: from the lstat that found it (-1: unknown)

    @property
    def path(self) -> Path:
        return Path(self.location)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path that will not be mirrored, and why (``reason`` is a metric label)."""

    path: Path
    reason: str  #: symlink | not_regular | unsafe_name | key_too_long | unreadable
    detail: str


def classify_path(
    root: Path, path: Path | str, layout: Layout, prefix: str = ""
) -> Candidate | Skipped | None:
    """Decide what one path under ``root`` is. ``None``: not a run-log file at all
    (another extension, a directory, outside the root, or gone). ``prefix``: the bucket's
    key prefix, for the length of the whole key."""
    parts = relative_parts(root, path)
    if parts is None:
        return None
    expected_depth = 2 if layout is Layout.CHUNKED else 1
    if len(parts) != expected_depth or not parts[-1].endswith(JSON_SUFFIX):
        return None
    # Every component below the root must be a real directory/file, never a link: a
    # linked run folder could point anywhere on the node.
    current = os.fspath(root)
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Skipped(Path(path), "unreadable", exc.strerror or str(exc))
        if stat.S_ISLNK(info.st_mode):
            return Skipped(Path(path), "symlink", f"{current} is a symbolic link")
        last = index == len(parts) - 1
        if not last and not stat.S_ISDIR(info.st_mode):
            return None
        if last and not stat.S_ISREG(info.st_mode):
            return Skipped(Path(path), "not_regular", "not a regular file")
    relative = "/".join(parts)
    mapping = _mapping(path, relative, layout, prefix)
    if isinstance(mapping, Skipped):
        return mapping
    return Candidate(os.fspath(path), relative=relative, mapping=mapping, size=info.st_size)


def _mapping(path: Path | str, relative: str, layout: Layout, prefix: str) -> Mapping | Skipped:
    """The key of a run-log file, or why it cannot have one (the one place that sorts
    unsafe names from keys too long). A path as text becomes a Path only when skipped:
    one per file is CPU a first sync of thousands feels."""
    try:
        return key_for(relative, layout, prefix)
    except KeyTooLongError as exc:
        return Skipped(Path(path), "key_too_long", exc.reason)
    except UnsafeNameError as exc:
        return Skipped(Path(path), "unsafe_name", exc.reason)


@dataclass(frozen=True, slots=True)
class FolderError:
    """A run folder that could not be listed: its files were not seen (not deleted).

    ``transient``: the process ran out of a resource (descriptors, memory), so a retry
    soon will likely work; otherwise (permissions) only a change will help."""

    path: Path
    run_id: str
    detail: str
    transient: bool


#: errnos of a scan or a read that failed for want of a resource (descriptors, memory),
#: not because of the folder or file: retried soon, never taken for a problem of theirs.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR})


@dataclass(frozen=True, slots=True)
class Entry:
    """A regular file found by :func:`scan`, with the ``lstat`` it was found with."""

    path: str
    relative: str
    info: os.stat_result


#: ``trust(relative)``: True when the caller already knows this file well enough that its
#: name is all it needs (no ``lstat``): the caller notes it, and it is not yielded at all.
Trust = Callable[[str], bool]


def scan(
    root: Path, layout: Layout, trust: Trust | None = None
) -> Iterator[Entry | Skipped | FolderError]:
    """Every regular ``*.json`` file of ``layout`` under ``root``, cheaply.

    One ``lstat`` per file and none per folder: ``os.scandir``'s d_type says what is a
    link or a folder. Links are reported, never followed; folders that vanish mid-scan
    (a run being cleaned up) are passed over; a run folder that cannot be listed is a
    :class:`FolderError`. A root that cannot be listed raises OSError (only a missing
    root is an empty tree). Names are not validated here (see :func:`to_candidate`), so
    a caller that already knows a file skips that work.
    """
    root_path = os.fspath(root)
    try:
        top = list(os.scandir(root_path))
    except (FileNotFoundError, NotADirectoryError):
        return  # no folder (yet): no files
    for entry in top:
        name = entry.name
        if layout is Layout.SINGLE:
            if name.endswith(JSON_SUFFIX) and (trust is None or not trust(name)):
                yield _file_entry(entry, name)
            continue
        if entry.is_symlink():
            if name.endswith(JSON_SUFFIX) or entry.is_dir(follow_symlinks=True):
                yield Skipped(Path(entry.path), "symlink", f"{entry.path} is a symbolic link")
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _scan_run(entry.path, name, trust)


def other_layout_files(root: Path, layout: Layout, limit: int = 5) -> list[str]:
    """Up to ``limit`` files under ``root`` that ``layout`` never reads but the other one
    would: ``<run_id>.json`` at the top under the chunked layout (runnable's file-system
    store), ``<run_id>/RunLog.json`` under the single one (its chunked-fs store). A few
    ``scandir`` calls at most: it only has to tell a wrong ``--layout`` apart."""
    found: list[str] = []
    try:
        top = sorted(os.scandir(os.fspath(root)), key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in top:
        if len(found) >= limit:
            break
        try:
            if layout is Layout.CHUNKED:
                if entry.name.endswith(JSON_SUFFIX) and entry.is_file(follow_symlinks=False):
                    found.append(entry.name)
            elif entry.is_dir(follow_symlinks=False) and os.path.isfile(
                os.path.join(entry.path, f"RunLog{JSON_SUFFIX}")
            ):
                found.append(f"{entry.name}/RunLog{JSON_SUFFIX}")
        except OSError:
            continue
    return found


def _scan_run(
    run_path: str, run_name: str, trust: Trust | None = None
) -> Iterator[Entry | Skipped | FolderError]:
    try:
        # A light rescan trusts nearly every file by its name: names alone then, with no
        # DirEntry per file and nothing yielded for a trusted one (together a third of
        # a 100,000-file rescan's CPU); the few others get their lstat below.
        names = os.listdir(run_path) if trust is not None else None
        entries = list(os.scandir(run_path)) if names is None else []
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        yield FolderError(
            Path(run_path), run_name, exc.strerror or str(exc), exc.errno in TRANSIENT_ERRNOS
        )
        return
    if names is not None:
        assert trust is not None
        for name in names:
            if name.endswith(JSON_SUFFIX) and not trust(relative := f"{run_name}/{name}"):
                yield _path_entry(os.path.join(run_path, name), relative)
        return
    for entry in entries:
        name = entry.name
        if name.endswith(JSON_SUFFIX):
            yield _file_entry(entry, f"{run_name}/{name}")


def _path_entry(path: str, relative: str) -> Entry | Skipped:
    """:func:`_file_entry` for a name without its DirEntry: the same answers, from an
    lstat (which says what d_type would have)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return Skipped(Path(path), "unreadable", exc.strerror or str(exc))
    if stat.S_ISLNK(info.st_mode):
        return Skipped(Path(path), "symlink", f"{path} is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        return Skipped(Path(path), "not_regular", "not a regular file")
    return Entry(path=path, relative=relative, info=info)


def _file_entry(entry: os.DirEntry[str], relative: str) -> Entry | Skipped:
    if entry.is_symlink():
        return Skipped(Path(entry.path), "symlink", f"{entry.path} is a symbolic link")
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError as exc:
        return Skipped(Path(entry.path), "unreadable", exc.strerror or str(exc))
    if not stat.S_ISREG(info.st_mode):
        return Skipped(Path(entry.path), "not_regular", "not a regular file")
    return Entry(path=entry.path, relative=relative, info=info)


def to_candidate(entry: Entry, layout: Layout, prefix: str = "") -> Candidate | Skipped:
    """Validate a scanned file's name and map it to its key (under ``prefix``)."""
    mapping = _mapping(entry.path, entry.relative, layout, prefix)
    if isinstance(mapping, Skipped):
        return mapping
    return Candidate(entry.path, entry.relative, mapping=mapping, size=entry.info.st_size)


def walk(root: Path, layout: Layout, prefix: str = "") -> Iterator[Candidate | Skipped]:
    """Every run-log file (or skipped look-alike) under ``root``, without following links;
    a run folder that cannot be listed is reported as skipped (``unreadable``), and with
    the bucket's ``prefix`` a file whose key would be too long (``key_too_long``)."""
    for item in scan(root, layout):
        if isinstance(item, FolderError):
            yield Skipped(item.path, "unreadable", item.detail)
        else:
            yield item if isinstance(item, Skipped) else to_candidate(item, layout, prefix)


def scan_run(run_dir: Path) -> Iterator[Entry | Skipped | FolderError]:
    """The ``*.json`` files of one run folder (chunked layout), as :func:`scan` finds them."""
    yield from _scan_run(os.fspath(run_dir), run_dir.name)
