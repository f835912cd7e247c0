"""The sidecar's settings fields: GENERATED from runlog_relay.config.settings_model.

Do not edit: run ``make settings-fields`` (``python -m runlog_relay.config.fieldgen``); a unit
test fails while this file is not what the schema gives. :mod:`runlog_relay.config.fields`
checks values with it, without importing pydantic.
"""

# ruff: noqa: E501, S104

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from runlog_relay.config.credentials import CredentialSource
from runlog_relay.config.fields import Fields, Secret, Setting
from runlog_relay.config.rules import LogFormat, SSEMode
from runlog_relay.layout import Layout

if TYPE_CHECKING:
    from runlog_relay.config.settings import (
        LocalRetentionSettings,
        SidecarShard,
        SidecarSSE,
        SidecarTLS,
        SyncSettings,
    )

__all__ = [
    "LocalRetentionFields",
    "SidecarSSEFields",
    "SidecarSettingsFields",
    "SidecarShardFields",
    "SidecarTLSFields",
    "SyncFields",
]


class SidecarTLSFields(Fields):
    """The fields of runlog_relay.config.settings_model.SidecarTLSModel."""

    GENERATED: ClassVar[bool] = True
    MODEL: ClassVar[str] = 'SidecarTLSModel'

    insecure_skip_verify: bool
    ca_file: Path | None

    FIELDS: ClassVar[tuple[Setting, ...]] = (
        Setting('insecure_skip_verify', 'bool', False, aliases=('insecureSkipVerify',), description='Skip certificate verification (test setups only).'),
        Setting('ca_file', 'path', None, optional=True, aliases=('caFile',), description='PEM CA bundle to trust, e.g. mounted from the Secret named in the RunLogStore.'),
    )

class SyncFields(Fields):
    """The fields of runlog_relay.config.models.SyncSpec."""

    GENERATED: ClassVar[bool] = True
    MODEL: ClassVar[str] = 'SyncSpec'

    debounce_seconds: float
    rescan_interval_seconds: float
    concurrency: int
    force_polling: bool
    poll_interval_seconds: float
    torn_grace_seconds: float
    permanent_error_retry_seconds: float
    drain_timeout_seconds: float
    max_pending_bytes: int
    max_file_bytes: int

    FIELDS: ClassVar[tuple[Setting, ...]] = (
        Setting('debounce_seconds', 'float', 0.05, aliases=('debounceSeconds',), ge=0.0, le=60.0, before=('not_a_switch',), description='Coalesce bursts of writes to one file for at most this long before reading it. Short keeps the bucket close behind; longer saves reads on busy files.'),
        Setting('rescan_interval_seconds', 'float', 60.0, aliases=('rescanIntervalSeconds',), ge=1.0, le=86400.0, before=('not_a_switch',), description='Full rescan of the folder as a safety net for missed events (a stat per file).'),
        Setting('concurrency', 'int', 16, aliases=('concurrency',), ge=1, le=64, before=('not_a_switch',), description='Uploads in flight at once.'),
        Setting('force_polling', 'bool', False, aliases=('forcePolling',), description='Poll instead of using inotify: for NFS, CIFS and CSI volumes that deliver no events.'),
        Setting('poll_interval_seconds', 'float', 1.0, aliases=('pollIntervalSeconds',), ge=0.05, le=60.0, before=('not_a_switch',), description='Polling period when `forcePolling` is on.'),
        Setting('torn_grace_seconds', 'float', 30.0, aliases=('tornGraceSeconds',), ge=0.0, le=86400.0, before=('not_a_switch',), description='How long a file may stay unreadable as JSON (torn, half-written) before it is reported loudly (log, metric, event). It is retried all the time regardless.'),
        Setting('permanent_error_retry_seconds', 'float', 30.0, aliases=('permanentErrorRetrySeconds',), ge=0.1, le=3600.0, before=('not_a_switch',), description='After a permanent error (AccessDenied, NoSuchBucket, refused credentials) the store is tried again this often, by one request, until someone fixes it.'),
        Setting('drain_timeout_seconds', 'float', 25.0, aliases=('drainTimeoutSeconds',), ge=0.0, le=3600.0, before=('not_a_switch',), description="On shutdown, how long to keep uploading what is pending before giving up. Keep it below the pod's terminationGracePeriodSeconds (30 by default)."),
        Setting('max_pending_bytes', 'int', 16777216, aliases=('maxPendingBytes',), ge=1048576, before=('size_bytes',), description="Upper bound on file contents held in memory waiting for upload, and on the parts of big files being streamed; the reader waits when it is reached (back-pressure, nothing is dropped). Keeps the sidecar's memory flat whatever the folder holds; one larger upload is always admitted."),
        Setting('max_file_bytes', 'int', 268435456, aliases=('maxFileBytes',), ge=1048576, before=('size_bytes',), description='Largest run-log file mirrored, in bytes. A bigger file is not read: it is counted (`runlog_relay_skipped_files_total{reason="too_large"}`), warned about once and named when the sidecar exits (which is then not a complete mirror).'),
    )

