"""``runlog-relay verify``: compare a run-log folder with the bucket.

Compares exactly as the sidecar does on start-up, so "verify says in sync" means "the
sidecar would upload nothing": each run-log file found by
:func:`runlog_relay.localtree.walk` (no symlinks, safe names only) is read once with the
sidecar's own stable read (:mod:`runlog_relay.stableread`: complete UTF-8 JSON, unchanged
while read, hashed as its object body for the layout) and its expected ETag compared with
the one the bucket listing reports. One listing, no HEAD or GET per object.

A file that is not valid JSON right now (runnable rewrites files in place, so a reader
can catch one half-written) or that changed while it was read is reported as ``torn``,
not as differing: its content is in flux, not wrong.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.markup import escape
from rich.table import Table

from runlog_relay.cliopts import add_store_options
from runlog_relay.etag import etag_verdict
from runlog_relay.exitcodes import epilog
from runlog_relay.layout import Layout, UnsafeNameError, path_for
from runlog_relay.localtree import Candidate, Skipped, walk
from runlog_relay.objectstore import RemoteObject
from runlog_relay.stableread import TornRead, read_stable
from runlog_relay.tools._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    EXIT_USAGE,
    ToolError,
    emit_json,
    guarded,
    list_objects,
    open_context,
    progress,
    stdout_console,
)

__all__ = [
    "LocalFile",
    "Report",
    "compare",
    "newer_side",
    "read_local",
    "register",
]

DEFAULT_SOURCE = Path(".run_log_store")

State = Literal["missing", "differs", "remote_only", "torn", "uncompared"]
Newer = Literal["local", "remote", "unknown"]


@dataclass(frozen=True, slots=True)
class LocalFile:
    """One local run-log file as the sidecar would see it right now."""

    relative: str  #: path relative to the folder, ``/``-separated
    key: str  #: object key relative to the prefix
    run_id: str
    size: int
    mtime: float  #: seconds since the epoch
    etag: str | None  #: expected ETag of its object body; None when torn
    torn: str = ""  #: why the content is not usable right now
    md5: str | None = None  #: MD5 of its object body, for buckets whose ETags are not MD5s


@dataclass(frozen=True, slots=True)
class Difference:
    state: State
    run_id: str
    path: str  #: relative to the folder
    key: str  #: relative to the prefix
    detail: str = ""
    newer: Newer | None = None  #: for ``differs``
    local_mtime: datetime | None = None
    remote_last_modified: datetime | None = None
    local_etag: str | None = None
    remote_etag: str | None = None
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "state": self.state,
            "run_id": self.run_id,
            "path": self.path,
            "key": self.key,
        }
        optional = {
            "detail": self.detail or None,
            "newer": self.newer,
            "local_mtime": self.local_mtime,
            "remote_last_modified": self.remote_last_modified,
            "local_etag": self.local_etag,
            "remote_etag": self.remote_etag,
            "size": self.size,
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        return data


#: skip reasons that leave a run-log file out of the bucket: the folder is not in sync.
_NOT_IN_BUCKET = frozenset({"unreadable", "unsafe_name", "key_too_long"})


@dataclass(slots=True)
class Report:
    same: int = 0
    differences: list[Difference] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    ignored_remote: list[str] = field(default_factory=list)  #: keys of no run-log shape
    #: why something asked for was not compared: a named run in neither place, nothing
    #: of this layout on either side. Never in sync: nothing checked is no answer.
    not_compared: list[str] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return self.same + len(self.differences)

    @property
    def in_sync(self) -> bool:
        # A link or another non-regular file is never mirrored (policy: not a run log); an
        # unreadable file or folder might hold anything, and a run-log file whose name
        # cannot be a key is never uploaded, so neither is in the bucket (as the sidecar).
        return (
            not self.differences
            and not self.not_compared
            and not any(s.reason in _NOT_IN_BUCKET for s in self.skipped)
        )

    def counts(self) -> dict[str, int]:
        counts = {
            "same": self.same,
            "missing": 0,
            "differs": 0,
            "remote_only": 0,
            "torn": 0,
            "uncompared": 0,
        }
        for diff in self.differences:
            counts[diff.state] += 1
        counts["skipped"] = len(self.skipped)
        counts["ignored_remote"] = len(self.ignored_remote)
        return counts


def newer_side(local_mtime: float, remote: datetime | None) -> Newer:
    """Which side was written last, allowing for the listing's time resolution.

    S3 reports ``LastModified`` to the second (MinIO to the millisecond): an object
    stamped ``r`` was written somewhere in ``[r, r + resolution)``.
    """
    if remote is None:
        return "unknown"
    stamp = remote.timestamp()
    resolution = 1.0 if remote.microsecond == 0 else 0.001
    if local_mtime >= stamp + resolution:
        return "local"
    if local_mtime < stamp:
        return "remote"
    return "unknown"


def read_local(candidate: Candidate, layout: Layout, root: Path | None = None) -> LocalFile:
    """Read one file the way the sidecar does (:func:`runlog_relay.stableread.read_stable`:
    whole, unchanged while read, UTF-8, complete JSON), hashing its object body without
    keeping it."""
    mapping = candidate.mapping
    try:
        snapshot = read_stable(candidate.path, root=root, layout=layout, keep_body=0)
    except TornRead as torn:
        info = os.lstat(candidate.path)
        return LocalFile(
            candidate.relative,
            mapping.key,
            mapping.run_id,
            info.st_size,
            info.st_mtime,
            None,
            torn.reason,
        )
    return LocalFile(
        candidate.relative,
        mapping.key,
        mapping.run_id,
        snapshot.file_size,
        snapshot.signature.mtime_ns / 1e9,
        snapshot.etag,
        md5=snapshot.md5,
    )


def _stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


#: Asked when a listed ETag differs from a local file's: is the content the same anyway?
#: None: cannot tell without reading the object (:meth:`ObjectStore.compare_digests`).
Confirm = Callable[[RemoteObject, LocalFile], bool | None]


def compare(
    local: list[LocalFile],
    remote: list[RemoteObject],
    layout: Layout,
    confirm: Confirm | None = None,
) -> Report:
    """The verdict for every local file and every remote object (pure but for
    ``confirm``, which may ask the bucket)."""
    report = Report()
    remote_by_key = {obj.key: obj for obj in remote}
    local_keys = set()
    for file in sorted(local, key=lambda f: f.relative):
        local_keys.add(file.key)
        obj = remote_by_key.get(file.key)
        if file.torn:
            report.differences.append(
                Difference(
                    "torn",
                    file.run_id,
                    file.relative,
                    file.key,
                    detail=file.torn,
                    local_mtime=_stamp(file.mtime),
                    remote_last_modified=obj.last_modified if obj else None,
                    remote_etag=obj.etag if obj else None,
                )
            )
        elif obj is None:
            report.differences.append(
                Difference(
                    "missing",
                    file.run_id,
                    file.relative,
                    file.key,
                    detail="not in the bucket",
                    local_mtime=_stamp(file.mtime),
                    local_etag=file.etag,
                    size=file.size,
                )
            )
        elif obj.etag != file.etag and not (same := _same_content(obj, file, confirm)):
            if same is None:
                report.differences.append(
                    Difference(
                        "uncompared",
                        file.run_id,
                        file.relative,
                        file.key,
                        detail=f"cannot compare: the bucket's ETag {obj.etag} is of parts of"
                        " another size, and the object has no stored MD5 (another tool"
                        " wrote it); `pull` compares the bytes",
                        local_mtime=_stamp(file.mtime),
                        remote_last_modified=obj.last_modified,
                        local_etag=file.etag,
                        remote_etag=obj.etag,
                    )
                )
                continue
            newer = newer_side(file.mtime, obj.last_modified)
            report.differences.append(
                Difference(
                    "differs",
                    file.run_id,
                    file.relative,
                    file.key,
                    detail={
                        "local": "the local file is newer (the bucket is behind)",
                        "remote": "the bucket's copy is newer",
                        "unknown": "both written within the same second",
                    }[newer],
                    newer=newer,
                    local_mtime=_stamp(file.mtime),
                    remote_last_modified=obj.last_modified,
                    local_etag=file.etag,
                    remote_etag=obj.etag,
                )
            )
        else:
            report.same += 1
    for obj in sorted(remote, key=lambda o: o.key):
        if obj.key in local_keys:
            continue
        try:
            relative = path_for(obj.key, layout)
        except UnsafeNameError:
            report.ignored_remote.append(obj.key)
            continue
        report.differences.append(
            Difference(
                "remote_only",
                obj.key.partition("/")[0],
                relative,
                obj.key,
                detail="only in the bucket",
                remote_last_modified=obj.last_modified,
                remote_etag=obj.etag,
                size=obj.size,
            )
        )
    return report


def _same_content(obj: RemoteObject, file: LocalFile, confirm: Confirm | None) -> bool | None:
    """A listed ETag that is not the local file's expected one: the same body anyway
    (one PUT of a big file has the plain MD5), different, or cannot tell (None)."""
    if confirm is not None:
        return confirm(obj, file)
    assert file.etag is not None
    return etag_verdict(obj.etag, expected=file.etag, md5=file.md5)


_LABELS = {
    "missing": "[yellow]missing[/]",
    "differs": "[red]differs[/]",
    "remote_only": "[cyan]remote only[/]",
    "torn": "[magenta]torn[/]",
    "uncompared": "[yellow]cannot compare[/]",
}


def _print_report(report: Report, source: Path, where: dict[str, str]) -> None:
    console = stdout_console()
    console.print(
        f"verify {escape(str(source))} against {escape(where['bucket'])} at"
        f" {escape(where['endpoint'])} ({where['layout']} layout)"
    )
    if report.differences or report.skipped:
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 2))
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        table.add_column()
        for diff in report.differences:
            target = diff.key if diff.state == "remote_only" else diff.path
            table.add_row(_LABELS[diff.state], escape(target), escape(diff.detail))
        for skipped in report.skipped:
            table.add_row(
                "[dim]skipped[/]",
                escape(str(skipped.path)),
                f"{skipped.reason}: {escape(skipped.detail)}",
            )
        console.print(table)
    counts = report.counts()
    summary = ", ".join(
        f"{counts[name]} {label}"
        for name, label in (
            ("same", "in sync"),
            ("missing", "missing"),
            ("differs", "differ"),
            ("remote_only", "only in the bucket"),
            ("torn", "torn"),
            ("uncompared", "cannot compare"),
            ("skipped", "skipped"),
        )
        if counts[name] or name == "same"
    )
    for reason in report.not_compared:
        console.print(f"[red]not compared:[/] {escape(reason)}")
    if report.in_sync:
        verdict = "[green]IN SYNC[/]"
    elif report.compared:
        verdict = "[red]NOT IN SYNC[/]"
    else:  # "0 in sync" would read as a result
        verdict, summary = "[red]NOTHING COMPARED[/]", "no file or object to compare (above)"
    console.print(f"{verdict}: {summary}")


def not_compared(
    report: Report,
    *,
    wanted: set[str],
    local: list[Candidate],
    remote: list[RemoteObject],
    source: Path,
    layout: Layout,
    where: str,
) -> list[str]:
    """Why the comparison is no answer: named runs found nowhere (a typo), or not one
    file or object of this layout on either side (with a hint when the other layout's
    are there: ``--layout single`` on a chunked folder compared nothing)."""
    found = {c.mapping.run_id for c in local} | {o.key.partition("/")[0] for o in remote}
    reasons = [
        f"run {run_id!r} is neither in {source} nor in {where}" for run_id in sorted(wanted - found)
    ]
    if reasons or report.compared:
        return reasons
    other = Layout.SINGLE if layout is Layout.CHUNKED else Layout.CHUNKED
    files = sum(
        1
        for item in walk(source, other)
        if isinstance(item, Candidate) and (not wanted or item.mapping.run_id in wanted)
    )
    objects = sum(1 for obj in remote if _maps(obj.key, other))
    hint = (
        f" ({files} local file(s) and {objects} object(s) are of the {other.value} layout:"
        f" try --layout {other.value})"
        if files or objects
        else ""
    )
    return [
        f"no {layout.value}-layout run-log files in {source} and no such objects in {where}{hint}"
    ]


def _maps(key: str, layout: Layout) -> bool:
    try:
        path_for(key, layout)
    except UnsafeNameError:
        return False
    return True


def handle(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    layout = ctx.layout
    source: Path = args.source or ctx.settings.source or DEFAULT_SOURCE
    if not source.is_dir():
        raise ToolError(f"source folder {source} does not exist", exit_code=EXIT_USAGE)
    wanted = set(args.run_ids)

    report = Report()
    candidates: list[Candidate] = []
    for item in walk(source, layout, ctx.settings.prefix):  # the prefix: keys too long
        if isinstance(item, Skipped):
            report.skipped.append(item)
        elif not wanted or item.mapping.run_id in wanted:
            candidates.append(item)

    if wanted:
        remote: list[RemoteObject] = []
        for run_id in sorted(wanted):
            remote.extend(list_objects(ctx.store, f"{run_id}/"))
    else:
        remote = list_objects(ctx.store)

    local: list[LocalFile] = []
    with progress("hashing", total=len(candidates)) as ticker:
        for candidate in candidates:
            try:
                local.append(read_local(candidate, layout, root=source))
            except FileNotFoundError:
                pass  # deleted since the walk: no longer a local file
            except OSError as exc:
                report.skipped.append(
                    Skipped(candidate.path, "unreadable", exc.strerror or str(exc))
                )
            ticker.advance()

    def confirm(obj: RemoteObject, file: LocalFile) -> bool | None:
        assert file.etag is not None and file.md5 is not None
        return ctx.store.compare_digests(obj.key, obj.etag, expected=file.etag, md5=file.md5)

    verdict = compare(local, remote, layout, confirm)
    verdict.skipped = report.skipped
    verdict.not_compared = not_compared(
        verdict,
        wanted=wanted,
        local=candidates,
        remote=remote,
        source=source,
        layout=layout,
        where=f"{ctx.settings.bucket} at {ctx.settings.endpoint}",
    )
    if args.json:
        emit_json(
            {
                "source": str(source),
                **ctx.describe(),
                "in_sync": verdict.in_sync,
                "counts": verdict.counts(),
                "differences": [diff.to_json() for diff in verdict.differences],
                "skipped": [
                    {"path": str(s.path), "reason": s.reason, "detail": s.detail}
                    for s in verdict.skipped
                ],
                "ignored_remote": verdict.ignored_remote,
                "not_compared": verdict.not_compared,
            }
        )
    else:
        _print_report(verdict, source, ctx.describe())
    return EXIT_OK if verdict.in_sync else EXIT_DIFFERENT


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "verify",
        help=summary,
        description="Compare a runnable log folder with the bucket, the way the sidecar"
        " does (MD5/ETag of each file's object body): list files missing from the bucket,"
        " differing (and which side is newer), torn (not valid JSON right now) or only in"
        " the bucket.",
        epilog=epilog("verify"),
    )
    parser.add_argument(
        "run_ids",
        nargs="*",
        metavar="RUN_ID",
        help="only these runs (default: every run in the folder and the bucket)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="the run-log folder (runnable's log_folder; env RUNLOG_RELAY_SOURCE;"
        f" default {DEFAULT_SOURCE})",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_store_options(parser)
    parser.set_defaults(handler=guarded("verify", handle))
