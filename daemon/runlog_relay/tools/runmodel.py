"""A run, typed: what ``show`` and ``diff`` know about one runnable run.

Pure (no I/O): :func:`build_run` turns a run's documents, as they sit in the bucket, into
a :class:`Run`. The fetching lives in :mod:`runlog_relay.tools.runfetch`.

What the documents look like (runnable's ``runnable/datastore.py`` models, dumped with
``model_dump``; times are ``str(datetime.now())`` of the executor, local, no zone):

* ``RunLog``: ``run_id``, ``status``, ``tag``, ``dag_hash``, ``parameters`` (name →
  ``{kind: json|metric|object, value}``), ``run_config``, ``job`` (a JobLog, for jobs)
  and ``steps`` (internal name → StepLog, in execution order).
* ``StepLog``: ``name``, ``internal_name`` (dotted: ``map.b.process`` is the step
  ``process`` of branch ``map.b`` of the step ``map``), ``status``, ``step_type``
  (task, parallel, map, conditional, success, fail, stub), ``message``, ``attempts`` and
  ``branches`` (internal name → BranchLog). Composite steps have no attempts.
* ``StepAttempt``: ``attempt_number``, ``start_time``, ``end_time``, ``status``,
  ``message``, ``input_parameters``, ``output_parameters``, ``user_defined_metrics``,
  ``retry_indicator`` (set on re-runs with ``RUNNABLE_RETRY_RUN_ID``) and
  ``code_identities`` (git sha or image, and whether the tree was clean).
* ``BranchLog``: ``internal_name``, ``status``, ``steps``, ``parameters``.

How a run is split into documents depends on the store and the runnable release:

* single (``file-system``/``minio``): one document, branches nested in their steps.
* chunked, runnable 0.48 and later: ``RunLog`` (top-level steps) plus one
  ``BranchLog-<internal name>`` per branch, holding that branch's steps.
* chunked, runnable 0.47 and earlier: ``RunLog`` with no steps, ``Parameter-<name>``
  (``{name: parameter}``), ``StepLog-<internal name>-<ns>`` (one step, no branches) and
  ``BranchLog-<internal name>-<ns>`` (one branch, no steps); ``<ns>`` is the creation
  time in nanoseconds.

Every document carries its own ``internal_name``, so the pieces are put together by the
names inside them, never by parsing file names: a step belongs to the branch named by its
internal name minus the last part, a branch to the step named by its internal name minus
the last part (runnable's own ``_prepare_full_run_log`` rule).

The model never guesses: a document that is not runnable's shape raises
:class:`RunShapeError`; pieces that do not fit together (a branch whose step is missing,
a finished composite step with no branches) are listed in :attr:`Run.problems`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "FINISHED_STATUSES",
    "Attempt",
    "Branch",
    "CodeIdentity",
    "Failure",
    "Parameter",
    "Run",
    "RunShapeError",
    "Step",
    "build_run",
    "parse_time",
]

#: runnable's terminal run statuses (runnable/defaults.py).
FINISHED_STATUSES = frozenset({"SUCCESS", "FAIL", "TRIGGERED"})
#: Step types that own branches instead of attempts.
COMPOSITE_TYPES = frozenset({"parallel", "map", "conditional", "dag", "loop"})

_OLD_CHUNK = re.compile(r"^(StepLog|BranchLog)-(?P<name>.+)-(?P<ns>\d+)$")


class RunShapeError(ValueError):
    """A document that is not shaped like runnable's run log models."""


@dataclass(frozen=True, slots=True)
class Parameter:
    kind: str  #: json, metric or object (a pickled object's name in the catalog)
    value: Any


