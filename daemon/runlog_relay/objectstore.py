"""The object store: the only module that imports the minio SDK.

The sidecar's upload stage, the operator's bucket check and the read-side tools all
talk to S3/MinIO through :class:`ObjectStore`. Keys given to and returned by it are
*relative to the configured prefix* (``<run_id>/<name>``), so callers never build or
parse full keys. Every SDK or transport exception is translated by :func:`classify`
into :class:`~runlog_relay.errors.RetryableError` or
:class:`~runlog_relay.errors.PermanentError`; retrying is the caller's job (the SDK's
own retries are off so backoff happens in one place).

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
import io
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import Tags
from minio.credentials import Credentials, Provider
from minio.credentials.providers import (
    IamAwsProvider,
    StaticProvider,
    WebIdentityProvider,
)
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.sse import Sse, SseCustomerKey, SseKMS, SseS3

from runlog_relay.config.credentials import (
    ContainerCredentials,
    CredentialPlan,
    Encryption,
    InstanceProfile,
    StaticKeys,
    WebIdentity,
)
from runlog_relay.errors import (
    CredentialsError,
    NotFoundError,
    PermanentError,
    RelayError,
    RetryableError,
)
from runlog_relay.etag import MULTIPART_THRESHOLD, PART_SIZE, expected_etag

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
_MIN_PART = 5 * 1024 * 1024  # minio's smallest part size
#: What an S3 ETag of ours looks like when it is an MD5 (single PUT) or S3's composite.
_MD5_SHAPED = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")

_PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
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


#: Everything the SDK and its transport raise; each call translates them with classify().
_SDK_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)


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
    S3 operation (a key of :data:`PERMISSIONS`), both named in the message."""
    if isinstance(exc, RelayError):
        return exc
    if operation:
        what = f"{what} ({operation})"
    if isinstance(exc, S3Error):
        code = exc.code or "S3Error"
        status = exc.response.status if exc.response is not None else 0
        message = f"{what}: {code}" + (f" ({exc.message})" if exc.message else "")
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
    if isinstance(exc, ServerError):
        return RetryableError(f"{what}: server error {exc.status_code}", code="ServerError")
    if isinstance(exc, InvalidResponseError):
        # A non-S3 answer: a proxy, a load balancer or the wrong service on that port.
        status = getattr(exc, "_code", 0) or 0
        message = f"{what}: the endpoint answered HTTP {status} without an S3 error body"
        if status >= 500 or status in {408, 429}:
            return RetryableError(message, code=f"HTTP{status}")
        return PermanentError(message + " (is this an S3 endpoint?)", code=f"HTTP{status}")
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError, ssl.SSLError)):
        inner = getattr(exc, "reason", None)  # MaxRetryError/ProxyError wrap the cause
        if not isinstance(inner, BaseException):
            inner = None  # ssl.SSLError.reason is a string such as "CERTIFICATE_VERIFY_FAILED"
        reason = type(inner or exc).__name__
        # urllib3 wraps ssl errors in its own SSLError, which is no ssl.SSLError: check both.
        tls = (urllib3.exceptions.SSLError, ssl.SSLError)
        if isinstance(exc, tls) or isinstance(inner, tls):
            return PermanentError(f"{what}: TLS failure ({reason})", code="TLS")
        # A connection that could not even be opened carried no request: nothing can land.
        never_connected = (
            urllib3.exceptions.NewConnectionError,
            urllib3.exceptions.ConnectTimeoutError,
            ConnectionRefusedError,
        )
        unsent = isinstance(inner or exc, never_connected)
        return RetryableError(
            f"{what}: endpoint unreachable ({reason})", code="Unreachable", unsent=unsent
        )
    if isinstance(exc, (MinioException, ValueError)):
        return PermanentError(f"{what}: {type(exc).__name__}: {exc}")
    return RetryableError(f"{what}: unexpected {type(exc).__name__}")


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


class RefreshingProvider(Provider):
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
    if isinstance(exc, urllib3.exceptions.HTTPError):
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
) -> Provider:
    """The minio SDK provider for ``plan``; temporary credentials wrapped in
    :class:`RefreshingProvider`. Builds no connection: the first request fetches."""
    if isinstance(plan, StaticKeys):
        return StaticProvider(plan.access_key, plan.secret_key, plan.session_token)
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
        # IMDSv2: token PUT, role name, credentials, all done by the SDK.
        return IamAwsProvider(custom_endpoint=plan.endpoint, http_client=http).retrieve()

    return fetch


# --------------------------------------------------------------------------- encryption


