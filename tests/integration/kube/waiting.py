"""Polling with a deadline and a clear failure message (instead of bare sleeps in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

#: How long a wait may take before it fails, unless the test says otherwise. A budget,
#: not a delay: a wait returns as soon as its condition holds. It is generous because
#: the suite shares 2 cores with servers and operators in other threads, where a step
#: that takes 1 s alone has been seen to take over 10 s.
DEFAULT_TIMEOUT = 30.0


class WaitTimeout(AssertionError):
    """The awaited condition did not happen in time (an assertion failure for pytest)."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.02,
    message: str | None = None,
    checks: Sequence[Callable[[], None]] = (),
    context: Callable[[], str] | None = None,
    retry_on: tuple[type[BaseException], ...] = (AssertionError, LookupError),
) -> T:
    """
    Call ``predicate()`` until it returns a truthy value, and return that value.

    ``AssertionError`` and ``LookupError`` (or whatever ``retry_on`` lists) from
    the predicate count as "not yet" (so predicates can use ``assert`` or index
    into absent keys); the last one is
    reported if the deadline passes. ``checks`` run on every iteration and may raise
    to fail fast (e.g. when the operator thread has crashed). ``context()`` adds
    details to the failure message (e.g. the last API requests).
    """
    what = message or getattr(predicate, "__name__", repr(predicate))
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_error: BaseException | None = None
    attempts = 0
    while True:
        for check in checks:
            check()
        attempts += 1
        try:
            value = predicate()
        except retry_on as e:
            last_error, last_value = e, None
        else:
            if value:
                return value
            last_error, last_value = None, value
        if time.monotonic() >= deadline:
            lines = [f"Timed out after {timeout}s ({attempts} attempts) waiting for: {what}"]
            if last_error is not None:
                lines.append(f"Last error: {type(last_error).__name__}: {last_error}")
            else:
                lines.append(f"Last value: {last_value!r}")
            if context is not None:
                lines.append(context())
            raise WaitTimeout("\n".join(lines)) from last_error
        time.sleep(interval)
