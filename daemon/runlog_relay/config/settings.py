"""The sidecar's settings: one typed object per process, built once by the CLI.

Sources, highest first: command-line options, ``RUNLOG_RELAY_*`` environment variables,
the YAML ``--config`` file, defaults. Each setting's variable is :func:`env_names` and its
file key :func:`config_key`, for ``--help``, the reference docs and the check of the
environment: a ``RUNLOG_RELAY_*`` variable that is no setting is ignored, whatever its
depth, and :func:`unknown_variables` says so (the commands warn), with the nearest name.

The connection fields (endpoint, bucket, region, layout, create_bucket) and the embedded
``tls``/``sync`` groups use the same types as :class:`~runlog_relay.config.models.StoreSpec`,
so the ConfigMap the operator renders
from a RunLogStore (camelCase) is a valid config file here too.

Credentials (:mod:`runlog_relay.config.credentials` has the table): ``credentials``
chooses the source, ``auto`` by default. Static keys come from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` [/ ``AWS_SESSION_TOKEN``] (like runnable and the AWS tools), the
``RUNLOG_RELAY_*`` variables of the same names, or files (``*_file``) mounted from a Secret,
which are re-read on reload so a rotated Secret takes effect without a restart; default
``minioadmin`` like runnable. Web identity and container credentials are read from the
standard AWS variables, exactly as the AWS tools read them. Secret values are
``SecretStr``: never printed, logged or put in ``--help``.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import enum
import functools
import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_snake
from pydantic.fields import FieldInfo

from runlog_relay import fielddocs
from runlog_relay.config.credentials import (
    CONTAINER_CREDENTIALS_HOST,
    ContainerCredentials,
    CredentialPlan,
    CredentialSource,
    Encryption,
    InstanceProfile,
    StaticKeys,
    WebIdentity,
    check_container_uri,
    sts_endpoint_for,
)
from runlog_relay.config.credentials import describe as describe_credentials
from runlog_relay.config.models import (
    DEFAULT_BUCKET,
    DEFAULT_ENDPOINT,
    KMS_KEY_MAX_LENGTH,
    KMS_KEY_PATTERN,
    STORAGE_CLASS_PATTERN,
    BucketParts,
    BucketRef,
    Endpoint,
    Layout,
    LocalRetention,
    SSEMode,
    SyncSpec,
    WireModel,
    check_sse_fields,
)
from runlog_relay.errors import ConfigError
from runlog_relay.layout import UnsafeNameError, key_for

if TYPE_CHECKING:
    import yaml

__all__ = [
    "CONFIG_VARIABLE",
    "ENV_PREFIX",
    "GROUPS",
    "LogFormat",
    "SidecarSSE",
    "SidecarSettings",
    "SidecarShard",
    "SidecarTLS",
    "ambient_identity",
    "config_key",
    "env_names",
    "environment_data",
    "load_sidecar_settings",
    "read_config_file",
    "setting_field",
    "setting_fields",
    "unknown_names",
    "unknown_variables",
]

ENV_PREFIX = "RUNLOG_RELAY_"
#: Names the config file: the one option that cannot be a key of that file.
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
#: Settings that are groups of settings: ``RUNLOG_RELAY_<GROUP>__<FIELD>`` in the
#: environment, a ``group: {field: …}`` mapping in the file.
GROUPS = ("tls", "sync", "sse", "local_retention", "shard")
#: Variables of other runlog-relay programs that share the prefix (the operator's own).
_OTHER_PREFIXES = (f"{ENV_PREFIX}OPERATOR_",)
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


class SidecarSSE(WireModel):
    """Server-side encryption, as the sidecar and the tools see it (the SSE-C key is a
    mounted file)."""

    mode: SSEMode | None = None
    """s3, kms or c; unset: the bucket's default encryption."""
    kms_key_id: str | None = Field(
        default=None, pattern=KMS_KEY_PATTERN, max_length=KMS_KEY_MAX_LENGTH
    )
    """KMS key id, alias or ARN (mode kms); unset: the bucket's default KMS key."""
    kms_context: dict[str, str] | None = None
    """KMS encryption context (mode kms): a mapping, or its JSON text."""
    c_key_file: Path | None = None
    """File with the 32-byte customer key, raw or base64 (mode c), mounted from a Secret."""

    @field_validator("kms_context", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(
                    'must be a JSON object of strings, e.g. {"team": "data"}'
                ) from None
        return value

    @model_validator(mode="after")
    def _fields_of_the_mode(self) -> SidecarSSE:
        check_sse_fields(
            self.mode,
            kms_key_id=self.kms_key_id,
            kms_context=self.kms_context,
            customer_key=self.c_key_file,
        )
        return self


class SidecarShard(WireModel):
    """Scale-out: replicas on one shared folder split its runs (docs/scale-out.md)."""

    group: str = Field(default="", max_length=40, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$")
    """Name the replicas of one folder share (a DNS label); empty: no sharding, this
    process mirrors every run. Each replica holds a Lease ``<group>-<identity>`` in
    ``namespace``; a run belongs to one live replica by rendezvous hashing."""
    identity: str = Field(default="", max_length=200)
    """This replica's name, unique in the group; empty: the pod's name (``POD_NAME``,
    else the host name, which is the pod's name in Kubernetes)."""
    namespace: str = Field(default="", max_length=63)
    """Namespace of the Leases; empty: ``POD_NAMESPACE``, else the service account's."""
    lease_seconds: float = Field(default=15.0, ge=1.0, le=600.0)
    """A replica whose Lease has not been renewed for this long is gone: its runs move to
    the others. Renewed every third of it."""
    api_url: str = Field(default="", max_length=2048)
    """Kubernetes API URL; empty: in-cluster (``KUBERNETES_SERVICE_HOST``, the service
    account's token and CA)."""


class SidecarSettings(BucketParts, BaseModel):
    """Everything the sidecar needs; see ``runlog-relay sidecar --help``.

    Built from given values only: :func:`load_sidecar_settings` adds the environment and
    the config file (a model, not pydantic-settings' BaseSettings, whose import cost every
    sidecar start ~35 ms of CPU, asyncio included)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
        use_attribute_docstrings=fielddocs.wanted(),  # see runlog_relay.fielddocs
    )

    source: Path | None = None
    """The folder runnable writes run logs to (its `log_folder`); required. It may not
    exist yet when a long-running sidecar starts (runnable creates it): until it does,
    `/readyz` says so and a warning repeats. A file there is an error."""
    endpoint: Endpoint = DEFAULT_ENDPOINT
    """S3/MinIO endpoint URL."""
    bucket: BucketRef = DEFAULT_BUCKET
    """runnable's BUCKET[/PREFIX]."""
    region: str | None = None
    """S3 region; unset for MinIO. On AWS, setting it saves a `GetBucketLocation`."""
    layout: Layout = Layout.CHUNKED
    """`chunked` (runnable's chunked-fs → chunked-minio) or `single` (file-system → minio)."""
    create_bucket: bool = False
    """Create the bucket if it is missing."""
    tls: SidecarTLS = SidecarTLS()
    """TLS options."""
    sync: SyncSpec = SyncSpec()
    """Watch/upload tuning."""
    tag_sealed_runs: bool = False
    """Tag each object of a sealed run `runlog-relay/status=<SUCCESS|FAIL>`, for bucket
    lifecycle rules (needs `s3:PutObjectTagging`)."""
    local_retention: LocalRetention = LocalRetention()
    """Delete sealed runs from the volume after a while (needs a writable mount)."""
    exit_when_sealed: bool = False
    """Exit 0 once the pod's runs (`runIds`) are sealed and the pod's work is done, so a
    Job whose sidecar is a plain (classic) container completes."""
    retry_run_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "retry_run_id", f"{ENV_PREFIX}RETRY_RUN_ID", "RUNNABLE_RETRY_RUN_ID"
        ),
    )
    """The run this pod retries (runnable's `RUNNABLE_RETRY_RUN_ID`, which the webhook
    copies from the pipeline's container): with `exitWhenSealed`, its final status from
    before the pod does not count as the pod's work being done."""
    shard: SidecarShard = SidecarShard()
    """Scale-out over replicas sharing one folder (off unless ``shard.group`` is set)."""
    run_ids: tuple[str, ...] = ()
    """Mirror only these runs (chunked: the `<run_id>/` folders; single: `<run_id>.json`)
    and list only their prefixes in the bucket; empty: every run. The flag repeats; the
    variable is comma-separated (one id is valid, so a downward-API field can fill it)."""
    sse: SidecarSSE = SidecarSSE()
    """Server-side encryption of the objects written (and the SSE-C key to read them)."""
    storage_class: str | None = Field(default=None, pattern=STORAGE_CLASS_PATTERN)
    """S3 storage class of the objects written; unset: the bucket's default."""

    access_key_id: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "access_key_id", f"{ENV_PREFIX}ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"
        ),
    )
    """S3 access key id (default: runnable's minioadmin, when no other source applies)."""
    secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "secret_access_key", f"{ENV_PREFIX}SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"
        ),
    )
    """S3 secret access key."""
    access_key_id_file: Path | None = None
    """File holding the access key id (a mounted Secret key); wins over the variable."""
    secret_access_key_file: Path | None = None
    """File holding the secret access key (a mounted Secret key); wins over the variable."""
    session_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "session_token", f"{ENV_PREFIX}SESSION_TOKEN", "AWS_SESSION_TOKEN"
        ),
    )
    """Session token of temporary static credentials (STS, `aws sts get-session-token`)."""
    session_token_file: Path | None = None
    """File holding the session token (a mounted Secret key); wins over the variable."""

    credential_source: CredentialSource = Field(
        default=CredentialSource.AUTO,
        validation_alias=AliasChoices(
            "credentials", "credential_source", f"{ENV_PREFIX}CREDENTIALS"
        ),
    )
    """Where credentials come from: `static` keys, `web-identity` (IRSA), `container` (EKS
    Pod Identity, ECS), `instance` (EC2 IMDSv2), `service-account` (the pod's IRSA or Pod
    Identity, an error if it has neither). `auto`: static keys if given, else web identity,
    else container credentials, else runnable's `minioadmin`."""
    sts_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "sts_endpoint", f"{ENV_PREFIX}STS_ENDPOINT", "AWS_ENDPOINT_URL_STS"
        ),
    )
    """STS endpoint for web identity, for private clouds; default AWS's regional one (from
    `AWS_REGION`)."""
    web_identity_token_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("web_identity_token_file", "AWS_WEB_IDENTITY_TOKEN_FILE"),
    )
    """The projected service-account token (IRSA injects AWS_WEB_IDENTITY_TOKEN_FILE)."""
    role_arn: str | None = Field(
        default=None, validation_alias=AliasChoices("role_arn", "AWS_ROLE_ARN")
    )
    """Role to assume with the web identity token (AWS_ROLE_ARN)."""
    role_session_name: str | None = Field(
        default=None,
        validation_alias=AliasChoices("role_session_name", "AWS_ROLE_SESSION_NAME"),
    )
    """Session name in CloudTrail (AWS_ROLE_SESSION_NAME); default a timestamp."""
    aws_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("aws_region", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )
    """The pod's AWS region (EKS sets AWS_REGION): the regional STS endpoint, and the bucket's
    region when GetBucketLocation is refused and --region is not set."""
    container_credentials_full_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "container_credentials_full_uri", "AWS_CONTAINER_CREDENTIALS_FULL_URI"
        ),
    )
    """Container credentials endpoint (EKS Pod Identity injects it)."""
    container_credentials_relative_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "container_credentials_relative_uri", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
        ),
    )
    """ECS task role: a path on the ECS agent (169.254.170.2)."""
    container_authorization_token_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "container_authorization_token_file", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
        ),
    )
    """Token for the container credentials endpoint, re-read on every refresh."""
    container_authorization_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "container_authorization_token", "AWS_CONTAINER_AUTHORIZATION_TOKEN"
        ),
    )
    """Token for the container credentials endpoint, when not in a file."""
    ec2_metadata_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ec2_metadata_endpoint", "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
    )
    """IMDS address for --credentials instance; default the SDK's 169.254.169.254."""

    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    """Address the metrics and health server binds to."""
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)
    """Port for `/metrics`, `/healthz` and `/readyz`; 0 picks a free port."""
    log_level: str = "INFO"
    """`DEBUG`, `INFO`, `WARNING` or `ERROR`."""
    log_format: LogFormat = LogFormat.PLAIN
    """`plain` for people, `json` lines for log pipelines."""
    once: bool = False
    """Reconcile the whole folder with the bucket once, upload what differs, and exit: 0
    when the bucket mirrors the folder, 1 otherwise. Gives up after the drain timeout (at
    least 60 s) without progress."""

    @field_validator("source", mode="before")
    @classmethod
    def _no_empty_source(cls, value: Any) -> Any:
        # Path("") is ".": an empty variable would mirror the working directory (in a
        # container often "/"), not refuse the missing setting.
        if isinstance(value, str | os.PathLike) and not os.fspath(value).strip():
            raise ValueError("must not be empty: the folder runnable writes run logs to")
        return value

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

    @field_validator("sts_endpoint", "ec2_metadata_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname or "@" in parts.netloc:
            raise ValueError("must be an http(s)://HOST[:PORT] URL without credentials")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    def credential_files(self) -> list[Path]:
        """The mounted files holding static credentials (re-read for rotation)."""
        files = (self.access_key_id_file, self.secret_access_key_file, self.session_token_file)
        return [path for path in files if path is not None]

    def mounted_files(self) -> list[Path]:
        """Every file these settings name that a Secret mount provides: the static
        credential files, the CA bundle and the SSE-C key (waited for at start, watched
        for changes)."""
        extra = [path for path in (self.tls.ca_file, self.sse.c_key_file) if path is not None]
        return self.credential_files() + extra

    def encryption(self) -> Encryption | None:
        """The server-side encryption to ask for (the SSE-C key read now); None: the
        bucket's default. ConfigError when the key file is unusable (never its content)."""
        sse = self.sse
        if sse.mode is None:
            return None
        if sse.mode is SSEMode.C and not _customer_key_may_travel(self.endpoint):
            raise ConfigError(
                "sse mode c sends the key with every request: it needs an https:// endpoint"
                " (or a loopback one)"
            )
        return Encryption(
            mode=sse.mode.value,
            kms_key_id=sse.kms_key_id,
            kms_context=tuple(sorted((sse.kms_context or {}).items())),
            customer_key=_read_customer_key(sse.c_key_file) if sse.c_key_file else None,
        )

    def _static_keys_given(self) -> bool:
        return bool(
            self.access_key_id_file
            or self.secret_access_key_file
            or _secret(self.access_key_id)
            or _secret(self.secret_access_key)
        )

    def credentials(self) -> CredentialPlan:
        """Where the credentials come from (``auto`` resolved); ConfigError naming what is
        missing or contradictory. Static keys are read now: files are re-read on every
        call, so comparing two results tells whether a mounted Secret was rotated."""
        source = self.credential_source
        if source is CredentialSource.AUTO:
            source = self._auto_source()
        elif source is CredentialSource.SERVICE_ACCOUNT:
            source = self._pod_identity_source()
        if source is CredentialSource.STATIC:
            return self._static_keys()
        if source is CredentialSource.WEB_IDENTITY:
            if self.web_identity_token_file is None:
                raise ConfigError(
                    "--credentials web-identity needs AWS_WEB_IDENTITY_TOKEN_FILE (IRSA sets it"
                    " with AWS_ROLE_ARN on pods whose ServiceAccount has the"
                    " eks.amazonaws.com/role-arn annotation)"
                )
            return WebIdentity(
                token_file=self.web_identity_token_file,
                sts_endpoint=self.sts_endpoint or sts_endpoint_for(self.aws_region),
                role_arn=self.role_arn,
                role_session_name=self.role_session_name,
            )
        if source is CredentialSource.CONTAINER:
            return self._container_credentials()
        for name, value in self._federation_variables().items():
            if value:
                # The SDK's instance provider would quietly prefer these over IMDS.
                raise ConfigError(
                    f"--credentials instance, but {name} is set; unset it, or choose"
                    " --credentials web-identity or container"
                )
        return InstanceProfile(endpoint=self.ec2_metadata_endpoint)

    def _auto_source(self) -> CredentialSource:
        if self._static_keys_given():
            return CredentialSource.STATIC
        if self.web_identity_token_file and self.role_arn:
            return CredentialSource.WEB_IDENTITY
        if self.container_credentials_full_uri or self.container_credentials_relative_uri:
            return CredentialSource.CONTAINER
        return CredentialSource.STATIC  # runnable's default minioadmin pair

    def _pod_identity_source(self) -> CredentialSource:
        if self.web_identity_token_file:
            return CredentialSource.WEB_IDENTITY
        if self.container_credentials_full_uri or self.container_credentials_relative_uri:
            return CredentialSource.CONTAINER
        raise ConfigError(
            "credentials: service-account, but this pod has no AWS identity: neither IRSA"
            " (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, from an eks.amazonaws.com/role-arn"
            " annotation on its ServiceAccount) nor EKS Pod Identity"
            " (AWS_CONTAINER_CREDENTIALS_FULL_URI, from a pod identity association) is set"
        )

    def _static_keys(self) -> StaticKeys:
        access = _read_secret_file(self.access_key_id_file) or _secret(self.access_key_id)
        secret = _read_secret_file(self.secret_access_key_file) or _secret(self.secret_access_key)
        token = _read_secret_file(self.session_token_file) or _secret(self.session_token)
        if bool(access) != bool(secret):
            have, lack = (
                ("access key id", "secret access key")
                if access
                else ("secret access key", "access key id")
            )
            raise ConfigError(
                f"a {have} is given but no {lack} (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,"
                " or their *_FILE settings): give both"
            )
        if not access:
            origin = "default"
        elif self.access_key_id_file or self.secret_access_key_file:
            origin = "files"
        else:
            origin = "environment"
        return StaticKeys(
            access or DEFAULT_MINIO_CREDENTIAL,
            secret or DEFAULT_MINIO_CREDENTIAL,
            token or None,
            origin=origin,
        )

    def _container_credentials(self) -> ContainerCredentials:
        full, relative = (
            self.container_credentials_full_uri,
            self.container_credentials_relative_uri,
        )
        if not full and not relative:
            raise ConfigError(
                "--credentials container needs AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod"
                " Identity sets it) or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (ECS)"
            )
        if relative:  # ECS's agent address is fixed; the AWS SDKs give it precedence too
            uri = CONTAINER_CREDENTIALS_HOST + "/" + relative.lstrip("/")
        else:
            assert full is not None
            try:
                uri = check_container_uri(full)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return ContainerCredentials(
            uri=uri,
            token_file=self.container_authorization_token_file,
            token=_secret(self.container_authorization_token) or None,
        )

    def _federation_variables(self) -> dict[str, object]:
        return {
            "AWS_WEB_IDENTITY_TOKEN_FILE": self.web_identity_token_file,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.container_credentials_full_uri,
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": self.container_credentials_relative_uri,
        }

    def describe(self) -> dict[str, Any]:
        """A loggable summary: no secret values, only where they come from."""
        try:
            credentials = describe_credentials(self.credentials())
        except ConfigError as exc:
            credentials = f"invalid: {exc}"
        try:
            encryption = self.encryption()
            sse = encryption.describe() if encryption else "bucket default"
        except ConfigError as exc:
            sse = f"invalid: {exc}"
        summary = {
            "source": str(self.source),
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "layout": self.layout.value,
            "credentials": credentials,
            "encryption": sse,
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
        if self.storage_class:
            summary["storage_class"] = self.storage_class
        return summary


def _customer_key_may_travel(endpoint: str) -> bool:
    """SSE-C keys go in request headers: https only, or a loopback endpoint (a local
    proxy, the tests), which never leaves the machine."""
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_customer_key(path: Path) -> bytes:
    """A 32-byte SSE-C key from a file: the raw bytes, or their base64 text."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the SSE-C key file {path}: {exc.strerror}") from None
    if len(data) == 32:
        return data
    try:
        decoded = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 32:
        raise ConfigError(
            f"the SSE-C key file {path} must hold 32 bytes, raw or base64-encoded"
            f" ({len(data)} bytes found)"
        )
    return decoded


def ambient_identity() -> CredentialPlan | None:
    """The identity this process has from its environment (the operator's own IRSA, Pod
    Identity or static keys), or None when it has none beyond runnable's default keys.
    ConfigError when the environment names one inconsistently."""
    plan = load_sidecar_settings().credentials()
    if isinstance(plan, StaticKeys) and plan.origin == "default":
        return None
    return plan


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value().strip() if value is not None else ""


def _read_secret_file(path: Path | None) -> str | None:
    """A credential file's content; ConfigError when it cannot be read or is empty (an
    empty file must not silently fall back to other credentials)."""
    if path is None:
        return None
    try:
        content = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"credentials file {path} is not UTF-8 text") from None
    if not content:
        raise ConfigError(f"credentials file {path} is empty")
    return content


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
    import yaml  # here: most sidecars take flags and variables (~11 ms of start-up)

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a secret.
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    data = _snake_keys(data)
    # Keys that are credentials must not come from a ConfigMap-style file.
    for forbidden in (
        "access_key_id",
        "secret_access_key",
        "session_token",
        "container_authorization_token",
    ):
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


def load_sidecar_settings(
    overrides: dict[str, Any] | None = None, config_file: Path | None = None
) -> SidecarSettings:
    """Build the settings from options, environment and file; ConfigError when invalid.

    The error message lists each bad field with the reason pydantic gives, never the value
    of a secret.
    """
    file_data = read_config_file(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    data: dict[str, Any] = {}
    for source in (file_data, environment_data(os.environ), overrides):  # lowest first
        _merge_into(data, _by_field_name(source))
    try:
        return SidecarSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, config_file)) from None


def environment_data(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the variables give, keyed by field name (groups as mappings).

    A setting reads :func:`env_names` (case-insensitive, the first one set wins); a group
    also reads ``RUNLOG_RELAY_<GROUP>``, a JSON object, below its fields' own variables.
    Any other variable is no setting (:func:`unknown_variables` names it)."""
    given = {name.upper(): value for name, value in environ.items()}
    data: dict[str, Any] = {}
    for name in SidecarSettings.model_fields:
        if name in GROUPS:
            group = _group_json(name, given.get(ENV_PREFIX + name.upper()))
            for path, _ in _group_fields(name):
                variable = env_names(path)[0]
                if variable in given:
                    group[path[1]] = given[variable]
            if group:
                data[name] = group
            continue
        for variable in env_names((name,)):
            if variable in given:
                data[name] = given[variable]
                break
    return data


def _group_json(group: str, text: str | None) -> dict[str, Any]:
    variable = ENV_PREFIX + group.upper()
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{variable} is not valid JSON: {exc.msg} at character {exc.pos}"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{variable} must be a JSON object of {group} settings")
    return dict(_snake_keys(value))


