"""Write → object visible, over rewrites of one file, and the PUTs a rewrite storm costs.

"Visible" is the moment the server's answer to the PUT of exactly those bytes passes an
HTTP proxy in front of it (from then on every reader gets them), so the figure is not
blurred by a reader polling with GETs. The same proxy and server give the ceiling: a bare
PUT of the same body through the same client. The first change of a quiet file goes at
once (leading edge); a busy file is read at most once per debounce (50 ms), so a storm
costs no more PUTs than the trailing 50 ms debounce did before.

Measured on SeaweedFS (a real S3 server; the target is set there), with moto's figures
beside it: moto's Python server alone takes longer than the target per PUT."""

from __future__ import annotations

import json
import time

from tests.support.httpproxy import HttpProxy

from bench.harness import Context, Figure, percentile, sidecar
from runlog_relay.objectstore import ObjectStore

NAME = "latency"
SUMMARY = "write -> visible (leading edge), and PUTs under a rewrite storm"
DEBOUNCE = 0.05


def run(ctx: Context) -> list[Figure]:
    seaweedfs = ctx.seaweedfs
    figures = _measure(ctx, seaweedfs.port, seaweedfs.endpoint, "SeaweedFS", targets=True)
    return figures + _measure(ctx, ctx.server.port, ctx.endpoint, "moto", targets=False)


def _measure(ctx: Context, port: int, endpoint: str, server: str, *, targets: bool) -> list[Figure]:
    source = ctx.folder("latency-tree")
    path = source / "run-latency" / "RunLog.json"
    path.parent.mkdir()
    path.write_text("{}")
    bucket = ctx.bucket(endpoint)
    proxy = HttpProxy(port)
    rewrites = ctx.size(200, 10)
    try:
        store = ObjectStore(
            endpoint=proxy.endpoint,
            bucket=bucket,
            prefix="",
            access_key="minioadmin",
            secret_key="minioadmin",
        )
        bare = []
        for index in range(rewrites):
            body = json.dumps({"bare": index, "pad": "y" * 2048}, indent=4).encode()
            started = time.perf_counter()
            store.put("bare/RunLog", body)
            bare.append((time.perf_counter() - started) * 1000)
        with sidecar(source, proxy.endpoint, bucket, ctx.work / f"latency-{server}.log") as process:
            process.wait_ready(120)
            samples = []
            for index in range(rewrites):
                body = json.dumps({"rewrite": index, "pad": "y" * 2048}, indent=4).encode()
                time.sleep(0.1)  # a quiet file: each rewrite is a first change
                since = len(proxy.landed)
                written = time.monotonic()
                with open(path, "wb") as handle:
                    handle.write(body)
                landed = proxy.wait_landed(body, since=since)
                samples.append((landed - written) * 1000)
            storm_seconds = ctx.size(5, 1)
            before = process.metric("runlog_relay_uploads_total", result="success")
            started = time.monotonic()
            count = 0
            while time.monotonic() - started < storm_seconds:
                with open(path, "w") as handle:
                    json.dump({"storm": count}, handle)
                count += 1
            final = path.read_bytes()
            proxy.wait_landed(final)
            puts = process.metric("runlog_relay_uploads_total", result="success") - before
    finally:
        proxy.close()
    bound = storm_seconds / DEBOUNCE + 2  # what the 50 ms trailing debounce allowed
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    ceiling = percentile(bare, 50)
    return [
        Figure(f"{server}: bare PUT of the same body (ceiling), p50", ceiling, "ms"),
        Figure(
            f"{server}: write -> visible p50, {len(samples)} rewrites",
            p50,
            "ms",
            "<= 15 ms" if targets else "",
            p50 <= 15 if targets else None,
            note=f"{p50 / ceiling:.2f}x the bare PUT",
        ),
        Figure(
            f"{server}: write -> visible p95",
            p95,
            "ms",
            "< 150 ms" if targets else "",
            p95 < 150 if targets else None,
        ),
        Figure(f"{server}: rewrites in a {storm_seconds} s storm", count, ""),
        Figure(
            f"{server}: PUTs for the storm",
            puts,
            "",
            f"<= {bound:.0f} (once per debounce)",
            puts <= bound,
        ),
    ]
