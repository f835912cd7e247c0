"""The S3 requests made per file, on persistent connections, without an SDK in between.

:mod:`runlog_relay.objectstore` sends the calls the sidecar makes for every file (PUT of
a small body, HEAD of its metadata, the listing of a run's prefix, the bucket's HEAD and
location) through this module, and everything rare (multipart uploads, GET, tags, bucket
creation, temporary credentials) through the minio SDK, imported only when one is made.
The SDK's per-call wrapping (URL building, header dictionaries copied several times,
urllib3's pool bookkeeping, the payload's SHA-256 over plain http) was about 40 % of the
sidecar's CPU in a first sync (docs/benchmarks.md). Here:

* :class:`Signer` is AWS Signature Version 4 for headers, with the derived signing key
  kept per (secret, day, region): one HMAC per request instead of five.
* :class:`Connections` keeps one HTTP/1.1 connection per thread (each upload worker has
  its own, so no pool lock), opened on first use and reused. A connection the
  server closed while idle (keep-alive timeout) shows up as a reset or an empty answer on
  its next request: that request is sent once more on a fresh connection. Only idempotent
  requests come here (PUT of a whole body, HEAD, GET), so sending one twice is harmless.
* Answers other than 2xx become :class:`S3Failure` (an S3 error code), :class:`ServerFailure`
  (5xx without a body) or :class:`NotS3Answer` (not S3's XML: a proxy, the wrong port),
  following the minio SDK's reading of the same answers, so that
  :func:`runlog_relay.objectstore.classify` sorts both into one table. A connection that
  could not be opened is :class:`NotConnected`: nothing was sent.

Nothing here logs or formats a header: the Authorization header and an SSE-C key never
leave the request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import io
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "EMPTY_SHA256",
    "UNSIGNED_PAYLOAD",
    "Connections",
    "NotConnected",
    "NotS3Answer",
    "Response",
    "S3Failure",
    "ServerFailure",
    "Signer",
    "canonical_query",
    "check",
    "quote_key",
]

#: ``x-amz-content-sha256`` of a request without a body.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: ``x-amz-content-sha256`` of a body that is not hashed into the signature (its
#: integrity rides on the signed ``Content-MD5`` instead; see objectstore.put).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def quote_key(key: str) -> str:
    """A key as it goes into the request path (and the canonical URI: S3 encodes once)."""
    return quote(key, safe="/~")


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    """The query string, encoded and sorted as SigV4 wants it (and sent as it is)."""
    return "&".join(
        sorted(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}" for name, value in params)
    )


class Signer:
    """AWS Signature Version 4 for S3 requests signed in headers.

    ``headers`` are lower-case names with final values and include ``host``,
    ``x-amz-date`` and ``x-amz-content-sha256``; every one of them is signed. The
    derived key (four HMACs over the secret, day, region and service) changes once a day
    and is kept, so a request costs one SHA-256 of the canonical request and one HMAC."""

    def __init__(self, service: str = "s3") -> None:
        self.service = service
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._lock = threading.Lock()

    def signing_key(self, secret_key: str, day: str, region: str) -> bytes:
        cache = (secret_key, day, region)
        key = self._keys.get(cache)
        if key is None:
            key = ("AWS4" + secret_key).encode()
            for part in (day, region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            with self._lock:
                if len(self._keys) >= 8:  # rotated credentials, a new day: drop the old
                    self._keys.clear()
                self._keys[cache] = key
        return key

    def authorization(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        access_key: str,
        secret_key: str,
        region: str,
    ) -> str:
        """The ``Authorization`` header's value."""
        amz_date = headers["x-amz-date"]
        day = amz_date[:8]
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            (
                method,
                path,
                query,
                *(f"{name}:{headers[name].strip()}" for name in names),
                "",
                signed,
                headers["x-amz-content-sha256"],
            )
        )
        scope = f"{day}/{region}/{self.service}/aws4_request"
        string_to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
            + hashlib.sha256(canonical.encode()).hexdigest()
        )
        signature = hmac.new(
            self.signing_key(secret_key, day, region), string_to_sign.encode(), "sha256"
        ).hexdigest()
        return (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )


