"""pull's local side: atomic writes and the refuse-or-write plan for one run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runlog_relay.tools.pull import plan_run, write_atomically


@pytest.fixture
def umask_022() -> object:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_write_atomically_leaves_only_the_file(tmp_path: Path, umask_022: object) -> None:
    target = tmp_path / "RunLog.json"
    write_atomically(target, b'{"a": 1}')
    write_atomically(target, b'{"a": 2}')
    assert target.read_bytes() == b'{"a": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["RunLog.json"]  # no temporary files
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # what runnable's open("w") makes


def test_write_atomically_replaces_a_symlink_without_following_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    link = tmp_path / "run" / "RunLog.json"
    link.parent.mkdir()
    link.symlink_to(outside)
    write_atomically(link, b"{}")
    assert not link.is_symlink() and link.read_bytes() == b"{}"
    assert outside.read_text() == "precious"


def test_write_atomically_cleans_up_when_it_fails(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()  # rename over a directory fails
    with pytest.raises(OSError):
        write_atomically(tmp_path / "dir.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.json"]


FILES = {"r1/RunLog.json": b'{"status": "SUCCESS"}', "r1/BranchLog-a.json": b"{}"}


def test_plan_for_a_new_run_writes_everything(tmp_path: Path) -> None:
    result, to_write = plan_run(tmp_path, "r1", FILES, force=False)
    assert to_write == FILES and result.outcome == "pulled"


def test_plan_skips_identical_files(tmp_path: Path) -> None:
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "RunLog.json").write_bytes(FILES["r1/RunLog.json"])
    result, to_write = plan_run(tmp_path, "r1", FILES, force=False)
    assert list(to_write) == ["r1/BranchLog-a.json"]
    assert result.unchanged == ["r1/RunLog.json"]
    (tmp_path / "r1" / "BranchLog-a.json").write_bytes(b"{}")
    result, to_write = plan_run(tmp_path, "r1", FILES, force=False)
    assert to_write == {} and result.outcome == "up_to_date"


def test_plan_refuses_the_whole_run_when_a_file_differs(tmp_path: Path) -> None:
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "RunLog.json").write_bytes(b'{"status": "PROCESSING"}')
    result, to_write = plan_run(tmp_path, "r1", FILES, force=False)
    assert to_write == {}  # not even the missing branch log
    assert result.outcome == "refused"
    assert result.conflicts == [
        {"path": "r1/RunLog.json", "detail": "differs from the bucket's copy"}
    ]
    assert "--force" in result.message

    forced, to_write = plan_run(tmp_path, "r1", FILES, force=True)
    assert to_write == FILES and forced.outcome == "pulled"


def test_plan_never_writes_through_a_linked_run_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "r1").symlink_to(elsewhere, target_is_directory=True)
    for force in (False, True):
        result, to_write = plan_run(dest, "r1", FILES, force=force)
        assert to_write == {} and result.outcome == "refused"
        assert "symbolic link" in result.message


def test_plan_never_replaces_a_directory_even_forced(tmp_path: Path) -> None:
    (tmp_path / "r1" / "RunLog.json").mkdir(parents=True)
    result, to_write = plan_run(tmp_path, "r1", FILES, force=True)
    assert to_write == {} and result.outcome == "refused"
    assert "not a regular file" in result.message


def test_plan_single_layout_file_at_the_top(tmp_path: Path) -> None:
    (tmp_path / "r1").mkdir()  # a chunked run of the same id does not matter here
    result, to_write = plan_run(tmp_path, "r1", {"r1.json": b"{}"}, force=False)
    assert to_write == {"r1.json": b"{}"} and result.outcome == "pulled"
