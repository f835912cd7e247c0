"""What every opted-in pod pays for its sidecar: start-up CPU and idle memory.

The sidecar is started as the webhook starts it (``sidecar --config config.yaml``, INFO
logs, metrics served) on the empty run-log folder of a pod that has not written yet, and
measured from /proc: CPU-seconds when ``/readyz`` first answers 200 (imports, settings,
the bucket check, the first, empty, sync), then CPU and RSS after a few idle seconds. Best
of three starts, because the machine is shared; the bare interpreter (``python -c pass``)
is measured the same way beside it as the floor. These figures size the injected
sidecar's default requests and limits (docs/benchmarks.md, "Per-pod cost").

It runs as the image runs it (``bench.harness.IMAGE_ENV``, and the package's bytecode
compiled before any scenario: see there).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.harness import (
    IMAGE_ENV,
    Context,
    Figure,
    cpu_seconds,
    peak_rss_mib,
    rss_mib,
    sidecar,
    visible,
    wait_until,
    write_tree,
)

NAME = "podcost"
SUMMARY = "per-pod sidecar: start-up CPU and idle RSS on an empty folder"

STARTUP_CPU_TARGET = 0.3  #: CPU-s, issue 12 item 5
IDLE_RSS_TARGET = 45.0  #: MiB


def _interpreter_floor() -> tuple[float, float]:
    """(CPU-s, RSS MiB) of a Python that imports nothing: what no change of ours can cut."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        time.sleep(0.3)  # the measurement itself: let it settle before reading /proc
        return cpu_seconds(process.pid), rss_mib(process.pid)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)


#: A Job pod's run: runnable's RunLog.json and its branch logs, each rewritten as the run
#: goes on (the usual shape: tens of files, each rewritten a few times).
JOB_RUN_FILES = 20
JOB_RUN_REWRITES = 4


def _job_run(ctx: Context, source: Path, bucket: str, sidecar_pid: int) -> tuple[float, float]:
    """(peak RSS, RSS) in MiB once a Job pod's run is mirrored, each version in turn."""
    client = ctx.client()
    run = f"job-{source.name}"  # a run of its own each start: nothing of it is in the bucket
    for rewrite in range(JOB_RUN_REWRITES):
        write_tree(source, runs=1, per_run=JOB_RUN_FILES, seed=rewrite, prefix=run)
        for path in source.glob(f"{run}-*/*.json"):
            key = f"run-logs/{path.parent.name}/{path.name.removesuffix('.json')}"
            wait_until(visible(client, bucket, key, path.read_bytes()), timeout=60, interval=0.05)
    return peak_rss_mib(sidecar_pid), rss_mib(sidecar_pid)


def _one_start(
    ctx: Context, config: Path, bucket: str, idle: float
) -> tuple[float, float, float, float, float]:
    """(CPU-s at first ready, CPU-s after ``idle`` s, RSS MiB after ``idle`` s, then the
    peak and current RSS MiB once a Job pod's run is mirrored)."""
    source = ctx.folder("podcost")
    log = ctx.work / f"{source.name}.log"  # one per start: the port is read from the log
    with sidecar(source, None, None, log, "--config", str(config), env=IMAGE_ENV) as process:
        pid = process.process.pid
        wait_until(lambda: process.get("/readyz")[0] == 200, timeout=60, interval=0.01)
        ready_cpu = cpu_seconds(pid)
        time.sleep(idle)  # the measurement itself: an idle sidecar must stay this small
        idle_cpu, idle_rss = cpu_seconds(pid), rss_mib(pid)
        return (ready_cpu, idle_cpu, idle_rss, *_job_run(ctx, source, bucket, pid))


def run(ctx: Context) -> list[Figure]:
    config = ctx.work / "podcost-config.yaml"
    bucket = ctx.bucket()
    config.write_text(yaml.safe_dump({"endpoint": ctx.endpoint, "bucket": f"{bucket}/run-logs"}))
    idle = ctx.size(10, 1)
    starts = [_one_start(ctx, config, bucket, idle) for _ in range(ctx.size(3, 1))]
    ready_cpu = min(s[0] for s in starts)
    idle_cpu = min(s[1] - s[0] for s in starts)
    rss = min(s[2] for s in starts)
    job_peak = max(s[3] for s in starts)  # the largest: it sizes a memory request
    job_rss = max(s[4] for s in starts)
    floor_cpu, floor_rss = _interpreter_floor()
    return [
        Figure(
            "start-up CPU to first ready",
            ready_cpu,
            "CPU-s",
            f"< {STARTUP_CPU_TARGET} CPU-s",
            ready_cpu < STARTUP_CPU_TARGET,
        ),
        Figure(
            f"idle RSS after {idle} s",
            rss,
            "MiB",
            f"< {IDLE_RSS_TARGET:.0f} MiB",
            rss < IDLE_RSS_TARGET,
        ),
        Figure(f"CPU over {idle} s idle", idle_cpu, "CPU-s"),
        Figure(
            f"peak RSS mirroring a Job pod's run ({JOB_RUN_FILES} files x {JOB_RUN_REWRITES})",
            job_peak,
            "MiB",
        ),
        Figure("RSS after that run", job_rss, "MiB"),
        Figure("floor: bare interpreter CPU", floor_cpu, "CPU-s"),
        Figure("floor: bare interpreter RSS", floor_rss, "MiB"),
    ]
