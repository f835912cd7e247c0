"""The run model: runnable's documents, every layout and release, into one typed run.

The runnable 0.47 chunks are a real recording (hack/record_runnable_047.py) checked
against the run as runnable 0.47's own store assembles it; the 0.50 shapes come from
``RunLog.model_dump()`` (runnable/datastore.py), built here with runnable's own models.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.support.runlogs import chunked_run, step

from runlog_relay.tools.runfetch import execution_log_stem, traceback_of
from runlog_relay.tools.runmodel import RunShapeError, build_run
from runlog_relay.tools.timeline import layout_timeline

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runnable-0.47"


def test_chunked_run_has_every_step_in_order_with_its_branch_and_depth() -> None:
    run = build_run("r1", chunked_run())
    assert [(s.name, s.depth, s.branch) for s in run.steps] == [
        ("prepare", 0, None),
        ("map", 0, None),
        ("map.a.process", 1, "map.a"),
        ("map.b.process", 1, "map.b"),
    ]
    assert (run.status, run.tag, run.finished, run.problems) == ("FAIL", "nightly", True, ())
    assert run.parameter_values() == {"label": "first", "score": 0.9}
    assert run.parameters["score"].kind == "metric"
    retried = run.step("map.b.process")
    assert retried is not None
    assert [(a.number, a.status, a.retry_indicator) for a in retried.attempts] == [
        (1, "FAIL", ""),
        (2, "SUCCESS", "r1"),
    ]
    assert retried.duration_seconds == 4.0  # first attempt's start to the last one's end
    composite = run.step("map")
    assert composite is not None and composite.is_composite
    assert composite.started_at == datetime(2026, 3, 1, 10, 0, 1, 500000)
    assert composite.ended_at == datetime(2026, 3, 1, 10, 0, 6)
    assert run.duration_seconds == 6.0
    assert [identity.describe() for identity in run.code_identities] == ["git:0123abc"]
    [failure] = run.failures
    assert (failure.step, failure.attempt) == ("map.b.process", 1)
    assert failure.message == "Call to the function tasks.process did not succeed."


def test_single_layout_document_nests_branches_and_reads_the_same() -> None:
    documents = chunked_run()
    nested = copy.deepcopy(documents["RunLog"])
    nested["steps"]["map"]["branches"] = {
        "map.b": documents["BranchLog-map.b"],
        "map.a": documents["BranchLog-map.a"],
    }
    single = build_run("r1", {"r1.json": nested})
    chunked = build_run("r1", documents)
    assert single.steps == chunked.steps
    assert single.failures == chunked.failures
    assert single.source == "single"


def test_runnable_047_chunks_read_like_runnable_047_assembles_them() -> None:
    folder = FIXTURES / "old-047"
    documents = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    assert any(name.startswith("StepLog-") for name in documents)
    expected = json.loads((FIXTURES / "expected.json").read_text())
    run = build_run("old-047", documents)

    def flatten(steps: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, item in steps.items():
            out[name] = item
            for branch in item["branches"].values():
                out.update(flatten(branch["steps"]))
        return out

    truth = flatten(expected["steps"])
    assert {s.name for s in run.steps} == set(truth)
    for model_step in run.steps:
        document = truth[model_step.name]
        assert model_step.status == document["status"]
        assert model_step.step_type == document["step_type"]
        assert [a.status for a in model_step.attempts] == [
            a["status"] for a in document["attempts"]
        ]
        if document["attempts"]:
            assert model_step.started_at == datetime.fromisoformat(
                document["attempts"][0]["start_time"]
            )
    # runnable 0.47 orders top-level steps by creation time, as the model does.
    assert [s.name for s in run.steps if s.depth == 0] == list(expected["steps"])
    assert run.parameter_values() == {k: v["value"] for k, v in expected["parameters"].items()}
    assert run.status == expected["status"] == "FAIL"
    assert [f.step for f in run.failures] == ["map.b.process"]
    assert run.source.startswith("chunked, runnable 0.47")
    assert run.problems == ()


def test_a_branch_without_its_step_and_a_finished_map_without_branches_are_problems() -> None:
    documents = chunked_run()
    orphan = copy.deepcopy(documents["BranchLog-map.a"])
    orphan["internal_name"] = "gone.x"
    documents["BranchLog-gone.x"] = orphan
    run = build_run("r1", documents)
    assert any("gone.x" in problem for problem in run.problems)

    bare = {"RunLog": chunked_run()["RunLog"]}
    problems = build_run("r1", bare).problems
    assert problems == ("map finished but none of its branch logs is there",)


def test_a_running_run_has_no_end_and_its_running_step_is_open() -> None:
    documents = chunked_run()
    documents["RunLog"]["status"] = "PROCESSING"
    process = documents["BranchLog-map.b"]["steps"]["map.b.process"]
    process["status"] = "PROCESSING"
    process["attempts"][-1]["end_time"] = ""
    documents["RunLog"]["steps"]["map"]["status"] = "PROCESSING"
    run = build_run("r1", documents)
    assert run.ended_at is None and run.duration_seconds is None
    running = run.step("map.b.process")
    assert running is not None and running.ended_at is None
    spans = {span.step.name: span for span in layout_timeline(run).spans}
    assert spans["map.b.process"].open_ended
    assert spans["map.b.process"].segments[-1].open_ended
    assert not spans["prepare"].open_ended


def test_copied_run_is_noted_not_refused() -> None:
    run = build_run("copy", chunked_run())
    assert run.notes and "'r1'" in run.notes[0]
    assert run.problems == ()


@pytest.mark.parametrize(
    ("documents", "needle"),
    [
        ({"BranchLog-x.a": {}}, "no RunLog"),
        ({"RunLog": []}, "not a JSON object"),
        ({"RunLog": {"status": "SUCCESS"}}, "no run_id and status"),
        ({"RunLog": {"run_id": "r1", "status": 3}}, "no run_id and status"),
        ({"RunLog": {"run_id": "r1", "steps": ["a"]}}, "RunLog.steps is not a JSON object"),
        ({"RunLog": {"run_id": "r1", "steps": {"a": 1}}}, "RunLog.steps['a']"),
        (
            {"RunLog": {"run_id": "r1", "steps": {"a": {"attempts": {}}}}},
            "attempts is not a list",
        ),
        ({"RunLog": {"run_id": "r1", "parameters": {"p": {"v": 1}}}}, "has no kind and value"),
        ({"RunLog": {"run_id": "r1"}, "BranchLog-m.a": "text"}, "BranchLog-m.a is not"),
    ],
)
def test_documents_that_are_not_runnable_shape_are_refused(
    documents: dict[str, Any], needle: str
) -> None:
    with pytest.raises(RunShapeError) as caught:
        build_run("r1", documents)
    assert needle in str(caught.value)


def test_odd_but_valid_values_do_not_crash() -> None:
    documents = {
        "RunLog": {
            "run_id": "r1",
            "status": "SUCCESS",
            "steps": {
                "a": {"attempts": [{"start_time": "not a time", "end_time": 7}]},
                "b": {"attempts": [{"start_time": "2026-03-01T10:00:00+00:00"}]},
            },
        }
    }
    run = build_run("r1", documents)
    assert [s.name for s in run.steps] == ["a", "b"]
    assert run.step("a") is not None and run.step("a").started_at is None  # type: ignore[union-attr]
    layout_timeline(run)  # aware and naive times never meet in arithmetic


def test_job_runs_show_the_job_as_a_step() -> None:
    job = {
        "status": "SUCCESS",
        "attempts": [{"start_time": "2026-03-01 07:00:00", "end_time": "2026-03-01 07:05:00"}],
        "code_identities": [{"code_identifier": "img@sha256:1", "code_identifier_type": "docker"}],
    }
    run = build_run("j", {"RunLog": {"run_id": "j", "status": "SUCCESS", "job": job}})
    assert [(s.name, s.step_type) for s in run.steps] == [("job", "job")]
    assert run.duration_seconds == 300
    assert [i.describe() for i in run.code_identities] == ["docker:img@sha256:1 [not dependable]"]


def test_execution_log_names_follow_runnable_make_log_file_name() -> None:
    documents = chunked_run()
    documents["RunLog"]["steps"]["parallel"] = json.loads(
        step("parallel", step_type="parallel").model_dump_json()
    )
    run = build_run("r1", documents)
    # Names as runnable 0.50 wrote them in a real catalog (see the integration tests).
    assert execution_log_stem(run, "prepare") == "prepare"
    assert execution_log_stem(run, "map.b.process") == "mapmapvariableplaceholderprocessvalueb"
    assert execution_log_stem(run, "parallel.left.left_task") == "parallelleftlefttask"


def test_traceback_is_cut_from_the_execution_log() -> None:
    log = "Parameters available\n  {}\nTraceback (most recent call last):\n  x\nValueError: no\n\n"
    assert traceback_of(log) == "Traceback (most recent call last):\n  x\nValueError: no"
    assert traceback_of("all good\n") == ""


def test_timeline_columns_cover_each_attempt() -> None:
    run = build_run("r1", chunked_run())
    timeline = layout_timeline(run)
    assert timeline.total_seconds == 6.0
    spans = {span.step.name: span for span in timeline.spans}
    first, second = spans["map.b.process"].segments
    assert (first.status, second.status) == ("FAIL", "SUCCESS")
    assert first.columns(60, 6.0) == (20, 10)
    assert second.columns(60, 6.0) == (50, 10)
    # A zero-length step still gets a column, and nothing falls off the chart.
    assert spans["prepare"].segments[0].columns(60, 6.0) == (0, 10)
    assert first.columns(1, 6.0) == (0, 1)
