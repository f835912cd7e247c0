"""localtree: walking a run-log folder without following links, per layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runlog_relay.layout import Layout
from runlog_relay.localtree import (
    Candidate,
    Entry,
    FolderError,
    Skipped,
    classify_path,
    scan,
    scan_run,
    walk,
)

CHUNKED, SINGLE = Layout.CHUNKED, Layout.SINGLE


def touch(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def collect(root: Path, layout: Layout) -> tuple[dict[str, str], dict[str, str]]:
    """(relative → key of candidates, name → reason of skipped), for easy assertions."""
    candidates: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for item in walk(root, layout):
        if isinstance(item, Candidate):
            assert item.relative not in candidates, "yielded twice"
            candidates[item.relative] = item.mapping.key
        else:
            skipped[str(item.path.relative_to(root))] = item.reason
    return candidates, skipped


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "run_logs"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the volume holding a run-like tree and a loose JSON file."""
    path = tmp_path / "outside"
    touch(path / "RunLog.json", '{"secret": 1}')
    touch(path / "stolen.json", '{"secret": 2}')
    return path


# --------------------------------------------------------------------------- chunked


def test_chunked_walk_yields_run_files_only(root: Path) -> None:
    touch(root / "run-1" / "RunLog.json")
    touch(root / "run-1" / "BranchLog-a.json")
    touch(root / "run-2" / "StepLog-x-123.json")
    touch(root / "run-1" / "notes.txt")  # not JSON: not a run-log file at all
    touch(root / "top-level.json")  # wrong depth for chunked
    touch(root / "run-1" / "nested" / "Deep.json")  # wrong depth
    (root / "empty-run").mkdir()
    candidates, skipped = collect(root, CHUNKED)
    assert candidates == {
        "run-1/RunLog.json": "run-1/RunLog",
        "run-1/BranchLog-a.json": "run-1/BranchLog-a",
        "run-2/StepLog-x-123.json": "run-2/StepLog-x-123",
    }
    assert skipped == {}


def test_candidate_carries_path_relative_and_mapping(root: Path) -> None:
    path = touch(root / "run-1" / "RunLog.json")
    (item,) = list(walk(root, CHUNKED))
    assert isinstance(item, Candidate)
    assert item.path == path
    assert item.relative == "run-1/RunLog.json"
    assert (item.mapping.run_id, item.mapping.key) == ("run-1", "run-1/RunLog")


def test_chunked_walk_never_follows_a_file_link(root: Path, outside: Path) -> None:
    touch(root / "run-1" / "RunLog.json")
    (root / "run-1" / "BranchLog-x.json").symlink_to(outside / "stolen.json")
    candidates, skipped = collect(root, CHUNKED)
    assert list(candidates) == ["run-1/RunLog.json"]
    assert skipped == {"run-1/BranchLog-x.json": "symlink"}


def test_chunked_walk_never_follows_a_run_folder_link(root: Path, outside: Path) -> None:
    (root / "linked-run").symlink_to(outside, target_is_directory=True)
    candidates, skipped = collect(root, CHUNKED)
    assert candidates == {}  # outside/RunLog.json would map to linked-run/RunLog
    assert skipped == {"linked-run": "symlink"}


def test_chunked_walk_reports_a_json_link_at_the_root(root: Path, outside: Path) -> None:
    (root / "stolen.json").symlink_to(outside / "stolen.json")
    (root / "dangling").symlink_to(root / "nowhere")  # neither a folder nor *.json
    candidates, skipped = collect(root, CHUNKED)
    assert candidates == {}
    assert skipped == {"stolen.json": "symlink"}


def test_links_inside_a_run_folder_to_folders_are_not_entered(root: Path, outside: Path) -> None:
    (root / "run-1").mkdir()
    (root / "run-1" / "sub.json").symlink_to(outside, target_is_directory=True)
    candidates, skipped = collect(root, CHUNKED)
    assert candidates == {}
    assert skipped == {"run-1/sub.json": "symlink"}


