"""Pydantic models shared by the sidecar and the operator.

``StoreSpec`` is the ``spec`` of the ``RunLogStore`` custom resource *and* the shape of
the sidecar's connection settings: the operator validates a spec with it, renders the
sidecar's ``config.yaml`` from it, and generates the CRD's ``openAPIV3Schema`` from it
(:mod:`runlog_relay.config.crd`). On the wire (the CRD, the ConfigMap) fields are
camelCase through the alias generator; in Python they are snake_case. Every field's
description ends up in the CRD, so write them for users.
"""

from __future__ import annotations

import enum
import posixpath
import re
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from runlog_relay import fielddocs
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

#: runnable's own defaults (extensions/run_log_store/chunked_minio.py), so a runnable user
#: needs no new settings.
DEFAULT_ENDPOINT = "http://localhost:9002"
DEFAULT_BUCKET = "runnable/run-logs"
#: Where runnable's Argo and k8s-job executors write run logs inside their containers.
DEFAULT_LOG_FOLDER = "/tmp/run_logs"  # noqa: S108 - runnable's path, not a temp file of ours
#: Where the injected sidecar finds its config and the store's Secrets (the operator's
#: webhook mounts them there), and what the kubelet mounts into every container: a log
#: folder there, or above the system folders, would collide and the pod be rejected.
SIDECAR_CONFIG_DIR = "/etc/runlog-relay"
SIDECAR_SECRETS_DIR = "/var/run/secrets/runlog-relay"
RESERVED_FOLDERS = (
    SIDECAR_CONFIG_DIR,
    "/var/run/secrets",  # ours, and the service account token the kubelet mounts
    "/run/secrets",
    "/proc",
    "/sys",
    "/dev",
)
#: The longest RunLogStore name: it is a label value (the pods' and the ConfigMap's).
MAX_STORE_NAME = 63

# S3 bucket naming rules (lower case, 3-63, no "..", no IP-looking names are left to the
# server); a prefix is any run of safe path segments.
_BUCKET_NAME = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_PREFIX_SEGMENT = r"[A-Za-z0-9_.=+@,-]+"
BUCKET_PATTERN = rf"^{_BUCKET_NAME}(/{_PREFIX_SEGMENT})*/?$"
_BUCKET_RE = re.compile(BUCKET_PATTERN)
ENDPOINT_PATTERN = r"^https?://[^/\s?#]+/?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECRET_DATA_KEY = r"^[-._a-zA-Z0-9]+$"  # noqa: S105 - a key-name pattern, not a secret


def parse_bucket(value: str) -> tuple[str, str]:
    """Split runnable's ``bucket[/prefix]`` into ``(bucket, prefix)``; prefix has no slashes
    at either end (``""`` when absent)."""
    if not _BUCKET_RE.match(value) or ".." in value.split("/", 1)[0]:
        raise ValueError(
            f"bucket must be BUCKET[/PREFIX] with an S3 bucket name (lower case letters, digits,"
            f" dots, dashes; 3-63 characters), got {value!r}"
        )
    bucket, _, prefix = value.partition("/")
    prefix = prefix.strip("/")
    if any(part in {".", ".."} for part in prefix.split("/")):
        raise ValueError(f"bucket prefix may not contain '.' or '..' segments, got {value!r}")
    return bucket, prefix


def _check_bucket(value: str) -> str:
    parse_bucket(value)
    return value


def _check_log_folder(value: str) -> str:
    """An absolute, plain path (no ``..``), not ``/`` and not inside (or equal to) a
    folder the injected sidecar or the kubelet mounts; normalised (no trailing ``/``)."""
    if ".." in value.split("/"):
        raise ValueError("logFolder may not contain '..'")
    folder = posixpath.normpath(value)
    if folder == "/":
        raise ValueError("logFolder may not be '/': the volume would hide the image")
    for reserved in RESERVED_FOLDERS:
        if folder == reserved or folder.startswith(reserved + "/"):
            raise ValueError(
                f"logFolder {folder} is in {reserved}, which the sidecar or the kubelet mounts"
            )
    return folder


