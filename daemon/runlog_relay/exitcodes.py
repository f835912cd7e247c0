"""Every exit code of every ``runlog-relay`` command, in one table.

Scripts, Kubernetes (a Job's pod status) and monitoring read these numbers, so they mean
the same thing everywhere: ``0`` done, ``1`` not done (differences, an incomplete mirror,
a run that could not be pulled), ``2`` the command cannot run as invoked or installed
(a bad option or setting, a missing extra), ``3`` the object store (or a sidecar) could
not be reached or refused the credentials, ``130`` interrupted. :data:`MEANINGS` says,
per command, what each code it uses means; the commands' ``--help`` epilogs
(:func:`epilog`) and the documentation's exit-code reference are generated from it, and
the commands return :class:`ExitCode` members rather than bare numbers.
"""

from __future__ import annotations

import enum
import sys

__all__ = ["GENERAL", "MEANINGS", "ExitCode", "epilog", "missing_extra"]


class ExitCode(enum.IntEnum):
    OK = 0
    NOT_DONE = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130


#: What each code means for every command (the per-command rows below refine it).
GENERAL: dict[ExitCode, str] = {
    ExitCode.OK: "done: mirrored, in sync, pulled, equal, printed",
    ExitCode.NOT_DONE: "not done: differences found, the mirror is incomplete, a run not"
    " pulled or shown",
    ExitCode.USAGE: "cannot run as invoked or installed: a bad option, setting or config"
    " file, a missing extra",
    ExitCode.UNREACHABLE: "the object store (or, for `top`, a sidecar) cannot be reached or"
    " refused the credentials",
    ExitCode.INTERRUPTED: "interrupted with Ctrl-C (128 + SIGINT, as shells report it)",
}


def _missing(extra: str) -> str:
    return f"the `runlog-relay[{extra}]` extra is not installed (the message names the module)"


_STORE_TOOL = {
    ExitCode.USAGE: "a bad option, an invalid `--config` file or setting, a bucket that does"
    " not exist",
    ExitCode.UNREACHABLE: "the object store is unreachable (refused, unresolvable, timed out,"
    " not S3, TLS failure) or rejected the credentials",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

#: command → exit code → what it means for that command. Every command of the CLI has a
#: row (a test checks), and every code a command returns is one of its keys.
MEANINGS: dict[str, dict[ExitCode, str]] = {
    "sidecar": {
        ExitCode.OK: "the bucket mirrors the folder: after SIGTERM/SIGINT and the final"
        " drain, or at the end of `--once`",
        ExitCode.NOT_DONE: "the mirror is not complete; stderr has one line per file that is"
        " not mirrored, with the reason",
        ExitCode.USAGE: "invalid settings, options or config file (the message names each"
        " field), or the metrics port cannot be bound",
    },
    "operator": {
        ExitCode.OK: "stopped by SIGTERM/SIGINT",
        ExitCode.USAGE: "invalid settings (the message names the flag or variable), or "
        + _missing("operator"),
    },
    "crd": {
        ExitCode.OK: "printed, or `--check FILE`: the file matches the generated CRD",
        ExitCode.NOT_DONE: "`--check FILE`: the file differs from the generated CRD or"
        " cannot be read",
    },
    "demo": {
        ExitCode.OK: "the bucket mirrors the run and runnable reads it back identical",
        ExitCode.NOT_DONE: "a step of the demo failed (printed above the summary)",
        ExitCode.USAGE: _missing("demo"),
    },
    "pull": {
        ExitCode.OK: "every run pulled, or already up to date",
        ExitCode.NOT_DONE: "a run could not be pulled: not in the bucket, or local files in"
        " the way (`--force` overwrites them)",
        **_STORE_TOOL,
    },
    "verify": {
        ExitCode.OK: "the folder and the bucket are in sync (the sidecar has nothing to upload)",
        ExitCode.NOT_DONE: "differences: files missing from the bucket, differing, torn,"
        " only in the bucket, or that cannot be compared; or nothing compared: a named run"
        " in neither place, no run-log file or object of this layout on either side",
        ExitCode.USAGE: "a bad option or setting, a bucket that does not exist, a source"
        " folder that does not exist",
        **{k: v for k, v in _STORE_TOOL.items() if k is not ExitCode.USAGE},
    },
    "runs": {
        ExitCode.OK: "listed (an empty list too)",
        **_STORE_TOOL,
    },
    "show": {
        ExitCode.OK: "shown",
        ExitCode.NOT_DONE: "the run cannot be shown: not in the bucket, torn, partial"
        " (`--partial` shows it anyway), no RunLog, or not runnable's shape",
        **_STORE_TOOL,
    },
    "diff": {
        ExitCode.OK: "the runs are equal (status, parameters, code identities, step statuses)",
        ExitCode.NOT_DONE: "the runs differ",
        ExitCode.USAGE: "a bad option or setting, or a run that cannot be read (missing,"
        " torn, partial, not runnable's): never reported as different",
        **{k: v for k, v in _STORE_TOOL.items() if k is not ExitCode.USAGE},
    },
    "top": {
        ExitCode.OK: "stopped with Ctrl-C; `--once`: every sidecar answered",
        ExitCode.USAGE: "a bad option: a URL that is not http or https, has no valid host"
        " or a port outside 1-65535, or cannot be parsed",
        ExitCode.UNREACHABLE: "`--once`: a sidecar did not answer",
    },
}


def epilog(command: str) -> str:
    """The "Exit codes: …" sentence of a command's ``--help``."""
    parts = [f"{int(code)} {text}" for code, text in sorted(MEANINGS[command].items())]
    return "Exit codes: " + "; ".join(parts).replace("`", "") + "."


def missing_extra(command: str, module: str | None, extra: str | None) -> int:
    """Report a missing dependency the same way for every command; ``extra`` is the
    pyproject extra that brings it (None: a base dependency, so the install is broken)."""
    fix = (
        f"pip install 'runlog-relay[{extra}]'"
        if extra
        else "reinstall runlog-relay (a base dependency is gone)"
    )
    print(
        f"runlog-relay {command}: error: a dependency is missing ({module}); {fix}",
        file=sys.stderr,
    )
    return ExitCode.USAGE
