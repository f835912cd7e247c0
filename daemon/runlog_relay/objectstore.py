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
user metadata (``x-amz-meta-runlog-relay-md5``) for other tools. A body may be a stream
(``read(n)``) of known length and MD5: minio reads it one part at a time, so a big file is
never held whole in memory.
"""

from __future__ import annotations

import hashlib
import io
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import Tags
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from runlog_relay.errors import NotFoundError, PermanentError, RelayError, RetryableError
from runlog_relay.etag import MULTIPART_THRESHOLD, PART_SIZE, expected_etag

__all__ = [
    "MULTIPART_THRESHOLD",
    "PART_SIZE",
    "BodyStream",
    "ObjectStore",
    "RemoteObject",
    "classify",
    "expected_etag",
]

MD5_METADATA = "runlog-relay-md5"
_MIN_PART = 5 * 1024 * 1024  # minio's smallest part size

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


def classify(exc: BaseException, *, what: str) -> RelayError:
    """Translate an SDK/transport exception into the project's tree (no secrets inside)."""
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, S3Error):
        code = exc.code or "S3Error"
        status = exc.response.status if exc.response is not None else 0
        message = f"{what}: {code}" + (f" ({exc.message})" if exc.message else "")
        if code in {"NoSuchKey", "NoSuchUpload"}:
            return NotFoundError(message, code=code)
        if code in _PERMANENT_CODES or status in {401, 403}:
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


class ObjectStore:
    """A bucket and prefix on an S3-compatible endpoint."""

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        prefix: str,
        access_key: str,
        secret_key: str,
        region: str | None = None,
        insecure_skip_verify: bool = False,
        ca_file: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_connections: int = 10,
    ) -> None:
        parts = urlsplit(endpoint)
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
        self._client = Minio(
            parts.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "https",
            region=region,
            http_client=http,
            cert_check=not insecure_skip_verify,
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
            raise classify(exc, what=f"checking bucket {self.bucket!r}") from exc
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
            raise classify(exc, what=f"creating bucket {self.bucket!r}") from exc
        except _SDK_ERRORS as exc:
            raise classify(exc, what=f"creating bucket {self.bucket!r}") from exc

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
            raise classify(exc, what=f"listing {self.location}") from exc

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
                metadata={MD5_METADATA: md5},
                # Above the threshold minio splits into parts of exactly PART_SIZE, which
                # is what the ETag computation assumes; at or below, one PUT.
                part_size=PART_SIZE if length > MULTIPART_THRESHOLD else max(length, _MIN_PART),
                num_parallel_uploads=1,
            )
        except _SDK_ERRORS as exc:
            raise classify(exc, what=f"uploading {self.full_key(key)}") from exc
        return (result.etag or "").strip('"')

    def get(self, key: str) -> bytes:
        """The body of the object at ``key``; NotFoundError when it does not exist."""
        response = None
        try:
            response = self._client.get_object(self.bucket, self.full_key(key))
            return response.read()
        except _SDK_ERRORS as exc:
            raise classify(exc, what=f"downloading {self.full_key(key)}") from exc
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
            raise classify(exc, what=f"tagging {self.full_key(key)}") from exc

    def get_tags(self, key: str) -> dict[str, str]:
        """The tags of the object at ``key`` (one GetObjectTagging request); empty when it
        has none, NotFoundError when it does not exist."""
        try:
            tags = self._client.get_object_tags(self.bucket, self.full_key(key))
        except _SDK_ERRORS as exc:
            raise classify(exc, what=f"reading the tags of {self.full_key(key)}") from exc
        return dict(tags or {})
