"""``--exit-when-sealed``: when a plain-container sidecar may end its pod.

A classic sidecar (a regular container, on clusters without native sidecars) keeps a
Job's pod running until it exits by itself. It must exit only when the pod has nothing
left to write *and* the bucket holds all of it. The sidecar cannot see the other
containers (no shared process namespace, no API access), so it decides from the runs:

* **The pod's runs** are the ``run_ids`` setting (the webhook fills
  ``RUNLOG_RELAY_RUN_IDS`` from the pod's runnable command line or environment). Without
  them the sidecar cannot tell its runs from others on a shared volume: it warns once and
  exits only when stopped (SIGTERM), as a sidecar always does.
* **The pod's work is done** for a run once its RunLog is final (see
  :mod:`runlog_relay.runstate`) *because of this pod*:

  - the sidecar saw the run not final, then final: this pod wrote the end (runnable's
    k8s-job executor runs the whole job in one pod and writes its final status last; on
    Argo, only the pod of the terminal node does);
  - or the run was already final at the sidecar's first look and this pod does not retry
    it: runnable refuses to write a run that exists (``RunLogExistsError``) except in a
    retry, so the pod has nothing to add (its job finished before the sidecar looked, or
    its main container failed at once, as a Job's later pods do after the first one
    wrote the run);
  - or this pod retries it (``RUNNABLE_RETRY_RUN_ID``, copied by the webhook from the
    pipeline's container) and the final RunLog was written after the sidecar started.
* Then the sidecar exits 0 once every run of the pod is also **sealed** (every file
  verified in the bucket), through the usual drain. If the pod's work is done but a file
  of its runs cannot be mirrored (torn past the grace period, unreadable, too large) or
  the bucket refuses the credentials, for ``sync.drainTimeoutSeconds`` in a row, it
  drains and exits 1 with the usual report. An outage is waited out: the pod stays until
  the bucket holds the runs.

Argo signals sidecars itself (it kills injected containers when the main container
ends): there, SIGTERM ends the sidecar as usual, and a step pod's runs are not final
until the terminal node's pod, so this never ends an Argo step early.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from runlog_relay.sidecar.runs import Seal

__all__ = ["PodWork"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _State:
    saw_open: bool = False  #: seen not final (or absent) by this process
    looked: bool = False
    done: bool = False  #: final because of this pod
    sealed: bool = False


class PodWork:
    """A run-stage observer that calls ``on_finished`` once the pod's runs are done and
    sealed (once)."""

    def __init__(
        self,
        run_ids: Iterable[str],
        *,
        retry_run_id: str | None,
        on_finished: Callable[[], object],
        started_at: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runs = {run_id: _State() for run_id in run_ids}
        if not self._runs:
            raise ValueError("PodWork needs the pod's run ids")
        self._retry_run_id = retry_run_id
        self._on_finished = on_finished
        self._started_at = time.time() if started_at is None else started_at
        self._clock = clock
        self._lock = threading.Lock()
        self._finished = False
        self._stuck_since: float | None = None

    # ----------------------------------------------------------------- observer
    def run_evaluated(self, run_id: str, status: str | None, mtime: float, first: bool) -> None:
        with self._lock:
            state = self._runs.get(run_id)
            if state is None:
                return
            state.looked = True
            if status is None:
                state.saw_open = True
                state.done = False
                return
            if state.saw_open:
                why = "it turned final while the sidecar watched"
            elif run_id != self._retry_run_id:
                why = "it was final when the sidecar first looked, and the pod does not retry it"
            elif mtime >= self._started_at:
                why = "this pod's retry finished it after the sidecar started"
            else:
                return  # this pod retries it: wait for the retry to write it
            if not state.done:
                state.done = True
                log.info("the pod's work on run %s is done: %s", run_id, why)
        self._check()

    def run_sealed(self, seal: Seal) -> None:
        with self._lock:
            state = self._runs.get(seal.run_id)
            if state is None:
                return
            state.sealed = True
        self._check()

    def run_unsealed(self, run_id: str) -> None:
        with self._lock:
            state = self._runs.get(run_id)
            if state is not None:
                state.sealed = False
                state.done = False  # written again: the pod is at work on it again
                state.saw_open = True

    def run_gone(self, run_id: str) -> None:
        pass  # a deleted run keeps its state: what was sealed stays sealed in the bucket

    # ----------------------------------------------------------------- decisions
    @property
    def work_done(self) -> bool:
        """Every run of the pod is final because of this pod (sealed or not)."""
        with self._lock:
            return all(state.done for state in self._runs.values())

    def waiting_for(self) -> list[str]:
        """One line per run the sidecar still waits for (for the log)."""
        with self._lock:
            out = []
            for run_id, state in self._runs.items():
                if not state.looked:
                    out.append(f"{run_id}: no RunLog yet")
                elif not state.done:
                    out.append(f"{run_id}: not final")
                elif not state.sealed:
                    out.append(f"{run_id}: final, not sealed yet")
            return out

    def stuck(self, problems: Mapping[str, str], budget: float) -> bool:
        """With the work done but not sealed: True once ``problems`` (files that cannot be
        mirrored, a store that refuses us) have lasted ``budget`` seconds in a row."""
        now = self._clock()
        if not problems or not self.work_done or self._finished:
            self._stuck_since = None
            return False
        if self._stuck_since is None:
            self._stuck_since = now
            log.warning(
                "the pod's work is done but its runs cannot be sealed: %s; giving up in"
                " %.0fs unless that changes",
                "; ".join(f"{what}: {why}" for what, why in sorted(problems.items())),
                budget,
            )
        return now - self._stuck_since >= budget

    def _check(self) -> None:
        with self._lock:
            if self._finished or not all(s.done and s.sealed for s in self._runs.values()):
                return
            self._finished = True
        log.info(
            "the pod's runs (%s) are sealed and its work is done: exiting",
            ", ".join(self._runs),
        )
        self._on_finished()
