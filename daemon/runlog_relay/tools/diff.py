"""``runlog-relay diff A B``: two runs side by side, straight from the bucket.

Compares what decides whether two runs did the same thing: the run status, the
parameters (the final values in the RunLog), the code identities, and which steps ran
with what status. Durations are shown side by side, with the change, but never make
runs "different": no two runs take the same time.

Exit codes, like diff(1): 0 the runs are equal, 1 they differ, 2 trouble: a usage or
configuration error, or a run that cannot be read (missing, torn, partial, not a runnable
run log), 3 store unreachable or credentials rejected.

``--json``::

    {
      "a": "RUN_A", "b": "RUN_B",
      "equal": false,
      "differences": ["status", "parameters", "code_identities", "steps"],  # what differs
      "status": {"a": "SUCCESS", "b": "FAIL"},
      "parameters": {"label": {"a": "first", "b": "second"}},  # differing names only;
                                                               # a side without it: no key
      "code_identities": {"a": [...], "b": [...]},             # both lists, always
      "steps": [                                               # every step of either run
        {"name": "map.b.process", "differs": true,
         "a": {"status": "FAIL", "duration_seconds": 0.27, "attempts": 1},
         "b": {"status": "SUCCESS", "duration_seconds": 0.01, "attempts": 1},
         "duration_change_seconds": -0.26}
      ]
    }

A step only one run has gets ``null`` for the other side and counts as a difference.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runlog_relay.exitcodes import epilog
from runlog_relay.tools._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    EXIT_USAGE,
    ToolError,
    emit_json,
    format_seconds,
    guarded,
    shown_value,
    stdout_console,
)
from runlog_relay.tools.runmodel import Run, Step
from runlog_relay.tools.show import add_run_options, read_run, style_of

__all__ = ["RunDiff", "compare_runs", "register"]

_MISSING = object()


@dataclass(frozen=True, slots=True)
class RunDiff:
    a: Run
    b: Run
    parameters: dict[str, dict[str, Any]]  #: differing name → {"a": value, "b": value}
    steps: list[dict[str, Any]]
    differences: list[str]

    @property
    def equal(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a.run_id,
            "b": self.b.run_id,
            "equal": self.equal,
            "differences": self.differences,
            "status": {"a": self.a.status, "b": self.b.status},
            "parameters": self.parameters,
            "code_identities": {
                "a": [i.to_json() for i in self.a.code_identities],
                "b": [i.to_json() for i in self.b.code_identities],
            },
            "steps": self.steps,
        }


def _side(step: Step | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {
        "status": step.status,
        "duration_seconds": step.duration_seconds,
        "attempts": len(step.attempts),
    }


def _identity_keys(run: Run) -> set[tuple[Any, ...]]:
    return {identity.key for identity in run.code_identities}


def compare_runs(a: Run, b: Run) -> RunDiff:
    parameters: dict[str, dict[str, Any]] = {}
    values_a, values_b = a.parameter_values(), b.parameter_values()
    for name in [*values_a, *(n for n in values_b if n not in values_a)]:
        left, right = values_a.get(name, _MISSING), values_b.get(name, _MISSING)
        kinds = (
            a.parameters[name].kind if name in a.parameters else None,
            b.parameters[name].kind if name in b.parameters else None,
        )
        if left != right or kinds[0] != kinds[1]:
            entry = {}
            if left is not _MISSING:
                entry["a"] = left
            if right is not _MISSING:
                entry["b"] = right
            parameters[name] = entry

    names = [s.name for s in a.steps] + [s.name for s in b.steps if a.step(s.name) is None]
    steps = []
    for name in names:
        left_step, right_step = a.step(name), b.step(name)
        differs = left_step is None or right_step is None or left_step.status != right_step.status
        change = None
        if left_step and right_step:
            da, db = left_step.duration_seconds, right_step.duration_seconds
            change = db - da if da is not None and db is not None else None
        steps.append(
            {
                "name": name,
                "differs": differs,
                "a": _side(left_step),
                "b": _side(right_step),
                "duration_change_seconds": change,
            }
        )

    differences = []
    if a.status != b.status:
        differences.append("status")
    if parameters:
        differences.append("parameters")
    if _identity_keys(a) != _identity_keys(b):
        differences.append("code_identities")
    if any(step["differs"] for step in steps):
        differences.append("steps")
    return RunDiff(a=a, b=b, parameters=parameters, steps=steps, differences=differences)


def _mark(differs: bool, fancy: bool) -> Text:
    return Text("≠" if fancy else "!", style="bold red") if differs else Text("")


def _print(diff: RunDiff) -> None:
    console = stdout_console()
    fancy = console.is_terminal
    a, b = diff.a, diff.b
    verdict = "equal" if diff.equal else "different: " + ", ".join(diff.differences)
    console.print(
        Text.assemble(("A ", "bold"), a.run_id, "  ", ("B ", "bold"), b.run_id, "  ", verdict)
    )

    runs = Table(box=box.SIMPLE_HEAD if fancy else box.ASCII2, pad_edge=False)
    runs.add_column("")
    runs.add_column("", no_wrap=True)
    runs.add_column("A", overflow="fold")
    runs.add_column("B", overflow="fold")
    runs.add_row(
        _mark(a.status != b.status, fancy),
        "status",
        Text(a.status, style=style_of(a.status)),
        Text(b.status, style=style_of(b.status)),
    )
    runs.add_row(
        "",
        "duration",
        format_seconds(a.duration_seconds),
        format_seconds(b.duration_seconds),
    )
    runs.add_row(
        _mark("code_identities" in diff.differences, fancy),
        "code",
        "\n".join(escape(i.describe()) for i in a.code_identities) or "-",
        "\n".join(escape(i.describe()) for i in b.code_identities) or "-",
    )
    console.print(runs)

    console.print(Text("Parameters", style="bold"))
    params = Table(box=box.SIMPLE_HEAD if fancy else box.ASCII2, pad_edge=False)
    params.add_column("")
    params.add_column("NAME", style="cyan")
    params.add_column("A", overflow="fold")
    params.add_column("B", overflow="fold")
    values_a, values_b = a.parameter_values(), b.parameter_values()
    for name in [*values_a, *(n for n in values_b if n not in values_a)]:
        params.add_row(
            _mark(name in diff.parameters, fancy),
            escape(name),
            escape(_show(values_a.get(name, _MISSING))),
            escape(_show(values_b.get(name, _MISSING))),
        )
    console.print(params)

    console.print(Text("Steps", style="bold"))
    steps = Table(box=box.SIMPLE_HEAD if fancy else box.ASCII2, pad_edge=False)
    steps.add_column("")
    steps.add_column("STEP", overflow="fold")
    steps.add_column("A STATUS")
    steps.add_column("A TIME", justify="right")
    steps.add_column("B STATUS")
    steps.add_column("B TIME", justify="right")
    steps.add_column("CHANGE", justify="right")
    for row in diff.steps:
        cells: list[Any] = [_mark(row["differs"], fancy), escape(row["name"])]
        for side in (row["a"], row["b"]):
            if side is None:
                cells += [Text("(absent)", style="dim"), ""]
            else:
                cells += [
                    Text(side["status"], style=style_of(side["status"])),
                    format_seconds(side["duration_seconds"]),
                ]
        change = row["duration_change_seconds"]
        sign = "+" if change is not None and change >= 0 else "-"
        cells.append("" if change is None else f"{sign}{format_seconds(abs(change))}")
        steps.add_row(*cells)
    console.print(steps)


def _show(value: Any) -> str:
    return "(absent)" if value is _MISSING else shown_value(value)


def _read(args: argparse.Namespace, run_id: str) -> Run:
    try:
        return read_run(args, run_id)
    except ToolError as exc:
        # Exit 1 means "different" here: a run that cannot be read is trouble, as in diff(1).
        raise ToolError(str(exc), exit_code=EXIT_USAGE) from None


def handle(args: argparse.Namespace) -> int:
    a = _read(args, args.run_a)
    b = _read(args, args.run_b)
    diff = compare_runs(a, b)
    if args.json:
        emit_json(diff.to_json())
    else:
        _print(diff)
    return EXIT_OK if diff.equal else EXIT_DIFFERENT


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "diff",
        help=summary,
        description="Put two runs side by side, straight from the bucket: status,"
        " parameters, code identities, and every step's status and duration. Runs are"
        " equal when status, parameters, code identities and step statuses match"
        " (durations are shown, never compared).",
        epilog=epilog("diff"),
    )
    parser.add_argument("run_a", metavar="A", help="the first run id")
    parser.add_argument("run_b", metavar="B", help="the second run id")
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: equal, differences, status, parameters (each"
        " differing name → its values in A and B), code_identities, steps",
    )
    add_run_options(parser)
    parser.set_defaults(handler=guarded("diff", handle))
