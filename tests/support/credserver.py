"""A local container-credentials endpoint (EKS Pod Identity / ECS agent) and IMDSv2.

Both answer as AWS's do, over a real socket on 127.0.0.1, in a thread of the test:

* container credentials: ``GET /v1/credentials`` with ``Authorization: <token>`` →
  ``{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`` (what the EKS Pod
  Identity agent at 169.254.170.23 answers);
* IMDSv2: ``PUT /latest/api/token`` → a session token; ``GET
  /latest/meta-data/iam/security-credentials/`` → the role name; ``GET …/<role>`` with
  ``X-aws-ec2-metadata-token`` → the same JSON plus ``"Code": "Success"``.

The credentials come from ``issue()`` (the test mints real ones with moto's STS); each
answer carries ``Expiration = now + lifetime``, so a short lifetime makes the client
renew within a test. ``failing`` makes every request answer 500 (an agent outage).
Requests are counted per path so a test waits on exactly what the code under test did.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CREDENTIALS_PATH = "/v1/credentials"
IMDS_TOKEN_PATH = "/latest/api/token"
IMDS_ROLES_PATH = "/latest/meta-data/iam/security-credentials/"
IMDS_ROLE = "relay-instance-role"


class CredentialsEndpoint:
    def __init__(
        self,
        issue: Callable[[], dict[str, str]],
        *,
        token: str | None = None,
        lifetime: float = 3600.0,
    ) -> None:
        self.issue = issue
        self.token = token  #: the Authorization header the container endpoint requires
        self.lifetime = lifetime
        self.failing = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self._imds_token = "imds-session-token-0123"
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                endpoint._handle(self, "PUT")

            def do_GET(self) -> None:
                endpoint._handle(self, "GET")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def served(self, path: str = CREDENTIALS_PATH) -> int:
        """Successful answers on ``path`` so far."""
        with self._lock:
            return self.counts[path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, status: int, body: str) -> None:
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _credentials(self, **extra: str) -> str:
        expiration = datetime.now(UTC) + timedelta(seconds=self.lifetime)
        document = {**self.issue(), **extra}
        document["Expiration"] = expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps(document)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path
        if self.failing:
            with self._lock:
                self.refused[path] += 1
            self._answer(handler, 500, '{"message": "agent unavailable"}')
            return
        if method == "GET" and path == CREDENTIALS_PATH:
            if self.token is not None and handler.headers.get("Authorization") != self.token:
                with self._lock:
                    self.refused[path] += 1
                self._answer(handler, 401, '{"message": "bad token"}')
                return
            body = self._credentials()
        elif method == "PUT" and path == IMDS_TOKEN_PATH:
            body = self._imds_token
        elif method == "GET" and path.startswith(IMDS_ROLES_PATH):
            if handler.headers.get("X-aws-ec2-metadata-token") != self._imds_token:
                self._answer(handler, 401, "")
                return
            role = path[len(IMDS_ROLES_PATH) :]
            body = IMDS_ROLE if not role else self._credentials(Code="Success")
            if role and role != IMDS_ROLE:
                self._answer(handler, 404, "")
                return
        else:
            self._answer(handler, 404, "")
            return
        with self._lock:
            self.counts[path] += 1
        self._answer(handler, 200, body)