@dataclass(frozen=True, slots=True)
class CodeIdentity:
    type: str  #: git, docker, ...
    identifier: str | None  #: the commit sha or image digest; None outside a repository
    dependable: bool  #: git: the tree was clean
    url: str | None
    message: str = ""

    @property
    def key(self) -> tuple[str, str | None, bool, str | None]:
        """What makes two identities the same code (the message is commentary)."""
        return (self.type, self.identifier, self.dependable, self.url)

    def describe(self) -> str:
        text = f"{self.type or 'code'}:{self.identifier or '(unknown)'}"
        if self.url:
            text += f" ({self.url})"
        if not self.dependable:
            text += " [not dependable]"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "identifier": self.identifier,
            "dependable": self.dependable,
            "url": self.url,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    message: str
    retry_indicator: str
    code_identities: tuple[CodeIdentity, ...] = ()

    @property
    def duration_seconds(self) -> float | None:
        return _seconds(self.started_at, self.ended_at)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt: where, runnable's message, and the traceback when one is known."""

    step: str
    attempt: int | None
    message: str
    traceback: str = ""
    source: str = ""  #: where the traceback came from (an object key), if anywhere

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "attempt": self.attempt,
            "message": self.message,
            "traceback": self.traceback or None,
            "traceback_source": self.source or None,
        }


@dataclass(frozen=True, slots=True)
class Step:
    name: str  #: runnable's dotted internal name, unique in the run
    label: str  #: the step's own name (the last part of ``name``)
    step_type: str
    status: str
    branch: str | None  #: internal name of the branch holding it; None at the top
    depth: int  #: 0 at the top, 1 in a branch, 2 in a branch of a branch, ...
    attempts: tuple[Attempt, ...]
    started_at: datetime | None
    ended_at: datetime | None
    message: str = ""

    @property
    def duration_seconds(self) -> float | None:
        return _seconds(self.started_at, self.ended_at)

    @property
    def is_composite(self) -> bool:
        return self.step_type in COMPOSITE_TYPES

    def to_json(self, failures: Iterable[Failure] = ()) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_seconds": self.duration_seconds,
            "type": self.step_type,
            "label": self.label,
            "branch": self.branch,
            "depth": self.depth,
            "message": self.message or None,
            "attempts": [
                {
                    "number": attempt.number,
                    "status": attempt.status,
                    "started_at": attempt.started_at,
                    "ended_at": attempt.ended_at,
                    "duration_seconds": attempt.duration_seconds,
                    "message": attempt.message or None,
                    "retry_indicator": attempt.retry_indicator or None,
                }
                for attempt in self.attempts
            ],
            "failures": [failure.to_json() for failure in failures],
        }


@dataclass(frozen=True, slots=True)
class Branch:
    name: str  #: dotted internal name: ``parallel.left``, ``map.b``
    status: str
    step: str  #: the composite step it belongs to


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    status: str
    tag: str
    dag_hash: str
    parameters: Mapping[str, Parameter]
    code_identities: tuple[CodeIdentity, ...]
    steps: tuple[Step, ...]  #: depth first: a step, then its branches' steps
    branches: tuple[Branch, ...]
    failures: tuple[Failure, ...]
    problems: tuple[str, ...] = ()  #: pieces that do not fit together (a partial run)
    notes: tuple[str, ...] = ()  #: odd but harmless
    chunks: int = 1
    source: str = ""  #: which runnable format the documents were in
    #: the status a sidecar sealed the run with (its RunLog object's ``runlog-relay/status``
    #: tag), None when the object carries no such tag (not sealed, or tagging is off)
    sealed: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def started_at(self) -> datetime | None:
        starts = [s.started_at for s in self.steps if s.started_at is not None]
        return min(starts) if starts else None

    @property
    def ended_at(self) -> datetime | None:
        if not self.finished:
            return None
        ends = [s.ended_at for s in self.steps if s.ended_at is not None]
        return max(ends) if ends else None

    @property
    def duration_seconds(self) -> float | None:
        return _seconds(self.started_at, self.ended_at)

    def step(self, name: str) -> Step | None:
        return next((step for step in self.steps if step.name == name), None)

    def failures_of(self, name: str) -> list[Failure]:
        return [failure for failure in self.failures if failure.step == name]

    def parameter_values(self) -> dict[str, Any]:
        return {name: parameter.value for name, parameter in self.parameters.items()}


# ------------------------------------------------------------------------------ reading


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    if (start.tzinfo is None) != (end.tzinfo is None):
        return None
    return max(0.0, (end - start).total_seconds())


