"""100,000 tracked files (5,000 runs x 20, already in the bucket): what one change costs,
how fast it is visible, and what a safety-net rescan of all of them costs."""

from __future__ import annotations

import json
import random
import re
import time

from bench.harness import (
    Context,
    Figure,
    LogTail,
    cpu_seconds,
    percentile,
    rss_mib,
    seedable_server,
    sidecar,
    visible,
    wait_until,
)

NAME = "scale"
SUMMARY = "100,000 tracked files: CPU per change, latency, rescan cost"
RESCAN = re.compile(
    r"rescan \(periodic, light\) of (\d+) files took ([\d.]+)s \(([\d.]+) CPU-s, ([\d.]+) in"
)
SWEEP = re.compile(r"rescan \(shutdown\) of (\d+) files took ([\d.]+)s \(([\d.]+) CPU-s")


def run(ctx: Context) -> list[Figure]:
    runs = ctx.size(5_000, 50)
    files = runs * 20
    # Long enough that no periodic rescan falls among the timed changes.
    rescan_interval = ctx.size(90, 5)
    source = ctx.folder("scale-tree")
    keys = []
    with seedable_server() as (endpoint, put):
        bucket = ctx.bucket(endpoint)
        for run in range(runs):
            folder = source / f"run-{run:05d}"
            folder.mkdir()
            for chunk in range(20):
                name = "RunLog" if chunk == 0 else f"BranchLog-map.{chunk}"
                body = json.dumps({"run": run, "chunk": chunk, "pad": "z" * 200}).encode()
                (folder / f"{name}.json").write_bytes(body)
                put(bucket, f"{folder.name}/{name}", body)
                keys.append((folder / f"{name}.json", f"{folder.name}/{name}"))
        client = ctx.client(endpoint)
        log = ctx.work / "scale.log"
        started = time.perf_counter()
        with sidecar(
            source,
            endpoint,
            bucket,
            log,
            "--log-level",
            "DEBUG",  # for the rescan's own timing line
            "--rescan-interval",
            str(rescan_interval),
        ) as process:
            process.wait_ready(1800)
            wait_until(lambda: process.metric("runlog_relay_pending_files") == 0, timeout=1800)
            startup = time.perf_counter() - started
            uploads = process.metric("runlog_relay_uploads_total", result="success")
            pid = process.process.pid
            rng = random.Random(7)
            samples = []
            changes = ctx.size(200, 20)
            tail = LogTail(log)
            tail.skip()  # the rescans of the start-up, with files still being read
            cpu = cpu_seconds(pid)
            for index in range(changes):
                path, key = rng.choice(keys)
                body = json.dumps({"changed": index, "pad": "w" * 200}).encode()
                written = time.perf_counter()
                path.write_bytes(body)
                wait_until(visible(client, bucket, key, body), interval=0.001, timeout=60)
                samples.append((time.perf_counter() - written) * 1000)
                time.sleep(0.02)
            per_change = (cpu_seconds(pid) - cpu) / changes * 1000
            # The next light periodic rescan, once everything is settled.
            found: list[tuple[str, ...]] = []

            def next_rescan() -> bool:
                found.extend(m.groups() for line in tail.lines() if (m := RESCAN.search(line)))
                return bool(found)

            wait_until(next_rescan, timeout=rescan_interval * 3)
            rss = rss_mib(pid)
        swept = SWEEP.findall(log.read_text())
    tracked, rescan_wall = int(found[0][0]), float(found[0][1])
    rescan_cpu, rescan_own_cpu = float(found[0][2]), float(found[0][3])
    p95 = percentile(samples, 95)
    return [
        Figure(f"start-up over {files:,} synced files (to no pending)", startup, "s"),
        Figure("PUTs at start-up (all in the bucket)", uploads, "", "0", uploads == 0),
        Figure(
            "sidecar CPU per change (read, check, upload)",
            per_change,
            "ms",
            "< 5 ms",
            per_change < 5,
        ),
        Figure("write -> visible, p95", p95, "ms", "< 150 ms", p95 < 150),
        Figure(
            f"periodic rescan of {tracked:,} files",
            rescan_cpu,
            "CPU-s",
            "< 0.3 CPU-s",
            rescan_cpu < 0.3,
            note=f"{rescan_wall:.2f} s wall",
        ),
        Figure("the same, in the rescan's own thread", rescan_own_cpu, "CPU-s"),
        Figure(
            "full sweep (an lstat each: every 10th rescan, and at shutdown)",
            float(swept[-1][2]) if swept else float("nan"),
            "CPU-s",
        ),
        Figure("RSS with them tracked", rss, "MiB"),
    ]
