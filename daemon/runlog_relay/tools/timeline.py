"""Where each step sits on the run's time axis: shared by the terminal and HTML views.

Times are the executor's (runnable records ``str(datetime.now())``, local, no zone), so
only differences between them mean anything; a span is placed by its offset from the
run's first start. A step still running (no end yet) extends to the latest time seen in
the run, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from runlog_relay.tools.runmodel import Run, Step

__all__ = ["Segment", "Span", "Timeline", "layout_timeline"]


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of a bar: an attempt of a task, or the whole of a composite step."""

    offset: float  #: seconds from the run's start
    length: float  #: seconds
    status: str
    open_ended: bool = False  #: still running: drawn up to the latest time the run shows

    def columns(self, width: int, total: float) -> tuple[int, int]:
        """(first column, number of columns) of this segment in a ``width``-wide chart."""
        scale = width / total if total > 0 else 0.0
        first = max(0, min(width - 1, int(self.offset * scale)))
        last = max(first + 1, min(width, math.ceil((self.offset + self.length) * scale)))
        return first, last - first


@dataclass(frozen=True, slots=True)
class Span:
    step: Step
    offset: float | None  #: seconds from the run's start; None when the step never started
    length: float | None  #: seconds; None when it never started
    open_ended: bool  #: still running: drawn up to the latest time the run shows
    segments: tuple[Segment, ...] = ()  #: one per attempt (retries show as separate bars)


@dataclass(frozen=True, slots=True)
class Timeline:
    start: datetime | None
    total_seconds: float  #: from the first start to the last end (or latest time seen)
    spans: tuple[Span, ...]


def _seconds_between(a: datetime, b: datetime) -> float | None:
    try:
        return (b - a).total_seconds()
    except TypeError:  # aware and naive times mixed
        return None


def layout_timeline(run: Run) -> Timeline:
    starts = [s.started_at for s in run.steps if s.started_at is not None]
    try:
        start = min(starts) if starts else None
    except TypeError:
        start = None
    if start is None:
        return Timeline(None, 0.0, tuple(Span(s, None, None, False) for s in run.steps))
    stamps = [t for s in run.steps for t in (s.started_at, s.ended_at) if t is not None]
    stamps += [t for s in run.steps for a in s.attempts for t in (a.started_at, a.ended_at) if t]
    latest = max((_seconds_between(start, t) or 0.0 for t in stamps), default=0.0)
    spans = []
    for step in run.steps:
        offset = _seconds_between(start, step.started_at) if step.started_at else None
        if offset is None:
            spans.append(Span(step, None, None, False))
            continue
        if step.ended_at is not None:
            end = _seconds_between(start, step.ended_at)
            length, open_ended = max(0.0, (end or offset) - offset), False
        else:
            length, open_ended = max(0.0, latest - offset), True
        segments = tuple(_attempt_segments(step, start, latest)) or (
            Segment(offset, length, step.status, open_ended),
        )
        spans.append(Span(step, offset, length, open_ended, segments))
    return Timeline(start, max(latest, 0.0), tuple(spans))


def _attempt_segments(step: Step, start: datetime, latest: float) -> list[Segment]:
    segments = []
    for attempt in step.attempts:
        if attempt.started_at is None:
            continue
        offset = _seconds_between(start, attempt.started_at)
        if offset is None:
            continue
        end = _seconds_between(start, attempt.ended_at) if attempt.ended_at else None
        if end is None:
            segments.append(Segment(offset, max(0.0, latest - offset), attempt.status, True))
        else:
            segments.append(Segment(offset, max(0.0, end - offset), attempt.status))
    return segments
