"""show's terminal and HTML views and diff's comparison, on runs built from runnable's models."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import re

import pytest
from rich.console import Console
from tests.support.runlogs import chunked_run

from runlog_relay.tools.diff import compare_runs
from runlog_relay.tools.htmlpage import render_page
from runlog_relay.tools.runmodel import build_run
from runlog_relay.tools.show import PLAIN_CHART_WIDTH, render_run, run_to_json


def rendered(width: int, *, terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, color_system=None)
    render_run(build_run("r1", chunked_run()), console)
    return out.getvalue()


@pytest.mark.parametrize("width", [60, 100, 180])
def test_terminal_view_fits_the_terminal(width: int) -> None:
    text = rendered(width, terminal=True)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "map.b.process" in text and "█" in text
    # Wider terminals get a wider chart.
    bars = [line for line in text.splitlines() if "prepare" in line and "█" in line]
    assert bars


def test_chart_grows_with_the_terminal() -> None:
    def chart_cells(width: int) -> int:
        line = next(
            ln for ln in rendered(width, terminal=True).splitlines() if "map.b.process" in ln
        )
        return len(line.rstrip())

    assert chart_cells(180) > chart_cells(100)


def test_pipe_gets_plain_ascii_at_a_fixed_width() -> None:
    text = rendered(1000, terminal=False)
    assert "█" not in text and "\x1b[" not in text
    row = next(line for line in text.splitlines() if "map.b.process" in line)
    chart = row.rsplit("|", 2)[1]
    assert len(chart) == PLAIN_CHART_WIDTH + 1  # the chart and the cell's padding
    # The failed first attempt and the retry are separate stretches: x then =.
    assert re.search(r"x+ +=+", chart)
    assert "Call to the function tasks.process did not succeed." in text
    assert all(line == line.rstrip() or "|" in line for line in text.splitlines())


def test_json_has_the_fields_the_issue_names() -> None:
    document = run_to_json(build_run("r1", chunked_run()))
    assert list(document)[:4] == ["run_id", "status", "parameters", "steps"]
    assert document["parameters"] == {"label": "first", "score": 0.9}
    names = [s["name"] for s in document["steps"]]
    assert names == ["prepare", "map", "map.a.process", "map.b.process"]
    retried = document["steps"][3]
    assert {"name", "status", "started_at", "ended_at", "duration_seconds"} <= set(retried)
    assert retried["duration_seconds"] == 4.0
    assert [a["status"] for a in retried["attempts"]] == ["FAIL", "SUCCESS"]
    assert retried["failures"][0]["message"].startswith("Call to the function")
    json.dumps(document, default=str)  # serialisable as emitted


def test_html_escapes_everything_from_the_run_log() -> None:
    documents = chunked_run()
    hostile = "<script>alert(1)</script>"
    documents["RunLog"]["parameters"]["x"] = {"kind": "json", "value": hostile}
    documents["RunLog"]["tag"] = '"><img src=x onerror=alert(1)>'
    page = render_page(build_run("r1", documents))
    assert hostile not in page and "<img" not in page
    assert "&lt;script&gt;" in page
    assert "<script" not in page  # no scripts at all: a standalone, static page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    assert page.count('class="row') == 4
    assert 'data-step="map.b.process" data-status="SUCCESS"' in page


def test_equal_runs_differ_only_in_time() -> None:
    a = build_run("r1", chunked_run())
    slower = chunked_run()
    slower["BranchLog-map.a"]["steps"]["map.a.process"]["attempts"][0]["end_time"] = (
        "2026-03-01 10:00:04"
    )
    diff = compare_runs(a, build_run("r2", slower))
    assert diff.equal and diff.differences == []
    row = next(r for r in diff.steps if r["name"] == "map.a.process")
    assert row["duration_change_seconds"] == 2.0 and not row["differs"]


def test_diff_reports_parameters_with_both_values_and_steps_side_by_side() -> None:
    other = chunked_run()
    other["RunLog"]["parameters"]["label"]["value"] = "second"
    del other["RunLog"]["parameters"]["score"]
    other["RunLog"]["parameters"]["extra"] = {"kind": "json", "value": [1]}
    other["BranchLog-map.b"]["steps"]["map.b.process"]["status"] = "FAIL"
    other["RunLog"]["steps"]["prepare"]["attempts"][0]["code_identities"][0]["code_identifier"] = (
        "fedcba9"
    )
    del other["BranchLog-map.a"]
    diff = compare_runs(build_run("r1", chunked_run()), build_run("r1", copy.deepcopy(other)))
    assert not diff.equal
    assert diff.differences == ["parameters", "code_identities", "steps"]
    assert diff.parameters == {
        "label": {"a": "first", "b": "second"},
        "score": {"a": 0.9},
        "extra": {"b": [1]},
    }
    rows = {row["name"]: row for row in diff.steps}
    assert rows["map.b.process"]["a"]["status"] == "SUCCESS"
    assert rows["map.b.process"]["b"]["status"] == "FAIL"
    assert rows["map.a.process"]["b"] is None and rows["map.a.process"]["differs"]
    document = diff.to_json()
    assert document["parameters"]["label"] == {"a": "first", "b": "second"}
    assert document["equal"] is False


def test_the_seal_is_shown_only_when_the_run_carries_it() -> None:
    run = build_run("r1", chunked_run())

    def text(sealed: str | None) -> str:
        out = io.StringIO()
        render_run(dataclasses.replace(run, sealed=sealed), Console(file=out, width=100))
        return out.getvalue()

    assert "sealed" not in text(None)
    assert run_to_json(run)["sealed"] is None
    shown = text(run.status)
    assert f"sealed {run.status}" in shown and "warning" not in shown
    other = "FAIL" if run.status == "SUCCESS" else "SUCCESS"
    assert "written again after its seal" in text(other)
    assert run_to_json(dataclasses.replace(run, sealed="FAIL"))["sealed"] == "FAIL"


HOSTILE = "\x1b[2J\x1b[1;1HALL GOOD"  # clear the screen, cursor home, fake a verdict


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_control_characters_and_markup_from_the_bucket_print_as_text(
    monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    """A hostile run log cannot clear the screen, move the cursor or style the output:
    escapes show as text (``\\x1b``), markup and emoji codes literally."""
    from runlog_relay.tools import _common

    document = chunked_run()
    document["RunLog"]["run_id"] = "esc\x1b[31mRED\nfake row"
    document["RunLog"]["tag"] = "\x1b[31mtag\u202e"
    document["RunLog"]["parameters"]["label"]["value"] = HOSTILE
    document["RunLog"]["parameters"]["[bold]name[/bold]"] = {"kind": "json", "value": ":smile:"}
    out = io.StringIO()
    monkeypatch.setattr(_common.sys, "stdout", out)
    console = _common.stdout_console()
    if terminal:  # what a terminal gets: rich's own colour codes around the escaped text
        console = _common._ToolConsole(file=out, width=120, force_terminal=True)
    render_run(build_run("esc", document), console)
    text = out.getvalue()
    assert "\x1b[2J" not in text and "\x1b[1;1H" not in text and "\u202e" not in text
    assert "\\x1b[2J\\x1b[1;1HALL GOOD" in text
    assert "esc\\x1b[31mRED\\nfake row" in text  # one line, as a run id must be
    assert "\\x1b[31mtag\\u202e" in text
    assert "[bold]name[/bold]" in text and ":smile:" in text
    if not terminal:
        assert "\x1b" not in text  # a pipe gets no escape sequence at all


def test_a_huge_value_is_cut_in_human_output_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 150 MB parameter froze `show` while rich laid it out; --json keeps it whole."""
    document = chunked_run()
    huge = "y" * 5_000_000
    document["RunLog"]["parameters"]["label"]["value"] = huge
    out = io.StringIO()
    run = build_run("r1", document)
    render_run(run, Console(file=out, width=100))
    text = out.getvalue()
    assert len(text) < 20_000
    assert f"({len(huge) - 2000:,} more characters; --json shows all)" in text.replace("\n", "")
    assert run_to_json(run)["parameters"]["label"] == huge
    a, b = build_run("a", document), build_run("b", chunked_run())
    from runlog_relay.tools import diff as diff_tool

    out = io.StringIO()
    monkeypatch.setattr(diff_tool, "stdout_console", lambda: Console(file=out, width=100))
    diff_tool._print(compare_runs(a, b))
    assert len(out.getvalue()) < 40_000  # diff's table cuts it too
