"""Command-line options of the sidecar and of every command that talks to a bucket.

Every option is generated from a settings field (:data:`OPTION_GROUPS` names its flag and
placeholder; the help text, the default, the ``RUNLOG_RELAY_*`` variable and the config
key come from the field), so the command line, the environment, the config file,
``--help`` and the reference page (``docs/reference/settings.md``, generated from this
table) cannot drift apart. The read-side tools take the connection options (the groups
marked ``store``) with the same defaults (runnable's), variables and ``--config`` file, so
a user who set up one command can use the others unchanged.

Two kinds of setting have no flag, on purpose (:data:`SECRET_FIELDS`, :data:`AWS_FIELDS`):
secret values, which a flag would show in ``ps`` and a ConfigMap-style file must not hold
(their ``*_file`` forms are options), and the AWS SDK's standard variables, read exactly
as the AWS tools read them. ``--config`` itself is a flag and ``RUNLOG_RELAY_CONFIG``.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runlog_relay.config.fields import Fields, Refused, Setting
from runlog_relay.config.rules import format_size, reason_of
from runlog_relay.config.settings import (
    CONFIG_VARIABLE,
    SidecarSettings,
    config_key,
    env_names,
    load_sidecar_settings,
    setting_field,
    unknown_variables,
)
from runlog_relay.objectstore import ObjectStore

__all__ = [
    "AWS_FIELDS",
    "OPTION_GROUPS",
    "SECRET_FIELDS",
    "Option",
    "OptionGroup",
    "add_sidecar_options",
    "add_store_options",
    "config_path",
    "open_store",
    "overrides_from_args",
    "settings_from_args",
    "warn_unknown_variables",
]

_DEST = "setting:"


@dataclass(frozen=True)
class Option:
    """One setting as an option: its flag and placeholder; the rest is the field's."""

    path: tuple[str, ...]
    flag: str
    metavar: str = ""
    """Placeholder of the value; empty for a switch or a choice of values."""
    switch: bool = False
    """A flag without a ``--no-`` form (``--once``)."""
    tools: bool = True
    """In a ``store`` group: the read-side tools take it too."""
    unset: str = ""
    """What leaving it unset means, when the field's default is None (shown as the
    default)."""

    @property
    def field(self) -> Setting:
        return setting_field(self.path)

    @property
    def env(self) -> tuple[str, ...]:
        return env_names(self.path)

    @property
    def key(self) -> str:
        return config_key(self.path)

    @property
    def is_bool(self) -> bool:
        return self.field.annotation is bool

    @property
    def choices(self) -> tuple[str, ...]:
        kind = self.field.kind
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return tuple(str(member.value) for member in kind)
        return ()

    @property
    def placeholder(self) -> str:
        """What ``--help`` and the reference show after the flag."""
        if self.is_bool:
            return ""
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        return self.metavar

    @property
    def default(self) -> str:
        """The default as a user would write it; empty when there is none."""
        value = self.field.default
        if value is None or value == () or value == "":
            return self.unset
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, enum.Enum):
            return str(value.value)
        if self.metavar == "SIZE":
            return format_size(int(value))
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    @property
    def description(self) -> str:
        """The field's docstring as one paragraph of Markdown (the reference page's)."""
        return self.field.description

    def help(self) -> str:
        """``--help``: the description without Markdown, the variables, key and default."""
        names = ", ".join(self.env)
        default = f"; default {self.default}" if self.default else ""
        plain = self.description.replace("`", "").rstrip(".")
        return f"{plain} (env {names}; key {self.key}{default})".replace("%", "%%")


@dataclass(frozen=True)
class OptionGroup:
    title: str
    description: str
    options: tuple[Option, ...]
    store: bool = False
    """The read-side tools take this group too."""


