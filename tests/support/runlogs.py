"""Run-log documents built with runnable's own models (runnable/datastore.py), for tests."""

from __future__ import annotations

import json
from typing import Any

from runnable.datastore import (
    BranchLog,
    CodeIdentity,
    JsonParameter,
    MetricParameter,
    RunLog,
    StepAttempt,
    StepLog,
)


def attempt(start: str, end: str, status: str = "SUCCESS", **extra: Any) -> StepAttempt:
    return StepAttempt(start_time=start, end_time=end, status=status, **extra)


def step(internal: str, *attempts: StepAttempt, step_type: str = "task", **extra: Any) -> StepLog:
    return StepLog(
        name=internal.rpartition(".")[2],
        internal_name=internal,
        step_type=step_type,
        attempts=list(attempts),
        **extra,
    )


GIT = CodeIdentity(
    code_identifier="0123abc", code_identifier_type="git", code_identifier_dependable=True
)


def chunked_run() -> dict[str, Any]:
    """A finished 0.50 chunked run: RunLog + one BranchLog per branch (JSON documents)."""
    prepare = step(
        "prepare",
        attempt("2026-03-01 10:00:00", "2026-03-01 10:00:01", code_identities=[GIT]),
        status="SUCCESS",
    )
    mapped = step("map", step_type="map", status="FAIL")
    run_log = RunLog(
        run_id="r1",
        status="FAIL",
        tag="nightly",
        steps={"prepare": prepare, "map": mapped},
        parameters={
            "label": JsonParameter(kind="json", value="first"),
            "score": MetricParameter(kind="metric", value=0.9),
        },
    )
    b = BranchLog(
        internal_name="map.b",
        status="FAIL",
        steps={
            "map.b.process": step(
                "map.b.process",
                attempt(
                    "2026-03-01 10:00:02",
                    "2026-03-01 10:00:03",
                    "FAIL",
                    message="Call to the function tasks.process did not succeed.\n",
                ),
                attempt(
                    "2026-03-01 10:00:05",
                    "2026-03-01 10:00:06",
                    attempt_number=2,
                    retry_indicator="r1",
                ),
                status="SUCCESS",
            )
        },
    )
    a = BranchLog(
        internal_name="map.a",
        status="SUCCESS",
        steps={
            "map.a.process": step(
                "map.a.process",
                attempt("2026-03-01 10:00:01.500000", "2026-03-01 10:00:02"),
                status="SUCCESS",
            )
        },
    )
    return {
        "RunLog": json.loads(run_log.model_dump_json()),
        # Listing order is by name; the model must order branches by when they ran.
        "BranchLog-map.b": json.loads(b.model_dump_json()),
        "BranchLog-map.a": json.loads(a.model_dump_json()),
    }