class SidecarSSEFields(Fields):
    """The fields of runlog_relay.config.settings_model.SidecarSSEModel."""

    GENERATED: ClassVar[bool] = True
    MODEL: ClassVar[str] = 'SidecarSSEModel'
    GROUP_RULE: ClassVar[str] = 'check_sidecar_sse'

    mode: SSEMode | None
    kms_key_id: str | None
    kms_context: dict[str, str] | None
    c_key_file: Path | None

    FIELDS: ClassVar[tuple[Setting, ...]] = (
        Setting('mode', SSEMode, None, optional=True, aliases=('mode',), description="s3, kms or c; unset: the bucket's default encryption."),
        Setting('kms_key_id', 'str', None, optional=True, aliases=('kmsKeyId',), max_length=2048, pattern='^\\S+$', description="KMS key id, alias or ARN (mode kms); unset: the bucket's default KMS key."),
        Setting('kms_context', 'dict_str', None, optional=True, aliases=('kmsContext',), before=('json_object_text',), description='KMS encryption context (mode kms): a mapping, or its JSON text.'),
        Setting('c_key_file', 'path', None, optional=True, aliases=('cKeyFile',), description='File with the 32-byte customer key, raw or base64 (mode c), mounted from a Secret.'),
    )

class LocalRetentionFields(Fields):
    """The fields of runlog_relay.config.models.LocalRetention."""

    GENERATED: ClassVar[bool] = True
    MODEL: ClassVar[str] = 'LocalRetention'

    delete_after: str | None
    dry_run: bool

    FIELDS: ClassVar[tuple[Setting, ...]] = (
        Setting('delete_after', 'str', None, optional=True, aliases=('deleteAfter',), max_length=32, pattern='^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d|w))+$|^[0-9]+(\\.[0-9]+)?$', after=('check_duration',), description="Delete a run's folder (single layout: its file) from the volume this long after the run was sealed (final status, every file verified in the bucket), after checking the bucket once more; never before. Unset: never delete. Needs a writable mount of the volume."),
        Setting('dry_run', 'bool', False, aliases=('dryRun',), description='Only log and count what would be deleted (`runlog_relay_retention_would_delete_*`).'),
    )

class SidecarShardFields(Fields):
    """The fields of runlog_relay.config.settings_model.SidecarShardModel."""

    GENERATED: ClassVar[bool] = True
    MODEL: ClassVar[str] = 'SidecarShardModel'

    group: str
    identity: str
    namespace: str
    lease_seconds: float
    api_url: str

    FIELDS: ClassVar[tuple[Setting, ...]] = (
        Setting('group', 'str', '', aliases=('group',), max_length=40, pattern='^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$', description='Name the replicas of one folder share (a DNS label); empty: no sharding, this process mirrors every run. Each replica holds a Lease ``<group>-<identity>`` in ``namespace``; a run belongs to one live replica by rendezvous hashing.'),
        Setting('identity', 'str', '', aliases=('identity',), max_length=200, description="This replica's name, unique in the group; empty: the pod's name (``POD_NAME``, else the host name, which is the pod's name in Kubernetes)."),
        Setting('namespace', 'str', '', aliases=('namespace',), max_length=63, description="Namespace of the Leases; empty: ``POD_NAMESPACE``, else the service account's."),
        Setting('lease_seconds', 'float', 15.0, aliases=('leaseSeconds',), ge=1.0, le=600.0, before=('not_a_switch',), description='A replica whose Lease has not been renewed for this long is gone: its runs move to the others. Renewed every third of it.'),
        Setting('api_url', 'str', '', aliases=('apiUrl',), max_length=2048, description="Kubernetes API URL; empty: in-cluster (``KUBERNETES_SERVICE_HOST``, the service account's token and CA)."),
    )

