"""``runlog-relay sidecar``: argv → settings → logs/metrics/health → pipeline.

Exit codes: 0 the bucket mirrors the folder; 1 it does not (each problem on its own
line on stderr); 2 invalid settings or usage.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from runlog_relay import logs
from runlog_relay.cliopts import add_store_options, open_store, overrides_from_args
from runlog_relay.config.models import SyncSpec
from runlog_relay.config.settings import (
    DEFAULT_METRICS_PORT,
    ENV_PREFIX,
    SidecarSettings,
    load_sidecar_settings,
)
from runlog_relay.errors import ConfigError
from runlog_relay.health import HealthServer
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.pipeline import DrainReport, Pipeline, source_problem
from runlog_relay.sidecar.podwork import PodWork
from runlog_relay.sidecar.reload import ConfigWatcher

__all__ = ["register", "run"]

log = logging.getLogger("runlog_relay.sidecar")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2

#: option dest → SyncSpec field, for the tuning options.
_SYNC_OPTIONS = {
    "debounce": "debounce_seconds",
    "rescan_interval": "rescan_interval_seconds",
    "concurrency": "concurrency",
    "force_polling": "force_polling",
    "poll_interval": "poll_interval_seconds",
    "torn_grace": "torn_grace_seconds",
    "drain_timeout": "drain_timeout_seconds",
    "permanent_retry": "permanent_error_retry_seconds",
    "max_pending_bytes": "max_pending_bytes",
    "max_file_size": "max_file_bytes",
}


#: flag, argparse dest (a key of _SYNC_OPTIONS), type, help text.
_TUNING_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--debounce", "debounce", float, "coalesce bursts of writes to a file for at most this long"),
    (
        "--rescan-interval",
        "rescan_interval",
        float,
        "full rescan as a safety net for missed events",
    ),
    ("--concurrency", "concurrency", int, "uploads in flight at once"),
    (
        "--force-polling",
        "force_polling",
        bool,
        "poll instead of inotify (NFS, CIFS, some CSI volumes)",
    ),
    ("--poll-interval", "poll_interval", float, "polling period with --force-polling"),
    ("--torn-grace", "torn_grace", float, "report a file that stays half-written longer than this"),
    (
        "--drain-timeout",
        "drain_timeout",
        float,
        "on SIGTERM, keep uploading pending files this long",
    ),
    (
        "--permanent-retry",
        "permanent_retry",
        float,
        "after a permanent error (AccessDenied, NoSuchBucket), try the store again this often",
    ),
    (
        "--max-pending-bytes",
        "max_pending_bytes",
        int,
        "file contents held in memory waiting for upload or streaming; the reader waits beyond it",
    ),
    (
        "--max-file-size",
        "max_file_size",
        int,
        "largest file mirrored, in bytes; a bigger one is refused, counted and named at exit",
    ),
)


def _tuning_help(text: str, dest: str) -> str:
    """A tuning option's help with its variable and default, both taken from SyncSpec."""
    field = _SYNC_OPTIONS[dest]
    default = SyncSpec.model_fields[field].default
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, int):
        shown = str(default)
    else:
        shown = f"{default:g}"
    return f"{text} (env {ENV_PREFIX}SYNC__{field.upper()}; default {shown})"


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help=summary,
        description="Watch a runnable run-log folder (chunked-fs or file-system store) and"
        " keep an exact mirror of it in an S3/MinIO bucket, in the layout runnable's"
        " chunked-minio (or minio) store reads. Never deletes objects.",
        epilog="Every option can also be set as a RUNLOG_RELAY_* environment variable"
        " (nested ones with __, e.g. RUNLOG_RELAY_SYNC__DEBOUNCE_SECONDS) or as a key in the"
        " --config YAML file. Exit codes: 0 mirror complete, 1 not complete (one line per"
        " problem), 2 invalid settings.",
    )
    parser.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help=f"the folder runnable writes run logs to (its log_folder); it may not exist yet"
        f" (env {ENV_PREFIX}SOURCE; required)",
    )
    add_store_options(parser)
    parser.add_argument(
        "--create-bucket",
        action="store_const",
        const=True,
        help=f"create the bucket if it does not exist (env {ENV_PREFIX}CREATE_BUCKET)",
    )
    parser.add_argument(
        "--run-id",
        dest="run_ids",
        action="append",
        metavar="ID",
        help=f"mirror only this run (repeatable), and list only its prefix in the bucket"
        f" (env {ENV_PREFIX}RUN_IDS, comma-separated; default every run)",
    )
    runs = parser.add_argument_group(
        "finished runs",
        "What the sidecar does once a run's RunLog is final and every file of the run is"
        " verified in the bucket (the run is *sealed*).",
    )
    runs.add_argument(
        "--tag-sealed-runs",
        action="store_const",
        const=True,
        help=f"tag each object of a sealed run runlog-relay/status=<SUCCESS|FAIL>, for bucket"
        f" lifecycle rules (env {ENV_PREFIX}TAG_SEALED_RUNS; needs s3:PutObjectTagging)",
    )
    runs.add_argument(
        "--exit-when-sealed",
        action="store_const",
        const=True,
        help=f"exit 0 once the pod's runs (--run-id) are sealed and the pod's work is done,"
        f" so a Job whose sidecar is a plain container completes"
        f" (env {ENV_PREFIX}EXIT_WHEN_SEALED)",
    )
    runs.add_argument(
        "--retain-local",
        metavar="DURATION",
        help=f"delete a sealed run from the volume DURATION (90s, 12h, 7d, 1h30m) after its"
        f" seal, after checking the bucket again; needs a writable volume"
        f" (env {ENV_PREFIX}LOCAL_RETENTION__DELETE_AFTER; default never)",
    )
    runs.add_argument(
        "--retain-local-dry-run",
        action="store_const",
        const=True,
        help=f"with --retain-local, only log and count what would be deleted"
        f" (env {ENV_PREFIX}LOCAL_RETENTION__DRY_RUN)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="reconcile the whole folder with the bucket, upload what differs, and exit: 0"
        " when the bucket mirrors the folder, 1 otherwise; it gives up after the drain"
        " timeout (at least 60 s) without any progress",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help=f"port for /metrics, /healthz, /readyz (env {ENV_PREFIX}METRICS_PORT; default"
        f" {DEFAULT_METRICS_PORT}; 0 picks a free port)",
    )
    parser.add_argument(
        "--metrics-host",
        metavar="ADDR",
        help=f"address to serve metrics on (env {ENV_PREFIX}METRICS_HOST; default 0.0.0.0)",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"DEBUG, INFO, WARNING, ERROR (env {ENV_PREFIX}LOG_LEVEL; default INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=["plain", "json"],
        help=f"plain for people, json lines for log pipelines (env {ENV_PREFIX}LOG_FORMAT;"
        " default plain)",
    )
    tuning = parser.add_argument_group(
        "sync tuning", f"Also as {ENV_PREFIX}SYNC__<FIELD> variables or the config's sync: map."
    )
    for flag, dest, kind, text in _TUNING_OPTIONS:
        if kind is bool:
            tuning.add_argument(
                flag, dest=dest, action="store_const", const=True, help=_tuning_help(text, dest)
            )
        else:
            metavar = "SECONDS" if kind is float else ("BYTES" if "bytes" in text else "N")
            tuning.add_argument(
                flag, dest=dest, type=kind, metavar=metavar, help=_tuning_help(text, dest)
            )
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    sync = {
        field: getattr(args, dest)
        for dest, field in _SYNC_OPTIONS.items()
        if getattr(args, dest) is not None
    }
    extra: dict[str, Any] = {
        "source": args.source,
        "create_bucket": args.create_bucket,
        "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "run_ids": tuple(args.run_ids) if args.run_ids else None,
        "tag_sealed_runs": args.tag_sealed_runs,
        "exit_when_sealed": args.exit_when_sealed,
    }
    retention = {
        field: value
        for field, value in (
            ("delete_after", args.retain_local),
            ("dry_run", args.retain_local_dry_run),
        )
        if value is not None
    }
    if retention:
        extra["local_retention"] = retention
    if sync:
        extra["sync"] = sync
    return overrides_from_args(args, **extra)


