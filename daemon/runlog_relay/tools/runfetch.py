"""Read one run from the bucket into a :class:`~runlog_relay.tools.runmodel.Run`.

Used by ``show`` and ``diff``. One listing of the run's prefix, then one GET per chunk
(in parallel); the documents go to :func:`runmodel.build_run`. Every way this can go
wrong ends in a :class:`~runlog_relay.tools._common.ToolError` with one line that says
what is wrong with which object: no such run, a chunk that is not complete JSON (torn:
runnable rewrites files in place, and a mirror can hold a half-written version only if
something other than the sidecar wrote it), a run whose pieces do not fit together
(partial: chunks missing), or documents that are not runnable's.

Tracebacks. runnable 0.50 records only a one-line message in a failed attempt
(``Call to the function tasks.x did not succeed.``); the traceback goes to the task's
execution log, which runnable puts in its *catalog*, not in the run log, as
``<run_id>/<name><3 random characters>.execution.log`` (``utils.make_log_file_name``:
the step's internal name with map values replaced by a placeholder, then
``value<map value>`` per map level, every character that is not a letter or digit
dropped). With runnable's ``minio``/``s3`` catalog those objects sit in the same object
store (runnable's default: bucket ``runnable``, no prefix), so the tracebacks are fetched
from there when the catalog can be read; when it cannot, the message alone is shown.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from runlog_relay.cliopts import open_store
from runlog_relay.config.models import parse_bucket
from runlog_relay.errors import ConfigError, NotFoundError, RelayError
from runlog_relay.jsoncheck import JsonChecker, NotJson
from runlog_relay.layout import JSON_SUFFIX, Layout, UnsafeNameError, decode_body, path_for
from runlog_relay.objectstore import ObjectStore, RemoteObject
from runlog_relay.runstate import SEAL_TAG
from runlog_relay.tools._common import (
    EXIT_DIFFERENT,
    StoreContext,
    ToolError,
    get_object,
    layout_hint,
    list_objects,
    retrying,
)
from runlog_relay.tools.runmodel import Failure, Run, RunShapeError, build_run

__all__ = ["EXECUTION_LOG_SUFFIX", "execution_log_stem", "fetch_run", "traceback_of"]

EXECUTION_LOG_SUFFIX = ".execution.log"
_FETCH_WORKERS = 8
_RANDOM_TAG = re.compile(r"^[A-Z0-9]{3}$")
_TRACEBACK_START = "Traceback (most recent call last)"
_MAX_TRACEBACK_LINES = 400
#: What runnable puts in place of a map value in a node's internal name.
_MAP_PLACEHOLDER = "map_variable_placeholder"


@dataclass(frozen=True, slots=True)
class Catalog:
    """Where runnable's catalog keeps the runs' files: a store on the same endpoint."""

    store: ObjectStore
    where: str  #: ``bucket[/prefix]``, for messages


def catalog_for(ctx: StoreContext, location: str | None) -> Catalog:
    """The catalog at ``location`` (``bucket[/prefix]``); default: the run logs' bucket,
    no prefix, where runnable's minio catalog puts ``<run_id>/`` by default."""
    where = location or ctx.settings.bucket_name
    try:
        parse_bucket(where)
    except ValueError as exc:
        raise ConfigError(f"--catalog: {exc}") from None
    settings = ctx.settings.model_copy(update={"bucket": where})
    return Catalog(store=open_store(settings), where=where)


def _chunk_name(obj: RemoteObject, run_id: str, layout: Layout) -> str | None:
    try:
        path_for(obj.key, layout)
    except UnsafeNameError:
        return None
    name = obj.key.partition("/")[2]
    if layout is Layout.SINGLE:
        return name if name == f"{run_id}{JSON_SUFFIX}" else None
    if name.endswith(EXECUTION_LOG_SUFFIX):
        return None  # a catalog sharing the prefix: not part of the run log
    return name


def _parse(ctx: StoreContext, run_id: str, key: str) -> Any:
    try:
        body = get_object(ctx.store, key)
    except NotFoundError:
        raise ToolError(
            f"run {run_id}: {key} vanished while it was being read; is the run being"
            " deleted or rewritten? Try again"
        ) from None
    try:
        return json.loads(decode_body(body, ctx.layout))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ToolError(
            f"run {run_id}: object {key} ({len(body)} bytes) {_why_unreadable(body, exc)}"
        ) from None


def _cut_short(text: str) -> bool:
    """The start of a JSON document that ends too early (the project's one JSON checker:
    it raises as soon as the text cannot begin a document)."""
    checker = JsonChecker()
    try:
        checker.feed(text)
    except NotJson:
        return False
    return True


def _why_unreadable(body: bytes, exc: Exception) -> str:
    """What is wrong with a chunk that does not parse: cut short (torn: a half-written
    version, what runnable's in-place rewrites leave for a moment) or not JSON at all
    (another tool's object, a binary, a web page), which no waiting will fix."""
    if not body.strip() or (isinstance(exc, json.JSONDecodeError) and _cut_short(exc.doc)):
        return (
            f"is cut short ({exc}): the run in the bucket is torn (a half-written version"
            " was uploaded); the next complete upload repairs it"
        )
    if isinstance(exc, UnicodeDecodeError):
        return f"is not UTF-8 text, so not a run log (it starts {body[:32]!r})"
    return f"is not JSON, so not a run log ({exc}; it starts {body[:32]!r})"


