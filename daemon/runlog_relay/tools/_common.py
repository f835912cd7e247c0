"""What the read-side tools share: exit codes, one-line errors, store access, output.

Exit codes (the same for every tool; :mod:`runlog_relay.exitcodes` has the table)::

    0  success / in sync
    1  differences found, or only part of the work done (a run missing, a file refused,
       a local file that cannot be written)
    2  usage or configuration error (bad option, bad config file, bucket does not exist)
    3  object store unreachable, not S3, TLS failure, or credentials rejected
    130 interrupted

Errors reach the user as one line on stderr, ``runlog-relay <command>: error: …``, in
the same form argparse uses for usage errors; never a traceback, never a secret (the
messages of :mod:`runlog_relay.errors` are built from names and codes only).

Progress bars and colours go to stderr and switch themselves off when it is not a
terminal, so piped output and ``--json`` stay clean.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.segment import Segment

from runlog_relay.backoff import backoff_delay
from runlog_relay.cliopts import open_store, settings_from_args, warn_unknown_variables
from runlog_relay.config.models import duration_seconds
from runlog_relay.config.settings import SidecarSettings
from runlog_relay.errors import (
    ConfigError,
    NotFoundError,
    PermanentError,
    RelayError,
    RetryableError,
)
from runlog_relay.exitcodes import ExitCode
from runlog_relay.layout import JSON_SUFFIX, Layout
from runlog_relay.objectstore import ObjectStore, RemoteObject

__all__ = [
    "EXIT_DIFFERENT",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "StoreContext",
    "ToolError",
    "emit_json",
    "error_exit_code",
    "error_message",
    "format_bytes",
    "format_seconds",
    "get_object",
    "group_by_run",
    "guarded",
    "latest_modified",
    "layout_hint",
    "list_objects",
    "open_context",
    "parse_since",
    "printable",
    "progress",
    "shown_value",
    "stderr_console",
    "stdout_console",
]

EXIT_OK = ExitCode.OK
EXIT_DIFFERENT = ExitCode.NOT_DONE
EXIT_USAGE = ExitCode.USAGE
EXIT_UNREACHABLE = ExitCode.UNREACHABLE

_T = TypeVar("_T")

#: S3 error codes that mean "these credentials are not accepted here".
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
_CONFIG_CODES = frozenset({"NoSuchBucket", "InvalidBucketName"})


class ToolError(RelayError):
    """A failure a tool reports itself, with the exit code it maps to."""

    def __init__(self, message: str, *, exit_code: int = EXIT_DIFFERENT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------- errors


def error_exit_code(exc: BaseException) -> int:
    """The exit code for an error that ends a tool (see the module docstring)."""
    if isinstance(exc, ToolError):
        return exc.exit_code
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, NotFoundError):
        return EXIT_DIFFERENT
    if isinstance(exc, PermanentError) and exc.code in _CONFIG_CODES:
        return EXIT_USAGE
    if isinstance(exc, (PermanentError, RetryableError)):
        return EXIT_UNREACHABLE
    return EXIT_DIFFERENT


def error_message(
    exc: BaseException, *, endpoint: str | None = None, bucket: str | None = None
) -> str:
    """One line that says what went wrong and what to check."""
    text = str(exc)
    code = getattr(exc, "code", "")
    where = f" at {endpoint}" if endpoint else ""
    if isinstance(exc, PermanentError) and code in _CREDENTIAL_CODES:
        return (
            f"the object store{where} rejected the credentials ({code}); check"
            " AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or RUNLOG_RELAY_*_FILE)"
        )
    if isinstance(exc, PermanentError) and code == "AccessDenied":
        return f"{text}: these credentials may not read this bucket{where}"
    if isinstance(exc, RetryableError) and code == "Unreachable":
        return f"{text}; is {endpoint or 'the endpoint'} right (--endpoint) and is it up?"
    if isinstance(exc, RelayError) and code.startswith("HTTP"):
        # Not S3 at all (s3http.NotS3Answer): a console, a portal, a proxy's page.
        named = f"--endpoint is {endpoint}" if endpoint else "check --endpoint"
        return f"{text}; {named} (MinIO serves its console and its S3 API on different ports)"
    if isinstance(exc, PermanentError) and code == "NoSuchBucket" and "--bucket" not in text:
        name = f"bucket {bucket!r}" if bucket else "the bucket"
        return f"{name} does not exist{where}; check --bucket ({text})"
    return text


def guarded(command: str, handler: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Wrap a tool's handler: errors become one line on stderr and an exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except RelayError as exc:
            message = error_message(
                exc,
                endpoint=getattr(args, "_endpoint", None),
                bucket=getattr(args, "_bucket", None),
            )
            print(f"runlog-relay {command}: error: {printable(message)}", file=sys.stderr)
            return error_exit_code(exc)
        except KeyboardInterrupt:
            print(f"runlog-relay {command}: interrupted", file=sys.stderr)
            return ExitCode.INTERRUPTED
        except BrokenPipeError:
            # `runlog-relay runs | head`: the reader has seen enough. Point stdout at
            # /dev/null so the interpreter's final flush does not complain.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OK
        except OSError as exc:  # the local side: a folder we may not write, a full disk
            where = f"{exc.filename}: " if exc.filename else ""
            reason = exc.strerror or type(exc).__name__
            print(f"runlog-relay {command}: error: {printable(where)}{reason}", file=sys.stderr)
            return EXIT_DIFFERENT

    return run


# -------------------------------------------------------------------------------- store


@dataclass(frozen=True, slots=True)
class StoreContext:
    """The settings and the store one tool invocation talks to."""

    settings: SidecarSettings
    store: ObjectStore

    @property
    def layout(self) -> Layout:
        return self.settings.layout

    def describe(self) -> dict[str, str]:
        return {
            "endpoint": self.settings.endpoint,
            "bucket": self.settings.bucket,
            "layout": self.settings.layout.value,
        }


def open_context(args: argparse.Namespace) -> StoreContext:
    """Settings from the shared store options, and the store; ConfigError when invalid."""
    warn_unknown_variables(getattr(args, "command", None) or "tools")
    settings = settings_from_args(args)
    # For the messages of errors raised later (see guarded).
    args._endpoint, args._bucket = settings.endpoint, settings.bucket_name
    return StoreContext(settings=settings, store=open_store(settings))


def retrying(
    call: Callable[[], _T],
    *,
    attempts: int = 3,
    base_delay: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """Call again after transient failures (5xx, throttling), a few times only.

    A refused connection is not retried: the endpoint is wrong or down, and a
    person is waiting for the answer.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RetryableError as exc:
            if exc.code == "Unreachable" or attempt == attempts:
                raise
            delay = backoff_delay(attempt - 1, base=base_delay, cap=60.0, jitter=False)
            sleep(exc.delay if exc.delay is not None else delay)
    raise AssertionError("unreachable")  # pragma: no cover


