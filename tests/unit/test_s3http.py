"""s3http and the lean path of ObjectStore: the SigV4 signer against AWS's published
examples, persistent connections over real sockets (including one the server closed while
idle), and the classification of S3's answers on that path."""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from tests.support.tcpproxy import listen_on_loopback
from tests.support.waiting import wait_until

from runlog_relay import s3http
from runlog_relay.config.credentials import Encryption
from runlog_relay.errors import NotFoundError, PermanentError, RetryableError
from runlog_relay.objectstore import ObjectStore, _sse, classify

# The example credentials of AWS's SigV4 documentation for S3 ("Examples: Signature
# Calculations", Authenticating Requests: Using the Authorization Header).
AWS_ACCESS = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_DATE = "20130524T000000Z"
SECRET = "S3CR3T-s3http-c2VjcmV0"
ACCESS = "AKIA-s3http-Zq9"


def sign(method: str, path: str, query: str, headers: dict[str, str]) -> str:
    return s3http.Signer().authorization(
        method=method,
        path=path,
        query=query,
        headers=headers,
        access_key=AWS_ACCESS,
        secret_key=AWS_SECRET,
        region="us-east-1",
    )


def test_signer_matches_aws_get_object_example() -> None:
    authorization = sign(
        "GET",
        "/test.txt",
        "",
        {
            "host": "examplebucket.s3.amazonaws.com",
            "range": "bytes=0-9",
            "x-amz-content-sha256": s3http.EMPTY_SHA256,
            "x-amz-date": AWS_DATE,
        },
    )
    assert authorization == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_signer_matches_aws_put_object_example() -> None:
    body = b"Welcome to Amazon S3."
    authorization = sign(
        "PUT",
        s3http.quote_key("/test$file.text"),
        "",
        {
            "date": "Fri, 24 May 2013 00:00:00 GMT",
            "host": "examplebucket.s3.amazonaws.com",
            "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
            "x-amz-date": AWS_DATE,
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
        },
    )
    assert authorization.endswith(
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
    )


def test_signer_matches_aws_list_objects_example() -> None:
    authorization = sign(
        "GET",
        "/",
        s3http.canonical_query([("prefix", "J"), ("max-keys", "2")]),  # sorted for signing
        {
            "host": "examplebucket.s3.amazonaws.com",
            "x-amz-content-sha256": s3http.EMPTY_SHA256,
            "x-amz-date": AWS_DATE,
        },
    )
    assert authorization.endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )


def test_the_signing_key_is_derived_once_per_day_and_region() -> None:
    signer = s3http.Signer()
    first = signer.signing_key(AWS_SECRET, "20130524", "us-east-1")
    assert signer.signing_key(AWS_SECRET, "20130524", "us-east-1") is first
    assert signer.signing_key(AWS_SECRET, "20130525", "us-east-1") != first
    assert signer.signing_key(AWS_SECRET, "20130524", "eu-west-1") != first
    assert signer.signing_key("rotated", "20130524", "us-east-1") != first


# --------------------------------------------------------------------------- a scripted server


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  #: which accepted connection carried it


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class ScriptedServer:
    """HTTP/1.1 on a real socket: answers each request with ``answer(request)``; with
    ``close_after_answer`` it closes the connection after every answer without saying so
    (what a server does when its keep-alive timeout expires between two requests)."""

    answer: Callable[[Request], Answer]
    close_after_answer: bool = False
    requests: list[Request] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener = listen_on_loopback()
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()
        for sock in self._socks:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._socks.append(sock)
            thread = threading.Thread(
                target=self._serve, args=(sock, self.connections), daemon=True
            )
            thread.start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, value = header.decode().split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                request = Request(method, target, headers, body, number)
                self.requests.append(request)
                status, answer_headers, answer_body = self.answer(request)
                chunked = "Transfer-Encoding" in answer_headers  # the body comes encoded
                head = f"HTTP/1.1 {status} X\r\n"
                if not chunked:
                    head += f"Content-Length: {len(answer_body)}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in answer_headers.items())
                sock.sendall(head.encode() + b"\r\n" + (b"" if method == "HEAD" else answer_body))
                if self.close_after_answer:
                    return
        except OSError:
            return
        finally:
            reader.close()
            sock.close()