def fetch_run(
    ctx: StoreContext,
    run_id: str,
    *,
    partial: bool = False,
    catalog: Catalog | None = None,
) -> Run:
    """Read ``run_id`` from the bucket. ToolError (exit 1) for a missing, torn, partial
    or foreign run; store errors propagate (exit 2/3)."""
    if not run_id or "/" in run_id:
        raise ToolError(f"{run_id!r} is not a run id", exit_code=EXIT_DIFFERENT)
    objects = list_objects(ctx.store, f"{run_id}/")
    where = f"{ctx.settings.bucket} at {ctx.settings.endpoint}"
    if not objects:
        raise ToolError(f"no run {run_id!r} in {where}; `runlog-relay runs` lists the runs")
    chunks = {
        name: obj for obj in objects if (name := _chunk_name(obj, run_id, ctx.layout)) is not None
    }
    main = "RunLog" if ctx.layout is Layout.CHUNKED else f"{run_id}{JSON_SUFFIX}"
    if main not in chunks:
        hint = layout_hint(run_id, objects, ctx.layout)
        raise ToolError(
            f"run {run_id} in {where} has no {main} object ({len(objects)} other objects):"
            f" the run is partial{hint or ' (its RunLog was never mirrored, or was deleted)'}"
        )
    with ThreadPoolExecutor(max_workers=_FETCH_WORKERS) as pool:
        bodies = list(pool.map(lambda name: _parse(ctx, run_id, chunks[name].key), chunks))
    documents = dict(zip(chunks, bodies, strict=True))
    try:
        run = build_run(run_id, documents)
    except RunShapeError as exc:
        raise ToolError(f"run {run_id} is not a runnable run log: {exc}") from None
    if run.problems and run.finished and not partial:
        more = f" (and {len(run.problems) - 1} more)" if len(run.problems) > 1 else ""
        raise ToolError(
            f"run {run_id} is partial: {run.problems[0]}{more}; some chunks are missing"
            " from the bucket (--partial shows what is there)"
        )
    if run.failures and catalog is not None:
        run = _with_tracebacks(run, catalog)
    return replace(run, sealed=_seal_of(ctx, chunks[main].key))


def _seal_of(ctx: StoreContext, key: str) -> str | None:
    """The status the run was sealed with: its RunLog object's tag (one request). Every
    upload of an object clears its tags, so a tag on the RunLog is from a seal after the
    RunLog's last write. Optional: no tagging, no permission, no answer all mean None."""
    try:
        return retrying(lambda: ctx.store.get_tags(key)).get(SEAL_TAG)
    except RelayError:
        return None


# -------------------------------------------------------------------------- tracebacks


def execution_log_stem(run: Run, step_name: str) -> str:
    """The name runnable 0.50 gives a step's execution log, without the random tag.

    ``map.b.process`` (``map`` a map step) → ``mapmapvariableplaceholderprocessvalueb``.
    """
    parts = step_name.split(".")
    values: list[str] = []
    for index in range(1, len(parts), 2):  # step.branch.step.branch...: odd parts are branches
        owner = run.step(".".join(parts[:index]))
        if owner is not None and owner.step_type == "map":
            values.append(parts[index])
            parts[index] = _MAP_PLACEHOLDER
    # str() of runnable's map-variable model is "value='b'"; only letters and digits stay.
    text = "".join(parts) + "".join(f"value{value}" for value in values)
    return "".join(ch for ch in text if ch.isalnum())


def traceback_of(log_text: str) -> str:
    """The traceback part of an execution log (from the first ``Traceback`` line)."""
    lines = log_text.splitlines()
    start = next((i for i, line in enumerate(lines) if _TRACEBACK_START in line), None)
    if start is None:
        return ""
    kept = [line.rstrip() for line in lines[start : start + _MAX_TRACEBACK_LINES]]
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept)


def _with_tracebacks(run: Run, catalog: Catalog) -> Run:
    try:
        logs = [
            obj
            for obj in list_objects(catalog.store, f"{run.run_id}/")
            if obj.key.endswith(EXECUTION_LOG_SUFFIX)
        ]
    except RelayError:
        # The catalog is optional: another bucket, no access, a file-system catalog.
        return run
    by_stem: dict[str, list[RemoteObject]] = {}
    for obj in logs:
        stem = obj.key.partition("/")[2][: -len(EXECUTION_LOG_SUFFIX)]
        if len(stem) > 3 and _RANDOM_TAG.match(stem[-3:]):
            by_stem.setdefault(stem[:-3], []).append(obj)
    failures = list(run.failures)
    for step_name in dict.fromkeys(f.step for f in failures):
        candidates = sorted(
            by_stem.get(execution_log_stem(run, step_name), []),
            key=lambda o: (o.last_modified is None, o.last_modified, o.key),
        )
        found: list[tuple[str, str]] = []
        for obj in candidates:
            try:
                text = get_object(catalog.store, obj.key).decode("utf-8", errors="replace")
            except RelayError:
                continue
            if traceback := traceback_of(text):
                found.append((traceback, f"{catalog.where}/{obj.key}"))
        # One log per attempt, written in attempt order: the k-th failed attempt gets the
        # k-th log that holds a traceback.
        indexes = [i for i, f in enumerate(failures) if f.step == step_name]
        for index, (traceback, source) in zip(indexes, found, strict=False):
            failures[index] = replace(failures[index], traceback=traceback, source=source)
    return replace(run, failures=tuple(failures))


def catalog_hint(failure: Failure) -> str:
    """Where to look when no traceback was found for a failure."""
    return (
        "no traceback in the run log; runnable keeps it in the task's execution log in"
        " its catalog (<run_id>/*.execution.log): --catalog BUCKET[/PREFIX] reads it there"
        if not failure.traceback
        else ""
    )
