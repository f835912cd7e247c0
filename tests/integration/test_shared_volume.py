"""Two per-pod sidecars on one shared (RWX) volume never leave an older version as the
final object.

In runnable's standard Argo layout every step pod mounts the same PVC. Before run ids,
every step's sidecar mirrored every run on it: a sidecar whose uploads are slow (another
node, a congested link) could upload an old read of *another* run's file after that run's
own sidecar had uploaded the newer version, and then go away (its pod finished, its node
died) -- leaving the older version as the final object. The webhook now gives each
per-pod sidecar its pod's run ids (``RUNLOG_RELAY_RUN_IDS``), so a run's objects have one
uploader, whose per-key ordering keeps the newest last.

Here, the real sidecar twice, as the webhook configures them for two step pods of two
runs on one folder: A (run-a) uploads directly; B (run-b) polls like a sidecar on another
node (it misses A's pod's writes for a minute) and uploads through a proxy that holds its
PUTs until A has uploaded run-a's final version. Then B is SIGKILLed and A stops. Without
run ids, B's held upload of run-a's first version lands last and is the final object.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3server import AuthS3
from tests.support.sidecar import SidecarProcess, start_sidecar
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_until

BUCKET = "shared-volume"


def _sidecar_takes_run_ids() -> bool:
    """core's ``run_ids`` setting (``--run-id``, ``RUNLOG_RELAY_RUN_IDS``) is in this
    sidecar: without it there is nothing to test yet (see the kube report)."""
    result = subprocess.run(
        [sys.executable, "-m", "runlog_relay", "sidecar", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--run-id" in result.stdout


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not _sidecar_takes_run_ids(),
        reason="needs core's run_ids in the sidecar (--run-id / RUNLOG_RELAY_RUN_IDS)",
    ),
]


@pytest.fixture()
def proxy(auth_s3: AuthS3) -> Iterator[TcpProxy]:
    slow = TcpProxy(auth_s3.server.port)
    yield slow
    slow.close()


def object_of(s3: AuthS3, key: str) -> bytes | None:
    try:
        response = s3.client().get_object(BUCKET, key)
    except Exception:
        return None
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def run_log(version: int, run: str) -> str:
    return json.dumps({"run_id": run, "status": "PROCESSING", "version": version})


def sidecar(
    s3: AuthS3, folder: Path, endpoint: str, run: str, log: Path, *extra: str
) -> SidecarProcess:
    env = {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "RUNLOG_RELAY_RUN_IDS": run,  # what the webhook sets for the pod of this run
    }
    return start_sidecar(folder, endpoint, f"{BUCKET}/runs", log, *extra, env=env)


def test_an_older_read_never_ends_as_the_final_object(
    auth_s3: AuthS3, proxy: TcpProxy, tmp_path: Path
) -> None:
    s3 = auth_s3
    if not s3.client().bucket_exists(BUCKET):
        s3.client().make_bucket(BUCKET)
    folder = tmp_path / "pvc"  # the RWX volume both step pods mount
    for run in ("run-a", "run-b"):
        (folder / run).mkdir(parents=True)
        (folder / run / "RunLog.json").write_text(run_log(1, run))

    proxy.hold_puts()
    b = sidecar(
        s3,
        folder,
        proxy.endpoint,
        "run-b",
        tmp_path / "b.log",
        "--force-polling",  # on another node: inotify does not see run-a's pod's writes
        "--poll-interval",
        "60",
        "--rescan-interval",
        "3600",
    )
    # B has read what it mirrors and its upload waits on the slow link.
    wait_until(lambda: proxy.held >= 1, timeout=30, what="B's first upload held at the proxy")
    a = sidecar(s3, folder, s3.endpoint, "run-a", tmp_path / "a.log")
    wait_until(
        lambda: object_of(s3, "runs/run-a/RunLog") == run_log(1, "run-a").encode(),
        timeout=30,
        what="A to upload run-a's first version",
    )
    (folder / "run-a" / "RunLog.json").write_text(run_log(2, "run-a"))  # the final one
    wait_until(
        lambda: object_of(s3, "runs/run-a/RunLog") == run_log(2, "run-a").encode(),
        timeout=30,
        what="A to upload run-a's final version",
    )

    proxy.release_puts()
    wait_until(
        lambda: (
            object_of(s3, "runs/run-b/RunLog") == run_log(1, "run-b").encode()
            and b.metric("runlog_relay_pending_files") == 0
        ),
        timeout=60,
        what="B to upload run-b and have nothing left",
    )
    b.kill()  # its pod is gone before it looked at the volume again
    assert a.terminate() == 0, a.log

    for run in ("run-a", "run-b"):
        local = (folder / run / "RunLog.json").read_bytes()
        assert object_of(s3, f"runs/{run}/RunLog") == local, f"{run}'s final object is stale"
