"""An HTTP-aware proxy in front of the S3 server that can hold, reorder or cut requests.

TcpProxy cuts connections; this one understands requests (HTTP/1.1 with Content-Length
or chunked bodies, keep-alive), so a test can decide per request, with a real server
behind it:

* ``hold_lists()`` / ``release_lists()``: listing requests wait (the sidecar's first sync
  cannot finish) until the test lets them through;
* ``reorder_put(key, old_body)``: the first PUT of ``key`` with ``old_body`` is kept and
  its connection reset (the client sees a connection error, as after a timeout); every
  later PUT of that body is reset as well; the first PUT of another body goes to the
  server, then the kept request is sent too, and only then is the client answered. The
  bucket ends with the older version, after the client saw the newer one succeed: a
  timed-out PUT that landed late.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from tests.support.tcpproxy import listen_on_loopback


@dataclass
class _Request:
    method: str
    target: str
    head: bytes  # request line and headers, ending with the blank line
    body: bytes

    @property
    def raw(self) -> bytes:
        return self.head + self.body


class HttpProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listener = listen_on_loopback()
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._lists_open = threading.Event()
        self._lists_open.set()
        self.lists_waiting = 0
        self._reorder: tuple[str, bytes] | None = None
        self._kept: _Request | None = None
        self.reordered = threading.Event()  #: the kept request reached the server
        self.kept = threading.Event()  #: a request was kept back
        #: (monotonic time, path, body) of every PUT the server answered with success,
        #: taken as its answer passed: from then on the object is visible to readers.
        self.landed: list[tuple[float, str, bytes]] = []
        self.landing = threading.Condition(self._lock)  #: notified at every landed PUT
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="http-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_landed(self, body: bytes, *, since: int = 0, timeout: float = 30.0) -> float:
        """When a PUT of exactly ``body`` landed (monotonic time), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for landed_at, _, sent in self.landed[since:]:
                    if sent == body:
                        return landed_at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("the PUT never landed")
                self.landing.wait(remaining)

    def hold_lists(self) -> None:
        self._lists_open.clear()

    def release_lists(self) -> None:
        self._lists_open.set()

    def reorder_put(self, key: str, old_body: bytes) -> None:
        with self._lock:
            self._reorder = (key, old_body)

    def close(self) -> None:
        self._closed = True
        self._lists_open.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    # ----------------------------------------------------------------- plumbing
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self.counts[request.method] += 1
                if request.method == "GET" and "list-type" in request.target:
                    with self._lock:
                        self.lists_waiting += 1
                    self._lists_open.wait()
                    with self._lock:
                        self.lists_waiting -= 1
                decision = self._decide(request)
                if decision == "reset":
                    _reset(client)
                    return
                response = _forward(self._target, request)
                if request.method == "PUT" and response.startswith(b"HTTP/1.1 200"):
                    with self._lock:
                        path = request.target.split("?", 1)[0]
                        self.landed.append((time.monotonic(), path, request.body))
                        self.landing.notify_all()
                if decision == "then-release":
                    self._release_kept()
                client.sendall(response)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _decide(self, request: _Request) -> str:
        with self._lock:
            if self._reorder is None or request.method != "PUT":
                return "pass"
            key, old_body = self._reorder
            if not request.target.split("?", 1)[0].endswith(key):
                return "pass"
            if request.body == old_body:
                if self._kept is None:
                    self._kept = request
                    self.kept.set()
                return "reset"  # the old version never gets through directly
            if self._kept is not None and not self.reordered.is_set():
                return "then-release"
            return "pass"

    def _release_kept(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is None:
            return
        _forward(self._target, kept)
        self.reordered.set()


def _read_request(reader: BinaryIO) -> _Request | None:
    lines = []
    while True:
        line = reader.readline(65537)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
    head = b"".join(lines)
    request_line = lines[0].decode("latin-1").split()
    headers = {}
    for line in lines[1:-1]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = reader.read(length) if length else b""
    return _Request(method=request_line[0], target=request_line[1], head=head, body=body)


def _forward(target: tuple[str, int], request: _Request) -> bytes:
    """Send the raw request on a connection of its own; the whole response, re-serialised."""
    with socket.create_connection(target, timeout=60) as upstream:
        upstream.sendall(request.raw)
        response = http.client.HTTPResponse(upstream, method=request.method)
        response.begin()
        body = response.read()
        headers = [
            (name, value)
            for name, value in response.getheaders()
            if name.lower() not in {"transfer-encoding", "content-length", "connection"}
        ]
        length = response.getheader("content-length") if request.method == "HEAD" else None
    head = f"HTTP/1.1 {response.status} {response.reason}\r\n".encode("latin-1")
    head += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    head += f"Content-Length: {length or len(body)}\r\n\r\n".encode("latin-1")
    return head + body


def _reset(sock: socket.socket) -> None:
    """Close with RST, like a connection lost mid-request."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
