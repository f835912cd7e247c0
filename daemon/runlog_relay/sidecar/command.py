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

from runlog_relay import logs
from runlog_relay.cliopts import add_sidecar_options, config_path, open_store, overrides_from_args
from runlog_relay.config.settings import (
    ENV_PREFIX,
    SidecarSettings,
    load_sidecar_settings,
    unknown_variables,
)
from runlog_relay.errors import ConfigError
from runlog_relay.exitcodes import ExitCode, epilog
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.objectstore import tls_context
from runlog_relay.sidecar.pipeline import DrainReport, Pipeline, source_problem
from runlog_relay.sidecar.podwork import PodWork
from runlog_relay.sidecar.reload import ConfigWatcher
from runlog_relay.sidecar.shard import placement

__all__ = ["register", "run"]

log = logging.getLogger("runlog_relay.sidecar")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = ExitCode.OK, ExitCode.NOT_DONE, ExitCode.USAGE


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help=summary,
        usage="%(prog)s --source DIR [options]",
        description="Watch a runnable run-log folder (chunked-fs or file-system store) and"
        " keep an exact mirror of it in an S3/MinIO bucket, in the layout runnable's"
        " chunked-minio (or minio) store reads. Never deletes objects.",
        epilog=f"Every option is also the {ENV_PREFIX}* variable and the config-file key"
        " named in its help (a group's field is VARIABLE__FIELD in the environment and"
        " group: {field: ...} in the file; camelCase or snake_case keys). Secret values are"
        f" variables only ({ENV_PREFIX}SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY, ...; a"
        " flag would show in ps), and --config is also RUNLOG_RELAY_CONFIG. Precedence:"
        " options, variables, the file, defaults. An unknown RUNLOG_RELAY_* variable is"
        " ignored with a warning. " + epilog("sidecar"),
    )
    add_sidecar_options(parser)
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return overrides_from_args(args)


def _wants_once(overrides: dict[str, Any]) -> bool:
    """``once`` when the settings cannot be loaded (yet): the option, else the environment."""
    if "once" in overrides:
        return bool(overrides["once"])
    try:
        return load_sidecar_settings().once
    except ConfigError:
        return False


def _settings(overrides: dict[str, Any], config_file: Path | None) -> SidecarSettings:
    settings = load_sidecar_settings(overrides, config_file)
    if settings.source is None:
        raise ConfigError(f"--source (or {ENV_PREFIX}SOURCE) is required")
    # A missing credentials or SSE-C key file is a start-up error, not a crash later.
    settings.credentials()
    settings.encryption()
    if settings.tls.ca_file is not None:  # missing, a folder, not PEM: a usage error now
        tls_context(
            ca_file=str(settings.tls.ca_file),
            insecure_skip_verify=settings.tls.insecure_skip_verify,
        )
    if settings.shard.group:
        placement(settings.shard)  # scale-out: who and where, or what is missing
    return settings


def run(args: argparse.Namespace) -> int:
    # When this process started: with --exit-when-sealed, a retried run's final RunLog
    # written after it is this pod's.
    args.started_at = time.time()
    args.config = config_path(args)
    overrides = _overrides(args)
    waiting: list[Path] = []
    try:
        settings: SidecarSettings | None = _settings(overrides, args.config)
    except ConfigError as exc:
        # A ConfigMap or Secret that does not exist yet (optional volumes, GitOps
        # ordering) is worth waiting for; anything else is a usage error.
        once = _wants_once(overrides)
        waiting = [] if once or args.config is None else _missing_mounts(args.config, overrides)
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
        if problem is not None and (settings.once or settings.source.exists()):
            print(f"runlog-relay sidecar: error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    if settings is not None and settings.once:
        if settings.shard.group:
            print(
                "runlog-relay sidecar: error: --once mirrors the whole folder in one pass;"
                " shard.group (scale-out) is for long-running replicas: unset one of them",
                file=sys.stderr,
            )
            return EXIT_USAGE
        logs.configure(settings.log_level, settings.log_format.value)
        _warn_unknown_variables()
        # Nothing serves /metrics in a one-shot sync: the metrics record nowhere.
        pipeline = Pipeline(settings, SidecarMetrics(None), open_store, once=True)
        log.info("starting: %s", settings.describe())
        return _finish(pipeline.run_once(timeout=once_budget(settings)))
    return _serve(args, overrides, settings, waiting)


def _warn_unknown_variables() -> None:
    for warning in unknown_variables():
        log.warning("%s", warning)


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
    _warn_unknown_variables()
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Here, not at the top: `--once` serves nothing, and the health server's asyncio is
    # ~14 ms of a one-shot sync's start-up (issue 12 item 6: start-up is its gap to rclone).
    from prometheus_client import CollectorRegistry  # not for --once, which serves none

    from runlog_relay.health import HealthServer

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
        pipeline.store_health.check_stalled()  # a store that accepts and never answers
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
    # With no file to name (an empty folder), what stood in the way is the reason.
    why = report.source or report.ran_out
    log.error(
        "mirror incomplete: %d path(s) not mirrored%s",
        len(report.files),
        f"; {why}" if why and (report.source or not report.files) else "",
    )
    return EXIT_INCOMPLETE
