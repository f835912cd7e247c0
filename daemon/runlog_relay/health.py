"""HTTP endpoints for Prometheus and kubelet: ``/metrics``, ``/healthz``, ``/readyz``.

One small server per process, started by the CLI. ``/healthz`` answers 200 while the
process's threads are alive (a dead stage means the kubelet should restart it);
``/readyz`` answers 200 once the first sync is done and the bucket accepts writes, 503
with the reason otherwise (the reason never contains credentials: it is built from error
codes and names only).

The port is reachable from the pod network, so it must not be a way in: a thread per
connection and no read timeout let a few thousand idle or half-sent requests pin
thousands of threads and hundreds of MiB. Here one thread runs an asyncio loop, so an
idle connection costs a socket and a few KiB, never a thread; a request head must arrive
within ``read_timeout`` (slow or silent clients are dropped) and fit in
:data:`MAX_HEAD_BYTES`; at most ``max_connections`` are kept, and a new one evicts the
longest-idle one, so a flood cannot lock the kubelet's probes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MAX_HEAD_BYTES", "HealthServer", "Probe"]

log = logging.getLogger(__name__)

#: A probe returns (ok, reason).
Probe = Callable[[], tuple[bool, str]]

#: The largest request head accepted (request line and headers).
MAX_HEAD_BYTES = 8 * 1024
#: Pending connections the kernel queues before the loop accepts them.
BACKLOG = 512

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class HealthServer:
    """Serves metrics and probes on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        live: Probe,
        ready: Probe,
        host: str = "0.0.0.0",  # noqa: S104 - scraped and probed from outside the pod
        port: int = 9464,
        max_connections: int = 512,
        read_timeout: float = 10.0,
    ) -> None:
        self._registry = registry
        self._probes = {"/healthz": live, "/livez": live, "/readyz": ready}
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        # Bound here, in the caller's thread, so a busy port is an error at start-up.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self._loop = asyncio.new_event_loop()
        self._connections: OrderedDict[asyncio.StreamWriter, bool] = OrderedDict()  # → busy
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="health-http", daemon=True)
        self._started = threading.Event()

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self._socket.close()

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, sock=self._socket, limit=MAX_HEAD_BYTES)
            )
            self._started.set()
            self._loop.run_forever()
        finally:
            self._started.set()
            for writer in list(self._connections):
                writer.close()
            if self._server is not None:
                self._server.close()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    def _admit(self, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            # Full: drop the longest-idle connection, so a probe always gets in.
            for other, busy in self._connections.items():
                if not busy:
                    other.close()
                    del self._connections[other]
                    break
        self._connections[writer] = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._admit(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), timeout=self.read_timeout
                    )
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return  # idle, slow or gone: the connection is dropped
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, 431, b"request head too large\n", "text/plain")
                    return
                if writer not in self._connections:
                    return  # evicted meanwhile
                self._connections[writer] = True
                self._connections.move_to_end(writer)
                keep_alive = await self._answer(head, writer)
                self._connections[writer] = False
                if not keep_alive:
                    return
        finally:
            self._connections.pop(writer, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, 400, b"bad request\n", "text/plain")
            return False
        method, target, version = parts
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        if "content-length" in headers or "transfer-encoding" in headers:
            await self._send(writer, 400, b"no request body expected\n", "text/plain")
            return False
        connection = headers.get("connection", "").lower()
        # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when asked.
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if method not in {"GET", "HEAD"}:
            await self._send(writer, 405, b"method not allowed\n", "text/plain", keep_alive)
            return keep_alive
        path = target.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(self._registry)
            await self._send(writer, 200, body, CONTENT_TYPE_LATEST, keep_alive, method == "HEAD")
            return keep_alive
        probe = self._probes.get(path)
        if probe is None:
            await self._send(writer, 404, b"not found\n", "text/plain", keep_alive)
            return keep_alive
        try:
            ok, reason = probe()
        except Exception:
            log.exception("the %s probe failed", path)
            ok, reason = False, "probe failed"
        body = (("ok" if ok else reason or "not ok") + "\n").encode()
        status = 200 if ok else 503
        await self._send(
            writer, status, body, "text/plain; charset=utf-8", keep_alive, method == "HEAD"
        )
        return keep_alive

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        keep_alive: bool = False,
        head_only: bool = False,
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode("latin-1")
        writer.write(head if head_only else head + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