class SidecarSettingsFields(Fields):
    """The fields of runlog_relay.config.settings_model.SidecarSettingsModel."""

    GENERATED: ClassVar[bool] = True
    MODEL: ClassVar[str] = 'SidecarSettingsModel'

    source: Path | None
    endpoint: str
    bucket: str
    region: str | None
    layout: Layout
    create_bucket: bool
    tls: SidecarTLS
    sync: SyncSettings
    tag_sealed_runs: bool
    local_retention: LocalRetentionSettings
    exit_when_sealed: bool
    retry_run_id: str | None
    shard: SidecarShard
    run_ids: tuple[str, ...]
    sse: SidecarSSE
    storage_class: str | None
    access_key_id: Secret | None
    secret_access_key: Secret | None
    access_key_id_file: Path | None
    secret_access_key_file: Path | None
    session_token: Secret | None
    session_token_file: Path | None
    credential_source: CredentialSource
    sts_endpoint: str | None
    web_identity_token_file: Path | None
    role_arn: str | None
    role_session_name: str | None
    aws_region: str | None
    container_credentials_full_uri: str | None
    container_credentials_relative_uri: str | None
    container_authorization_token_file: Path | None
    container_authorization_token: Secret | None
    ec2_metadata_endpoint: str | None
    metrics_host: str
    metrics_port: int
    log_level: str
    log_format: LogFormat
    once: bool

    FIELDS: ClassVar[tuple[Setting, ...]] = (
        Setting('source', 'path', None, optional=True, before=('check_source',), description='The folder runnable writes run logs to (its `log_folder`); required. It may not exist yet when a long-running sidecar starts (runnable creates it): until it does, `/readyz` says so and a warning repeats. A file there is an error.'),
        Setting('endpoint', 'str', 'http://localhost:9002', max_length=2048, pattern='^https?://[^/\\s?#]+/?$', after=('validate_endpoint',), description="S3/MinIO endpoint URL, `http(s)://host[:port]` (runnable's default `http://localhost:9002`)."),
        Setting('bucket', 'str', 'runnable/run-logs', max_length=1024, pattern='^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_.=+@,-]+)*/?$', after=('check_bucket',), description="runnable's `bucket[/prefix]`: the S3 bucket, optionally followed by a key prefix under which runs are stored (runnable's default `runnable/run-logs`)."),
        Setting('region', 'str', None, optional=True, after=('check_region_setting',), description='S3 region; unset for MinIO. On AWS, setting it saves a `GetBucketLocation`.'),
        Setting('layout', Layout, Layout.CHUNKED, description="`chunked` (runnable's chunked-fs → chunked-minio) or `single` (file-system → minio)."),
        Setting('create_bucket', 'bool', False, description='Create the bucket if it is missing.'),
        Setting('tls', SidecarTLSFields, None, description='TLS options.'),
        Setting('sync', SyncFields, None, description='Watch/upload tuning.'),
        Setting('tag_sealed_runs', 'bool', False, description='Tag each object of a sealed run `runlog-relay/status=<SUCCESS|FAIL>`, for bucket lifecycle rules (needs `s3:PutObjectTagging`).'),
        Setting('local_retention', LocalRetentionFields, None, description='Delete sealed runs from the volume after a while (needs a writable mount).'),
        Setting('exit_when_sealed', 'bool', False, description="Exit 0 once the pod's runs (`runIds`) are sealed and the pod's work is done, so a Job whose sidecar is a plain (classic) container completes."),
        Setting('retry_run_id', 'str', None, optional=True, aliases=('retry_run_id', 'RUNLOG_RELAY_RETRY_RUN_ID', 'RUNNABLE_RETRY_RUN_ID'), after=('optional_stripped',), description="The run this pod retries (runnable's `RUNNABLE_RETRY_RUN_ID`, which the webhook copies from the pipeline's container): with `exitWhenSealed`, its final status from before the pod does not count as the pod's work being done."),
        Setting('shard', SidecarShardFields, None, description='Scale-out over replicas sharing one folder (off unless ``shard.group`` is set).'),
        Setting('run_ids', 'tuple_str', (), before=('split_run_ids',), after=('check_run_ids',), description='Mirror only these runs (chunked: the `<run_id>/` folders; single: `<run_id>.json`) and list only their prefixes in the bucket; empty: every run. The flag repeats; the variable is comma-separated (one id is valid, so a downward-API field can fill it).'),
        Setting('sse', SidecarSSEFields, None, description='Server-side encryption of the objects written (and the SSE-C key to read them).'),
        Setting('storage_class', 'str', None, optional=True, pattern='^[A-Z][A-Z0-9_]{0,63}$', description="S3 storage class of the objects written; unset: the bucket's default."),
        Setting('access_key_id', 'secret', None, optional=True, aliases=('access_key_id', 'RUNLOG_RELAY_ACCESS_KEY_ID', 'AWS_ACCESS_KEY_ID'), description="S3 access key id (default: runnable's minioadmin, when no other source applies)."),
        Setting('secret_access_key', 'secret', None, optional=True, aliases=('secret_access_key', 'RUNLOG_RELAY_SECRET_ACCESS_KEY', 'AWS_SECRET_ACCESS_KEY'), description='S3 secret access key.'),
        Setting('access_key_id_file', 'path', None, optional=True, description='File holding the access key id (a mounted Secret key); wins over the variable.'),
        Setting('secret_access_key_file', 'path', None, optional=True, description='File holding the secret access key (a mounted Secret key); wins over the variable.'),
        Setting('session_token', 'secret', None, optional=True, aliases=('session_token', 'RUNLOG_RELAY_SESSION_TOKEN', 'AWS_SESSION_TOKEN'), description='Session token of temporary static credentials (STS, `aws sts get-session-token`).'),
        Setting('session_token_file', 'path', None, optional=True, description='File holding the session token (a mounted Secret key); wins over the variable.'),
        Setting('credential_source', CredentialSource, CredentialSource.AUTO, aliases=('credentials', 'credential_source', 'RUNLOG_RELAY_CREDENTIALS'), description="Where credentials come from: `static` keys, `web-identity` (IRSA), `container` (EKS Pod Identity, ECS), `instance` (EC2 IMDSv2), `service-account` (the pod's IRSA or Pod Identity, an error if it has neither). `auto`: static keys if given, else web identity, else container credentials, else runnable's `minioadmin`."),
        Setting('sts_endpoint', 'str', None, optional=True, aliases=('sts_endpoint', 'RUNLOG_RELAY_STS_ENDPOINT', 'AWS_ENDPOINT_URL_STS'), after=('check_http_url',), description="STS endpoint for web identity, for private clouds; default AWS's regional one (from `AWS_REGION`)."),
        Setting('web_identity_token_file', 'path', None, optional=True, aliases=('web_identity_token_file', 'AWS_WEB_IDENTITY_TOKEN_FILE'), description='The projected service-account token (IRSA injects AWS_WEB_IDENTITY_TOKEN_FILE).'),
        Setting('role_arn', 'str', None, optional=True, aliases=('role_arn', 'AWS_ROLE_ARN'), description='Role to assume with the web identity token (AWS_ROLE_ARN).'),
        Setting('role_session_name', 'str', None, optional=True, aliases=('role_session_name', 'AWS_ROLE_SESSION_NAME'), description='Session name in CloudTrail (AWS_ROLE_SESSION_NAME); default a timestamp.'),
        Setting('aws_region', 'str', None, optional=True, aliases=('aws_region', 'AWS_REGION', 'AWS_DEFAULT_REGION'), description="The pod's AWS region (EKS sets AWS_REGION): the regional STS endpoint, and the bucket's region when GetBucketLocation is refused and --region is not set."),
        Setting('container_credentials_full_uri', 'str', None, optional=True, aliases=('container_credentials_full_uri', 'AWS_CONTAINER_CREDENTIALS_FULL_URI'), description='Container credentials endpoint (EKS Pod Identity injects it).'),
        Setting('container_credentials_relative_uri', 'str', None, optional=True, aliases=('container_credentials_relative_uri', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI'), description='ECS task role: a path on the ECS agent (169.254.170.2).'),
        Setting('container_authorization_token_file', 'path', None, optional=True, aliases=('container_authorization_token_file', 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE'), description='Token for the container credentials endpoint, re-read on every refresh.'),
        Setting('container_authorization_token', 'secret', None, optional=True, aliases=('container_authorization_token', 'AWS_CONTAINER_AUTHORIZATION_TOKEN'), description='Token for the container credentials endpoint, when not in a file.'),
        Setting('ec2_metadata_endpoint', 'str', None, optional=True, aliases=('ec2_metadata_endpoint', 'AWS_EC2_METADATA_SERVICE_ENDPOINT'), after=('check_http_url',), description="IMDS address for --credentials instance; default the SDK's 169.254.169.254."),
        Setting('metrics_host', 'str', '0.0.0.0', description='Address the metrics and health server binds to.'),
        Setting('metrics_port', 'int', 9464, ge=0, le=65535, before=('not_a_switch',), description='Port for `/metrics`, `/healthz` and `/readyz`; 0 picks a free port.'),
        Setting('log_level', 'str', 'INFO', after=('check_log_level',), description='`DEBUG`, `INFO`, `WARNING` or `ERROR`.'),
        Setting('log_format', LogFormat, LogFormat.PLAIN, description='`plain` for people, `json` lines for log pipelines.'),
        Setting('once', 'bool', False, description='Reconcile the whole folder with the bucket once, upload what differs, and exit: 0 when the bucket mirrors the folder, 1 otherwise. Gives up after the drain timeout (at least 60 s) without progress.'),
    )