def parse_time(value: Any) -> datetime | None:
    """A runnable timestamp (``str(datetime.now())`` or ISO 8601); None when absent or odd."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RunShapeError(f"{what} is not a JSON object")
    return value


def _objects(value: Any, what: str) -> dict[str, dict[str, Any]]:
    """A mapping of JSON objects (``steps``, ``branches``); absent is empty."""
    if value is None:
        return {}
    mapping = _object(value, what)
    for key, item in mapping.items():
        _object(item, f"{what}[{key!r}]")
    return mapping


def _parameters(value: Any, what: str) -> dict[str, Parameter]:
    parameters: dict[str, Parameter] = {}
    for name, item in _objects(value, what).items():
        kind = item.get("kind")
        if not isinstance(kind, str) or "value" not in item:
            raise RunShapeError(f"{what}[{name!r}] has no kind and value")
        parameters[name] = Parameter(kind=kind, value=item["value"])
    return parameters


def _code_identities(value: Any) -> tuple[CodeIdentity, ...]:
    if not isinstance(value, list):
        return ()
    identities = []
    for item in value:
        if isinstance(item, dict):
            identities.append(
                CodeIdentity(
                    type=_text(item.get("code_identifier_type")),
                    identifier=item.get("code_identifier") or None,
                    dependable=bool(item.get("code_identifier_dependable")),
                    url=item.get("code_identifier_url") or None,
                    message=_text(item.get("code_identifier_message")),
                )
            )
    return tuple(identities)


def _attempts(step: dict[str, Any], what: str) -> tuple[Attempt, ...]:
    raw = step.get("attempts")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise RunShapeError(f"{what}.attempts is not a list")
    # runnable before 0.48 kept the code identities on the step, not on each attempt.
    step_identities = _code_identities(step.get("code_identities"))
    attempts = []
    for index, item in enumerate(raw, start=1):
        attempt = _object(item, f"{what}.attempts[{index - 1}]")
        number = attempt.get("attempt_number")
        attempts.append(
            Attempt(
                number=number if isinstance(number, int) else index,
                status=_text(attempt.get("status")) or "UNKNOWN",
                started_at=parse_time(attempt.get("start_time")),
                ended_at=parse_time(attempt.get("end_time")),
                message=_text(attempt.get("message")),
                retry_indicator=_text(attempt.get("retry_indicator")),
                code_identities=_code_identities(attempt.get("code_identities")) or step_identities,
            )
        )
    return tuple(attempts)


def _parent(internal_name: str) -> str | None:
    head, dot, _ = internal_name.rpartition(".")
    return head if dot else None


@dataclass
class _Pieces:
    """Step and branch documents by internal name, wherever they were found."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    branches: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: dict[str, tuple[int, int]] = field(default_factory=dict)  #: (creation ns, seen)

    def add_step(self, key: str, document: dict[str, Any], what: str, ns: int = 0) -> None:
        self.steps[self._name(key, document, ns)] = document
        for branch_key, branch in _objects(document.get("branches"), f"{what}.branches").items():
            self.add_branch(branch_key, branch, f"{what}.branches[{branch_key!r}]")

    def add_branch(self, key: str, document: dict[str, Any], what: str, ns: int = 0) -> None:
        self.branches[self._name(key, document, ns)] = document
        for step_key, step in _objects(document.get("steps"), f"{what}.steps").items():
            self.add_step(step_key, step, f"{what}.steps[{step_key!r}]")

    def _name(self, key: str, document: dict[str, Any], ns: int) -> str:
        """The document's own internal name (its key where it has none); remembers order."""
        name = document.get("internal_name")
        name = name if isinstance(name, str) and name else key
        self.order.setdefault(name, (ns, len(self.order)))
        return name


