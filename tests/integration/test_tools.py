"""pull, verify and runs against moto's and SeaweedFS's S3 servers, on runs written by real
runnable pipelines.

Real parts: runnable 0.50 pipelines (parallel + map, in subprocesses) write the run
logs; the project's ObjectStore uploads them with the layout mapping (a stand-in for
the sidecar: :func:`upload_like_the_sidecar`); the tools run through
``runlog_relay.cli.main`` and, for exit codes, as real ``python -m runlog_relay``
subprocesses; runnable's own stores read what ``pull`` wrote. Wrong credentials are
tested against a second moto server, in its own process, that enforces signatures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from runlog_relay.layout import Layout
from runlog_relay.objectstore import MULTIPART_THRESHOLD, ObjectStore
from runlog_relay.runnable_compat import (
    read_run_log_from_bucket,
    read_run_log_from_folder,
    run_pipeline,
)
from tests.support.etagproxy import EtagRewritingProxy
from tests.support.s3server import S3Endpoint, free_port, start_auth_s3_server
from tests.support.toolcli import (
    ACCESS_KEY,
    SECRET_KEY,
    bucket_store,
    cli,
    upload_like_the_sidecar,
)
from tests.unit.test_s3http import ScriptedServer

pytestmark = [pytest.mark.integration]

CHUNKED_RUNS = ("tools-a", "tools-b")
FAILED_RUN = "tools-failed"  # a copy of tools-b whose run log says FAIL
SINGLE_RUN = "tools-s"
# moto keeps its buckets in process-wide state shared by every ThreadedMotoServer, so other
# test modules' objects would show up here: this module's runs live in a bucket of its own.
BUCKET = f"tools-{os.getpid()}-{time.time_ns() % 10**9}"
CHUNKED_AT = f"{BUCKET}/run-logs"  # runnable's bucket[/prefix] form
SINGLE_AT = f"{BUCKET}/single"


@dataclass(frozen=True)
class Runs:
    chunked: Path  # log folder with CHUNKED_RUNS and FAILED_RUN (chunked-fs)
    single: Path  # log folder with SINGLE_RUN (file-system)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def endpoint(any_s3: S3Endpoint) -> str:
    """moto's server, then SeaweedFS (both accept the tools' default minioadmin key)."""
    return any_s3.endpoint


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Real runnable runs in log folders (made once, whichever server is under test)."""
    base = tmp_path_factory.mktemp("tools-runs")
    chunked, single = base / "chunked", base / "single"
    for run_id in CHUNKED_RUNS:
        run_pipeline(chunked, run_id, layout="chunked", workdir=base / "work", timeout=60)
    run_pipeline(single, SINGLE_RUN, layout="single", workdir=base / "work", timeout=60)
    # A failed run: runnable's own document with the status a failure leaves.
    shutil.copytree(chunked / CHUNKED_RUNS[1], chunked / FAILED_RUN)
    run_log = chunked / FAILED_RUN / "RunLog.json"
    document = json.loads(run_log.read_text())
    document.update(run_id=FAILED_RUN, status="FAIL")
    run_log.write_text(json.dumps(document, indent=4))
    return Runs(chunked=chunked, single=single)


@pytest.fixture(scope="module")
def runs(local_runs: Runs, endpoint: str) -> Runs:
    """The runs, mirrored to CHUNKED_AT and SINGLE_AT on the server under test."""
    assert upload_like_the_sidecar(endpoint, CHUNKED_AT, local_runs.chunked, Layout.CHUNKED) == 18
    assert upload_like_the_sidecar(endpoint, SINGLE_AT, local_runs.single, Layout.SINGLE) == 1
    return local_runs


def store_args(endpoint: str, location: str = CHUNKED_AT, *more: str) -> list[str]:
    return ["--endpoint", endpoint, "--bucket", location, *more]


def fresh_location(name: str) -> str:
    return f"{BUCKET}/{name}-{time.monotonic_ns()}"


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --------------------------------------------------------------------------------- runs


