"""Whether a runnable run is *final*: the one reading of runnable's RunLog statuses.

The sidecar seals a run (:mod:`runlog_relay.sidecar.runs`) only when its RunLog says the
run is over. runnable 0.50 (``runnable/defaults.py``) knows four statuses: ``CREATED``,
``PROCESSING``, ``SUCCESS`` and ``FAIL``; the last two are terminal. The RunLog's
``status`` alone is not enough, because runnable writes it before the run is really
over, as seen in the files a real pipeline leaves behind:

* the terminal node (``success`` or ``fail``) sets the run's status, then records its
  own step log: for a moment the status is terminal while that step is ``PROCESSING``;
* on Argo, a failed step sets the run to ``FAIL`` from its own pod, and the ``fail`` node
  runs in the next pod: until then there is no terminal step at all;
* a retry (``RUNNABLE_RETRY_RUN_ID``) reuses the run log and leaves the old terminal
  status in place while it re-runs steps: each re-run step is ``PROCESSING`` while it
  runs, and once it is done it has an attempt that started after the terminal step's.

So a run is final when its status is terminal, no root step is still running, and, for
a pipeline, its terminal step ran after every other root step's latest attempt. A
runnable *job* (the k8s-job executor's) has no steps: its status is set once, at the
end. Root steps live in the RunLog itself (chunked layout: ``<run_id>/RunLog.json``;
single layout: the run's only file), so one small document answers the question.

What this cannot see: between two steps of a retry whose last re-run step is composite
(parallel, map: their attempts live in the branch logs) the RunLog looks final. Such a
run is sealed if it stays quiet for the settle time, and unsealed by its next write.

Pure (no I/O), below every other module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runlog_relay.layout import JSON_SUFFIX, Layout

__all__ = [
    "RUN_LOG_NAME",
    "SEAL_TAG",
    "TERMINAL_STATUSES",
    "final_status",
    "final_status_of",
    "run_log_relative",
]

#: runnable's terminal statuses (``runnable.defaults.SUCCESS`` / ``FAIL``).
TERMINAL_STATUSES = ("SUCCESS", "FAIL")
#: Node types whose step ends a run (``extensions/nodes/success.py`` / ``fail.py``).
TERMINAL_STEP_TYPES = frozenset({"success", "fail"})
#: The chunked-fs store's run log file, without its suffix.
RUN_LOG_NAME = "RunLog"
#: The object tag a sealed run's objects carry (``tagSealedRuns``): its final status.
SEAL_TAG = "runlog-relay/status"


def run_log_relative(run_id: str, layout: Layout) -> str:
    """The file that holds ``run_id``'s status, relative to the log folder."""
    if layout is Layout.CHUNKED:
        return f"{run_id}/{RUN_LOG_NAME}{JSON_SUFFIX}"
    return f"{run_id}{JSON_SUFFIX}"


def _started(step: Mapping[str, Any]) -> datetime | None:
    """When the step's latest attempt started (runnable writes ``str(datetime.now())``)."""
    attempts = step.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        return None
    latest = attempts[-1]
    raw = latest.get("start_time") if isinstance(latest, Mapping) else None
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    try:
        return max(a, b)
    except TypeError:  # one aware, one naive: not runnable's format, ignore the second
        return a


def final_status(run_log: Mapping[str, Any]) -> str | None:
    """The run's terminal status when the run is over, else None (see the module doc)."""
    status = run_log.get("status")
    if status not in TERMINAL_STATUSES:
        return None
    steps = run_log.get("steps")
    if steps is None:
        steps = {}
    if not isinstance(steps, Mapping):
        return None
    if not steps:
        return str(status)  # a job: its status is written once, when it ends
    terminal: datetime | None = None
    ran_terminal = False
    others: datetime | None = None
    for step in steps.values():
        if not isinstance(step, Mapping) or step.get("status") not in TERMINAL_STATUSES:
            return None  # a step still runs (CREATED, PROCESSING): a retry, or not over yet
        started = _started(step)
        if step.get("step_type") in TERMINAL_STEP_TYPES:
            ran_terminal = True
            terminal = _later(terminal, started)
        else:
            others = _later(others, started)
    if not ran_terminal:
        return None  # the success/fail node has not run yet
    if terminal is not None and others is not None:
        try:
            if others > terminal:
                return None  # a retry re-ran steps after the terminal node
        except TypeError:
            pass
    return str(status)


def final_status_of(data: bytes) -> str | None:
    """:func:`final_status` of a RunLog file's bytes; None when they are not a RunLog."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return final_status(document) if isinstance(document, Mapping) else None
