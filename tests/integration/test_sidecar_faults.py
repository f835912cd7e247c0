"""The sidecar as a real subprocess under faults: a PUT that lands late, a first sync that
cannot finish, exhausted inotify limits (provoked for real in a user namespace, where the
limits are the namespace's own), a replaced source folder, files that are pathological."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from minio import Minio

from tests.support.files import write_json
from tests.support.httpproxy import HttpProxy
from tests.support.mirror import assert_mirror, object_body
from tests.support.s3server import S3Server
from tests.support.sidecar import SidecarProcess, start_sidecar
from tests.support.tcpproxy import listen_on_loopback
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def inotify_fds(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                count += 1
        except OSError:
            continue
    return count


# --------------------------------------------------------------------------- 9.3


def test_a_put_that_lands_late_is_found_and_the_latest_version_uploaded_again(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    proxy = HttpProxy(s3_server.port)
    try:
        write_json(source / "r" / "BranchLog-other.json", {"other": 1})
        sidecar = start_sidecar(source, proxy.endpoint, bucket, tmp_path / "s.log")
        sidecar.wait_ready()
        path = source / "r" / "RunLog.json"
        v1 = json.dumps({"status": "RUNNING"}, indent=4).encode()
        proxy.reorder_put("r/RunLog", v1)
        path.write_bytes(v1)
        assert proxy.kept.wait(30), sidecar.log  # v1's PUT: connection reset, kept back
        v2 = write_json(path, {"status": "SUCCESS"})
        # v2 goes to the server, then v1 lands on top of it, then the sidecar hears of v2.
        assert proxy.reordered.wait(30), sidecar.log
        wait_until(
            lambda: sidecar.metric("runlog_relay_bucket_mismatches_total") == 1,
            what="the stale object found by a listing",
        )
        wait_until(lambda: object_body(s3_client, bucket, "r/RunLog") == v2, what="v2 again")
        assert sidecar.terminate() == 0, sidecar.log
        assert object_body(s3_client, bucket, "r/RunLog") == v2
        assert_mirror(s3_client, bucket, "", source)
    finally:
        proxy.close()


# --------------------------------------------------------------------------- 9.9


def test_readyz_stays_false_until_the_first_sync_is_done(
    s3_server: S3Server, bucket: str, source: Path, tmp_path: Path
) -> None:
    write_json(source / "r" / "RunLog.json", {"a": 1})
    proxy = HttpProxy(s3_server.port)
    proxy.hold_lists()
    try:
        sidecar = start_sidecar(source, proxy.endpoint, bucket, tmp_path / "s.log")
        wait_until(lambda: proxy.lists_waiting, what="the first listing under way")
        status, reason = sidecar.get("/readyz")
        assert (status, reason.strip()) == (503, "first sync not finished")
        assert sidecar.get("/healthz")[0] == 200
        proxy.release_lists()
        sidecar.wait_ready()
        assert sidecar.terminate() == 0, sidecar.log
    finally:
        proxy.close()


def test_force_polling_uses_no_inotify_at_all(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    watching = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "w.log")
    watching.wait_ready()
    assert inotify_fds(watching.process.pid) == 1
    assert watching.terminate() == 0
    polling = start_sidecar(
        source,
        s3_server.endpoint,
        bucket,
        tmp_path / "p.log",
        "--force-polling",
        "--poll-interval",
        "0.1",
    )
    polling.wait_ready()
    assert inotify_fds(polling.process.pid) == 0
    body = write_json(source / "nfs" / "RunLog.json", {"polled": True})
    wait_until(lambda: object_body(s3_client, bucket, "nfs/RunLog") == body, what="polled")
    assert polling.terminate() == 0, polling.log


def test_exit_is_1_and_names_the_files_when_the_drain_budget_runs_out(
    s3_server: S3Server, bucket: str, source: Path, tmp_path: Path
) -> None:
    proxy = HttpProxy(s3_server.port)
    try:
        sidecar = start_sidecar(
            source, proxy.endpoint, bucket, tmp_path / "s.log", "--drain-timeout", "1"
        )
        sidecar.wait_ready()
        proxy.hold_lists()  # a new run cannot be compared: its uploads never start
        # Moved in (an old run put back), so it must be compared with the bucket first.
        staged = tmp_path / "staged" / "late-run"
        for index in range(3):
            write_json(staged / f"BranchLog-{index}.json", {"i": index})
        staged.rename(source / "late-run")
        wait_until(lambda: proxy.lists_waiting, what="the new run's listing held")
        assert sidecar.terminate() == 1, sidecar.log
        for index in range(3):
            assert f"not mirrored: late-run/BranchLog-{index}.json" in sidecar.log
        assert "drain budget of 1s ran out" in sidecar.log
    finally:
        proxy.close()


# --------------------------------------------------------------------------- 9.1


def test_a_pathological_but_valid_file_is_mirrored_and_costs_nothing_else(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    deep = source / "r" / "RunLog.json"
    deep.parent.mkdir()
    deep.write_text('{"a": ' * 1000 + "1" + "}" * 1000)  # RecursionError for json.loads
    for index in range(5):
        write_json(source / "r" / f"BranchLog-{index}.json", {"i": index})
    sidecar = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "s.log")
    sidecar.wait_ready()  # one odd file does not block readiness
    wait_until(lambda: object_body(s3_client, bucket, "r/RunLog") == deep.read_bytes())
    assert sidecar.terminate() == 0, sidecar.log
    assert_mirror(s3_client, bucket, "", source)


# --------------------------------------------------------------------------- 9.7


def _userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c", "echo 7 > /proc/sys/user/max_inotify_watches"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_userns = pytest.mark.skipif(
    not _userns_works(), reason="needs unprivileged user namespaces (unshare -U)"
)


def in_userns(**limits: int) -> tuple[str, ...]:
    """Run the sidecar in a user namespace of its own, with these inotify limits: they
    are that namespace's, so the test exhausts nothing that other processes use."""
    settings = " && ".join(
        f"echo {value} > /proc/sys/user/{name}" for name, value in limits.items()
    )
    return ("unshare", "-U", "-r", "sh", "-c", f'{settings} && exec "$0" "$@"')