def amz_date(now: float | None = None) -> str:
    """``x-amz-date`` for ``now`` (seconds since the epoch; None: the current time)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  #: names in lower case
    body: bytes


class S3Failure(Exception):
    """The server refused a request with an S3 error code (from its XML body or, for
    bodiless answers such as HEAD's, from the status as the minio SDK reads it)."""

    def __init__(self, code: str, status: int, message: str = "") -> None:
        super().__init__(f"{code} ({message})" if message else code)
        self.code = code
        self.status = status
        self.message = message


class ServerFailure(Exception):
    """A 5xx (or 304) answer without an S3 error body."""

    def __init__(self, status: int) -> None:
        super().__init__(f"server failed with HTTP status code {status}")
        self.status = status


class NotS3Answer(Exception):
    """An answer that is not S3's: no XML error body, or a 2xx that is not the XML S3
    sends (a proxy, a captive portal, MinIO's console port, the wrong service)."""

    #: Bytes of the body quoted in messages: enough to recognise a page, no more.
    QUOTED = 64

    def __init__(self, status: int, *, content_type: str = "", body: bytes = b"") -> None:
        super().__init__(f"HTTP {status} without an S3 error body")
        self.status = status
        self.content_type = content_type
        self.head = body[: self.QUOTED]

    def describe(self) -> str:
        """What came back, for a message: its content type and first bytes, escaped
        (``repr`` of bytes: no control character of a hostile page reaches a terminal)."""
        kind = self.content_type or "no content type"
        return f"{kind}, starting {self.head!r}" if self.head else f"{kind}, empty"


class NotConnected(OSError):
    """The connection could not be opened (refused, unresolvable, timed out): the
    request was never sent. ``reason`` is the socket's own exception."""

    def __init__(self, reason: OSError) -> None:
        super().__init__(f"cannot connect ({type(reason).__name__})")
        self.reason = reason


#: What an answer without an error body means, as the minio SDK reads it (api.py
#: ``_url_open``), so both paths classify the same answer the same way.
_BODILESS = {
    301: ("PermanentRedirect", "Moved Permanently"),
    307: ("Redirect", "Temporary redirect"),
    400: ("BadRequest", "Bad request"),
    403: ("AccessDenied", "Access denied"),
    405: ("MethodNotAllowed", "The specified method is not allowed against this resource"),
    409: ("NoSuchBucket", "Bucket does not exist"),
    501: ("MethodNotAllowed", "The specified method is not allowed against this resource"),
}


def _xml_text(body: bytes, tag: str) -> str:
    start = body.find(b"<" + tag.encode() + b">")
    if start < 0:
        return ""
    start += len(tag) + 2
    end = body.find(b"</" + tag.encode() + b">", start)
    return body[start:end].decode("utf-8", "replace").strip() if end > 0 else ""


def check(response: Response, *, method: str, has_object: bool) -> Response:
    """``response`` when it is a 2xx; otherwise the failure it carries, raised."""
    status = response.status
    if 200 <= status < 300:
        return response
    body = response.body
    if method != "HEAD":
        content_type = response.headers.get("content-type", "")
        if "application/xml" not in content_type.split(";") or not body:
            if status == 304 and not body:
                raise ServerFailure(status)
            raise NotS3Answer(status)
    code = _xml_text(body, "Code") if body else ""
    if code:
        raise S3Failure(code, status, _xml_text(body, "Message"))
    if status == 404:
        if has_object:
            raise S3Failure("NoSuchKey", status, "Object does not exist")
        raise S3Failure("NoSuchBucket", status, "Bucket does not exist")
    known = _BODILESS.get(status)
    if known is None:
        raise ServerFailure(status)
    code, message = known
    region = response.headers.get("x-amz-bucket-region")
    if status in {301, 307, 400} and region:
        message += "; use region " + region
    raise S3Failure(code, status, message)


# --------------------------------------------------------------------------- connections


class _Connection:
    """One HTTP/1.1 connection: requests written in one piece, answers read with a reader
    kept for the connection's life. http.client parses every answer's headers with the
    email package and builds a reader per answer: 10-15 % of the sidecar's CPU in a first
    sync (py-spy); S3's answers need only the status, a few headers and a sized body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self._reader: io.BufferedReader
        if sock.gettimeout() is None and not isinstance(sock, ssl.SSLSocket):
            self._reader = io.BufferedReader(_KernelTimedReader(sock))
        else:
            self._reader = sock.makefile("rb")

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            # Another thread may be blocked reading an answer (a store closed while in
            # use): shutting the socket down ends that read first, so closing the reader
            # (which takes the reader's lock) cannot wait for the read timeout.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._reader.close()
            sock.close()

    def exchange(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        sock = self.sock
        if sock is None:
            raise http.client.RemoteDisconnected("connection closed")
        head = "".join(
            [
                f"{method} {target} HTTP/1.1\r\n",
                *(f"{k}: {v}\r\n" for k, v in headers.items()),
                "\r\n",
            ]
        ).encode("latin-1")
        try:
            if body and len(body) > 65536:
                sock.sendall(head)
                sock.sendall(body)
            else:
                # Head and a small body in one send: no Nagle/delayed-ACK stall.
                sock.sendall(head + body if body else head)
        except BlockingIOError:  # SO_SNDTIMEO ran out (see _kernel_timeouts)
            raise TimeoutError("timed out") from None
        try:
            while True:
                status, reply = self._read_head()
                if status >= 200:
                    break  # 1xx (100 Continue was not asked for): read the next one
        except ValueError:
            if self.sock is None:
                # close() from another thread (a store closed while in use) freed the
                # reader under this read: the connection ended, as a shut-down one does.
                raise http.client.RemoteDisconnected("the connection was closed") from None
            raise
        closing = reply.get("connection", "").lower() == "close"
        if method == "HEAD" or status in {204, 304}:
            data = b""
        elif "chunked" in reply.get("transfer-encoding", "").lower():
            data = self._read_chunked()
        elif "content-length" in reply:
            data = self._read_exactly(int(reply["content-length"]))
        else:
            data = self._reader.read()  # until the server closes: the only way to know
            closing = True
        if closing:
            self.close()
        return Response(status, reply, data)

    def _line(self) -> bytes:
        line = self._reader.readline(65537)
        if len(line) > 65536:
            raise http.client.LineTooLong("header line")
        return line

    def _read_head(self) -> tuple[int, dict[str, str]]:
        # An answer's head nearly always arrives whole in one read: then it is split in
        # one piece, not read a line at a time (~9 readline calls per answer, the largest
        # share of this module's CPU in a first sync). A head that the buffer does not
        # hold whole yet, or with bare LF line ends, is read line by line.
        buffered = self._reader.peek(1)
        end = buffered.find(b"\r\n\r\n")
        if end >= 0:
            lines = self._reader.read(end + 4)[:end].decode("latin-1").split("\r\n")
        elif buffered:
            lines = self._head_lines()
        else:
            lines = []
        if not lines:
            # Nothing at all: the server closed the connection (idle keep-alive timeout).
            raise http.client.RemoteDisconnected("the server closed the connection")
        parts = lines[0].split(None, 2)
        if (
            len(parts) < 2
            or not parts[0].startswith("HTTP/")
            or not (parts[1].isascii() and parts[1].isdigit())
        ):
            raise http.client.BadStatusLine(repr(lines[0][:40]))
        if len(lines) > 201:
            raise http.client.HTTPException("too many headers")
        reply: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            reply[name] = f"{reply[name]}, {value}" if name in reply else value
        return int(parts[1]), reply

    def _head_lines(self) -> list[str]:
        """The head's lines without their line ends; [] when the server sent nothing."""
        lines: list[str] = []
        while len(lines) <= 201:  # the status line and 200 headers, then refused above
            line = self._line()
            if not line or (lines and line in (b"\r\n", b"\n")):
                return lines  # the end of the head, or the server closed the connection
            lines.append(line.decode("latin-1").rstrip("\r\n"))
        return lines

    def _read_exactly(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) < size:
            raise http.client.IncompleteRead(data, size - len(data))
        return data

    def _read_chunked(self) -> bytes:
        pieces: list[bytes] = []
        while True:
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.IncompleteRead(b"".join(pieces)) from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(pieces)
            pieces.append(self._read_exactly(size))
            self._read_exactly(2)  # the CRLF after each chunk


#: What a connection the server closed while it sat idle raises on its next request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ConnectionAbortedError, http.client.BadStatusLine)  # fmt: skip


class _KernelTimedReader(io.RawIOBase):
    """Reads of a blocking socket whose timeout the kernel keeps (SO_RCVTIMEO): a timed
    out read raises TimeoutError, as a socket with a Python timeout does (the buffered
    reader of ``makefile`` would take the EAGAIN for "no data yet")."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            raise TimeoutError("timed out") from None


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Leave a plain TCP socket blocking and let the kernel time its sends and reads out.

    A socket with a Python timeout polls before every send and read, and each of those
    system calls lets go of the interpreter lock: 4 hand-overs per request instead of 2,
    in a process whose upload threads take turns on that lock (strace of a 2,000-file
    first sync: 4,000 polls, 80,000 futex calls)."""
    whole = int(seconds)
    interval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)


