"""The schema of the sidecar's settings, in pydantic: the authority on what is valid.

The sidecar does not import this module to start: it checks its settings with
:mod:`runlog_relay.config.fields`, from a table generated from these models
(:mod:`runlog_relay.config.fieldgen` writes :mod:`runlog_relay.config.settings_fields`).
It is imported when that reader refuses a value, so the error is pydantic's, worded as
:func:`explain` words it, and by the code that needs the schema itself: the generator,
the reference docs and the tests that hold the two readers together.

The connection fields (endpoint, bucket, region, layout, create_bucket) and the embedded
``tls``/``sync`` groups use the same types as :class:`~runlog_relay.config.models.StoreSpec`,
so the ConfigMap the operator renders from a RunLogStore (camelCase) is a valid config
file here too. Secret values are ``SecretStr``: never printed, logged or put in ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from runlog_relay import fielddocs
from runlog_relay.config.credentials import CredentialSource
from runlog_relay.config.models import (
    BucketRef,
    Endpoint,
    LocalRetention,
    NumberFloat,
    NumberInt,
    RegionSetting,
    SyncSpec,
    WireModel,
)
from runlog_relay.config.rules import (
    DEFAULT_BUCKET,
    DEFAULT_ENDPOINT,
    DEFAULT_METRICS_PORT,
    ENV_PREFIX,
    KMS_KEY_MAX_LENGTH,
    KMS_KEY_PATTERN,
    STORAGE_CLASS_PATTERN,
    LogFormat,
    SSEMode,
    check_http_url,
    check_log_level,
    check_run_ids,
    check_sidecar_sse,
    check_source,
    json_object_text,
    optional_stripped,
    reason_of,
    split_run_ids,
)
from runlog_relay.layout import Layout

__all__ = [
    "SidecarSSEModel",
    "SidecarSettingsModel",
    "SidecarShardModel",
    "SidecarTLSModel",
    "explain",
]


class SidecarTLSModel(WireModel):
    """TLS for https endpoints, as the sidecar sees it (the CA is a mounted file)."""

    insecure_skip_verify: bool = False
    """Skip certificate verification (test setups only)."""
    ca_file: Path | None = None
    """PEM CA bundle to trust, e.g. mounted from the Secret named in the RunLogStore."""


class SidecarSSEModel(WireModel):
    """Server-side encryption, as the sidecar and the tools see it (the SSE-C key is a
    mounted file)."""

    mode: SSEMode | None = None
    """s3, kms or c; unset: the bucket's default encryption."""
    kms_key_id: str | None = Field(
        default=None, pattern=KMS_KEY_PATTERN, max_length=KMS_KEY_MAX_LENGTH
    )
    """KMS key id, alias or ARN (mode kms); unset: the bucket's default KMS key."""
    kms_context: Annotated[dict[str, str] | None, BeforeValidator(json_object_text)] = None
    """KMS encryption context (mode kms): a mapping, or its JSON text."""
    c_key_file: Path | None = None
    """File with the 32-byte customer key, raw or base64 (mode c), mounted from a Secret."""

    @model_validator(mode="after")
    def _fields_of_the_mode(self) -> SidecarSSEModel:
        check_sidecar_sse(dict(self))
        return self


class SidecarShardModel(WireModel):
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
    lease_seconds: NumberFloat = Field(default=15.0, ge=1.0, le=600.0)
    """A replica whose Lease has not been renewed for this long is gone: its runs move to
    the others. Renewed every third of it."""
    api_url: str = Field(default="", max_length=2048)
    """Kubernetes API URL; empty: in-cluster (``KUBERNETES_SERVICE_HOST``, the service
    account's token and CA)."""


