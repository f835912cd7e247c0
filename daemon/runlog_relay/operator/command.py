"""``runlog-relay operator``: parse options, set up logging, run the operator.

kopf is imported only when the command runs (through :mod:`.runner`), so ``--help``
and the other commands work without the ``operator`` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
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


#: Where a pod's namespace is, for the default of --webhook-service-namespace.
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DEFAULT_SERVICE = "runlog-relay"


def _resources(value: str) -> dict[str, Any]:
    # The pure check lives with the webhook; imported here lazily like the rest of it.
    from runlog_relay.operator.webhook import validate_resources

    try:
        return validate_resources(json.loads(value))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not a ResourceRequirements JSON object: {exc}") from None


def _own_namespace() -> str:
    """The operator pod's namespace (its service account says), else the chart's default."""
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or _DEFAULT_SERVICE
    except OSError:
        return os.environ.get("POD_NAMESPACE") or _DEFAULT_SERVICE


def _add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "admission webhooks",
        "The operator serves the pod-injection and RunLogStore-validation webhooks over"
        " HTTPS at /mutate-pods and /validate-runlogstores (see the README, 'Getting the"
        " sidecar into pods').",
    )
    group.add_argument(
        "--webhook-port",
        type=_port,
        default=9443,
        help="HTTPS port of the admission webhooks (default 9443; 0 disables them)",
    )
    group.add_argument(
        "--webhook-host",
        default="0.0.0.0",  # noqa: S104 - the API server calls in from outside the pod
        help="address the webhook server binds to (default 0.0.0.0)",
    )
    group.add_argument(
        "--webhook-cert-dir",
        type=Path,
        metavar="DIR",
        help="serve DIR/tls.crt and DIR/tls.key (cert-manager or your own), re-read when"
        " they change; without it the operator makes a self-signed certificate and keeps"
        " the caBundle of the webhook configurations",
    )
    group.add_argument(
        "--webhook-service-name",
        default=_DEFAULT_SERVICE,
        help="the webhook Service, named in the self-signed certificate (default runlog-relay)",
    )
    group.add_argument(
        "--webhook-service-namespace",
        help="namespace of that Service (default: the operator's own namespace)",
    )
    group.add_argument(
        "--webhook-config-name",
        default=_DEFAULT_SERVICE,
        help="name of the Mutating- and ValidatingWebhookConfiguration whose caBundle the"
        " operator keeps in self-signed mode (default runlog-relay)",
    )
    group.add_argument(
        "--sidecar-image",
        default=None,
        metavar="IMAGE",
        help="image of the injected sidecar (default ghcr.io/runlog-relay/runlog-relay:"
        "<this version>)",
    )
    group.add_argument(
        "--sidecar-resources",
        type=_resources,
        default=None,
        metavar="JSON",
        help="the sidecar's resources, a ResourceRequirements as JSON (default"
        ' \'{"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}\')',
    )
    group.add_argument(
        "--inject-when-not-ready",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="inject into pods of a store that is not Ready yet; the sidecar uploads once"
        " it is (default on)",
    )
    group.add_argument(
        "--scrape-annotations",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add prometheus.io/scrape, port and path to injected pods that have none"
        " (default off)",
    )


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
    _add_webhook_arguments(parser)
    parser.set_defaults(handler=run)


def options_from_args(args: argparse.Namespace) -> Any:
    """The runner's ``OperatorOptions`` for the parsed command line (imports kopf)."""
    from runlog_relay.operator.controller import ControllerOptions
    from runlog_relay.operator.runner import OperatorOptions
    from runlog_relay.operator.webhook import InjectionOptions
    from runlog_relay.operator.webhook_tls import WebhookOptions

    webhook = None
    if args.webhook_port:
        webhook = WebhookOptions(
            host=args.webhook_host,
            port=args.webhook_port,
            cert_dir=args.webhook_cert_dir,
            service_name=args.webhook_service_name,
            service_namespace=args.webhook_service_namespace or _own_namespace(),
            config_name=args.webhook_config_name,
        )
    injection = InjectionOptions(
        inject_when_not_ready=args.inject_when_not_ready,
        scrape_annotations=args.scrape_annotations,
    )
    if args.sidecar_image:
        injection = replace(injection, image=args.sidecar_image)
    if args.sidecar_resources is not None:
        injection = replace(injection, resources=args.sidecar_resources)
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
        webhook=webhook,
        injection=injection,
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
