"""show and diff against moto's S3 server, on runs written by real runnable pipelines.

Real parts: runnable 0.50 pipelines (parallel + map, initial parameters, one map
iteration failing with a real exception, runnable's own retry of that run) in
subprocesses, in both layouts; runnable's own ``minio`` catalog writing the tasks'
execution logs (with their tracebacks) into moto; the project's ObjectStore uploading
the run logs with the layout mapping, standing in for the sidecar; the tools through
``runlog_relay.cli.main``, in a pseudo-terminal, and as subprocesses for exit codes; the
HTML page in headless Chromium. Every expectation about a run comes from runnable's own
reading of it (``read_run_log_from_bucket``), not from constants.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from runlog_relay.layout import Layout
from runlog_relay.runnable_compat import (
    FAIL_ITEM_VARIABLE,
    PipelineFailedError,
    read_run_log_from_bucket,
    run_pipeline,
)
from runlog_relay.tools.htmlpage import STATUS_COLOURS
from tests.support import browser
from tests.support.s3server import free_port
from tests.support.toolcli import ACCESS_KEY, Result, bucket_store, cli, upload_like_the_sidecar

pytestmark = [pytest.mark.integration]

KEY = ACCESS_KEY
BUCKET = f"show-{os.getpid()}-{time.time_ns() % 10**9}"
LOGS = f"{BUCKET}/run-logs"  # runnable's bucket[/prefix] for the run-log store
SINGLE = f"{BUCKET}/single"
CATALOG = f"{BUCKET}/catalog"  # runnable's minio catalog: <catalog>/<run_id>/...
FIRST = {"label": "first", "threshold": 0.5}
SECOND = {"label": "second", "threshold": 0.5}


@dataclass(frozen=True)
class World:
    endpoint: str
    folder: Path  # the chunked log folder
    single_folder: Path


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket_store(endpoint, LOGS).check_bucket(create=True)
    base = tmp_path_factory.mktemp("show-runs")
    folder, single = base / "chunked", base / "single"
    catalog = {
        "type": "minio",
        "config": {
            "endpoint_url": endpoint,
            "aws_access_key_id": KEY,
            "aws_secret_access_key": KEY,
            "bucket": CATALOG,
        },
    }

    def run(run_id: str, *, layout: str = "chunked", **kwargs: Any) -> None:
        run_pipeline(
            folder if layout == "chunked" else single,
            run_id,
            layout=layout,  # type: ignore[arg-type]
            workdir=base / "work" / run_id,
            timeout=90,
            catalog=catalog,
            **kwargs,
        )

    run("first", parameters=FIRST)
    run("second", parameters=SECOND)
    with pytest.raises(PipelineFailedError):
        run("failed", parameters=FIRST, env={FAIL_ITEM_VARIABLE: "b"})
    with pytest.raises(PipelineFailedError):
        run("retried", parameters=FIRST, env={FAIL_ITEM_VARIABLE: "b"})
    # runnable's retry: same run id, what succeeded is skipped, the failed task runs again.
    run("retried", env={"RUNNABLE_RETRY_RUN_ID": "retried", "RUNNABLE_RETRY_INDICATOR": "2nd"})
    run("single-run", layout="single", parameters=FIRST)
    upload_like_the_sidecar(endpoint, LOGS, folder, Layout.CHUNKED)
    upload_like_the_sidecar(endpoint, SINGLE, single, Layout.SINGLE)
    yield World(endpoint=endpoint, folder=folder, single_folder=single)
    server.stop()


def at(world: World, location: str = LOGS, *more: str) -> list[str]:
    return ["--endpoint", world.endpoint, "--bucket", location, "--catalog", CATALOG, *more]


def runnable_view(world: World, run_id: str, location: str = LOGS, layout: str = "chunked"):
    """The run as runnable's own chunked-minio/minio store reads it from the bucket."""
    return read_run_log_from_bucket(
        world.endpoint,
        KEY,
        KEY,
        location,
        run_id,
        layout=layout,  # type: ignore[arg-type]
    )