OPTION_GROUPS: tuple[OptionGroup, ...] = (
    OptionGroup(
        "folder",
        "The run-log folder and the runs in it.",
        (
            Option(("source",), "--source", "DIR", unset="required"),
            Option(("run_ids",), "--run-id", "ID", unset="every run"),
            Option(("retry_run_id",), "--retry-run-id", "ID"),
            Option(("once",), "--once", switch=True),
        ),
    ),
    OptionGroup(
        "object store",
        "Where the mirror is: runnable's defaults, so a runnable user needs no new setting.",
        (
            Option(("endpoint",), "--endpoint", "URL"),
            Option(("bucket",), "--bucket", "BUCKET[/PREFIX]"),
            Option(("layout",), "--layout"),
            Option(("region",), "--region", "REGION", unset="asked of the bucket"),
            Option(("create_bucket",), "--create-bucket", tools=False),
            Option(("storage_class",), "--storage-class", "CLASS", unset="the bucket's"),
            Option(("tls", "ca_file"), "--ca-file", "FILE"),
            Option(("tls", "insecure_skip_verify"), "--insecure-skip-verify"),
        ),
        store=True,
    ),
    OptionGroup(
        "credentials",
        "Static keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN] (or"
        " the RUNLOG_RELAY_* variables of the same names, or the files below, mounted from a"
        " Secret and re-read when it changes); default minioadmin, like runnable. Web identity"
        " (IRSA) reads AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN, AWS_ROLE_SESSION_NAME;"
        " container credentials (EKS Pod Identity) AWS_CONTAINER_CREDENTIALS_FULL_URI and"
        " AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, as the AWS tools do.",
        (
            Option(("credential_source",), "--credentials"),
            Option(("access_key_id_file",), "--access-key-id-file", "FILE"),
            Option(("secret_access_key_file",), "--secret-access-key-file", "FILE"),
            Option(("session_token_file",), "--session-token-file", "FILE"),
            Option(("sts_endpoint",), "--sts-endpoint", "URL", unset="AWS's regional one"),
        ),
        store=True,
    ),
    OptionGroup(
        "encryption",
        "Server-side encryption of the objects written (and the SSE-C key to read them).",
        (
            Option(("sse", "mode"), "--sse", unset="the bucket's"),
            Option(("sse", "kms_key_id"), "--sse-kms-key-id", "KEY"),
            Option(("sse", "kms_context"), "--sse-kms-context", "JSON"),
            Option(("sse", "c_key_file"), "--sse-c-key-file", "FILE"),
        ),
        store=True,
    ),
    OptionGroup(
        "finished runs",
        "What the sidecar does once a run's RunLog is final and every file of the run is"
        " verified in the bucket (the run is sealed).",
        (
            Option(("tag_sealed_runs",), "--tag-sealed-runs"),
            Option(("exit_when_sealed",), "--exit-when-sealed"),
            Option(
                ("local_retention", "delete_after"), "--retain-local", "DURATION", unset="never"
            ),
            Option(("local_retention", "dry_run"), "--retain-local-dry-run"),
        ),
    ),
    OptionGroup(
        "scale-out",
        "Several replicas on one shared folder split its runs, each run mirrored by one live"
        " replica; membership from Kubernetes Leases (off unless the group is set).",
        (
            Option(("shard", "group"), "--shard-group", "NAME", unset="off"),
            Option(("shard", "identity"), "--shard-identity", "NAME", unset="the pod's name"),
            Option(("shard", "namespace"), "--shard-namespace", "NS", unset="the pod's"),
            Option(("shard", "lease_seconds"), "--shard-lease-seconds", "SECONDS"),
            Option(("shard", "api_url"), "--shard-api-url", "URL", unset="in-cluster"),
        ),
    ),
    OptionGroup(
        "sync tuning",
        "SECONDS may be fractional; SIZE is bytes or a number with a unit (16MiB, 512KiB,"
        " 1GiB, 20MB).",
        (
            Option(("sync", "debounce_seconds"), "--debounce", "SECONDS"),
            Option(("sync", "rescan_interval_seconds"), "--rescan-interval", "SECONDS"),
            Option(("sync", "concurrency"), "--concurrency", "N"),
            Option(("sync", "force_polling"), "--force-polling"),
            Option(("sync", "poll_interval_seconds"), "--poll-interval", "SECONDS"),
            Option(("sync", "torn_grace_seconds"), "--torn-grace", "SECONDS"),
            Option(("sync", "permanent_error_retry_seconds"), "--permanent-retry", "SECONDS"),
            Option(("sync", "drain_timeout_seconds"), "--drain-timeout", "SECONDS"),
            Option(("sync", "max_pending_bytes"), "--max-pending-bytes", "SIZE"),
            Option(("sync", "max_file_bytes"), "--max-file-size", "SIZE"),
        ),
    ),
    OptionGroup(
        "metrics and logs",
        "",
        (
            Option(("metrics_host",), "--metrics-host", "ADDR"),
            Option(("metrics_port",), "--metrics-port", "PORT"),
            Option(("log_level",), "--log-level", "LEVEL"),
            Option(("log_format",), "--log-format"),
        ),
    ),
)

#: Settings read from the environment only: a flag would show them in ``ps``, and the
#: config file (often a ConfigMap) refuses them. Their ``*_file`` forms are options.
SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("access_key_id",),
    ("secret_access_key",),
    ("session_token",),
    ("container_authorization_token",),
)
#: The AWS SDK's standard variables, read as the AWS tools read them (IRSA and Pod
#: Identity inject them); no flag of ours.
AWS_FIELDS: tuple[tuple[str, ...], ...] = (
    ("web_identity_token_file",),
    ("role_arn",),
    ("role_session_name",),
    ("aws_region",),
    ("container_credentials_full_uri",),
    ("container_credentials_relative_uri",),
    ("container_authorization_token_file",),
    ("ec2_metadata_endpoint",),
)


