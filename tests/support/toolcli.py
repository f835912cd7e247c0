"""What the read-side tools' integration tests share: running a command in-process, and
putting a run-log folder into the bucket the way the sidecar would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runlog_relay.cli import main
from runlog_relay.layout import Layout, encode_body
from runlog_relay.localtree import Candidate, walk
from runlog_relay.objectstore import ObjectStore

#: The tools' default credentials: moto accepts anything, SeaweedFS knows them as its admin key.
ACCESS_KEY = SECRET_KEY = "minioadmin"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``runlog-relay ARGS`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return Result(code, out, err)


def tool_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m runlog_relay ARGS`` as a real process, with none of this process's
    ``AWS_*`` / ``RUNLOG_RELAY_*`` variables (``env`` adds some)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNLOG_RELAY_"))}
    return subprocess.run(
        [sys.executable, "-m", "runlog_relay", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def bucket_store(endpoint: str, location: str) -> ObjectStore:
    """An ObjectStore for runnable's ``bucket[/prefix]`` at ``endpoint``."""
    bucket, _, prefix = location.partition("/")
    return ObjectStore(
        endpoint=endpoint,
        bucket=bucket,
        prefix=prefix,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )


def upload_like_the_sidecar(endpoint: str, location: str, folder: Path, layout: Layout) -> int:
    """STAND-IN FOR THE SIDECAR: every run-log file of ``folder`` to ``location``."""
    store = bucket_store(endpoint, location)
    store.check_bucket(create=True)
    count = 0
    for item in walk(folder, layout):
        assert isinstance(item, Candidate), item
        store.put(item.mapping.key, encode_body(item.path.read_bytes(), layout))
        count += 1
    return count
