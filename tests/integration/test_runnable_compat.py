"""runnable's own stores read back a bucket that mirrors a real run's log folder.

Real parts only: a real runnable 0.50 pipeline (parallel branches + map, in a
subprocess), moto's and SeaweedFS's S3 servers on 127.0.0.1, the real minio SDK to upload, and
runnable's own ``chunked-fs``/``file-system`` and ``chunked-minio``/``minio`` stores to
read. The sidecar is not involved: :func:`upload_like_the_sidecar` is a stand-in that
applies the object layout of DESIGN.md ("The formats") directly.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio

from runlog_relay.runnable_compat import (
    DEMO_BRANCHES,
    DEMO_STEPS,
    Layout,
    PipelineFailedError,
    read_run_log_from_bucket,
    read_run_log_from_folder,
    run_pipeline,
)
from tests.support.s3server import S3Endpoint

pytestmark = [pytest.mark.integration]

BUCKET_BY_LAYOUT: dict[str, str] = {
    # runnable's ``bucket[/prefix]`` form: the default one, and a deeper prefix.
    "chunked": "runnable/run-logs",
    "single": "runnable/single/run-logs",
}


@dataclass(frozen=True)
class S3:
    endpoint: str  # http://127.0.0.1:<port>, for runnable (boto3 via cloudpathlib)
    client: Minio  # the real minio SDK, for the stand-in uploader
    access_key: str  # a key pair the server accepts, for runnable
    secret_key: str


@dataclass(frozen=True)
class Run:
    layout: Layout
    log_folder: Path
    run_id: str
    bucket: str  # bucket[/prefix]
    seconds: float


@pytest.fixture(scope="module")
def s3(any_s3: S3Endpoint) -> S3:
    """moto, then SeaweedFS, with runnable's default bucket."""
    client = any_s3.client()
    if not client.bucket_exists("runnable"):
        client.make_bucket("runnable")
    return S3(any_s3.endpoint, client, any_s3.access_key, any_s3.secret_key)


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """One real pipeline run per layout, its log folder kept apart from runnable's cwd.

    Made once per module for both layouts (not a parametrized module fixture, which
    pytest would set up again each time the S3 server parameter changes)."""
    runs = {}
    layouts: tuple[Layout, ...] = ("chunked", "single")
    for layout in layouts:
        base = tmp_path_factory.mktemp(f"runnable-{layout}")
        run_id = f"compat-{layout}-run"
        started = time.monotonic()
        run_pipeline(base / "logs", run_id, layout=layout, workdir=base / "work", timeout=60)
        runs[layout] = Run(
            layout=layout,
            log_folder=base / "logs",
            run_id=run_id,
            bucket=BUCKET_BY_LAYOUT[layout],
            seconds=time.monotonic() - started,
        )
    return runs


@pytest.fixture(params=["chunked", "single"])
def run(request: pytest.FixtureRequest, pipeline_runs: dict[str, Run]) -> Run:
    return pipeline_runs[request.param]


def upload_like_the_sidecar(client: Minio, run: Run) -> list[str]:
    """STAND-IN FOR THE SIDECAR: put the run's files where runnable's S3 stores look.

    chunked: ``<log_folder>/<run_id>/<Name>.json`` → ``<prefix>/<run_id>/<Name>``, same
    bytes. single: ``<log_folder>/<run_id>.json`` → ``<prefix>/<run_id>/<run_id>.json``,
    body ``json.dumps(file_text)``. Returns the keys written.
    """
    bucket, _, prefix = run.bucket.partition("/")
    key_base = f"{prefix}/{run.run_id}" if prefix else run.run_id
    if run.layout == "chunked":
        objects = {
            f"{key_base}/{path.name.removesuffix('.json')}": path.read_bytes()
            for path in sorted((run.log_folder / run.run_id).glob("*.json"))
        }
    else:
        text = (run.log_folder / f"{run.run_id}.json").read_text()
        objects = {f"{key_base}/{run.run_id}.json": json.dumps(text).encode()}
    for key, body in objects.items():
        client.put_object(bucket, key, io.BytesIO(body), len(body))
    return sorted(objects)


