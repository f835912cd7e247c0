"""What every benchmark scenario shares: S3 servers, trees of run logs, the sidecar as a
subprocess, and readings of a process's CPU and memory from /proc.

A scenario is a module with ``NAME``, ``SUMMARY`` and ``run(ctx) -> list[Figure]``; the
runner (``python -m bench``) runs them in one process, so figures and the ceilings they
are compared with come from the same run on the same (shared, noisy) machine.
"""

from __future__ import annotations

import compileall
import itertools
import json
import logging
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from minio import Minio
from tests.support.s3server import S3Server, SeaweedFS, start_s3_server, start_seaweedfs
from tests.support.sidecar import SidecarProcess, start_sidecar
from tests.support.waiting import wait_until

__all__ = [
    "BASELINE",
    "Context",
    "Figure",
    "LogTail",
    "cpu_seconds",
    "peak_rss_mib",
    "percentile",
    "rss_mib",
    "run_log_document",
    "sidecar",
    "wait_until",
    "write_tree",
]

_buckets = itertools.count()

#: ``BENCH_BASELINE=<checkout>/daemon``: scenarios that support it also run the sidecar
#: of that checkout (e.g. ``git worktree add /tmp/base main``), alternating with this one
#: in the same run, and print this one's figures as ratios to it (before/after on a
#: shared, noisy machine). Unset: no baseline rows.
BASELINE = os.environ.get("BENCH_BASELINE") or None


def baseline_env() -> dict[str, str]:
    """Environment that makes ``python -m runlog_relay`` the baseline's code."""
    assert BASELINE is not None
    return {"PYTHONPATH": BASELINE}


#: The variables the Dockerfile sets that change what a sidecar costs. Every sidecar the
#: benchmark starts runs with them, as the image runs it.
IMAGE_ENV: dict[str, str | None] = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "MALLOC_ARENA_MAX": "2",
}


def compile_package() -> None:
    """Compile runlog_relay's bytecode (and the baseline's), as ``pip install`` of the
    wheel does in the image (into ``__pycache__``, which git ignores). A checkout
    installed in editable mode under ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile
    every module of the package from source at each start: CPU no pod spends, and in
    ``sidecar --once`` scenarios a cost rclone, a Go binary, does not pay either."""
    import runlog_relay

    compileall.compile_dir(Path(runlog_relay.__file__).parent, quiet=1)
    if BASELINE:
        compileall.compile_dir(Path(BASELINE) / "runlog_relay", quiet=1)


@dataclass
class Figure:
    """One measured figure, with the target it is held to (if any)."""

    name: str
    value: float
    unit: str
    target: str = ""  #: human form, e.g. "< 128 MiB"
    ok: bool | None = None  #: None: informational (a ceiling, a comparison)
    note: str = ""

    def shown(self) -> str:
        if (
            self.unit in {"files/s", "PUT/s", "requests"}
            or float(self.value).is_integer()
            or abs(self.value) >= 100
        ):
            number = f"{self.value:,.0f}"
        elif abs(self.value) >= 10:
            number = f"{self.value:.1f}"
        else:
            number = f"{self.value:.3g}"
        return f"{number} {self.unit}".strip()


@dataclass
class Context:
    """One benchmark run: a work folder, S3 servers (moto, and SeaweedFS for figures
    named on a real S3 server), and the toy switch. Servers start on first use."""

    work: Path
    toy: bool = False  #: tiny sizes, for the smoke test
    _server: S3Server | None = None
    _seaweedfs: SeaweedFS | None = None
    _ceilings: dict[str, float] = field(default_factory=dict)

    @property
    def server(self) -> S3Server:
        if self._server is None:
            self._server = start_s3_server(self.work / "moto.log")
        return self._server

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def seaweedfs(self) -> SeaweedFS:
        """A real S3 server (``weed server`` on 127.0.0.1, every port explicit)."""
        if self._seaweedfs is None:
            self._seaweedfs = start_seaweedfs(self.work / "seaweedfs")
        return self._seaweedfs

    def client(self, endpoint: str | None = None) -> Minio:
        netloc = (endpoint or self.endpoint).removeprefix("http://")
        return Minio(netloc, "minioadmin", "minioadmin", secure=False)

    def bucket(self, endpoint: str | None = None) -> str:
        name = f"bench-{next(_buckets)}"
        self.client(endpoint).make_bucket(name)
        return name

    def folder(self, name: str) -> Path:
        path = self.work / f"{name}-{next(_buckets)}"
        path.mkdir(parents=True)
        return path

    def size(self, real: int, toy: int) -> int:
        return toy if self.toy else real

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._seaweedfs is not None:
            self._seaweedfs.stop()


