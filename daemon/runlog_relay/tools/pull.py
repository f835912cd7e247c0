"""``runlog-relay pull``: download runs from the bucket into a runnable log folder.

The inverse of the sidecar, through the same mapping (:func:`layout.path_for`,
:func:`layout.decode_body`): each object becomes the file runnable wrote, byte for byte,
so runnable's own ``chunked-fs`` / ``file-system`` store on a laptop reads the run as the
``chunked-minio`` / ``minio`` store reads it from the bucket (a test checks exactly that).

Only what differs is downloaded: each object's listed ETag is compared with the local
file first (as the sidecar compares on start-up, through :meth:`ObjectStore.matches`, so
a bucket whose ETags are not MD5s costs one HEAD per such object, not a GET). An up-to-date
folder costs the listing alone.

Unlike runnable, files are written atomically (a hidden temporary file in the same
folder, then ``rename``), so a reader, or a sidecar watching the folder, never sees a
half-written pulled file. A local file that differs from the bucket's copy is never
overwritten without ``--force``, and then a whole run is refused rather than left half
pulled. Symlinked run folders are refused: writing through them could land anywhere.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rich.markup import escape

from runlog_relay.cliopts import add_store_options
from runlog_relay.exitcodes import epilog
from runlog_relay.layout import Layout, UnsafeNameError, decode_body, encode_body, path_for
from runlog_relay.objectstore import ObjectStore, RemoteObject
from runlog_relay.tools._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    EXIT_USAGE,
    StoreContext,
    ToolError,
    emit_json,
    format_bytes,
    get_object,
    group_by_run,
    guarded,
    latest_modified,
    layout_hint,
    list_objects,
    open_context,
    printable,
    progress,
    since_type,
    stdout_console,
)

__all__ = ["RunResult", "plan_run", "register", "write_atomically"]

DEFAULT_DEST = Path(".run_log_store")  # runnable's default log_folder
_DOWNLOAD_WORKERS = 8

Outcome = Literal["pulled", "up_to_date", "refused", "missing", "failed"]


@dataclass(slots=True)
class RunResult:
    run_id: str
    outcome: Outcome = "pulled"
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)
    bytes_written: int = 0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "outcome": self.outcome,
            "written": self.written,
            "unchanged": self.unchanged,
            "conflicts": self.conflicts,
            "ignored_keys": self.ignored_keys,
            "bytes_written": self.bytes_written,
            "message": self.message or None,
        }


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a part.

    The temporary name starts with a dot and does not end in ``.json``, so neither
    runnable nor a sidecar watching the folder takes it for a run-log file.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # what open(path, "w") would have made
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # NotADirectoryError: a file where a folder on the path should be


def _run_dir_refusal(dest: Path, run_id: str) -> str:
    """Why the run folder cannot be written into ("" when it can, or does not exist)."""
    run_dir = dest / run_id
    info = _lstat(run_dir)
    if info is None:
        return ""
    if stat.S_ISLNK(info.st_mode):
        return f"{run_dir} is a symbolic link; not writing through it"
    if not stat.S_ISDIR(info.st_mode):
        return f"{run_dir} exists and is not a folder; move it away to pull run {run_id!r}"
    return ""


def plan_run(
    dest: Path, run_id: str, files: dict[str, bytes], *, force: bool
) -> tuple[RunResult, dict[str, bytes]]:
    """Decide what to write for one run (relative path → bytes); refuse on conflicts.

    Returns the result so far and the files to write (empty when refused).
    """
    result = RunResult(run_id)
    to_write: dict[str, bytes] = {}
    refusal = _run_dir_refusal(dest, run_id) if any("/" in rel for rel in files) else ""
    if refusal:
        result.outcome = "refused"
        result.message = refusal
        return result, {}
    for relative, data in sorted(files.items()):
        target = dest / relative
        info = _lstat(target)
        if info is None:
            to_write[relative] = data
            continue
        if stat.S_ISREG(info.st_mode):
            if target.read_bytes() == data:
                result.unchanged.append(relative)
                continue
            detail, replaceable = "differs from the bucket's copy", True
        elif stat.S_ISLNK(info.st_mode):
            detail, replaceable = "is a symbolic link", True  # rename replaces the link
        else:
            detail, replaceable = "is in the way and not a regular file", False
        if force and replaceable:
            to_write[relative] = data
        else:
            result.conflicts.append({"path": relative, "detail": detail})
    if result.conflicts:
        result.outcome = "refused"
        listed = "; ".join(f"{c['path']} {c['detail']}" for c in result.conflicts)
        result.message = f"run {run_id!r} not pulled, nothing of it written: {listed}" + (
            "" if force else " (--force overwrites differing local files)"
        )
        return result, {}
    if not to_write:
        result.outcome = "up_to_date"
    return result, to_write


def _local_body(path: Path, layout: Layout) -> bytes | None:
    """The object body the local file corresponds to; None when there is no regular
    file there (a symlink, a folder, nothing) or it cannot be read."""
    info = _lstat(path)
    if info is None or not stat.S_ISREG(info.st_mode):
        return None
    try:
        return encode_body(path.read_bytes(), layout)
    except (OSError, ValueError):
        return None


def _download(
    store: ObjectStore, objects: list[RemoteObject], layout: Layout, dest: Path, ticker: Any
) -> tuple[dict[str, bytes], list[str]]:
    """The files that differ from the bucket (relative path → bytes, downloaded) and
    the ones that do not (compared by ETag, or one HEAD where ETags are not MD5s)."""

    def fetch(obj: RemoteObject) -> tuple[str, bytes | None]:
        relative = path_for(obj.key, layout)
        local = _local_body(dest / relative, layout)
        if local is not None and store.matches(obj.key, obj.etag, local):
            ticker.advance(obj.size)
            return relative, None
        body = get_object(store, obj.key)
        ticker.advance(len(body))
        return relative, decode_body(body, layout)

    with ThreadPoolExecutor(max_workers=_DOWNLOAD_WORKERS) as pool:
        fetched = list(pool.map(fetch, objects))
    files = {relative: data for relative, data in fetched if data is not None}
    return files, sorted(relative for relative, data in fetched if data is None)


def pull_run(
    ctx: StoreContext,
    dest: Path,
    run_id: str,
    objects: list[RemoteObject],
    *,
    force: bool,
    ticker: Any,
) -> RunResult:
    """Download one run's objects and write them under ``dest``."""
    layout = ctx.layout
    hint = layout_hint(run_id, objects, layout)
    if hint:
        # A single-layout object would map to "<run_id>.json.json" in the chunked layout:
        # files runnable would never read. Refuse instead of writing them.
        return RunResult(
            run_id,
            outcome="refused",
            message=f"run {run_id!r} is not a {layout.value}-layout run{hint}",
        )
    mapped: list[RemoteObject] = []
    ignored: list[str] = []
    for obj in objects:
        try:
            path_for(obj.key, layout)
        except UnsafeNameError:
            ignored.append(obj.key)
        else:
            mapped.append(obj)
    if not mapped:
        result = RunResult(run_id, outcome="missing", ignored_keys=ignored)
        result.message = (
            f"run {run_id!r} has no {layout.value}-layout objects in {ctx.store.location}"
            + layout_hint(run_id, objects, layout)
        )
        return result
    refusal = _run_dir_refusal(dest, run_id) if layout is Layout.CHUNKED else ""
    if refusal:  # before downloading: nothing of it could be written
        return RunResult(run_id, outcome="refused", ignored_keys=ignored, message=refusal)
    try:
        files, unchanged = _download(ctx.store, mapped, layout, dest, ticker)
    except ValueError as exc:  # decode_body: not a JSON string (single layout)
        return RunResult(run_id, outcome="failed", message=f"run {run_id!r}: bad object: {exc}")
    result, to_write = plan_run(dest, run_id, files, force=force)
    result.ignored_keys = ignored
    result.unchanged = sorted([*result.unchanged, *unchanged])
    for relative, data in to_write.items():
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
        result.written.append(relative)
        result.bytes_written += len(data)
    return result