def test_runs_json_reads_status_times_chunks_and_size(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs
) -> None:
    result = cli(capsys, "runs", "--json", *store_args(endpoint))
    assert result.code == 0, result.err
    data = result.json()
    assert data["bucket"] == CHUNKED_AT and data["layout"] == "chunked"
    by_id = {run["run_id"]: run for run in data["runs"]}
    assert sorted(by_id) == sorted([*CHUNKED_RUNS, FAILED_RUN])
    for run_id in CHUNKED_RUNS:
        run = by_id[run_id]
        folder = runs.chunked / run_id
        document = json.loads((folder / "RunLog.json").read_bytes())
        steps = document["steps"]
        assert run["status"] == "SUCCESS"
        assert run["chunks"] == 6  # RunLog + 2 parallel + 3 map branch logs
        assert run["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
        # The first step starts the run, runnable's success node ends it.
        first = steps["prepare"]["attempts"][0]["start_time"]
        last = steps["success"]["attempts"][-1]["end_time"]
        assert datetime.fromisoformat(run["start_time"]) == datetime.fromisoformat(first)
        assert datetime.fromisoformat(run["end_time"]) == datetime.fromisoformat(last)
        expected = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
        assert run["duration_seconds"] == pytest.approx(expected)
        assert run["last_modified"] is not None and run["problem"] is None
    assert by_id[FAILED_RUN]["status"] == "FAIL"


def test_runs_status_filter_and_limit(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs
) -> None:
    failed = cli(capsys, "runs", "--json", "--status", "fail", *store_args(endpoint))
    assert [run["run_id"] for run in failed.json()["runs"]] == [FAILED_RUN]

    everything = cli(capsys, "runs", "--json", *store_args(endpoint)).json()["runs"]
    stamps = [run["last_modified"] for run in everything]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    limited = cli(capsys, "runs", "--json", "--limit", "1", *store_args(endpoint)).json()
    assert [run["run_id"] for run in limited["runs"]] == [everything[0]["run_id"]]

    success = cli(
        capsys, "runs", "--json", "--status", "SUCCESS", "--limit", "5", *store_args(endpoint)
    ).json()
    assert sorted(run["run_id"] for run in success["runs"]) == sorted(CHUNKED_RUNS)


def test_runs_table_for_people(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs
) -> None:
    result = cli(capsys, "runs", *store_args(endpoint))
    assert result.code == 0
    lines = result.out.splitlines()
    header = next(line for line in lines if "RUN ID" in line)
    for column in ("STATUS", "STARTED", "ENDED", "DURATION", "CHUNKS", "SIZE"):
        assert column in header
    row = next(line for line in lines if line.lstrip().startswith("tools-a "))
    assert row.split()[1] == "SUCCESS"
    assert " 6 " in row and "KiB" in row
    failed_row = next(line for line in lines if line.lstrip().startswith(FAILED_RUN))
    assert "FAIL" in failed_row


def test_runs_single_layout_reads_the_double_encoded_document(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs
) -> None:
    result = cli(capsys, "runs", "--json", *store_args(endpoint, SINGLE_AT, "--layout", "single"))
    [run] = result.json()["runs"]
    assert run["run_id"] == SINGLE_RUN and run["status"] == "SUCCESS" and run["chunks"] == 1
    assert run["start_time"] < run["end_time"]


# -------------------------------------------------------------------------------- verify


def test_verify_in_sync(capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs) -> None:
    result = cli(capsys, "verify", "--source", str(runs.chunked), "--json", *store_args(endpoint))
    assert result.code == 0, result.out
    data = result.json()
    assert data["in_sync"] is True and data["differences"] == []
    assert data["counts"]["same"] == 18

    human = cli(capsys, "verify", "--source", str(runs.chunked), *store_args(endpoint))
    assert human.code == 0
    assert "IN SYNC: 18 in sync" in human.out


def test_verify_names_a_file_whose_key_the_prefix_makes_too_long(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs, tmp_path: Path
) -> None:
    """An S3 key is at most 1,024 bytes, prefix included: the sidecar never uploads such a
    file, and verify says why it is not in the bucket instead of calling it missing."""
    run_id = "r" * 200
    source = tmp_path / "logs"
    (source / run_id).mkdir(parents=True)
    (source / run_id / "RunLog.json").write_text('{"run_id": "r", "status": "SUCCESS"}')
    prefix = "/".join(["p" * 199] * 4)  # 799 bytes, + "/" + run id + "/RunLog" > 1,024
    location = f"{fresh_location('long')}/{prefix}"
    result = cli(
        capsys, "verify", "--source", str(source), "--json", *store_args(endpoint, location)
    )
    assert result.code == 1, result.out
    data = result.json()
    assert data["in_sync"] is False
    assert [s["reason"] for s in data["skipped"]] == ["key_too_long"]
    assert data["differences"] == []  # not "missing": it can never be in the bucket


def test_verify_reports_each_kind_of_difference(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs, tmp_path: Path
) -> None:
    folder = tmp_path / "logs"
    shutil.copytree(runs.chunked / "tools-a", folder / "tools-a")
    location = fresh_location("verify")
    upload_like_the_sidecar(endpoint, location, folder, Layout.CHUNKED)
    run = folder / "tools-a"
    now = time.time()

    # Rewritten after the upload: the local side is newer.
    document = json.loads((run / "RunLog.json").read_text())
    (run / "RunLog.json").write_text(json.dumps({**document, "tag": "changed"}, indent=4))
    os.utime(run / "RunLog.json", (now + 5, now + 5))
    # Content the bucket never had, with an old mtime: the bucket's copy is newer.
    branch = json.loads((run / "BranchLog-map.a.json").read_text())
    (run / "BranchLog-map.a.json").write_text(json.dumps({**branch, "status": "FAIL"}))
    os.utime(run / "BranchLog-map.a.json", (now - 3600, now - 3600))
    # Caught half-written, as runnable's in-place rewrites can be.
    text = (run / "BranchLog-map.b.json").read_text()
    (run / "BranchLog-map.b.json").write_text(text[: len(text) // 2])
    # Not uploaded yet; and deleted locally.
    (run / "BranchLog-extra.json").write_text('{"internal_name": "extra"}')
    (run / "BranchLog-map.c.json").unlink()
    # Never followed, never a difference.
    (run / "BranchLog-link.json").symlink_to(run / "BranchLog-map.a.json")

    result = cli(
        capsys, "verify", "--source", str(folder), "--json", *store_args(endpoint, location)
    )
    assert result.code == 1
    data = result.json()
    assert data["in_sync"] is False
    states = {(d["state"], d["path"]): d for d in data["differences"]}
    assert set(states) == {
        ("differs", "tools-a/RunLog.json"),
        ("differs", "tools-a/BranchLog-map.a.json"),
        ("torn", "tools-a/BranchLog-map.b.json"),
        ("missing", "tools-a/BranchLog-extra.json"),
        ("remote_only", "tools-a/BranchLog-map.c.json"),
    }
    assert states[("differs", "tools-a/RunLog.json")]["newer"] == "local"
    assert states[("differs", "tools-a/BranchLog-map.a.json")]["newer"] == "remote"
    assert (
        states[("remote_only", "tools-a/BranchLog-map.c.json")]["key"] == "tools-a/BranchLog-map.c"
    )
    assert "not complete JSON" in states[("torn", "tools-a/BranchLog-map.b.json")]["detail"]
    assert data["counts"] == {
        "same": 2,
        "missing": 1,
        "differs": 2,
        "remote_only": 1,
        "torn": 1,
        "uncompared": 0,
        "skipped": 1,
        "ignored_remote": 0,
    }
    assert data["skipped"][0]["reason"] == "symlink"

    human = cli(capsys, "verify", "--source", str(folder), *store_args(endpoint, location))
    assert human.code == 1
    assert "NOT IN SYNC" in human.out
    lines = {" ".join(line.split()) for line in human.out.splitlines()}  # spacing aside
    assert "differs tools-a/RunLog.json the local file is newer (the bucket is behind)" in lines
    assert "remote only tools-a/BranchLog-map.c only in the bucket" in lines
    link = folder / "tools-a" / "BranchLog-link.json"
    assert any(line.startswith(f"skipped {link} symlink:") for line in lines)


def test_verify_single_layout_and_a_torn_file(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs, tmp_path: Path
) -> None:
    args = store_args(endpoint, SINGLE_AT, "--layout", "single")
    in_sync = cli(capsys, "verify", "--source", str(runs.single), "--json", *args)
    assert in_sync.code == 0 and in_sync.json()["counts"]["same"] == 1

    folder = tmp_path / "single"
    shutil.copytree(runs.single, folder)
    (folder / f"{SINGLE_RUN}.json").write_bytes(b"")  # runnable's open("w") just truncated it
    torn = cli(capsys, "verify", "--source", str(folder), "--json", *args)
    assert torn.code == 1
    [diff] = torn.json()["differences"]
    assert diff["state"] == "torn" and diff["detail"] == "empty file"

    # UTF-16 JSON: json.loads(bytes) would take it, but runnable writes UTF-8 and the single
    # layout re-encodes the text; the sidecar calls it torn, and so does verify (no crash).
    (folder / f"{SINGLE_RUN}.json").write_bytes(json.dumps({"run_id": SINGLE_RUN}).encode("utf-16"))
    utf16 = cli(capsys, "verify", "--source", str(folder), "--json", *args)
    assert utf16.code == 1
    [diff] = utf16.json()["differences"]
    assert diff["state"] == "torn" and diff["detail"] == "not UTF-8 text"


def test_verify_agrees_with_multipart_uploads(
    capsys: pytest.CaptureFixture[str], endpoint: str, tmp_path: Path
) -> None:
    """Above 16 MiB the store uploads in parts; the listed ETag is then S3's composite."""
    folder = tmp_path / "big"
    (folder / "big-run").mkdir(parents=True)
    body = json.dumps({"run_id": "big-run", "pad": "x" * (MULTIPART_THRESHOLD + 1024)})
    (folder / "big-run" / "RunLog.json").write_text(body)
    location = fresh_location("multipart")
    upload_like_the_sidecar(endpoint, location, folder, Layout.CHUNKED)

    result = cli(
        capsys, "verify", "--source", str(folder), "--json", *store_args(endpoint, location)
    )
    assert result.code == 0, result.out
    assert result.json()["counts"]["same"] == 1


def test_verify_and_pull_agree_on_big_objects_other_tools_wrote(
    capsys: pytest.CaptureFixture[str], any_s3: S3Endpoint, tmp_path: Path
) -> None:
    """runnable's own store, boto3 and mc PUT a big body whole (plain MD5 ETag) or in parts
    of their own size: verify called the first "differs" while pull said "up to date"."""
    folder = tmp_path / "big"
    (folder / "big-run").mkdir(parents=True)
    body = json.dumps({"run_id": "big-run", "pad": "y" * (MULTIPART_THRESHOLD + 1024)}).encode()
    (folder / "big-run" / "RunLog.json").write_bytes(body)
    location = fresh_location("foreign")
    bucket, _, prefix = location.partition("/")
    bucket_store(any_s3.endpoint, location).check_bucket(create=True)
    client = any_s3.client()
    verify = ("verify", "--source", str(folder), "--json", *store_args(any_s3.endpoint, location))
    pull = ("pull", "big-run", "--dest", str(folder), "--json")
    pull = (*pull, *store_args(any_s3.endpoint, location))

    def put(part_size: int) -> str:
        result = client.put_object(
            bucket, f"{prefix}/big-run/RunLog", io.BytesIO(body), len(body), part_size=part_size
        )
        return str(result.etag).strip('"')

    assert put(part_size=4 * MULTIPART_THRESHOLD) == hashlib.md5(body).hexdigest()  # one PUT
    whole = cli(capsys, *verify)
    assert whole.code == 0, whole.out
    assert whole.json()["counts"]["same"] == 1
    [pulled] = cli(capsys, *pull).json()["runs"]
    assert pulled["outcome"] == "up_to_date"

    assert put(part_size=5 << 20).endswith("-4")  # parts of another size, no stored MD5
    parts = cli(capsys, *verify)
    assert parts.code == 1, parts.out  # not known to be in sync, but not called different
    [diff] = parts.json()["differences"]
    assert diff["state"] == "uncompared" and "cannot compare" in diff["detail"]
    assert parts.json()["counts"]["differs"] == 0
    [pulled] = cli(capsys, *pull).json()["runs"]
    assert pulled["outcome"] == "up_to_date"  # pull reads the body to tell


def test_verify_only_named_runs(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs
) -> None:
    result = cli(
        capsys, "verify", "tools-b", "--source", str(runs.chunked), "--json", *store_args(endpoint)
    )
    assert result.code == 0
    assert result.json()["counts"]["same"] == 6


def test_verify_that_compared_nothing_is_not_in_sync(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs
) -> None:
    """A misspelt run id, or the other layout's folder: nothing was compared, and that
    was called IN SYNC, exit 0."""
    args = ("--source", str(runs.chunked), *store_args(endpoint))
    typo = cli(capsys, "verify", "tools-typo", "--json", *args)
    assert typo.code == 1, typo.out
    assert not typo.json()["in_sync"]
    assert typo.json()["not_compared"] == [
        f"run 'tools-typo' is neither in {runs.chunked} nor in {CHUNKED_AT} at {endpoint}"
    ]
    one_typo = cli(capsys, "verify", "tools-a", "tools-typo", *args)
    assert one_typo.code == 1
    assert "not compared: run 'tools-typo' is neither in" in one_typo.out
    assert "NOT IN SYNC: 6 in sync" in one_typo.out

    other_layout = cli(capsys, "verify", "--layout", "single", *args)
    assert other_layout.code == 1, other_layout.out
    assert "NOTHING COMPARED" in other_layout.out
    assert "18 local file(s) and 18 object(s) are of the chunked layout: try --layout chunked" in (
        other_layout.out.replace("\n", " ")
    )


# ---------------------------------------------------------------------------------- pull


@pytest.mark.parametrize(
    ("layout", "location", "run_id"),
    [("chunked", CHUNKED_AT, "tools-a"), ("single", SINGLE_AT, SINGLE_RUN)],
    ids=["chunked", "single"],
)
def test_pull_gives_runnable_the_run_the_bucket_holds(
    capsys: pytest.CaptureFixture[str],
    endpoint: str,
    runs: Runs,
    tmp_path: Path,
    layout: str,
    location: str,
    run_id: str,
) -> None:
    dest = tmp_path / "pulled"
    result = cli(
        capsys,
        "pull",
        run_id,
        "--dest",
        str(dest),
        *store_args(endpoint, location, "--layout", layout),
    )
    assert result.code == 0, result.err
    assert f"pulled {run_id}:" in result.out

    source = runs.chunked if layout == "chunked" else runs.single
    original = {k: v for k, v in files_of(source).items() if k.startswith(run_id)}
    assert files_of(dest) == original  # byte for byte, and no temporary files left
    from_folder = read_run_log_from_folder(dest, run_id, layout=layout)  # type: ignore[arg-type]
    from_bucket = read_run_log_from_bucket(
        endpoint,
        ACCESS_KEY,
        SECRET_KEY,
        location,
        run_id,
        layout=layout,  # type: ignore[arg-type]
    )
    assert from_folder == from_bucket
    assert from_folder["status"] == "SUCCESS"

    again = cli(
        capsys,
        "pull",
        run_id,
        "--dest",
        str(dest),
        "--json",
        *store_args(endpoint, location, "--layout", layout),
    )
    [outcome] = again.json()["runs"]
    assert again.code == 0 and outcome["outcome"] == "up_to_date" and outcome["written"] == []


def test_pull_refuses_to_overwrite_a_differing_file_unless_forced(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs, tmp_path: Path
) -> None:
    dest = tmp_path / "pulled"
    assert cli(capsys, "pull", "tools-b", "--dest", str(dest), *store_args(endpoint)).code == 0
    run_log = dest / "tools-b" / "RunLog.json"
    branch = dest / "tools-b" / "BranchLog-map.a.json"
    run_log.write_text('{"mine": true}')
    branch.unlink()

    refused = cli(capsys, "pull", "tools-b", "--dest", str(dest), *store_args(endpoint))
    assert refused.code == 1
    assert "RunLog.json differs from the bucket's copy" in refused.err
    assert "--force" in refused.err
    assert run_log.read_text() == '{"mine": true}'
    assert not branch.exists()  # all or nothing: the missing file was not written either

    forced = cli(capsys, "pull", "tools-b", "--dest", str(dest), "--force", *store_args(endpoint))
    assert forced.code == 0
    assert files_of(dest) == {
        k: v for k, v in files_of(runs.chunked).items() if k.startswith("tools-b/")
    }


def test_pull_a_missing_run_and_a_layout_mix_up(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs, tmp_path: Path
) -> None:
    dest = tmp_path / "pulled"
    missing = cli(capsys, "pull", "no-such-run", "--dest", str(dest), *store_args(endpoint))
    assert missing.code == 1
    assert missing.err.strip() == (
        f"runlog-relay pull: error: run 'no-such-run' not found in {CHUNKED_AT} at {endpoint}"
    )
    assert not dest.exists()

    mixed = cli(capsys, "pull", SINGLE_RUN, "--dest", str(dest), *store_args(endpoint, SINGLE_AT))
    assert mixed.code == 1
    assert "try --layout single" in mixed.err


def test_pull_all_and_since(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs, tmp_path: Path
) -> None:
    everything = tmp_path / "all"
    result = cli(
        capsys, "pull", "--all", "--dest", str(everything), "--json", *store_args(endpoint)
    )
    assert result.code == 0
    assert sorted(r["run_id"] for r in result.json()["runs"]) == sorted([*CHUNKED_RUNS, FAILED_RUN])
    assert files_of(everything) == files_of(runs.chunked)

    recent = tmp_path / "recent"
    since = cli(capsys, "pull", "--since", "1h", "--dest", str(recent), *store_args(endpoint))
    assert since.code == 0 and files_of(recent) == files_of(runs.chunked)

    future = tmp_path / "future"
    none = cli(
        capsys, "pull", "--since", "2999-01-01", "--dest", str(future), *store_args(endpoint)
    )
    assert none.code == 0 and "no runs matched" in none.out and not future.exists()


@pytest.mark.parametrize("opaque", [False, True], ids=["md5-etags", "opaque-etags"])
def test_pull_downloads_only_what_differs(
    capsys: pytest.CaptureFixture[str],
    any_s3: S3Endpoint,
    runs: Runs,
    tmp_path: Path,
    opaque: bool,
) -> None:
    """An up-to-date folder costs the listing alone where ETags are MD5s, and at most one
    HEAD per object (no GET) where they are not (SSE-KMS, SSE-C, a rewriting gateway;
    here a real HTTP proxy makes them opaque)."""
    proxy = EtagRewritingProxy(any_s3.port, rewrite=opaque)
    try:
        dest = tmp_path / "pulled"
        args = ("pull", "tools-a", "--dest", str(dest), "--json", *store_args(proxy.endpoint))
        first = cli(capsys, *args)
        assert first.code == 0, first.err
        objects = len(first.json()["runs"][0]["written"])
        assert objects == 6 and proxy.count("GET") == objects

        proxy.reset_counts()
        again = cli(capsys, *args)
        assert again.code == 0, again.err
        [outcome] = again.json()["runs"]
        assert outcome["outcome"] == "up_to_date" and len(outcome["unchanged"]) == objects
        assert proxy.count("GET") == 0  # not one body downloaded
        assert proxy.count("HEAD") == (objects if opaque else 0)
        assert proxy.count("GET", "list") >= 1

        # One file changed locally: only it is fetched, and refused as it differs.
        (dest / "tools-a" / "RunLog.json").write_text('{"mine": true}')
        proxy.reset_counts()
        changed = cli(capsys, *args)
        [refused] = changed.json()["runs"]
        assert changed.code == 1 and refused["outcome"] == "refused"
        assert refused["conflicts"] == [
            {"path": "tools-a/RunLog.json", "detail": "differs from the bucket's copy"}
        ]
        assert proxy.count("GET") == 1

        # verify agrees on such a bucket, with the same HEADs.
        proxy.reset_counts()
        verified = cli(
            capsys,
            "verify",
            "tools-b",
            "--source",
            str(runs.chunked),
            "--json",
            *store_args(proxy.endpoint),
        )
        assert verified.code == 0, verified.out
        assert verified.json()["counts"]["same"] == 6
        assert proxy.count("HEAD") == (6 if opaque else 0) and proxy.count("GET") == 0
    finally:
        proxy.close()


# ------------------------------------------------------------------- exit codes, for real


def run_cli_processes(
    cases: dict[str, list[str]], cwd: Path, env: dict[str, str] | None = None
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run ``python -m runlog_relay ARGS`` for every case at once; results by case name."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOG_RELAY_", "AWS_"))}
    base_env.update(env or {})
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "runlog_relay", *args],
            cwd=cwd,
            env=base_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in cases.items()
    }
    results = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=60)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