def validate_endpoint(value: str) -> str:
    """An ``http(s)://host[:port]`` URL without a path, as minio's client needs it."""
    if "@" in value:
        # Credentials in a URL would end up in logs and status; they belong in a Secret.
        # Checked first, by the "@" alone, because the messages below echo the value.
        raise ValueError("endpoint must not contain credentials; use a Secret")
    if not re.match(ENDPOINT_PATTERN, value):
        raise ValueError(f"endpoint must be http(s)://HOST[:PORT] with no path, got {value!r}")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"endpoint has an invalid port: {value!r}") from exc
    return value.rstrip("/")


#: ``90s``, ``15m``, ``12h``, ``7d``, ``1h30m``, or plain seconds (``3600``, ``0.5``).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$|^[0-9]+(\.[0-9]+)?$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: Ten years: a longer duration is a typo (and would overflow some clocks).
MAX_DURATION_SECONDS = 10 * 365 * 86400.0


def duration_seconds(value: str) -> float:
    """Seconds in a duration such as ``7d``, ``1h30m`` or ``3600``; ValueError if invalid."""
    text = value.strip()
    if not re.match(DURATION_PATTERN, text):
        raise ValueError(
            f"a duration is a number of seconds or units like 90s, 15m, 12h, 7d, 1h30m;"
            f" got {value!r}"
        )
    if _DURATION_PART.match(text) is None:
        seconds = float(text)
    else:
        seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value!r} is longer than ten years")
    return seconds


def _check_duration(value: str) -> str:
    duration_seconds(value)
    return value.strip()


Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(pattern=DURATION_PATTERN, max_length=32),
]
"""A duration on the wire: ``90s``, ``15m``, ``12h``, ``7d``, ``1h30m`` or seconds."""


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*$")
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB")


def size_bytes(value: Any) -> Any:
    """Bytes in a size such as ``16MiB``, ``512KiB``, ``1.5GiB``, ``16Mi`` (Kubernetes'
    spelling) or ``20MB`` (decimal), or a plain number of bytes; other values are left for
    the integer validation to refuse."""
    if isinstance(value, bool) or not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(
            f"a size is a number of bytes or one with a unit, like 16MiB, 512KiB, 1GiB or"
            f" 20MB; got {value!r}"
        )
    number, unit = match.groups()
    if unit is None:
        amount = float(number)
    else:
        base = 1024 if unit.endswith("i") else 1000
        amount = float(number) * base ** _SIZE_POWERS[unit[0].lower()]
    if amount != int(amount):
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(amount)


def format_size(value: int) -> str:
    """``16777216`` → ``16MiB``: the largest binary unit that divides it exactly."""
    for power in range(len(_BINARY_UNITS), 0, -1):
        if value and value % 1024**power == 0:
            return f"{value // 1024**power}{_BINARY_UNITS[power - 1]}"
    return str(value)


Size = Annotated[int, BeforeValidator(size_bytes)]
"""A number of bytes; on input also ``16MiB``, ``512KiB``, ``1GiB``, ``16Mi`` or ``20MB``.
The CRD keeps an integer (bytes): Kubernetes checks its bounds before the operator sees it."""


BucketRef = Annotated[
    str,
    AfterValidator(_check_bucket),
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


class BucketParts:
    """``bucket_name`` and ``prefix`` of a model with runnable's ``bucket[/prefix]`` field.

    The field itself is declared by each model (a class annotation here would become a
    pydantic field and reorder the generated CRD)."""

    if TYPE_CHECKING:
        bucket: str

    @property
    def bucket_name(self) -> str:
        return parse_bucket(self.bucket)[0]

    @property
    def prefix(self) -> str:
        return parse_bucket(self.bucket)[1]


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

    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253)
    """Name of the Secret (same namespace as the RunLogStore)."""
    key: str = Field(pattern=_SECRET_DATA_KEY, max_length=253)
    """Key inside the Secret's data."""


class CredentialsSecretRef(WireModel):
    """The Secret that holds the S3 access key pair."""

    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253)
    """Name of the Secret, in the RunLogStore's own namespace."""
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID", pattern=_SECRET_DATA_KEY, max_length=253
    )
    """Key in the Secret holding the access key id."""
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY", pattern=_SECRET_DATA_KEY, max_length=253
    )
    """Key in the Secret holding the secret access key."""
    session_token_key: str | None = Field(default=None, pattern=_SECRET_DATA_KEY, max_length=253)
    """Key in the Secret holding a session token, for temporary keys (unset: none)."""


