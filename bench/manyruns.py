"""A busy shared volume: 1,000 new runs of 20 files each, written over 60 s. Every file
must be visible, with lag (change seen → object written) p95 under 2 s. A run folder
made while the sidecar watches needs no listing (it started empty under its eyes).

20,000 files in 60 s is 333 PUT/s: more than moto's Python server takes on this machine
(about 270-370 PUT/s), so this runs on SeaweedFS, a real S3 server, whose bare PUT
ceiling (same client, concurrency 8) is measured in the same run and shown beside."""

from __future__ import annotations

import json
import threading
import time

from tests.support.sidecar import SidecarProcess

from bench.harness import BASELINE, Context, Figure, baseline_env, cpu_seconds, sidecar, wait_until
from bench.sync import bare_put_ceiling

NAME = "manyruns"
RUNS, SECONDS = 1000, 60
SUMMARY = "1,000 new runs x 20 files in 60 s: lag"


def lag_percentile(process: SidecarProcess, pct: float) -> float:
    """From the sidecar's own histogram, interpolated within the bucket."""
    samples = process.metrics()
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "runlog_relay_sync_lag_seconds_bucket"
    )
    total = buckets[-1][1]
    wanted = total * pct / 100
    low_edge, low_count = 0.0, 0.0
    for edge, count in buckets:
        if count >= wanted:
            if edge == float("inf") or count == low_count:
                return edge
            return low_edge + (edge - low_edge) * (wanted - low_count) / (count - low_count)
        low_edge, low_count = edge, count
    return float("inf")


def _measure(
    ctx: Context, endpoint: str, runs: int, seconds: int, env: dict[str, str] | None
) -> dict[str, float]:
    """One sidecar (this one, or the baseline's with ``env``) through the whole load."""
    files = runs * 20
    source = ctx.folder("manyruns-tree")
    bucket = ctx.bucket(endpoint)
    log = ctx.work / ("manyruns-baseline.log" if env else "manyruns.log")
    with sidecar(source, endpoint, bucket, log, env=env) as process:
        process.wait_ready(120)

        def writer() -> None:
            started = time.monotonic()
            for index in range(files):
                run, chunk = divmod(index, 20)
                due = started + seconds * index / files
                time.sleep(max(0.0, due - time.monotonic()))
                folder = source / f"busy-{run:04d}"
                folder.mkdir(exist_ok=True)
                name = "RunLog" if chunk == 0 else f"BranchLog-map.{chunk}"
                (folder / f"{name}.json").write_text(json.dumps({"run": run, "chunk": chunk}))

        thread = threading.Thread(target=writer)
        cpu = cpu_seconds(process.process.pid)
        started = time.monotonic()
        thread.start()
        thread.join()
        wait_until(
            lambda: process.metric("runlog_relay_uploads_total", result="success") >= files,
            timeout=300,
            interval=0.2,
        )
        behind = time.monotonic() - started - seconds
        cpu_per_file = (cpu_seconds(process.process.pid) - cpu) / files * 1000
        p50, p95 = lag_percentile(process, 50), lag_percentile(process, 95)
    visible = sum(1 for _ in ctx.client(endpoint).list_objects(bucket, recursive=True))
    return {"p50": p50, "p95": p95, "behind": behind, "cpu": cpu_per_file, "visible": visible}


def run(ctx: Context) -> list[Figure]:
    runs, seconds = ctx.size(RUNS, 20), ctx.size(SECONDS, 2)
    files = runs * 20
    server = ctx.seaweedfs
    bodies = [
        (f"ceiling/{index}", json.dumps({"run": index, "chunk": 1}).encode())
        for index in range(ctx.size(2000, 40))
    ]
    ceiling = bare_put_ceiling(server.endpoint, ctx.bucket(server.endpoint), bodies)
    ours = _measure(ctx, server.endpoint, runs, seconds, None)
    base = _measure(ctx, server.endpoint, runs, seconds, baseline_env()) if BASELINE else None
    visible, p95 = ours["visible"], ours["p95"]
    needed = files / seconds
    figures = [
        Figure("SeaweedFS bare PUT ceiling (concurrency 8)", ceiling, "PUT/s"),
        Figure(
            "rate the writers need", needed, "PUT/s", note=f"{needed / ceiling:.2f}x the ceiling"
        ),
        Figure(f"objects visible of {files:,}", visible, "", f"= {files:,}", visible == files),
        Figure("lag p50", ours["p50"], "s"),
        Figure("lag p95", p95, "s", "< 2 s", p95 < 2),
        Figure("last upload after the last write", ours["behind"], "s"),
        Figure("sidecar CPU per file (read, check, upload)", ours["cpu"], "ms"),
    ]
    if base is not None:
        figures += [
            Figure("baseline (BENCH_BASELINE): lag p50", base["p50"], "s"),
            Figure("baseline: lag p95", base["p95"], "s"),
            Figure("baseline: last upload after the last write", base["behind"], "s"),
            Figure("baseline: sidecar CPU per file", base["cpu"], "ms"),
            Figure("CPU per file / baseline's", ours["cpu"] / base["cpu"], "x"),
        ]
    return figures
