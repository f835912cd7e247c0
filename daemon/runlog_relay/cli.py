"""Command line: ``runlog-relay <command>``.

Each command lives in its own module exposing ``register(subparsers, summary)`` (adds its
parser and sets ``handler``) and is imported lazily, so the sidecar image path never
imports kopf, rich or runnable. The handler gets the parsed ``argparse.Namespace`` and
returns the process exit code.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, cast

from runlog_relay import __version__, fielddocs
from runlog_relay.exitcodes import missing_extra

__all__ = ["COMMANDS", "build_parser", "main"]

#: command name → module with ``register(subparsers, summary)``; order is the order in --help.
COMMANDS: dict[str, str] = {
    "sidecar": "runlog_relay.sidecar.command",
    "operator": "runlog_relay.operator.command",
    "crd": "runlog_relay.operator.crd_command",
    "demo": "runlog_relay.demo",
    "pull": "runlog_relay.tools.pull",
    "verify": "runlog_relay.tools.verify",
    "runs": "runlog_relay.tools.runs",
    "top": "runlog_relay.tools.top",
    "show": "runlog_relay.tools.show",
    "diff": "runlog_relay.tools.diff",
}

#: command → the pyproject extra it needs beyond the base install.
EXTRAS: dict[str, str] = {"operator": "operator", "demo": "demo"}

#: one line per command for the top-level --help, without importing every command.
SUMMARIES: dict[str, str] = {
    "sidecar": "watch a run-log folder and keep an exact mirror of it in a bucket",
    "operator": "run the Kubernetes operator (RunLogStore CRD, status, injection webhook)",
    "crd": "print the RunLogStore CustomResourceDefinition generated from the models",
    "demo": "run a real runnable pipeline against a local S3 server and show the mirror",
    "pull": "download runs from the bucket into a runnable log folder",
    "verify": "compare a run-log folder with the bucket",
    "runs": "list the runs in the bucket",
    "top": "live terminal view of one or more sidecars' metrics",
    "show": "show one run from the bucket: status, parameters, timeline, failures",
    "diff": "compare two runs from the bucket: parameters, code, step statuses and times",
}


class _Parser(argparse.ArgumentParser):
    """Every parser of the CLI: no abbreviations. `--f` silently meant `--force`, and a
    new option would change what an abbreviation in someone's script means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, other commands get cheap stubs (not imported)."""
    parser = _Parser(
        prog="runlog-relay",
        description="Mirror runnable run logs from a shared volume to S3/MinIO, and manage"
        " that on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"runlog-relay {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=SUMMARIES[name], add_help=False)
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if (exc.name or "").startswith("runlog_relay"):
                raise  # our own bug, not a missing optional dependency
            if only is not None:
                raise SystemExit(missing_extra(name, exc.name, EXTRAS.get(name))) from None
            subparsers.add_parser(name, help=f"{SUMMARIES[name]} (unavailable: {exc.name})")
            continue
        module.register(subparsers, SUMMARIES[name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    if chosen not in COMMANDS:
        chosen = None
    if argv is None and chosen == "sidecar" and not _asks_for_help(args_list):
        # A process that runs the sidecar never shows the settings' descriptions,
        fielddocs.skip()
        # nor uses pydantic plugins: finding them reads the entry points of every
        # installed package (~11 ms of each pod's start-up CPU). A value set wins.
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # No (known) command: build every parser so --help and errors are complete.
    parser = build_parser() if chosen is None else build_parser(only=chosen)
    args, unknown = parser.parse_known_args(args_list)
    if unknown:
        # argparse would report these with the top-level usage; the command's own usage,
        # and the nearest option it has, is what helps.
        command = _command_parser(parser, args.command)
        options = [s for action in command._actions for s in action.option_strings]
        near = difflib.get_close_matches(unknown[0].split("=")[0], options, n=1)
        hint = f" (did you mean {near[0]}?)" if near and unknown[0].startswith("-") else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return int(args.handler(args) or 0)


def _asks_for_help(args: Sequence[str]) -> bool:
    """``-h`` or ``--help`` (no abbreviation is accepted: allow_abbrev=False)."""
    return any(a in ("-h", "--help") for a in args)


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return cast(argparse.ArgumentParser, action.choices[name])
    raise LookupError(name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
