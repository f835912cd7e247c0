"""Files that stay torn must not slow the rest: 2,000 files that never become valid JSON
and one torn 64 MiB run log, next to a healthy file whose rewrites are timed."""

from __future__ import annotations

import json
import time

from bench.harness import (
    Context,
    Figure,
    cpu_seconds,
    percentile,
    run_log_document,
    sidecar,
    visible,
    wait_until,
)

NAME = "torn"
SUMMARY = "2,000 never-valid files and a torn 64 MiB file: their cost, healthy latency"


def run(ctx: Context) -> list[Figure]:
    source = ctx.folder("torn-tree")
    torn_files = ctx.size(2000, 40)
    for index in range(torn_files):
        path = source / f"torn-{index // 20:03d}" / f"BranchLog-{index % 20}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text('{"never": "complete", "steps": [1, 2, ')
    big = source / "torn-big" / "RunLog.json"
    big.parent.mkdir()
    big.write_text(run_log_document(ctx.size(64, 1) * 1024 * 1024)[:-10])  # cut before its end
    healthy = source / "healthy" / "RunLog.json"
    healthy.parent.mkdir()
    healthy.write_text("{}")
    bucket = ctx.bucket()
    client = ctx.client()
    warm_up, window = ctx.size(30, 2), ctx.size(60, 2)
    with sidecar(source, ctx.endpoint, bucket, ctx.work / "torn.log") as process:
        process.wait_ready(300)
        time.sleep(warm_up)  # the first reads and the fast first retries happen here
        pid = process.process.pid
        cpu = cpu_seconds(pid)
        time.sleep(window)
        steady = (cpu_seconds(pid) - cpu) / window
        samples = []
        for index in range(ctx.size(100, 10)):
            body = json.dumps({"healthy": index}).encode()
            time.sleep(0.05)
            written = time.perf_counter()
            healthy.write_bytes(body)
            wait_until(visible(client, bucket, "healthy/RunLog", body), interval=0.001)
            samples.append((time.perf_counter() - written) * 1000)
    p95 = percentile(samples, 95)
    return [
        Figure(
            f"cost of {torn_files:,} torn files + 1 torn 64 MiB file, after {warm_up} s",
            steady,
            "CPU-s/s",
            "(main: 0.54 for the 2,000 alone)",
        ),
        Figure("healthy file write -> visible, p95", p95, "ms", "< 150 ms", p95 < 150),
    ]
