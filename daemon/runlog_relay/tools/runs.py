"""``runlog-relay runs``: list the runs in the bucket, newest first.

One listing gives every run's chunks, sizes and last write; then each run's run log
document is read (``<run_id>/RunLog`` for chunked, ``<run_id>/<run_id>.json`` for
single, decoded with :func:`layout.decode_body`) for its status, and start and end time
derived from its steps' attempts, the way runnable records them (``StepAttempt
.start_time``/``end_time`` in ``runnable/datastore.py``; the executor's local clock, no
zone). Runs are ordered by their latest object write, so ``--limit`` reads only as many
run logs as it shows (more with ``--status``, which needs the status of each).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from runlog_relay.cliopts import add_store_options
from runlog_relay.errors import NotFoundError
from runlog_relay.exitcodes import epilog
from runlog_relay.layout import JSON_SUFFIX, Layout, UnsafeNameError, decode_body, path_for
from runlog_relay.objectstore import RemoteObject
from runlog_relay.tools._common import (
    EXIT_OK,
    StoreContext,
    emit_json,
    format_bytes,
    format_seconds,
    get_object,
    group_by_run,
    guarded,
    latest_modified,
    layout_hint,
    list_objects,
    open_context,
    positive_int,
    printable,
    stdout_console,
)
from runlog_relay.tools.runmodel import parse_time

__all__ = ["RunSummary", "order_runs", "register", "run_log_key", "summarise_run_log"]

#: runnable's statuses (runnable/defaults.py); a run ends in SUCCESS or FAIL.
FINISHED = frozenset({"SUCCESS", "FAIL"})
_FETCH_WORKERS = 8
_STATUS_STYLE = {"SUCCESS": "green", "FAIL": "red", "PROCESSING": "yellow", "CREATED": "blue"}
#: What ``--status`` takes: runnable's statuses, and this tool's own words for a run
#: without a run log (UNKNOWN) or with one that is not a run log (UNREADABLE). A typo is
#: an error, not an empty list.
STATUSES = (*_STATUS_STYLE, "UNKNOWN", "UNREADABLE")


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    status: str
    tag: str
    start_time: datetime | None
    end_time: datetime | None  #: None until the run has finished
    duration_seconds: float | None
    chunks: int
    size_bytes: int
    last_modified: datetime | None
    problem: str = ""  #: why status/times are unknown, if they are

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["problem"] = self.problem or None
        return data


def run_log_key(run_id: str, layout: Layout) -> str:
    """The key of a run's main document, relative to the prefix."""
    return f"{run_id}/RunLog" if layout is Layout.CHUNKED else f"{run_id}/{run_id}{JSON_SUFFIX}"


def _attempt_times(steps: Any) -> Iterator[tuple[datetime | None, datetime | None]]:
    """(start, end) of every attempt of every step, branches included, depth first."""
    if not isinstance(steps, dict):
        return
    for step in steps.values():
        if not isinstance(step, dict):
            continue
        yield from _step_times(step)


def _step_times(step: dict[str, Any]) -> Iterator[tuple[datetime | None, datetime | None]]:
    for attempt in step.get("attempts") or []:
        if isinstance(attempt, dict):
            yield parse_time(attempt.get("start_time")), parse_time(attempt.get("end_time"))
    branches = step.get("branches")
    if isinstance(branches, dict):
        for branch in branches.values():
            if isinstance(branch, dict):
                yield from _attempt_times(branch.get("steps"))


def summarise_run_log(
    document: dict[str, Any], extra_steps: list[dict[str, Any]] | None = None
) -> tuple[str, str, datetime | None, datetime | None]:
    """(status, tag, start, end) of a run log document (``RunLog.model_dump()`` shape).

    Start is the earliest attempt start; end the latest attempt end, only once the run
    has finished. ``extra_steps``: step documents kept in their own chunks (runnable
    releases before 2026 wrote ``StepLog-*.json`` files).
    """
    status = str(document.get("status") or "UNKNOWN")
    tag = str(document.get("tag") or "")
    times = list(_attempt_times(document.get("steps")))
    job = document.get("job")
    if isinstance(job, dict):
        times.extend(_step_times(job))
    for step in extra_steps or []:
        times.extend(_step_times(step))
    starts = [start for start, _ in times if start is not None]
    ends = [end for _, end in times if end is not None]
    start = min(starts) if starts else None
    end = max(ends) if ends and status in FINISHED else None
    return status, tag, start, end


def order_runs(runs: dict[str, list[RemoteObject]]) -> list[str]:
    """Run ids, most recently written first (ties by run id)."""

    def stamp(run_id: str) -> float:
        latest = latest_modified(runs[run_id])
        return latest.timestamp() if latest else float("-inf")

    return sorted(sorted(runs), key=stamp, reverse=True)


def _mapped(objects: list[RemoteObject], layout: Layout) -> list[RemoteObject]:
    mapped = []
    for obj in objects:
        try:
            path_for(obj.key, layout)
        except UnsafeNameError:
            continue
        mapped.append(obj)
    return mapped


