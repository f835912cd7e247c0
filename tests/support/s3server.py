"""moto's standalone S3 server in its own process, on 127.0.0.1.

Its own process (not a thread of the test) because the sidecar under test runs as a
subprocess too, and because a server that shares the test's GIL would distort timings.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


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
