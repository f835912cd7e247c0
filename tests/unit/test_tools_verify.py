"""verify's pure parts: reading a file like the sidecar, the comparison, which side is newer."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runlog_relay.etag import expected_etag
from runlog_relay.layout import Layout, key_for
from runlog_relay.localtree import Candidate, Skipped
from runlog_relay.objectstore import MULTIPART_THRESHOLD, RemoteObject
from runlog_relay.tools.verify import LocalFile, Report, compare, newer_side, read_local

STAMP = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def candidate(root: Path, relative: str, layout: Layout) -> Candidate:
    return Candidate(str(root / relative), relative, key_for(relative, layout))


def test_newer_side_allows_for_second_resolution() -> None:
    base = STAMP.timestamp()
    assert newer_side(base + 1.0, STAMP) == "local"
    assert newer_side(base + 0.5, STAMP) == "unknown"  # the object may be from .0 to .999
    assert newer_side(base, STAMP) == "unknown"
    assert newer_side(base - 0.001, STAMP) == "remote"
    assert newer_side(base, None) == "unknown"


def test_newer_side_with_millisecond_stamps() -> None:
    precise = STAMP.replace(microsecond=250_000)
    assert newer_side(precise.timestamp() + 0.002, precise) == "local"
    assert newer_side(precise.timestamp() - 0.002, precise) == "remote"


def test_read_local_hashes_the_object_body_of_each_layout(tmp_path: Path) -> None:
    body = b'{"run_id": "r1", "status": "SUCCESS"}'
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "RunLog.json").write_bytes(body)
    (tmp_path / "r1.json").write_bytes(body)

    chunked = read_local(candidate(tmp_path, "r1/RunLog.json", Layout.CHUNKED), Layout.CHUNKED)
    assert (chunked.key, chunked.run_id, chunked.size) == ("r1/RunLog", "r1", len(body))
    assert chunked.etag == md5(body) and chunked.torn == ""

    single = read_local(candidate(tmp_path, "r1.json", Layout.SINGLE), Layout.SINGLE)
    assert single.key == "r1/r1.json"
    assert single.etag == md5(json.dumps(body.decode()).encode())  # encoded once more


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (
            b'{"run_id": "r1", "st',
            "not complete JSON: unexpected end of the document at character 20",
        ),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (json.dumps({"a": 1}).encode("utf-16"), "not UTF-8 text"),  # the sidecar's verdict too
    ],
)
def test_read_local_reports_torn_files(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "RunLog.json").write_bytes(content)
    local = read_local(candidate(tmp_path, "r1/RunLog.json", Layout.CHUNKED), Layout.CHUNKED)
    assert local.etag is None and local.torn == reason


def test_read_local_calls_utf16_torn_in_the_single_layout(tmp_path: Path) -> None:
    # The single layout decodes the text as UTF-8 to encode it again: a UTF-16 file used
    # to crash verify with a traceback there.
    (tmp_path / "r1.json").write_bytes(json.dumps({"run_id": "r1"}).encode("utf-16"))
    local = read_local(candidate(tmp_path, "r1.json", Layout.SINGLE), Layout.SINGLE)
    assert local.etag is None and local.torn == "not UTF-8 text"


def test_read_local_matches_multipart_etags(tmp_path: Path) -> None:
    body = b'{"pad": "' + b"x" * (MULTIPART_THRESHOLD + 10) + b'"}'
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "RunLog.json").write_bytes(body)
    local = read_local(candidate(tmp_path, "r1/RunLog.json", Layout.CHUNKED), Layout.CHUNKED)
    assert local.etag is not None and local.etag.endswith("-2")


def local(relative: str, etag: str | None, *, mtime: float = 0.0, torn: str = "") -> LocalFile:
    mapping = key_for(relative, Layout.CHUNKED)
    return LocalFile(relative, mapping.key, mapping.run_id, 10, mtime, etag, torn)


def remote(key: str, etag: str, stamp: datetime = STAMP) -> RemoteObject:
    return RemoteObject(key=key, etag=etag, size=10, last_modified=stamp)


def test_compare_sorts_every_file_into_one_state() -> None:
    later = STAMP.timestamp() + 60
    files = [
        local("r1/RunLog.json", "aaa"),
        local("r1/BranchLog-a.json", "new", mtime=later),
        local("r1/BranchLog-b.json", None, torn="empty file"),
        local("r1/BranchLog-c.json", "ccc"),
    ]
    objects = [
        remote("r1/RunLog", "aaa"),
        remote("r1/BranchLog-a", "old"),
        remote("r1/BranchLog-b", "bbb"),
        remote("r1/BranchLog-d", "ddd"),
        remote("r2/deeper/than/a/run", "zzz"),  # not a run-log key in this layout
    ]
    report = compare(files, objects, Layout.CHUNKED)
    assert not report.in_sync
    assert report.counts() == {
        "same": 1,
        "missing": 1,
        "differs": 1,
        "remote_only": 1,
        "torn": 1,
        "uncompared": 0,
        "skipped": 0,
        "ignored_remote": 1,
    }
    by_state = {diff.state: diff for diff in report.differences}
    assert by_state["differs"].path == "r1/BranchLog-a.json"
    assert by_state["differs"].newer == "local"
    assert (by_state["differs"].local_etag, by_state["differs"].remote_etag) == ("new", "old")
    assert by_state["missing"].key == "r1/BranchLog-c"
    assert by_state["remote_only"].path == "r1/BranchLog-d.json"  # where pull would put it
    assert by_state["torn"].remote_etag == "bbb"  # the bucket still has the last good one
    assert report.ignored_remote == ["r2/deeper/than/a/run"]
    json.dumps([d.to_json() for d in report.differences], default=str)


def test_compare_takes_a_big_files_plain_md5_and_says_when_it_cannot_tell() -> None:
    """A big file PUT whole by another writer lists with its MD5, not our composite; one
    sent in parts of another size cannot be compared by ETag: never "differs"."""
    body = b"x" * (MULTIPART_THRESHOLD + 1)
    ours, whole = expected_etag(body), md5(body)
    mapping = key_for("r1/RunLog.json", Layout.CHUNKED)
    file = LocalFile("r1/RunLog.json", mapping.key, "r1", len(body), 0.0, ours, md5=whole)
    assert compare([file], [remote("r1/RunLog", whole)], Layout.CHUNKED).in_sync
    other_parts = compare([file], [remote("r1/RunLog", "0" * 32 + "-4")], Layout.CHUNKED)
    assert not other_parts.in_sync
    assert [d.state for d in other_parts.differences] == ["uncompared"]
    assert other_parts.counts()["uncompared"] == 1


def test_compare_in_sync_and_empty() -> None:
    assert compare([], [], Layout.CHUNKED).in_sync
    report = compare([local("r1/RunLog.json", "a")], [remote("r1/RunLog", "a")], Layout.CHUNKED)
    assert report.in_sync and report.same == 1


@pytest.mark.parametrize(
    ("reason", "in_sync"),
    [
        ("symlink", True),
        ("not_regular", True),
        ("unsafe_name", False),
        ("unreadable", False),
        ("key_too_long", False),
    ],
)
def test_unreadable_and_unsafe_skips_put_the_folder_out_of_sync(reason: str, in_sync: bool) -> None:
    # Links are never mirrored by policy (not run logs); an unreadable file or run folder
    # may hold anything, and a run-log file with an unsafe name is never uploaded.
    report = Report(same=3, skipped=[Skipped(Path("/logs/r/x.json"), reason, "detail")])
    assert report.in_sync is in_sync