class SidecarSettingsModel(BaseModel):
    """Everything the sidecar needs; see ``runlog-relay sidecar --help``. The schema of
    :class:`runlog_relay.config.settings.SidecarSettings`, which is what the sidecar and
    the tools are given."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
        use_attribute_docstrings=fielddocs.wanted(),  # see runlog_relay.fielddocs
    )

    source: Annotated[Path | None, BeforeValidator(check_source)] = None
    """The folder runnable writes run logs to (its `log_folder`); required. It may not
    exist yet when a long-running sidecar starts (runnable creates it): until it does,
    `/readyz` says so and a warning repeats. A file there is an error."""
    endpoint: Endpoint = DEFAULT_ENDPOINT
    """S3/MinIO endpoint URL."""
    bucket: BucketRef = DEFAULT_BUCKET
    """runnable's BUCKET[/PREFIX]."""
    region: RegionSetting | None = None
    """S3 region; unset for MinIO. On AWS, setting it saves a `GetBucketLocation`."""
    layout: Layout = Layout.CHUNKED
    """`chunked` (runnable's chunked-fs → chunked-minio) or `single` (file-system → minio)."""
    create_bucket: bool = False
    """Create the bucket if it is missing."""
    tls: SidecarTLSModel = SidecarTLSModel()
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
    retry_run_id: Annotated[str | None, AfterValidator(optional_stripped)] = Field(
        default=None,
        validation_alias=AliasChoices(
            "retry_run_id", f"{ENV_PREFIX}RETRY_RUN_ID", "RUNNABLE_RETRY_RUN_ID"
        ),
    )
    """The run this pod retries (runnable's `RUNNABLE_RETRY_RUN_ID`, which the webhook
    copies from the pipeline's container): with `exitWhenSealed`, its final status from
    before the pod does not count as the pod's work being done."""
    shard: SidecarShardModel = SidecarShardModel()
    """Scale-out over replicas sharing one folder (off unless ``shard.group`` is set)."""
    run_ids: Annotated[
        tuple[str, ...], BeforeValidator(split_run_ids), AfterValidator(check_run_ids)
    ] = ()
    """Mirror only these runs (chunked: the `<run_id>/` folders; single: `<run_id>.json`)
    and list only their prefixes in the bucket; empty: every run. The flag repeats; the
    variable is comma-separated (one id is valid, so a downward-API field can fill it)."""
    sse: SidecarSSEModel = SidecarSSEModel()
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
    sts_endpoint: Annotated[str | None, AfterValidator(check_http_url)] = Field(
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
    ec2_metadata_endpoint: Annotated[str | None, AfterValidator(check_http_url)] = Field(
        default=None,
        validation_alias=AliasChoices("ec2_metadata_endpoint", "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
    )
    """IMDS address for --credentials instance; default the SDK's 169.254.169.254."""

    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    """Address the metrics and health server binds to."""
    metrics_port: NumberInt = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)
    """Port for `/metrics`, `/healthz` and `/readyz`; 0 picks a free port."""
    log_level: Annotated[str, AfterValidator(check_log_level)] = "INFO"
    """`DEBUG`, `INFO`, `WARNING` or `ERROR`."""
    log_format: LogFormat = LogFormat.PLAIN
    """`plain` for people, `json` lines for log pipelines."""
    once: bool = False
    """Reconcile the whole folder with the bucket once, upload what differs, and exit: 0
    when the bucket mirrors the folder, 1 otherwise. Gives up after the drain timeout (at
    least 60 s) without progress."""


def explain(exc: ValidationError, config_file: Path | None) -> str:
    """A ConfigError's message for pydantic's error: each bad field with its reason and
    the variable it comes from, never a secret's value."""
    where = f" (config file {config_file})" if config_file else ""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "settings"
        variable = _variable_of(error["loc"])
        reason = reason_of(error)
        problems.append(f"{location}: {reason}" + (f" ({variable})" if variable else ""))
    return f"invalid settings{where}: " + "; ".join(problems)


def _variable_of(loc: tuple[int | str, ...]) -> str | None:
    """The variable of the setting an error is about: by the time settings are loaded,
    flags have been checked, so a bad value comes from the environment or the file."""
    from runlog_relay.config.settings import env_names, setting_fields

    parts = tuple(str(part) for part in loc)
    for path, setting in setting_fields():
        names = set(setting.aliases)
        depth = len(path)
        if len(parts) >= depth and parts[: depth - 1] == path[:-1] and parts[depth - 1] in names:
            return env_names(path)[0]
    return None
