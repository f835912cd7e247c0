"""``runlog-relay show RUN``: one run, read straight from the bucket (no cluster needed).

Prints the run's status, parameters and code identities, a Gantt-like timeline of every
step (the nested branches of parallel and map included, under runnable's dotted internal
names), and its failures with their message and traceback. ``--json`` gives the same as
data; ``--html FILE`` writes a standalone page with the timeline.

The chart fits the terminal's width and uses colour; on a pipe or into a file it is
plain ASCII at a fixed width, so it can be pasted into an issue or a chat.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runlog_relay.cliopts import add_store_options
from runlog_relay.exitcodes import epilog
from runlog_relay.tools._common import (
    EXIT_OK,
    emit_json,
    format_seconds,
    guarded,
    open_context,
    printable,
    shown_value,
    stdout_console,
)
from runlog_relay.tools.htmlpage import render_page
from runlog_relay.tools.runfetch import catalog_for, catalog_hint, fetch_run
from runlog_relay.tools.runmodel import Run
from runlog_relay.tools.timeline import Span, layout_timeline

__all__ = ["STATUS_STYLE", "add_run_options", "register", "render_run", "run_to_json"]

STATUS_STYLE = {
    "SUCCESS": "green",
    "FAIL": "red",
    "PROCESSING": "yellow",
    "CREATED": "blue",
    "TRIGGERED": "cyan",
}
#: Width of the chart when the output is not a terminal (a pipe, a file).
PLAIN_CHART_WIDTH = 40
_MIN_CHART_WIDTH = 10
#: Room the other columns of the timeline take, besides the step names.
_FIXED_COLUMNS = 40


def style_of(status: str) -> str:
    return STATUS_STYLE.get(status, "magenta")


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


# --------------------------------------------------------------------------------- JSON


def run_to_json(run: Run) -> dict[str, Any]:
    """The ``--json`` document: ``run_id``, ``status``, ``parameters`` (name → value) and
    ``steps`` (flattened, dotted internal names) first; the rest adds detail."""
    return {
        "run_id": run.run_id,
        "status": run.status,
        "parameters": run.parameter_values(),
        "steps": [step.to_json(run.failures_of(step.name)) for step in run.steps],
        "sealed": run.sealed,
        "tag": run.tag or None,
        "dag_hash": run.dag_hash or None,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "duration_seconds": run.duration_seconds,
        "parameter_kinds": {name: p.kind for name, p in run.parameters.items()},
        "code_identities": [identity.to_json() for identity in run.code_identities],
        "branches": [{"name": b.name, "status": b.status, "step": b.step} for b in run.branches],
        "failures": [failure.to_json() for failure in run.failures],
        "problems": list(run.problems),
        "notes": list(run.notes),
        "format": run.source,
        "chunks": run.chunks,
    }


# ----------------------------------------------------------------------------- terminal


def _bar(span: Span, width: int, total: float, *, fancy: bool) -> Text:
    """The step's bar: one stretch per attempt, each in its attempt's colour."""
    cells: list[tuple[str, str]] = [(" ", "")] * width
    for segment in span.segments:
        first, length = segment.columns(width, total)
        char = "█" if fancy else ("x" if segment.status == "FAIL" else "=")
        for column in range(first, first + length):
            cells[column] = (char, style_of(segment.status))
        if segment.open_ended:
            cells[first + length - 1] = ("▶" if fancy else ">", style_of(segment.status))
    bar = Text()
    for char, style in cells:
        bar.append(char, style=style)
    return bar


def timeline_table(run: Run, *, width: int, fancy: bool) -> Table:
    """The Gantt-like chart: one row per step, a bar per step on a shared time axis."""
    timeline = layout_timeline(run)
    longest = max((len(s.name) + 2 * s.depth for s in run.steps), default=4)
    chart = PLAIN_CHART_WIDTH
    if fancy:
        chart = max(_MIN_CHART_WIDTH, width - min(longest, width // 3) - _FIXED_COLUMNS)
    table = Table(box=box.SIMPLE_HEAD if fancy else box.ASCII2, pad_edge=False, expand=False)
    table.add_column("STEP", overflow="fold", max_width=max(12, width // 3) if fancy else None)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("START", justify="right", no_wrap=True)
    table.add_column("DURATION", justify="right", no_wrap=True)
    scale = f"0 … {format_seconds(timeline.total_seconds)}"
    table.add_column(scale.ljust(chart)[:chart] if len(scale) <= chart else "", no_wrap=True)
    for span in timeline.spans:
        step = span.step
        style = style_of(step.status)
        name = Text("  " * step.depth + step.name)
        if step.is_composite:
            name.stylize("bold")
        tries = sum(1 for _ in step.attempts)
        status = Text(step.status, style=style)
        if tries > 1:
            status.append(f" \u00d7{tries}" if fancy else f" x{tries}", style="dim")
        start = f"+{format_seconds(span.offset)}" if span.offset is not None else "-"
        duration = format_seconds(span.length) + ("…" if span.open_ended else "")
        bar = _bar(span, chart, timeline.total_seconds, fancy=fancy)
        table.add_row(name, status, start, duration if span.length is not None else "-", bar)
    return table


def render_run(run: Run, console: Console) -> None:
    fancy = console.is_terminal
    width = console.width
    status = Text(run.status, style=f"bold {style_of(run.status)}")
    # Values from the bucket: the console escapes control characters; one-line fields
    # escape newlines too, so they cannot fake more output.
    run_id = printable(run.run_id, one_line=True)
    head = Text.assemble(("run ", "bold"), (run_id, "bold"), "  ", status)
    if run.tag:
        head.append(f"  tag {printable(run.tag, one_line=True)}", style="dim")
    console.print(head)
    facts = [
        f"started {_time(run.started_at)}",
        f"ended {_time(run.ended_at)}" if run.finished else "not finished",
        f"duration {format_seconds(run.duration_seconds)}",
        f"{len(run.steps)} steps, {len(run.branches)} branches, {run.chunks} documents"
        f" ({run.source})",
    ]
    console.print(escape(" · ".join(facts) if fancy else " | ".join(facts)), style="dim")
    if run.sealed is not None:
        seal = Text.assemble(("sealed ", "bold"), (run.sealed, f"bold {style_of(run.sealed)}"))
        seal.append(
            " (a sidecar verified every file in the bucket; object tag runlog-relay/status)",
            style="dim",
        )
        console.print(seal)
        if run.sealed != run.status:
            console.print(
                f"[yellow]warning:[/] sealed as {escape(run.sealed)} but the RunLog says"
                f" {escape(run.status)}: the run was written again after its seal"
            )
    for problem in (*run.problems, *run.notes):
        console.print(f"[yellow]warning:[/] {escape(problem)}")

    console.print(Text("\nParameters", style="bold"))
    if run.parameters:
        # Plain lines, not a table: values can be long and should wrap under themselves.
        pad = max(len(name) for name in run.parameters)
        for name, parameter in run.parameters.items():
            label = printable(name, one_line=True).ljust(pad)
            line = Text.assemble("  ", (label, "cyan"), "  ", shown_value(parameter.value))
            if parameter.kind != "json":
                line.append(f"  ({parameter.kind})", style="dim")
            console.print(line, overflow="fold")
    else:
        console.print("  (none)")

    console.print(Text("\nCode identities", style="bold"))
    for identity in run.code_identities or ():
        console.print(f"  {escape(identity.describe())}")
    if not run.code_identities:
        console.print("  (none recorded)")

    console.print(Text("\nTimeline", style="bold"))
    if run.steps:
        console.print(timeline_table(run, width=width, fancy=fancy))
    else:
        console.print("  (no steps yet)")

    if run.failures:
        console.print(Text("\nFailures", style="bold red"))
        for failure in run.failures:
            attempt = f" (attempt {failure.attempt})" if failure.attempt is not None else ""
            console.print(
                Text.assemble(("  ✗ " if fancy else "  x ", "red"), (failure.step, "bold"), attempt)
            )
            _indented(console, failure.message or "(no message)")
            if failure.traceback:
                _indented(console, failure.traceback, style="dim")
                if failure.source:
                    _indented(console, f"(from {failure.source})", style="dim italic")
            else:
                _indented(console, catalog_hint(failure), style="dim")


def _indented(console: Console, text: str, *, style: str = "") -> None:
    # Line by line rather than rich's Padding, which pads every line to the full width.
    for line in text.splitlines() or [""]:
        console.print(Text("    " + line, style=style), overflow="fold")


# ------------------------------------------------------------------------------ command


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options ``show`` and ``diff`` share: how to read runs."""
    parser.add_argument(
        "--partial",
        action="store_true",
        help="show a finished run even when some of its chunks are missing from the bucket",
    )
    catalog = parser.add_mutually_exclusive_group()
    catalog.add_argument(
        "--catalog",
        metavar="BUCKET[/PREFIX]",
        help="where runnable's minio/s3 catalog keeps the runs' files, to read failed tasks'"
        " tracebacks from their execution logs (default: the run logs' bucket, no prefix,"
        " runnable's default)",
    )
    catalog.add_argument(
        "--no-catalog",
        action="store_true",
        help="do not look for tracebacks in runnable's catalog",
    )
    add_store_options(parser)