def list_objects(store: ObjectStore, sub_prefix: str = "") -> list[RemoteObject]:
    """The whole listing under the prefix (one paginated listing, retried as a whole)."""
    return retrying(lambda: list(store.list(sub_prefix)))


def get_object(store: ObjectStore, key: str) -> bytes:
    return retrying(lambda: store.get(key))


def group_by_run(objects: Iterable[RemoteObject]) -> dict[str, list[RemoteObject]]:
    """Objects by run id (the first key component); keys without a ``/`` are not runs."""
    runs: dict[str, list[RemoteObject]] = defaultdict(list)
    for obj in objects:
        run_id, sep, rest = obj.key.partition("/")
        if sep and run_id and rest:
            runs[run_id].append(obj)
    return dict(runs)


def latest_modified(objects: Iterable[RemoteObject]) -> datetime | None:
    stamps = [obj.last_modified for obj in objects if obj.last_modified is not None]
    return max(stamps) if stamps else None


def layout_hint(run_id: str, objects: Iterable[RemoteObject], layout: Layout) -> str:
    """A hint when a run's objects look like the other layout, else ``""``."""
    names = {obj.key.partition("/")[2] for obj in objects}
    single_name = f"{run_id}{JSON_SUFFIX}"
    if layout is Layout.CHUNKED and single_name in names and "RunLog" not in names:
        return " (it looks like a file-system/minio run: try --layout single)"
    if layout is Layout.SINGLE and single_name not in names and "RunLog" in names:
        return " (it looks like a chunked-fs/chunked-minio run: try --layout chunked)"
    return ""