def _settings(overrides: dict[str, Any], config_file: Path | None) -> SidecarSettings:
    settings = load_sidecar_settings(overrides, config_file)
    if settings.source is None:
        raise ConfigError(f"--source (or {ENV_PREFIX}SOURCE) is required")
    # A missing credentials or SSE-C key file is a start-up error, not a crash later.
    settings.credentials()
    settings.encryption()
    return settings


def run(args: argparse.Namespace) -> int:
    # When this process started: with --exit-when-sealed, a retried run's final RunLog
    # written after it is this pod's.
    args.started_at = time.time()
    overrides = _overrides(args)
    waiting: list[Path] = []
    try:
        settings: SidecarSettings | None = _settings(overrides, args.config)
    except ConfigError as exc:
        # A ConfigMap or Secret that does not exist yet (optional volumes, GitOps
        # ordering) is worth waiting for; anything else is a usage error.
        waiting = (
            [] if args.once or args.config is None else _missing_mounts(args.config, overrides)
        )
        if not waiting:
            print(f"runlog-relay sidecar: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        settings = None
    if settings is not None:
        assert settings.source is not None
        problem = source_problem(settings.source)
        # A file where the folder should be is a mistake to fix; a folder that does not
        # exist yet is normal for a long-running sidecar (runnable creates it), but not
        # for --once, which has nothing to reconcile.
        if problem is not None and (args.once or settings.source.exists()):
            print(f"runlog-relay sidecar: error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    if args.once:
        assert settings is not None
        logs.configure(settings.log_level, settings.log_format.value)
        pipeline = Pipeline(settings, SidecarMetrics(CollectorRegistry()), open_store, once=True)
        log.info("starting: %s", settings.describe())
        return _finish(pipeline.run_once(timeout=once_budget(settings)))
    return _serve(args, overrides, settings, waiting)


def once_budget(settings: SidecarSettings) -> float:
    """``--once`` gives up after this long without progress."""
    return max(settings.sync.drain_timeout_seconds, 60.0)


class _Probes:
    """What /healthz and /readyz report; replaced as the process moves from waiting for
    its mounted files to running the pipeline."""

    def __init__(self, waiting_for: str) -> None:
        self.live: Callable[[], tuple[bool, str]] = lambda: (True, "")
        self.ready: Callable[[], tuple[bool, str]] = _not_ready(waiting_for)


def _serve(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    settings: SidecarSettings | None,
    waiting: list[Path],
) -> int:
    # Until the config is there, serve health on the address the command line and
    # environment give (the config file cannot be read yet).
    early = settings or load_sidecar_settings({k: v for k, v in overrides.items() if k != "source"})
    logs.configure(early.log_level, early.log_format.value)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    probes = _Probes("waiting for " + ", ".join(str(p) for p in waiting))
    try:
        server = HealthServer(
            registry,
            live=lambda: probes.live(),
            ready=lambda: probes.ready(),
            host=early.metrics_host,
            port=early.metrics_port,
        )
    except OSError as exc:
        print(
            f"runlog-relay sidecar: error: cannot serve metrics on {early.metrics_host}:"
            f"{early.metrics_port}: {exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    server.start()
    log.info("serving /metrics, /healthz, /readyz on port %d", server.port)
    try:
        if settings is None:
            settings = _wait_for_mounts(args.config, overrides, stop, probes)
            if settings is None:
                log.error("stopped before the config and credentials appeared; nothing mirrored")
                return EXIT_INCOMPLETE
            logs.configure(settings.log_level, settings.log_format.value)
            if (settings.metrics_host, settings.metrics_port) != (
                early.metrics_host,
                early.metrics_port,
            ):
                log.warning("the config file's metrics address takes effect at the next restart")
        return _run_pipeline(args, overrides, settings, metrics, probes, stop)
    finally:
        server.stop()


def _run_pipeline(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    settings: SidecarSettings,
    metrics: SidecarMetrics,
    probes: _Probes,
    stop: threading.Event,
) -> int:
    pipeline = Pipeline(settings, metrics, open_store)
    log.info("starting: %s", settings.describe())

    def ready() -> tuple[bool, str]:
        assert pipeline.settings.source is not None
        problem = source_problem(pipeline.settings.source)
        if problem is not None:
            return False, f"{problem} (waiting for it)"
        health = pipeline.store_health
        if not pipeline.synced_once:
            return False, health.problem or health.outage or "first sync not finished"
        if not health.ok:
            return False, health.problem or "object store not ready"
        watch_problem = pipeline.watcher.problem if pipeline.watcher is not None else None
        if watch_problem:
            return False, watch_problem
        return True, ""

    probes.live = lambda: (pipeline.alive, "a sidecar stage stopped")
    probes.ready = ready
    watcher = None
    if args.config is not None:
        # The mounted ConfigMap/Secret may change under us: apply valid changes live.
        watcher = ConfigWatcher(
            args.config,
            pipeline.reconfigure,
            overrides=overrides,
            initial=settings,
            metrics=metrics,
        )
    podwork = _pod_work(settings, pipeline, stop, started_at=args.started_at)
    pipeline.start()
    if watcher is not None:
        watcher.start()
    while not stop.wait(1.0):
        if podwork is not None and podwork.stuck(
            _seal_problems(pipeline, settings.run_ids), settings.sync.drain_timeout_seconds
        ):
            log.error("the pod's work is done but its runs cannot be sealed: draining")
            break
    if watcher is not None:
        watcher.stop()
    return _finish(pipeline.shutdown())


def _pod_work(
    settings: SidecarSettings, pipeline: Pipeline, stop: threading.Event, *, started_at: float
) -> PodWork | None:
    """``--exit-when-sealed``: what tells the main loop that the pod's work is done."""
    if not settings.exit_when_sealed:
        return None
    if not settings.run_ids:
        log.warning(
            "--exit-when-sealed needs the pod's run ids (--run-id, %sRUN_IDS) to tell its"
            " runs from others: without them this sidecar exits only when stopped",
            ENV_PREFIX,
        )
        return None
    podwork = PodWork(
        settings.run_ids,
        retry_run_id=settings.retry_run_id,
        on_finished=stop.set,
        started_at=started_at,
    )
    pipeline.sealer.observers.append(podwork)
    log.info(
        "exiting once runs %s are sealed and the pod's work on them is done",
        ", ".join(settings.run_ids),
    )
    return podwork


def _seal_problems(pipeline: Pipeline, run_ids: tuple[str, ...]) -> dict[str, str]:
    """What keeps the pod's runs from being sealed that waiting will not fix."""
    problems: dict[str, str] = {}
    for run_id in run_ids:
        ledger = pipeline.detector.run_ledger(run_id)
        if ledger is not None:
            problems.update(ledger.problems)
    if pipeline.store_health.problem:
        problems["object store"] = pipeline.store_health.problem
    return problems


def _missing_mounts(config: Path, overrides: dict[str, Any]) -> list[Path]:
    """Files the settings need that do not exist (yet): the config file itself, or the
    credential and CA files it names. Empty when the problem is something else."""
    if not config.exists():
        return [config]
    try:
        settings = load_sidecar_settings(overrides, config)
    except ConfigError:
        return []
    return [path for path in settings.mounted_files() if not path.exists()]


def _not_ready(reason: str) -> Callable[[], tuple[bool, str]]:
    return lambda: (False, reason)


def _wait_for_mounts(
    config: Path, overrides: dict[str, Any], stop: threading.Event, probes: _Probes
) -> SidecarSettings | None:
    """Block until the mounted files exist and load; None when asked to stop first.

    Native sidecars must start for the pod's other containers to start, so waiting here
    (rather than exiting) lets the pipeline run, and the mirror catch up, as soon as the
    kubelet delivers the ConfigMap or Secret."""
    reported = ""
    while not stop.wait(1.0):
        missing = _missing_mounts(config, overrides)
        if missing:
            problem = "waiting for " + ", ".join(str(p) for p in missing)
        else:
            try:
                return _settings(overrides, config)
            except ConfigError as exc:
                problem = str(exc)  # present but invalid: wait for a fixed version
        probes.ready = _not_ready(problem)
        if problem != reported:
            log.warning("not mirroring yet: %s", problem)
            reported = problem
    return None


def _finish(report: DrainReport) -> int:
    if report.complete:
        log.info("mirror complete")
        return EXIT_OK
    for line in report.lines():
        print(f"runlog-relay sidecar: {line}", file=sys.stderr)
    log.error(
        "mirror incomplete: %d file(s) not mirrored%s",
        len(report.files),
        f"; {report.source}" if report.source else "",
    )
    return EXIT_INCOMPLETE