@needs_userns
def test_when_the_watch_limit_is_reached_unwatched_folders_are_polled(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    for run in range(5):
        write_json(source / f"run-{run}" / "RunLog.json", {"run": run})
    sidecar = start_sidecar(
        source,
        s3_server.endpoint,
        bucket,
        tmp_path / "s.log",
        "--poll-interval",
        "0.2",
        "--rescan-interval",
        "3600",  # so only the poll of the unwatched folders can see a change
        wrapper=in_userns(max_inotify_watches=3),  # the source folder and two runs
    )
    wait_until(lambda: "max_user_watches" in sidecar.get("/readyz")[1], what="readiness says why")
    assert sidecar.get("/readyz")[0] == 503
    assert sidecar.metric("runlog_relay_unwatched_folders") == 3
    assert sidecar.log.count("inotify watch limit reached") == 1  # logged once, with the fix
    assert "sysctl -w fs.inotify.max_user_watches" in sidecar.log
    wait_until(lambda: sidecar.metric("runlog_relay_pending_files") == 0, what="synced")
    # A change in every folder, watched or not, appears within the poll interval.
    bodies = {
        f"run-{run}/RunLog": write_json(source / f"run-{run}" / "RunLog.json", {"v": 2})
        for run in range(5)
    }
    wait_until(
        lambda: all(object_body(s3_client, bucket, key) == body for key, body in bodies.items()),
        timeout=10,
        what="every change mirrored",
    )
    assert sidecar.terminate() == 0, sidecar.log


@needs_userns
def test_without_an_inotify_instance_the_whole_folder_is_polled(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = start_sidecar(
        source,
        s3_server.endpoint,
        bucket,
        tmp_path / "s.log",
        "--poll-interval",
        "0.2",
        "--rescan-interval",
        "3600",
        wrapper=in_userns(max_inotify_instances=0),
    )
    wait_until(lambda: "max_user_instances" in sidecar.get("/readyz")[1], what="readiness says why")
    assert inotify_fds(sidecar.process.pid) == 0
    assert "sysctl -w fs.inotify.max_user_instances" in sidecar.log
    body = write_json(source / "r" / "RunLog.json", {"a": 1})
    wait_until(lambda: object_body(s3_client, bucket, "r/RunLog") == body, timeout=10)
    assert sidecar.terminate() == 0, sidecar.log


def test_a_source_folder_replaced_under_the_sidecar_is_watched_again(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = start_sidecar(
        source, s3_server.endpoint, bucket, tmp_path / "s.log", "--rescan-interval", "3600"
    )
    sidecar.wait_ready()
    source.rename(tmp_path / "old-volume")
    source.mkdir()
    wait_until(lambda: sidecar.log.count("watch armed") >= 2 or "re-arm" in sidecar.log)
    body = write_json(source / "r" / "RunLog.json", {"new": True})
    # Within seconds, not at the next rescan (an hour away here).
    wait_until(lambda: object_body(s3_client, bucket, "r/RunLog") == body, timeout=5)
    assert sidecar.terminate() == 0, sidecar.log


# --------------------------------------------------------------------------- EMFILE


EMFILE_SCRIPT = textwrap.dedent(
    """
    import json, os, queue, resource, sys
    from pathlib import Path
    from prometheus_client import CollectorRegistry
    from runlog_relay.config.settings import SidecarSettings
    from runlog_relay.metrics import SidecarMetrics
    from runlog_relay.sidecar.detect import Detector
    from runlog_relay.sidecar.types import Listed, Rescan

    root = Path(sys.argv[1])
    now = [1000.0]
    submitted, listings = [], []
    detector = Detector(
        SidecarSettings(source=root), queue.SimpleQueue(),
        submit=lambda r: submitted.append(r.key) or True,
        request_listing=lambda runs, purpose: listings.append((runs, purpose)),
        metrics=SidecarMetrics(CollectorRegistry()), clock=lambda: now[0],
    )

    def step(message=None):
        with detector._lock:
            detector._step(message)
        while listings:
            runs, purpose = listings.pop()
            with detector._lock:
                detector._step(Listed(run_ids=runs, objects={}, purpose=purpose))

    step(Rescan(reason="start"))
    first = sorted(submitted)
    (root / "r2" / "BranchLog-new.json").write_text("{}")
    # Run out of descriptors for real: a low limit, and every descriptor taken right after
    # the source folder itself was listed, so listing a run folder fails with EMFILE.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    hogs = []
    real_scandir = os.scandir

    def scandir(path):
        entries = real_scandir(path)
        if Path(path) == root and not hogs:
            entries = list(entries)
            try:
                while True:
                    hogs.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == 24, exc
        return iter(entries) if isinstance(entries, list) else entries

    os.scandir = scandir
    step(Rescan(reason="periodic"))
    tracked_during = detector.status().files
    for fd in hogs:
        os.close(fd)
    now[0] += 1.0  # well before the next rescan (60 s)
    step()
    after = sorted(submitted)
    print(json.dumps({"first": first, "tracked_during": tracked_during, "after": after}))
    """
)


def test_emfile_while_scanning_a_run_folder_is_retried_soon(tmp_path: Path) -> None:
    root = tmp_path / "run_logs"
    for run in ("r1", "r2"):
        write_json(root / run / "RunLog.json", {"run": run})
    result = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["first"] == ["r1/RunLog", "r2/RunLog"]
    assert data["tracked_during"] == 2  # a folder that could not be listed is not deleted
    assert data["after"] == ["r1/RunLog", "r2/BranchLog-new", "r2/RunLog"]


# --------------------------------------------------------------------------- vanished objects


def _wipe(client: Minio, bucket: str, *, remove_bucket: bool = False) -> int:
    """Delete every object behind the sidecar's back (by hand, a lifecycle rule)."""
    names = [obj.object_name for obj in client.list_objects(bucket, recursive=True)]
    for name in names:
        assert name is not None
        client.remove_object(bucket, name)
    if remove_bucket:
        client.remove_bucket(bucket)
    return len(names)


def _synced_sidecar(
    source: Path, endpoint: str, bucket: str, log: Path, client: Minio, *extra: str
) -> SidecarProcess:
    write_json(source / "r1" / "RunLog.json", {"status": "RUNNING"})
    write_json(source / "r1" / "BranchLog-x.json", {"b": 1})
    write_json(source / "r2" / "RunLog.json", {"status": "RUNNING"})
    sidecar = start_sidecar(source, endpoint, bucket, log, *extra)
    sidecar.wait_ready()
    wait_until(lambda: len(list(client.list_objects(bucket, recursive=True))) == 3, what="mirrored")
    return sidecar


def test_objects_deleted_behind_a_running_sidecar_are_uploaded_again_by_the_drain(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = _synced_sidecar(source, s3_server.endpoint, bucket, tmp_path / "s.log", s3_client)
    assert _wipe(s3_client, bucket) == 3
    assert sidecar.terminate() == 0, sidecar.log
    assert_mirror(s3_client, bucket, "", source)
    assert "deleted or changed behind its back" in sidecar.log


def test_a_bucket_deleted_behind_a_running_sidecar_is_created_again_with_create_bucket(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = _synced_sidecar(
        source, s3_server.endpoint, bucket, tmp_path / "s.log", s3_client, "--create-bucket"
    )
    _wipe(s3_client, bucket, remove_bucket=True)
    # A write meets NoSuchBucket: the bucket is created again (once), and every run
    # confirmed against it, so the older objects come back without waiting for SIGTERM.
    write_json(source / "r2" / "RunLog.json", {"status": "SUCCESS"})
    wait_until(
        lambda: (
            s3_client.bucket_exists(bucket)
            and len(list(s3_client.list_objects(bucket, recursive=True))) == 3
        ),
        what="the bucket created again and refilled",
    )
    assert sidecar.terminate() == 0, sidecar.log
    assert_mirror(s3_client, bucket, "", source)
    assert sidecar.log.count(f"created bucket {bucket}") == 1, sidecar.log


def test_a_bucket_deleted_behind_a_running_sidecar_fails_the_drain_naming_the_files(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    sidecar = _synced_sidecar(source, s3_server.endpoint, bucket, tmp_path / "s.log", s3_client)
    _wipe(s3_client, bucket, remove_bucket=True)
    assert sidecar.terminate() == 1, sidecar.log
    for name in ("r1/RunLog.json", "r1/BranchLog-x.json", "r2/RunLog.json"):
        assert f"not mirrored: {name}: not confirmed in the bucket" in sidecar.log
    assert "NoSuchBucket" in sidecar.log


# --------------------------------------------------------------------------- out of descriptors

EMFILE_READ_SCRIPT = textwrap.dedent(
    """
    import json, os, queue, resource, sys
    from pathlib import Path
    from prometheus_client import CollectorRegistry
    from runlog_relay.config.settings import SidecarSettings
    from runlog_relay.metrics import SidecarMetrics
    from runlog_relay.sidecar.detect import Detector
    from runlog_relay.sidecar.types import Listed, PathsChanged, Rescan

    root = Path(sys.argv[1])
    now = [1000.0]
    submitted, listings = [], []
    detector = Detector(
        SidecarSettings(source=root), queue.SimpleQueue(),
        submit=lambda r: submitted.append(r.key) or True,
        request_listing=lambda runs, purpose: listings.append((runs, purpose)),
        metrics=SidecarMetrics(CollectorRegistry()), clock=lambda: now[0],
    )

    def step(message=None):
        with detector._lock:
            detector._step(message)
        while listings:
            runs, purpose = listings.pop()
            with detector._lock:
                detector._step(Listed(run_ids=runs, objects={}, purpose=purpose))

    step(Rescan(reason="start"))
    first = sorted(submitted)
    path = root / "r1" / "RunLog.json"
    path.write_text('{"v": 2}')
    # Out of descriptors for real: a low limit, every descriptor taken, then the change.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    hogs = []
    try:
        while True:
            hogs.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == 24, exc
    step(PathsChanged(frozenset({path}), now[0]))
    during = {"unmirrored": detector.unmirrored(), "pending": detector.status().pending}
    for fd in hogs:
        os.close(fd)
    now[0] += 60.0  # the backoff's cap: the rescan interval
    step()
    print(json.dumps({"first": first, "during": during, "after": sorted(submitted)}))
    """
)


def test_out_of_descriptors_while_reading_a_file_is_retried_not_unreadable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run_logs"
    write_json(root / "r1" / "RunLog.json", {"v": 1})
    result = subprocess.run(
        [sys.executable, "-c", EMFILE_READ_SCRIPT, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["first"] == ["r1/RunLog"]
    assert data["during"] == {"unmirrored": {"r1/RunLog.json": "not read yet"}, "pending": 1}
    assert data["after"] == ["r1/RunLog", "r1/RunLog"]  # the new version, once it can be read
    assert "ulimit -n" in result.stderr


# --------------------------------------------------------------------------- a silent store


def test_a_store_that_accepts_and_never_answers_is_warned_about_before_the_read_timeout(
    source: Path, tmp_path: Path
) -> None:
    # The kernel completes the handshakes of a listening socket nobody accepts from:
    # requests are sent and never answered (a blackholed proxy, a hung server).
    silent = listen_on_loopback()
    try:
        write_json(source / "r" / "RunLog.json", {"a": 1})
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        sidecar = start_sidecar(
            source, endpoint, "bucket", tmp_path / "s.log", "--drain-timeout", "1"
        )
        # Well before the 60 s read timeout: after the connect timeout's 5 s.
        wait_until(
            lambda: "object store has not answered for" in sidecar.log,
            timeout=30,
            what="a warning about the silent store",
        )
        assert sidecar.log.count("has not answered for") == 1
        assert sidecar.terminate() == 1, sidecar.log
    finally:
        silent.close()
