"""A restart over a synced 2,000-file tree, counted on the wire (a proxy in between):
nothing differs, so no PUT and no HEAD; the listing is one request per 1,000 objects."""

from __future__ import annotations

from tests.support.sidecar import start_sidecar
from tests.support.tcpproxy import TcpProxy

from bench.harness import IMAGE_ENV, Context, Figure, write_tree

NAME = "restart"
SUMMARY = "restart over a synced tree: requests on the wire"


def run(ctx: Context) -> list[Figure]:
    source = ctx.folder("restart-tree")
    write_tree(source, runs=ctx.size(100, 5), per_run=20, seed=3)
    bucket = ctx.bucket()
    # The image's environment, as every other scenario's sidecar runs (bytecode, malloc).
    image = dict(IMAGE_ENV)
    first = start_sidecar(
        source, ctx.endpoint, bucket, ctx.work / "restart-1.log", "--once", env=image
    )
    assert first.process.wait(600) == 0, first.log
    proxy = TcpProxy(ctx.server.port)
    try:
        again = start_sidecar(
            source, proxy.endpoint, bucket, ctx.work / "restart-2.log", "--once", env=image
        )
        assert again.process.wait(600) == 0, again.log
        counts = dict(proxy.counts)
    finally:
        proxy.close()
    puts, heads, gets = counts.get("PUT", 0), counts.get("HEAD", 0), counts.get("GET", 0)
    # 100 runs are listed with one listing (2 pages) plus the bucket's location; a toy
    # tree of 5 runs is listed one prefix each.
    most = 5 if not ctx.toy else 6
    return [
        Figure("PUT requests", puts, "requests", "0", puts == 0),
        Figure("HEAD requests", heads, "requests", "0", heads == 0),
        Figure("GET requests (listings)", gets, "requests", f"<= {most}", gets <= most),
    ]
