"""Start-up does not pay for the bucket: one local run of 20 files, in a bucket whose
prefix already holds 250,000 objects of other runs. Time to the first PUT, memory, and
the listing requests made (per run prefix, not the whole prefix)."""

from __future__ import annotations

import time

from tests.support.tcpproxy import TcpProxy

from bench.harness import (
    Context,
    Figure,
    peak_rss_mib,
    seedable_server,
    sidecar,
    wait_until,
    write_tree,
)

NAME = "startup"
SUMMARY = "start-up with 250,000 other objects in the bucket"


def run(ctx: Context) -> list[Figure]:
    others = ctx.size(250_000, 2_000)
    source = ctx.folder("startup-tree")
    write_tree(source, runs=1, per_run=20, seed=5, prefix="local")
    with seedable_server() as (endpoint, put):
        bucket = ctx.bucket(endpoint)
        seeded = time.perf_counter()
        for index in range(others):
            put(bucket, f"run-logs/other-{index // 20:06d}/BranchLog-{index % 20}", b'{"x": 1}')
        seeding = time.perf_counter() - seeded
        proxy = TcpProxy(int(endpoint.rsplit(":", 1)[1]))
        try:
            started = time.perf_counter()
            with sidecar(
                source, proxy.endpoint, f"{bucket}/run-logs", ctx.work / "startup.log"
            ) as process:
                # Seen on the wire, when the first PUT's request head reaches the proxy.
                wait_until(lambda: proxy.counts.get("PUT", 0) >= 1, timeout=600, interval=0.005)
                first = time.perf_counter() - started
                wait_until(
                    lambda: process.metric("runlog_relay_uploads_total", result="success") >= 20,
                    timeout=600,
                )
                peak = peak_rss_mib(process.process.pid)
            lists = proxy.counts.get("GET", 0)
        finally:
            proxy.close()
    return [
        Figure(f"seeding {others:,} objects (not the sidecar)", seeding, "s"),
        Figure("sidecar start -> first PUT visible", first, "s", "< 3 s", first < 3),
        Figure("peak RSS", peak, "MiB", "< 80 MiB", peak < 80),
        Figure("listing requests", lists, "requests", "<= 3", lists <= 3),
    ]