def flatten(steps: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, step in steps.items():
        out[name] = step
        for branch in step["branches"].values():
            out.update(flatten(branch["steps"]))
    return out


def assert_matches_runnable(shown: dict[str, Any], document: dict[str, Any]) -> None:
    truth = flatten(document["steps"])
    assert {s["name"] for s in shown["steps"]} == set(truth)
    assert shown["status"] == document["status"]
    assert shown["parameters"] == {k: v["value"] for k, v in document["parameters"].items()}
    for step in shown["steps"]:
        original = truth[step["name"]]
        assert step["status"] == original["status"]
        assert len(step["attempts"]) == len(original["attempts"])
        for mine, theirs in zip(step["attempts"], original["attempts"], strict=True):
            assert mine["status"] == theirs["status"]
            assert datetime.fromisoformat(mine["started_at"]) == datetime.fromisoformat(
                theirs["start_time"]
            )
            assert datetime.fromisoformat(mine["ended_at"]) == datetime.fromisoformat(
                theirs["end_time"]
            )
        if original["attempts"]:
            first = datetime.fromisoformat(original["attempts"][0]["start_time"])
            last = datetime.fromisoformat(original["attempts"][-1]["end_time"])
            assert step["duration_seconds"] == pytest.approx((last - first).total_seconds())


# ---------------------------------------------------------------------------------- show


@pytest.mark.parametrize(
    ("run_id", "location", "layout"),
    [("first", LOGS, "chunked"), ("single-run", SINGLE, "single")],
)
def test_show_json_is_the_run_runnable_reads(
    capsys: pytest.CaptureFixture[str], world: World, run_id: str, location: str, layout: str
) -> None:
    result = cli(capsys, "show", run_id, "--json", "--layout", layout, *at(world, location))
    assert result.code == 0, result.err
    shown = result.json()
    assert shown["run_id"] == run_id and shown["status"] == "SUCCESS"
    assert_matches_runnable(shown, runnable_view(world, run_id, location, layout))
    assert shown["parameters"]["label"] == "first"  # the run's initial parameters
    names = [step["name"] for step in shown["steps"]]
    # Nested branches under dotted internal names, each right after its composite step.
    assert names.index("parallel") < names.index("parallel.left.left_task")
    for item in ("a", "b", "c"):
        assert names.index("map") < names.index(f"map.{item}.process") < names.index("summarise")
    assert shown["code_identities"] and shown["code_identities"][0]["type"] == "git"
    assert shown["failures"] == []
    assert shown["sealed"] is None  # uploaded by the stand-in: no sidecar sealed it


def test_show_failed_run_has_runnable_message_and_the_catalog_traceback(
    capsys: pytest.CaptureFixture[str], world: World
) -> None:
    result = cli(capsys, "show", "failed", "--json", *at(world))
    assert result.code == 0, result.err
    shown = result.json()
    assert_matches_runnable(shown, runnable_view(world, "failed"))
    assert shown["status"] == "FAIL"
    [failure] = shown["failures"]
    assert failure["step"] == "map.b.process" and failure["attempt"] == 1
    assert (
        failure["message"]
        == "Call to the function runlog_relay.runnable_compat._process did not succeed."
    )
    # The traceback is the task's own, from runnable's minio catalog in the bucket.
    assert "Traceback (most recent call last)" in failure["traceback"]
    assert "ValueError: cannot process 'b'" in failure["traceback"]
    assert failure["traceback_source"].startswith(f"{CATALOG}/failed/")
    assert failure["traceback_source"].endswith(".execution.log")

    human = cli(capsys, "show", "failed", *at(world))
    assert human.code == 0
    assert "Failures" in human.out and "ValueError: cannot process 'b'" in human.out

    without = cli(capsys, "show", "failed", "--json", "--no-catalog", *at(world)[:4])
    assert without.json()["failures"][0]["traceback"] is None
    bare = cli(capsys, "show", "failed", "--no-catalog", *at(world)[:4])
    assert "--catalog BUCKET[/PREFIX] reads it there" in bare.out


def test_show_retried_run_has_both_attempts(
    capsys: pytest.CaptureFixture[str], world: World
) -> None:
    shown = cli(capsys, "show", "retried", "--json", *at(world)).json()
    assert_matches_runnable(shown, runnable_view(world, "retried"))
    assert shown["status"] == "SUCCESS"
    step = next(s for s in shown["steps"] if s["name"] == "map.b.process")
    assert [(a["number"], a["status"], a["retry_indicator"]) for a in step["attempts"]] == [
        (1, "FAIL", None),
        (2, "SUCCESS", "2nd"),
    ]
    [failure] = shown["failures"]  # the first attempt's, still on record
    assert failure["attempt"] == 1 and "ValueError" in failure["traceback"]


def test_show_human_output_on_a_pipe(capsys: pytest.CaptureFixture[str], world: World) -> None:
    result = cli(capsys, "show", "first", *at(world))
    assert result.code == 0, result.err
    out = result.out
    assert "\x1b[" not in out and "█" not in out  # plain on a pipe
    assert out.startswith("run first  SUCCESS")
    for needle in ("Parameters", "label", "first", "Code identities", "git:", "Timeline"):
        assert needle in out
    rows = [line for line in out.splitlines() if line.startswith("|") and "map.a.process" in line]
    assert len(rows) == 1 and "=" in rows[0]


def pty_run(args: list[str], cols: int, rows: int = 60) -> str:
    """Run the CLI with a pseudo-terminal of ``cols`` columns as stdout; its output."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES", "NO_COLOR"}}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runlog_relay.cli", *args],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError("no output for 60 s")
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    return b"".join(chunks).decode()


@pytest.mark.parametrize("cols", [80, 160])
def test_show_timeline_fits_the_terminal(world: World, cols: int) -> None:
    out = pty_run(["show", "retried", *at(world)], cols)
    assert "\x1b[" in out  # colours on a terminal
    text = re.sub(r"\x1b\[[0-9;?]*[@-~]|\x1b\][^\x07]*\x07", "", out)
    lines = text.replace("\r", "").splitlines()
    assert max(len(line) for line in lines) <= cols
    row = next(line for line in lines if "map.b.process" in line)
    assert "█" in row and "\u00d72" in row
    chart_row = next(line for line in lines if line.lstrip().startswith("prepare"))
    assert "█" in chart_row


# ---------------------------------------------------------------------------------- diff


def test_diff_of_two_runs_exit_1_with_both_values(
    capsys: pytest.CaptureFixture[str], world: World
) -> None:
    result = cli(capsys, "diff", "first", "second", "--json", *at(world))
    assert result.code == 1, result.err
    data = result.json()
    assert data["equal"] is False and data["differences"] == ["parameters"]
    assert data["parameters"] == {"label": {"a": "first", "b": "second"}}
    steps = {row["name"]: row for row in data["steps"]}
    truth = flatten(runnable_view(world, "first")["steps"])
    assert set(steps) == set(truth)
    assert all(not row["differs"] for row in steps.values())
    assert steps["prepare"]["a"]["status"] == "SUCCESS"

    human = cli(capsys, "diff", "first", "second", *at(world))
    assert human.code == 1
    assert "different: parameters" in human.out
    line = next(ln for ln in human.out.splitlines() if "| label" in ln)
    assert "first" in line and "second" in line and line.startswith("|!")


def test_diff_of_a_run_with_itself_and_of_a_failed_and_retried_run(
    capsys: pytest.CaptureFixture[str], world: World
) -> None:
    same = cli(capsys, "diff", "first", "first", "--json", *at(world))
    assert same.code == 0 and same.json()["equal"] is True
    result = cli(capsys, "diff", "failed", "retried", "--json", *at(world))
    assert result.code == 1
    data = result.json()
    assert data["status"] == {"a": "FAIL", "b": "SUCCESS"}
    assert {"status", "steps", "parameters"} <= set(data["differences"])
    rows = {row["name"]: row for row in data["steps"]}
    assert rows["map.b.process"]["a"]["status"] == "FAIL"
    assert rows["map.b.process"]["b"] == {
        "status": "SUCCESS",
        "attempts": 2,
        "duration_seconds": rows["map.b.process"]["b"]["duration_seconds"],
    }
    assert rows["summarise"]["a"] is None and rows["summarise"]["b"]["status"] == "SUCCESS"


# -------------------------------------------------------------------------------- errors


def put(world: World, key: str, body: bytes, location: str = LOGS) -> None:
    bucket_store(world.endpoint, location).put(key, body)


def copy_run(world: World, source: str, target: str, *, skip: tuple[str, ...] = ()) -> None:
    for path in (world.folder / source).iterdir():
        if path.stem not in skip:
            put(world, f"{target}/{path.stem}", path.read_bytes())


def one_line_error(result: Result, command: str) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"runlog-relay {command}: error: "), lines[0]
    assert "Traceback" not in result.err
    return lines[0]


def test_errors_are_one_line_with_the_exit_code_of_the_tools(
    capsys: pytest.CaptureFixture[str], world: World
) -> None:
    missing = cli(capsys, "show", "no-such-run", *at(world))
    assert missing.code == 1 and "no run 'no-such-run'" in one_line_error(missing, "show")

    copy_run(world, "first", "torn-run")
    put(world, "torn-run/BranchLog-map.a", b'{"internal_name": "map.a", "sta')
    torn = cli(capsys, "show", "torn-run", *at(world))
    assert torn.code == 1
    assert "torn-run/BranchLog-map.a" in one_line_error(torn, "show")
    assert "is cut short" in torn.err and "is torn" in torn.err

    # Not JSON at all is no torn write: waiting will not fix it.
    copy_run(world, "first", "html-run")
    put(world, "html-run/BranchLog-map.a", b"<html>\x1b[2J</html>")
    html = cli(capsys, "show", "html-run", *at(world))
    assert html.code == 1
    line = one_line_error(html, "show")
    assert "is not JSON, so not a run log" in line and "torn" not in line
    assert "it starts b'<html>\\x1b[2J</html>'" in line

    copy_run(
        world,
        "first",
        "partial-run",
        skip=("BranchLog-map.a", "BranchLog-map.b", "BranchLog-map.c"),
    )
    partial = cli(capsys, "show", "partial-run", *at(world))
    assert partial.code == 1
    assert "is partial: map finished but none of its branch logs" in one_line_error(partial, "show")
    shown = cli(capsys, "show", "partial-run", "--partial", "--json", *at(world))
    assert shown.code == 0 and shown.json()["problems"]

    copy_run(world, "first", "headless-run", skip=("RunLog",))
    headless = cli(capsys, "show", "headless-run", *at(world))
    assert headless.code == 1 and "has no RunLog object" in one_line_error(headless, "show")

    put(world, "foreign-run/RunLog", json.dumps({"hello": "world"}).encode())
    foreign = cli(capsys, "show", "foreign-run", *at(world))
    assert foreign.code == 1 and "not a runnable run log" in one_line_error(foreign, "show")

    wrong_layout = cli(capsys, "show", "single-run", "--layout", "chunked", *at(world, SINGLE))
    assert wrong_layout.code == 1 and "try --layout single" in one_line_error(wrong_layout, "show")

    # diff: a run it cannot read is trouble (2), never "different" (1).
    diff = cli(capsys, "diff", "first", "torn-run", *at(world))
    assert diff.code == 2 and "the run in the bucket is torn" in one_line_error(diff, "diff")


def test_store_errors_exit_2_and_3_as_the_other_tools(
    capsys: pytest.CaptureFixture[str], world: World
) -> None:
    no_bucket = cli(capsys, "show", "first", "--endpoint", world.endpoint, "--bucket", "nope-x1")
    assert no_bucket.code == 2 and "does not exist" in one_line_error(no_bucket, "show")
    closed = f"http://127.0.0.1:{free_port()}"
    down = cli(capsys, "show", "first", "--endpoint", closed, "--bucket", LOGS)
    assert down.code == 3 and "is it up?" in one_line_error(down, "show")
    diff_down = cli(capsys, "diff", "a", "b", "--endpoint", closed, "--bucket", LOGS)
    assert diff_down.code == 3
    usage = cli(capsys, "show", "first", "--catalog", "Not A Bucket", *at(world)[:4])
    assert usage.code == 2 and "--catalog" in usage.err


def test_exit_codes_of_the_real_command(world: World) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runlog_relay.cli", *args, *at(world)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert run("diff", "first", "first").returncode == 0
    assert run("diff", "first", "second").returncode == 1
    assert run("show", "first", "--json").returncode == 0
    assert run("show", "nothing-here").returncode == 1
    helped = subprocess.run(
        [sys.executable, "-m", "runlog_relay.cli", "show", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--html FILE" in helped.stdout and "--json" in helped.stdout


# ---------------------------------------------------------------------------------- html


def colour(css: str) -> tuple[int, ...]:
    """``rgb(1, 2, 3)`` or ``rgba(1, 2, 3, 1)`` → (1, 2, 3)."""
    return tuple(int(part) for part in re.findall(r"\d+", css)[:3])


def hex_colour(value: str) -> tuple[int, ...]:
    return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))


def test_html_page_renders_the_timeline_in_chromium(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    page = tmp_path / "retried.html"
    result = cli(capsys, "show", "retried", "--html", str(page), *at(world))
    assert result.code == 0, result.err
    shown = cli(capsys, "show", "retried", "--json", *at(world)).json()
    try:
        session = browser.chromium()
        chrome = session.__enter__()
    except browser.BrowserMissing as exc:
        pytest.fail(str(exc))
    try:
        chrome.open(page.as_uri())
        assert chrome.text(chrome.find_all("#run-status")[0]) == "SUCCESS"
        rows = chrome.find_all(".row")
        names = [chrome.attribute(row, "data-step") for row in rows]
        assert names == [step["name"] for step in shown["steps"]]
        track = chrome.rect(chrome.find_all(".row .track")[0])
        assert track["width"] > 300  # the chart takes the room it is given
        offsets = []
        for row, step in zip(rows, shown["steps"], strict=True):
            bars = chrome.find_all(f'.row[data-step="{step["name"]}"] .bar')
            assert len(bars) == max(1, len(step["attempts"]))
            for bar in bars:
                rect = chrome.rect(bar)
                assert rect["width"] >= 2 and rect["height"] > 0
                assert (
                    track["x"] - 1
                    <= rect["x"]
                    <= rect["x"] + rect["width"]
                    <= track["x"] + track["width"] + 1
                )
            offsets.append((step["started_at"], chrome.rect(bars[0])["x"]))
            assert chrome.rect(row)["height"] > 0
        # Later starts are drawn further right.
        ordered = sorted(offsets)
        xs = [x for _, x in ordered]
        assert xs == sorted(xs)
        # The retried task: a red first attempt, then a green one further right.
        failed, passed = chrome.find_all('.row[data-step="map.b.process"] .bar')
        assert colour(chrome.css(failed, "background-color")) == hex_colour(STATUS_COLOURS["FAIL"])
        assert colour(chrome.css(passed, "background-color")) == hex_colour(
            STATUS_COLOURS["SUCCESS"]
        )
        assert chrome.rect(passed)["x"] > chrome.rect(failed)["x"]
        tracebacks = chrome.find_all("#failures .traceback")
        assert tracebacks and "ValueError: cannot process 'b'" in chrome.text(tracebacks[0])
        # Nothing was fetched from anywhere: the page is standalone.
        fetched = chrome.run_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert fetched == []
        png = chrome.screenshot()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        (tmp_path / "retried.png").write_bytes(png)
    finally:
        session.__exit__(None, None, None)


# ---------------------------------------------------------------------------------- demo


def test_demo_ends_by_showing_the_run_and_its_timeline(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runlog_relay.cli", "demo", "--run-id", "demo-show"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    # The sidecar's own report of the seal, then the seal read back from the bucket's tag.
    assert re.search(r"4\. The sidecar sealed the run: SUCCESS, 6 files verified", out), out
    shown = out[out.index("8. The sealed run from the bucket") : out.index("9. Key metrics")]
    assert "run demo-show  SUCCESS" in shown and "Timeline" in shown
    assert "sealed SUCCESS" in shown
    for step in ("prepare", "parallel.left.left_task", "map.c.process", "summarise"):
        row = next(line for line in shown.splitlines() if re.search(rf"[| ]{step} ", line))
        assert "SUCCESS" in row and "=" in row
    metrics = out[out.index("9. Key metrics") :]
    assert re.search(r"runs sealed\s+1 status=SUCCESS", metrics), metrics
    assert "seal lag (final status seen → sealed)" in metrics
    assert "Done: the bucket mirrors the run exactly, sealed." in out
