"""When is a run final: every RunLog version real runnable 0.50 runs wrote, in order.

The fixture is recorded by ``hack/record_runlog_versions.py`` from the demo pipeline: a
success, a run whose map iteration fails, and runnable's retry of that run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runlog_relay.layout import Layout
from runlog_relay.runstate import final_status, final_status_of, run_log_relative

VERSIONS = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "runlog-versions-0.50.json").read_text()
)


def test_a_run_is_final_only_at_its_last_version() -> None:
    for attempt, expected in (("success", "SUCCESS"), ("failed", "FAIL")):
        statuses = [final_status(version) for version in VERSIONS[attempt]]
        assert statuses[-1] == expected, attempt
        # The terminal status is written before the terminal step is: not final yet.
        assert statuses[:-1] == [None] * (len(statuses) - 1), attempt
        assert VERSIONS[attempt][-2]["status"] == expected


def test_a_retry_is_not_final_while_it_reruns_steps() -> None:
    versions = VERSIONS["retried"]
    statuses = [final_status(version) for version in versions]
    assert statuses[-1] == "SUCCESS"
    for version, status in zip(versions[:-1], statuses[:-1], strict=True):
        if status is None:
            continue
        # The old status stays until the success node runs.
        assert version["status"] == "FAIL"
        # The only versions that look final: the re-run composite step (map) is done and
        # the next step has not started; a composite step's attempts are in its branches.
        steps = version["steps"]
        assert steps["map"]["status"] == "SUCCESS" and not steps["map"]["attempts"]
        assert "summarise" not in steps
    # A re-run task step has attempts newer than the old fail node's: never final.
    done_summarise = [v for v in versions if v["steps"].get("summarise", {}).get("status")]
    assert done_summarise and all(final_status(v) is None for v in done_summarise[:-1])


def step(kind: str, status: str, started: str | None = None) -> dict[str, Any]:
    attempts = [{"start_time": started}] if started else []
    return {"status": status, "step_type": kind, "attempts": attempts}


def test_argo_failed_step_before_the_fail_node_is_not_final() -> None:
    # On Argo the failed step's pod sets FAIL; the fail node runs in the next pod.
    run = {"status": "FAIL", "steps": {"a": step("task", "FAIL", "2026-01-01 10:00:00")}}
    assert final_status(run) is None
    run["steps"]["fail"] = step("fail", "SUCCESS", "2026-01-01 10:00:05.5")
    assert final_status(run) == "FAIL"


def test_jobs_and_odd_documents() -> None:
    assert final_status({"status": "SUCCESS", "steps": {}, "job": {"status": "SUCCESS"}}) == (
        "SUCCESS"
    )
    assert final_status({"status": "FAIL", "job": {"status": "FAIL"}}) == "FAIL"
    for odd in (
        {},
        {"status": "PROCESSING", "steps": {}},
        {"status": "CREATED"},
        {"status": "SUCCESS", "steps": []},
        {"status": "SUCCESS", "steps": {"x": "not a step"}},
        {"status": "SUCCESS", "steps": {"x": step("task", "SUCCESS")}},  # no terminal step
    ):
        assert final_status(odd) is None, odd
    # Times that do not parse do not decide anything.
    run = {
        "status": "SUCCESS",
        "steps": {"a": step("task", "SUCCESS", "soon"), "success": step("success", "SUCCESS")},
    }
    assert final_status(run) == "SUCCESS"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (json.dumps(VERSIONS["success"][-1]).encode(), "SUCCESS"),
        (b'{"status": "SUCCESS", "steps": {}}', "SUCCESS"),
        (b"[1, 2]", None),
        (b'{"status": "SUCC', None),
        (b"\xff\xfe", None),
    ],
)
def test_final_status_of_bytes(data: bytes, expected: str | None) -> None:
    assert final_status_of(data) == expected


def test_run_log_relative() -> None:
    assert run_log_relative("r1", Layout.CHUNKED) == "r1/RunLog.json"
    assert run_log_relative("r1", Layout.SINGLE) == "r1.json"
