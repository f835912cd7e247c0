"""The sidecar as a real subprocess against moto's S3 server (DESIGN.md guarantees 1-7);
the tests taking ``any_s3`` run against SeaweedFS too."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from minio import Minio

from tests.support.etagproxy import EtagRewritingProxy
from tests.support.files import write_json
from tests.support.mirror import assert_mirror, bucket_objects, object_body
from tests.support.s3server import S3Endpoint, S3Server, start_s3_server
from tests.support.sidecar import start_sidecar
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_mirrors_new_and_rewritten_files_and_drains_on_sigterm(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = start_sidecar(
        source, s3_server.endpoint, f"{bucket}/run-logs", tmp_path / "sidecar.log"
    )
    sidecar.wait_ready()
    run = source / "quiet-fox-0101"
    body = write_json(run / "RunLog.json", {"run_id": "quiet-fox-0101", "status": "RUNNING"})
    wait_until(
        lambda: object_body(s3_client, bucket, "run-logs/quiet-fox-0101/RunLog") == body,
        what="RunLog uploaded without its .json suffix",
    )
    for version in range(20):
        write_json(run / "BranchLog-map.a.json", {"version": version})
    final = write_json(run / "RunLog.json", {"run_id": "quiet-fox-0101", "status": "SUCCESS"})
    assert sidecar.terminate() == 0, sidecar.log
    assert object_body(s3_client, bucket, "run-logs/quiet-fox-0101/RunLog") == final
    assert_mirror(s3_client, bucket, "run-logs", source)
    assert "mirror complete" in sidecar.log


def test_source_folder_may_appear_after_start(
    s3_server: S3Server, s3_client: Minio, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "not-yet"
    sidecar = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "sidecar.log")
    # A visible waiting state: not ready, with the reason, and a warning in the log.
    wait_until(lambda: "does not exist" in sidecar.get("/readyz")[1], what="waiting reason")
    assert sidecar.get("/readyz")[0] == 503
    assert sidecar.get("/healthz")[0] == 200
    wait_until(lambda: "not mirroring until it appears" in sidecar.log, what="warning")
    # Created in one go, before any watch can be armed on the new folder.
    body = write_json(source / "r1" / "RunLog.json", {"a": 1})
    wait_until(
        lambda: object_body(s3_client, bucket, "r1/RunLog") == body, what="file in a late folder"
    )
    sidecar.wait_ready()
    assert sidecar.terminate() == 0, sidecar.log


def test_single_layout_double_encodes_for_runnables_minio_store(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    body = write_json(source / "calm-owl-0202.json", {"run_id": "calm-owl-0202"})
    sidecar = start_sidecar(
        source, s3_server.endpoint, bucket, tmp_path / "s.log", "--layout", "single", "--once"
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    stored = object_body(s3_client, bucket, "calm-owl-0202/calm-owl-0202.json")
    assert stored is not None
    assert json.loads(json.loads(stored)) == {"run_id": "calm-owl-0202"}
    assert json.loads(stored) == body.decode()


def test_restart_over_synced_tree_makes_no_put_and_no_head(
    any_s3: S3Endpoint, any_s3_client: Minio, any_bucket: str, source: Path, tmp_path: Path
) -> None:
    for run in range(5):
        for chunk in range(4):
            write_json(
                source / f"run-{run}" / f"BranchLog-b{chunk}.json", {"run": run, "chunk": chunk}
            )
    # A file over the multipart threshold: its ETag is composite, still no HEAD needed.
    big = source / "run-0" / "RunLog.json"
    big.write_text(json.dumps({"blob": "x" * (17 * 1024 * 1024)}))
    proxy = TcpProxy(any_s3.port)
    try:
        first = start_sidecar(source, proxy.endpoint, any_bucket, tmp_path / "1.log", "--once")
        assert first.process.wait(120) == 0, first.log
        assert proxy.counts["PUT"] >= 21
        assert_mirror(any_s3_client, any_bucket, "", source)
        proxy.reset_counts()
        second = start_sidecar(source, proxy.endpoint, any_bucket, tmp_path / "2.log", "--once")
        assert second.process.wait(60) == 0, second.log
        assert proxy.counts["PUT"] == 0, proxy.counts
        assert proxy.counts["HEAD"] == 0, proxy.counts
        assert proxy.counts["POST"] == 0, proxy.counts  # no multipart upload either
        assert proxy.counts["GET"] >= 1  # the one listing
    finally:
        proxy.close()


def test_restart_on_a_bucket_whose_etags_are_not_md5s_makes_no_put(
    any_s3: S3Endpoint, any_s3_client: Minio, any_bucket: str, source: Path, tmp_path: Path
) -> None:
    """SSE-KMS, SSE-C and some gateways list ETags that are not the bodies' MD5s (here a
    real HTTP proxy makes them opaque): a restart over a synced tree confirms each object
    with at most one HEAD of its stored MD5, and uploads nothing."""
    for run in range(2):
        for chunk in range(3):
            write_json(source / f"run-{run}" / f"BranchLog-{chunk}.json", {"r": run, "c": chunk})
    proxy = EtagRewritingProxy(any_s3.port)
    try:
        first = start_sidecar(source, proxy.endpoint, any_bucket, tmp_path / "1.log", "--once")
        assert first.process.wait(60) == 0, first.log
        assert proxy.count("PUT") == 6
        proxy.reset_counts()
        second = start_sidecar(source, proxy.endpoint, any_bucket, tmp_path / "2.log", "--once")
        assert second.process.wait(60) == 0, second.log
        assert proxy.count("PUT") == 0, proxy.counts
        assert proxy.count("HEAD") <= 6, proxy.counts
        assert proxy.count("GET") == 0, proxy.counts  # no object body read back
        # One listing per run prefix and one location lookup (not one per listing thread).
        assert 1 <= proxy.count("GET", "list") <= 3, proxy.counts
        assert_mirror(any_s3_client, any_bucket, "", source)
    finally:
        proxy.close()


def test_torn_and_hostile_files_are_never_uploaded(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    run = source / "run-1"
    good = write_json(run / "RunLog.json", {"ok": True})
    (run / "BranchLog-torn.json").write_text('{"half": ')
    (run / "BranchLog-empty.json").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"secret": 1}')
    os.symlink(outside / "secret.json", run / "BranchLog-link.json")
    os.symlink(outside, source / "linked-run")
    (run / "Bad\nName.json").write_text('{"x": 1}')
    (run / "BranchLog-dir.json").mkdir()
    sidecar = start_sidecar(
        source, s3_server.endpoint, bucket, tmp_path / "s.log", "--torn-grace", "0.5"
    )
    sidecar.wait_ready()
    wait_until(lambda: object_body(s3_client, bucket, "run-1/RunLog") == good, what="good file")
    wait_until(lambda: sidecar.metric("runlog_relay_torn_files") == 2, what="torn files reported")
    assert sidecar.metric("runlog_relay_torn_reads_total") >= 2
    assert sidecar.metric("runlog_relay_skipped_files_total", reason="symlink") >= 2
    assert sidecar.metric("runlog_relay_skipped_files_total", reason="unsafe_name") >= 1
    assert sidecar.metric("runlog_relay_skipped_files_total", reason="not_regular") >= 1
    # The torn file completes: it is uploaded and no longer reported.
    fixed = write_json(run / "BranchLog-torn.json", {"half": 2})
    wait_until(
        lambda: object_body(s3_client, bucket, "run-1/BranchLog-torn") == fixed, what="fixed file"
    )
    wait_until(lambda: sidecar.metric("runlog_relay_torn_files") == 1, what="one torn file left")
    # The empty file is still torn at shutdown: exit 1 naming it.
    assert sidecar.terminate() == 1
    assert "BranchLog-empty.json" in sidecar.log
    keys = set(bucket_objects(s3_client, bucket))
    assert keys == {"run-1/RunLog", "run-1/BranchLog-torn"}, keys
    assert "has not been complete JSON" in sidecar.log
    assert "symbolic link" in sidecar.log


#: As root, file permissions do not apply; dropping the capabilities that bypass them
#: makes the sidecar see permissions as a non-root pod would.
AS_NON_ROOT = (
    (
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    )
    if os.geteuid() == 0
    else ()
)
#: Tests whose files' permissions must apply to the sidecar.
NEEDS_PERMISSIONS = pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="needs setpriv to drop root's file access",
)


@NEEDS_PERMISSIONS
def test_an_unreadable_file_is_reported_not_fatal(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    run = source / "r"
    readable = write_json(run / "RunLog.json", {"ok": 1})
    write_json(run / "BranchLog-private.json", {"secret": 2})
    (run / "BranchLog-private.json").chmod(0o000)
    sidecar = start_sidecar(
        source, s3_server.endpoint, bucket, tmp_path / "s.log", "--once", wrapper=AS_NON_ROOT
    )
    assert sidecar.process.wait(60) == 1, sidecar.log
    assert object_body(s3_client, bucket, "r/RunLog") == readable
    assert object_body(s3_client, bucket, "r/BranchLog-private") is None
    assert "not mirrored: r/BranchLog-private.json: unreadable: Permission denied" in sidecar.log
    # Permissions fixed: the next run completes the mirror.
    (run / "BranchLog-private.json").chmod(0o644)
    again = start_sidecar(
        source, s3_server.endpoint, bucket, tmp_path / "again.log", "--once", wrapper=AS_NON_ROOT
    )
    assert again.process.wait(60) == 0, again.log
    assert_mirror(s3_client, bucket, "", source)


@NEEDS_PERMISSIONS
def test_a_run_folder_that_cannot_be_listed_is_named_not_called_complete(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    readable = write_json(source / "open" / "RunLog.json", {"ok": 1})
    write_json(source / "locked" / "RunLog.json", {"unseen": 2})
    (source / "locked").chmod(0o311)  # can be entered, not listed: its files are unknown
    try:
        sidecar = start_sidecar(
            source, s3_server.endpoint, bucket, tmp_path / "s.log", "--once", wrapper=AS_NON_ROOT
        )
        assert sidecar.process.wait(60) == 1, sidecar.log
        assert object_body(s3_client, bucket, "open/RunLog") == readable
        assert "not mirrored: locked/: unreadable folder: Permission denied" in sidecar.log
        assert "mirror complete" not in sidecar.log
    finally:
        (source / "locked").chmod(0o755)
    again = start_sidecar(
        source, s3_server.endpoint, bucket, tmp_path / "again.log", "--once", wrapper=AS_NON_ROOT
    )
    assert again.process.wait(60) == 0, again.log
    assert_mirror(s3_client, bucket, "", source)


@NEEDS_PERMISSIONS
def test_a_source_folder_that_cannot_be_listed_is_an_error_at_once(
    s3_server: S3Server, bucket: str, source: Path, tmp_path: Path
) -> None:
    write_json(source / "r" / "RunLog.json", {"ok": 1})
    source.chmod(0o311)  # stat works, listing does not (a root-squashed NFS export)
    try:
        sidecar = start_sidecar(
            source, s3_server.endpoint, bucket, tmp_path / "s.log", "--once", wrapper=AS_NON_ROOT
        )
        assert sidecar.process.wait(30) == 2, sidecar.log
    finally:
        source.chmod(0o755)
    assert f"source folder {source} cannot be listed: Permission denied" in sidecar.log


def test_deleted_files_keep_their_objects(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    body = write_json(source / "r" / "RunLog.json", {"a": 1})
    sidecar = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "s.log")
    wait_until(lambda: object_body(s3_client, bucket, "r/RunLog") == body, what="upload")
    (source / "r" / "RunLog.json").unlink()
    (source / "r").rmdir()
    assert sidecar.terminate() == 0, sidecar.log
    assert object_body(s3_client, bucket, "r/RunLog") == body


def test_outage_loses_nothing(
    any_s3: S3Endpoint, any_s3_client: Minio, any_bucket: str, source: Path, tmp_path: Path
) -> None:
    proxy = TcpProxy(any_s3.port)
    try:
        for run in range(3):
            write_json(source / f"run-{run}" / "RunLog.json", {"run": run})
        sidecar = start_sidecar(source, proxy.endpoint, any_bucket, tmp_path / "s.log")
        sidecar.wait_ready()
        wait_until(lambda: sidecar.metric("runlog_relay_pending_files") == 0, what="synced")
        proxy.outage()
        for index in range(30):
            write_json(source / f"run-{index % 3}" / f"BranchLog-{index}.json", {"i": index})
        write_json(source / "run-new" / "RunLog.json", {"new": True})  # its listing fails too
        # Well past three retries per file: giving up after a few attempts loses files.
        wait_until(
            lambda: sidecar.metric("runlog_relay_uploads_total", result="retry") >= 30 * 5,
            timeout=60,
            what="every upload retried several times during the outage",
        )
        assert sidecar.metric("runlog_relay_pending_files") == 31
        proxy.restore()
        wait_until(
            lambda: sidecar.metric("runlog_relay_pending_files") == 0, timeout=60, what="drained"
        )
        assert_mirror(any_s3_client, any_bucket, "", source)
        assert sidecar.terminate() == 0, sidecar.log
    finally:
        proxy.close()


def test_missing_bucket_reports_not_ready_then_recovers(
    s3_server: S3Server, s3_client: Minio, source: Path, tmp_path: Path
) -> None:
    name = f"late-{os.getpid()}"
    body = write_json(source / "r" / "RunLog.json", {"a": 1})
    sidecar = start_sidecar(
        source, s3_server.endpoint, name, tmp_path / "s.log", "--permanent-retry", "1"
    )
    wait_until(lambda: "NoSuchBucket" in sidecar.get("/readyz")[1], what="not ready: NoSuchBucket")
    assert sidecar.get("/readyz")[0] == 503
    assert sidecar.get("/healthz")[0] == 200  # alive: no restart loop for a config problem
    s3_client.make_bucket(name)
    wait_until(
        lambda: object_body(s3_client, name, "r/RunLog") == body, timeout=30, what="recovery"
    )
    sidecar.wait_ready()
    assert sidecar.terminate() == 0, sidecar.log


@pytest.mark.parametrize("once", [True, False])
def test_a_missing_bucket_is_an_error_even_with_nothing_to_upload(
    s3_server: S3Server, source: Path, tmp_path: Path, once: bool
) -> None:
    # An empty folder has nothing to upload, but "the bucket mirrors it" cannot be
    # confirmed without a bucket: exit 1 naming it, as the docs say (not "complete").
    name = f"absent-{os.getpid()}-{int(once)}"
    extra = ("--once",) if once else ()
    sidecar = start_sidecar(source, s3_server.endpoint, name, tmp_path / "s.log", *extra)
    if once:
        assert sidecar.process.wait(60) == 1, sidecar.log
    else:
        wait_until(lambda: "NoSuchBucket" in sidecar.get("/readyz")[1], what="not ready")
        assert sidecar.terminate() == 1, sidecar.log
    assert "gave up: listing" in sidecar.log and "NoSuchBucket" in sidecar.log
    assert "mirror complete" not in sidecar.log
    assert "mirror incomplete: 0 path(s) not mirrored; gave up" in sidecar.log


def test_create_bucket_option(
    s3_server: S3Server, s3_client: Minio, source: Path, tmp_path: Path
) -> None:
    name = f"created-{os.getpid()}"
    for run in ("r1", "r2", "r3", "r4"):  # four listings at once all meet NoSuchBucket
        write_json(source / run / "RunLog.json", {"a": 1})
    sidecar = start_sidecar(
        source, s3_server.endpoint, name, tmp_path / "s.log", "--once", "--create-bucket"
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    assert s3_client.bucket_exists(name)
    assert sidecar.log.count(f"created bucket {name}") == 1, sidecar.log
    assert_mirror(s3_client, name, "", source)


def test_wrong_credentials_are_permanent_and_never_logged(source: Path, tmp_path: Path) -> None:
    strict = start_s3_server(tmp_path / "strict.log", enforce_auth=True)
    try:
        write_json(source / "r" / "RunLog.json", {"a": 1})
        secret = "Sup3rS3cretValue-do-not-log"
        env = {"AWS_ACCESS_KEY_ID": "AKIAWRONGKEY", "AWS_SECRET_ACCESS_KEY": secret}
        sidecar = start_sidecar(
            source,
            strict.endpoint,
            "runnable",
            tmp_path / "s.log",
            "--permanent-retry",
            "0.5",
            env=env,
        )
        wait_until(
            lambda: (
                sidecar.get("/readyz")[0] == 503
                and "InvalidAccessKeyId" in sidecar.get("/readyz")[1]
            ),
            what="not ready with InvalidAccessKeyId",
        )
        # Retried every 0.5 s: after several retries, still one ERROR and no WARNING
        # (one line per distinct problem, a fixed slow retry).
        server_log = tmp_path / "strict.log"
        wait_until(
            lambda: server_log.read_text(errors="replace").count("GET /runnable?") >= 5,
            what="several retries at the server",
        )
        store_lines = [
            line
            for line in sidecar.log.splitlines()
            if "runlog_relay.sidecar" in line and ("ERROR" in line or "WARNING" in line)
        ]
        assert len(store_lines) == 1, store_lines
        assert "ERROR" in store_lines[0] and "retrying every 0.5s" in store_lines[0]
        metrics_text = sidecar.get("/metrics")[1]
        assert sidecar.terminate() == 1
        assert secret not in sidecar.log
        assert secret not in metrics_text
        assert "InvalidAccessKeyId" in sidecar.log
        once = start_sidecar(
            source, strict.endpoint, "runnable", tmp_path / "once.log", "--once", env=env
        )
        assert once.process.wait(60) == 1
        assert secret not in once.log
    finally:
        strict.stop()


def test_large_file_goes_up_in_parts(
    any_s3: S3Endpoint, any_s3_client: Minio, any_bucket: str, source: Path, tmp_path: Path
) -> None:
    path = source / "big-run" / "RunLog.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"payload": "y" * (70 * 1024 * 1024)}))
    sidecar = start_sidecar(source, any_s3.endpoint, any_bucket, tmp_path / "s.log", "--once")
    assert sidecar.process.wait(180) == 0, sidecar.log
    stat = any_s3_client.stat_object(any_bucket, "big-run/RunLog")
    assert stat.etag is not None and stat.etag.strip('"').endswith("-5")  # 16 MiB parts
    assert object_body(any_s3_client, any_bucket, "big-run/RunLog") == path.read_bytes()


def test_invalid_settings_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    # A bad flag is a usage error naming the flag, as it is parsed.
    sidecar = start_sidecar(tmp_path, "ftp://nope", "BAD_BUCKET", tmp_path / "s.log", metrics=False)
    assert sidecar.process.wait(30) == 2
    assert "argument --endpoint: endpoint must be http(s)://HOST[:PORT]" in sidecar.log
    # Bad variables are listed together, each with its variable.
    sidecar = start_sidecar(
        tmp_path,
        None,
        None,
        tmp_path / "env.log",
        metrics=False,
        env={"RUNLOG_RELAY_ENDPOINT": "ftp://nope", "RUNLOG_RELAY_BUCKET": "BAD_BUCKET"},
    )
    assert sidecar.process.wait(30) == 2
    assert "endpoint: " in sidecar.log and "(RUNLOG_RELAY_ENDPOINT)" in sidecar.log
    assert "bucket: " in sidecar.log and "(RUNLOG_RELAY_BUCKET)" in sidecar.log


def test_polling_mode_mirrors_without_inotify(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = start_sidecar(
        source,
        s3_server.endpoint,
        bucket,
        tmp_path / "s.log",
        "--force-polling",
        "--poll-interval",
        "0.1",
        "--rescan-interval",
        "3600",  # so only the poller can see the change
    )
    sidecar.wait_ready()
    body = write_json(source / "nfs-run" / "RunLog.json", {"polled": True})
    wait_until(
        lambda: object_body(s3_client, bucket, "nfs-run/RunLog") == body, what="polled upload"
    )
    rewritten = write_json(source / "nfs-run" / "RunLog.json", {"polled": "again"})
    wait_until(
        lambda: object_body(s3_client, bucket, "nfs-run/RunLog") == rewritten, what="rewrite"
    )
    assert sidecar.terminate() == 0, sidecar.log


def test_metrics_reflect_the_write_and_sync_activity(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "s.log")
    sidecar.wait_ready()
    sizes = []
    for run in ("run-a", "run-b"):
        for name in ("RunLog", "BranchLog-x"):
            sizes.append(len(write_json(source / run / f"{name}.json", {"run": run, "name": name})))
    wait_until(
        lambda: (
            sidecar.metric("runlog_relay_uploads_total", result="success") == 4
            and sidecar.metric("runlog_relay_pending_files") == 0
        ),
        what="4 uploads, confirmed",
    )
    samples = sidecar.metrics()

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), -1.0)

    assert value("runlog_relay_fs_write_bytes_total") == sum(sizes)
    assert value("runlog_relay_upload_bytes_total") == sum(sizes)
    assert value("runlog_relay_fs_versions_total") == 4
    # At least one event per new run folder; files written before inotify armed the new
    # folder's watch arrive through the folder scan instead of their own events.
    assert value("runlog_relay_fs_events_total") >= 2
    assert value("runlog_relay_sync_lag_seconds_count") == 4
    assert 0 < value("runlog_relay_sync_lag_seconds_sum") < 4 * 5.0
    assert value("runlog_relay_pending_files") == 0
    assert value("runlog_relay_runs_tracked") == 2
    assert value("runlog_relay_files_tracked") == 4
    assert value("runlog_relay_sidecar_store_ready") == 1
    assert value("runlog_relay_uploads_total", result="retry") == 0
    assert value("runlog_relay_last_sync_timestamp_seconds") > 1.7e9
    # Bounded label values: no path, key or run id anywhere in a label.
    for _, labels in samples:
        for _, label_value in labels:
            assert "run-a" not in label_value and "/" not in label_value
    assert sidecar.terminate() == 0, sidecar.log
