"""Command-line options shared by every command that talks to a bucket.

The sidecar and the read-side tools take the same connection options with the same
defaults (runnable's), the same ``RUNLOG_RELAY_*`` variables and the same ``--config``
file, so a user who set up one can use the others unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runlog_relay.config.credentials import CredentialSource
from runlog_relay.config.models import DEFAULT_BUCKET, DEFAULT_ENDPOINT, SSEMode
from runlog_relay.config.settings import ENV_PREFIX, SidecarSettings, load_sidecar_settings
from runlog_relay.layout import Layout
from runlog_relay.objectstore import ObjectStore

__all__ = [
    "STORE_OPTION_NAMES",
    "add_store_options",
    "open_store",
    "overrides_from_args",
    "settings_from_args",
]

#: argparse dest → settings field, for the options added by add_store_options.
STORE_OPTION_NAMES = (
    "endpoint",
    "bucket",
    "layout",
    "region",
    "create_bucket",
    "credential_source",
    "sts_endpoint",
    "storage_class",
)
#: argparse dest → field of the ``sse`` settings group.
SSE_OPTION_NAMES = {
    "sse": "mode",
    "sse_kms_key_id": "kms_key_id",
    "sse_kms_context": "kms_context",
    "sse_c_key_file": "c_key_file",
}


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """--endpoint, --bucket, --layout, --region, credentials, --config and TLS options."""
    group = parser.add_argument_group(
        "object store",
        "Static keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN]"
        f" (or {ENV_PREFIX}ACCESS_KEY_ID_FILE / {ENV_PREFIX}SECRET_ACCESS_KEY_FILE /"
        f" {ENV_PREFIX}SESSION_TOKEN_FILE naming files mounted from a Secret); default"
        " minioadmin, like runnable. Web identity (IRSA) reads AWS_WEB_IDENTITY_TOKEN_FILE,"
        " AWS_ROLE_ARN, AWS_ROLE_SESSION_NAME; container credentials (EKS Pod Identity)"
        " AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, as the"
        " AWS tools do.",
    )
    group.add_argument(
        "--endpoint",
        help=f"S3/MinIO endpoint URL (env {ENV_PREFIX}ENDPOINT; default {DEFAULT_ENDPOINT})",
    )
    group.add_argument(
        "--bucket",
        metavar="BUCKET[/PREFIX]",
        help=f"bucket and optional key prefix, runnable's form (env {ENV_PREFIX}BUCKET;"
        f" default {DEFAULT_BUCKET})",
    )
    group.add_argument(
        "--layout",
        choices=[layout.value for layout in Layout],
        help="chunked: runnable chunked-fs → chunked-minio; single: file-system → minio"
        f" (env {ENV_PREFIX}LAYOUT; default chunked)",
    )
    group.add_argument("--region", help=f"S3 region; unset for MinIO (env {ENV_PREFIX}REGION)")
    group.add_argument(
        "--credentials",
        dest="credential_source",
        choices=[source.value for source in CredentialSource],
        help="where credentials come from: static keys, web-identity (IRSA), container (EKS"
        " Pod Identity, ECS), instance (EC2 IMDSv2); auto picks static keys if given, else web"
        f" identity, else container credentials, else minioadmin (env {ENV_PREFIX}CREDENTIALS;"
        " default auto)",
    )
    group.add_argument(
        "--sts-endpoint",
        metavar="URL",
        help="STS endpoint for web identity, for private clouds (env"
        f" {ENV_PREFIX}STS_ENDPOINT or AWS_ENDPOINT_URL_STS; default AWS's regional one)",
    )
    group.add_argument(
        "--sse",
        choices=[mode.value for mode in SSEMode],
        help="server-side encryption of what is written: s3 (SSE-S3), kms (SSE-KMS), c (SSE-C,"
        f" your own key) (env {ENV_PREFIX}SSE__MODE; default the bucket's)",
    )
    group.add_argument(
        "--sse-kms-key-id",
        metavar="KEY",
        help=f"KMS key id, alias or ARN for --sse kms (env {ENV_PREFIX}SSE__KMS_KEY_ID;"
        " default the bucket's KMS key)",
    )
    group.add_argument(
        "--sse-kms-context",
        metavar="JSON",
        help='KMS encryption context for --sse kms, a JSON object such as {"team": "data"}'
        f" (env {ENV_PREFIX}SSE__KMS_CONTEXT)",
    )
    group.add_argument(
        "--sse-c-key-file",
        type=Path,
        metavar="FILE",
        help="file with the 32-byte SSE-C key, raw or base64, for --sse c; needed to read"
        f" such objects too (env {ENV_PREFIX}SSE__C_KEY_FILE)",
    )
    group.add_argument(
        "--storage-class",
        metavar="CLASS",
        help="S3 storage class of what is written, e.g. STANDARD_IA or INTELLIGENT_TIERING"
        f" (env {ENV_PREFIX}STORAGE_CLASS; default the bucket's)",
    )
    group.add_argument(
        "--insecure-skip-verify",
        action="store_const",
        const=True,
        help=f"do not verify the endpoint's TLS certificate (env"
        f" {ENV_PREFIX}TLS__INSECURE_SKIP_VERIFY; test setups only)",
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        help=f"PEM CA bundle to trust for https endpoints (env {ENV_PREFIX}TLS__CA_FILE)",
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"YAML settings file; options and {ENV_PREFIX}* variables take precedence",
    )


def settings_from_args(args: argparse.Namespace, **extra: Any) -> SidecarSettings:
    """Settings from the parsed options (unset options fall through to env/file/defaults)."""
    return load_sidecar_settings(overrides_from_args(args, **extra), getattr(args, "config", None))


def overrides_from_args(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The settings the command line sets explicitly (they win over env and file, and
    keep winning when the config file is reloaded)."""
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in STORE_OPTION_NAMES}
    tls: dict[str, Any] = {}
    if getattr(args, "insecure_skip_verify", None):
        tls["insecure_skip_verify"] = True
    if getattr(args, "ca_file", None):
        tls["ca_file"] = args.ca_file
    if tls:
        overrides["tls"] = tls
    sse = {
        field: getattr(args, dest)
        for dest, field in SSE_OPTION_NAMES.items()
        if getattr(args, dest, None) is not None
    }
    if sse:
        overrides["sse"] = sse
    overrides.update(extra)
    return {key: value for key, value in overrides.items() if value is not None}


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
