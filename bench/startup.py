"""Start-up does not pay for the bucket: one local run of 20 files, in a bucket whose
prefix holds N objects of other runs, for N = 0 and then N = 250,000 (the same server,
the same run): time to the first PUT, peak memory and the listing requests made (per run
prefix, never the whole prefix), each shown with its ratio to N = 0. Flat growth is the
point; the absolute targets are the issue's."""

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
SUMMARY = "start-up with 0 and 250,000 other objects in the bucket"


def _start_once(ctx: Context, endpoint: str, bucket: str, label: str) -> tuple[float, float, int]:
    """(seconds to the first PUT on the wire, peak RSS MiB, listing requests)."""
    source = ctx.folder(f"startup-{label}")
    write_tree(source, runs=1, per_run=20, seed=5, prefix=f"local-{label}")
    proxy = TcpProxy(int(endpoint.rsplit(":", 1)[1]))
    try:
        started = time.perf_counter()
        with sidecar(
            source, proxy.endpoint, f"{bucket}/run-logs", ctx.work / f"startup-{label}.log"
        ) as process:
            # Seen on the wire, when the first PUT's request head reaches the proxy.
            wait_until(lambda: proxy.counts.get("PUT", 0) >= 1, timeout=600, interval=0.005)
            first = time.perf_counter() - started
            wait_until(
                lambda: process.metric("runlog_relay_uploads_total", result="success") >= 20,
                timeout=600,
            )
            peak = peak_rss_mib(process.process.pid)
        return first, peak, proxy.counts.get("GET", 0)
    finally:
        proxy.close()


def run(ctx: Context) -> list[Figure]:
    others = ctx.size(250_000, 2_000)
    with seedable_server() as (endpoint, put):
        bucket = ctx.bucket(endpoint)
        empty_first, empty_peak, empty_lists = _start_once(ctx, endpoint, bucket, "empty")
        seeded = time.perf_counter()
        for index in range(others):
            put(bucket, f"run-logs/other-{index // 20:06d}/BranchLog-{index % 20}", b'{"x": 1}')
        seeding = time.perf_counter() - seeded
        first, peak, lists = _start_once(ctx, endpoint, bucket, "full")
    return [
        Figure("N = 0: sidecar start -> first PUT on the wire", empty_first, "s"),
        Figure("N = 0: peak RSS", empty_peak, "MiB"),
        Figure(f"seeding {others:,} objects (not the sidecar)", seeding, "s"),
        Figure(
            f"N = {others:,}: start -> first PUT",
            first,
            "s",
            "< 3 s",
            first < 3,
            note=f"{first / empty_first:.2f}x N = 0",
        ),
        Figure(
            f"N = {others:,}: peak RSS",
            peak,
            "MiB",
            "< 80 MiB",
            peak < 80,
            note=f"{peak / empty_peak:.2f}x N = 0",
        ),
        Figure(
            f"N = {others:,}: listing requests",
            lists,
            "requests",
            "<= 3",
            lists <= 3,
            note=f"N = 0: {empty_lists}",
        ),
    ]
