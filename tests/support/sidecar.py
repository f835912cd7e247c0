"""Run ``runlog-relay sidecar`` as a real subprocess, as Kubernetes would.

Signals matter for the sidecar (SIGTERM drains, SIGKILL must lose nothing), so the
integration tests never run it in-process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_until

#: Every sidecar started by a test, so a failing test cannot leave one running.
STARTED: list[SidecarProcess] = []


def reap() -> None:
    """Kill the sidecars a test left running (called after every test)."""
    while STARTED:
        sidecar = STARTED.pop()
        if sidecar.process.poll() is None:
            sidecar.kill()


@dataclass
class SidecarProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None = None
    stdout: str = field(default="")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        assert self.metrics_port is not None, "started without a metrics port"
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples by (name, sorted labels), parsed with prometheus_client's parser."""
        status, text = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(lambda: self.get("/readyz")[0] == 200, timeout=timeout, what="sidecar ready")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def start_sidecar(
    source: Path,
    endpoint: str | None,
    bucket: str | None,
    log_path: Path,
    *extra: str,
    env: dict[str, str | None] | None = None,
    metrics: bool = True,
    wrapper: tuple[str, ...] = (),
) -> SidecarProcess:
    """Start the sidecar; with ``metrics`` wait for its server and learn its port.

    ``endpoint``/``bucket`` None: not on the command line (a config file decides).
    ``env``: variables to set (None: to remove) over the test's environment, where the
    static minioadmin keys are set unless removed.
    ``wrapper``: a command to run it under (e.g. ``setpriv`` to drop capabilities)."""
    args = [
        *wrapper,
        sys.executable,
        "-m",
        "runlog_relay",
        "sidecar",
        "--source",
        str(source),
        *(["--endpoint", endpoint] if endpoint else []),
        *(["--bucket", bucket] if bucket else []),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--log-level",
        "DEBUG",
        *extra,
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLOG_RELAY_")}
    full_env.setdefault("AWS_ACCESS_KEY_ID", "minioadmin")
    full_env.setdefault("AWS_SECRET_ACCESS_KEY", "minioadmin")
    for name, value in (env or {}).items():
        if value is None:  # None removes a variable, e.g. the default static keys
            full_env.pop(name, None)
        else:
            full_env[name] = value
    with log_path.open("ab") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    sidecar = SidecarProcess(process=process, log_path=log_path)
    STARTED.append(sidecar)
    if metrics and "--once" not in extra:

        def port() -> int | None:
            if process.poll() is not None:
                raise AssertionError(f"sidecar exited {process.returncode}:\n{sidecar.log}")
            found = re.findall(r"serving /metrics, /healthz, /readyz on port (\d+)", sidecar.log)
            return int(found[-1]) if found else None

        sidecar.metrics_port = wait_until(port, timeout=30, what="sidecar metrics port")
    return sidecar
