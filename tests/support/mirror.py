"""Comparing a run-log folder with the bucket, byte for byte, independently of the code
under test (a second, deliberately simple implementation of DESIGN.md's table)."""

from __future__ import annotations

import json
from pathlib import Path

from minio import Minio


def expected_objects(folder: Path, layout: str, prefix: str) -> dict[str, bytes]:
    """What the bucket must hold for ``folder``: full key → body."""
    out: dict[str, bytes] = {}
    base = f"{prefix}/" if prefix else ""
    if layout == "chunked":
        for path in sorted(folder.glob("*/*.json")):
            if path.is_symlink() or path.parent.is_symlink() or not path.is_file():
                continue
            out[f"{base}{path.parent.name}/{path.stem}"] = path.read_bytes()
    else:
        for path in sorted(folder.glob("*.json")):
            if path.is_symlink() or not path.is_file():
                continue
            out[f"{base}{path.stem}/{path.name}"] = json.dumps(path.read_text()).encode()
    return out


def bucket_objects(client: Minio, bucket: str, prefix: str = "") -> dict[str, bytes]:
    out = {}
    for obj in client.list_objects(bucket, prefix=f"{prefix}/" if prefix else "", recursive=True):
        response = client.get_object(bucket, obj.object_name)
        try:
            out[obj.object_name] = response.read()
        finally:
            response.close()
            response.release_conn()
    return out


def assert_mirror(
    client: Minio, bucket: str, prefix: str, folder: Path, layout: str = "chunked"
) -> None:
    expected = expected_objects(folder, layout, prefix)
    actual = bucket_objects(client, bucket, prefix)
    missing = sorted(set(expected) - set(actual))
    differing = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    assert not missing and not differing, f"missing={missing} differing={differing}"


def object_body(client: Minio, bucket: str, key: str) -> bytes | None:
    """The object's body, or None while it is not there (or not readable)."""
    try:
        response = client.get_object(bucket, key)
    except Exception:
        return None
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()
