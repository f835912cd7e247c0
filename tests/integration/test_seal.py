"""Sealing runs, end to end: real runnable runs, a real sidecar process, moto and SeaweedFS.

A run is sealed once its RunLog is final and a listing of its prefix holds every local
file; the seal is what the sidecar reports (its log, its metrics, the tags it sets).
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from minio import Minio

from runlog_relay import runnable_compat
from runlog_relay.runnable_compat import FAIL_ITEM_VARIABLE, PipelineFailedError
from tests.support.mirror import assert_mirror
from tests.support.s3server import S3Endpoint, SeaweedFS
from tests.support.sidecar import SidecarProcess, start_sidecar
from tests.support.toolcli import cli
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

STATUS_TAG = "runlog-relay/status"


def sealed(sidecar: SidecarProcess, status: str) -> float:
    return sidecar.metric("runlog_relay_runs_sealed_total", status=status)


def seal_lines(sidecar: SidecarProcess, run_id: str) -> list[str]:
    return re.findall(rf"run {re.escape(run_id)} sealed: .*", sidecar.log)


def object_tags(client: Minio, bucket: str, prefix: str) -> dict[str, dict[str, str]]:
    return {
        obj.object_name: dict(client.get_object_tags(bucket, obj.object_name) or {})
        for obj in client.list_objects(bucket, prefix=prefix, recursive=True)
        if obj.object_name
    }


# Both servers (SeaweedFS and moto both have object tagging), both layouts, in two runs
# rather than four: the suite's budget.
@pytest.mark.parametrize(
    ("any_s3", "layout"), [("seaweedfs", "chunked"), ("moto", "single")], indirect=["any_s3"]
)
def test_success_failure_and_retry_are_sealed_unsealed_and_sealed_again(
    layout: str,
    any_s3: S3Endpoint,
    any_s3_client: Minio,
    any_bucket: str,
    source: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sidecar = start_sidecar(
        source,
        any_s3.endpoint,
        f"{any_bucket}/logs",
        tmp_path / "sidecar.log",
        "--layout",
        layout,
        "--tag-sealed-runs",
    )
    sidecar.wait_ready()
    work = tmp_path / "work"

    runnable_compat.run_pipeline(source, "ok-run", layout=layout, workdir=work)
    wait_until(lambda: sealed(sidecar, "SUCCESS") == 1, timeout=30, what="the run sealed")
    assert_mirror(any_s3_client, any_bucket, "logs", source, layout)
    # The counter moves just before the line is written: wait for the line itself.
    (line,) = wait_until(lambda: seal_lines(sidecar, "ok-run"), timeout=30, what="its log line")
    assert "SUCCESS" in line
    tags = object_tags(any_s3_client, any_bucket, "logs/ok-run/")
    assert tags and all(t == {STATUS_TAG: "SUCCESS"} for t in tags.values()), tags
    # `show` reads the seal back from the tag, straight from the bucket.
    where = ["--endpoint", any_s3.endpoint, "--bucket", f"{any_bucket}/logs", "--layout", layout]
    shown = cli(capsys, "show", "ok-run", "--json", "--no-catalog", *where)
    assert shown.code == 0, shown.err
    assert shown.json()["sealed"] == "SUCCESS"
    assert "sealed SUCCESS" in cli(capsys, "show", "ok-run", "--no-catalog", *where).out

    # A failing run is sealed FAIL; runnable's retry writes it again: unsealed, then
    # sealed again with its new status, and its objects are tagged again.
    with pytest.raises(PipelineFailedError):
        runnable_compat.run_pipeline(
            source, "flaky-run", layout=layout, workdir=work, env={FAIL_ITEM_VARIABLE: "b"}
        )
    wait_until(lambda: sealed(sidecar, "FAIL") == 1, timeout=30, what="the failed run sealed")
    assert all(
        t == {STATUS_TAG: "FAIL"}
        for t in object_tags(any_s3_client, any_bucket, "logs/flaky-run/").values()
    )
    runnable_compat.run_pipeline(
        source,
        "flaky-run",
        layout=layout,
        workdir=work,
        env={"RUNNABLE_RETRY_RUN_ID": "flaky-run"},
    )
    wait_until(lambda: sealed(sidecar, "SUCCESS") == 2, timeout=30, what="the retry sealed")
    assert sidecar.metric("runlog_relay_runs_unsealed_total") >= 1
    assert sealed(sidecar, "FAIL") == 1  # no false seal while the retry ran
    assert sidecar.metric("runlog_relay_sealed_runs") == 2
    tags = object_tags(any_s3_client, any_bucket, "logs/flaky-run/")
    assert tags and all(t == {STATUS_TAG: "SUCCESS"} for t in tags.values()), tags
    assert cli(capsys, "show", "flaky-run", "--json", "--no-catalog", *where).json()["sealed"] == (
        "SUCCESS"
    )
    assert "flaky-run was written again after its seal" in sidecar.log
    lag_count = sidecar.metric("runlog_relay_run_seal_lag_seconds_count")
    assert lag_count == 3
    assert sidecar.metric("runlog_relay_run_seal_lag_seconds_sum") / lag_count < 10
    assert_mirror(any_s3_client, any_bucket, "logs", source, layout)
    assert sidecar.terminate() == 0, sidecar.log


def test_restart_seals_what_is_complete_without_uploading(
    s3_server: S3Endpoint, bucket: str, source: Path, tmp_path: Path
) -> None:
    runnable_compat.run_pipeline(source, "done-run", workdir=tmp_path / "work")
    first = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "first.log", "--once")
    assert first.process.wait(60) == 0, first.log
    assert "run done-run sealed: SUCCESS" in first.log  # --once seals what is final too

    again = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "again.log")
    wait_until(lambda: sealed(again, "SUCCESS") == 1, timeout=30, what="sealed at start-up")
    assert again.metric("runlog_relay_uploads_total", result="success") == 0
    assert again.terminate() == 0, again.log


def test_local_retention_deletes_sealed_runs_after_the_duration(
    s3_server: S3Endpoint, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = start_sidecar(
        source,
        s3_server.endpoint,
        bucket,
        tmp_path / "sidecar.log",
        "--retain-local",
        "3s",
    )
    sidecar.wait_ready()
    runnable_compat.run_pipeline(source, "old-run", workdir=tmp_path / "work")
    local = source / "old-run"
    wait_until(lambda: sealed(sidecar, "SUCCESS") == 1, timeout=30, what="the run sealed")
    assert local.exists()  # sealed, but not yet DURATION ago
    objects = {
        o.object_name for o in s3_client.list_objects(bucket, prefix="old-run/", recursive=True)
    }
    wait_until(
        lambda: sidecar.metric("runlog_relay_retention_deleted_runs_total") == 1,
        timeout=30,
        what="the run deleted",
    )
    assert not local.exists()
    assert sidecar.metric("runlog_relay_retention_deleted_bytes_total") > 0
    # The objects stay (run logs are records), and the sidecar forgot the files.
    after = {
        o.object_name for o in s3_client.list_objects(bucket, prefix="old-run/", recursive=True)
    }
    assert after == objects
    wait_until(lambda: sidecar.metric("runlog_relay_files_tracked") == 0, what="files forgotten")
    wait_until(lambda: "local retention deleted run old-run" in sidecar.log, what="its log line")
    assert sidecar.terminate() == 0, sidecar.log


def test_local_retention_dry_run_keeps_everything(
    s3_server: S3Endpoint, bucket: str, source: Path, tmp_path: Path
) -> None:
    runnable_compat.run_pipeline(source, "kept-run", workdir=tmp_path / "work")
    sidecar = start_sidecar(
        source,
        s3_server.endpoint,
        bucket,
        tmp_path / "sidecar.log",
        "--retain-local",
        "0s",
        "--retain-local-dry-run",
    )
    wait_until(
        lambda: sidecar.metric("runlog_relay_retention_would_delete_runs_total") == 1,
        timeout=30,
        what="the dry run's verdict",
    )
    assert (source / "kept-run" / "RunLog.json").exists()
    assert sidecar.metric("runlog_relay_retention_deleted_runs_total") == 0
    wait_until(lambda: "(dry run) would delete run kept-run" in sidecar.log, what="its log line")
    assert sidecar.terminate() == 0, sidecar.log


def test_a_bucket_with_customer_keys_seals_and_tags_too(
    seaweedfs: SeaweedFS, source: Path, tmp_path: Path
) -> None:
    # SSE-C on a server that really encrypts: the seal's listing and its tags work on
    # objects nobody can read without the key. (Buckets whose listed ETags are not MD5s,
    # as SSE-KMS on AWS, are confirmed by the stored MD5: tests/unit/test_runs.py.)
    client = seaweedfs.client()
    client.make_bucket("sealed-sse-c")
    key_file = tmp_path / "sse-c.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    (source / "job-c").mkdir()
    (source / "job-c" / "RunLog.json").write_text(
        json.dumps({"run_id": "job-c", "status": "SUCCESS", "steps": {}})  # a finished job
    )
    sidecar = start_sidecar(
        source,
        seaweedfs.endpoint,
        "sealed-sse-c",
        tmp_path / "s.log",
        "--once",
        "--tag-sealed-runs",
        "--sse",
        "c",
        "--sse-c-key-file",
        str(key_file),
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    assert "run job-c sealed: SUCCESS, 1 files verified" in sidecar.log, sidecar.log
    assert object_tags(client, "sealed-sse-c", "job-c/") == {
        "job-c/RunLog": {STATUS_TAG: "SUCCESS"}
    }
