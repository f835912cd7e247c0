"""Configuration models shared by the sidecar and the operator (no I/O at import)."""

from runlog_relay.config.models import (
    DEFAULT_BUCKET,
    DEFAULT_ENDPOINT,
    DEFAULT_LOG_FOLDER,
    CredentialsSecretRef,
    Layout,
    SecretKeyRef,
    StoreSpec,
    SyncSpec,
    TLSSpec,
    parse_bucket,
)
from runlog_relay.config.settings import (
    LogFormat,
    SidecarSettings,
    SidecarTLS,
    load_sidecar_settings,
)

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_ENDPOINT",
    "DEFAULT_LOG_FOLDER",
    "CredentialsSecretRef",
    "Layout",
    "LogFormat",
    "SecretKeyRef",
    "SidecarSettings",
    "SidecarTLS",
    "StoreSpec",
    "SyncSpec",
    "TLSSpec",
    "load_sidecar_settings",
    "parse_bucket",
]
