"""objectstore: S3 ETags computed locally, the error classification, and no secret leaks."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
import urllib3
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from runlog_relay.errors import (
    NotFoundError,
    PermanentError,
    RelayError,
    RetryableError,
)
from runlog_relay.objectstore import (
    ObjectStore,
    classify,
)

SECRET = "S3CR3T-objectstore-Qm9vYmFy"
ACCESS = "AKIA-objectstore-k7Pw"


# --------------------------------------------------------------------------- classify


def response(status: int) -> urllib3.HTTPResponse:
    return urllib3.HTTPResponse(body=b"", status=status, headers={}, preload_content=False)


def s3_error(code: str, status: int, message: str = "details") -> S3Error:
    return S3Error(response(status), code, message, "/bucket/key", "req-1", "host-1")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("AccessDenied", 403, PermanentError),
        ("InvalidAccessKeyId", 403, PermanentError),
        ("SignatureDoesNotMatch", 403, PermanentError),
        ("InvalidToken", 400, PermanentError),  # a bad session token: needs a human
        ("ExpiredToken", 400, RetryableError),  # refreshing credentials renew it
        ("NoSuchBucket", 404, PermanentError),
        ("InvalidBucketName", 400, PermanentError),
        ("XMinioStorageFull", 507, PermanentError),
        ("SomethingNew", 403, PermanentError),  # any 401/403
        ("SomethingNew", 401, PermanentError),
        ("NoSuchKey", 404, NotFoundError),
        ("NoSuchUpload", 404, NotFoundError),
        ("SomethingMissing", 404, NotFoundError),
        ("InternalError", 500, RetryableError),
        ("SlowDown", 503, RetryableError),
        ("ServiceUnavailable", 503, RetryableError),
        ("RequestTimeout", 400, RetryableError),
        ("InvalidArgument", 400, PermanentError),  # e.g. an SSE-C object read without its key
        ("BadRequest", 400, PermanentError),  # the same for a HEAD (no body to say more)
        ("InvalidStorageClass", 400, PermanentError),
        ("KMS.NotFoundException", 400, PermanentError),
        ("KMS.DisabledException", 400, PermanentError),
    ],
)
def test_s3_errors_by_code_and_status(code: str, status: int, kind: type[RelayError]) -> None:
    error = classify(s3_error(code, status), what="uploading run-logs/r/RunLog")
    assert type(error) is kind
    assert error.code == code  # type: ignore[attr-defined]
    assert str(error).startswith(f"uploading run-logs/r/RunLog: {code}")
    assert "(details)" in str(error)


def test_no_such_bucket_is_permanent_not_merely_not_found() -> None:
    error = classify(s3_error("NoSuchBucket", 404), what="listing b/p")
    assert isinstance(error, PermanentError)
    assert not isinstance(error, NotFoundError)


def test_server_error_is_retryable() -> None:
    error = classify(ServerError("server failed with HTTP status code 502", 502), what="put")
    assert type(error) is RetryableError
    assert error.code == "ServerError"
    assert "502" in str(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (502, RetryableError),
        (503, RetryableError),
        (429, RetryableError),
        (408, RetryableError),
        (400, PermanentError),
        (404, PermanentError),
        (200, PermanentError),
    ],
)
def test_invalid_response_without_an_s3_body(status: int, kind: type[RelayError]) -> None:
    exc = InvalidResponseError(status, "text/html", "<html>proxy says no</html>")
    error = classify(exc, what="listing b/p")
    assert type(error) is kind
    assert error.code == f"HTTP{status}"  # type: ignore[attr-defined]
    assert "<html>" not in str(error)  # the body of some proxy is not our message


def test_connection_refused_is_retryable() -> None:
    conn = HTTPConnection("127.0.0.1", 9)
    try:
        exc = urllib3.exceptions.NewConnectionError(conn, "Failed to establish a connection")
    finally:
        conn.close()
    error = classify(exc, what="listing b/p")
    assert type(error) is RetryableError
    assert error.code == "Unreachable"
    assert "NewConnectionError" in str(error)


def test_read_timeout_is_retryable() -> None:
    pool = HTTPConnectionPool("127.0.0.1", 9)
    try:
        exc = urllib3.exceptions.ReadTimeoutError(pool, "/b/k", "Read timed out.")
    finally:
        pool.close()
    error = classify(exc, what="put")
    assert type(error) is RetryableError
    assert error.code == "Unreachable"
    assert "ReadTimeoutError" in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        urllib3.exceptions.ProtocolError("Connection aborted."),
    ],
    ids=["refused", "reset", "socket-timeout", "protocol"],
)
def test_transport_errors_are_retryable(exc: BaseException) -> None:
    error = classify(exc, what="put")
    assert type(error) is RetryableError
    assert error.code == "Unreachable"


def test_max_retry_error_reports_its_reason() -> None:
    pool = HTTPConnectionPool("127.0.0.1", 9)
    conn = HTTPConnection("127.0.0.1", 9)
    try:
        inner = urllib3.exceptions.NewConnectionError(conn, "refused")
        error = classify(urllib3.exceptions.MaxRetryError(pool, "/b", inner), what="put")
    finally:
        conn.close()
        pool.close()
    assert type(error) is RetryableError
    assert "NewConnectionError" in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        urllib3.exceptions.SSLError("certificate verify failed"),
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
        ssl.SSLError(1, "wrong version number"),
        urllib3.exceptions.MaxRetryError(
            None,  # type: ignore[arg-type]
            "/b",
            urllib3.exceptions.SSLError("certificate verify failed"),
        ),
    ],
    ids=["urllib3", "ssl-verify", "ssl", "max-retry-ssl"],
)
def test_tls_failures_are_permanent(exc: BaseException) -> None:
    error = classify(exc, what="listing b/p")
    assert type(error) is PermanentError
    assert error.code == "TLS"
    assert "TLS failure (SSL" in str(error)
    # and why: the reason was left out ("TLS failure (SSLError)")
    assert "certificate verify failed" in str(error) or "wrong version number" in str(error)


def test_relay_errors_pass_through_unchanged() -> None:
    original = RetryableError("already ours", delay=3.0)
    assert classify(original, what="x") is original


def test_other_sdk_and_value_errors_are_permanent() -> None:
    assert type(classify(ValueError("bad key"), what="put")) is PermanentError
    assert type(classify(MinioException("odd"), what="put")) is PermanentError


def test_unknown_exceptions_are_retryable_and_named_only() -> None:
    error = classify(RuntimeError(f"something with {SECRET}"), what="put")
    assert type(error) is RetryableError
    assert str(error) == "put: unexpected RuntimeError"


# --------------------------------------------------------------------------- ObjectStore


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def make_store(port: int, prefix: str = "run-logs") -> ObjectStore:
    return ObjectStore(
        endpoint=f"http://127.0.0.1:{port}",
        bucket="runnable",
        prefix=prefix,
        access_key=ACCESS,
        secret_key=SECRET,
        connect_timeout=1.0,
        read_timeout=1.0,
    )


def test_repr_never_shows_credentials(refused_port: int) -> None:
    store = make_store(refused_port)
    for text in (repr(store), str(store)):
        assert SECRET not in text
        assert ACCESS not in text
        assert "runnable" in text


def test_keys_are_relative_to_the_prefix(refused_port: int) -> None:
    store = make_store(refused_port, prefix="/run-logs/")
    assert store.prefix == "run-logs"
    assert store.full_key("r/RunLog") == "run-logs/r/RunLog"
    assert store.location == "runnable/run-logs"
    bare = make_store(refused_port, prefix="")
    assert bare.full_key("r/RunLog") == "r/RunLog"
    assert bare.location == "runnable"


def test_unreachable_endpoint_errors_are_retryable_and_secret_free(refused_port: int) -> None:
    store = make_store(refused_port)
    calls = [
        lambda: store.put("r/RunLog", b"{}"),
        lambda: list(store.list()),
        lambda: store.get("r/RunLog"),
        lambda: store.check_bucket(),
    ]
    for call in calls:
        with pytest.raises(RetryableError) as caught:
            call()
        error = caught.value
        assert error.code == "Unreachable"
        assert "endpoint unreachable" in str(error)
        assert error.__cause__ is not None  # raise ... from exc
        for text in (str(error), repr(error), str(error.__cause__)):
            assert SECRET not in text
            assert ACCESS not in text
    with pytest.raises(RetryableError, match=r"uploading run-logs/r/RunLog"):
        store.put("r/RunLog", b"{}")


@pytest.mark.parametrize(
    ("operation", "permission"),
    [
        ("ListObjectsV2", "s3:ListBucket"),
        ("HeadBucket", "s3:ListBucket"),
        ("PutObject", "s3:PutObject"),
        ("GetObject", "s3:GetObject"),
        ("HeadObject", "s3:GetObject"),
        ("GetBucketLocation", "s3:GetBucketLocation"),
        ("CreateBucket", "s3:CreateBucket"),
    ],
)
def test_a_refusal_names_the_operation_and_the_permission(operation: str, permission: str) -> None:
    error = classify(
        s3_error("AccessDenied", 403, "Access Denied"), what="doing it", operation=operation
    )
    assert isinstance(error, PermanentError)
    assert str(error) == (
        f"doing it ({operation}): AccessDenied (Access Denied); the credentials may lack"
        f" {permission}"
    )


def test_other_failures_name_the_operation_without_a_permission_hint() -> None:
    error = classify(s3_error("InternalError", 500), what="listing b/p", operation="ListObjectsV2")
    assert str(error) == "listing b/p (ListObjectsV2): InternalError (details)"
