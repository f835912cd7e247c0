"""The cost of a sidecar that has nothing to do: 60 s over 10,000 synced files (the window
includes one safety-net rescan)."""

from __future__ import annotations

import time

from bench.harness import (
    Context,
    Figure,
    cpu_seconds,
    peak_rss_mib,
    rss_mib,
    sidecar,
    wait_until,
    write_tree,
)

NAME = "idle"
SUMMARY = "60 s idle over 10,000 files: CPU and memory"


def run(ctx: Context) -> list[Figure]:
    files = ctx.size(10_000, 100)
    seconds = ctx.size(60, 2)
    source = ctx.folder("idle-tree")
    write_tree(source, runs=files // 20, per_run=20, seed=2)
    bucket = ctx.bucket()
    with sidecar(source, ctx.endpoint, bucket, ctx.work / "idle.log") as process:
        process.wait_ready(600)
        wait_until(
            lambda: (
                process.metric("runlog_relay_uploads_total", result="success") >= files
                and process.metric("runlog_relay_pending_files") == 0
            ),
            timeout=900,
            interval=0.5,
        )
        pid = process.process.pid
        cpu = cpu_seconds(pid)
        time.sleep(seconds)  # the measurement itself: the sidecar must stay idle this long
        cpu = cpu_seconds(pid) - cpu
        rss, peak = rss_mib(pid), peak_rss_mib(pid)
    return [
        Figure(
            f"CPU over {seconds} s idle, {files:,} files", cpu, "CPU-s", "< 0.5 CPU-s", cpu < 0.5
        ),
        Figure("RSS after the first sync", rss, "MiB", "< 60 MiB", rss < 60),
        Figure("peak RSS during the first sync", peak, "MiB"),
    ]