def _load(ctx: StoreContext, key: str) -> dict[str, Any]:
    document = json.loads(decode_body(get_object(ctx.store, key), ctx.layout))
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def summarise_run(ctx: StoreContext, run_id: str, objects: list[RemoteObject]) -> RunSummary:
    """Read one run's run log and describe the run."""
    layout = ctx.layout
    chunks = _mapped(objects, layout)

    def summary(
        status: str,
        *,
        tag: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        problem: str = "",
    ) -> RunSummary:
        return RunSummary(
            run_id=run_id,
            status=status,
            tag=tag,
            start_time=start,
            end_time=end,
            duration_seconds=(end - start).total_seconds() if start and end else None,
            chunks=len(chunks),
            size_bytes=sum(obj.size for obj in chunks),
            last_modified=latest_modified(objects),
            problem=problem,
        )

    key = run_log_key(run_id, layout)
    if key not in {obj.key for obj in objects}:
        hint = layout_hint(run_id, objects, layout)
        return summary("UNKNOWN", problem=f"no {key.partition('/')[2]} object{hint}")
    try:
        document = _load(ctx, key)
        status, tag, start, end = summarise_run_log(document)
        if start is None and layout is Layout.CHUNKED:
            # Older runnable kept steps in their own chunks, not in RunLog.
            step_keys = [o.key for o in chunks if o.key.partition("/")[2].startswith("StepLog-")]
            if step_keys:
                steps = [_load(ctx, step_key) for step_key in step_keys]
                status, tag, start, end = summarise_run_log(document, steps)
    except NotFoundError:
        return summary("UNKNOWN", problem=f"{key} vanished while being read")
    except ValueError as exc:
        return summary("UNREADABLE", problem=f"{key} is not a run log: {exc}")
    return summary(status, tag=tag, start=start, end=end)


def collect(
    ctx: StoreContext, *, limit: int | None, status: str | None
) -> tuple[list[RunSummary], int, list[str]]:
    """The runs to show, newest first; how many runs the bucket holds; and the run ids
    left out because not one of their keys maps to a safe local file name (``pull`` and
    ``verify`` ignore those objects too, so listing them would promise a run that cannot
    be pulled)."""
    runs = group_by_run(list_objects(ctx.store))
    ignored = sorted(run_id for run_id, objects in runs.items() if not _mapped(objects, ctx.layout))
    for run_id in ignored:
        del runs[run_id]
    order = order_runs(runs)
    wanted = status.upper() if status else None
    shown: list[RunSummary] = []
    batch = max(limit or 0, 2 * _FETCH_WORKERS)
    with ThreadPoolExecutor(max_workers=_FETCH_WORKERS) as pool:
        for start in range(0, len(order), batch):
            ids = order[start : start + batch]
            for summary in pool.map(lambda run_id: summarise_run(ctx, run_id, runs[run_id]), ids):
                if wanted is None or summary.status == wanted:
                    shown.append(summary)
            if limit is not None and len(shown) >= limit:
                return shown[:limit], len(runs), ignored
    return shown, len(runs), ignored


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_table(summaries: list[RunSummary], total: int, where: dict[str, str]) -> None:
    console = stdout_console()
    if not summaries:
        what = "matching runs" if total else "runs"
        console.print(f"no {what} in {escape(where['bucket'])} at {escape(where['endpoint'])}")
        return
    table = Table(
        title=f"runs in {escape(where['bucket'])} ({where['layout']}),"
        f" {len(summaries)} of {total}, newest first",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("RUN ID", overflow="fold")
    table.add_column("STATUS")
    table.add_column("STARTED", no_wrap=True)
    table.add_column("ENDED", no_wrap=True)
    table.add_column("DURATION", justify="right")
    table.add_column("CHUNKS", justify="right")
    table.add_column("SIZE", justify="right", no_wrap=True)
    for run in summaries:
        style = _STATUS_STYLE.get(run.status, "magenta")
        status = f"[{style}]{escape(run.status)}[/]"
        if run.problem:
            status += f" [dim]({escape(run.problem)})[/]"
        table.add_row(
            escape(printable(run.run_id, one_line=True)),  # a key: no newline fakes a row
            status,
            _time(run.start_time),
            _time(run.end_time),
            format_seconds(run.duration_seconds),
            str(run.chunks),
            format_bytes(run.size_bytes),
        )
    console.print(table)


def handle(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    summaries, total, ignored = collect(ctx, limit=args.limit, status=args.status)
    if args.json:
        emit_json(
            {**ctx.describe(), "runs": [s.to_json() for s in summaries], "ignored_runs": ignored}
        )
    else:
        _print_table(summaries, total, ctx.describe())
        if ignored:
            names = ", ".join(repr(run_id) for run_id in ignored[:5])
            more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
            print(
                f"runlog-relay runs: warning: {len(ignored)} run(s) not listed, their object"
                f" keys are not safe file names (pull and verify ignore them too):"
                f" {printable(names)}{more}",
                file=sys.stderr,
            )
    return EXIT_OK


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "runs",
        help=summary,
        description="List the runs in the bucket, most recently written first: status,"
        " start and end time (from the steps' attempts, the executor's clock), duration,"
        " number of chunks and their size in the bucket.",
        epilog=epilog("runs"),
    )
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="show at most N runs (the newest)"
    )
    parser.add_argument(
        "--status",
        type=str.upper,
        choices=STATUSES,
        metavar="S",
        help=f"only runs with this status: {', '.join(STATUSES)} (any case; UNKNOWN: the"
        " run log cannot be read)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_store_options(parser)
    parser.set_defaults(handler=guarded("runs", handle))
