"""Pydantic models shared by the sidecar and the operator.

``StoreSpec`` is the ``spec`` of the ``RunLogStore`` custom resource *and* the shape of
the sidecar's connection settings: the operator validates a spec with it, renders the
sidecar's ``config.yaml`` from it, and generates the CRD's ``openAPIV3Schema`` from it
(:mod:`runlog_relay.config.crd`). On the wire (the CRD, the ConfigMap) fields are
camelCase through the alias generator; in Python they are snake_case. Every field's
description ends up in the CRD, so write them for users.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from runlog_relay import fielddocs
from runlog_relay.config.rules import (
    BUCKET_PATTERN,
    DEFAULT_BUCKET,
    DEFAULT_ENDPOINT,
    DEFAULT_LOG_FOLDER,
    DNS_SUBDOMAIN_PATTERN,
    DURATION_PATTERN,
    ENDPOINT_PATTERN,
    KMS_KEY_MAX_LENGTH,
    KMS_KEY_PATTERN,
    MAX_STORE_NAME,
    REGION_PATTERN,
    RESERVED_FOLDERS,
    SECRET_DATA_KEY_PATTERN,
    SIDECAR_CONFIG_DIR,
    SIDECAR_SECRETS_DIR,
    STORAGE_CLASS_PATTERN,
    BucketParts,
    RetentionTimes,
    SSEMode,
    check_bucket,
    check_duration,
    check_log_folder,
    check_region,
    check_region_setting,
    check_sse_fields,
    duration_seconds,
    format_size,
    not_a_switch,
    parse_bucket,
    size_bytes,
    validate_endpoint,
)
from runlog_relay.layout import Layout

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_ENDPOINT",
    "DEFAULT_LOG_FOLDER",
    "MAX_STORE_NAME",
    "RESERVED_FOLDERS",
    "SIDECAR_CONFIG_DIR",
    "SIDECAR_SECRETS_DIR",
    "BucketParts",
    "BucketRef",
    "CredentialsSecretRef",
    "CredentialsSpec",
    "Duration",
    "Layout",
    "LocalRetention",
    "NumberFloat",
    "NumberInt",
    "Region",
    "RegionSetting",
    "SSEMode",
    "SSESpec",
    "SecretKeyRef",
    "ServiceAccountIdentity",
    "Size",
    "StoreSpec",
    "SyncSpec",
    "TLSSpec",
    "WireModel",
    "check_sse_fields",
    "duration_seconds",
    "format_size",
    "parse_bucket",
    "size_bytes",
    "validate_endpoint",
]

Duration = Annotated[
    str,
    AfterValidator(check_duration),
    Field(pattern=DURATION_PATTERN, max_length=32),
]
"""A duration on the wire: ``90s``, ``15m``, ``12h``, ``7d``, ``1h30m`` or seconds."""


#: A number in the settings: on input not ``true``/``false`` (a bool is an int in Python).
NumberInt = Annotated[int, BeforeValidator(not_a_switch)]
NumberFloat = Annotated[float, BeforeValidator(not_a_switch)]

Size = Annotated[int, BeforeValidator(size_bytes)]
"""A number of bytes; on input also ``16MiB``, ``512KiB``, ``1GiB``, ``16Mi`` or ``20MB``.
The CRD keeps an integer (bytes): Kubernetes checks its bounds before the operator sees it."""


BucketRef = Annotated[
    str,
    AfterValidator(check_bucket),
    Field(
        pattern=BUCKET_PATTERN,
        max_length=1024,  # an S3 key, prefix included, is at most 1024 bytes
        description=(
            "runnable's `bucket[/prefix]`: the S3 bucket, optionally followed by a key prefix"
            " under which runs are stored (runnable's default `runnable/run-logs`)."
        ),
    ),
]
Endpoint = Annotated[
    str,
    AfterValidator(validate_endpoint),
    Field(
        pattern=ENDPOINT_PATTERN,
        max_length=2048,
        description="S3/MinIO endpoint URL, `http(s)://host[:port]` (runnable's default"
        " `http://localhost:9002`).",
    ),
]

#: An S3 region name (``us-east-1``, MinIO's ``site-a``), checked by the rule's own words
#: (pydantic's would quote the pattern); the schema still carries the pattern, for the CRD.
Region = Annotated[
    str,
    AfterValidator(check_region),
    Field(json_schema_extra={"pattern": f"^{REGION_PATTERN}$", "maxLength": 64}),
]
#: The same in the process settings, where an empty variable is a value meaning unset
#: (Argo and templates leave variables empty).
RegionSetting = Annotated[
    str,
    AfterValidator(check_region_setting),
    Field(json_schema_extra={"pattern": f"^(?:{REGION_PATTERN})?$", "maxLength": 64}),
]


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        # The descriptions of the CRD and --help; not read by a running sidecar.
        use_attribute_docstrings=fielddocs.wanted(),
        # Validators are built on first use: a sidecar uses the few its settings embed,
        # not the operator's (StoreSpec, its credential references), ~3 ms each.
        defer_build=True,
    )

    def wire(self) -> dict[str, Any]:
        """The camelCase JSON form (for CRDs, ConfigMaps and status)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SecretKeyRef(WireModel):
    """A key in a Secret in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Name of the Secret (same namespace as the RunLogStore)."""
    key: str = Field(pattern=SECRET_DATA_KEY_PATTERN, max_length=253)
    """Key inside the Secret's data."""