class SSEMode(enum.StrEnum):
    """Server-side encryption of the objects written: S3-managed keys, a KMS key, or a
    key of your own sent with every request (SSE-C)."""

    S3 = "s3"
    KMS = "kms"
    C = "c"


#: A KMS key id, alias or ARN: no spaces (AWS allows up to 2048 characters, checked
#: with ``max_length``: a bounded repetition of a Unicode class, ``{1,2048}``, compiles
#: into an 8 MiB automaton in pydantic-core's regex engine, in every sidecar's memory).
KMS_KEY_PATTERN = r"^\S+$"
KMS_KEY_MAX_LENGTH = 2048
#: An S3 storage class name (STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, …).
STORAGE_CLASS_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"


def check_sse_fields(
    mode: SSEMode | None, *, kms_key_id: str | None, kms_context: object, customer_key: object
) -> None:
    """The SSE fields that go together: KMS options only with ``kms``, the customer key
    with ``c`` and only then (one rule for the CRD spec and the sidecar settings)."""
    if (kms_key_id or kms_context) and mode is not SSEMode.KMS:
        raise ValueError("kmsKeyId and kmsContext need mode kms")
    if mode is SSEMode.C and not customer_key:
        raise ValueError("mode c needs the customer key (a 32-byte key in a Secret / file)")
    if customer_key and mode is not SSEMode.C:
        raise ValueError("a customer key is only used with mode c")


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

    debounce_seconds: float = Field(default=0.05, ge=0.0, le=60.0)
    """Coalesce bursts of writes to one file for at most this long before reading it.
    Short keeps the bucket close behind; longer saves reads on busy files."""
    rescan_interval_seconds: float = Field(default=60.0, ge=1.0, le=86400.0)
    """Full rescan of the folder as a safety net for missed events (a stat per file)."""
    concurrency: int = Field(default=16, ge=1, le=64)
    """Uploads in flight at once."""
    force_polling: bool = False
    """Poll instead of using inotify: for NFS, CIFS and CSI volumes that deliver no events."""
    poll_interval_seconds: float = Field(default=1.0, ge=0.05, le=60.0)
    """Polling period when `forcePolling` is on."""
    torn_grace_seconds: float = Field(default=30.0, ge=0.0, le=86400.0)
    """How long a file may stay unreadable as JSON (torn, half-written) before it is
    reported loudly (log, metric, event). It is retried all the time regardless."""
    permanent_error_retry_seconds: float = Field(default=30.0, ge=0.1, le=3600.0)
    """After a permanent error (AccessDenied, NoSuchBucket, refused credentials) the store
    is tried again this often, by one request, until someone fixes it."""
    drain_timeout_seconds: float = Field(default=25.0, ge=0.0, le=3600.0)
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


class LocalRetention(WireModel):
    """Deleting sealed runs from the volume, for shared volumes that fill up. Off by
    default: run logs stay where runnable wrote them."""

    delete_after: Duration | None = None
    """Delete a run's folder (single layout: its file) from the volume this long after the
    run was sealed (final status, every file verified in the bucket), after checking the
    bucket once more; never before. Unset: never delete. Needs a writable mount of the
    volume."""
    dry_run: bool = False
    """Only log and count what would be deleted (`runlog_relay_retention_would_delete_*`)."""

    @property
    def seconds(self) -> float | None:
        """``delete_after`` in seconds, None when retention is off."""
        return None if self.delete_after is None else duration_seconds(self.delete_after)

    @property
    def deletes(self) -> bool:
        """Files are really deleted (not off, not a dry run): the volume must be writable."""
        return self.delete_after is not None and not self.dry_run


class StoreSpec(BucketParts, WireModel):
    """Where and how run logs are mirrored: the `spec` of a RunLogStore."""

    endpoint: Endpoint = DEFAULT_ENDPOINT
    """S3/MinIO endpoint URL, `http(s)://host[:port]`."""
    bucket: BucketRef = DEFAULT_BUCKET
    """runnable's `bucket[/prefix]` form, as in the run log store config of runnable."""
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,64}$", max_length=64)
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
    log_folder: Annotated[str, AfterValidator(_check_log_folder)] = Field(
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
