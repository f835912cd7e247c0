"""Writing run-log files the way runnable does, for tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, document: object, indent: int | None = 4) -> bytes:
    """Rewrite in place like runnable does (open "w", then dump); returns the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(document, handle, indent=indent)
    return path.read_bytes()
