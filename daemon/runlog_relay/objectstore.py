"""The object store: the only module that imports the minio SDK.

The sidecar's upload stage, the operator's bucket check and the read-side tools all
talk to S3/MinIO through :class:`ObjectStore`. Keys given to and returned by it are
*relative to the configured prefix* (``<run_id>/<name>``), so callers never build or
parse full keys. Every SDK or transport exception is translated by :func:`classify`
into :class:`~runlog_relay.errors.RetryableError` or
:class:`~runlog_relay.errors.PermanentError`; retrying is the caller's job (the SDK's
own retries are off so backoff happens in one place).

Two paths, one behaviour. The calls made for every file (a PUT up to
:data:`MULTIPART_THRESHOLD`, the HEAD of the MD5 metadata, ListObjectsV2, HeadBucket, the
location lookup, PutObjectTagging) are signed and sent by :mod:`runlog_relay.s3http` on
persistent connections; the SDK's per-call wrapping cost more CPU than the rest of the
sidecar's work per file (docs/benchmarks.md). Everything else (multipart uploads, GET,
GetObjectTagging, CreateBucket, temporary credentials from STS, the Pod Identity agent or
IMDS) goes through the minio SDK, imported by the first such call, so a sidecar with
static keys never loads it. Encryption headers, storage class, timeouts, TLS settings,
the region and the error table are shared by both.

ETags: single-part PUTs have the body's MD5 as ETag. Bodies above
:data:`MULTIPART_THRESHOLD` go up in :data:`PART_SIZE` parts; their ETag is S3's
composite (MD5 of the part MD5s, ``-N``), which :mod:`runlog_relay.etag` computes locally
so a restart compares without a HEAD per object. The whole-body MD5 also rides along as
user metadata (``x-amz-meta-runlog-relay-md5``). A body may be a stream (``read(n)``) of
known length and MD5: minio reads it one part at a time, so a big file is never held
whole in memory.

Not every bucket's ETags are MD5s: with SSE-KMS and SSE-C they are opaque, and some
gateways rewrite them. :meth:`ObjectStore.matches` compares by ETag when the bucket's
ETags are MD5s, and otherwise confirms with one HEAD of that metadata
(:meth:`ObjectStore.head_md5`). Whether they are is known from the encryption asked for
(SSE-KMS, SSE-C: opaque), or learned from the first listed ETag that equals a local body's
MD5. Until then a mismatch is confirmed with a HEAD, so a restart over a synced tree costs
at most one HEAD per object on any bucket, and none where ETags are MD5s.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_plus, urlsplit

from runlog_relay import __version__, s3http
from runlog_relay.config.credentials import (
    ContainerCredentials,
    CredentialPlan,
    Encryption,
    InstanceProfile,
    StaticKeys,
    WebIdentity,
)
from runlog_relay.errors import (
    ConfigError,
    CredentialsError,
    NotFoundError,
    PermanentError,
    RelayError,
    RetryableError,
)
from runlog_relay.etag import MULTIPART_THRESHOLD, PART_SIZE, etag_verdict, expected_etag

if TYPE_CHECKING:  # the SDK is imported by the calls that need it (see the docstring)
    import urllib3
    from minio import Minio
    from minio.credentials import Credentials
    from minio.sse import Sse

__all__ = [
    "MULTIPART_THRESHOLD",
    "PART_SIZE",
    "BodyStream",
    "ObjectStore",
    "RefreshingProvider",
    "RemoteObject",
    "classify",
    "credentials_provider",
    "expected_etag",
]

log = logging.getLogger(__name__)

MD5_METADATA = "runlog-relay-md5"
#: What an S3 ETag of ours looks like when it is an MD5 (single PUT) or S3's composite.
_MD5_SHAPED = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")

_PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        # A malformed or foreign session token (400, not 403): sending it again cannot
        # work. ExpiredToken stays retryable: refreshing credentials renew it themselves.
        "InvalidToken",
        "NoSuchBucket",
        "InvalidBucketName",
        "AccountProblem",
        "InvalidObjectName",
        "KeyTooLongError",
        "MethodNotAllowed",
        "NotImplemented",
        "XMinioStorageFull",
        # Requests the server will refuse again as they are: a missing or wrong SSE-C
        # key, an encryption or storage class it does not support.
        "InvalidArgument",
        "InvalidRequest",
        "BadRequest",
        "InvalidEncryptionAlgorithmError",
        "InvalidStorageClass",
    }
)


#: What the lean path (s3http) raises; each call translates them with classify().
_WIRE_ERRORS: tuple[type[BaseException], ...] = (
    s3http.S3Failure,
    s3http.ServerFailure,
    s3http.NotS3Answer,
    http.client.HTTPException,
    OSError,
    ValueError,
)


def _sdk_errors() -> tuple[type[BaseException], ...]:
    """Everything a call through the minio SDK raises (the SDK is imported by then)."""
    from minio.error import MinioException
    from urllib3.exceptions import HTTPError

    return (MinioException, HTTPError, *_WIRE_ERRORS)


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """One object under the prefix, as listing reports it."""

    key: str  #: relative to the prefix
    etag: str  #: without quotes
    size: int
    last_modified: datetime | None


class BodyStream(Protocol):
    """An object body read in pieces (minio asks for one part at a time)."""

    def read(self, size: int, /) -> bytes: ...


#: The S3 operations this module makes, and the IAM permission each one needs: an
#: AccessDenied names both, so the policy to fix is obvious (issue: a refused location
#: lookup used to read as a refused listing).
PERMISSIONS = {
    "HeadBucket": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "PutObject": "s3:PutObject",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "CreateBucket": "s3:CreateBucket",
    "GetBucketLocation": "s3:GetBucketLocation",
    "PutObjectTagging": "s3:PutObjectTagging",
    "GetObjectTagging": "s3:GetObjectTagging",
}


def classify(exc: BaseException, *, what: str, operation: str | None = None) -> RelayError:
    """Translate an SDK/transport exception into the project's tree (no secrets inside).

    ``what`` says what was being done (``listing runnable/run-logs``), ``operation`` the
    S3 operation (a key of :data:`PERMISSIONS`), both named in the message. The lean
    path's failures (:mod:`runlog_relay.s3http`) and the SDK's go through the same rules."""
    if isinstance(exc, RelayError):
        return exc
    if operation:
        what = f"{what} ({operation})"
    # The SDK's classes, only when the SDK is loaded (nothing can be one of them before).
    minio_error = sys.modules.get("minio.error")
    urllib3_errors = sys.modules.get("urllib3.exceptions")
    if isinstance(exc, s3http.S3Failure):
        return _refusal(what, operation, exc.code, exc.status, exc.message)
    if minio_error is not None and isinstance(exc, minio_error.S3Error):
        status = exc.response.status if exc.response is not None else 0
        return _refusal(what, operation, exc.code or "S3Error", status, exc.message or "")
    if isinstance(exc, s3http.ServerFailure) or (
        minio_error is not None and isinstance(exc, minio_error.ServerError)
    ):
        status = exc.status if isinstance(exc, s3http.ServerFailure) else exc.status_code
        return RetryableError(f"{what}: server error {status}", code="ServerError")
    if isinstance(exc, s3http.NotS3Answer) or (
        minio_error is not None and isinstance(exc, minio_error.InvalidResponseError)
    ):
        # A non-S3 answer: a proxy, a load balancer or the wrong service on that port.
        status = exc.status if isinstance(exc, s3http.NotS3Answer) else getattr(exc, "_code", 0)
        status = status or 0
        if isinstance(exc, s3http.NotS3Answer) and 200 <= status < 300:
            # A success that is not S3's (a portal, a console): say what came, so the
            # wrong service is recognised; never taken for an empty listing.
            message = (
                f"{what}: the endpoint answered HTTP {status} with no S3 answer ({exc.describe()})"
            )
        else:
            message = f"{what}: the endpoint answered HTTP {status} without an S3 error body"
        if status >= 500 or status in {408, 429}:
            return RetryableError(message, code=f"HTTP{status}")
        return PermanentError(message + " (is this an S3 endpoint?)", code=f"HTTP{status}")
    transport: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
    if urllib3_errors is not None:
        transport += (urllib3_errors.HTTPError,)
    if isinstance(exc, transport):
        inner = getattr(exc, "reason", None)  # MaxRetryError/ProxyError wrap the cause
        if not isinstance(inner, BaseException):
            inner = None  # ssl.SSLError.reason is a string such as "CERTIFICATE_VERIFY_FAILED"
        reason = type(inner or exc).__name__
        # urllib3 wraps ssl errors in its own SSLError, which is no ssl.SSLError: check both.
        tls: tuple[type[BaseException], ...] = (ssl.SSLError,)
        never_connected: tuple[type[BaseException], ...] = (
            s3http.NotConnected,
            ConnectionRefusedError,
        )
        if urllib3_errors is not None:
            tls += (urllib3_errors.SSLError,)
            never_connected += (
                urllib3_errors.NewConnectionError,
                urllib3_errors.ConnectTimeoutError,
            )
        if isinstance(exc, tls) or isinstance(inner, tls):
            failed = inner if isinstance(inner, tls) else exc
            return PermanentError(f"{what}: TLS failure ({_tls_reason(failed)})", code="TLS")
        # A connection that could not even be opened carried no request: nothing can land.
        unsent = isinstance(exc, never_connected) or isinstance(inner, never_connected)
        return RetryableError(
            f"{what}: endpoint unreachable ({reason})", code="Unreachable", unsent=unsent
        )
    if isinstance(exc, ValueError) or (
        minio_error is not None and isinstance(exc, minio_error.MinioException)
    ):
        return PermanentError(f"{what}: {type(exc).__name__}: {exc}")
    return RetryableError(f"{what}: unexpected {type(exc).__name__}")


def _tls_reason(exc: BaseException) -> str:
    """Why a handshake failed, in a few words: the class, and OpenSSL's verdict (an
    unknown CA, a name mismatch, an expired certificate, plain HTTP on the port)."""
    name = type(exc).__name__
    nested = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
    if nested is not None:  # urllib3's SSLError wraps ssl's
        return _tls_reason(nested)
    detail = getattr(exc, "verify_message", None)
    if detail:
        detail = f"certificate verify failed: {detail}"
    else:
        detail = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
        detail = detail or (str(exc.args[-1]) if exc.args else "")
    detail = " ".join(str(detail).split())  # one line
    return f"{name}: {detail}" if detail and detail != name else name


def _refusal(what: str, operation: str | None, code: str, status: int, detail: str) -> RelayError:
    """An S3 error code, from either path: the one table of what is permanent."""
    message = f"{what}: {code}" + (f" ({detail})" if detail else "")
    if operation in PERMISSIONS and (code == "AccessDenied" or status == 403):
        message += f"; the credentials may lack {PERMISSIONS[operation]}"
    if code in {"NoSuchKey", "NoSuchUpload"}:
        return NotFoundError(message, code=code)
    # KMS.NotFoundException, KMS.DisabledException …: the key needs a human.
    if code in _PERMANENT_CODES or code.startswith("KMS.") or status in {401, 403}:
        return PermanentError(message, code=code)
    if status == 404:
        return NotFoundError(message, code=code)
    return RetryableError(message, code=code)


# --------------------------------------------------------------------------- credentials

#: Temporary credentials are renewed this long before they expire at most (the AWS SDKs
#: use 5-15 minutes), and at half their lifetime for short-lived ones.
REFRESH_AHEAD_SECONDS = 300.0
#: Credentials this close to expiry are not used to sign: a request signed now must still
#: be valid when the server reads it (the minio SDK's own margin).
EXPIRY_MARGIN_SECONDS = 10.0
#: After a failed early renewal, wait this long before the next attempt (the credentials
#: in hand are still good, so there is no hurry and no reason to hammer STS).
RENEW_RETRY_SECONDS = 10.0


class Keys(Protocol):
    """What signing needs from credentials (the SDK's ``Credentials`` fits)."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def session_token(self) -> str | None: ...


class CredentialsProvider(Protocol):
    """Current credentials, asked for before every request (the SDK's ``Provider``
    interface: the minio client takes these as they are)."""

    def retrieve(self) -> Keys: ...


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """A fixed key pair: no SDK needed to hold it."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: None = None

    def is_expired(self) -> bool:
        return False


class StaticCredentialsProvider:
    """Static keys (the SDK's StaticProvider, without importing the SDK)."""

    def __init__(self, keys: StaticCredentials) -> None:
        self._keys = keys

    def __repr__(self) -> str:
        return "StaticCredentialsProvider()"

    def retrieve(self) -> StaticCredentials:
        return self._keys


class RefreshingProvider:
    """Credentials from ``fetch``, cached and renewed ahead of their expiry.

    The minio client asks its provider before every request; this answers from the cache
    until the renewal point, then fetches once (one thread at a time). A failed renewal
    keeps the credentials in hand while they are valid (one WARNING line), and raises
    :class:`~runlog_relay.errors.CredentialsError` (retryable, readiness false) once they
    are not. Uploads that fail meanwhile stay queued and are retried, so nothing is lost.
    Messages name the source and the failure, never a token or the URL that carries one.
    """

    def __init__(
        self, source: str, fetch: Callable[[], Credentials], *, clock: Callable[[], float]
    ) -> None:
        self.source = source
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._credentials: Credentials | None = None
        self._renew_at = 0.0
        self._usable_until = 0.0
        self._next_attempt = 0.0
        self._failing: str | None = None
        self.fetches = 0  #: credential requests made (for tests and the benchmark)

    def retrieve(self) -> Credentials:
        with self._lock:
            now = self._clock()
            held = self._credentials
            if held is not None and (
                now < self._renew_at or (now < self._usable_until and now < self._next_attempt)
            ):
                return held
            try:
                self.fetches += 1
                fresh = self._fetch()
            except Exception as exc:  # the SDK raises ValueError, urllib3 errors, KeyError …
                problem = _credential_problem(exc)
                if held is not None and now < self._usable_until:
                    self._next_attempt = now + RENEW_RETRY_SECONDS
                    if self._failing != problem:
                        log.warning(
                            "renewing credentials (%s) failed: %s; the current ones are valid"
                            " for %.0fs more",
                            self.source,
                            problem,
                            self._usable_until - now,
                        )
                    self._failing = problem
                    return held
                self._failing = problem
                raise CredentialsError(
                    f"obtaining credentials ({self.source}) failed: {problem}",
                    code="CredentialsUnavailable",
                ) from None
            self._adopt(fresh, now)
            return fresh

    def _adopt(self, fresh: Credentials, now: float) -> None:
        if self._failing is not None:
            log.info("credentials (%s) obtained again", self.source)
        self._failing = None
        self._credentials = fresh
        self._next_attempt = 0.0
        if fresh.expiration is None:  # not temporary: keep for good
            self._renew_at = self._usable_until = float("inf")
            return
        expires = fresh.expiration.replace(tzinfo=UTC).timestamp()
        lifetime = max(0.0, expires - now)
        self._usable_until = expires - EXPIRY_MARGIN_SECONDS
        self._renew_at = min(expires - min(REFRESH_AHEAD_SECONDS, lifetime / 2), self._usable_until)
        log.info(
            "credentials (%s) obtained, valid until %s; renewing in %.0fs",
            self.source,
            fresh.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            max(0.0, self._renew_at - now),
        )


_HTTP_STATUS = re.compile(r"HTTP status code (\d+)")


def _credential_problem(exc: BaseException) -> str:
    """What went wrong, without the SDK's message: its URLs carry the web identity token."""
    if isinstance(exc, CredentialsError):
        return str(exc)
    urllib3_errors = sys.modules.get("urllib3.exceptions")
    if urllib3_errors is not None and isinstance(exc, urllib3_errors.HTTPError):
        inner = getattr(exc, "reason", None)
        reason = type(inner if isinstance(inner, BaseException) else exc).__name__
        return f"endpoint unreachable ({reason})"
    status = _HTTP_STATUS.search(str(exc)) if isinstance(exc, ValueError) else None
    if status:
        return f"the endpoint answered HTTP {status.group(1)}"
    return f"unexpected answer ({type(exc).__name__})"


def _read_token(path: Path, what: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialsError(
            f"cannot read the {what} file {path}: {exc.strerror}", code="CredentialsUnavailable"
        ) from None
    if not token:
        raise CredentialsError(f"the {what} file {path} is empty", code="CredentialsUnavailable")
    return token


def _credentials_http(
    *, ca_file: str | None, insecure_skip_verify: bool, timeout: float
) -> urllib3.PoolManager:
    """The pool for STS / container / IMDS requests: no retries of its own (the caller's
    backoff decides), and the system's CAs plus ``ca_file`` (a private CA that signed the
    S3 endpoint usually signed its STS too)."""
    import urllib3

    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(5.0, timeout), read=timeout),
        retries=False,
        ssl_context=context,
        maxsize=1,
    )


def credentials_provider(
    plan: CredentialPlan,
    *,
    ca_file: str | None = None,
    insecure_skip_verify: bool = False,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> CredentialsProvider:
    """The provider for ``plan``: static keys as they are, temporary credentials from the
    minio SDK's providers wrapped in :class:`RefreshingProvider` (the SDK is imported at
    the first fetch). Builds no connection: the first request fetches."""
    if isinstance(plan, StaticKeys):
        return StaticCredentialsProvider(
            StaticCredentials(plan.access_key, plan.secret_key, plan.session_token)
        )
    http = _credentials_http(
        ca_file=ca_file, insecure_skip_verify=insecure_skip_verify, timeout=timeout
    )
    if isinstance(plan, WebIdentity):
        return RefreshingProvider("web identity", _web_identity(plan, http), clock=clock)
    if isinstance(plan, ContainerCredentials):
        return RefreshingProvider("container credentials", _container(plan, http), clock=clock)
    return RefreshingProvider("instance profile", _instance(plan, http), clock=clock)


def _web_identity(plan: WebIdentity, http: urllib3.PoolManager) -> Callable[[], Credentials]:
    def fetch() -> Credentials:
        from minio.credentials.providers import WebIdentityProvider

        # A fresh SDK provider per renewal (it caches until its own 10 s margin), with
        # the projected token read again: the kubelet rotates it.
        token = _read_token(plan.token_file, "web identity token")
        return WebIdentityProvider(
            jwt_provider_func=lambda: {"access_token": token, "expires_in": "0"},
            sts_endpoint=plan.sts_endpoint,
            role_arn=plan.role_arn,
            role_session_name=plan.role_session_name,
            http_client=http,
        ).retrieve()

    return fetch


def _container(plan: ContainerCredentials, http: urllib3.PoolManager) -> Callable[[], Credentials]:
    def fetch() -> Credentials:
        from minio.credentials.providers import IamAwsProvider

        token = (
            _read_token(plan.token_file, "container authorization token")
            if plan.token_file
            else plan.token
        )
        headers: dict[str, str | list[str] | tuple[str]] | None = (
            {"Authorization": token} if token else None
        )
        # IamAwsProvider.fetch is the SDK's GET-and-parse of a credentials endpoint; its
        # retrieve() would prefer web identity variables over the URI asked for.
        return IamAwsProvider(http_client=http).fetch(plan.uri, headers=headers)

    return fetch


def _instance(plan: InstanceProfile, http: urllib3.PoolManager) -> Callable[[], Credentials]:
    def fetch() -> Credentials:
        from minio.credentials.providers import IamAwsProvider

        # IMDSv2: token PUT, role name, credentials, all done by the SDK.
        return IamAwsProvider(custom_endpoint=plan.endpoint, http_client=http).retrieve()

    return fetch


# --------------------------------------------------------------------------- encryption


class _Sse:
    """The encryption headers of a plan: on every PUT, and for SSE-C (the customer key)
    on every HEAD and GET of the object too. ``repr`` never shows the key."""

    def __init__(self, encryption: Encryption) -> None:
        self.encryption = encryption
        mode = encryption.mode
        headers: dict[str, str]
        if mode == "s3":
            headers = {"X-Amz-Server-Side-Encryption": "AES256"}
        elif mode == "kms":
            headers = {"X-Amz-Server-Side-Encryption": "aws:kms"}
            if encryption.kms_key_id:  # else the bucket's default KMS key
                headers["X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"] = encryption.kms_key_id
            if encryption.kms_context:  # encoded as the SDK's SseKMS encodes it
                context = json.dumps(dict(encryption.kms_context)).encode()
                headers["X-Amz-Server-Side-Encryption-Context"] = base64.b64encode(context).decode()
        else:
            key = encryption.customer_key
            if key is None:
                raise ValueError("SSE-C without a customer key")
            headers = {
                "X-Amz-Server-Side-Encryption-Customer-Algorithm": "AES256",
                "X-Amz-Server-Side-Encryption-Customer-Key": base64.b64encode(key).decode(),
                "X-Amz-Server-Side-Encryption-Customer-Key-MD5": base64.b64encode(
                    hashlib.md5(key, usedforsecurity=False).digest()
                ).decode(),
            }
        self._headers = headers
        self.customer = mode == "c"

    def __repr__(self) -> str:
        return f"_Sse({self.encryption.describe()!r})"

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def read_headers(self) -> dict[str, str]:
        """What a HEAD or GET must send: the customer key for SSE-C, else nothing."""
        return dict(self._headers) if self.customer else {}

    def for_sdk(self) -> Sse:
        """The same headers as the SDK's object (for multipart uploads and GETs). SSE-C
        must be the SDK's own class: the SDK checks it, and sends it with every part."""
        from minio.sse import Sse, SseCustomerKey

        if self.customer:
            assert self.encryption.customer_key is not None
            return SseCustomerKey(self.encryption.customer_key)
        ours = self._headers

        class _Headers(Sse):
            def headers(self) -> dict[str, str]:
                return dict(ours)

        return _Headers()


def _sse(encryption: Encryption | None) -> _Sse | None:
    """The encryption headers for a plan (None: no encryption asked for)."""
    return None if encryption is None else _Sse(encryption)


# --------------------------------------------------------------------------- the client

#: Where a refused location lookup falls back to when no better region is known: the
#: SDK's own default, which MinIO, SeaweedFS and other single-region stores accept.
DEFAULT_REGION = "us-east-1"
_REFUSED = frozenset({"AccessDenied", "AllAccessDisabled", "MethodNotAllowed", "NotImplemented"})
#: AWS's own endpoints: their URLs (virtual-host style, regional hosts, dual-stack,
#: FIPS) are built by the SDK's rules, once per region (see ObjectStore._target).
_AWS_HOST = re.compile(r"(^|\.)amazonaws\.com(\.cn)?$")
_LOCATION = re.compile(rb"<LocationConstraint[^>]*>([^<]*)</LocationConstraint>")
_USER_AGENT = f"runlog-relay/{__version__}"


def _sdk_client(
    *,
    netloc: str,
    secure: bool,
    region: str | None,
    credentials: CredentialsProvider,
    region_of: Callable[[], str],
    connect_timeout: float,
    read_timeout: float,
    max_connections: int,
    insecure_skip_verify: bool,
    ca_file: str | None,
) -> Minio:
    """The minio SDK's client, for what the lean path does not do (multipart uploads,
    GET, tags, bucket creation). Its region comes from the store's one lookup."""
    import urllib3
    from minio import Minio

    from runlog_relay import _minio_lazy  # noqa: F401  # before minio, see its docstring

    class _Client(Minio):
        def _get_region(self, bucket_name: str | None = None) -> str:
            return region_of() if bucket_name else super()._get_region(bucket_name)

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=max_connections,
        # One place retries, with backoff and metrics: the caller. urllib3 and minio
        # retrying underneath would hide outages and multiply requests.
        retries=False,
        # The same certificate check as the lean path's (one policy for the endpoint).
        ssl_context=tls_context(ca_file=ca_file, insecure_skip_verify=insecure_skip_verify),
        cert_reqs="CERT_NONE" if insecure_skip_verify else "CERT_REQUIRED",
    )
    return _Client(
        netloc,
        credentials=credentials,  # type: ignore[arg-type]  # duck-typed: retrieve()
        secure=secure,
        region=region,
        http_client=http,
        cert_check=not insecure_skip_verify,
    )


def tls_context(*, ca_file: str | None, insecure_skip_verify: bool) -> ssl.SSLContext:
    """What the S3 endpoint's certificate is checked against: ``ca_file`` alone when
    given (as urllib3's ``ca_certs``), else the system's CAs. A CA file that cannot be
    used is a ConfigError naming the setting, not a traceback."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"tls.caFile {ca_file}: cannot be used as a PEM CA bundle ({why})"
        ) from None
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _iso_time(text: str | None) -> datetime | None:
    """A listing's ``LastModified`` (ISO 8601, UTC), or None when it is missing or not a
    time. fromisoformat, not strptime: strptime was ~45 % of a listing page's parse."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _read_exactly(stream: BodyStream, length: int) -> bytes:
    """A small streamed body, whole (the SDK read it in one part too)."""
    pieces = []
    left = length
    while left > 0:
        piece = stream.read(left)
        if not piece:
            break  # shorter than announced: its Content-MD5 will not match, the server refuses
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def _parse_listing(
    response: s3http.Response, relative: Callable[[str], str]
) -> tuple[list[RemoteObject], str]:
    """One ListObjectsV2 page: its objects and the next page's token ("" at the end).

    A 200 that is not S3's listing (a captive portal, MinIO's console on the API's
    place, a proxy's login page) is :class:`~runlog_relay.s3http.NotS3Answer`, never an
    empty bucket: well-formed HTML parses as XML too, so the root element decides."""
    from xml.etree import ElementTree

    body = response.body

    def not_s3() -> s3http.NotS3Answer:
        content_type = response.headers.get("content-type", "")
        return s3http.NotS3Answer(response.status, content_type=content_type, body=body)

    # The configured endpoint's answer, parsed as the SDK parses it; expat resolves no
    # external entities and bounds entity expansion.
    try:
        root = ElementTree.fromstring(body)  # noqa: S314
    except ElementTree.ParseError:
        raise not_s3() from None
    if _local_name(root.tag) != "ListBucketResult":
        raise not_s3()
    fields: dict[str, str] = {}
    contents = []
    # An entry's fields are found by their full tag, in the root's namespace: C-speed
    # lookups instead of a dictionary of every child by local name (half the parse of a
    # page). An entry in another namespace (no server is known to mix them) still counts.
    namespace = root.tag[: -len("ListBucketResult")]
    entry_tag = namespace + "Contents"
    tags = {name: namespace + name for name in ("Key", "ETag", "Size", "LastModified")}
    for child in root:
        if child.tag == entry_tag:
            contents.append({name: child.findtext(tag) or "" for name, tag in tags.items()})
            continue
        name = _local_name(child.tag)
        if name == "Contents":
            contents.append({_local_name(c.tag): c.text or "" for c in child})
        else:
            fields[name] = child.text or ""
    encoded = fields.get("EncodingType", "").lower() == "url"
    objects = []
    for entry in contents:
        full_key = entry.get("Key", "")
        if encoded:
            full_key = unquote_plus(full_key)
        if not full_key or full_key.endswith("/"):
            continue  # a folder marker (the SDK's is_dir)
        objects.append(
            RemoteObject(
                key=relative(full_key),
                etag=entry.get("ETag", "").strip('"'),
                size=int(entry.get("Size") or 0),
                last_modified=_iso_time(entry.get("LastModified")),
            )
        )
    truncated = fields.get("IsTruncated", "").lower() == "true"
    token = fields.get("NextContinuationToken", "") if truncated else ""
    if truncated and not token:
        raise not_s3()  # truncated without a way on: not S3's listing
    return objects, token


# --------------------------------------------------------------------------- the store


class ObjectStore:
    """A bucket and prefix on an S3-compatible endpoint.

    Credentials: a :data:`~runlog_relay.config.credentials.CredentialPlan` (what the
    settings resolve), or a plain ``access_key``/``secret_key`` pair. ``region`` None:
    the bucket's location is asked for once (GetBucketLocation); a least-privilege key
    (list + put) may not have ``s3:GetBucketLocation`` (SeaweedFS refuses it, AWS and moto
    answer AccessDenied), and then ``fallback_region`` (default :data:`DEFAULT_REGION`) is
    used with one INFO line instead of failing the call that needed it.

    The calls made per file (PUT of a body up to :data:`MULTIPART_THRESHOLD`, HEAD, the
    listing, the bucket's HEAD) go through :mod:`runlog_relay.s3http` on one persistent
    connection per thread; the rest through the minio SDK, imported on first use.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        prefix: str,
        credentials: CredentialPlan | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        fallback_region: str | None = None,
        encryption: Encryption | None = None,
        storage_class: str | None = None,
        insecure_skip_verify: bool = False,
        ca_file: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_connections: int = 10,
    ) -> None:
        if credentials is None:
            if access_key is None or secret_key is None:
                raise ValueError("ObjectStore needs credentials or an access key pair")
            credentials = StaticKeys(access_key, secret_key)
        parts = urlsplit(endpoint)
        # What every upload asks for: encryption headers and storage class (the SSE-C
        # key also goes with every read of an object's body or metadata).
        self._sse = _sse(encryption)
        self._storage_class = storage_class
        # None: not known yet (see the module docstring); never learned True under SSE-KMS/C.
        self._etags_opaque_by_config = encryption is not None and encryption.mode in {"kms", "c"}
        self._etags_are_md5: bool | None = False if self._etags_opaque_by_config else None
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.credentials = credentials_provider(
            credentials,
            ca_file=ca_file,
            insecure_skip_verify=insecure_skip_verify,
            timeout=read_timeout,
        )
        self._scheme = parts.scheme or "http"
        self._netloc = parts.netloc
        self._configured_region = region
        self._fallback_region = fallback_region or DEFAULT_REGION
        self._region: str | None = region
        self._region_lock = threading.Lock()
        self._aws = _AWS_HOST.search(parts.hostname or "") is not None
        self._targets: dict[str, tuple[str, str]] = {}
        self._timeouts = (connect_timeout, read_timeout)
        self._tls = (
            tls_context(ca_file=ca_file, insecure_skip_verify=insecure_skip_verify)
            if self._scheme == "https"
            else None
        )
        self._hosts: dict[str, s3http.Connections] = {}
        self._hosts_lock = threading.Lock()
        self._signer = s3http.Signer()
        # Headers of every small PUT, lower-case as they are signed.
        self._put_headers: dict[str, str] = {}
        if storage_class:
            self._put_headers["x-amz-storage-class"] = storage_class
        if self._sse is not None:
            self._put_headers.update({k.lower(): v for k, v in self._sse.headers().items()})
        for value in self._put_headers.values():
            if "\r" in value or "\n" in value:  # settings validate them; never split a request
                raise ValueError("a header value with a line break")
        self._read_headers: dict[str, str] = {}
        if self._sse is not None:
            self._read_headers.update({k.lower(): v for k, v in self._sse.read_headers().items()})
        self._sdk_args: dict[str, Any] = {
            "netloc": parts.netloc,
            "secure": self._scheme == "https",
            "region": region,
            "credentials": self.credentials,
            "region_of": self._bucket_region,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_connections": max_connections,
            "insecure_skip_verify": insecure_skip_verify,
            "ca_file": ca_file,
        }
        self._sdk_client: Minio | None = None
        self._sdk_lock = threading.Lock()

    def __repr__(self) -> str:  # never shows credentials
        return f"ObjectStore({self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the persistent connections (the next request opens new ones)."""
        with self._hosts_lock:
            hosts = list(self._hosts.values())
        for connections in hosts:
            connections.close()

    @property
    def connections_opened(self) -> int:
        """Connections the lean path has opened so far (tests, the benchmark)."""
        return sum(c.opened for c in list(self._hosts.values()))

    @property
    def _client(self) -> Minio:
        """The minio SDK's client, built (and the SDK imported) on first use."""
        with self._sdk_lock:
            if self._sdk_client is None:
                self._sdk_client = _sdk_client(**self._sdk_args)
            return self._sdk_client

    @property
    def location(self) -> str:
        """``bucket/prefix`` for messages."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    # ------------------------------------------------------------------ the lean path

    def _connections(self, netloc: str) -> s3http.Connections:
        connections = self._hosts.get(netloc)
        if connections is None:
            with self._hosts_lock:
                connections = self._hosts.get(netloc)
                if connections is None:
                    where = urlsplit(f"//{netloc}")
                    connections = s3http.Connections(
                        self._scheme,
                        where.hostname or netloc,
                        where.port,
                        connect_timeout=self._timeouts[0],
                        read_timeout=self._timeouts[1],
                        ssl_context=self._tls,
                    )
                    self._hosts[netloc] = connections
        return connections

    def _target(self, region: str) -> tuple[str, str]:
        """(host, path of the bucket) for requests to the bucket in ``region``: path
        style on the endpoint, except on AWS, where the SDK's URL rules decide once."""
        target = self._targets.get(region)
        if target is None:
            if self._aws:
                from minio.helpers import BaseURL

                url = BaseURL(f"{self._scheme}://{self._netloc}", self._configured_region).build(
                    method="PUT", region=region, bucket_name=self.bucket, object_name="k"
                )
                target = (url.netloc, url.path[: -len("/k")])
            else:
                target = (self._netloc, f"/{self.bucket}")
            self._targets[region] = target
        return target

    def _signed(
        self,
        method: str,
        *,
        netloc: str,
        path: str,
        region: str,
        query: str = "",
        headers: Mapping[str, str],
        body: bytes | None = None,
        has_object: bool,
    ) -> s3http.Response:
        """One signed request; raises s3http's failures (the caller classifies them)."""
        keys = self.credentials.retrieve()  # current ones: renewed by the provider
        signed = {
            **headers,
            "host": netloc,
            "x-amz-date": s3http.amz_date(),
            # A body is not hashed: the signed Content-MD5 covers it (see put()).
            "x-amz-content-sha256": s3http.UNSIGNED_PAYLOAD
            if body is not None
            else s3http.EMPTY_SHA256,
        }
        if keys.session_token:
            signed["x-amz-security-token"] = keys.session_token
        signed["authorization"] = self._signer.authorization(
            method=method,
            path=path,
            query=query,
            headers=signed,
            access_key=keys.access_key,
            secret_key=keys.secret_key,
            region=region,
        )
        # Not signed (as the SDKs do it): proxies may rewrite it.
        signed["user-agent"] = _USER_AGENT
        target = f"{path}?{query}" if query else path
        response = self._connections(netloc).request(method, target, signed, body)
        return s3http.check(response, method=method, has_object=has_object)

    def _request(
        self,
        method: str,
        *,
        key: str | None = None,
        query: tuple[tuple[str, str], ...] = (),
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> s3http.Response:
        """A request to the bucket (``key`` None) or to an object (``key`` relative)."""
        region = self._bucket_region()
        netloc, bucket_path = self._target(region)
        path = (
            f"{bucket_path}/{s3http.quote_key(self.full_key(key))}"
            if key is not None
            else bucket_path or "/"
        )
        try:
            return self._signed(
                method,
                netloc=netloc,
                path=path,
                region=region,
                query=s3http.canonical_query(query),
                headers=headers,
                body=body,
                has_object=key is not None,
            )
        except s3http.S3Failure as exc:
            if exc.code == "NoSuchBucket" and self._configured_region is None:
                self._region = None  # gone: it may come back elsewhere, look up again
            raise

    def _bucket_region(self) -> str:
        """The region requests are signed for: the configured one, else the bucket's
        location, looked up once (one thread at a time; the others find it cached)."""
        region = self._region
        if region is None:
            with self._region_lock:
                region = self._region
                if region is None:
                    region = self._region = self._look_up_region()
        return region

    def _look_up_region(self) -> str:
        try:
            response = self._signed(
                "GET",
                netloc=self._netloc,
                path=f"/{self.bucket}",  # path style, as AWS wants for this call
                region=DEFAULT_REGION,
                query="location=",
                headers={},
                has_object=False,
            )
        except s3http.S3Failure as exc:
            # Only a refusal of this call: InvalidAccessKeyId, SignatureDoesNotMatch (also
            # 403) must surface as they are, so wrong credentials read as such; NoSuchBucket
            # goes to the caller too (check_bucket answers False).
            if exc.code not in _REFUSED:
                raise
            log.info(
                "GetBucketLocation of bucket %r was refused (%s); using region %s (set"
                " --region to skip the lookup)",
                self.bucket,
                exc.code,
                self._fallback_region,
                extra={"bucket": self.bucket},
            )
            return self._fallback_region
        found = _LOCATION.search(response.body)
        location = found.group(1).decode().strip() if found else ""
        if not location:
            return DEFAULT_REGION
        return "eu-west-1" if location == "EU" else location

    # ------------------------------------------------------------------ bucket

    def check_bucket(self, *, create: bool = False) -> bool:
        """Make sure the bucket exists (creating it if asked); True when it was created.

        Raises PermanentError(code="NoSuchBucket") when missing and not to be created.
        """
        try:
            self._request("HEAD", headers={})
            exists = True
        except s3http.S3Failure as exc:
            if exc.code != "NoSuchBucket":
                raise classify(
                    exc, what=f"checking bucket {self.bucket!r}", operation="HeadBucket"
                ) from exc
            exists = False
        except _WIRE_ERRORS as exc:
            raise classify(
                exc, what=f"checking bucket {self.bucket!r}", operation="HeadBucket"
            ) from exc
        if exists:
            return False
        if not create:
            raise PermanentError(
                f"NoSuchBucket: bucket {self.bucket!r} does not exist at {self.endpoint}"
                " (create it, or enable createBucket / --create-bucket)",
                code="NoSuchBucket",
            )
        return self.make_bucket()

    def make_bucket(self) -> bool:
        """Create the bucket; False when it already existed."""
        from minio.error import S3Error

        try:
            self._client.make_bucket(self.bucket)
            return True
        except S3Error as exc:
            if exc.code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                return False
            raise classify(
                exc, what=f"creating bucket {self.bucket!r}", operation="CreateBucket"
            ) from exc
        except _sdk_errors() as exc:
            raise classify(
                exc, what=f"creating bucket {self.bucket!r}", operation="CreateBucket"
            ) from exc

    def list(self, sub_prefix: str = "") -> Iterator[RemoteObject]:
        """Every object under ``prefix/sub_prefix`` (one paginated listing, no HEADs)."""
        base = (
            self.full_key(sub_prefix) if sub_prefix else (f"{self.prefix}/" if self.prefix else "")
        )
        token = ""
        try:
            while True:
                query = [("list-type", "2"), ("prefix", base), ("encoding-type", "url")]
                if token:
                    query.append(("continuation-token", token))
                response = self._request("GET", query=tuple(query), headers={})
                objects, token = _parse_listing(response, self._relative)
                yield from objects
                if not token:
                    return
        except _WIRE_ERRORS as exc:
            raise classify(exc, what=f"listing {self.location}", operation="ListObjectsV2") from exc

    # ------------------------------------------------------------------ upload

    def put(
        self,
        key: str,
        body: bytes | BodyStream,
        *,
        length: int | None = None,
        md5: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Upload ``body`` at ``key``; returns the ETag the server reported.

        A stream needs its ``length`` and the hex ``md5`` of its content (for the
        metadata); it is read one part at a time, at most :data:`PART_SIZE` in memory.
        """
        if isinstance(body, bytes):
            length = len(body)
            md5 = md5 or hashlib.md5(body, usedforsecurity=False).hexdigest()
        elif length is None or md5 is None:
            raise ValueError("a streamed body needs its length and md5")
        what = f"uploading {self.full_key(key)}"
        if length > MULTIPART_THRESHOLD:
            stream: BodyStream = io.BytesIO(body) if isinstance(body, bytes) else body
            return self._put_multipart(key, stream, length, md5, content_type)
        try:
            data = body if isinstance(body, bytes) else _read_exactly(body, length)
            headers = {
                **self._put_headers,
                "content-type": content_type,
                "content-length": str(len(data)),
                # Integrity: the body is sent as UNSIGNED-PAYLOAD (its SHA-256 over plain
                # http cost as much CPU as the rest of the request) and instead carries its
                # MD5 in Content-MD5, which is signed, so it cannot be changed on the way
                # without breaking the signature; the server recomputes the MD5 of what it
                # received and refuses a mismatch (BadDigest, retried) rather than store
                # it. The MD5 is the one the check computed from these exact bytes (the
                # ETag comparison and the metadata use it too), so it costs nothing here.
                "content-md5": base64.b64encode(bytes.fromhex(md5)).decode(),
                f"x-amz-meta-{MD5_METADATA}": md5,
            }
            response = self._request("PUT", key=key, headers=headers, body=data)
        except _WIRE_ERRORS as exc:
            raise classify(exc, what=what, operation="PutObject") from exc
        etag = (response.headers.get("etag") or "").strip('"')
        if self._etags_are_md5 and _MD5_SHAPED.fullmatch(etag) and etag != md5:
            # Where ETags are MD5s, the answer proves what was stored, also on a server that
            # does not check Content-MD5 (moto): different bytes landed; send them again.
            raise RetryableError(
                f"{what} (PutObject): the server stored other bytes (ETag {etag}, MD5 {md5})",
                code="BadDigest",
            )
        return etag

    def _put_multipart(
        self, key: str, stream: BodyStream, length: int, md5: str, content_type: str
    ) -> str:
        metadata = {MD5_METADATA: md5}
        if self._storage_class:
            metadata["x-amz-storage-class"] = self._storage_class
        try:
            result = self._client.put_object(
                self.bucket,
                self.full_key(key),
                stream,  # type: ignore[arg-type]  # minio wants BinaryIO; read() is all it uses
                length,
                content_type=content_type,
                metadata=metadata,  # type: ignore[arg-type]
                sse=self._sse.for_sdk() if self._sse is not None else None,
                # minio splits into parts of exactly PART_SIZE, which is what the ETag
                # computation assumes.
                part_size=PART_SIZE,
                num_parallel_uploads=1,
            )
        except _sdk_errors() as exc:
            raise classify(
                exc, what=f"uploading {self.full_key(key)}", operation="PutObject"
            ) from exc
        return (result.etag or "").strip('"')

    def _ssec(self) -> Any:
        """The SDK's SSE-C object for reads through the SDK (None without SSE-C)."""
        return self._sse.for_sdk() if self._sse is not None and self._sse.customer else None

    # ------------------------------------------------------------------ change detection

    @property
    def etags_are_md5(self) -> bool | None:
        """Whether this bucket's ETags are the bodies' MD5s (None: not known yet)."""
        return self._etags_are_md5

    def head_md5(self, key: str) -> str | None:
        """One HEAD: the body MD5 the sidecar stored as metadata on ``key``; None when
        the object has none (written by another tool). NotFoundError when it is gone."""
        try:
            response = self._request("HEAD", key=key, headers=self._read_headers)
        except _WIRE_ERRORS as exc:
            raise classify(
                exc, what=f"reading the metadata of {self.full_key(key)}", operation="HeadObject"
            ) from exc
        value = response.headers.get(f"x-amz-meta-{MD5_METADATA}")
        return str(value).strip().lower() if value else None

    def matches(self, key: str, etag: str, body: bytes) -> bool:
        """Whether the object at ``key``, listed with ``etag``, holds ``body``.

        By ETag alone where ETags are MD5s (no request); otherwise, or while that is not
        known, a mismatch is confirmed with one HEAD (:meth:`head_md5`)."""
        return self.matches_digests(
            key,
            etag,
            expected=expected_etag(body),
            md5=hashlib.md5(body, usedforsecurity=False).hexdigest(),
        )

    def matches_digests(self, key: str, etag: str, *, expected: str, md5: str) -> bool:
        """:meth:`matches` for a caller that kept only the body's :func:`expected_etag`
        and MD5, not the body. Cannot tell (:meth:`compare_digests`) is not a match."""
        return self.compare_digests(key, etag, expected=expected, md5=md5) is True

    def compare_digests(self, key: str, etag: str, *, expected: str, md5: str) -> bool | None:
        """Whether the object at ``key``, listed with ``etag``, holds the body with these
        digests; None when that cannot be told without reading the object: a multipart
        ETag of another part size (:func:`~runlog_relay.etag.etag_verdict`) or an opaque
        ETag, and no MD5 stored as metadata (another tool wrote it)."""
        verdict = etag_verdict(etag, expected=expected, md5=md5)
        if verdict:
            if not self._etags_opaque_by_config:
                self._etags_are_md5 = True  # an opaque ETag never equals the MD5
            return True
        if verdict is False and self._etags_are_md5 and _MD5_SHAPED.fullmatch(etag):
            return False  # an MD5 bucket: a different ETag is different content
        try:
            stored = self.head_md5(key)
        except NotFoundError:
            return False  # gone since the listing
        if stored is None:
            # No MD5 to go by: a same-form digest that differs is different content,
            # unless this bucket's ETags are known not to be digests.
            return None if verdict is None or self._etags_are_md5 is False else False
        return stored == md5

    def get(self, key: str) -> bytes:
        """The body of the object at ``key``; NotFoundError when it does not exist."""
        response = None
        try:
            response = self._client.get_object(self.bucket, self.full_key(key), ssec=self._ssec())
            return response.read()
        except _sdk_errors() as exc:
            raise classify(
                exc, what=f"downloading {self.full_key(key)}", operation="GetObject"
            ) from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the tags of the object at ``key`` (one PutObjectTagging request).

        A server without object tagging answers ``NotImplemented`` (or
        ``MethodNotAllowed``): a PermanentError with that code."""
        from xml.sax.saxutils import escape

        body = (
            "<Tagging><TagSet>"
            + "".join(
                f"<Tag><Key>{escape(name)}</Key><Value>{escape(value)}</Value></Tag>"
                for name, value in tags.items()
            )
            + "</TagSet></Tagging>"
        ).encode()
        headers = {
            "content-type": "application/xml",
            "content-length": str(len(body)),
            # Required by S3 for this call; it also stands for the unsigned payload.
            "content-md5": base64.b64encode(
                hashlib.md5(body, usedforsecurity=False).digest()
            ).decode(),
        }
        try:
            self._request("PUT", key=key, query=(("tagging", ""),), headers=headers, body=body)
        except _WIRE_ERRORS as exc:
            raise classify(
                exc, what=f"tagging {self.full_key(key)}", operation="PutObjectTagging"
            ) from exc

    def get_tags(self, key: str) -> dict[str, str]:
        """The tags of the object at ``key`` (one GetObjectTagging request); empty when it
        has none, NotFoundError when it does not exist."""
        try:
            tags = self._client.get_object_tags(self.bucket, self.full_key(key))
        except _sdk_errors() as exc:
            raise classify(
                exc,
                what=f"reading the tags of {self.full_key(key)}",
                operation="GetObjectTagging",
            ) from exc
        return dict(tags or {})
