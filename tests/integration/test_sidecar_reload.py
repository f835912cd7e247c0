"""Hot reload end to end: a real sidecar process, its config and credentials mounted the
way the kubelet mounts a ConfigMap and a Secret (``..data`` symlink swaps), against a moto
server that checks signatures. No restart, nothing pending lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from minio import Minio

from tests.support.mirror import assert_mirror
from tests.support.mounts import AtomicMount
from tests.support.s3server import AuthS3, S3Server
from tests.support.sidecar import start_sidecar
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def config_yaml(endpoint: str, bucket: str, secret_dir: Path) -> str:
    # As the operator renders it: camelCase, credentials by file path only.
    return json.dumps(
        {
            "endpoint": endpoint,
            "bucket": bucket,
            "layout": "chunked",
            "accessKeyIdFile": str(secret_dir / "AWS_ACCESS_KEY_ID"),
            "secretAccessKeyFile": str(secret_dir / "AWS_SECRET_ACCESS_KEY"),
        }
    )


def test_config_and_credentials_reload_without_restart(
    auth_s3: AuthS3, source: Path, tmp_path: Path
) -> None:
    client = auth_s3.client()
    client.make_bucket("first")
    client.make_bucket("second")
    config, secret = AtomicMount(tmp_path / "config"), AtomicMount(tmp_path / "secret")
    # Start with a revoked key: the sidecar runs but cannot write.
    secret.write(
        {"AWS_ACCESS_KEY_ID": "AKIAREVOKED000000000", "AWS_SECRET_ACCESS_KEY": "old-secret-value"}
    )
    config.write({"config.yaml": config_yaml(auth_s3.endpoint, "first/run-logs", secret.root)})
    (source / "r1").mkdir()
    (source / "r1" / "RunLog.json").write_text('{"a": 1}')
    sidecar = start_sidecar(
        source,
        None,  # endpoint and bucket come from the config file, so it can move them
        None,
        tmp_path / "sidecar.log",
        "--config",
        str(config.path("config.yaml")),
        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
    )
    wait_until(lambda: "InvalidAccessKeyId" in sidecar.get("/readyz")[1], what="not ready: bad key")
    pid = sidecar.process.pid

    # 1. The Secret is rotated: the same process picks the new key up and catches up.
    secret.write(
        {"AWS_ACCESS_KEY_ID": auth_s3.access_key, "AWS_SECRET_ACCESS_KEY": auth_s3.secret_key}
    )
    sidecar.wait_ready()
    wait_until(
        lambda: "r1/RunLog" in _keys(client, "first", "run-logs"), what="upload after rotation"
    )
    assert sidecar.metric("runlog_relay_config_reloads_total", result="applied") >= 1

    # 2. The ConfigMap moves the store to another bucket: everything is mirrored there.
    config.write({"config.yaml": config_yaml(auth_s3.endpoint, "second/moved", secret.root)})
    (source / "r2").mkdir()
    (source / "r2" / "RunLog.json").write_text('{"b": 2}')
    wait_until(
        lambda: {"r1/RunLog", "r2/RunLog"} <= _keys(client, "second", "moved"),
        timeout=30,
        what="mirror completed in the new bucket",
    )

    # 3. An invalid ConfigMap is rejected; the last good config stays in force.
    rejected = sidecar.metric("runlog_relay_config_reloads_total", result="rejected")
    config.write({"config.yaml": json.dumps({"bucket": "NOT A BUCKET", "layout": "chunked"})})
    wait_until(
        lambda: sidecar.metric("runlog_relay_config_reloads_total", result="rejected") > rejected,
        what="bad config rejected",
    )
    (source / "r3").mkdir()
    (source / "r3" / "RunLog.json").write_text('{"c": 3}')
    wait_until(lambda: "r3/RunLog" in _keys(client, "second", "moved"), what="still mirroring")

    assert sidecar.process.pid == pid and sidecar.process.poll() is None  # never restarted
    assert sidecar.terminate() == 0, sidecar.log
    assert_mirror(client, "second", "moved", source)
    assert "rejected the new sidecar config" in sidecar.log
    assert auth_s3.secret_key not in sidecar.log and "old-secret-value" not in sidecar.log


def _keys(client: Minio, bucket: str, prefix: str) -> set[str]:
    start = f"{prefix}/" if prefix else ""
    return {
        str(obj.object_name).removeprefix(start)
        for obj in client.list_objects(bucket, prefix=start, recursive=True)
    }


def test_waits_for_a_configmap_and_secret_that_do_not_exist_yet(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    """Optional volumes of a native sidecar: the pod starts before its ConfigMap exists;
    the sidecar must stay up (or the pod's containers never start) and catch up later."""
    config, secret = AtomicMount(tmp_path / "config"), AtomicMount(tmp_path / "secret")
    (source / "early").mkdir()
    (source / "early" / "RunLog.json").write_bytes(b'{"written": "before the config existed"}')
    sidecar = start_sidecar(
        source, None, None, tmp_path / "s.log", "--config", str(config.path("config.yaml"))
    )
    wait_until(lambda: "waiting for" in sidecar.get("/readyz")[1], what="waiting for config")
    assert sidecar.get("/readyz")[0] == 503
    assert sidecar.get("/healthz")[0] == 200
    # The ConfigMap arrives, naming credentials files that do not exist yet.
    config.write({"config.yaml": config_yaml(s3_server.endpoint, bucket, secret.root)})
    wait_until(
        lambda: "AWS_ACCESS_KEY_ID" in sidecar.get("/readyz")[1], what="waiting for the Secret"
    )
    secret.write({"AWS_ACCESS_KEY_ID": "minioadmin", "AWS_SECRET_ACCESS_KEY": "minioadmin"})
    sidecar.wait_ready()
    wait_until(
        lambda: "early/RunLog" in _keys(s3_client, bucket, ""), what="mirrored once configured"
    )
    assert sidecar.terminate() == 0, sidecar.log


def test_stopped_while_waiting_for_config_exits_1(source: Path, tmp_path: Path) -> None:
    sidecar = start_sidecar(
        source, None, None, tmp_path / "s.log", "--config", str(tmp_path / "never.yaml")
    )
    wait_until(lambda: sidecar.get("/readyz")[0] == 503, what="waiting")
    assert sidecar.terminate() == 1
    assert "nothing mirrored" in sidecar.log