class CredentialsSecretRef(WireModel):
    """The Secret that holds the S3 access key pair."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Name of the Secret, in the RunLogStore's own namespace."""
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID", pattern=SECRET_DATA_KEY_PATTERN, max_length=253
    )
    """Key in the Secret holding the access key id."""
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY", pattern=SECRET_DATA_KEY_PATTERN, max_length=253
    )
    """Key in the Secret holding the secret access key."""
    session_token_key: str | None = Field(
        default=None, pattern=SECRET_DATA_KEY_PATTERN, max_length=253
    )
    """Key in the Secret holding a session token, for temporary keys (unset: none)."""


class SSESpec(WireModel):
    """Server-side encryption of the objects the sidecars write."""

    mode: SSEMode
    """`s3` (S3-managed keys, SSE-S3), `kms` (a KMS key, SSE-KMS) or `c` (your own key,
    SSE-C: sent with every request, so it needs an https endpoint)."""
    kms_key_id: str | None = Field(
        default=None, pattern=KMS_KEY_PATTERN, max_length=KMS_KEY_MAX_LENGTH
    )
    """KMS key id, alias or ARN for `kms`; unset: the bucket's default (aws/s3) key."""
    kms_context: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, max_length=16
    )
    """Encryption context for `kms` (string pairs), bound to every object's data key."""
    customer_key_secret_ref: SecretKeyRef | None = None
    """For `c`: the key in a Secret of this namespace, 32 bytes raw or base64-encoded."""

    @model_validator(mode="after")
    def _fields_of_the_mode(self) -> SSESpec:
        check_sse_fields(
            self.mode,
            kms_key_id=self.kms_key_id,
            kms_context=self.kms_context,
            customer_key=self.customer_key_secret_ref,
        )
        return self


class ServiceAccountIdentity(WireModel):
    """The pods' own AWS identity: IRSA (a role-arn annotation on their ServiceAccount) or
    EKS Pod Identity (an association for it). Nothing secret is stored or mounted."""


class CredentialsSpec(WireModel):
    """Where the sidecars get their S3 credentials: exactly one of the fields."""

    secret_ref: CredentialsSecretRef | None = None
    """A Secret in the RunLogStore's own namespace with an access key pair (and optionally a
    session token), mounted into the sidecar as files."""
    service_account: ServiceAccountIdentity | None = None
    """`{}`: the pods' own identity (IRSA web identity or EKS Pod Identity, as EKS injects it
    into every container). The operator checks the bucket with its own identity if it has
    one; otherwise `BucketReady` is `Unknown` (reason `CheckedBySidecars`)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialsSpec:
        if (self.secret_ref is None) == (self.service_account is None):
            raise ValueError("set exactly one of secretRef and serviceAccount")
        return self


class TLSSpec(WireModel):
    """TLS options for https endpoints."""

    insecure_skip_verify: bool = False
    """Skip certificate verification. Only for test setups: it allows impersonation."""
    ca_secret_ref: SecretKeyRef | None = None
    """A PEM CA bundle in a Secret, for endpoints signed by a private CA."""


class SyncSpec(WireModel):
    """How the sidecar watches and uploads. The defaults suit most volumes."""

    debounce_seconds: NumberFloat = Field(default=0.05, ge=0.0, le=60.0)
    """Coalesce bursts of writes to one file for at most this long before reading it.
    Short keeps the bucket close behind; longer saves reads on busy files."""
    rescan_interval_seconds: NumberFloat = Field(default=60.0, ge=1.0, le=86400.0)
    """Full rescan of the folder as a safety net for missed events (a stat per file)."""
    concurrency: NumberInt = Field(default=16, ge=1, le=64)
    """Uploads in flight at once."""
    force_polling: bool = False
    """Poll instead of using inotify: for NFS, CIFS and CSI volumes that deliver no events."""
    poll_interval_seconds: NumberFloat = Field(default=1.0, ge=0.05, le=60.0)
    """Polling period when `forcePolling` is on."""
    torn_grace_seconds: NumberFloat = Field(default=30.0, ge=0.0, le=86400.0)
    """How long a file may stay unreadable as JSON (torn, half-written) before it is
    reported loudly (log, metric, event). It is retried all the time regardless."""
    permanent_error_retry_seconds: NumberFloat = Field(default=30.0, ge=0.1, le=3600.0)
    """After a permanent error (AccessDenied, NoSuchBucket, refused credentials) the store
    is tried again this often, by one request, until someone fixes it."""
    drain_timeout_seconds: NumberFloat = Field(default=25.0, ge=0.0, le=3600.0)
    """On shutdown, how long to keep uploading what is pending before giving up. Keep it
    below the pod's terminationGracePeriodSeconds (30 by default)."""
    max_pending_bytes: Size = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    """Upper bound on file contents held in memory waiting for upload, and on the parts of
    big files being streamed; the reader waits when it is reached (back-pressure, nothing
    is dropped). Keeps the sidecar's memory flat whatever the folder holds; one larger
    upload is always admitted."""
    max_file_bytes: Size = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    """Largest run-log file mirrored, in bytes. A bigger file is not read: it is counted
    (`runlog_relay_skipped_files_total{reason="too_large"}`), warned about once and named
    when the sidecar exits (which is then not a complete mirror)."""


