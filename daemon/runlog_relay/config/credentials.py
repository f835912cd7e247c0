"""Where the object store's credentials come from: the plan, decided from settings alone.

The sidecar, the tools and the operator describe their identity with one of the plans
below; :mod:`runlog_relay.objectstore` turns a plan into the minio SDK's credential
providers (the only place that talks to STS, a container-credentials endpoint or IMDS,
and only through the SDK). Keeping the decision here, free of I/O and of minio, is what
lets ``auto`` be tested as a table and lets the log say which source is used.

``--credentials`` (``RUNLOG_RELAY_CREDENTIALS``) chooses:

======================  =====================================================================
``static``              an access key pair (+ optional session token) from the environment or
                        files mounted from a Secret; runnable's ``minioadmin`` when none given
``web-identity``        IRSA and other OIDC federations: STS AssumeRoleWithWebIdentity with
                        the token in ``AWS_WEB_IDENTITY_TOKEN_FILE`` for ``AWS_ROLE_ARN``
``container``           EKS Pod Identity, ECS task roles: a GET to
                        ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (or ``…_RELATIVE_URI``) with
                        ``AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]``
``instance``            the EC2 instance profile through IMDSv2; only when asked for
``service-account``     the pod's own identity: web identity, else container credentials,
                        else an error naming both (``spec.credentials.serviceAccount``)
``auto`` (default)      static keys if any were given, else web identity if
                        ``AWS_WEB_IDENTITY_TOKEN_FILE`` and ``AWS_ROLE_ARN`` are set, else
                        container credentials if their URI is set, else runnable's default
======================  =====================================================================

Plans hold no secret in their ``repr`` and :func:`describe` names the source, never a value.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "CONTAINER_CREDENTIALS_HOST",
    "ContainerCredentials",
    "CredentialPlan",
    "CredentialSource",
    "Encryption",
    "InstanceProfile",
    "StaticKeys",
    "WebIdentity",
    "check_container_uri",
    "describe",
    "sts_endpoint_for",
]


class CredentialSource(enum.StrEnum):
    AUTO = "auto"
    STATIC = "static"
    WEB_IDENTITY = "web-identity"
    CONTAINER = "container"
    INSTANCE = "instance"
    #: The pod's own identity: web identity, else container credentials, else an error
    #: (what a RunLogStore with ``credentials.serviceAccount`` renders; never static keys).
    SERVICE_ACCOUNT = "service-account"


#: Where ECS serves ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``.
CONTAINER_CREDENTIALS_HOST = "http://169.254.170.2"
#: Hosts a plain-http container-credentials URI may name, as the AWS SDKs allow them: the
#: ECS agent, the EKS Pod Identity agent (IPv4 and IPv6), and loopback. Any other host
#: would receive the authorization token in clear text.
_CONTAINER_HOSTS = frozenset({"169.254.170.2", "169.254.170.23", "fd00:ec2::23"})


@dataclass(frozen=True)
class StaticKeys:
    """A fixed key pair, optionally with the session token of temporary credentials."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    origin: str = "environment"  #: "files", "environment" or "default", for the log

    @property
    def source(self) -> CredentialSource:
        return CredentialSource.STATIC


@dataclass(frozen=True)
class WebIdentity:
    """STS AssumeRoleWithWebIdentity with a projected token that is re-read on refresh."""

    token_file: Path
    sts_endpoint: str
    role_arn: str | None = None  #: required by AWS STS; MinIO's STS can do without
    role_session_name: str | None = None

    @property
    def source(self) -> CredentialSource:
        return CredentialSource.WEB_IDENTITY


@dataclass(frozen=True)
class ContainerCredentials:
    """A container-credentials endpoint (EKS Pod Identity agent, ECS agent)."""

    uri: str
    token_file: Path | None = None  #: re-read on every refresh (the agent rotates it)
    token: str | None = field(default=None, repr=False)

    @property
    def source(self) -> CredentialSource:
        return CredentialSource.CONTAINER


@dataclass(frozen=True)
class InstanceProfile:
    """The EC2 instance profile through IMDSv2 (``endpoint`` None: the SDK's default)."""

    endpoint: str | None = None

    @property
    def source(self) -> CredentialSource:
        return CredentialSource.INSTANCE


CredentialPlan = StaticKeys | WebIdentity | ContainerCredentials | InstanceProfile


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption of what is written: ``mode`` s3, kms or c (an SSEMode
    value), with its KMS key and context or the 32-byte customer key."""

    mode: str
    kms_key_id: str | None = None
    kms_context: tuple[tuple[str, str], ...] = ()
    customer_key: bytes | None = field(default=None, repr=False)

    def describe(self) -> str:
        if self.mode == "kms":
            key = self.kms_key_id or "the bucket's default key"
            return f"SSE-KMS with {key}" + (
                " and an encryption context" if self.kms_context else ""
            )
        return {"s3": "SSE-S3", "c": "SSE-C with a customer key"}.get(self.mode, self.mode)


def sts_endpoint_for(region: str | None) -> str:
    """AWS's STS endpoint for ``region`` (the regional one, as current AWS SDKs use)."""
    if not region:
        return "https://sts.amazonaws.com"
    suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
    return f"https://sts.{region}{suffix}"


def check_container_uri(uri: str) -> str:
    """The URI when it is safe to send an authorization token to; ValueError otherwise."""
    parts = urlsplit(uri)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"container credentials URI must be an http(s) URL, got {uri!r}")
    if parts.scheme == "https":
        return uri
    host = parts.hostname
    if host in _CONTAINER_HOSTS or host == "localhost":
        return uri
    try:
        if ipaddress.ip_address(host).is_loopback:
            return uri
    except ValueError:
        pass
    raise ValueError(
        f"container credentials URI {uri!r} is plain http to a host that is neither loopback"
        " nor the ECS/EKS agent (169.254.170.2, 169.254.170.23): refused, it would receive"
        " the authorization token in clear text"
    )


def describe(plan: CredentialPlan) -> str:
    """Which source is used, for the start-up log and status: names and paths, no values."""
    if isinstance(plan, StaticKeys):
        what = {
            "files": "static keys from mounted files",
            "environment": "static keys from the environment",
            "default": "runnable's default minioadmin keys",
        }.get(plan.origin, f"static keys ({plan.origin})")
        return what + (" with a session token" if plan.session_token else "")
    if isinstance(plan, WebIdentity):
        role = f" for {plan.role_arn}" if plan.role_arn else ""
        return f"web identity{role} (token {plan.token_file}, STS {plan.sts_endpoint})"
    if isinstance(plan, ContainerCredentials):
        token = (
            f", token file {plan.token_file}"
            if plan.token_file
            else (", token from the environment" if plan.token else "")
        )
        return f"container credentials from {plan.uri}{token}"
    return f"instance profile (IMDSv2{f' at {plan.endpoint}' if plan.endpoint else ''})"
