"""A TCP proxy in front of the S3 server that a test can cut, and that counts requests.

* ``outage()``: refuse new connections and drop open ones, like an endpoint that went
  away; ``restore()`` brings it back. The sidecar only ever talks to the proxy.
* ``counts``: HTTP requests by method (PUT, HEAD, GET, POST …) seen on the client side,
  parsed from request heads and Content-Length, so a test can assert "zero PUT and zero
  HEAD" on a restart at the wire, not from the sidecar's own metrics.
* ``hold_puts()``: uploads stop at the proxy (each PUT waits before its first byte goes
  on, ``held`` counts them) until ``release_puts()``, like a link so slow that a newer
  upload from elsewhere lands first; reads and listings go through.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading


def listen_on_loopback(backlog: int = 64) -> socket.socket:
    """A listening socket on 127.0.0.1 with a port the OS picks (for the test proxies)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener


class TcpProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listener = listen_on_loopback()
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._up = True
        self._open: set[socket.socket] = set()
        self.counts: collections.Counter[str] = collections.Counter()
        self._puts = threading.Event()
        self._puts.set()
        self.held = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def outage(self) -> None:
        with self._lock:
            self._up = False
            for sock in list(self._open):
                _close(sock)
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def hold_puts(self) -> None:
        self._puts.clear()

    def release_puts(self) -> None:
        self._puts.set()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()

    def close(self) -> None:
        self._closed = True
        self._puts.set()
        self.outage()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                # Reset rather than accept-and-hang: like a closed port.
                client.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update({client, upstream})
            threading.Thread(
                target=self._client_to_server, args=(client, upstream), daemon=True
            ).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(source, sink)

    def _client_to_server(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward requests, counting each one by method."""
        buffer = b""
        body_left = 0
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                starts_a_put = not buffer and not body_left and data.startswith(b"PUT ")
                if starts_a_put and not self._puts.is_set():
                    with self._lock:
                        self.held += 1
                    self._puts.wait()
                upstream.sendall(data)
                buffer += data
                while True:
                    if body_left:
                        taken = min(body_left, len(buffer))
                        buffer = buffer[taken:]
                        body_left -= taken
                        if body_left:
                            break
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
                    lines = head.split("\r\n")
                    method = lines[0].split(" ", 1)[0]
                    with self._lock:
                        self.counts[method] += 1
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length":
                            body_left = int(value.strip())
        except OSError:
            pass
        finally:
            self._forget(client, upstream)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._open.discard(sock)
        for sock in socks:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
