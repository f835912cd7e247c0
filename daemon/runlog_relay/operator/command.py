"""``runlog-relay operator``: flags → :class:`~.settings.OperatorSettings` → logging → run.

Every flag is generated from a settings field (:data:`FLAGS` names it; the help text,
the default and the environment variable come from the field), so the command line, the
``RUNLOG_RELAY_OPERATOR_*`` variables and the defaults cannot drift apart. A value is
checked by the field's own validator as it is parsed: a bad flag is a usage error (exit
2) naming the flag. kopf is imported only when the command runs (through :mod:`.runner`),
so ``--help`` works without the ``operator`` extra.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from runlog_relay import logs
from runlog_relay.config.rules import reason_of
from runlog_relay.exitcodes import ExitCode, epilog, missing_extra
from runlog_relay.operator.settings import (
    OperatorSettings,
    env_name,
    iter_fields,
    unknown_variables,
)

__all__ = ["FLAGS", "GROUPS", "register", "run", "settings_from_args"]

#: Where a pod's namespace is, for the default of the webhook's service namespace.
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DEFAULT_NAMESPACE = "runlog-relay"

#: settings path → its flags. The groups' flags keep their group's name in them
#: (``--webhook-port``), except where a shorter name was established first.
FLAGS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("namespaces",): ("-n", "--namespace"),
    ("all_namespaces",): ("-A", "--all-namespaces"),
    ("metrics_host",): ("--metrics-host",),
    ("metrics_port",): ("--metrics-port",),
    ("liveness_port",): ("--liveness-port",),
    ("log_level",): ("--log-level",),
    ("log_format",): ("--log-format",),
    ("allowed_endpoints",): ("--allowed-endpoint",),
    ("list_chunk_size",): ("--list-chunk-size",),
    ("instance",): ("--instance",),
    ("reconcile", "recheck_interval"): ("--recheck-interval",),
    ("reconcile", "bucket_timeout"): ("--bucket-timeout",),
    ("reconcile", "retry_base_delay"): ("--retry-base-delay",),
    ("reconcile", "retry_max_delay"): ("--retry-max-delay",),
    ("reconcile", "recheck_concurrency"): ("--recheck-concurrency",),
    ("peering", "name"): ("--peering",),
    ("peering", "priority"): ("--priority",),
    ("peering", "lifetime"): ("--peering-lifetime",),
    ("peering", "leadership_check_interval"): ("--leadership-check-interval",),
    ("webhook", "port"): ("--webhook-port",),
    ("webhook", "host"): ("--webhook-host",),
    ("webhook", "cert_dir"): ("--webhook-cert-dir",),
    ("webhook", "service_name"): ("--webhook-service-name",),
    ("webhook", "service_namespace"): ("--webhook-service-namespace",),
    ("webhook", "config_name"): ("--webhook-config-name",),
    ("webhook", "timeout_seconds"): ("--webhook-timeout",),
    ("webhook", "cert_secret"): ("--webhook-cert-secret",),
    ("webhook", "cert_validity_hours"): ("--webhook-cert-validity-hours",),
    ("webhook", "cert_renew_before_hours"): ("--webhook-cert-renew-before-hours",),
    ("webhook", "ca_validity_hours"): ("--webhook-ca-validity-hours",),
    ("webhook", "ca_renew_before_hours"): ("--webhook-ca-renew-before-hours",),
    ("webhook", "ca_propagation_seconds"): ("--webhook-ca-propagation-seconds",),
    ("webhook", "cert_check_interval"): ("--webhook-cert-check-interval",),
    ("injection", "image"): ("--sidecar-image",),
    ("injection", "resources"): ("--sidecar-resources",),
    ("injection", "inject_when_not_ready"): ("--inject-when-not-ready",),
    ("injection", "scrape_annotations"): ("--scrape-annotations",),
    ("injection", "native_sidecar"): ("--native-sidecar",),
    ("injection", "allowed_images"): ("--allowed-sidecar-image",),
    ("injection", "image_pull_secrets"): ("--sidecar-image-pull-secret",),
    ("injection", "logs_volume_size_limit"): ("--logs-volume-size-limit",),
    ("injection", "host_network"): ("--inject-host-network",),
    ("injection", "openshift"): ("--openshift",),
    ("injection", "cluster_check_interval"): ("--cluster-check-interval",),
}

GROUPS = {
    "reconcile": ("reconciling", "How stores are reconciled and rechecked."),
    "peering": (
        "high availability",
        "Several replicas elect one active operator through kopf's peering objects; the"
        " others stand by and take over when it stops (see docs/high-availability.md).",
    ),
    "webhook": (
        "admission webhooks",
        "The pod-injection and RunLogStore-validation webhooks, served over HTTPS at"
        " /mutate-pods and /validate-runlogstores.",
    ),
    "injection": ("injected sidecar", "What the pod webhook puts into opted-in pods."),
}


def _dest(path: tuple[str, ...]) -> str:
    return "setting:" + ".".join(path)


_JSON_KINDS: dict[tuple[str, ...], str] = {
    ("injection", "resources"): "ResourceRequirements JSON object"
}
_METAVARS = {
    ("namespaces",): "NS",
    ("peering", "name"): "NAME",
    ("allowed_endpoints",): "URL",
    ("injection", "allowed_images"): "GLOB",
    ("injection", "image_pull_secrets"): "SECRET",
    ("injection", "logs_volume_size_limit"): "QUANTITY",
}


def _metavar(path: tuple[str, ...]) -> str:
    return _METAVARS.get(path, path[-1].upper())


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if not isinstance(value, dict | list):
            return ""  # computed at start (the host name): the description says what
    else:
        value = field.default
    if value is None or value == []:
        return ""
    if isinstance(value, dict):
        value = json.dumps(value, separators=(",", ":"))
    elif hasattr(value, "value"):
        value = value.value
    return f"; default {value}"


def _checker(path: tuple[str, ...], field: FieldInfo) -> Callable[[str], Any]:
    """The argparse ``type``: the field's own validation, as a usage error."""
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]
    is_json = get_origin(field.annotation) is dict
    what = f"not a {_JSON_KINDS.get(path, 'JSON object')}: " if is_json else ""

    def check(text: str) -> Any:
        try:
            value = json.loads(text) if is_json else text
            return adapter.validate_python(value)
        except (ValueError, ValidationError) as exc:
            errors = exc.errors() if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
            message = "; ".join(str(e["msg"]) for e in errors)
            raise argparse.ArgumentTypeError(what + message) from None

    check.__name__ = path[-1]  # argparse names it in "invalid <name> value"
    return check