class _SseKmsBucketKey(Sse):
    """SSE-KMS with the bucket's default KMS key: the SDK's SseKMS always names a key."""

    def __init__(self, context: dict[str, str]) -> None:
        self._headers = {"X-Amz-Server-Side-Encryption": "aws:kms"}
        if context:  # encoded as SseKMS encodes it
            encoded = base64.b64encode(json.dumps(context).encode()).decode()
            self._headers["X-Amz-Server-Side-Encryption-Context"] = encoded

    def headers(self) -> dict[str, str]:
        return dict(self._headers)


def _sse(encryption: Encryption | None) -> Sse | None:
    """The SDK's encryption object for a plan (headers on every PUT, and for SSE-C on
    every GET and HEAD too)."""
    if encryption is None:
        return None
    if encryption.mode == "s3":
        return SseS3()
    if encryption.mode == "kms":
        context = dict(encryption.kms_context)
        if encryption.kms_key_id:
            return SseKMS(encryption.kms_key_id, context)
        return _SseKmsBucketKey(context)
    if encryption.customer_key is None:
        raise ValueError("SSE-C without a customer key")
    return SseCustomerKey(encryption.customer_key)


# --------------------------------------------------------------------------- the client

#: Where a refused location lookup falls back to when no better region is known: the
#: SDK's own default, which MinIO, SeaweedFS and other single-region stores accept.
DEFAULT_REGION = "us-east-1"
_REFUSED = frozenset({"AccessDenied", "AllAccessDisabled", "MethodNotAllowed", "NotImplemented"})


