"""Walking a run-log folder safely: the one place that turns a directory into candidates.

Used by the sidecar's detect stage (start-up scan, rescans, new run folders) and by the
``verify`` tool. It never follows symlinks (a link to a file or a folder outside the
volume is reported and skipped), only yields regular files, and maps each name through
:mod:`runlog_relay.layout` so unsafe names are reported instead of becoming keys.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runlog_relay.layout import JSON_SUFFIX, Layout, Mapping, UnsafeNameError, key_for

__all__ = ["Candidate", "Skipped", "classify_path", "walk", "walk_run"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A regular file that maps to an object key."""

    path: Path
    relative: str
    mapping: Mapping


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path that will not be mirrored, and why (``reason`` is a metric label)."""

    path: Path
    reason: str  #: symlink | not_regular | unsafe_name | unreadable
    detail: str


def _decode(name: bytes | str) -> str:
    if isinstance(name, bytes):
        return name.decode("utf-8", "surrogateescape")
    return name


def classify_path(root: Path, path: Path, layout: Layout) -> Candidate | Skipped | None:
    """Decide what one path under ``root`` is. ``None``: not a run-log file at all
    (another extension, a directory, outside the root, or gone)."""
    try:
        relative_path = path.relative_to(root)
    except ValueError:
        return None
    parts = relative_path.parts
    expected_depth = 2 if layout is Layout.CHUNKED else 1
    if len(parts) != expected_depth or not parts[-1].endswith(JSON_SUFFIX):
        return None
    # Every component below the root must be a real directory/file, never a link: a
    # linked run folder could point anywhere on the node.
    current = root
    for index, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Skipped(path, "unreadable", exc.strerror or str(exc))
        if stat.S_ISLNK(info.st_mode):
            return Skipped(path, "symlink", f"{current} is a symbolic link")
        last = index == len(parts) - 1
        if not last and not stat.S_ISDIR(info.st_mode):
            return None
        if last and not stat.S_ISREG(info.st_mode):
            return Skipped(path, "not_regular", "not a regular file")
    relative = "/".join(parts)
    try:
        mapping = key_for(relative, layout)
    except UnsafeNameError as exc:
        return Skipped(path, "unsafe_name", exc.reason)
    return Candidate(path=path, relative=relative, mapping=mapping)


def walk(root: Path, layout: Layout) -> Iterator[Candidate | Skipped]:
    """Every run-log file (or skipped look-alike) under ``root``, without following links.

    Uses ``os.scandir`` so a rescan of 10,000 files costs one ``lstat`` each at most.
    Directories that vanish mid-walk (a run being cleaned up) are passed over silently.
    """
    try:
        top = list(os.scandir(root))
    except FileNotFoundError:
        return
    for entry in top:
        name = _decode(entry.name)
        path = root / name
        if layout is Layout.SINGLE:
            if name.endswith(JSON_SUFFIX):
                result = classify_path(root, path, layout)
                if result is not None:
                    yield result
            continue
        if entry.is_symlink():
            if name.endswith(JSON_SUFFIX) or entry.is_dir(follow_symlinks=True):
                yield Skipped(path, "symlink", f"{path} is a symbolic link")
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        yield from walk_run(root, path, layout)


def walk_run(root: Path, run_dir: Path, layout: Layout) -> Iterator[Candidate | Skipped]:
    """The files of one run folder (chunked layout)."""
    try:
        entries = list(os.scandir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        yield Skipped(run_dir, "unreadable", exc.strerror or str(exc))
        return
    for entry in entries:
        name = _decode(entry.name)
        if not name.endswith(JSON_SUFFIX):
            continue
        result = classify_path(root, run_dir / name, layout)
        if result is not None:
            yield result
