"""stableread: one complete version of a file, read in bounded memory, and read again
for upload only if it is still the version that was checked."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from tests.support.files import write_json

from runlog_relay import etag, stableread
from runlog_relay.etag import expected_etag
from runlog_relay.layout import Layout, encode_body
from runlog_relay.stableread import (
    FileSignature,
    SnapshotBody,
    SnapshotChanged,
    TooLarge,
    TornRead,
    read_stable,
)


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> int:
    """Multipart arithmetic at a small scale: parts of 1 KiB above 2 KiB."""
    monkeypatch.setattr(etag, "MULTIPART_THRESHOLD", 2048)
    monkeypatch.setattr(etag, "PART_SIZE", 1024)
    return 1024


def test_a_snapshot_describes_the_body_of_the_version_read(tmp_path: Path) -> None:
    path = tmp_path / "RunLog.json"
    data = write_json(path, {"run_id": "r", "steps": list(range(100))})
    snapshot = read_stable(path)
    assert snapshot.body == data
    assert snapshot.signature == FileSignature.of(os.stat(path))
    assert (snapshot.file_size, snapshot.body_size) == (len(data), len(data))
    assert snapshot.md5 == hashlib.md5(data).hexdigest() == snapshot.etag


@pytest.mark.parametrize("layout", list(Layout))
def test_the_body_is_encoded_for_the_layout(tmp_path: Path, layout: Layout) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"note": 'naïve "quoted" ☃ 𝄞'}, indent=2, ensure_ascii=False))
    data = path.read_bytes()
    snapshot = read_stable(path, layout=layout)
    body = encode_body(data, layout)
    assert snapshot.body == body
    assert snapshot.body_size == len(body)
    assert snapshot.etag == expected_etag(body)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty file"),
        (b"  \n\t", "empty file"),
        (b'{"run_id": "r", "steps": [1, 2', "not complete JSON"),
        (b'{"run_id": "r"', "not complete JSON"),
        (b'{"a": 1}{', "not complete JSON"),
        (b'{"a": "\xff\xfe"}', "not UTF-8"),
        (b'{"a": "caf\xc3', "not"),  # cut inside a UTF-8 sequence
    ],
)
@pytest.mark.parametrize("whole", [True, False], ids=["checked-whole", "checked-in-pieces"])
def test_torn_content_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, why: str, whole: bool
) -> None:
    if not whole:
        monkeypatch.setattr(stableread, "FAST_CHECK_BYTES", 0)
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(TornRead, match=why):
        read_stable(path, chunk_size=7)


@pytest.mark.parametrize("whole", [True, False], ids=["checked-whole", "checked-in-pieces"])
def test_what_json_loads_refuses_but_is_json_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    if not whole:
        monkeypatch.setattr(stableread, "FAST_CHECK_BYTES", 0)
    path = tmp_path / "x.json"
    path.write_text("[" * 5000 + "]" * 5000)  # deeper than Python's recursion limit
    assert read_stable(path).body == path.read_bytes()
    path.write_text('{"n": ' + "7" * 5000 + "}")  # past int_max_str_digits
    assert read_stable(path).body == path.read_bytes()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_only_utf8_is_complete(tmp_path: Path, encoding: str) -> None:
    # json.loads(bytes) sniffs UTF-16/32 and a BOM, but runnable writes UTF-8 and the
    # single layout must decode the text as UTF-8 to encode it again.
    path = tmp_path / "x.json"
    path.write_bytes(json.dumps({"a": "b"}).encode(encoding))
    with pytest.raises(TornRead):
        read_stable(path)


def test_a_deeply_nested_valid_document_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    # Deeper than the interpreter's recursion limit, whatever another test set it to.
    depth = sys.getrecursionlimit() + 1000
    path.write_text('{"a": ' * depth + "1" + "}" * depth)
    with pytest.raises(RecursionError):
        json.loads(path.read_bytes())
    assert read_stable(path).body == path.read_bytes()


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_stable(fifo)  # O_NONBLOCK: opening a FIFO with no writer must not hang


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        read_stable(tmp_path / "dir.json")


def test_a_symlinked_file_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "outside.json"
    write_json(target, {"secret": True})
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(OSError) as caught:
        read_stable(link)
    assert not isinstance(caught.value, TornRead)


def test_a_run_folder_swapped_for_a_symlink_is_never_followed(tmp_path: Path) -> None:
    # Between a scan and the read, the run folder becomes a link to a folder outside the
    # volume that holds a file of the same name: every component is opened O_NOFOLLOW.
    root = tmp_path / "run_logs"
    write_json(root / "run-1" / "RunLog.json", {"ok": 1})
    outside = tmp_path / "outside"
    write_json(outside / "RunLog.json", {"secret": 1})
    (root / "run-1" / "RunLog.json").unlink()
    (root / "run-1").rmdir()
    (root / "run-1").symlink_to(outside)
    with pytest.raises(OSError) as caught:
        read_stable(root / "run-1" / "RunLog.json", root=root)
    assert not isinstance(caught.value, TornRead)
    # Without a root the same path is opened by the kernel, links and all.
    assert json.loads(read_stable(root / "run-1" / "RunLog.json").body or b"") == {"secret": 1}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_stable(tmp_path / "gone.json")


def test_a_file_replaced_while_read_is_torn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "RunLog.json"
    write_json(path, {"v": 1})
    replacement = tmp_path / "RunLog.json.tmp"
    write_json(replacement, {"v": 2})
    real_fstat = os.fstat
    fstats: list[int] = []

    def fstat_then_replace(fd: int) -> os.stat_result:
        # The second fstat is the "after" one: take it, then let a writer rename a new
        # file over the path. Size and times of the open file agree; only the inode at
        # the path tells the version read is no longer the file's.
        info = real_fstat(fd)
        fstats.append(fd)
        if len(fstats) == 2:
            os.replace(replacement, path)
        return info

    monkeypatch.setattr(os, "fstat", fstat_then_replace)
    with pytest.raises(TornRead, match="changed while being read"):
        read_stable(path)
    assert len(fstats) == 2


def test_a_write_during_the_read_is_torn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "RunLog.json"
    write_json(path, {"v": 1})
    real_read = os.read
    calls = []

    def read_then_writer_appends(fd: int, size: int) -> bytes:
        chunk = real_read(fd, size)
        if not calls:
            calls.append(fd)
            with open(path, "a") as handle:  # the writer is still at it
                handle.write(" ")
        return chunk

    monkeypatch.setattr(os, "read", read_then_writer_appends)
    with pytest.raises(TornRead, match="changed while being read"):
        read_stable(path)
    assert calls


def test_a_file_over_the_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"pad": "x" * 5000}))
    with pytest.raises(TooLarge) as caught:
        read_stable(path, max_size=4096)
    assert caught.value.size == path.stat().st_size
    assert read_stable(path, max_size=1 << 20).body_size == path.stat().st_size


def test_a_big_body_is_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    data = write_json(path, {"pad": "x" * 10_000})
    snapshot = read_stable(path, keep_body=1000)
    assert snapshot.body is None
    assert snapshot.etag == expected_etag(data)


# --------------------------------------------------------------------------- SnapshotBody


def read_all(body: SnapshotBody, size: int) -> bytes:
    out = b""
    while True:
        piece = body.read(size)
        if not piece:
            return out
        out += piece


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("length", [100, 2048, 2049, 5000])
def test_the_body_read_again_is_the_body_checked(
    tmp_path: Path, small_parts: int, layout: Layout, length: int
) -> None:
    path = tmp_path / "r.json"
    text = json.dumps({"pad": 'é"\n' * (length // 8), "fill": "x" * (length % 8)})
    path.write_text(text, encoding="utf-8")
    data = path.read_bytes()
    snapshot = read_stable(path, layout=layout, keep_body=0)
    body = encode_body(data, layout)
    assert snapshot.etag == expected_etag(body)
    part = small_parts if len(body) > 2048 else len(body)
    with SnapshotBody(path, snapshot, layout=layout) as stream:
        assert stream.length == len(body)
        assert read_all(stream, part) == body


def test_a_changed_part_is_never_handed_out(tmp_path: Path, small_parts: int) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"pad": "a" * 3000}))
    snapshot = read_stable(path, keep_body=0)
    with SnapshotBody(path, snapshot, layout=Layout.CHUNKED) as stream:
        first = stream.read(small_parts)
        assert first == path.read_bytes()[:small_parts]
        with open(path, "r+b") as handle:  # the writer changes the second part
            handle.seek(small_parts + 10)
            handle.write(b"b")
        with pytest.raises(SnapshotChanged):
            stream.read(small_parts)


def test_a_changed_small_body_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    snapshot = read_stable(path, keep_body=0)
    write_json(path, {"v": 2})
    with (
        SnapshotBody(path, snapshot, layout=Layout.CHUNKED) as stream,
        pytest.raises(SnapshotChanged),
    ):
        stream.read(snapshot.body_size)


@pytest.mark.parametrize("change", ["longer", "shorter"])
def test_a_file_of_another_length_is_refused(tmp_path: Path, change: str) -> None:
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    snapshot = read_stable(path, keep_body=0)
    write_json(path, {"v": 10} if change == "longer" else {})
    with (
        SnapshotBody(path, snapshot, layout=Layout.CHUNKED) as stream,
        pytest.raises(SnapshotChanged),
    ):
        stream.read(snapshot.body_size)


def test_a_file_read_whole_needs_no_read_for_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One read when it returns every byte fstat counted: each system call hands the
    interpreter lock to the upload threads. Growth is still caught (the test above)."""
    path = tmp_path / "RunLog.json"
    data = write_json(path, {"v": "x" * 5000})
    real_read = os.read
    reads: list[int] = []

    def counted(fd: int, size: int) -> bytes:
        chunk = real_read(fd, size)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(os, "read", counted)
    assert read_stable(path).etag == expected_etag(data)
    assert reads == [len(data)]
    reads.clear()
    path.write_text("")  # empty: the first read is the end, and the file is torn
    with pytest.raises(TornRead, match="empty"):
        read_stable(path)
    assert reads == [0]