def _by_field_name(data: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys spelt as an alias (``credentials``) by their field's name, so that
    the sources merge by setting, whatever their spelling."""
    names = _field_names_by_key()
    return {names.get(key, key): value for key, value in data.items()}


@functools.cache
def _field_names_by_key() -> dict[str, str]:
    names: dict[str, str] = {}
    for name, field in SidecarSettings.model_fields.items():
        for choice in getattr(field.validation_alias, "choices", ()):
            names.setdefault(str(choice), name)
    return names


def _merge_into(data: dict[str, Any], higher: Mapping[str, Any]) -> None:
    """``higher`` wins, field by field inside a group (a flag for one sync field keeps
    the file's other sync fields)."""
    for key, value in higher.items():
        below = data.get(key)
        if key in GROUPS and isinstance(below, dict) and isinstance(value, dict):
            data[key] = {**below, **value}
        else:
            data[key] = value


def _format_validation_error(exc: ValidationError, config_file: Path | None) -> str:
    where = f" (config file {config_file})" if config_file else ""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "settings"
        variable = _variable_of(error["loc"])
        problems.append(f"{location}: {error['msg']}" + (f" ({variable})" if variable else ""))
    return f"invalid settings{where}: " + "; ".join(problems)


def _variable_of(loc: tuple[int | str, ...]) -> str | None:
    """The variable of the setting an error is about: by the time settings are loaded,
    flags have been checked, so a bad value comes from the environment or the file."""
    parts = tuple(str(part) for part in loc)
    for path, field in setting_fields():
        names = {path[-1], *(str(a) for a in getattr(field.validation_alias, "choices", ()))}
        depth = len(path)
        if len(parts) >= depth and parts[: depth - 1] == path[:-1] and parts[depth - 1] in names:
            return env_names(path)[0]
    return None


def setting_fields() -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """Every setting that holds a value, as (path, field): groups are walked into."""
    for name, field in SidecarSettings.model_fields.items():
        if name in GROUPS:
            yield from _group_fields(name)
        else:
            yield (name,), field


def _group_fields(name: str) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    group = SidecarSettings.model_fields[name].annotation
    assert isinstance(group, type) and issubclass(group, WireModel)
    for sub, subfield in group.model_fields.items():
        yield (name, sub), subfield


def setting_field(path: tuple[str, ...]) -> FieldInfo:
    field = SidecarSettings.model_fields[path[0]]
    if len(path) == 1:
        return field
    group = field.annotation
    assert isinstance(group, type) and issubclass(group, WireModel)
    return group.model_fields[path[1]]


def env_names(path: tuple[str, ...]) -> tuple[str, ...]:
    """The variables a setting reads, the ``RUNLOG_RELAY_*`` one first: upper-case
    aliases where the field has them (``AWS_ACCESS_KEY_ID``), else prefix + path."""
    field = setting_field(path)
    alias = field.validation_alias
    if len(path) == 1 and isinstance(alias, AliasChoices):
        names = [str(choice) for choice in alias.choices if str(choice).isupper()]
        return tuple(sorted(names, key=lambda name: not name.startswith(ENV_PREFIX)))
    return (ENV_PREFIX + "__".join(part.upper() for part in path),)


def config_key(path: tuple[str, ...]) -> str:
    """A setting's key in the config file (camelCase, the operator's ConfigMap spelling;
    snake_case is accepted too), dotted for a group's field: ``sync.debounceSeconds``."""
    field = setting_field(path)
    alias = field.validation_alias
    if len(path) == 1 and isinstance(alias, AliasChoices):
        first = str(alias.choices[0])  # the short name, e.g. ``credentials``
        return to_camel(first)
    return ".".join(to_camel(part) for part in path)


def _known_variables() -> frozenset[str]:
    names = {name for path, _ in setting_fields() for name in env_names(path)}
    names.update(ENV_PREFIX + group.upper() for group in GROUPS)  # a group as JSON
    names.add(CONFIG_VARIABLE)
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``RUNLOG_RELAY_*`` variable that is no setting (it is ignored),
    with the nearest known name when there is one."""
    environ = os.environ if environ is None else environ
    return [
        f"{name} is not a setting{hint}; it is ignored"
        for name, hint in unknown_names(environ, ENV_PREFIX, _known_variables(), _OTHER_PREFIXES)
    ]


def unknown_names(
    environ: Mapping[str, str],
    prefix: str,
    known: frozenset[str] | set[str],
    ignore: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """The variables with ``prefix`` that are not ``known`` (upper case), each with a
    ``" (did you mean X?)"`` hint naming the nearest known one, or an empty hint. Shared
    by the sidecar's and the operator's settings."""
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known or upper.startswith(ignore):
            continue
        near = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
        found.append((name, f" (did you mean {near[0]}?)" if near else ""))
    return found