def ok(request: Request) -> Answer:
    return 200, {"ETag": '"abc"', "x-amz-meta-runlog-relay-md5": "abc"}, b""


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(answer: Callable[[Request], Answer] = ok, **kwargs: bool) -> ScriptedServer:
        server = ScriptedServer(answer, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def store_for(endpoint: str, **kwargs: object) -> ObjectStore:
    kwargs.setdefault("read_timeout", 5.0)
    return ObjectStore(
        endpoint=endpoint,
        bucket="runnable",
        prefix="run-logs",
        access_key=ACCESS,
        secret_key=SECRET,
        region="us-east-1",
        connect_timeout=2.0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_one_connection_per_thread_is_reused(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted()
    store = store_for(server.endpoint)
    for index in range(5):
        store.put(f"r/{index}", b"{}")
    store.head_md5("r/0")
    assert [r.method for r in server.requests] == ["PUT"] * 5 + ["HEAD"]
    assert server.connections == 1 and store.connections_opened == 1
    store.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_once(
    scripted: Callable[..., ScriptedServer],
) -> None:
    server = scripted(close_after_answer=True)
    store = store_for(server.endpoint)
    assert store.put("r/RunLog", b'{"a": 1}') == "abc"
    # The connection is closed on the server's side now; the next PUT finds out when it
    # reads the answer, and sends the request again on a new connection.
    assert store.put("r/RunLog", b'{"a": 2}') == "abc"
    assert store.head_md5("r/RunLog") == "abc"
    assert server.connections == 3
    assert [r.body for r in server.requests if r.method == "PUT"] == [b'{"a": 1}', b'{"a": 2}']
    store.close()


def test_a_fresh_connection_that_fails_is_not_retried(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def hang_up(request: Request) -> Answer:
        raise OSError("drop it")  # the server thread ends: connection closed, no answer

    server = scripted(hang_up)
    store = store_for(server.endpoint)
    with pytest.raises(RetryableError) as caught:
        store.put("r/RunLog", b"{}")
    assert caught.value.code == "Unreachable"
    assert not caught.value.unsent  # it was sent: the PUT may have landed (doubtful)
    assert len(server.requests) == 1


def test_a_server_that_never_answers_times_out_as_retryable(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """Plain-http sockets are blocking with the kernel's read timeout (no poll per read):
    a silent server must still end the request with a timeout, not hang or look closed."""
    released = threading.Event()

    def silent(request: Request) -> Answer:
        released.wait(30)
        return ok(request)

    server = scripted(silent)
    store = store_for(server.endpoint, read_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(RetryableError) as caught:
            store.put("r/RunLog", b"{}")
        assert time.monotonic() - started < 10  # the 0.3 s timeout, not the server's 30 s
        assert caught.value.code == "Unreachable"
        assert "TimeoutError" in str(caught.value)
        assert len(server.requests) == 1  # a request that was sent is not sent twice
    finally:
        released.set()
        store.close()


def test_a_server_that_stops_reading_times_the_send_out() -> None:
    """The kernel's send timeout: a 16 MiB body to a server that accepted and reads
    nothing fills both socket buffers, then the send ends with a timeout."""
    listener = listen_on_loopback()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    store = store_for(f"http://127.0.0.1:{listener.getsockname()[1]}", read_timeout=0.3)
    try:
        with pytest.raises(RetryableError) as caught:
            store.put("r/RunLog", b"{" + b" " * (16 * 1024 * 1024 - 2) + b"}")
        assert "TimeoutError" in str(caught.value)
    finally:
        store.close()
        listener.close()
        for sock in accepted:
            sock.close()


def test_connection_refused_is_retryable_and_unsent() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        store = store_for(f"http://127.0.0.1:{sock.getsockname()[1]}")
        for call in (lambda: store.put("r/RunLog", b"{}"), lambda: store.head_md5("r/RunLog")):
            with pytest.raises(RetryableError) as caught:
                call()
            assert caught.value.code == "Unreachable" and caught.value.unsent
            assert "ConnectionRefusedError" in str(caught.value)
    finally:
        sock.close()


def xml_error(status: int, code: str, message: str = "details") -> Callable[[Request], Answer]:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()

    def answer(request: Request) -> Answer:
        return status, {"Content-Type": "application/xml"}, body

    return answer


@pytest.mark.parametrize(
    ("answer", "kind", "code"),
    [
        (xml_error(403, "AccessDenied"), PermanentError, "AccessDenied"),
        (xml_error(403, "SignatureDoesNotMatch"), PermanentError, "SignatureDoesNotMatch"),
        (xml_error(404, "NoSuchBucket"), PermanentError, "NoSuchBucket"),
        (xml_error(503, "SlowDown", "Reduce your request rate"), RetryableError, "SlowDown"),
        (xml_error(500, "InternalError"), RetryableError, "InternalError"),
        (xml_error(400, "BadDigest"), RetryableError, "BadDigest"),
        (
            lambda r: (502, {"Content-Type": "text/html"}, b"<html>gw</html>"),
            RetryableError,
            "HTTP502",
        ),
        (
            lambda r: (404, {"Content-Type": "text/html"}, b"<html>no</html>"),
            PermanentError,
            "HTTP404",
        ),
    ],
    ids=[
        "403",
        "403-signature",
        "404-bucket",
        "503-slowdown",
        "500",
        "bad-digest",
        "502-html",
        "404-html",
    ],
)
def test_answers_are_classified_on_the_lean_path(
    scripted: Callable[..., ScriptedServer],
    answer: Callable[[Request], Answer],
    kind: type[Exception],
    code: str,
) -> None:
    store = store_for(scripted(answer).endpoint)
    with pytest.raises(kind) as caught:
        store.put("r/RunLog", b"{}")
    error = caught.value
    assert type(error) is kind and error.code == code  # type: ignore[attr-defined]
    assert str(error).startswith("uploading run-logs/r/RunLog (PutObject): ")
    assert "<html>" not in str(error)
    if code == "AccessDenied":
        assert str(error).endswith("the credentials may lack s3:PutObject")
    for text in (str(error), repr(error), str(error.__cause__)):
        assert SECRET not in text and "Signature=" not in text


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (403, PermanentError, "AccessDenied"),
        (404, NotFoundError, "NoSuchKey"),
        (503, RetryableError, "ServerError"),
    ],
)
def test_bodiless_head_answers_are_read_as_the_sdk_reads_them(
    scripted: Callable[..., ScriptedServer], status: int, kind: type[Exception], code: str
) -> None:
    store = store_for(scripted(lambda r: (status, {}, b"")).endpoint)
    with pytest.raises(kind) as caught:
        store.head_md5("r/RunLog")
    assert type(caught.value) is kind and caught.value.code == code  # type: ignore[attr-defined]
    assert "(HeadObject)" in str(caught.value)


def test_a_missing_bucket_is_no_such_bucket_for_bucket_calls(
    scripted: Callable[..., ScriptedServer],
) -> None:
    store = store_for(scripted(lambda r: (404, {}, b"")).endpoint)
    with pytest.raises(PermanentError) as caught:
        store.check_bucket()
    assert caught.value.code == "NoSuchBucket"


def test_every_request_signs_with_the_providers_current_credentials(
    scripted: Callable[..., ScriptedServer],
) -> None:
    server = scripted()
    store = store_for(server.endpoint)

    @dataclass
    class Keys:
        access_key: str
        secret_key: str
        session_token: str | None

    issued = iter([Keys("AKIA-one", "s1", "token-one"), Keys("AKIA-two", "s2", "token-two")])

    class Rotating:
        def retrieve(self) -> Keys:
            return next(issued)

    store.credentials = Rotating()
    store.put("r/a", b"{}")
    store.put("r/b", b"{}")
    first, second = server.requests
    assert "Credential=AKIA-one/" in first.headers["authorization"]
    assert first.headers["x-amz-security-token"] == "token-one"
    assert "Credential=AKIA-two/" in second.headers["authorization"]
    assert second.headers["x-amz-security-token"] == "token-two"
    assert "x-amz-security-token" in first.headers["authorization"]  # signed


def test_a_put_carries_md5_metadata_storage_class_and_sse_headers(
    scripted: Callable[..., ScriptedServer],
) -> None:
    server = scripted()
    key = bytes(range(32))
    store = store_for(
        server.endpoint, storage_class="STANDARD_IA", encryption=Encryption("c", customer_key=key)
    )
    body = b'{"run": 1}'
    store.put("r/RunLog", body)
    store.head_md5("r/RunLog")
    put, head = server.requests
    md5 = hashlib.md5(body).hexdigest()
    assert put.target == "/runnable/run-logs/r/RunLog"
    assert put.headers["x-amz-meta-runlog-relay-md5"] == md5
    assert put.headers["x-amz-storage-class"] == "STANDARD_IA"
    assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert bytes.fromhex(md5) == base64.b64decode(put.headers["content-md5"])
    sse = _sse(Encryption("c", customer_key=key))
    assert sse is not None
    for name, value in sse.headers().items():
        assert put.headers[name.lower()] == value
        assert head.headers[name.lower()] == value  # SSE-C: the key goes with reads too
    signed = put.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-md5", "x-amz-meta-runlog-relay-md5", "x-amz-storage-class"} <= set(signed)
    assert "x-amz-server-side-encryption-customer-key" in signed


@pytest.mark.parametrize(
    "encryption",
    [
        Encryption("s3"),
        Encryption("kms", kms_key_id="alias/relay", kms_context=(("team", "data"),)),
        Encryption("kms"),
        Encryption("c", customer_key=bytes(range(32))),
    ],
    ids=["s3", "kms-key-context", "kms-bucket-key", "c"],
)
def test_our_sse_headers_are_the_sdks(encryption: Encryption) -> None:
    ours = _sse(encryption)
    assert ours is not None
    assert ours.for_sdk().headers() == ours.headers()
    if encryption.mode == "kms" and encryption.kms_key_id:
        from minio.sse import SseKMS

        assert SseKMS(encryption.kms_key_id, dict(encryption.kms_context)).headers() == (
            ours.headers()
        )
    if encryption.mode == "c":
        from minio.sse import SseCustomerKey

        assert SseCustomerKey(bytes(range(32))).headers() == ours.headers()
    assert "customer" not in repr(ours).lower() or encryption.mode == "c"
    assert str(bytes(range(32))) not in repr(ours)


def test_classify_reads_lean_failures_with_the_same_table() -> None:
    assert type(classify(s3http.S3Failure("NoSuchKey", 404), what="x")) is NotFoundError
    assert type(classify(s3http.ServerFailure(503), what="x")) is RetryableError
    assert classify(s3http.NotS3Answer(429), what="x").code == "HTTP429"  # type: ignore[attr-defined]
    refused = classify(s3http.NotConnected(ConnectionRefusedError(111, "refused")), what="x")
    assert isinstance(refused, RetryableError) and refused.unsent


_NO_MINIO = """
import sys
sys.path.insert(0, {root!r})
from tests.unit.test_s3http import ScriptedServer, ok, store_for
server = ScriptedServer(ok)
store = store_for(server.endpoint)
store.put("r/RunLog", b"{{}}")
store.head_md5("r/RunLog")
assert "minio" not in sys.modules, "minio imported on the common path"
print("ok")
"""


def test_the_common_path_never_imports_minio() -> None:
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parents[2])
    result = subprocess.run(
        [sys.executable, "-c", _NO_MINIO.format(root=root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_listing_follows_its_continuation_tokens(
    scripted: Callable[..., ScriptedServer],
) -> None:
    ns = "http://s3.amazonaws.com/doc/2006-03-01/"

    def page(request: Request) -> Answer:
        second = "continuation-token=page%2B2" in request.target
        key = "run-logs/r/BranchLog-b%2Bc" if second else "run-logs/r/RunLog"
        more = (
            "<IsTruncated>false</IsTruncated>"
            if second
            else "<IsTruncated>true</IsTruncated>"
            "<NextContinuationToken>page+2</NextContinuationToken>"
        )
        body = (
            f'<ListBucketResult xmlns="{ns}"><EncodingType>url</EncodingType>{more}'
            f"<Contents><Key>{key}</Key><ETag>&quot;abc&quot;</ETag><Size>7</Size>"
            "<LastModified>2026-12-02T05:00:00.000Z</LastModified></Contents>"
            "<Contents><Key>run-logs/r/</Key><Size>0</Size></Contents>"
            "</ListBucketResult>"
        )
        return 200, {"Content-Type": "application/xml"}, body.encode()

    server = scripted(page)
    objects = list(store_for(server.endpoint).list("r/"))
    assert [(o.key, o.etag, o.size) for o in objects] == [
        ("r/RunLog", "abc", 7),
        ("r/BranchLog-b+c", "abc", 7),
    ]
    assert objects[0].last_modified is not None and objects[0].last_modified.year == 2026
    first, second = server.requests
    assert "prefix=run-logs%2Fr%2F" in first.target and "continuation-token" not in first.target
    assert "continuation-token=page%2B2" in second.target


def test_a_listing_that_is_not_xml_is_not_s3(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(lambda r: (200, {"Content-Type": "application/xml"}, b"<html>"))
    with pytest.raises(PermanentError) as caught:
        list(store_for(server.endpoint).list())
    assert caught.value.code == "HTTP200"


#: What answers 200 in S3's place: MinIO's console, a captive portal, a proxy's page.
NOT_S3_PAGES = {
    "well-formed html": ("text/html", b"<html><body>MinIO Console</body></html>"),
    "html with escapes": ("text/html; charset=utf-8", b"<!doctype html>\x1b[2J<p>Log in"),
    "other xml": ("application/xml", b"<Error><Nothing/></Error>"),
    "json": ("application/json", b'{"status": "ok"}'),
}


@pytest.mark.parametrize(("content_type", "body"), NOT_S3_PAGES.values(), ids=NOT_S3_PAGES)
def test_a_200_that_is_no_listing_is_not_an_empty_bucket(
    scripted: Callable[..., ScriptedServer], content_type: str, body: bytes
) -> None:
    """Well-formed HTML parses as XML: it listed as an empty bucket (``runs``: exit 0)."""
    server = scripted(lambda r: (200, {"Content-Type": content_type}, body))
    with pytest.raises(PermanentError) as caught:
        list(store_for(server.endpoint).list())
    message = str(caught.value)
    assert caught.value.code == "HTTP200"
    assert f"HTTP 200 with no S3 answer ({content_type}, starting b" in message
    assert repr(body[:20])[:-1] in message  # its first bytes, escaped
    assert "\x1b" not in message  # no control character reaches a terminal


def test_the_sidecar_takes_a_200_that_is_no_listing_for_a_store_problem(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """The sidecar lists through the same code: not ready, retried, and no run is told
    the bucket holds nothing (which would upload everything to a portal)."""
    from prometheus_client import CollectorRegistry

    from runlog_relay.metrics import SidecarMetrics
    from runlog_relay.sidecar.listing import Lister
    from runlog_relay.sidecar.store import StoreHealth
    from runlog_relay.sidecar.types import ListingPurpose

    content_type, body = NOT_S3_PAGES["well-formed html"]
    server = scripted(lambda r: (200, {"Content-Type": content_type}, body))
    store = store_for(server.endpoint)
    health = StoreHealth(SidecarMetrics(CollectorRegistry()), permanent_retry=lambda: 30.0)
    posted: list[object] = []
    lister = Lister(lambda: store, health, posted.append, threads=1)
    lister.start()
    try:
        lister.request({"r1"}, ListingPurpose.COMPARE)
        problem = wait_until(lambda: health.problem, what="the listing reported as a problem")
        assert "HTTP 200 with no S3 answer (text/html" in problem
        assert not health.ok and posted == []
        assert lister.waiting_runs() == {"r1"}  # still to list, not listed as empty
    finally:
        lister.stop()
        store.close()


@pytest.mark.parametrize(
    ("endpoint", "bucket", "target"),
    [
        ("https://s3.amazonaws.com", "runnable", ("runnable.s3.eu-west-1.amazonaws.com", "")),
        (
            "https://s3.eu-west-1.amazonaws.com",
            "runnable",
            ("runnable.s3.eu-west-1.amazonaws.com", ""),
        ),
        ("https://s3.amazonaws.com", "my.bucket", ("s3.eu-west-1.amazonaws.com", "/my.bucket")),
        ("http://127.0.0.1:9000", "runnable", ("127.0.0.1:9000", "/runnable")),
        ("https://minio.example:9000", "runnable", ("minio.example:9000", "/runnable")),
    ],
)
def test_requests_are_addressed_as_the_sdk_addresses_them(
    endpoint: str, bucket: str, target: tuple[str, str]
) -> None:
    """AWS: virtual-hosted style on the regional host (path style for dotted names over
    https); anything else: path style on the endpoint."""
    store = ObjectStore(
        endpoint=endpoint, bucket=bucket, prefix="p", access_key="a", secret_key="b"
    )
    assert store._target("eu-west-1") == target


def test_chunked_answers_and_connection_close(scripted: Callable[..., ScriptedServer]) -> None:
    listing = (
        b"<ListBucketResult><IsTruncated>false</IsTruncated>"
        b"<Contents><Key>run-logs/r/RunLog</Key><ETag>&quot;abc&quot;</ETag><Size>2</Size>"
        b"</Contents></ListBucketResult>"
    )
    pieces = [listing[:40], listing[40:]]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"

    def answer(request: Request) -> Answer:
        if request.method == "GET":
            headers = {"Content-Type": "application/xml", "Transfer-Encoding": "chunked"}
            return 200, headers, encoded
        return 200, {"ETag": '"abc"', "Connection": "close"}, b""

    server = scripted(answer)
    store = store_for(server.endpoint)
    assert [o.key for o in store.list()] == ["r/RunLog"]
    assert store.put("r/RunLog", b"{}") == "abc"  # answered "Connection: close" ...
    assert store.put("r/RunLog", b"{}") == "abc"  # ... so this one opens a new connection
    assert [o.key for o in store.list()] == ["r/RunLog"]
    assert server.connections == 3 and len(server.requests) == 4


def test_closing_a_store_ends_a_request_waiting_for_its_answer(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """At shutdown a lister may still wait for an answer that never comes (a held
    listing): closing must end that read at once, not wait for the read timeout."""
    answered = threading.Event()

    def never(request: Request) -> Answer:
        answered.wait(30)
        return 200, {}, b""

    server = scripted(never)
    store = store_for(server.endpoint)
    failed: list[BaseException] = []

    def waiting() -> None:
        try:
            store.head_md5("r/RunLog")
        except Exception as exc:
            failed.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    try:
        wait_until(lambda: len(server.requests) == 1, timeout=5, what="the request sent")
        started = time.monotonic()
        store.close()
        thread.join(2)
        assert time.monotonic() - started < 2, "close() waited for the answer"
        assert not thread.is_alive()
        assert failed and isinstance(failed[0], RetryableError)
    finally:
        answered.set()
        thread.join(5)


# --------------------------------------------------------------------------- answer heads
#
# An answer's head is split in one piece when the reader's buffer holds it whole, and read
# line by line otherwise (a head bigger than the buffer, bare LF line ends): both readings
# must give the same status and headers, and leave the body and the next answer in place.


def _exchange_raw(*answers: bytes) -> list[s3http.Response]:
    """Each of ``answers`` (raw bytes, sent before the request) read as one exchange on a
    real socket pair."""
    ours, theirs = socket.socketpair()
    connection = s3http._Connection(ours)
    try:
        theirs.sendall(b"".join(answers))
        return [connection.exchange("PUT", "/b/k", {"host": "x"}, b"{}") for _ in answers]
    finally:
        connection.close()
        theirs.close()


def _head(*lines: str, end: str = "\r\n", body: bytes = b"") -> bytes:
    return "".join(line + end for line in lines).encode("latin-1") + end.encode() + body


def test_a_whole_head_in_the_buffer_is_split_in_one_piece() -> None:
    first = _head("HTTP/1.1 200 OK", 'ETag: "abc"', "X-Amz-Meta-A: 1", "x-amz-meta-a:  2 ",
                  "Content-Length: 3", body=b"xyz")  # fmt: skip
    second = _head("HTTP/1.1 404 Not Found", "Content-Length: 0")
    one, two = _exchange_raw(first, second)
    assert (one.status, one.body) == (200, b"xyz")
    assert one.headers == {"etag": '"abc"', "x-amz-meta-a": "1, 2", "content-length": "3"}
    assert (two.status, two.headers, two.body) == (404, {"content-length": "0"}, b"")


def test_a_head_bigger_than_the_buffer_is_read_line_by_line() -> None:
    padding = [f"x-amz-meta-pad-{n}: {'p' * 200}" for n in range(60)]  # ~13 KiB of head
    first = _head("HTTP/1.1 200 OK", *padding, "Content-Length: 2", body=b"ok")
    second = _head("HTTP/1.1 204 No Content")
    one, two = _exchange_raw(first, second)
    assert (one.status, one.body) == (200, b"ok")
    assert len(one.headers) == 61 and one.headers["x-amz-meta-pad-59"] == "p" * 200
    assert (two.status, two.body) == (204, b"")


def test_a_head_with_bare_line_feeds_is_read_like_one_with_crlf() -> None:
    (answer,) = _exchange_raw(_head("HTTP/1.1 200 OK", "ETag: abc", "Content-Length: 1",
                                    end="\n", body=b"!"))  # fmt: skip
    assert (answer.status, answer.headers, answer.body) == (
        200,
        {"etag": "abc", "content-length": "1"},
        b"!",
    )


_client = s3http.http.client
_MANY = [f"h{n}: v" for n in range(201)]
_MANY_BEYOND_THE_BUFFER = [f"h{n}: {'v' * 60}" for n in range(201)]
NO_HTTP_ANSWERS = {
    "nothing": (b"", _client.RemoteDisconnected),
    "blank-head": (b"\r\n\r\n", _client.BadStatusLine),
    "blank-first-line": (b"\r\nHTTP/1.1 200 OK\r\n\r\n", _client.BadStatusLine),
    "blank-first-line-lf": (b"\nHTTP/1.1 200 OK\n\n", _client.BadStatusLine),  # line by line
    "non-ascii-digit": (b"HTTP/1.1 \xb200 OK\r\n\r\n", _client.BadStatusLine),  # "²00"
    "not-http": (b"SMTP ready\r\n\r\n", _client.BadStatusLine),
    "too-many-headers": (_head("HTTP/1.1 200 OK", *_MANY), _client.HTTPException),
    "too-many-headers-beyond-the-buffer": (
        _head("HTTP/1.1 200 OK", *_MANY_BEYOND_THE_BUFFER),
        _client.HTTPException,
    ),
    "line-too-long": (b"HTTP/1.1 200 OK\r\nh: " + b"v" * 70000 + b"\r\n\r\n", _client.LineTooLong),
}


@pytest.mark.parametrize(("raw", "error"), NO_HTTP_ANSWERS.values(), ids=NO_HTTP_ANSWERS.keys())
def test_heads_that_are_no_http_answer_are_refused(raw: bytes, error: type[Exception]) -> None:
    ours, theirs = socket.socketpair()
    connection = s3http._Connection(ours)
    try:
        theirs.sendall(raw)
        theirs.shutdown(socket.SHUT_WR)  # what is sent is all there is
        with pytest.raises(error) as raised:
            connection.exchange("PUT", "/b/k", {"host": "x"}, b"{}")
        # Exactly: RemoteDisconnected is a BadStatusLine too, and means something else
        # (a stale connection, sent once more; a bad status line is not).
        assert raised.type is error
    finally:
        connection.close()
        theirs.close()


# --------------------------------------------------------------------------- listing pages

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"


def _page(root_namespace: str | None, *entries: str) -> s3http.Response:
    xmlns = "" if root_namespace is None else f' xmlns="{root_namespace}"'
    body = f"<ListBucketResult{xmlns}><IsTruncated>false</IsTruncated>{''.join(entries)}"
    return s3http.Response(
        200, {"content-type": "application/xml"}, (body + "</ListBucketResult>").encode()
    )


def _entry(key: str, modified: str = "2026-12-04T03:40:54.123Z", xmlns: str = "") -> str:
    return (
        f"<Contents{xmlns}><Key>{key}</Key><LastModified>{modified}</LastModified>"
        "<ETag>&#34;0123abcd&#34;</ETag><Size>42</Size><StorageClass>STANDARD</StorageClass>"
        "<Owner><ID>0</ID></Owner></Contents>"
    )


@pytest.mark.parametrize("namespace", [S3_NAMESPACE, None], ids=["s3-namespace", "none"])
def test_a_listing_page_is_read_with_or_without_s3s_namespace(namespace: str | None) -> None:
    from datetime import UTC, datetime

    from runlog_relay.objectstore import _parse_listing

    page = _page(namespace, _entry("run-logs/r/RunLog"), _entry("run-logs/r/BranchLog-x"))
    objects, token = _parse_listing(page, lambda key: key.removeprefix("run-logs/"))
    assert token == ""
    assert [(o.key, o.etag, o.size) for o in objects] == [
        ("r/RunLog", "0123abcd", 42),
        ("r/BranchLog-x", "0123abcd", 42),
    ]
    assert objects[0].last_modified == datetime(2026, 12, 4, 3, 40, 54, 123000, tzinfo=UTC)


def test_an_entry_in_another_namespace_still_counts() -> None:
    from runlog_relay.objectstore import _parse_listing

    other = ' xmlns="urn:example:other"'
    page = _page(S3_NAMESPACE, _entry("run-logs/r/RunLog", xmlns=other))
    objects, _ = _parse_listing(page, lambda key: key.removeprefix("run-logs/"))
    assert [(o.key, o.etag, o.size) for o in objects] == [("r/RunLog", "0123abcd", 42)]


@pytest.mark.parametrize(
    ("modified", "expected"),
    [
        ("2026-12-04T03:40:54Z", (2026, 12, 4, 3, 40, 54, 0)),
        ("2026-12-04T03:40:54.5Z", (2026, 12, 4, 3, 40, 54, 500000)),
        ("2026-12-04T04:40:54+01:00", (2026, 12, 4, 3, 40, 54, 0)),  # another zone: as UTC
        ("2026-12-04T03:40:54", (2026, 12, 4, 3, 40, 54, 0)),  # no zone: S3's times are UTC
        ("yesterday", None),
        ("", None),
    ],
)
def test_last_modified_is_read_as_utc_or_none(
    modified: str, expected: tuple[int, ...] | None
) -> None:
    from datetime import UTC, datetime

    from runlog_relay.objectstore import _parse_listing

    objects, _ = _parse_listing(_page(S3_NAMESPACE, _entry("run-logs/r/RunLog", modified)), str)
    assert objects[0].last_modified == (
        None if expected is None else datetime(*expected, tzinfo=UTC)
    )