def read_run(args: argparse.Namespace, run_id: str) -> Run:
    ctx = open_context(args)
    catalog = None
    if not args.no_catalog:
        # Built (and --catalog checked) up front; read only when the run has failures.
        catalog = catalog_for(ctx, args.catalog)
    return fetch_run(ctx, run_id, partial=args.partial, catalog=catalog)


def handle(args: argparse.Namespace) -> int:
    run = read_run(args, args.run_id)
    if args.html is not None:
        page = render_page(run)
        if str(args.html) == "-":
            sys.stdout.write(page)
            return EXIT_OK
        args.html.write_text(page, encoding="utf-8")
    if args.json:
        emit_json(run_to_json(run))
    elif args.html is None:
        render_run(run, stdout_console())
    else:
        print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "show",
        help=summary,
        description="Show one run straight from the bucket: status, parameters and code"
        " identities; a timeline of every step, the branches of parallel and map included,"
        " with start, duration and status; and failures with their message and traceback.",
        epilog=epilog("show"),
    )
    parser.add_argument("run_id", metavar="RUN", help="the run id (`runlog-relay runs` lists them)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: run_id, status, parameters (name → value), steps"
        " (flattened, dotted internal names, with started_at, ended_at, duration_seconds),"
        " code_identities, failures",
    )
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write a standalone HTML page with the timeline to FILE (- for stdout)",
    )
    add_run_options(parser)
    parser.set_defaults(handler=guarded("show", handle))
