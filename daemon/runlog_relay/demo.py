"""``runlog-relay demo``: the whole job on one machine, with an embedded default.

Starts a local S3-compatible endpoint (moto's server, from the ``demo`` extra) on
127.0.0.1, runs the sidecar on a fresh folder, runs a small real runnable pipeline
(a parallel node and a map) into that folder, waits for the sidecar to seal the finished
run (its own report: the seal, the lag, the objects it tagged), stops the sidecar the way
Kubernetes does (drain on shutdown), then shows the run's objects in the bucket, proves
runnable's own chunked-minio (or minio) store reads the run back identical to what its
filesystem store reads, shows the sealed run and its timeline as ``runlog-relay show``
draws it from the bucket (the seal read back from the objects' tag), and prints the key
metrics. Everything it starts and creates is removed at
the end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from runlog_relay import logs
from runlog_relay.cliopts import open_store
from runlog_relay.config.settings import SidecarSettings, load_sidecar_settings
from runlog_relay.errors import RelayError
from runlog_relay.health import HealthServer
from runlog_relay.layout import Layout
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.pipeline import Pipeline
from runlog_relay.tools._common import StoreContext, stdout_console
from runlog_relay.tools.runfetch import fetch_run
from runlog_relay.tools.show import render_run

__all__ = ["register", "run"]

DEMO_BUCKET = "runnable/run-logs"
#: The run is sealed about a second after it ends (the sidecar waits for a quiet second).
SEAL_TIMEOUT_SECONDS = 30.0
DEMO_CREDENTIAL = "minioadmin"
SHOWN_METRICS = (
    ("runlog_relay_fs_events_total", "filesystem events seen"),
    ("runlog_relay_fs_versions_total", "complete file versions read"),
    ("runlog_relay_fs_write_bytes_total", "bytes of new versions (write activity)"),
    ("runlog_relay_uploads_total", "uploads"),
    ("runlog_relay_upload_bytes_total", "bytes uploaded"),
    ("runlog_relay_torn_reads_total", "torn reads (half-written files skipped)"),
    ("runlog_relay_retries_total", "retries"),
    ("runlog_relay_pending_files", "files pending now"),
    ("runlog_relay_runs_tracked", "runs tracked"),
    ("runlog_relay_runs_sealed_total", "runs sealed"),
    ("runlog_relay_object_tagging_total", "objects tagged"),
)
SHOWN_MEANS = (
    ("runlog_relay_sync_lag_seconds", "mean sync lag (change seen → in bucket)"),
    ("runlog_relay_run_seal_lag_seconds", "seal lag (final status seen → sealed)"),
)


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "demo",
        help=summary,
        description="Run the whole job locally with nothing else installed: a local S3"
        " server on 127.0.0.1, the sidecar, and a real runnable pipeline (parallel + map)."
        " Shows the mirrored objects, reads the run back with runnable's own S3 store and"
        " prints the metrics. Needs the demo extra: pip install 'runlog-relay[demo]'.",
    )
    parser.add_argument(
        "--layout",
        choices=[layout.value for layout in Layout],
        default="chunked",
        help="chunked (chunked-fs → chunked-minio, default) or single (file-system → minio)",
    )
    parser.add_argument(
        "--run-id", default=None, help="run id for the pipeline (default: generated)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run-log folder afterwards")
    parser.add_argument("--verbose", action="store_true", help="show the sidecar's own log lines")
    parser.set_defaults(handler=run)


def _say(message: str) -> None:
    print(message, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        from moto.server import ThreadedMotoServer

        from runlog_relay import runnable_compat
    except ImportError as exc:
        print(
            f"runlog-relay demo: needs the demo extra ({exc.name} is missing):"
            " pip install 'runlog-relay[demo]'",
            file=sys.stderr,
        )
        return 2
    logs.configure("INFO" if args.verbose else "WARNING")
    # moto's werkzeug server logs every request; the demo prints its own summary.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    layout = Layout(args.layout)
    run_id = args.run_id or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir = Path(tempfile.mkdtemp(prefix="runlog-relay-demo-"))
    folder = workdir / "run_logs"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        _say(f"1. Local S3 endpoint (moto) on {endpoint}; bucket {DEMO_BUCKET}")
        settings = load_sidecar_settings(
            {
                "source": folder,
                "endpoint": endpoint,
                "bucket": DEMO_BUCKET,
                "layout": layout,
                "create_bucket": True,
                "access_key_id": DEMO_CREDENTIAL,
                "secret_access_key": DEMO_CREDENTIAL,
                "metrics_host": "127.0.0.1",
                "metrics_port": 0,
                # moto keeps object tags: the seal becomes visible in the bucket too.
                "tag_sealed_runs": True,
            }
        )
        registry = CollectorRegistry()
        pipeline = Pipeline(settings, SidecarMetrics(registry), open_store)
        health = HealthServer(
            registry,
            live=lambda: (pipeline.alive, "stage stopped"),
            ready=lambda: (pipeline.synced_once and pipeline.store_health.ok, "not ready"),
            host="127.0.0.1",
            port=0,
        )
        health.start()
        pipeline.start()
        if not pipeline.wait_synced(30):
            _say(f"   the sidecar could not reach the bucket: {pipeline.store_health.problem}")
            return 1
        _say(f"2. Sidecar watching {folder} (metrics on http://127.0.0.1:{health.port}/metrics)")
        _say(
            f"3. Running a runnable pipeline (parallel + map, {layout.value} layout),"
            f" run id {run_id} ..."
        )
        started = time.monotonic()
        runnable_compat.run_pipeline(folder, run_id, layout=layout.value, workdir=workdir / "work")
        _say(f"   pipeline finished in {time.monotonic() - started:.1f}s")
        sealed = _wait_for_seal(pipeline, run_id)
        report = pipeline.shutdown()
        _say(
            "5. Sidecar drained on shutdown: "
            + ("mirror complete" if report.complete else "INCOMPLETE")
        )
        for line in report.lines():
            _say(f"   {line}")
        metrics_text = _scrape(health.port)
        health.stop()
        store = open_store(settings)
        _say(f"6. Objects in s3://{DEMO_BUCKET}/{run_id}/ :")
        for obj in sorted(store.list(f"{run_id}/"), key=lambda o: o.key):
            _say(f"   {settings.prefix}/{obj.key:<48} {obj.size:>7} bytes")
        # runnable greets on import; keep the demo's output to its own numbered steps.
        with contextlib.redirect_stdout(io.StringIO()):
            from_bucket = runnable_compat.read_run_log_from_bucket(
                endpoint, DEMO_CREDENTIAL, DEMO_CREDENTIAL, DEMO_BUCKET, run_id, layout=layout.value
            )
            from_folder = runnable_compat.read_run_log_from_folder(
                folder, run_id, layout=layout.value
            )
        store_name = "chunked-minio" if layout is Layout.CHUNKED else "minio"
        same = from_bucket == from_folder
        _say(
            f"7. runnable's own {store_name} store read the run back: status"
            f" {from_bucket.get('status')}, {len(from_bucket.get('steps', {}))} steps,"
            f" {'identical to' if same else 'DIFFERENT FROM'} what its filesystem store reads"
        )
        shown = _show_run(settings, run_id)
        _say("9. Key metrics:")
        for line in _metric_lines(metrics_text):
            _say(f"   {line}")
        ok = report.complete and same and shown and sealed
        _say(
            "Done: " + ("the bucket mirrors the run exactly, sealed." if ok else "problems above.")
        )
        return 0 if ok else 1
    finally:
        server.stop()
        if args.keep:
            _say(f"Kept the run-log folder: {folder}")
            shutil.rmtree(workdir / "work", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            _say("Cleaned up: S3 server stopped, temporary folder removed.")


def _wait_for_seal(pipeline: Pipeline, run_id: str) -> bool:
    """Step 4: the sidecar's own word that the run is sealed (what its log line says)."""
    seal = pipeline.sealer.wait_sealed(run_id, SEAL_TIMEOUT_SECONDS)
    if seal is None:
        _say(f"4. The sidecar did not seal run {run_id} within {SEAL_TIMEOUT_SECONDS:.0f}s")
        return False
    _say(
        f"4. The sidecar sealed the run: {seal.status}, {len(seal.files)} files verified in"
        f" the bucket by one listing, {seal.lag_seconds:.2f}s after its final status;"
        f" {seal.tagged} objects tagged runlog-relay/status={seal.status}"
    )
    return seal.status == "SUCCESS" and seal.tagged == len(seal.objects)


