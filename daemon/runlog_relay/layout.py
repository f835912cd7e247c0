"""runnable file names ↔ object keys, both directions, for both store kinds.

This module is the compatibility contract of DESIGN.md in code. It is pure (no I/O) so
the sidecar, the pull/verify tools and the tests all share one mapping:

==========  =======================================  ===============================  =========
layout      file (relative to the log folder)        key (relative to the prefix)     body
==========  =======================================  ===============================  =========
chunked     ``<run_id>/<Name>.json``                 ``<run_id>/<Name>``              same bytes
single      ``<run_id>.json``                        ``<run_id>/<run_id>.json``       JSON string
==========  =======================================  ===============================  =========

``single`` is runnable's ``file-system`` → ``minio`` pair: the minio store reads
``json.loads(json.loads(body))``, so the uploaded body is the file's text encoded once
more as a JSON string.

Names are validated before they become keys: a hostile or odd file name (control
characters, a leading dot, path separators, non-UTF-8 bytes, ``..``) is rejected with a
reason instead of producing a surprising key.
"""

from __future__ import annotations

import enum
import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_KEY_BYTES",
    "BodyEncoder",
    "KeyTooLongError",
    "Layout",
    "Mapping",
    "UnsafeNameError",
    "decode_body",
    "encode_body",
    "key_for",
    "key_of",
    "path_for",
    "relative_parts",
    "run_id_of_key",
]

JSON_SUFFIX = ".json"

# Names become keys almost verbatim, so refuse only what is hostile or surprising: control
# and invisible formatting characters (a newline or a bidi override in a key fools people
# and tools), backslashes, names that are not valid UTF-8, names over S3's limits, and
# hidden names (editors' and runnable's temporary files start with a dot). Anything else
# runnable may write (map values become branch names) stays allowed.
_MAX_COMPONENT_BYTES = 255
#: S3's limit on a whole key, prefix included (UTF-8 bytes): over it a PUT fails with
#: KeyTooLongError, a permanent error that would hold every upload behind it.
MAX_KEY_BYTES = 1024


class Layout(enum.StrEnum):
    """How runnable lays a run out on disk and in the bucket."""

    CHUNKED = "chunked"  #: chunked-fs → chunked-minio
    SINGLE = "single"  #: file-system → minio


