"""The tools' shared pieces: exit codes, error lines, retries, --since, formatting."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from runlog_relay.errors import ConfigError, NotFoundError, PermanentError, RetryableError
from runlog_relay.layout import Layout
from runlog_relay.objectstore import RemoteObject
from runlog_relay.tools._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ToolError,
    error_exit_code,
    error_message,
    format_bytes,
    format_seconds,
    group_by_run,
    guarded,
    latest_modified,
    layout_hint,
    parse_since,
    printable,
    progress,
    retrying,
    since_type,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def obj(key: str, minute: int = 0) -> RemoteObject:
    return RemoteObject(key=key, etag="e", size=1, last_modified=NOW + timedelta(minutes=minute))


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        (" 2H ", timedelta(hours=2)),
    ],
)
def test_since_durations_are_ago(text: str, ago: timedelta) -> None:
    assert parse_since(text, now=NOW) == NOW - ago


def test_since_iso_times() -> None:
    assert parse_since("2026-01-31T08:00+00:00") == datetime(2026, 1, 31, 8, 0, tzinfo=UTC)
    assert parse_since("2026-01-31T08:00+02:00") == datetime(2026, 1, 31, 6, 0, tzinfo=UTC)
    local = datetime(2026, 1, 31).astimezone()  # no zone: the user's local midnight
    assert parse_since("2026-01-31") == local.astimezone(UTC)
    assert parse_since("2026-01-31").tzinfo is UTC


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "-1h", "2026-13-01", "h"])
def test_since_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since(text, now=NOW)
    with pytest.raises(argparse.ArgumentTypeError):
        since_type(text)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("bad"), EXIT_USAGE),
        (ToolError("usage", exit_code=EXIT_USAGE), EXIT_USAGE),
        (ToolError("partial"), EXIT_DIFFERENT),
        (NotFoundError("no run", code="NoSuchKey"), EXIT_DIFFERENT),
        (PermanentError("x", code="NoSuchBucket"), EXIT_USAGE),
        (PermanentError("x", code="InvalidBucketName"), EXIT_USAGE),
        (PermanentError("x", code="InvalidAccessKeyId"), EXIT_UNREACHABLE),
        (PermanentError("x", code="SignatureDoesNotMatch"), EXIT_UNREACHABLE),
        (PermanentError("x", code="AccessDenied"), EXIT_UNREACHABLE),
        (PermanentError("x", code="TLS"), EXIT_UNREACHABLE),
        (PermanentError("x", code="HTTP404"), EXIT_UNREACHABLE),
        (RetryableError("x", code="Unreachable"), EXIT_UNREACHABLE),
        (RetryableError("x", code="ServerError"), EXIT_UNREACHABLE),
    ],
)
def test_exit_codes(error: Exception, code: int) -> None:
    assert error_exit_code(error) == code


def test_error_messages_say_what_to_check() -> None:
    creds = PermanentError("listing b/p: InvalidAccessKeyId (...)", code="InvalidAccessKeyId")
    assert error_message(creds, endpoint="http://s3:9000") == (
        "the object store at http://s3:9000 rejected the credentials (InvalidAccessKeyId);"
        " check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or RUNLOG_RELAY_*_FILE)"
    )
    down = RetryableError("listing b/p: endpoint unreachable (X)", code="Unreachable")
    assert error_message(down, endpoint="http://s3:9000").endswith(
        "is http://s3:9000 right (--endpoint) and is it up?"
    )
    bucket = PermanentError("listing b/p: NoSuchBucket", code="NoSuchBucket")
    assert error_message(bucket, endpoint="http://s3:9000", bucket="b").startswith(
        "bucket 'b' does not exist at http://s3:9000; check --bucket"
    )


def test_guarded_turns_errors_into_one_line_and_a_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise RetryableError("listing b: endpoint unreachable (Refused)", code="Unreachable")

    args = argparse.Namespace(_endpoint="http://127.0.0.1:1")
    assert guarded("runs", handler)(args) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("runlog-relay runs: error: listing b: endpoint unreachable")
    assert guarded("runs", lambda a: EXIT_OK)(args) == EXIT_OK


def test_guarded_reports_local_file_errors_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/data/logs/r1")

    assert guarded("pull", handler)(argparse.Namespace()) == EXIT_DIFFERENT
    assert capsys.readouterr().err == "runlog-relay pull: error: /data/logs/r1: Permission denied\n"


def test_retrying_retries_transient_errors_only() -> None:
    delays: list[float] = []
    calls = iter([RetryableError("503", code="ServerError"), RetryableError("503"), "body"])

    def flaky() -> str:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    assert retrying(flaky, sleep=delays.append) == "body"
    assert delays == [0.2, 0.4]

    def refused() -> str:
        raise RetryableError("refused", code="Unreachable")

    delays.clear()
    with pytest.raises(RetryableError):
        retrying(refused, sleep=delays.append)
    assert delays == []  # a person is waiting: no retries against a dead endpoint

    def always() -> str:
        raise RetryableError("503", delay=1.5)

    with pytest.raises(RetryableError):
        retrying(always, sleep=delays.append, attempts=3)
    assert delays == [1.5, 1.5]

    def denied() -> str:
        raise PermanentError("AccessDenied", code="AccessDenied")

    with pytest.raises(PermanentError):
        retrying(denied, sleep=delays.append)


def test_grouping_runs_and_their_latest_write() -> None:
    objects = [obj("r1/RunLog", 1), obj("r1/BranchLog-a", 5), obj("r2/RunLog", 2), obj("stray")]
    runs = group_by_run(objects)
    assert sorted(runs) == ["r1", "r2"]  # a key without a run folder is not a run
    assert latest_modified(runs["r1"]) == NOW + timedelta(minutes=5)
    assert latest_modified([RemoteObject("r/x", "e", 1, None)]) is None


def test_layout_hint_spots_the_other_layout() -> None:
    single = [obj("r1/r1.json")]
    chunked = [obj("r1/RunLog"), obj("r1/BranchLog-a")]
    assert "--layout single" in layout_hint("r1", single, Layout.CHUNKED)
    assert "--layout chunked" in layout_hint("r1", chunked, Layout.SINGLE)
    assert layout_hint("r1", chunked, Layout.CHUNKED) == ""
    assert layout_hint("r1", single, Layout.SINGLE) == ""


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (532, "532 B"),
        (27750, "27.1 KiB"),
        (3.4 * 1024**2, "3.4 MiB"),
        (5 * 1024**4, "5120.0 GiB"),
    ],
)
def test_format_bytes(size: float, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.25, "250ms"), (12.34, "12.3s"), (245, "4m05s"), (7380, "2h03m")],
)
def test_format_seconds(seconds: float | None, text: str) -> None:
    assert format_seconds(seconds) == text


def test_progress_is_silent_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with progress("pulling", total=10) as ticker:
        ticker.advance(5)
        ticker.total(20)
    assert capsys.readouterr() == ("", "")


def test_printable_escapes_what_would_act_on_a_terminal() -> None:
    assert printable("a\x1b[2Jb\x07\x9b\u202e\x7f") == "a\\x1b[2Jb\\x07\\x9b\\u202e\\x7f"
    assert printable("line 1\n\tline 2") == "line 1\n\tline 2"  # tracebacks keep lines
    assert printable("id\nfake", one_line=True) == "id\\nfake"
    assert printable("plain ünïcode [bold]") == "plain ünïcode [bold]"


def test_guarded_error_lines_escape_what_came_from_the_bucket(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise PermanentError("downloading p/esc\x1b[2J/RunLog: AccessDenied", code="X")

    guarded("show", handler)(argparse.Namespace())
    assert capsys.readouterr().err == (
        "runlog-relay show: error: downloading p/esc\\x1b[2J/RunLog: AccessDenied\n"
    )


@pytest.mark.parametrize("command", [["runs"], ["show", "r1"], ["verify", "--source", "."]])
def test_a_malformed_region_is_a_usage_error_before_any_request(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """It passed the parser and failed at the first signed request as "unreachable" (3)."""
    from tests.support.toolcli import cli

    # A port nothing listens on: reaching the network would be exit 3, not 2.
    result = cli(capsys, *command, "--region", "us east 1", "--endpoint", "http://127.0.0.1:9")
    assert result.code == 2, result.err
    assert "--region" in result.err
