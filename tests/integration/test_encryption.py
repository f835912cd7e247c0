"""Server-side encryption and storage class, end to end with the real sidecar and tools.

SSE-C and SSE-S3 against SeaweedFS (a server that really encrypts: an SSE-C object cannot
be read without its key), SSE-KMS and the storage class against moto (which records the
headers it was sent). Key material never reaches a log.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error
from minio.sse import SseCustomerKey

from tests.support.mirror import expected_objects
from tests.support.s3server import S3Server, SeaweedFS
from tests.support.sidecar import start_sidecar
from tests.support.toolcli import tool_process

pytestmark = pytest.mark.integration


def write_run(source: Path, run: str) -> dict[str, bytes]:
    for name in ("RunLog", "BranchLog-a", "BranchLog-b"):
        path = source / run / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run": run, "name": name}))
    return expected_objects(source, "chunked", "")


def read(client: Minio, bucket: str, key: str, ssec: SseCustomerKey | None = None) -> bytes:
    response = client.get_object(bucket, key, ssec=ssec)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_sse_c_on_seaweedfs_encrypts_and_the_tools_need_the_key(
    seaweedfs: SeaweedFS, source: Path, tmp_path: Path
) -> None:
    client = seaweedfs.client()
    bucket = "sse-c-runs"
    client.make_bucket(bucket)
    key = os.urandom(32)
    key_file = tmp_path / "sse-c.key"
    key_file.write_text(base64.b64encode(key).decode() + "\n")  # as a Secret holds it
    expected = write_run(source, "secret-run")
    sidecar = start_sidecar(
        source,
        seaweedfs.endpoint,
        bucket,
        tmp_path / "s.log",
        "--once",
        "--sse",
        "c",
        "--sse-c-key-file",
        str(key_file),
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    for object_key, body in expected.items():
        assert read(client, bucket, object_key, SseCustomerKey(key)) == body
    with pytest.raises(S3Error) as refused:  # really encrypted: no key, no body
        read(client, bucket, "secret-run/RunLog")
    assert refused.value.code == "InvalidArgument"
    assert "SSE-C with a customer key" in sidecar.log
    for secret in (base64.b64encode(key).decode(), key.hex()):
        assert secret not in sidecar.log

    store = ("--endpoint", seaweedfs.endpoint, "--bucket", bucket)
    with_key = tool_process(
        "verify", "--source", str(source), *store, "--sse", "c", "--sse-c-key-file", str(key_file)
    )
    assert with_key.returncode == 0, with_key.stdout + with_key.stderr
    pulled = tmp_path / "pulled"
    without = tool_process("pull", "secret-run", "--dest", str(pulled), *store)
    assert without.returncode == 3
    assert "downloading secret-run/" in without.stderr and "InvalidArgument" in without.stderr
    ok = tool_process(
        "pull",
        "secret-run",
        "--dest",
        str(pulled),
        *store,
        "--sse",
        "c",
        "--sse-c-key-file",
        str(key_file),
    )
    assert ok.returncode == 0, ok.stderr
    assert (pulled / "secret-run" / "RunLog.json").read_bytes() == expected["secret-run/RunLog"]


def test_sse_s3_on_seaweedfs(seaweedfs: SeaweedFS, source: Path, tmp_path: Path) -> None:
    client = seaweedfs.client()
    bucket = "sse-s3-runs"
    client.make_bucket(bucket)
    expected = write_run(source, "s3-run")
    sidecar = start_sidecar(
        source, seaweedfs.endpoint, bucket, tmp_path / "s.log", "--once", "--sse", "s3"
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    for object_key, body in expected.items():
        stat = client.stat_object(bucket, object_key)
        assert stat.metadata.get("X-Amz-Server-Side-Encryption") == "AES256", stat.metadata
        assert read(client, bucket, object_key) == body  # S3-managed: readable as usual


def test_sse_kms_with_context_and_storage_class_on_moto(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    write_run(source, "kms-run")
    sidecar = start_sidecar(
        source,
        s3_server.endpoint,
        bucket,
        tmp_path / "s.log",
        "--once",
        "--sse",
        "kms",
        "--sse-kms-key-id",
        "alias/runlog-relay",
        "--sse-kms-context",
        '{"team": "data"}',
        "--storage-class",
        "STANDARD_IA",
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    listed = {
        obj.object_name: obj.storage_class for obj in s3_client.list_objects(bucket, recursive=True)
    }
    assert listed == dict.fromkeys(
        ["kms-run/RunLog", "kms-run/BranchLog-a", "kms-run/BranchLog-b"], "STANDARD_IA"
    )
    stat = s3_client.stat_object(bucket, "kms-run/RunLog")
    assert stat.metadata["x-amz-server-side-encryption"] == "aws:kms"
    assert stat.metadata["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/runlog-relay"
    assert "SSE-KMS with alias/runlog-relay and an encryption context" in sidecar.log


def test_sse_c_is_refused_over_plain_http_to_another_host(source: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_bytes(os.urandom(32))
    sidecar = start_sidecar(
        source,
        "http://minio.example:9000",
        "runs",
        tmp_path / "s.log",
        "--once",
        "--sse",
        "c",
        "--sse-c-key-file",
        str(key_file),
        metrics=False,
    )
    assert sidecar.process.wait(30) == 2
    assert "needs an https:// endpoint" in sidecar.log