# ----------------------------------------------------------------------------- parsing


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``2h``, ``3d``, ``1h30m`` (ago), or an ISO date/time; an aware UTC datetime.

    An ISO time without a zone is local time, as people mean it. ValueError otherwise.
    """
    value = text.strip()
    now = now or datetime.now(UTC)
    if not value.replace(".", "", 1).isdigit():  # a bare number is no duration here
        # The one duration syntax (the sidecar's --retain-local uses it too).
        with contextlib.suppress(ValueError):
            return now - timedelta(seconds=duration_seconds(value.lower()))
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 3d, 1w, 1h30m) nor an ISO date or"
            " time (2026-01-31, 2026-01-31T08:00, 2026-01-31T08:00+00:00)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()  # local time
    return stamp.astimezone(UTC)


def since_type(text: str) -> datetime:
    """argparse ``type=`` for ``--since`` (a usage error, exit 2, when invalid)."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# ------------------------------------------------------------------------------ output


def format_bytes(size: float) -> str:
    """``532 B``, ``27.1 KiB``, ``3.4 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_seconds(seconds: float | None) -> str:
    """``850ms``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def emit_json(data: Any) -> None:
    """Pretty JSON on stdout for scripts (datetimes as ISO 8601)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))
    sys.stdout.write("\n")
    sys.stdout.flush()


#: Output that is not a terminal (a pipe, a file) is not wrapped at 80 columns.
_UNWRAPPED_WIDTH = 1000


#: What must not reach a terminal raw from the bucket (object keys, run-log values):
#: C0 controls (ESC starts the sequences that clear the screen or move the cursor), DEL,
#: C1 controls, and the bidirectional overrides that reorder what is shown.
_CONTROL = "\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = re.compile(f"[{_CONTROL}]")
_UNPRINTABLE_ON_ONE_LINE = re.compile(f"[\t\n{_CONTROL}]")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with every control character written as its Python escape (``\x1b``),
    so a hostile key or value shows as text instead of acting on the terminal. With
    ``one_line``, tabs and newlines too (a run id must not fake another table row).
    Not markup-escaped: :func:`rich.markup.escape` is for text put into markup."""
    pattern = _UNPRINTABLE_ON_ONE_LINE if one_line else _UNPRINTABLE
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


#: Characters of one value (a parameter) shown in human output; --json has them all. A
#: run log may carry a 150 MB parameter: laying that out froze `show` for minutes.
VALUE_LIMIT = 2000


def shown_value(value: Any, *, limit: int = VALUE_LIMIT) -> str:
    """A run-log value as human output shows it: strings as they are, anything else as
    JSON, cut at ``limit`` characters with a note saying how much more there is."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters; --json shows all)"


class _ToolConsole(Console):
    """The tools' Console: no control character from the data reaches the terminal, and a
    closed pipe is left to :func:`guarded`.

    Every segment of text is passed through :func:`printable` as it is written, whatever
    built it (a table cell, a Text, markup): one place, so no output path can forget.
    rich's own cursor and colour codes are separate (styles, control segments) and stay.

    rich's default ``on_broken_pipe`` raises ``SystemExit(1)``, which skips guarded's
    BrokenPipeError handling: ``runlog-relay diff A A | head`` then exited 1 ("the runs
    differ") where ``--json`` exits 0. Raising BrokenPipeError again gives both outputs
    the one closed-pipe rule, in guarded.
    """

    def __init__(self, **kwargs: Any) -> None:
        # emoji=False: ":smile:" in a value is text, as "[bold]" is once escaped.
        super().__init__(highlight=False, emoji=False, **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            Segment(printable(text), style, control)
            if not control
            else Segment(text, style, control)
            for text, style, control in buffer
        )

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more to write (rich's default does the same)
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def stdout_console() -> Console:
    # Resolved at call time: tests and callers may have replaced sys.stdout.
    console = _ToolConsole(file=sys.stdout)
    if not console.is_terminal:
        console = _ToolConsole(file=sys.stdout, width=_UNWRAPPED_WIDTH)
    return console


def stderr_console() -> Console:
    return _ToolConsole(file=sys.stderr)


class _Ticker:
    """What a tool advances; a no-op when progress is off."""

    def __init__(self, progress: Progress | None, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def total(self, total: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)


@contextmanager
def progress(description: str, *, total: float | None, unit: str = "files") -> Iterator[_Ticker]:
    """A transient progress bar on stderr when it is a terminal; nothing otherwise."""
    console = stderr_console()
    if not console.is_terminal:
        yield _Ticker(None, None)
        return
    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        amount,
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bar:
        yield _Ticker(bar, bar.add_task(description, total=total))
