"""The sidecar's settings: one typed object per process, built once by the CLI.

Sources, highest first: command-line options, ``RUNLOG_RELAY_*`` environment variables,
the YAML ``--config`` file, defaults. The connection fields (endpoint, bucket, region,
layout, create_bucket) and the embedded ``tls``/``sync`` groups use the same types as
:class:`~runlog_relay.config.models.StoreSpec`, so the ConfigMap the operator renders
from a RunLogStore (camelCase) is a valid config file here too.

Credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (like runnable and the AWS
tools) or ``RUNLOG_RELAY_ACCESS_KEY_ID`` / ``RUNLOG_RELAY_SECRET_ACCESS_KEY``, or files
(``*_file``) mounted from a Secret, which are re-read on reload so a rotated Secret takes
effect without a restart. Default ``minioadmin`` like runnable. They are ``SecretStr``:
never printed, logged or put in ``--help``.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.alias_generators import to_snake
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from runlog_relay.config.models import (
    DEFAULT_BUCKET,
    DEFAULT_ENDPOINT,
    BucketParts,
    BucketRef,
    Endpoint,
    Layout,
    LocalRetention,
    SyncSpec,
    WireModel,
)
from runlog_relay.errors import ConfigError
from runlog_relay.layout import UnsafeNameError, key_for

__all__ = [
    "ENV_PREFIX",
    "LogFormat",
    "SidecarSettings",
    "SidecarTLS",
    "load_sidecar_settings",
    "read_config_file",
]

ENV_PREFIX = "RUNLOG_RELAY_"
DEFAULT_METRICS_PORT = 9464
DEFAULT_MINIO_CREDENTIAL = "minioadmin"


class LogFormat(enum.StrEnum):
    PLAIN = "plain"
    JSON = "json"


class SidecarTLS(WireModel):
    """TLS for https endpoints, as the sidecar sees it (the CA is a mounted file)."""

    insecure_skip_verify: bool = False
    """Skip certificate verification (test setups only)."""
    ca_file: Path | None = None
    """PEM CA bundle to trust, e.g. mounted from the Secret named in the RunLogStore."""


class SidecarSettings(BucketParts, BaseSettings):
    """Everything the sidecar needs; see ``runlog-relay sidecar --help``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    source: Path | None = None
    """Folder runnable writes run logs to (its log_folder); may not exist yet at start."""
    endpoint: Endpoint = DEFAULT_ENDPOINT
    """S3/MinIO endpoint URL."""
    bucket: BucketRef = DEFAULT_BUCKET
    """runnable's BUCKET[/PREFIX]."""
    region: str | None = None
    """S3 region; unset for MinIO."""
    layout: Layout = Layout.CHUNKED
    """chunked (chunked-fs → chunked-minio) or single (file-system → minio)."""
    create_bucket: bool = False
    """Create the bucket if it is missing."""
    tls: SidecarTLS = SidecarTLS()
    """TLS options."""
    sync: SyncSpec = SyncSpec()
    """Watch/upload tuning."""
    tag_sealed_runs: bool = False
    """Tag a sealed run's objects ``runlog-relay/status=<status>``."""
    local_retention: LocalRetention = LocalRetention()
    """Delete sealed runs from the volume after a while (needs a writable mount)."""
    exit_when_sealed: bool = False
    """Exit 0 once the pod's runs (``run_ids``) are sealed and the pod's work is done, so a
    Job whose sidecar is a plain container completes (see the README)."""
    retry_run_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "retry_run_id", f"{ENV_PREFIX}RETRY_RUN_ID", "RUNNABLE_RETRY_RUN_ID"
        ),
    )
    """The run this pod retries (runnable's ``RUNNABLE_RETRY_RUN_ID``, which the webhook
    copies from the pipeline's container): with ``exit_when_sealed``, its final status
    from before the pod does not count as the pod's work being done."""
    run_ids: Annotated[tuple[str, ...], NoDecode] = ()
    """Mirror only these runs (chunked: the ``<run_id>/`` folders; single: ``<run_id>.json``)
    and list only their prefixes in the bucket. Empty: every run. In the environment a
    comma-separated list (one id is valid, so a downward-API field can fill it)."""

    access_key_id: SecretStr = Field(
        default=SecretStr(DEFAULT_MINIO_CREDENTIAL),
        validation_alias=AliasChoices(
            "access_key_id", f"{ENV_PREFIX}ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"
        ),
    )
    """S3 access key id."""
    secret_access_key: SecretStr = Field(
        default=SecretStr(DEFAULT_MINIO_CREDENTIAL),
        validation_alias=AliasChoices(
            "secret_access_key", f"{ENV_PREFIX}SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"
        ),
    )
    """S3 secret access key."""
    access_key_id_file: Path | None = None
    """File holding the access key id (a mounted Secret key); wins over the variable."""
    secret_access_key_file: Path | None = None
    """File holding the secret access key (a mounted Secret key); wins over the variable."""

    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    """Address the metrics/health server binds to."""
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)
    """Port for /metrics, /healthz and /readyz (0 = pick a free port, 9464 default)."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""
    log_format: LogFormat = LogFormat.PLAIN
    """plain for people, json for log pipelines."""

    @field_validator("retry_run_id")
    @classmethod
    def _no_empty_retry(cls, value: str | None) -> str | None:
        # Argo fills RUNNABLE_RETRY_RUN_ID from a workflow parameter that is empty unless
        # the workflow is a retry.
        return value.strip() or None if value is not None else None

    @field_validator("run_ids", mode="before")
    @classmethod
    def _split_run_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("run_ids")
    @classmethod
    def _valid_run_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for run_id in value:
            if "/" in run_id or "\\" in run_id:
                raise ValueError(f"run id {run_id!r} contains a path separator")
            try:
                key_for(f"{run_id}/RunLog.json", Layout.CHUNKED)
            except UnsafeNameError as exc:
                raise ValueError(f"run id {run_id!r} is not a safe run id: {exc.reason}") from None
        return tuple(dict.fromkeys(value))

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    def credentials(self) -> tuple[str, str]:
        """The access key pair, files first (re-read on every call, for rotation)."""
        return (
            _read_secret_file(self.access_key_id_file) or self.access_key_id.get_secret_value(),
            _read_secret_file(self.secret_access_key_file)
            or self.secret_access_key.get_secret_value(),
        )

    def describe(self) -> dict[str, Any]:
        """A loggable summary: no secret values, only where they come from."""
        return {
            "source": str(self.source),
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "layout": self.layout.value,
            "credentials": "file" if self.access_key_id_file else "env/default",
            "polling": self.sync.force_polling,
            "runs": list(self.run_ids) or "all",
            "exit_when_sealed": self.exit_when_sealed,
            "tag_sealed_runs": self.tag_sealed_runs,
            "retain_local": (
                "off"
                if self.local_retention.delete_after is None
                else self.local_retention.delete_after
                + (" (dry run)" if self.local_retention.dry_run else "")
            ),
        }


def _read_secret_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from None


def _snake_keys(value: Any) -> Any:
    """Accept camelCase keys (the operator's ConfigMap) as well as snake_case."""
    if isinstance(value, dict):
        return {to_snake(str(k)).replace("-", "_"): _snake_keys(v) for k, v in value.items()}
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML config file into settings keys; a clear ConfigError otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a secret.
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    data = _snake_keys(data)
    # Keys that are credentials must not come from a ConfigMap-style file.
    for forbidden in ("access_key_id", "secret_access_key"):
        if forbidden in data:
            raise ConfigError(
                f"config file {path} must not contain {forbidden}: use the environment or"
                f" {forbidden}_file"
            )
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What and where, without the snippet of the file PyYAML's message includes."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


class _FileSource(PydanticBaseSettingsSource):
    """Settings from a YAML file, below the environment in precedence."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_sidecar_settings(
    overrides: dict[str, Any] | None = None, config_file: Path | None = None
) -> SidecarSettings:
    """Build the settings from options, environment and file; ConfigError when invalid.

    The error message lists each bad field with the reason pydantic gives, never the value
    of a secret.
    """
    file_data = read_config_file(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    class _Settings(SidecarSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _FileSource(settings_cls, file_data))

    try:
        return _Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, config_file)) from None


def _format_validation_error(exc: ValidationError, config_file: Path | None) -> str:
    where = f" (config file {config_file})" if config_file else ""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "settings"
        problems.append(f"{location}: {error['msg']}")
    return f"invalid settings{where}: " + "; ".join(problems)