class Connections:
    """One persistent connection per thread to one host (``scheme``, ``host``, ``port``)."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port or (443 if scheme == "https" else 80)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl_context = ssl_context
        self._local = threading.local()
        self._all: set[_Connection] = set()
        self._lock = threading.Lock()
        self.opened = 0  #: connections opened so far (tests, the benchmark)
        # Sockets of a store that is dropped (reconfiguration) close with it.
        self._finalizer = weakref.finalize(self, _close_all, self._all, self._lock)
        # Not at interpreter exit: the process's sockets close with it, and a thread still
        # waiting for an answer there must not hold the exit up.
        self._finalizer.atexit = False

    def close(self) -> None:
        """Close every thread's connection (a later request opens a new one)."""
        _close_all(self._all, self._lock)

    def _new(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        except OSError as exc:
            raise NotConnected(exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                context = self._ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=self.host)
                sock.settimeout(self._read_timeout)
            else:
                _kernel_timeouts(sock, self._read_timeout)
        except ssl.SSLError:
            sock.close()
            raise  # a TLS failure, not an unreachable endpoint
        except OSError as exc:
            sock.close()
            raise NotConnected(exc) from exc
        connection = _Connection(sock)
        with self._lock:
            self._all.add(connection)
            self.opened += 1
        return connection

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        with self._lock:
            self._all.discard(connection)
        self._local.connection = None

    def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> Response:
        """Send one request and read its whole answer."""
        connection: _Connection | None = getattr(self._local, "connection", None)
        reused = connection is not None and connection.sock is not None
        if connection is None or connection.sock is None:
            if connection is not None:
                self._drop(connection)
            connection = self._local.connection = self._new()
        try:
            return connection.exchange(method, target, headers, body)
        except _STALE:
            self._drop(connection)
            if not reused:
                raise
        except BaseException:
            self._drop(connection)  # a half-read answer must not be read by the next request
            raise
        # The server closed the idle connection: once more on a new one.
        connection = self._local.connection = self._new()
        try:
            return connection.exchange(method, target, headers, body)
        except BaseException:
            self._drop(connection)
            raise


def _close_all(connections: set[_Connection], lock: threading.Lock) -> None:
    with lock:
        for connection in list(connections):
            connection.close()
        connections.clear()
