"""The S3 client over TLS, on a real handshake: a private CA's file, the system's CAs (which
do not know it), and ``insecure_skip_verify``. The per-file calls (PUT, HEAD, LIST) go
through runlog_relay.s3http and GET through the minio SDK: both must check the endpoint's
certificate the same way.

The endpoint is moto behind a TLS front on 127.0.0.1 whose certificate a fresh CA signed.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runlog_relay.cliopts import open_store
from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.errors import PermanentError
from runlog_relay.objectstore import ObjectStore
from runlog_relay.operator.webhook_tls import issue_certificate, make_ca
from tests.support.s3server import S3Server
from tests.support.tcpproxy import listen_on_loopback

pytestmark = pytest.mark.integration


class TlsFront:
    """Terminates TLS on 127.0.0.1 and pipes the plain bytes to ``target_port``."""

    def __init__(self, target_port: int, context: ssl.SSLContext) -> None:
        self._target = ("127.0.0.1", target_port)
        self._context = context
        self._listener = listen_on_loopback()
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="tls-front").start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except OSError:  # the client refused our certificate: what some tests want
            raw.close()
            return
        upstream = socket.create_connection(self._target, timeout=10)
        self._sockets += [client, upstream]
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def ca_and_front(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, TlsFront]]:
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ca_pem, ca_key = make_ca("runlog-relay test CA", now=now, validity=day)
    cert_pem, key_pem = issue_certificate(ca_pem, ca_key, ["127.0.0.1"], now=now, validity=day)
    (folder / "ca.pem").write_bytes(ca_pem)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    front = TlsFront(port, context)
    yield folder / "ca.pem", front
    front.close()


def store_for(front: TlsFront, bucket: str, **tls: object) -> ObjectStore:
    settings = load_sidecar_settings(
        {
            "source": Path("/nonexistent"),
            "endpoint": f"https://127.0.0.1:{front.port}",
            "bucket": f"{bucket}/logs",
            "access_key_id": "minioadmin",
            "secret_access_key": "minioadmin",
            "tls": tls,
        }
    )
    return open_store(settings)


def test_a_private_ca_file_is_trusted_by_both_paths(
    ca_and_front: tuple[Path, TlsFront], bucket: str
) -> None:
    ca_file, front = ca_and_front
    store = store_for(front, bucket, ca_file=ca_file)
    try:
        store.put("run/RunLog", b'{"status": "SUCCESS"}')  # the lean path
        assert [o.key for o in store.list()] == ["run/RunLog"]
        assert store.head_md5("run/RunLog") is not None
        assert store.get("run/RunLog") == b'{"status": "SUCCESS"}'  # the SDK's path
    finally:
        store.close()


def test_an_unknown_ca_is_refused_for_good_by_both_paths(
    ca_and_front: tuple[Path, TlsFront], bucket: str
) -> None:
    _, front = ca_and_front
    store = store_for(front, bucket)  # the system's CAs only
    try:
        # Each path says why (OpenSSL's verdict), not just "TLS failure (SSLError)".
        why = r"TLS failure \(SSL\w*Error: certificate verify failed: "
        with pytest.raises(PermanentError, match=why):
            store.put("run/RunLog", b"{}")
        with pytest.raises(PermanentError, match=why):
            store.get("run/RunLog")
    finally:
        store.close()


# urllib3 (under the SDK's GET) warns once per call site that it does not verify: that
# is the setting asked for.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_skip_verify_accepts_any_certificate(
    ca_and_front: tuple[Path, TlsFront], bucket: str
) -> None:
    _, front = ca_and_front
    store = store_for(front, bucket, insecure_skip_verify=True)
    try:
        store.put("run/RunLog", b"{}")
        assert store.get("run/RunLog") == b"{}"
    finally:
        store.close()
