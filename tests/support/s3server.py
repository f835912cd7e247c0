"""moto's standalone S3 server in its own process, on 127.0.0.1.

Its own process (not a thread of the test) because the sidecar under test runs as a
subprocess too, and because a server that shares the test's GIL would distort timings.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minio import Minio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto server; ``endpoint`` is ``http://127.0.0.1:PORT``."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


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
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                break
        except urllib.error.HTTPError:
            break  # it answered: good enough
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"moto server did not start in {timeout}s; see {log_path}"
                ) from None
            time.sleep(0.1)
    return S3Server(process=process, port=port)


@dataclass
class AuthS3:
    """A moto server that checks signatures, and the one key pair its IAM knows."""

    server: S3Server
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self) -> Minio:
        return Minio(
            self.endpoint.removeprefix("http://"), self.access_key, self.secret_key, secure=False
        )

    def stop(self) -> None:
        self.server.stop()


def start_auth_s3_server(log_path: Path, *, prepare: Callable[[str], None] | None = None) -> AuthS3:
    """moto with authentication on, and one IAM user allowed everything on S3.

    moto accepts any credentials until ``/moto-api/reset-auth`` switches checks on; the
    switch is process-wide, hence a server process of its own. ``prepare(endpoint)`` runs
    before the switch, while any key still works (for example to seed objects).
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
        if prepare is not None:
            prepare(server.endpoint)
        request = urllib.request.Request(
            f"{server.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    except BaseException:
        server.stop()
        raise
    return AuthS3(server, key["AccessKeyId"], key["SecretAccessKey"])
