"""Big run logs mirrored in bounded memory: peak RSS of the sidecar process while it
reads, checks and uploads one 16 MiB and one 64 MiB run log, in both layouts (the single
layout re-encodes the body as a JSON string, so its body is bigger than the file)."""

from __future__ import annotations

from bench.harness import Context, Figure, peak_rss_mib, run_log_document, sidecar, wait_until
from runlog_relay.layout import Layout
from runlog_relay.stableread import read_stable

NAME = "bigfiles"
SUMMARY = "16 MiB and 64 MiB run logs: peak RSS"
LIMIT_MIB = 128


def run(ctx: Context) -> list[Figure]:
    figures = []
    cases = [(16, Layout.CHUNKED), (64, Layout.CHUNKED), (64, Layout.SINGLE)]
    for mib, layout in cases:
        size = ctx.size(mib, 1) * 1024 * 1024
        text = run_log_document(size)
        source = ctx.folder(f"big-{mib}-{layout.value}")
        if layout is Layout.CHUNKED:
            path = source / "big-run" / "RunLog.json"
            path.parent.mkdir()
            key = "big-run/RunLog"
        else:
            path = source / "big-run.json"
            key = "big-run/big-run.json"
        path.write_text(text)
        del text
        expected = read_stable(path, layout=layout, keep_body=0).etag
        bucket = ctx.bucket()
        client = ctx.client()
        log = ctx.work / f"big-{mib}-{layout.value}.log"
        with sidecar(source, ctx.endpoint, bucket, log, "--layout", layout.value) as process:
            wait_until(
                lambda: (
                    process.metric("runlog_relay_uploads_total", result="success") >= 1
                    and process.metric("runlog_relay_pending_files") == 0
                ),
                timeout=600,
                interval=0.2,
            )
            peak = peak_rss_mib(process.process.pid)
        etag = (client.stat_object(bucket, key).etag or "").strip('"')
        assert etag == expected, (etag, expected)  # the bytes uploaded are the bytes checked
        figures.append(
            Figure(
                f"{mib} MiB run log ({layout.value}): peak RSS",
                peak,
                "MiB",
                f"< {LIMIT_MIB} MiB",
                peak < LIMIT_MIB,
            )
        )
    return figures