def _select_runs(
    ctx: StoreContext, args: argparse.Namespace
) -> tuple[dict[str, list[RemoteObject]], list[str]]:
    """The runs to pull (run id → objects) and the requested run ids not found."""
    if args.run_ids:
        found: dict[str, list[RemoteObject]] = {}
        missing: list[str] = []
        for run_id in dict.fromkeys(args.run_ids):
            if "/" in run_id or not run_id.strip():
                raise ToolError(f"{run_id!r} is not a run id", exit_code=EXIT_USAGE)
            objects = list_objects(ctx.store, f"{run_id}/")
            if objects:
                found[run_id] = objects
            else:
                missing.append(run_id)
        return found, missing
    runs = group_by_run(list_objects(ctx.store))
    since: datetime | None = args.since
    if since is not None:
        runs = {
            run_id: objects
            for run_id, objects in runs.items()
            if (stamp := latest_modified(objects)) is not None and stamp >= since
        }
    return dict(sorted(runs.items())), []


def handle(args: argparse.Namespace) -> int:
    if args.run_ids and (args.all or args.since is not None):
        raise ToolError("give RUN_IDs, or --all / --since, not both", exit_code=EXIT_USAGE)
    if not args.run_ids and not args.all and args.since is None:
        raise ToolError("name a RUN_ID, or use --all or --since", exit_code=EXIT_USAGE)
    ctx = open_context(args)
    dest: Path = args.dest
    runs, missing = _select_runs(ctx, args)

    results: list[RunResult] = [
        RunResult(
            run_id,
            outcome="missing",
            message=f"run {run_id!r} not found in {ctx.store.location} at {ctx.settings.endpoint}",
        )
        for run_id in missing
    ]
    total = sum(obj.size for objects in runs.values() for obj in objects)
    with progress("pulling", total=total, unit="bytes") as ticker:
        for run_id, objects in runs.items():
            results.append(pull_run(ctx, dest, run_id, objects, force=args.force, ticker=ticker))

    ok = all(r.outcome in ("pulled", "up_to_date") for r in results)
    if args.json:
        emit_json({"dest": str(dest), **ctx.describe(), "runs": [r.to_json() for r in results]})
    else:
        _print_results(results, dest, selected=not args.run_ids)
    return EXIT_OK if ok else EXIT_DIFFERENT


