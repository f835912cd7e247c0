"""logs: JSON lines with stable keys, and configure() as the one place handlers change."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from runlog_relay import logs

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _ours(handler: logging.Handler) -> bool:
    """Not one of pytest's capture handlers, which pytest adds and removes per phase."""
    return not type(handler).__module__.startswith("_pytest")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure() rewires the root logger; put everything back for the next test."""
    root = logging.getLogger()
    saved = [h for h in root.handlers if _ours(h)]
    level = root.level
    quiet = {name: logging.getLogger(name).level for name in ("urllib3",)}
    yield
    for handler in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)
    for name, value in quiet.items():
        logging.getLogger(name).setLevel(value)


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_json_lines_have_stable_keys_and_the_extra_fields() -> None:
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    log = logging.getLogger("runlog_relay.sidecar.store")
    log.warning(
        "upload of %s failed (%s); retry %d",
        "r/RunLog",
        "SlowDown",
        3,
        extra={
            "run_id": "r",
            "key": "r/RunLog",
            "bucket": "runnable",
            "attempt": 3,
            "path": "/tmp/run_logs/r/RunLog.json",
            "reason": "torn",
            "unrelated": "not a structured key",
        },
    )
    (line,) = lines(stream)
    entry = json.loads(line)
    assert list(entry)[:4] == ["ts", "level", "logger", "msg"]
    assert set(entry) == {
        "ts",
        "level",
        "logger",
        "msg",
        "run_id",
        "key",
        "bucket",
        "attempt",
        "path",
        "reason",
    }
    assert TS.match(entry["ts"]), entry["ts"]
    assert entry["level"] == "warning"
    assert entry["logger"] == "runlog_relay.sidecar.store"
    assert entry["msg"] == "upload of r/RunLog failed (SlowDown); retry 3"
    assert entry["attempt"] == 3  # stays a number
    assert entry["bucket"] == "runnable"


def test_json_without_extras_has_just_the_base_keys() -> None:
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    logging.getLogger("x").info("hello")
    assert set(json.loads(lines(stream)[0])) == {"ts", "level", "logger", "msg"}


def test_json_is_one_line_per_record_even_with_newlines_and_unicode() -> None:
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    logging.getLogger("x").info("two\nlines: %s", "naïve", extra={"path": "a\nb"})
    (line,) = lines(stream)
    entry = json.loads(line)
    assert entry["msg"] == "two\nlines: naïve"
    assert entry["path"] == "a\nb"
    assert "naïve" in line  # not \\u-escaped


def test_json_reports_the_exception_and_stringifies_odd_values() -> None:
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed", extra={"key": object.__new__(object)})
    entry = json.loads(lines(stream)[0])
    assert entry["error"] == "ValueError: boom"
    assert entry["key"].startswith("<object object")


def test_plain_format_is_for_people() -> None:
    stream = io.StringIO()
    logs.configure("DEBUG", "plain", stream=stream)
    logging.getLogger("runlog_relay.x").debug("listed %d objects", 4)
    (line,) = lines(stream)
    assert line.endswith("DEBUG   runlog_relay.x: listed 4 objects")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_configure_replaces_handlers_instead_of_adding() -> None:
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    root.addHandler(logging.StreamHandler(io.StringIO()))  # e.g. a library's basicConfig
    logs.configure("INFO", "plain", stream=first)
    logs.configure("INFO", "json", stream=second)
    assert len(root.handlers) == 1
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1
    assert json.loads(lines(second)[0])["msg"] == "once"


def test_level_filters_and_accepts_lower_case() -> None:
    stream = io.StringIO()
    logs.configure("warning", "json", stream=stream)
    assert logging.getLogger().level == logging.WARNING
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert [json.loads(line)["msg"] for line in lines(stream)] == ["shown"]


def test_sdk_loggers_are_quiet() -> None:
    logs.configure("INFO", "plain", stream=io.StringIO())
    assert logging.getLogger("urllib3").level == logging.ERROR


def test_urllib3_stays_quiet_even_when_debugging() -> None:
    """Its DEBUG lines are full request URLs: STS web identity calls carry the token."""
    logging.getLogger("urllib3").setLevel(logging.NOTSET)
    logs.configure("DEBUG", "plain", stream=io.StringIO())
    assert logging.getLogger("urllib3").level == logging.ERROR