def test_fifos_and_directories_named_json_are_not_regular(root: Path) -> None:
    (root / "run-1").mkdir()
    os.mkfifo(root / "run-1" / "BranchLog-fifo.json")
    (root / "run-1" / "BranchLog-dir.json").mkdir()
    candidates, skipped = collect(root, CHUNKED)
    assert candidates == {}
    assert skipped == {
        "run-1/BranchLog-fifo.json": "not_regular",
        "run-1/BranchLog-dir.json": "not_regular",
    }


def test_names_with_a_newline_or_bad_bytes_are_reported_unsafe(root: Path) -> None:
    touch(root / "run-1" / "Bad\nName.json")
    touch(root / "bad\nrun" / "RunLog.json")
    touch(root / "run-1" / ".hidden.json")
    os.close(os.open(os.fsencode(root / "run-1") + b"/\xffLog.json", os.O_CREAT | os.O_WRONLY))
    candidates, skipped = collect(root, CHUNKED)
    assert candidates == {}
    assert skipped == {
        "run-1/Bad\nName.json": "unsafe_name",
        "bad\nrun/RunLog.json": "unsafe_name",
        "run-1/.hidden.json": "unsafe_name",
        "run-1/\udcffLog.json": "unsafe_name",
    }
    details = {item.detail for item in walk(root, CHUNKED) if isinstance(item, Skipped)}
    assert any("not valid UTF-8" in detail for detail in details)
    assert any("control or invisible" in detail for detail in details)


def test_scan_run_lists_one_run_folder(root: Path, outside: Path) -> None:
    touch(root / "run-1" / "RunLog.json")
    touch(root / "run-2" / "RunLog.json")
    (root / "run-1" / "BranchLog-x.json").symlink_to(outside / "stolen.json")
    items = list(scan_run(root / "run-1"))
    assert sorted((type(i).__name__, Path(i.path).name) for i in items) == [
        ("Entry", "RunLog.json"),
        ("Skipped", "BranchLog-x.json"),
    ]
    entry = next(i for i in items if isinstance(i, Entry))
    assert entry.relative == "run-1/RunLog.json"
    assert list(scan_run(root / "gone")) == []
    assert list(scan_run(root / "run-2" / "RunLog.json")) == []  # a file