def test_pipeline_writes_the_expected_files(run: Run) -> None:
    assert run.seconds < 30
    if run.layout == "single":
        assert sorted(p.name for p in run.log_folder.iterdir()) == [f"{run.run_id}.json"]
        return
    names = sorted(p.name for p in (run.log_folder / run.run_id).iterdir())
    expected = ["RunLog.json"] + [
        f"BranchLog-{branch}.json" for branches in DEMO_BRANCHES.values() for branch in branches
    ]
    # e.g. BranchLog-parallel.left.json (parallel branch), BranchLog-map.a.json (map item)
    assert names == sorted(expected)
    assert sorted(p.name for p in run.log_folder.iterdir()) == [run.run_id]  # nothing else


def test_run_log_from_folder_has_steps_branches_and_parameters(run: Run) -> None:
    run_log = read_run_log_from_folder(run.log_folder, run.run_id, layout=run.layout)

    json.dumps(run_log)  # JSON-able as promised
    assert run_log["run_id"] == run.run_id
    assert run_log["status"] == "SUCCESS"
    assert list(run_log["steps"]) == list(DEMO_STEPS)
    for step_name, step in run_log["steps"].items():
        assert step["status"] == "SUCCESS", step_name
        assert sorted(step["branches"]) == sorted(DEMO_BRANCHES.get(step_name, ())), step_name
        for branch_name, branch in step["branches"].items():
            assert branch["status"] == "SUCCESS", branch_name
            assert all(s["status"] == "SUCCESS" for s in branch["steps"].values())
    map_a = run_log["steps"]["map"]["branches"]["map.a"]
    assert list(map_a["steps"]) == ["map.a.process", "map.a.success"]
    parameters = {name: p["value"] for name, p in run_log["parameters"].items()}
    assert parameters["processed"] == ["a!", "b!", "c!"]
    assert parameters["total"] == 10 + 1 + 2 + 3


def test_bucket_read_equals_folder_read(s3: S3, run: Run) -> None:
    keys = upload_like_the_sidecar(s3.client, run)
    assert len(keys) == (1 if run.layout == "single" else 1 + 5)
    environ_before = dict(os.environ)

    from_folder = read_run_log_from_folder(run.log_folder, run.run_id, layout=run.layout)
    from_bucket = read_run_log_from_bucket(
        s3.endpoint, s3.access_key, s3.secret_key, run.bucket, run.run_id, layout=run.layout
    )

    assert from_bucket == from_folder
    assert sorted(from_bucket["steps"]["map"]["branches"]) == ["map.a", "map.b", "map.c"]
    assert dict(os.environ) == environ_before  # giving runnable a run id leaks nothing


def test_bucket_read_is_not_served_from_a_stale_cache(s3: S3, run: Run) -> None:
    """A rewrite within the same second as the previous read must be seen."""
    upload_like_the_sidecar(s3.client, run)
    first = read_run_log_from_bucket(
        s3.endpoint, s3.access_key, s3.secret_key, run.bucket, run.run_id, layout=run.layout
    )
    assert first["status"] == "SUCCESS"

    bucket, _, prefix = run.bucket.partition("/")
    if run.layout == "chunked":
        key = f"{prefix}/{run.run_id}/RunLog"
        doc = json.loads((run.log_folder / run.run_id / "RunLog.json").read_text())
        body = json.dumps({**doc, "status": "FAIL"}, indent=4).encode()
    else:
        key = f"{prefix}/{run.run_id}/{run.run_id}.json"
        doc = json.loads((run.log_folder / f"{run.run_id}.json").read_text())
        body = json.dumps(json.dumps({**doc, "status": "FAIL"})).encode()
    s3.client.put_object(bucket, key, io.BytesIO(body), len(body))
    try:
        second = read_run_log_from_bucket(
            s3.endpoint, s3.access_key, s3.secret_key, run.bucket, run.run_id, layout=run.layout
        )
        assert second["status"] == "FAIL"
    finally:
        upload_like_the_sidecar(s3.client, run)  # restore the faithful mirror


def test_failed_pipeline_raises_with_stderr_tail(run: Run) -> None:
    # runnable refuses to start a run whose run log already exists.
    with pytest.raises(PipelineFailedError) as caught:
        run_pipeline(run.log_folder, run.run_id, layout=run.layout, timeout=60)
    assert caught.value.returncode not in (0, None)
    assert "RunLogExistsError" in str(caught.value)
    assert run.run_id in str(caught.value)
