"""``runlog-relay operator`` as a real OS process, logged into the emulator by KUBECONFIG.

What a test or a benchmark needs of a process the emulator cannot show: its memory
(``VmRSS`` and the peak ``VmHWM`` from ``/proc``), its exit code, its log, a SIGKILL. The
operator's requests can be told apart from the test's in the emulator's request list by
their User-Agent (kopf's and the operator's own client both say who they are).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.s3server import free_port

from .harness import KubeHarness

__all__ = [
    "OPERATOR_AGENTS",
    "OperatorProcess",
    "operator_requests",
    "proc_status_kib",
    "settled_leader",
]

#: User-Agent prefixes of the operator's requests: kopf's client and the operator's own.
OPERATOR_AGENTS = ("kopf/", "runlog-relay-operator")


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


class OperatorProcess:
    """One operator process; ``args`` come after ``runlog-relay operator`` and after the
    loopback addresses and free ports it is given (which ``args`` may override)."""

    def __init__(
        self,
        kube: KubeHarness,
        args: Sequence[str],
        workdir: Path,
        *,
        name: str = "operator",
        env: dict[str, str] | None = None,
        python_path: Path | None = None,
    ) -> None:
        self.name = name
        self.metrics_port, self.liveness_port, self.webhook_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        self.log_path = workdir / f"{name}.log"
        kubeconfig = kube.write_kubeconfig(str(workdir / f"{name}.kubeconfig"))
        base = dict(os.environ)
        clean = {k: v for k, v in base.items() if not k.startswith(("AWS_", "RUNLOG_RELAY_"))}
        clean["KUBECONFIG"] = kubeconfig
        clean["PYTHONUNBUFFERED"] = "1"
        if python_path is not None:  # another checkout's code (a benchmark's "before")
            clean["PYTHONPATH"] = str(python_path)
        clean.update(env or {})
        command = [
            sys.executable,
            "-m",
            "runlog_relay",
            "operator",
            "--metrics-host=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--liveness-port={self.liveness_port}",
            "--webhook-host=127.0.0.1",
            f"--webhook-port={self.webhook_port}",
            *args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=clean, cwd=workdir
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> None:
        """Fail (an assertion, for ``wait_for``'s checks) if the process has exited."""
        assert self.alive, f"{self.name} exited ({self.process.returncode}):\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as the kubelet does; the exit code."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise

    def leading(self) -> bool | None:
        """Its own ``runlog_relay_operator_leading`` gauge; None while it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("runlog_relay_operator_leading "):
                return float(line.split()[1]) == 1.0
        return None

    def kill(self) -> None:
        """SIGKILL: the pod's node died, or the OOM killer came. No goodbye to the peers."""
        if self.alive:
            self.process.kill()
        self.process.wait(10)


def operator_requests(kube: KubeHarness, since: int = 0) -> list[Any]:
    """The emulator's requests (kmock ``Request``) made by operators, from index ``since``."""
    requests = kube.call(lambda: list(kube.emulator)[since:])
    return [r for r in requests if r.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS)]


def _lastseen(info: dict[str, Any]) -> float:
    text = str(info.get("lastseen", "")).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


def settled_leader(
    kube: KubeHarness, processes: Sequence[OperatorProcess], peering: str
) -> OperatorProcess | None:
    """The active replica once the election has settled, else None: every live process
    is registered in the ClusterKopfPeering (kopf's identity for a replica starts with
    ``<host>/<pid>/``), and the one with the highest priority there -- and only it --
    says it leads."""
    live = {p.pid: p for p in processes if p.alive}
    status = kube.get("kopf.dev/v1/clusterkopfpeerings", peering).get("status") or {}
    now = time.time()
    peers = {
        int(identity.split("/")[1]): info
        for identity, info in status.items()
        if isinstance(info, dict)
        and identity.count("/") == 2
        and _lastseen(info) + int(info.get("lifetime", 60)) > now
    }
    if not peers or set(peers) != set(live):
        return None
    top = max(peers, key=lambda pid: int(peers[pid]["priority"]))
    if any(process.leading() is not (pid == top) for pid, process in live.items()):
        return None
    return live[top]


def stop_all(processes: Iterator[OperatorProcess] | list[OperatorProcess]) -> None:
    for process in processes:
        if process.alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.stop(20)
