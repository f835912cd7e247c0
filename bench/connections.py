"""The metrics/health port under a flood: 2,000 idle connections (half of them with a
half-sent request) held open, then the sidecar's memory, threads and probe latency."""

from __future__ import annotations

import resource
import socket
import time
import urllib.request
from pathlib import Path

from bench.harness import Context, Figure, percentile, rss_mib, sidecar

NAME = "connections"
SUMMARY = "2,000 idle connections on the metrics port"


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def run(ctx: Context) -> list[Figure]:
    count = ctx.size(2000, 50)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 256)), hard))
    source = ctx.folder("connections-tree")
    (source / "r").mkdir()
    (source / "r" / "RunLog.json").write_text("{}")
    with sidecar(source, ctx.endpoint, ctx.bucket(), ctx.work / "connections.log") as process:
        process.wait_ready(120)
        pid = process.process.pid
        before = threads(pid)
        sockets = []
        try:
            for index in range(count):
                sock = socket.create_connection(("127.0.0.1", process.metrics_port or 0))
                if index % 2:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                sockets.append(sock)
            time.sleep(1.0)
            probes = []
            for _ in range(20):
                started = time.perf_counter()
                with urllib.request.urlopen(process.url("/readyz"), timeout=10) as answer:
                    assert answer.status == 200
                probes.append((time.perf_counter() - started) * 1000)
            rss, during = rss_mib(pid), threads(pid)
        finally:
            for sock in sockets:
                sock.close()
    p95 = percentile(probes, 95)
    return [
        Figure(f"RSS with {count:,} idle connections", rss, "MiB", "< 128 MiB", rss < 128),
        Figure("threads added by them", during - before, "", "0", during == before),
        Figure("/readyz answer, p95", p95, "ms", "< 1000 ms", p95 < 1000),
    ]