def _choices(annotation: Any) -> str | None:
    """``{a,b}`` for an enum or a Literal of strings (validation is the field's)."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [str(member.value) for member in annotation]
    elif get_origin(annotation) is Literal:
        values = [str(value) for value in get_args(annotation)]
    else:
        return None
    return "{" + ",".join(values) + "}"


def _add(parser: Any, path: tuple[str, ...], field: FieldInfo) -> None:
    flags = FLAGS[path]
    help_text = (field.description or "").replace("%", "%%").rstrip(".")
    help_text += f" (env {env_name(path)}{_default_text(field)})"
    kwargs: dict[str, Any] = {"dest": _dest(path), "default": argparse.SUPPRESS, "help": help_text}
    annotation = field.annotation
    if annotation is bool and flags[0].startswith("-") and not flags[0].startswith("--"):
        kwargs.update(action="store_const", const=True)  # -A: a switch, no --no- form
    elif annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(annotation) is list:
        kwargs.update(action="append", metavar=_metavar(path))
    else:
        kwargs.update(type=_checker(path, field), metavar=_choices(annotation) or _metavar(path))
    parser.add_argument(*flags, **kwargs)


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "operator",
        help=summary,
        description=f"{summary}. Uses in-cluster credentials, or KUBECONFIG /"
        " ~/.kube/config outside a cluster. Every option also reads an environment"
        " variable (named in its help); flags win over the environment.",
        epilog=epilog("operator"),
    )
    groups: dict[str, Any] = {}
    scope = parser.add_mutually_exclusive_group()
    for path, field in iter_fields():
        if path[0] in ("namespaces", "all_namespaces"):
            _add(scope, path, field)
            continue
        target: Any = parser
        if len(path) > 1:
            if path[0] not in groups:
                title, description = GROUPS[path[0]]
                groups[path[0]] = parser.add_argument_group(title, description)
            target = groups[path[0]]
        _add(target, path, field)
    parser.set_defaults(handler=run)


def _own_namespace() -> str:
    """The operator pod's namespace (its service account says), else the chart's default."""
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or _DEFAULT_NAMESPACE
    except OSError:
        return os.environ.get("POD_NAMESPACE") or _DEFAULT_NAMESPACE


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    """Flags over environment over defaults; ValueError (naming the fields) when invalid."""
    nested: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("setting:"):
            continue
        *groups, name = dest.removeprefix("setting:").split(".")
        target = nested
        for group in groups:
            target = target.setdefault(group, {})
        target[name] = value
    try:
        settings = OperatorSettings(**nested)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            location = tuple(str(p) for p in error["loc"])
            where = f"{env_name(location)} / {location[-1]}: " if location else ""
            problems.append(where + reason_of(error))
        raise ValueError("invalid operator settings: " + "; ".join(problems)) from None
    if settings.webhook.service_namespace is None:
        webhook = settings.webhook.model_copy(update={"service_namespace": _own_namespace()})
        settings = settings.model_copy(update={"webhook": webhook})
    return settings


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"runlog-relay operator: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    logs.configure(settings.log_level, settings.log_format)
    for warning in unknown_variables(os.environ):
        logging.getLogger("runlog_relay.operator").warning("%s", warning)
    if settings.log_level != "DEBUG":
        # One line per kubelet probe of kopf's liveness endpoint is noise.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        from runlog_relay.operator.runner import run as run_operator
    except ImportError as exc:
        if (exc.name or "").startswith("runlog_relay"):
            raise
        return missing_extra("operator", exc.name, "operator")
    return run_operator(settings)