def _checker(option: Option) -> Any:
    """The argparse ``type``: the field's own check of the value (the group's other
    fields at their defaults), so a bad value is a usage error naming the flag. The text
    itself is passed on: the settings check it once more with everything else."""
    setting = option.field
    is_list = option.flag == "--run-id"

    def check(text: str) -> str:
        value: Any = [text] if is_list else text
        try:
            setting.check(value)
        except (Refused, ValueError):
            problem = _schema_problem(option, value)
            if problem:
                raise argparse.ArgumentTypeError(problem) from None
        return text

    check.__name__ = option.placeholder or setting.name  # argparse: "invalid <name> value"
    return check


def _schema_problem(option: Option, value: Any) -> str:
    """pydantic's words for a value the settings reader refused; empty when the schema
    takes the value after all (a form the reader leaves to it)."""
    from pydantic import ValidationError

    from runlog_relay.config import settings_model

    fields: type[Fields] = SidecarSettings
    if len(option.path) > 1:
        kind = setting_field(option.path[:1]).kind
        assert isinstance(kind, type) and issubclass(kind, Fields)
        fields = kind
    model = getattr(settings_model, fields.MODEL)
    names = set(option.field.aliases)
    try:
        # The value alone: the models read no variable or file (load_sidecar_settings
        # adds those), so the check is the field's own.
        model.__pydantic_validator__.validate_python({option.path[-1]: value})
    except ValidationError as exc:
        mine = [e for e in exc.errors() if e["loc"] and str(e["loc"][0]) in names]
        return "; ".join(reason_of(e) for e in mine)
    return ""


def _add(parser: Any, option: Option) -> None:
    kwargs: dict[str, Any] = {
        "dest": _DEST + ".".join(option.path),
        "default": argparse.SUPPRESS,
        "help": option.help(),
    }
    if option.switch:
        kwargs.update(action="store_const", const=True)
    elif option.is_bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = _checker(option)
        if option.choices:
            kwargs["choices"] = option.choices
        else:
            kwargs["metavar"] = option.metavar
        if option.flag == "--run-id":
            kwargs["action"] = "append"
    parser.add_argument(option.flag, **kwargs)


def _add_config(parser: Any) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"YAML settings file, with the keys named below; options and variables take"
        f" precedence (env {CONFIG_VARIABLE})",
    )


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """The connection options (object store, credentials, encryption) and ``--config``."""
    first = True
    for group in OPTION_GROUPS:
        if not group.store:
            continue
        target = parser.add_argument_group(group.title, group.description or None)
        if first:
            _add_config(target)
            first = False
        for option in group.options:
            if option.tools:
                _add(target, option)


def add_sidecar_options(parser: argparse.ArgumentParser) -> None:
    """Every option of the sidecar, in :data:`OPTION_GROUPS` order."""
    for group in OPTION_GROUPS:
        target = parser.add_argument_group(group.title, group.description or None)
        if group.title == "folder":
            _add_config(target)
        for option in group.options:
            _add(target, option)


def config_path(args: argparse.Namespace) -> Path | None:
    """``--config``, else ``RUNLOG_RELAY_CONFIG``, else none."""
    given = getattr(args, "config", None)
    if given is not None:
        return Path(given)
    named = os.environ.get(CONFIG_VARIABLE, "").strip()
    return Path(named) if named else None


def settings_from_args(args: argparse.Namespace, **extra: Any) -> SidecarSettings:
    """Settings from the parsed options (unset options fall through to env/file/defaults)."""
    return load_sidecar_settings(overrides_from_args(args, **extra), config_path(args))


def overrides_from_args(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The settings the command line sets explicitly, as a nested mapping (they win over
    env and file, and keep winning when the config file is reloaded)."""
    overrides: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(_DEST) or value is None:
            continue
        path = dest.removeprefix(_DEST).split(".")
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = tuple(value) if isinstance(value, list) else value
    overrides.update({key: value for key, value in extra.items() if value is not None})
    return overrides


def warn_unknown_variables(command: str) -> None:
    """One stderr line per ``RUNLOG_RELAY_*`` variable that is no setting."""
    for warning in unknown_variables():
        print(f"runlog-relay {command}: warning: {warning}", file=sys.stderr)


def open_store(settings: SidecarSettings, *, max_connections: int = 10) -> ObjectStore:
    """An ObjectStore for the settings' endpoint, bucket, prefix and credentials."""
    return ObjectStore(
        endpoint=settings.endpoint,
        bucket=settings.bucket_name,
        prefix=settings.prefix,
        credentials=settings.credentials(),
        encryption=settings.encryption(),
        storage_class=settings.storage_class,
        region=settings.region,
        fallback_region=settings.aws_region,
        insecure_skip_verify=settings.tls.insecure_skip_verify,
        ca_file=str(settings.tls.ca_file) if settings.tls.ca_file else None,
        max_connections=max_connections,
    )