# --------------------------------------------------------------------------- trees


def write_tree(root: Path, runs: int, per_run: int, *, seed: int = 1, prefix: str = "run") -> int:
    """runnable-like chunks of 1-20 KiB in ``runs`` folders; returns the total bytes."""
    rng = random.Random(seed)
    total = 0
    for run in range(runs):
        folder = root / f"{prefix}-{run:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for chunk in range(per_run):
            name = "RunLog.json" if chunk == 0 else f"BranchLog-map.{chunk}.json"
            size = rng.randint(1024, 20 * 1024)
            doc = json.dumps({"run": run, "chunk": chunk, "pad": "x" * max(0, size - 40)})
            (folder / name).write_text(doc)
            total += len(doc)
    return total


def run_log_document(size: int, *, seed: int = 1) -> str:
    """A run log of about ``size`` bytes shaped like runnable's: a run with many steps,
    each with attempts, parameters and catalog entries (nested, mostly strings)."""
    rng = random.Random(seed)
    steps = {}
    index = 0
    approx = 0
    while approx < size:
        step = {
            "name": f"step-{index}",
            "internal_name": f"map.{index}.task",
            "status": "SUCCESS",
            "step_type": "task",
            "message": "",
            "code_identities": [
                {
                    "code_identifier": f"{rng.getrandbits(160):040x}",
                    "code_identifier_type": "git",
                    "code_identifier_dependable": True,
                    "code_identifier_url": "https://example.com/repo.git",
                }
            ],
            "attempts": [
                {
                    "attempt_number": 1,
                    "start_time": "2026-01-01 00:00:00.000000",
                    "end_time": "2026-01-01 00:00:01.000000",
                    "status": "SUCCESS",
                    "input_parameters": {"x": {"kind": "json", "value": rng.random()}},
                    "user_defined_metrics": {},
                }
            ],
            "data_catalog": [{"name": "out", "data_hash": f"{rng.getrandbits(256):064x}"}],
        }
        steps[f"map.{index}"] = step
        approx += 900
        index += 1
    return json.dumps({"run_id": "big-run", "status": "RUNNING", "steps": steps}, indent=2)


# --------------------------------------------------------------------------- processes


def _status_field(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    return _status_field(pid, "VmRSS")


def peak_rss_mib(pid: int) -> float:
    return _status_field(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LogTail:
    """The lines a process appends to its log file, read as they come.

    Waiting on a log by reading it whole at every poll costs the benchmark's process CPU
    in proportion to the log (a 5 MB DEBUG log read and searched 20 times a second took
    about half a core), on the same two cores the measured sidecar runs on: a rescan
    timed meanwhile cost twice its CPU. Each call reads only what was added since."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""  # a line still being written

    def skip(self) -> None:
        """Forget what the log holds so far."""
        self.lines()

    def lines(self) -> list[str]:
        """The complete lines written since the last call."""
        with self._path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


def percentile(samples: list[float], pct: int) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


@contextmanager
def sidecar(
    source: Path, endpoint: str | None, bucket: str | None, log: Path, *extra: str, **kwargs: object
) -> Iterator[SidecarProcess]:
    """A running sidecar (INFO logging, the image's environment), stopped with SIGTERM at
    the end."""
    kwargs["env"] = {**IMAGE_ENV, **(kwargs.get("env") or {})}  # type: ignore[dict-item]
    process = start_sidecar(source, endpoint, bucket, log, "--log-level", "INFO", *extra, **kwargs)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.terminate(120)


def visible(client: Minio, bucket: str, key: str, body: bytes) -> Callable[[], bool]:
    def check() -> bool:
        try:
            response = client.get_object(bucket, key)
        except Exception:
            return False
        try:
            return bool(response.read() == body)
        finally:
            response.close()
            response.release_conn()

    return check


def quiet_werkzeug() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


@contextmanager
def seedable_server() -> Iterator[tuple[str, Callable[[str, str, bytes], None]]]:
    """moto's server in this process, so a scenario can fill a bucket with hundreds of
    thousands of objects straight into its backend (seconds, not a PUT each); the
    sidecar still talks to it over HTTP. Yields (endpoint, put(bucket, key, body))."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    quiet_werkzeug()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]

    def put(bucket: str, key: str, body: bytes) -> None:
        backend.put_object(bucket, key, body)

    try:
        yield f"http://{host}:{port}", put
    finally:
        server.stop()
        backend.reset()