def test_a_run_folder_that_cannot_be_listed_is_an_error_not_an_empty_folder(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(root / "run-1" / "RunLog.json")
    touch(root / "run-2" / "RunLog.json")
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if path.endswith("run-2"):
            raise OSError(24, "Too many open files")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(scan(root, CHUNKED))
    errors = [i for i in items if isinstance(i, FolderError)]
    assert [(e.run_id, e.transient) for e in errors] == [("run-2", True)]
    assert [i.relative for i in items if isinstance(i, Entry)] == ["run-1/RunLog.json"]
    # The tools see it as a skipped folder.
    assert any(isinstance(i, Skipped) and i.reason == "unreadable" for i in walk(root, CHUNKED))


def test_a_root_that_cannot_be_listed_raises(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def scandir(path: str) -> object:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(OSError):
        list(scan(root, CHUNKED))


def test_walk_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert list(walk(tmp_path / "not-yet", CHUNKED)) == []
    assert list(walk(tmp_path / "not-yet", SINGLE)) == []


# --------------------------------------------------------------------------- single


def test_single_walk_yields_top_level_json_only(root: Path) -> None:
    touch(root / "run-1.json")
    touch(root / "run-2.json")
    touch(root / "run-3" / "RunLog.json")  # chunked-looking: wrong depth here
    touch(root / "readme.txt")
    candidates, skipped = collect(root, SINGLE)
    assert candidates == {
        "run-1.json": "run-1/run-1.json",
        "run-2.json": "run-2/run-2.json",
    }
    assert skipped == {}


def test_single_walk_skips_links_fifos_dirs_and_unsafe_names(root: Path, outside: Path) -> None:
    touch(root / "ok.json")
    (root / "link.json").symlink_to(outside / "stolen.json")
    (root / "dirlink.json").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "fifo.json")
    (root / "dir.json").mkdir()
    touch(root / "new\nline.json")
    candidates, skipped = collect(root, SINGLE)
    assert list(candidates) == ["ok.json"]
    assert skipped == {
        "link.json": "symlink",
        "dirlink.json": "symlink",
        "fifo.json": "not_regular",
        "dir.json": "not_regular",
        "new\nline.json": "unsafe_name",
    }


# --------------------------------------------------------------------------- classify_path


def test_classify_path_depth_rules(root: Path) -> None:
    touch(root / "run-1" / "RunLog.json")
    touch(root / "run-1.json")
    assert isinstance(classify_path(root, root / "run-1" / "RunLog.json", CHUNKED), Candidate)
    assert classify_path(root, root / "run-1.json", CHUNKED) is None
    assert isinstance(classify_path(root, root / "run-1.json", SINGLE), Candidate)
    assert classify_path(root, root / "run-1" / "RunLog.json", SINGLE) is None
    assert classify_path(root, root / "run-1" / "RunLog.txt", CHUNKED) is None


def test_classify_path_outside_the_root_or_gone_is_none(root: Path, outside: Path) -> None:
    assert classify_path(root, outside / "RunLog.json", CHUNKED) is None
    assert classify_path(root, root / "run-1" / "gone.json", CHUNKED) is None


def test_classify_path_checks_every_component_for_links(root: Path, outside: Path) -> None:
    (root / "linked-run").symlink_to(outside, target_is_directory=True)
    result = classify_path(root, root / "linked-run" / "RunLog.json", CHUNKED)
    assert isinstance(result, Skipped)
    assert result.reason == "symlink"
    assert "linked-run" in result.detail


def test_classify_path_with_a_file_where_a_run_folder_should_be(root: Path) -> None:
    touch(root / "run-1")
    assert classify_path(root, root / "run-1" / "RunLog.json", CHUNKED) is None


# --------------------------------------------------------------------------- trust


def _shape(item: Entry | Skipped | FolderError) -> tuple[str, ...]:
    if isinstance(item, Entry):
        return ("entry", item.relative, item.path, str(item.info.st_size))
    if isinstance(item, Skipped):
        return ("skipped", str(item.path), item.reason)
    return ("folder", item.run_id, str(item.path))


@pytest.mark.parametrize("layout", [CHUNKED, SINGLE])
def test_a_trusting_scan_yields_what_a_full_one_does_for_untrusted_files_only(
    root: Path, outside: Path, layout: Layout
) -> None:
    """A light rescan lists names (no DirEntry) and lstats only the files it does not
    trust: for those it must say exactly what the full scan says (links, FIFOs, folders
    named .json, sizes), and nothing at all for a trusted file."""
    top = Path() if layout is SINGLE else Path("run-1")
    touch(root / top / "trusted.json", '{"t": 1}')
    touch(root / top / "new.json", '{"n": 22}')
    (root / top / "link.json").symlink_to(outside / "stolen.json")
    (root / top / "folder.json").mkdir()
    os.mkfifo(root / top / "fifo.json")
    trusted = (top / "trusted.json").as_posix()
    asked: list[str] = []

    def trust(relative: str) -> bool:
        asked.append(relative)
        return relative == trusted

    light = sorted(_shape(item) for item in scan(root, layout, trust))
    full = sorted(_shape(item) for item in scan(root, layout) if _shape(item)[1] != trusted)
    assert light == full and len(light) == 4
    assert trusted in asked and all(item[1] != trusted for item in light)


def test_a_trusting_scan_reports_a_run_folder_it_cannot_list(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(root / "run-1" / "RunLog.json")

    def refused(path: object) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", refused)
    (item,) = scan(root, CHUNKED, lambda relative: True)
    assert isinstance(item, FolderError) and item.run_id == "run-1"
