"""HTTP endpoints for Prometheus and kubelet: ``/metrics``, ``/healthz``, ``/readyz``.

One small threaded server per process, started by the CLI. ``/healthz`` answers 200
while the process's threads are alive (a dead stage means the kubelet should restart
it); ``/readyz`` answers 200 once the first sync is done and the bucket accepts writes,
503 with the reason otherwise (the reason never contains credentials: it is built from
error codes and names only).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "Probe"]

log = logging.getLogger(__name__)

#: A probe returns (ok, reason).
Probe = Callable[[], tuple[bool, str]]


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
    ) -> None:
        self._registry = registry
        self._probes = {"/healthz": live, "/livez": live, "/readyz": ready}
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                    return
                probe = server._probes.get(path)
                if probe is None:
                    self._send(404, b"not found\n", "text/plain")
                    return
                ok, reason = probe()
                body = (("ok" if ok else reason or "not ok") + "\n").encode()
                self._send(200 if ok else 503, body, "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the real logs

        return Handler