def build_run(run_id: str, documents: Mapping[str, Any]) -> Run:
    """The run from its documents: chunk name (``RunLog``, ``BranchLog-map.a``, ...; for
    the single layout ``<run_id>.json``) → parsed JSON. RunShapeError when not runnable's."""
    main_name = "RunLog" if "RunLog" in documents else f"{run_id}.json"
    if main_name not in documents:
        raise RunShapeError("no RunLog document")
    run_log = _object(documents[main_name], main_name)
    if not isinstance(run_log.get("run_id"), str) or not isinstance(run_log.get("status", ""), str):
        raise RunShapeError(f"{main_name} is not a runnable RunLog (no run_id and status)")
    problems: list[str] = []
    notes = []
    if run_log["run_id"] != run_id:
        notes.append(f"{main_name} names the run {run_log['run_id']!r} (copied or renamed?)")

    parameters = _parameters(run_log.get("parameters"), f"{main_name}.parameters")
    pieces = _Pieces()
    top = list(_objects(run_log.get("steps"), f"{main_name}.steps"))
    for key, top_step in _objects(run_log.get("steps"), f"{main_name}.steps").items():
        pieces.add_step(key, top_step, f"{main_name}.steps[{key!r}]")
    source = "single" if main_name != "RunLog" else "chunked"
    for chunk, document in sorted(documents.items()):
        if chunk == main_name:
            continue
        old = _OLD_CHUNK.match(chunk)
        ns = int(old["ns"]) if old else 0
        if chunk.startswith("Parameter-"):
            source = "chunked, runnable 0.47 or earlier"
            parameters.update(_parameters(document, chunk))
        elif chunk.startswith("StepLog-"):
            source = "chunked, runnable 0.47 or earlier"
            step_document = _object(document, chunk)
            if "branches" in step_document:  # the branches are chunks of their own
                step_document = {**step_document, "branches": {}}
            pieces.add_step(chunk, step_document, chunk, ns)
        elif chunk.startswith("BranchLog-"):
            pieces.add_branch(chunk, _object(document, chunk), chunk, ns)
        # Anything else (a stray object under the run prefix) is not part of the run log.

    job = run_log.get("job")
    if isinstance(job, dict):
        pieces.add_step("job", {**job, "internal_name": "job", "step_type": "job"}, "job")
        top.append("job")
    # runnable 0.47 and earlier: top-level steps live in StepLog chunks, in creation order.
    chunked_top = [n for n in pieces.steps if _parent(n) is None and n not in top]
    top.extend(sorted(chunked_top, key=lambda n: pieces.order[n]))

    steps, branches = _flatten(pieces, top, problems)
    status = _text(run_log.get("status")) or "UNKNOWN"
    if status in FINISHED_STATUSES:
        for step in steps:
            if (
                step.is_composite
                and step.status in FINISHED_STATUSES
                and not any(branch.step == step.name for branch in branches)
            ):
                problems.append(f"{step.name} finished but none of its branch logs is there")
    found = [i for step in steps for attempt in step.attempts for i in attempt.code_identities]
    if isinstance(job, dict):
        found += _code_identities(job.get("code_identities"))
    identities: dict[tuple[Any, ...], CodeIdentity] = {}
    for identity in found:  # once each, in the order first seen
        identities.setdefault(identity.key, identity)
    return Run(
        run_id=run_id,
        status=status,
        tag=_text(run_log.get("tag")),
        dag_hash=_text(run_log.get("dag_hash")),
        parameters=parameters,
        code_identities=tuple(identities.values()),
        steps=tuple(steps),
        branches=tuple(branches),
        failures=tuple(_failures(steps)),
        problems=tuple(problems),
        notes=tuple(notes),
        chunks=len(documents),
        source=source,
    )


