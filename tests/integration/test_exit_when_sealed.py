"""``--exit-when-sealed``: a classic (plain-container) sidecar ends its Job's pod.

Each test is one pod as the webhook makes it on a cluster without native sidecars: the
sidecar process gets ``RUNLOG_RELAY_EXIT_WHEN_SEALED=true`` and the pod's run ids in
``RUNLOG_RELAY_RUN_IDS`` (and ``RUNNABLE_RETRY_RUN_ID`` when the pod retries a run), runs
next to a real runnable job or pipeline writing into the same folder, and is never sent
a signal: it must exit by itself, 0 once the run is sealed, and not a moment before the
pod's work is done.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from minio import Minio

from runlog_relay import runnable_compat
from runlog_relay.runnable_compat import (
    FAIL_ITEM_VARIABLE,
    FAIL_JOB_VARIABLE,
    PipelineFailedError,
)
from tests.support.mirror import assert_mirror
from tests.support.s3server import S3Endpoint
from tests.support.sidecar import SidecarProcess, start_sidecar
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def classic_sidecar(
    source: Path,
    s3: S3Endpoint,
    bucket: str,
    log: Path,
    *extra: str,
    runs: str | None,
    retry: str | None = None,
) -> SidecarProcess:
    env = {"RUNLOG_RELAY_EXIT_WHEN_SEALED": "true"}
    if runs is not None:
        env["RUNLOG_RELAY_RUN_IDS"] = runs
    if retry is not None:
        env["RUNNABLE_RETRY_RUN_ID"] = retry
    return start_sidecar(source, s3.endpoint, bucket, log, *extra, env=env)


def exits(sidecar: SidecarProcess, timeout: float = 30.0) -> int:
    return sidecar.process.wait(timeout)


def test_the_sidecar_of_a_job_pod_exits_once_the_job_is_sealed(
    s3_server: S3Endpoint, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = classic_sidecar(source, s3_server, bucket, tmp_path / "s.log", runs="etl-1")
    sidecar.wait_ready()
    assert sidecar.process.poll() is None  # nothing written yet: it stays
    runnable_compat.run_job(
        source, "etl-1", workdir=tmp_path / "work", env={FAIL_JOB_VARIABLE: "1"}
    )
    # The sidecar's exit code says whether the mirror is complete, not how the job went.
    assert exits(sidecar) == 0, sidecar.log
    assert "run etl-1 sealed: FAIL" in sidecar.log
    assert "the pod's runs (etl-1) are sealed and its work is done" in sidecar.log
    assert_mirror(s3_client, bucket, "", source)

    # The Job's next pod (backoffLimit) runs `execute-job` for a run that exists:
    # runnable refuses it at once, so that pod's sidecar has nothing to wait for.
    again = classic_sidecar(source, s3_server, bucket, tmp_path / "again.log", runs="etl-1")
    with pytest.raises(PipelineFailedError):
        runnable_compat.run_job(source, "etl-1", workdir=tmp_path / "work")
    assert exits(again) == 0, again.log
    assert "final when the sidecar first looked" in again.log


def test_a_retry_pod_waits_for_the_retry(
    s3_server: S3Endpoint, bucket: str, source: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    with pytest.raises(PipelineFailedError):
        runnable_compat.run_pipeline(source, "nightly", workdir=work, env={FAIL_ITEM_VARIABLE: "b"})
    # The pod that retries the run starts with the failed run final on the volume.
    sidecar = classic_sidecar(
        source, s3_server, bucket, tmp_path / "s.log", runs="nightly", retry="nightly"
    )
    wait_until(
        lambda: sidecar.metric("runlog_relay_runs_sealed_total", status="FAIL") == 1,
        timeout=30,
        what="the failed run sealed at start-up",
    )
    assert sidecar.process.poll() is None, sidecar.log  # the retry has not run yet
    runnable_compat.run_pipeline(
        source, "nightly", workdir=work, env={"RUNNABLE_RETRY_RUN_ID": "nightly"}
    )
    assert exits(sidecar) == 0, sidecar.log
    assert "run nightly sealed: SUCCESS" in sidecar.log


def test_without_run_ids_it_says_so_and_waits_for_sigterm(
    s3_server: S3Endpoint, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = classic_sidecar(source, s3_server, bucket, tmp_path / "s.log", runs=None)
    runnable_compat.run_job(source, "etl-3", workdir=tmp_path / "work")
    wait_until(
        lambda: sidecar.metric("runlog_relay_runs_sealed_total", status="SUCCESS") == 1,
        timeout=30,
        what="the run sealed",
    )
    assert sidecar.process.poll() is None
    assert "--exit-when-sealed needs the pod's run ids" in sidecar.log
    assert sidecar.terminate() == 0, sidecar.log


def test_a_run_that_cannot_be_mirrored_ends_the_pod_with_the_report(
    s3_server: S3Endpoint, bucket: str, source: Path, tmp_path: Path
) -> None:
    # A branch log left half-written (its writer died): the job's final status comes,
    # but the run can never be sealed. The sidecar gives up after the drain budget.
    broken = source / "etl-4" / "BranchLog-left.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"status": "PROC')
    sidecar = classic_sidecar(
        source,
        s3_server,
        bucket,
        tmp_path / "s.log",
        "--torn-grace",
        "0.5",
        "--drain-timeout",
        "2",
        runs="etl-4",
    )
    runnable_compat.run_job(source, "etl-4", workdir=tmp_path / "work")
    assert exits(sidecar) == 1, sidecar.log
    assert "its runs cannot be sealed" in sidecar.log
    assert "etl-4/BranchLog-left.json: torn" in sidecar.log  # the usual report
    assert "run etl-4 sealed" not in sidecar.log