def _show_run(settings: SidecarSettings, run_id: str) -> bool:
    """Step 8: the sealed run as ``runlog-relay show`` draws it, read back from the bucket
    (the seal too: from the RunLog object's tag)."""
    _say(f"8. The sealed run from the bucket (runlog-relay show {run_id}):")
    try:
        run = fetch_run(StoreContext(settings=settings, store=open_store(settings)), run_id)
    except RelayError as exc:
        _say(f"   could not read the run back: {exc}")
        return False
    render_run(run, stdout_console())
    return run.status == "SUCCESS" and run.sealed == "SUCCESS"


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _metric_lines(text: str) -> list[str]:
    values: dict[str, list[tuple[dict[str, str], float]]] = {}
    means: dict[str, tuple[float, float]] = {}  # histogram → (count, sum)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, []).append((sample.labels, sample.value))
        if family.name in dict(SHOWN_MEANS):
            count = sum(s.value for s in family.samples if s.name.endswith("_count"))
            total = sum(s.value for s in family.samples if s.name.endswith("_sum"))
            means[family.name] = (count, total)
    lines = []
    for name, description in SHOWN_METRICS:
        for labels, value in values.get(name, []):
            if value == 0 and labels:
                continue  # a label value that did not happen (FAIL, failure, ...)
            suffix = "".join(f" {k}={v}" for k, v in labels.items())
            lines.append(f"{description:<44} {value:>10.0f}{suffix}")
    for name, description in SHOWN_MEANS:
        count, total = means.get(name, (0.0, 0.0))
        if count:
            lines.append(f"{description:<44} {total / count * 1000:>8.0f}ms")
    return lines