def _flatten(
    pieces: _Pieces, top: list[str], problems: list[str]
) -> tuple[list[Step], list[Branch]]:
    steps_of: dict[str | None, list[str]] = {}
    for name in pieces.steps:
        steps_of.setdefault(_parent(name), []).append(name)
    branches_of: dict[str, list[str]] = {}
    for name in pieces.branches:
        parent = _parent(name)
        if parent is None or parent not in pieces.steps:
            problems.append(f"branch {name} has no step {parent or '(none)'} to belong to")
            continue
        branches_of.setdefault(parent, []).append(name)
    for branch, names in steps_of.items():
        if branch is not None and branch not in pieces.branches:
            problems.append(f"steps of branch {branch} without its branch log: {', '.join(names)}")

    steps: list[Step] = []
    branches: list[Branch] = []

    def visit_step(name: str, branch: str | None, depth: int) -> None:
        document = pieces.steps[name]
        index = len(steps)
        steps.append(_placeholder(name))  # keeps depth-first order; replaced below
        first = len(steps)
        for branch_name in branches_of.get(name, []):
            visit_branch(branch_name, depth + 1)
        steps[index] = _step(name, document, branch, depth, steps[first:])

    def visit_branch(name: str, depth: int) -> None:
        document = pieces.branches[name]
        branches.append(
            Branch(
                name=name,
                status=_text(document.get("status")) or "UNKNOWN",
                step=_parent(name) or "",
            )
        )
        ordered = sorted(steps_of.get(name, []), key=lambda s: pieces.order.get(s, (0, 0)))
        for step_name in ordered:
            visit_step(step_name, name, depth)

    for name in top:
        if name in pieces.steps:
            visit_step(name, None, 0)
    _order_branches(steps)
    return steps, branches


def _placeholder(name: str) -> Step:
    return Step(name, name, "", "", None, 0, (), None, None)


def _step(
    name: str, document: dict[str, Any], branch: str | None, depth: int, children: list[Step]
) -> Step:
    attempts = _attempts(document, name)
    starts = [a.started_at for a in attempts if a.started_at] or [
        c.started_at for c in children if c.started_at
    ]
    ends = [a.ended_at for a in attempts if a.ended_at] or [
        c.ended_at for c in children if c.ended_at
    ]
    status = _text(document.get("status")) or "UNKNOWN"
    label = _text(document.get("name")) or name.rpartition(".")[2]
    return Step(
        name=name,
        label=label,
        step_type=_text(document.get("step_type")) or "task",
        status=status,
        branch=branch,
        depth=depth,
        attempts=attempts,
        started_at=_earliest(starts),
        # A step still running has no end, even when some of its attempts or branches do.
        ended_at=_latest(ends) if status in FINISHED_STATUSES else None,
        message=_text(document.get("message")),
    )


def _earliest(times: list[datetime]) -> datetime | None:
    try:
        return min(times) if times else None
    except TypeError:  # aware and naive times mixed: not comparable, not worth guessing
        return None


def _latest(times: list[datetime]) -> datetime | None:
    try:
        return max(times) if times else None
    except TypeError:
        return None


def _order_branches(steps: list[Step]) -> None:
    """Within each composite step, put its branches in the order they started."""
    index = 0
    while index < len(steps):
        step = steps[index]
        end = _subtree_end(steps, index)
        if step.is_composite and end > index + 1:
            groups = list(_branch_groups(steps, index + 1, end, step.depth + 1))
            groups.sort(key=lambda group: _sort_time(group[0]))
            steps[index + 1 : end] = [s for group in groups for s in group]
        index += 1


def _subtree_end(steps: list[Step], index: int) -> int:
    depth = steps[index].depth
    end = index + 1
    while end < len(steps) and steps[end].depth > depth:
        end += 1
    return end


def _branch_groups(steps: list[Step], start: int, end: int, depth: int) -> Iterator[list[Step]]:
    group: list[Step] = []
    for step in steps[start:end]:
        if step.depth == depth and group and step.branch != group[0].branch:
            yield group
            group = []
        group.append(step)
    if group:
        yield group


def _sort_time(step: Step) -> tuple[int, float, str]:
    if step.started_at is None:
        return (1, 0.0, step.name)
    stamp = step.started_at
    seconds = stamp.timestamp() if stamp.tzinfo else (stamp - datetime(1970, 1, 1)).total_seconds()
    return (0, seconds, step.name)


def _failures(steps: Iterable[Step]) -> Iterator[Failure]:
    for step in steps:
        failed = [a for a in step.attempts if a.status == "FAIL"]
        for attempt in failed:
            yield Failure(step=step.name, attempt=attempt.number, message=attempt.message.strip())
        if step.status == "FAIL" and not failed and not step.is_composite:
            yield Failure(step=step.name, attempt=None, message=step.message.strip())
