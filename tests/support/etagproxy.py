"""An HTTP reverse proxy in front of an S3 server that makes its ETags opaque.

With SSE-KMS and SSE-C (and behind some gateways), an object's ETag is not the MD5 of its
body, yet it still looks like one: 32 hex digits. This proxy does that to any S3 server:
every ETag it passes on (the ``ETag`` header of PUT, GET and HEAD answers, and the
``<ETag>`` elements of listings and multipart completions) becomes
``md5("opaque:" + etag)``, consistently, so a listing and a later HEAD agree with each
other but never with the body. Everything else goes through unchanged, including the
``Host`` header the client signed.

It also counts the requests it forwards, by method and kind (``list`` for bucket
listings and location lookups, ``object`` for the rest), so a test asserts "0 PUT, at most
one HEAD per object" on the wire.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ETAG_XML = re.compile(rb"<ETag>(&quot;|&#34;|\")?([0-9A-Za-z-]+)(&quot;|&#34;|\")?</ETag>")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


def opaque(etag: str) -> str:
    return hashlib.md5(f"opaque:{etag}".encode(), usedforsecurity=False).hexdigest()


def _opaque_element(match: re.Match[bytes]) -> bytes:
    return b"<ETag>&quot;" + opaque(match.group(2).decode()).encode() + b"&quot;</ETag>"


class EtagRewritingProxy:
    def __init__(
        self, target_port: int, *, target_host: str = "127.0.0.1", rewrite: bool = True
    ) -> None:
        """``rewrite`` False: only count (an MD5 bucket seen through the same counter)."""
        self._target = (target_host, target_port)
        self._rewrite = rewrite
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK expects

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, kind: str = "object") -> int:
        with self._lock:
            return self.counts[(method, kind)]

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        query = urlsplit(handler.path).query
        kind = "list" if ("list-type" in query or "location" in query) else "object"
        with self._lock:
            self.counts[(handler.command, kind)] += 1
        upstream = http.client.HTTPConnection(*self._target, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            response_headers = answer.getheaders()
        finally:
            upstream.close()
        if handler.command != "HEAD" and self._rewrite:
            data = _ETAG_XML.sub(_opaque_element, data)
        handler.send_response(answer.status, answer.reason)
        for name, value in response_headers:
            if name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() == "etag" and self._rewrite:
                value = f'"{opaque(value.strip().strip(chr(34)))}"'
            handler.send_header(name, value)
        if handler.command == "HEAD":
            original = dict((k.lower(), v) for k, v in response_headers).get("content-length")
            handler.send_header("Content-Length", original or "0")
        else:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
