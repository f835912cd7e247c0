"""``runlog-relay crd``: print the RunLogStore CustomResourceDefinition.

The YAML comes from :func:`runlog_relay.config.crd.crd_yaml`, generated from the same
pydantic model the operator and the sidecar validate with. Needs no cluster and no kopf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runlog_relay.config.crd import CRD_FILE, crd_yaml
from runlog_relay.exitcodes import ExitCode, epilog

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "crd",
        help=summary,
        description=f"{summary}. Install it with `runlog-relay crd | kubectl apply -f -`.",
        epilog=epilog("crd"),
    )
    parser.add_argument(
        "--check",
        type=Path,
        metavar="FILE",
        help=f"instead of printing, exit 1 if FILE (e.g. {CRD_FILE}) differs from the"
        " generated CRD",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    text = crd_yaml()
    if args.check is not None:
        try:
            committed = args.check.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"runlog-relay crd: cannot read {args.check}: {exc.strerror}", file=sys.stderr)
            return ExitCode.NOT_DONE
        if committed != text:
            print(
                f"{args.check} is out of date; regenerate it with"
                f" `runlog-relay crd > {args.check}`",
                file=sys.stderr,
            )
            return ExitCode.NOT_DONE
        return ExitCode.OK
    sys.stdout.write(text)
    return ExitCode.OK