def test_exit_codes_of_real_processes(endpoint: str, runs: Runs, tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # HTTP 200 with a web page for everything: MinIO's console port, a captive portal.
    portal = ScriptedServer(lambda r: (200, {"Content-Type": "text/html"}, b"<html>Console</html>"))
    drifted = tmp_path / "drifted"
    shutil.copytree(runs.chunked / "tools-a", drifted / "tools-a")
    (drifted / "tools-a" / "BranchLog-new.json").write_text("{}")
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("layout: sideways\n")
    results = run_cli_processes(
        {
            "in sync": ["verify", "--source", str(runs.chunked), *store_args(endpoint)],
            "not in sync": ["verify", "--source", str(drifted), *store_args(endpoint)],
            "pulled": ["pull", "tools-a", "--dest", str(tmp_path / "p"), *store_args(endpoint)],
            "missing run": ["pull", "nope", "--dest", str(tmp_path / "q"), *store_args(endpoint)],
            "no run named": ["pull", *store_args(endpoint)],
            "bad option": ["runs", "--limit", "0", *store_args(endpoint)],
            "bad config": ["runs", "--config", str(bad_config), *store_args(endpoint)],
            "no bucket": ["runs", *store_args(endpoint, "no-such-bucket/x")],
            "refused": ["runs", *store_args(refused)],
            "refused verify": ["verify", "--source", str(runs.chunked), *store_args(refused)],
            "not S3": ["runs", *store_args(portal.endpoint)],
            "not S3 verify": [
                "verify",
                "--source",
                str(runs.chunked),
                *store_args(portal.endpoint),
            ],
            "not S3 pull": [
                "pull",
                "tools-a",
                "--dest",
                str(tmp_path / "n"),
                "--endpoint",
                portal.endpoint,
            ],
        },
        cwd=tmp_path,
    )
    portal.close()
    codes = {name: result.returncode for name, result in results.items()}
    assert codes == {
        "in sync": 0,
        "not in sync": 1,
        "pulled": 0,
        "missing run": 1,
        "no run named": 2,
        "bad option": 2,
        "bad config": 2,
        "no bucket": 2,
        "refused": 3,
        "refused verify": 3,
        "not S3": 3,
        "not S3 verify": 3,
        "not S3 pull": 3,
    }, {name: r.stderr for name, r in results.items()}
    assert not (tmp_path / "n").exists()
    for name in ("missing run", "no run named", "bad config", "no bucket", "refused", "not S3"):
        err = results[name].stderr.strip().splitlines()
        assert len(err) == 1, (name, err)  # one line, no traceback
        assert "Traceback" not in results[name].stderr
    assert "bucket 'no-such-bucket'" in results["no bucket"].stderr
    assert "layout" in results["bad config"].stderr
    assert f"is {refused} right (--endpoint)" in results["refused"].stderr
    not_s3 = results["not S3"].stderr
    assert "HTTP 200 with no S3 answer (text/html, starting b'<html>Console</html>')" in not_s3
    assert f"--endpoint is {portal.endpoint}" in not_s3


@pytest.mark.parametrize(
    "command",
    [
        ("runs", "--json"),
        ("runs",),
        # rich's own closed-pipe handling exited 1 here: "the runs differ"
        ("diff", "tools-a", "tools-a", "--no-catalog"),
        ("show", "tools-a", "--no-catalog"),
    ],
    ids=" ".join,
)
def test_a_closed_pipe_is_not_an_error(
    endpoint: str, runs: Runs, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``runlog-relay runs | head -1``: the reader leaving early is fine, --json or not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOG_RELAY_", "AWS_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "runlog_relay", *command, *store_args(endpoint)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the child has written anything: it is still importing
    err = process.stderr.read()
    process.stderr.close()
    assert process.wait(60) == 0
    assert err == b""  # no BrokenPipeError traceback, no "Exception ignored"


# ---------------------------------------------------------------------- wrong credentials


def _seed_auth_bucket(endpoint: str) -> None:
    store = ObjectStore(
        endpoint=endpoint, bucket=BUCKET, prefix="run-logs", access_key="setup", secret_key="setup"
    )
    store.check_bucket(create=True)
    store.put("auth-run/RunLog", b'{"run_id": "auth-run", "status": "SUCCESS", "steps": {}}')


@pytest.fixture(scope="module")
def auth_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A moto server that checks signatures, seeded with one run, and its one good key."""
    server = start_auth_s3_server(
        tmp_path_factory.mktemp("moto-auth") / "moto.log", prepare=_seed_auth_bucket
    )
    yield server.endpoint, server.access_key, server.secret_key
    server.stop()


def test_wrong_credentials_exit_3_with_a_clear_message(
    auth_endpoint: tuple[str, str, str], tmp_path: Path
) -> None:
    url, key_id, secret = auth_endpoint
    args = ["runs", "--json", *store_args(url)]
    right = run_cli_processes(
        {"right": args}, tmp_path, {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    )
    assert right["right"].returncode == 0, right["right"].stderr
    assert [r["run_id"] for r in json.loads(right["right"].stdout)["runs"]] == ["auth-run"]

    wrong_secret = run_cli_processes(
        {"x": args}, tmp_path, {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": "nope"}
    )
    unknown_key = run_cli_processes({"x": args}, tmp_path)  # the minioadmin default
    for result, code in (
        (wrong_secret["x"], "SignatureDoesNotMatch"),
        (unknown_key["x"], "InvalidAccessKeyId"),
    ):
        assert result.returncode == 3
        assert result.stderr == (
            f"runlog-relay runs: error: the object store at {url} rejected the credentials"
            f" ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or RUNLOG_RELAY_*_FILE)\n"
        )
        assert "nope" not in result.stderr and secret not in result.stderr


def test_pull_refuses_a_run_whose_folder_is_a_file_and_pulls_the_others(
    capsys: pytest.CaptureFixture[str], endpoint: str, runs: Runs, tmp_path: Path
) -> None:
    """lstat of <dest>/<run>/RunLog.json raised NotADirectoryError: the whole pull ended
    with one error line, the other run not pulled and no --json report."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "tools-a").write_text("not a folder\n")
    args = ("pull", "tools-a", "tools-b", "--dest", str(dest), *store_args(endpoint))
    result = cli(capsys, *args, "--json")
    assert result.code == 1, result.err
    outcomes = {run["run_id"]: run for run in result.json()["runs"]}
    assert outcomes["tools-a"]["outcome"] == "refused"
    assert "exists and is not a folder" in outcomes["tools-a"]["message"]
    assert outcomes["tools-b"]["outcome"] == "pulled"
    assert (dest / "tools-a").read_text() == "not a folder\n"  # left as it was
    assert (dest / "tools-b" / "RunLog.json").is_file()
    human = cli(capsys, *args)
    assert human.code == 1
    assert human.err.strip().splitlines() == [
        f"runlog-relay pull: error: {dest / 'tools-a'} exists and is not a folder;"
        " move it away to pull run 'tools-a'"
    ]