def _print_results(results: list[RunResult], dest: Path, *, selected: bool) -> None:
    console = stdout_console()
    if selected and not results:
        console.print("no runs matched; nothing pulled")
    for result in results:
        where = escape(str(dest / result.run_id))
        if result.outcome == "pulled":
            extra = f", {len(result.unchanged)} unchanged" if result.unchanged else ""
            console.print(
                f"pulled {escape(result.run_id)}: {len(result.written)} file(s),"
                f" {format_bytes(result.bytes_written)}{extra} → {where}"
            )
        elif result.outcome == "up_to_date":
            console.print(f"{escape(result.run_id)}: up to date ({len(result.unchanged)} file(s))")
    for result in results:
        if result.outcome not in ("pulled", "up_to_date"):
            print(f"runlog-relay pull: error: {printable(result.message)}", file=sys.stderr)


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "pull",
        help=summary,
        description="Download runs from the bucket into a runnable log folder (chunked-fs"
        " or file-system layout), byte for byte and atomically, so runnable can read,"
        " compare or resume them. Local files that differ are not overwritten without"
        " --force.",
        epilog=epilog("pull"),
    )
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to pull")
    parser.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_DEST,
        metavar="DIR",
        help=f"the log folder to write to (default {DEFAULT_DEST}, runnable's default)",
    )
    parser.add_argument("--all", action="store_true", help="pull every run in the bucket")
    parser.add_argument(
        "--since",
        type=since_type,
        metavar="WHEN",
        help="pull the runs written to since WHEN: a duration ago (30m, 2h, 3d, 1w) or an"
        " ISO date/time (2026-01-31, 2026-01-31T08:00; local time unless a zone is given),"
        " by the objects' last-modified time",
    )
    parser.add_argument("--force", action="store_true", help="overwrite local files that differ")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_store_options(parser)
    parser.set_defaults(handler=guarded("pull", handle))
