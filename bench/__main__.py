"""``make bench`` / ``python -m bench``: run the sidecar's benchmark scenarios and print
one table of figures, each next to its target and the ceilings measured in the same run.

    python -m bench                      # every scenario (about 15 minutes, see below)
    python -m bench --only startup,torn  # some of them
    python -m bench --toy                # every scenario at toy size (the smoke test)

Everything runs on this machine: moto's S3 server on 127.0.0.1 (its own process, or in
this process where a scenario seeds hundreds of thousands of objects), the sidecar as a
real subprocess (or in-process for the first-sync ratio, against a bare PUT ceiling
measured the same way). Durations on 2 shared cores: sync 1 min, restart 0.5 min, latency
1 min, idle 2 min, bigfiles 1 min, torn 2 min, connections 0.5 min, startup 1.5 min,
scale 4-6 min (moto lists 100,000 objects slowly), manyruns 1.5 min.
Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.harness import Context, Figure, compile_package

#: Scenario modules, in the order they run and print.
SCENARIOS = (
    "sync",
    "restart",
    "latency",
    "idle",
    "bigfiles",
    "torn",
    "connections",
    "startup",
    "scale",
    "manyruns",
    "podcost",
    "rclone",
)


def _table(rows: list[tuple[str, Figure]]) -> str:
    headers = ("scenario", "figure", "value", "target", "")
    cells = [
        (
            scenario,
            figure.name + (f" ({figure.note})" if figure.note else ""),
            figure.shown(),
            figure.target,
            {True: "ok", False: "MISSED", None: ""}[figure.ok],
        )
        for scenario, figure in rows
    ]
    widths = [max(len(str(row[i])) for row in [headers, *cells]) for i in range(5)]
    lines = ["  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(headers)).rstrip()]
    lines.append("  ".join("-" * width for width in widths).rstrip())
    previous = None
    for row in cells:
        shown = list(row)
        if row[0] == previous:
            shown[0] = ""
        previous = row[0]
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(shown)).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--toy", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--keep", type=Path, help="work in this folder and keep it (logs of every sidecar)"
    )
    args = parser.parse_args(argv)
    modules = {name: importlib.import_module(f"bench.{name}") for name in SCENARIOS}
    if args.list:
        for name, module in modules.items():
            print(f"{name:12} {module.SUMMARY}")
        return 0
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = [name for name in chosen if name not in modules]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; see --list")
    rows: list[tuple[str, Figure]] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="runlog-relay-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(work=work, toy=args.toy)
        compile_package()
        try:
            for name in chosen:
                started = time.monotonic()
                print(f"running {name}: {modules[name].SUMMARY} ...", flush=True)
                try:
                    figures = modules[name].run(ctx)
                except Exception:
                    traceback.print_exc()
                    failed.append(name)
                    continue
                rows += [(name, figure) for figure in figures]
                print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
        finally:
            ctx.close()
    print()
    print(_table(rows))
    missed = [f"{scenario}: {figure.name}" for scenario, figure in rows if figure.ok is False]
    for line in missed:
        print(f"MISSED {line}")
    for name in failed:
        print(f"FAILED {name} (see the traceback above)")
    if not (missed or failed):
        print("all targets met")
    return 1 if missed or failed else 0


if __name__ == "__main__":
    sys.exit(main())
