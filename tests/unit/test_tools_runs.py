"""runs' pure parts: a run's status and times from runnable's run log, ordering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.errors import NotFoundError
from runlog_relay.layout import Layout
from runlog_relay.objectstore import RemoteObject
from runlog_relay.tools._common import StoreContext
from runlog_relay.tools.runs import collect, order_runs, run_log_key, summarise_run_log


def attempt(start: str, end: str) -> dict[str, str]:
    return {"start_time": start, "end_time": end, "status": "SUCCESS"}


def step(*attempts: dict[str, str], branches: dict | None = None) -> dict:
    return {"attempts": list(attempts), "branches": branches or {}}


# The shape runnable's RunLog.model_dump() has (runnable/datastore.py): naive local times
# "YYYY-MM-DD HH:MM:SS.ffffff", composite steps with no attempts of their own.
FINISHED = {
    "run_id": "r1",
    "status": "SUCCESS",
    "tag": "nightly",
    "steps": {
        "prepare": step(attempt("2026-03-01 10:00:00.500000", "2026-03-01 10:00:01.000000")),
        "map": step(
            branches={
                "map.a": {
                    "steps": {
                        "map.a.process": step(
                            attempt("2026-03-01 10:00:02.000000", "2026-03-01 10:00:03.000000")
                        )
                    }
                }
            }
        ),
        "success": step(attempt("2026-03-01 10:00:04.000000", "2026-03-01 10:00:04.250000")),
    },
}


def test_finished_run_spans_its_first_and_last_attempt() -> None:
    status, tag, start, end = summarise_run_log(FINISHED)
    assert (status, tag) == ("SUCCESS", "nightly")
    assert start == datetime(2026, 3, 1, 10, 0, 0, 500000)
    assert end == datetime(2026, 3, 1, 10, 0, 4, 250000)


def test_branch_attempts_count_when_branches_are_inline() -> None:
    document = {
        "status": "FAIL",
        "steps": {
            "map": step(
                branches={
                    "map.a": {
                        "steps": {"x": step(attempt("2026-03-01 09:00:00", "2026-03-01 11:00:00"))}
                    }
                }
            )
        },
    }
    _, _, start, end = summarise_run_log(document)
    assert (start, end) == (datetime(2026, 3, 1, 9), datetime(2026, 3, 1, 11))


def test_running_run_has_a_start_but_no_end() -> None:
    status, _, start, end = summarise_run_log({**FINISHED, "status": "PROCESSING"})
    assert status == "PROCESSING" and start is not None and end is None


def test_old_runnable_step_chunks_and_jobs() -> None:
    """Before 2026 runnable kept steps in StepLog-*.json chunks; jobs have a JobLog."""
    bare = {"run_id": "r1", "status": "SUCCESS", "steps": {}}
    assert summarise_run_log(bare)[2:] == (None, None)
    steps = [step(attempt("2026-03-01 08:00:00", "2026-03-01 08:30:00"))]
    assert summarise_run_log(bare, steps)[2:] == (
        datetime(2026, 3, 1, 8),
        datetime(2026, 3, 1, 8, 30),
    )
    job = {**bare, "job": step(attempt("2026-03-01 07:00:00", "2026-03-01 07:05:00"))}
    assert summarise_run_log(job)[2:] == (datetime(2026, 3, 1, 7), datetime(2026, 3, 1, 7, 5))


def test_odd_documents_do_not_crash() -> None:
    odd = {"steps": {"a": "not a step", "b": {"attempts": [{"start_time": "", "end_time": 7}]}}}
    assert summarise_run_log(odd) == ("UNKNOWN", "", None, None)
    assert summarise_run_log({"steps": []}) == ("UNKNOWN", "", None, None)


def test_runs_are_ordered_by_their_latest_write() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)

    def objects(*minutes: int | None) -> list[RemoteObject]:
        return [
            RemoteObject(f"x/{i}", "e", 1, None if m is None else now + timedelta(minutes=m))
            for i, m in enumerate(minutes)
        ]

    runs = {
        "old": objects(1, 2),
        "busy": objects(0, 30),  # started first, written last
        "b-tie": objects(10),
        "a-tie": objects(10),
        "unknown": objects(None),
    }
    assert order_runs(runs) == ["busy", "a-tie", "b-tie", "old", "unknown"]


def test_run_log_keys() -> None:
    assert run_log_key("r1", Layout.CHUNKED) == "r1/RunLog"
    assert run_log_key("r1", Layout.SINGLE) == "r1/r1.json"


class FakeStore:
    """The two calls runs makes, over a dict (key → body); counts the GETs."""

    location = "bucket/prefix"

    def __init__(self, bodies: dict[str, bytes], stamps: dict[str, int]) -> None:
        self.bodies = bodies
        self.stamps = stamps
        self.gets: list[str] = []

    def list(self, sub_prefix: str = "") -> list[RemoteObject]:
        base = datetime(2026, 3, 1, tzinfo=UTC)
        return [
            RemoteObject(key, "e", len(body), base + timedelta(minutes=self.stamps[key]))
            for key, body in self.bodies.items()
            if key.startswith(sub_prefix)
        ]

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        if key not in self.bodies:
            raise NotFoundError(key, code="NoSuchKey")
        return self.bodies[key]


def context(store: FakeStore, layout: Layout = Layout.CHUNKED) -> StoreContext:
    settings = load_sidecar_settings({"layout": layout})
    return StoreContext(settings=settings, store=store)  # type: ignore[arg-type]


def run_log(run_id: str, status: str) -> bytes:
    return json.dumps({**FINISHED, "run_id": run_id, "status": status}).encode()


def test_collect_reads_only_what_the_limit_shows() -> None:
    bodies = {f"r{i}/RunLog": run_log(f"r{i}", "SUCCESS") for i in range(40)}
    store = FakeStore(bodies, {key: int(key[1:].split("/")[0]) for key in bodies})
    shown, total, _ = collect(context(store), limit=3, status=None)
    assert [s.run_id for s in shown] == ["r39", "r38", "r37"] and total == 40
    assert len(store.gets) < 40  # one batch, not every run log


def test_collect_filters_by_status_and_describes_odd_runs() -> None:
    bodies = {
        "ok/RunLog": run_log("ok", "SUCCESS"),
        "ok/BranchLog-map.a": b"{}",
        "bad/RunLog": run_log("bad", "FAIL"),
        "headless/BranchLog-map.a": b"{}",  # its RunLog is not uploaded (yet)
        "garbled/RunLog": b"{not json",
        "other/other.json": json.dumps("{}").encode(),  # a file-system/minio run
        "old/RunLog": json.dumps({"run_id": "old", "status": "SUCCESS", "steps": {}}).encode(),
        "old/StepLog-prepare-1700000000": json.dumps(
            step(attempt("2026-03-01 08:00:00", "2026-03-01 08:00:30"))
        ).encode(),
    }
    store = FakeStore(bodies, dict.fromkeys(bodies, 0))
    failed, _, _ = collect(context(store), limit=None, status="fail")
    assert [s.run_id for s in failed] == ["bad"]

    everything, total, _ = collect(context(store), limit=None, status=None)
    by_id = {s.run_id: s for s in everything}
    assert total == 6
    assert by_id["ok"].chunks == 2 and by_id["ok"].duration_seconds == 3.75
    assert (by_id["headless"].status, by_id["headless"].problem) == ("UNKNOWN", "no RunLog object")
    assert by_id["garbled"].status == "UNREADABLE"
    assert "try --layout single" in by_id["other"].problem
    assert by_id["old"].duration_seconds == 30  # from the old StepLog chunk


def test_the_table_shows_hostile_keys_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """Run ids are object keys anyone with write access chose: ESC and newlines show as
    escapes (no cleared screen, no faked row), markup literally."""
    from runlog_relay.tools.runs import RunSummary, _print_table

    hostile = RunSummary("esc\x1b[2J\n[bold]run", "SUCCESS", "", None, None, None, 1, 10, None)
    _print_table([hostile], 1, {"bucket": "b/p", "endpoint": "http://s3", "layout": "chunked"})
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "esc\\x1b[2J\\n[bold]run" in out


def test_runs_pull_and_verify_would_ignore_are_left_out_and_named() -> None:
    """runs listed a run whose keys are not safe file names; pull then said "missing"
    and verify ignored its objects."""
    bodies = {
        "ok/RunLog": run_log("ok", "SUCCESS"),
        "esc\x1b[2J/RunLog": run_log("esc", "SUCCESS"),
        ".hidden/RunLog": run_log("hidden", "SUCCESS"),
    }
    store = FakeStore(bodies, dict.fromkeys(bodies, 0))
    shown, total, ignored = collect(context(store), limit=None, status=None)
    assert [s.run_id for s in shown] == ["ok"] and total == 1
    assert ignored == [".hidden", "esc\x1b[2J"]


def test_the_ignored_runs_are_named_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from runlog_relay.tools import runs

    store = FakeStore({"esc\x1b[2J/RunLog": run_log("e", "FAIL")}, {"esc\x1b[2J/RunLog": 0})
    monkeypatch.setattr(runs, "open_context", lambda args: context(store))
    assert runs.handle(argparse.Namespace(limit=None, status=None, json=False)) == 0
    err = capsys.readouterr().err
    assert err == (
        "runlog-relay runs: warning: 1 run(s) not listed, their object keys are not safe file"
        " names (pull and verify ignore them too): 'esc\\x1b[2J'\n"
    )