class UnsafeNameError(ValueError):
    """A file name that cannot become a safe object key; ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name!r}: {reason}")
        self.name = name
        self.reason = reason


class KeyTooLongError(UnsafeNameError):
    """A file whose key, with the bucket prefix, is over :data:`MAX_KEY_BYTES`."""


@dataclass(frozen=True, slots=True)
class Mapping:
    """Where one local file goes: its object key (relative to the prefix) and run."""

    run_id: str
    key: str


def _check_component(part: str, what: str) -> None:
    if not part:
        raise UnsafeNameError(part, f"empty {what}")
    if part.startswith("."):
        raise UnsafeNameError(part, f"{what} is hidden or relative (starts with a dot)")
    if part != part.strip():
        raise UnsafeNameError(part, f"{what} starts or ends with white space")
    # Printable ASCII (nearly every name) has no surrogate, control or invisible
    # character: the per-character walks below are for the rest (5 us of 17 per file).
    if not (part.isascii() and part.isprintable()):
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in part):
            raise UnsafeNameError(part, f"{what} is not valid UTF-8")
        if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in part):
            raise UnsafeNameError(part, f"{what} contains a control or invisible character")
    if "\\" in part or "/" in part:
        raise UnsafeNameError(part, f"{what} contains a path separator")
    if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        raise UnsafeNameError(part, f"{what} is longer than {_MAX_COMPONENT_BYTES} bytes")


def key_for(relative: str, layout: Layout, prefix: str = "") -> Mapping:
    """Map a file path relative to the log folder (``/``-separated) to its key.

    Raises :class:`UnsafeNameError` when the path is not a run-log file of ``layout`` or
    its name cannot become a safe key, :class:`KeyTooLongError` when the key under
    ``prefix`` (the bucket's key prefix, if any) is longer than S3 allows.
    """
    mapping = _key_for(relative, layout)
    # 4 bytes a character at most: only long names need encoding.
    length = len(prefix) + 1 + len(mapping.key) if prefix else len(mapping.key)
    if length * 4 > MAX_KEY_BYTES:
        full = f"{prefix}/{mapping.key}" if prefix else mapping.key
        size = len(full.encode("utf-8"))
        if size > MAX_KEY_BYTES:
            raise KeyTooLongError(
                relative,
                f"its object key{' with the prefix' if prefix else ''} is {size} bytes,"
                f" over S3's limit of {MAX_KEY_BYTES}",
            )
    return mapping


def _key_for(relative: str, layout: Layout) -> Mapping:
    parts = relative.split("/")
    if layout is Layout.CHUNKED:
        if len(parts) != 2:
            raise UnsafeNameError(relative, "not <run_id>/<chunk>.json")
        run_id, filename = parts
        _check_component(run_id, "run id")
        if not filename.endswith(JSON_SUFFIX) or filename == JSON_SUFFIX:
            raise UnsafeNameError(relative, "not a .json chunk")
        _check_component(filename[: -len(JSON_SUFFIX)], "chunk name")
        return Mapping(run_id=run_id, key=key_of(relative, layout))
    if len(parts) != 1:
        raise UnsafeNameError(relative, "not <run_id>.json")
    filename = parts[0]
    if not filename.endswith(JSON_SUFFIX) or filename == JSON_SUFFIX:
        raise UnsafeNameError(relative, "not a .json run log")
    run_id = filename[: -len(JSON_SUFFIX)]
    _check_component(run_id, "run id")
    return Mapping(run_id=run_id, key=key_of(relative, layout))


def key_of(relative: str, layout: Layout) -> str:
    """The key of a path already validated by :func:`key_for` (no checks: cheap)."""
    if layout is Layout.CHUNKED:
        return relative[: -len(JSON_SUFFIX)]
    return f"{relative[: -len(JSON_SUFFIX)]}/{relative}"


def relative_parts(root: Path, path: Path | str) -> list[str] | None:
    """``path.relative_to(root).parts``, or None when ``path`` is not below ``root``.

    By string where the two are spelled alike (always, for paths the sidecar builds):
    pathlib's parsing was a fifth of the detector's CPU per file in a first sync."""
    root_text = os.fspath(root)
    text = os.fspath(path)
    prefix = root_text if root_text.endswith("/") else root_text + "/"
    if text.startswith(prefix):
        return text[len(prefix) :].split("/")
    try:
        return list(Path(path).relative_to(root).parts)
    except ValueError:
        return None


def path_for(key: str, layout: Layout) -> str:
    """The inverse of :func:`key_for`: the file path (relative) an object key came from."""
    parts = key.split("/")
    if len(parts) != 2:
        raise UnsafeNameError(key, "not <run_id>/<name>")
    run_id, name = parts
    _check_component(run_id, "run id")
    _check_component(name, "object name")
    if layout is Layout.CHUNKED:
        return f"{run_id}/{name}{JSON_SUFFIX}"
    if name != f"{run_id}{JSON_SUFFIX}":
        raise UnsafeNameError(key, "not <run_id>/<run_id>.json")
    return name


def run_id_of_key(key: str) -> str:
    """The run id an object key (relative to the prefix) belongs to."""
    return key.split("/", 1)[0]


def encode_body(file_bytes: bytes, layout: Layout) -> bytes:
    """The object body for a file's bytes (already checked to be JSON)."""
    if layout is Layout.CHUNKED:
        return file_bytes
    return json.dumps(file_bytes.decode("utf-8")).encode("utf-8")


class BodyEncoder:
    """:func:`encode_body` for a file read in pieces: ``start()``, ``piece()`` per
    piece (its bytes and their decoded text), ``end()``; the outputs concatenated are
    ``encode_body(whole_file)``. JSON escapes text one character at a time, so the
    pieces of an escaped string are the escaped pieces of the string."""

    __slots__ = ("layout",)

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def start(self) -> bytes:
        return b"" if self.layout is Layout.CHUNKED else b'"'

    def piece(self, raw: bytes, text: str) -> bytes:
        if self.layout is Layout.CHUNKED:
            return raw
        return json.dumps(text)[1:-1].encode("ascii")

    def end(self) -> bytes:
        return b"" if self.layout is Layout.CHUNKED else b'"'


def decode_body(object_bytes: bytes, layout: Layout) -> bytes:
    """The file bytes an object body came from: the inverse of :func:`encode_body`."""
    if layout is Layout.CHUNKED:
        return object_bytes
    text = json.loads(object_bytes)
    if not isinstance(text, str):
        raise ValueError("a single-layout object must hold a JSON string")
    return text.encode("utf-8")