class LocalRetention(RetentionTimes, WireModel):
    """Deleting sealed runs from the volume, for shared volumes that fill up. Off by
    default: run logs stay where runnable wrote them."""

    delete_after: Duration | None = None
    """Delete a run's folder (single layout: its file) from the volume this long after the
    run was sealed (final status, every file verified in the bucket), after checking the
    bucket once more; never before. Unset: never delete. Needs a writable mount of the
    volume."""
    dry_run: bool = False
    """Only log and count what would be deleted (`runlog_relay_retention_would_delete_*`)."""


class StoreSpec(BucketParts, WireModel):
    """Where and how run logs are mirrored: the `spec` of a RunLogStore."""

    endpoint: Endpoint = DEFAULT_ENDPOINT
    """S3/MinIO endpoint URL, `http(s)://host[:port]`."""
    bucket: BucketRef = DEFAULT_BUCKET
    """runnable's `bucket[/prefix]` form, as in the run log store config of runnable."""
    region: Region | None = None
    """S3 region; leave unset for MinIO."""
    tls: TLSSpec = TLSSpec()
    """TLS options for https endpoints."""
    credentials: CredentialsSpec | None = None
    """Where the sidecars' S3 credentials come from: `secretRef` (a Secret in this
    namespace) or `serviceAccount` (the pods' IRSA / EKS Pod Identity). Unset (and no
    `credentialsSecretRef`): runnable's default `minioadmin` credentials."""
    credentials_secret_ref: CredentialsSecretRef | None = None
    """Deprecated spelling of `credentials.secretRef`, still honoured; set one or the
    other, not both."""
    sse: SSESpec | None = None
    """Server-side encryption of the objects written; unset: the bucket's default."""
    storage_class: str | None = Field(default=None, pattern=STORAGE_CLASS_PATTERN, max_length=64)
    """S3 storage class of the objects written (e.g. `STANDARD_IA`, `INTELLIGENT_TIERING`);
    unset: the bucket's default (`STANDARD`)."""
    layout: Layout = Layout.CHUNKED
    """`chunked` (runnable chunked-fs → chunked-minio) or `single` (file-system → minio)."""
    log_folder: Annotated[str, AfterValidator(check_log_folder)] = Field(
        default=DEFAULT_LOG_FOLDER, pattern=r"^/[^\n]*$", max_length=1024
    )
    """Absolute path where runnable writes run logs inside the pods. Not `/`, and not in
    a folder the sidecar or the kubelet mounts (`/etc/runlog-relay`, `/var/run/secrets`,
    `/proc`, `/sys`, `/dev`)."""
    create_bucket: bool = False
    """Create the bucket when it does not exist."""
    sync: SyncSpec = SyncSpec()
    """Sidecar sync tuning."""
    tag_sealed_runs: bool = False
    """When a run is sealed, tag each of its objects `runlog-relay/status=<SUCCESS|FAIL>`
    (one PutObjectTagging per object; the credentials need `s3:PutObjectTagging`), so
    bucket lifecycle rules can act on a run's status. A server without object tagging is
    reported once and the run is sealed untagged."""
    local_retention: LocalRetention = LocalRetention()
    """Delete sealed runs from the volume after a while (shared volumes)."""

    @property
    def secret_ref(self) -> CredentialsSecretRef | None:
        """The credentials Secret reference, whichever field names it."""
        if self.credentials is not None:
            return self.credentials.secret_ref
        return self.credentials_secret_ref

    @property
    def secret_ref_field(self) -> str:
        """Where that reference is in the spec, for messages."""
        if self.credentials_secret_ref is not None:
            return "spec.credentialsSecretRef"
        return "spec.credentials.secretRef"

    @property
    def uses_service_account(self) -> bool:
        return self.credentials is not None and self.credentials.service_account is not None

    @model_validator(mode="after")
    def _one_credentials_field(self) -> StoreSpec:
        if self.credentials is not None and self.credentials_secret_ref is not None:
            raise ValueError(
                "set credentials or the deprecated credentialsSecretRef, not both"
                " (credentials.secretRef replaces credentialsSecretRef)"
            )
        return self

    @model_validator(mode="after")
    def _customer_keys_over_https(self) -> StoreSpec:
        if (
            self.sse is not None
            and self.sse.mode is SSEMode.C
            and self.endpoint.startswith("http://")
        ):
            raise ValueError(
                "sse mode c sends the key with every request: it needs an https:// endpoint"
            )
        return self

    @model_validator(mode="after")
    def _https_only_options(self) -> StoreSpec:
        if self.endpoint.startswith("http://") and (
            self.tls.insecure_skip_verify or self.tls.ca_secret_ref
        ):
            raise ValueError("tls options need an https:// endpoint")
        return self
