"""``runlog-relay operator``: parse options, set up logging, run the operator.

kopf is imported only when the command runs (through :mod:`.runner`), so ``--help``
and the other commands work without the ``operator`` extra.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from runlog_relay import logs
from runlog_relay.config.settings import LogFormat

__all__ = ["options_from_args", "register", "run"]


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "operator",
        help=summary,
        description=f"{summary}. Uses in-cluster credentials, or KUBECONFIG /"
        " ~/.kube/config outside a cluster.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=[],
        metavar="NS",
        help="serve RunLogStores in this namespace (repeatable; globs like team-* work);"
        " needs only namespaced RBAC",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="serve every namespace (the default when no --namespace is given)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=9464,
        help="port for Prometheus /metrics (default 9464; 0 picks a free port)",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",  # noqa: S104 - scraped from outside the pod
        help="address /metrics binds to (default 0.0.0.0)",
    )
    parser.add_argument(
        "--liveness-port",
        type=_port,
        default=8080,
        help="port for kopf's liveness probe at /healthz (default 8080; 0 disables it)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate several replicas through kopf's peering object NAME (needs kopf's"
        " peering CRDs); without it the operator runs standalone",
    )
    parser.add_argument(
        "--priority",
        type=int,
        help="peering priority; the live replica with the highest one works, the others"
        " stand by (default: random, so replicas differ)",
    )
    parser.add_argument(
        "--recheck-interval",
        type=_positive,
        default=300.0,
        metavar="SECONDS",
        help="re-check every store's bucket and credentials this often (default 300)",
    )
    parser.add_argument(
        "--bucket-timeout",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="timeout of the bucket check's requests (default 10)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="default INFO",
    )
    parser.add_argument(
        "--log-format",
        default=LogFormat.PLAIN.value,
        choices=[f.value for f in LogFormat],
        help="plain for people, json for log pipelines (default plain)",
    )
    parser.set_defaults(handler=run)


def options_from_args(args: argparse.Namespace) -> Any:
    """The runner's ``OperatorOptions`` for the parsed command line (imports kopf)."""
    from runlog_relay.operator.controller import ControllerOptions
    from runlog_relay.operator.runner import OperatorOptions

    return OperatorOptions(
        namespaces=tuple(args.namespaces),
        all_namespaces=args.all_namespaces,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port or None,
        peering=args.peering,
        priority=args.priority,
        controller=ControllerOptions(
            recheck_interval=args.recheck_interval, bucket_timeout=args.bucket_timeout
        ),
    )


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    if args.log_level != "DEBUG":
        # One line per kubelet probe of kopf's liveness endpoint is noise.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        options = options_from_args(args)
        from runlog_relay.operator.runner import run as run_operator
    except ImportError as exc:
        if (exc.name or "").startswith("runlog_relay"):
            raise
        raise SystemExit(
            f"runlog-relay operator: a dependency is missing ({exc.name}); install"
            " runlog-relay[operator]"
        ) from None
    return run_operator(options)
