"""Scale-out on one shared folder: three real sidecar processes, membership from Leases
served by the Kubernetes emulator, one S3 server.

Every file is uploaded by exactly one replica (the uploads each replica logs, counted by
key); when a replica is SIGKILLed its runs are still mirrored by the others within the
documented bound (docs/scale-out.md: ``leaseSeconds * 5/3`` plus the work); when it comes
back it takes its share back and, once the hand-over is over, nothing is uploaded twice.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from minio import Minio

from tests.integration.kube.emulator import ResourceSpec
from tests.integration.kube.harness import KubeHarness
from tests.support.mirror import assert_mirror
from tests.support.s3server import S3Server
from tests.support.sidecar import SidecarProcess, start_sidecar
from tests.support.waiting import wait_until

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = pytest.mark.integration

LEASES = ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease")
LEASE_SECONDS = 3.0
#: docs/scale-out.md: gone after leaseSeconds, seen within one period, taken one later.
FAILOVER_BOUND = LEASE_SECONDS * 5 / 3 + 5.0  # + comparing and uploading 72 files, loaded CI
NAMES = ("relay-0", "relay-1", "relay-2")
RUNS = 24
_UPLOADED = re.compile(r"uploaded (\S+) \(\d+ bytes\)")


@pytest.fixture()
def kube_resources(kube_resources: Sequence[ResourceSpec]) -> Sequence[ResourceSpec]:
    return [*kube_resources, LEASES]


class Replicas:
    def __init__(self, kube: KubeHarness, s3: S3Server, bucket: str, source: Path, logs: Path):
        self.kube, self.s3, self.bucket, self.source, self.logs = kube, s3, bucket, source, logs
        self.running: dict[str, SidecarProcess] = {}

    def start(self, name: str) -> SidecarProcess:
        env: dict[str, str | None] = {
            "RUNLOG_RELAY_SHARD__GROUP": "relay",
            "RUNLOG_RELAY_SHARD__IDENTITY": name,
            "RUNLOG_RELAY_SHARD__NAMESPACE": "default",
            "RUNLOG_RELAY_SHARD__API_URL": self.kube.url,
            "RUNLOG_RELAY_SHARD__LEASE_SECONDS": str(LEASE_SECONDS),
        }
        process = start_sidecar(
            self.source, self.s3.endpoint, f"{self.bucket}/logs", self.logs / f"{name}.log", env=env
        )
        self.running[name] = process
        return process

    def uploads(self, since: dict[str, int] | None = None) -> Counter[str]:
        """Keys uploaded by each running replica (from its log, after ``since`` offsets)."""
        counts: Counter[str] = Counter()
        for name, process in self.running.items():
            text = process.log[(since or {}).get(name, 0) :]
            counts.update(f"{name} {key}" for key in set(_UPLOADED.findall(text)))
        return counts

    def offsets(self) -> dict[str, int]:
        return {name: len(process.log) for name, process in self.running.items()}


def _write_all(source: Path, version: int, runs: range = range(RUNS)) -> None:
    for run in runs:
        folder = source / f"run-{run:03d}"
        folder.mkdir(exist_ok=True)
        for name in ("RunLog", "BranchLog-a", "BranchLog-b"):
            body = {"run": run, "file": name, "version": version, "pad": "x" * 200}
            (folder / f"{name}.json").write_text(json.dumps(body))


def _mirrored(client: Minio, bucket: str, source: Path) -> bool:
    try:
        assert_mirror(client, bucket, "logs", source)
    except AssertionError:
        return False
    return True


def _run_of(entry: str) -> str:
    return entry.split(" ", 1)[1].split("/")[1]  # "<replica> logs/<run>/<name>"


def _by_key(uploads: Counter[str]) -> Counter[str]:
    return Counter(entry.split(" ", 1)[1] for entry in uploads)


@pytest.fixture()
def replicas(
    kube: KubeHarness, s3_server: S3Server, s3_client: Minio, bucket: str, tmp_path: Path
) -> Iterator[Replicas]:
    source = tmp_path / "shared"
    source.mkdir()
    group = Replicas(kube, s3_server, bucket, source, tmp_path)
    yield group
    for process in group.running.values():
        if process.process.poll() is None:
            process.kill()


def _wait_members(group: Replicas, members: set[str]) -> None:
    """Until every running replica's latest view is ``members`` and, where that view gave
    it runs, it has taken them (one period later: the "taking" line)."""
    want = f"members now {sorted(members)}"

    def settled() -> bool:
        for process in group.running.values():
            log = process.log
            last_view = log.rfind("members now")
            if last_view < 0 or not log.startswith(want, last_view):
                return False
            if _gains(log, last_view) and log.rfind("taking this replica's share") < last_view:
                return False
        return True

    wait_until(settled, timeout=30, interval=0.1, what=f"every replica sees {sorted(members)}")


def _gains(log: str, last_view: int) -> bool:
    """Whether the view at ``last_view`` gave this replica runs (then it is adopted one
    period later, with a "taking" line); a pure loss (a member joined) applies at once."""
    previous = log.rfind("members now", 0, last_view)
    if previous < 0:
        return True
    old = set(re.findall(r"'([^']+)'", log[previous : log.index("\n", previous)]))
    new = set(re.findall(r"'([^']+)'", log[last_view : log.index("\n", last_view)]))
    return bool(old - new)


def test_three_replicas_split_the_runs_fail_over_and_take_their_share_back(
    replicas: Replicas, s3_client: Minio, bucket: str, kube: KubeHarness
) -> None:
    for name in NAMES:
        replicas.start(name)
    _wait_members(replicas, set(NAMES))

    # Steady state: every file uploaded by exactly one replica, and all three take part.
    _write_all(replicas.source, version=1)
    wait_until(lambda: _mirrored(s3_client, bucket, replicas.source), timeout=60)
    uploads = replicas.uploads()
    per_key = _by_key(uploads)
    assert len(per_key) == RUNS * 3
    assert set(per_key.values()) == {1}, [k for k, n in per_key.items() if n > 1]
    shares = Counter(entry.split(" ", 1)[0] for entry in uploads)
    assert set(shares) == set(NAMES), shares

    # A replica dies: its runs (written after its death) are mirrored by the others.
    victim = replicas.running.pop("relay-1")
    victim_runs = {_run_of(entry) for entry in uploads if entry.startswith("relay-1 ")}
    victim.process.kill()
    victim.process.wait(10)
    killed_at = time.monotonic()
    before = replicas.offsets()
    _write_all(replicas.source, version=2)
    wait_until(lambda: _mirrored(s3_client, bucket, replicas.source), timeout=FAILOVER_BOUND + 20)
    failover = time.monotonic() - killed_at
    assert failover < FAILOVER_BOUND, f"took {failover:.1f}s"
    taken = {_run_of(entry) for entry in replicas.uploads(before)}
    assert victim_runs <= taken

    # It comes back: once the hand-over is over, each file again has exactly one uploader.
    replicas.start("relay-1")
    _wait_members(replicas, set(NAMES))
    before = replicas.offsets()
    _write_all(replicas.source, version=3)
    wait_until(lambda: _mirrored(s3_client, bucket, replicas.source), timeout=60)
    per_key = _by_key(replicas.uploads(before))
    assert len(per_key) == RUNS * 3
    assert set(per_key.values()) == {1}, [k for k, n in per_key.items() if n > 1]
    assert any(entry.startswith("relay-1 ") for entry in replicas.uploads(before))
