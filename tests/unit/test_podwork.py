"""sidecar.podwork: when --exit-when-sealed lets the sidecar end its pod."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tests.support.fakes import FakeClock

from runlog_relay.sidecar.command import _seal_problems
from runlog_relay.sidecar.podwork import PodWork
from runlog_relay.sidecar.runs import Seal
from runlog_relay.sidecar.types import RunLedger

STARTED = 1_000_000.0  # wall clock when the sidecar started


def seal(run_id: str, status: str = "SUCCESS") -> Seal:
    return Seal(run_id, status, 1, STARTED + 5, STARTED + 5, {}, {})


class Pod:
    def __init__(self, *runs: str, retry: str | None = None) -> None:
        self.finished = 0
        self.clock = FakeClock()
        self.work = PodWork(
            runs,
            retry_run_id=retry,
            on_finished=self.finish,
            started_at=STARTED,
            clock=self.clock,
        )

    def finish(self) -> None:
        self.finished += 1


def test_a_run_seen_running_then_final_and_sealed_ends_the_pod() -> None:
    pod = Pod("r1")
    pod.work.run_evaluated("r1", None, STARTED + 1, True)
    pod.work.run_evaluated("r1", "SUCCESS", STARTED + 2, False)
    assert pod.work.work_done and not pod.finished  # done, not sealed: wait
    assert pod.work.waiting_for() == ["r1: final, not sealed yet"]
    pod.work.run_sealed(seal("r1"))
    assert pod.finished == 1
    pod.work.run_sealed(seal("r1"))
    assert pod.finished == 1  # once


def test_every_run_of_the_pod_counts_and_others_do_not() -> None:
    pod = Pod("r1", "r2")
    for run_id in ("r1", "other"):
        pod.work.run_evaluated(run_id, "FAIL", STARTED + 2, True)
        pod.work.run_sealed(seal(run_id, "FAIL"))
    assert not pod.finished
    assert pod.work.waiting_for() == ["r2: no RunLog yet"]
    pod.work.run_evaluated("r2", "SUCCESS", STARTED + 3, True)
    pod.work.run_sealed(seal("r2"))
    assert pod.finished == 1


def test_a_retried_run_waits_for_this_pods_retry() -> None:
    pod = Pod("r1", retry="r1")
    pod.work.run_evaluated("r1", "FAIL", STARTED - 3600, True)  # the failed attempt
    pod.work.run_sealed(seal("r1", "FAIL"))
    assert not pod.work.work_done and not pod.finished
    pod.work.run_unsealed("r1")  # the retry writes it
    pod.work.run_evaluated("r1", None, STARTED + 2, False)
    pod.work.run_evaluated("r1", "SUCCESS", STARTED + 9, False)
    pod.work.run_sealed(seal("r1"))
    assert pod.finished == 1


def test_a_retry_that_finished_before_the_sidecar_looked_counts() -> None:
    pod = Pod("r1", retry="r1")
    pod.work.run_evaluated("r1", "SUCCESS", STARTED + 1, True)  # written after the start
    pod.work.run_sealed(seal("r1"))
    assert pod.finished == 1


def test_a_run_written_again_after_its_seal_is_waited_for_again() -> None:
    pod = Pod("r1", "r2")
    pod.work.run_evaluated("r1", "SUCCESS", STARTED + 1, True)
    pod.work.run_sealed(seal("r1"))
    pod.work.run_unsealed("r1")
    pod.work.run_evaluated("r2", "SUCCESS", STARTED + 1, True)
    pod.work.run_sealed(seal("r2"))
    assert not pod.finished
    pod.work.run_evaluated("r1", "SUCCESS", STARTED + 4, False)
    pod.work.run_sealed(seal("r1"))
    assert pod.finished == 1


def test_stuck_only_when_the_work_is_done_and_the_problem_lasts() -> None:
    pod = Pod("r1")
    problems = {"r1/BranchLog-x.json": "torn"}
    assert not pod.work.stuck(problems, 10)  # the run is not over: not stuck, just early
    pod.work.run_evaluated("r1", "SUCCESS", STARTED + 1, True)
    assert not pod.work.stuck(problems, 10)
    pod.clock.advance(9.9)
    assert not pod.work.stuck(problems, 10)
    assert not pod.work.stuck({}, 10)  # it went away: the clock starts again
    assert not pod.work.stuck(problems, 10)
    pod.clock.advance(10)
    assert pod.work.stuck(problems, 10)


def test_it_needs_run_ids() -> None:
    with pytest.raises(ValueError, match="run ids"):
        PodWork((), retry_run_id=None, on_finished=lambda: None)


def test_an_outage_is_waited_out_refused_credentials_and_broken_files_are_not() -> None:
    # What the main loop hands `stuck`: problems waiting will not fix, never an outage.
    ledgers = {
        "r1": RunLedger("r1", {}, {}, newest_mtime_ns=0),
        "r2": RunLedger(
            "r2", {}, {"r2/BranchLog-x.json": "torn"}, 0, problems={"r2/BranchLog-x.json": "torn"}
        ),
    }
    health = SimpleNamespace(problem=None, outage="connection refused by 127.0.0.1:9")
    pipeline = SimpleNamespace(
        detector=SimpleNamespace(run_ledger=ledgers.get), store_health=health
    )
    assert _seal_problems(pipeline, ("r1",)) == {}  # type: ignore[arg-type]
    assert _seal_problems(pipeline, ("r1", "r2", "r3")) == {"r2/BranchLog-x.json": "torn"}  # type: ignore[arg-type]
    health.problem = "uploading r1/RunLog: AccessDenied"
    assert _seal_problems(pipeline, ("r1",)) == {  # type: ignore[arg-type]
        "object store": "uploading r1/RunLog: AccessDenied"
    }