class _Client(Minio):
    """The SDK's client with one change: GetBucketLocation may be refused.

    Without ``region`` the SDK asks for the bucket's location before its first request
    to the bucket. A least-privilege key (list + put) may not have
    ``s3:GetBucketLocation``: SeaweedFS refuses it, AWS and moto answer AccessDenied. Then
    the lookup falls back to ``fallback_region`` with one INFO line, instead of failing
    the listing that triggered it. Other failures (NoSuchBucket, 5xx) are the SDK's.
    """

    def __init__(self, *args: Any, fallback_region: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fallback_region = fallback_region
        # The SDK caches a bucket's region once looked up, but threads starting together
        # (the sidecar lists run prefixes four at a time) would each look it up: one at a
        # time, so the others find it cached.
        self._region_lock = threading.Lock()

    def _get_region(self, bucket_name: str | None = None) -> str:
        with self._region_lock:
            return self._region_of(bucket_name)

    def _region_of(self, bucket_name: str | None) -> str:
        try:
            return super()._get_region(bucket_name)
        except S3Error as exc:
            # Only a refusal of this call: InvalidAccessKeyId, SignatureDoesNotMatch (also
            # 403) must surface as they are, so wrong credentials read as such.
            if exc.code not in _REFUSED:
                # NoSuchBucket and the like: the SDK's callers handle these themselves
                # (bucket_exists answers False), so they must stay SDK errors here.
                raise
            log.info(
                "GetBucketLocation of bucket %r was refused (%s); using region %s (set"
                " --region to skip the lookup)",
                bucket_name,
                exc.code,
                self._fallback_region,
                extra={"bucket": bucket_name},
            )
            if bucket_name:  # the SDK's cache of bucket regions, as a lookup fills it
                self._region_map[bucket_name] = self._fallback_region
            return self._fallback_region


# --------------------------------------------------------------------------- the store


class ObjectStore:
    """A bucket and prefix on an S3-compatible endpoint.

    Credentials: a :data:`~runlog_relay.config.credentials.CredentialPlan` (what the
    settings resolve), or a plain ``access_key``/``secret_key`` pair. ``region`` None:
    the SDK asks for the bucket's location; if that is refused, ``fallback_region``
    (default :data:`DEFAULT_REGION`) is used.
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
        self._ssec = self._sse if isinstance(self._sse, SseCustomerKey) else None
        self._put_headers = {"x-amz-storage-class": storage_class} if storage_class else {}
        # None: not known yet (see the module docstring); never learned True under SSE-KMS/C.
        self._etags_opaque_by_config = encryption is not None and encryption.mode in {"kms", "c"}
        self._etags_are_md5: bool | None = False if self._etags_opaque_by_config else None
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=max_connections,
            # One place retries, with backoff and metrics: the caller. urllib3 and minio
            # retrying underneath would hide outages and multiply requests.
            retries=False,
            cert_reqs="CERT_NONE" if insecure_skip_verify else "CERT_REQUIRED",
            ca_certs=ca_file,
        )
        self.credentials = credentials_provider(
            credentials,
            ca_file=ca_file,
            insecure_skip_verify=insecure_skip_verify,
            timeout=read_timeout,
        )
        self._client = _Client(
            parts.netloc,
            credentials=self.credentials,
            secure=parts.scheme == "https",
            region=region,
            http_client=http,
            cert_check=not insecure_skip_verify,
            fallback_region=fallback_region or DEFAULT_REGION,
        )

    def __repr__(self) -> str:  # never shows credentials
        return f"ObjectStore({self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def location(self) -> str:
        """``bucket/prefix`` for messages."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def check_bucket(self, *, create: bool = False) -> bool:
        """Make sure the bucket exists (creating it if asked); True when it was created.

        Raises PermanentError(code="NoSuchBucket") when missing and not to be created.
        """
        try:
            exists = self._client.bucket_exists(self.bucket)
        except _SDK_ERRORS as exc:
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
        try:
            self._client.make_bucket(self.bucket)
            return True
        except S3Error as exc:
            if exc.code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                return False
            raise classify(
                exc, what=f"creating bucket {self.bucket!r}", operation="CreateBucket"
            ) from exc
        except _SDK_ERRORS as exc:
            raise classify(
                exc, what=f"creating bucket {self.bucket!r}", operation="CreateBucket"
            ) from exc

    def list(self, sub_prefix: str = "") -> Iterator[RemoteObject]:
        """Every object under ``prefix/sub_prefix`` (one paginated listing, no HEADs)."""
        base = (
            self.full_key(sub_prefix) if sub_prefix else (f"{self.prefix}/" if self.prefix else "")
        )
        try:
            for obj in self._client.list_objects(self.bucket, prefix=base, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield RemoteObject(
                    key=self._relative(obj.object_name),
                    etag=(obj.etag or "").strip('"'),
                    size=obj.size or 0,
                    last_modified=obj.last_modified,
                )
        except _SDK_ERRORS as exc:
            raise classify(exc, what=f"listing {self.location}", operation="ListObjectsV2") from exc

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
            stream: BodyStream = io.BytesIO(body)
        else:
            if length is None or md5 is None:
                raise ValueError("a streamed body needs its length and md5")
            stream = body
        try:
            result = self._client.put_object(
                self.bucket,
                self.full_key(key),
                stream,  # type: ignore[arg-type]  # minio wants BinaryIO; read() is all it uses
                length,
                content_type=content_type,
                metadata={MD5_METADATA: md5, **self._put_headers},
                sse=self._sse,
                # Above the threshold minio splits into parts of exactly PART_SIZE, which
                # is what the ETag computation assumes; at or below, one PUT.
                part_size=PART_SIZE if length > MULTIPART_THRESHOLD else max(length, _MIN_PART),
                num_parallel_uploads=1,
            )
        except _SDK_ERRORS as exc:
            raise classify(
                exc, what=f"uploading {self.full_key(key)}", operation="PutObject"
            ) from exc
        return (result.etag or "").strip('"')

    # ------------------------------------------------------------------ change detection

    @property
    def etags_are_md5(self) -> bool | None:
        """Whether this bucket's ETags are the bodies' MD5s (None: not known yet)."""
        return self._etags_are_md5

    def head_md5(self, key: str) -> str | None:
        """One HEAD: the body MD5 the sidecar stored as metadata on ``key``; None when
        the object has none (written by another tool). NotFoundError when it is gone."""
        try:
            stat = self._client.stat_object(self.bucket, self.full_key(key), ssec=self._ssec)
        except _SDK_ERRORS as exc:
            raise classify(
                exc, what=f"reading the metadata of {self.full_key(key)}", operation="HeadObject"
            ) from exc
        value = (stat.metadata or {}).get(f"x-amz-meta-{MD5_METADATA}")
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
        and MD5, not the body."""
        if etag == expected:
            if not self._etags_opaque_by_config:
                self._etags_are_md5 = True  # an opaque ETag never equals the MD5
            return True
        if self._etags_are_md5 and _MD5_SHAPED.fullmatch(etag):
            return False  # an MD5 bucket: a different ETag is different content
        try:
            stored = self.head_md5(key)
        except NotFoundError:
            return False  # gone since the listing
        return stored == md5

    def get(self, key: str) -> bytes:
        """The body of the object at ``key``; NotFoundError when it does not exist."""
        response = None
        try:
            response = self._client.get_object(self.bucket, self.full_key(key), ssec=self._ssec)
            return response.read()
        except _SDK_ERRORS as exc:
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
        object_tags = Tags.new_object_tags()
        object_tags.update(tags)
        try:
            self._client.set_object_tags(self.bucket, self.full_key(key), object_tags)
        except _SDK_ERRORS as exc:
            raise classify(
                exc, what=f"tagging {self.full_key(key)}", operation="PutObjectTagging"
            ) from exc

    def get_tags(self, key: str) -> dict[str, str]:
        """The tags of the object at ``key`` (one GetObjectTagging request); empty when it
        has none, NotFoundError when it does not exist."""
        try:
            tags = self._client.get_object_tags(self.bucket, self.full_key(key))
        except _SDK_ERRORS as exc:
            raise classify(
                exc,
                what=f"reading the tags of {self.full_key(key)}",
                operation="GetObjectTagging",
            ) from exc
        return dict(tags or {})
