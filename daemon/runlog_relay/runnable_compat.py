"""The project's single point of contact with runnable (``runnable==0.50.0``).

This is the ONLY module that imports ``runnable`` or ``extensions`` (runnable's plugin
package). Both are imported lazily inside functions, so ``import runlog_relay`` and
everything else in the package work without runnable installed (it lives in the
``demo`` extra).

Why this module exists: the sidecar's contract (DESIGN.md, "The formats") is that
runnable's *own* object-storage stores read back exactly what a runnable *filesystem*
store wrote. Tests, the demo command and the benchmark need three things to check
that, all provided here:

* :func:`run_pipeline` runs a small but real runnable pipeline (plain tasks passing
  parameters, a ``Parallel`` node, a ``Map`` node) in a subprocess, writing its run
  log into a folder with ``chunked-fs`` or ``file-system``.
* :func:`read_run_log_from_folder` reads the full run log back with runnable's
  ``ChunkedFileSystemRunLogStore`` / ``FileSystemRunLogstore``.
* :func:`read_run_log_from_bucket` reads it from S3/MinIO with runnable's
  ``ChunkedMinioRunLogStore`` / ``MinioRunLogStore``.

Both readers return ``RunLog.model_dump()``. No normalisation is needed to compare
them: both stores parse the same JSON documents into the same pydantic models (the
``minio`` store only adds one extra JSON-string layer on the wire, which it removes),
so a faithful mirror gives ``==`` dicts. Dict ``==`` ignores key order; the order in
which branch logs are attached can differ (directory glob vs. S3 listing order), so
compare the dicts, not their serialisations.

File names runnable 0.50 writes for the demo pipeline (see :data:`DEMO_BRANCHES`):

* chunked: ``<log_folder>/<run_id>/RunLog.json`` and one
  ``<log_folder>/<run_id>/BranchLog-<internal_branch_name>.json`` per branch, i.e.
  ``BranchLog-<parallel step>.<branch>.json`` for a parallel branch and
  ``BranchLog-<map step>.<iteration value>.json`` for a map iteration
  (``BranchLog-parallel.left.json``, ``BranchLog-map.a.json``).
* single: ``<log_folder>/<run_id>.json`` holding the whole run log.
"""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

if TYPE_CHECKING:  # pragma: no cover - typing only, runnable stays optional
    from runnable.sdk import Pipeline

__all__ = [
    "DEMO_BRANCHES",
    "DEMO_MAP_ITEMS",
    "DEMO_STEPS",
    "FAIL_ITEM_VARIABLE",
    "FAIL_JOB_VARIABLE",
    "Layout",
    "PipelineFailedError",
    "build_demo_pipeline",
    "read_run_log_from_bucket",
    "read_run_log_from_folder",
    "run_job",
    "run_pipeline",
]

Layout = Literal["chunked", "single"]
"""``chunked``: runnable's ``chunked-fs``/``chunked-minio`` stores (one file per run
log chunk); ``single``: ``file-system``/``minio`` (one JSON document per run)."""

DEMO_MAP_ITEMS: tuple[str, ...] = ("a", "b", "c")
"""The values the demo pipeline's map node iterates over (one branch each)."""

DEMO_STEPS: tuple[str, ...] = ("prepare", "parallel", "map", "summarise", "success")
"""Top-level step names of the demo pipeline's run log, in execution order."""

DEMO_BRANCHES: dict[str, tuple[str, ...]] = {
    "parallel": ("parallel.left", "parallel.right"),
    "map": tuple(f"map.{item}" for item in DEMO_MAP_ITEMS),
}
"""Composite step → internal names of its branch logs (``BranchLog-<name>.json``)."""

_SCRIPT_NAME = "runlog_relay_demo_pipeline.py"
_STDERR_TAIL_CHARS = 4000
_T = TypeVar("_T")


class PipelineFailedError(RuntimeError):
    """The runnable pipeline subprocess exited non-zero or timed out."""

    def __init__(self, message: str, *, returncode: int | None, stdout: str, stderr: str):
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


# --------------------------------------------------------------------------- pipeline
# The task functions are module-level so runnable can import them by dotted name
# (``runlog_relay.runnable_compat._prepare``) in the pipeline process and its workers.


def _prepare() -> tuple[list[str], int]:
    return list(DEMO_MAP_ITEMS), 10


def _left() -> int:
    return 1


def _right() -> int:
    return 2


#: Set to a map value to make that iteration of the demo pipeline's map fail (with a real
#: traceback in runnable's catalog); unset, every iteration succeeds. Tests use it, with
#: runnable's retry (``RUNNABLE_RETRY_RUN_ID``), to record failed and retried attempts.
FAIL_ITEM_VARIABLE = "RUNLOG_RELAY_DEMO_FAIL_ITEM"


def _process(item: str) -> str:
    if os.environ.get(FAIL_ITEM_VARIABLE) == item:
        raise ValueError(f"cannot process {item!r} ({FAIL_ITEM_VARIABLE} asks for a failure)")
    return f"{item}!"


#: Set (to anything) to make the demo job (:func:`run_job`) fail with a real traceback.
FAIL_JOB_VARIABLE = "RUNLOG_RELAY_DEMO_FAIL_JOB"


def _job() -> int:
    if os.environ.get(FAIL_JOB_VARIABLE):
        raise ValueError(f"the job fails ({FAIL_JOB_VARIABLE} asks for a failure)")
    return 42


def _summarise(base: int, left_value: int, right_value: int, processed: list[str]) -> int:
    # Fails the pipeline if runnable did not hand the branch results back up.
    if sorted(processed) != [f"{item}!" for item in DEMO_MAP_ITEMS]:
        raise ValueError(f"unexpected map results {processed!r}")
    return base + left_value + right_value + len(processed)


def build_demo_pipeline() -> Pipeline:
    """The demo pipeline: ``prepare`` → ``parallel`` (left|right) → ``map`` → ``summarise``.

    ``prepare`` returns ``items`` (iterated by ``map``) and ``base``; the parallel
    branches return ``left_value``/``right_value``; each map iteration returns
    ``processed`` (collected into a list by runnable's default reducer); ``summarise``
    consumes them all. In runnable 0.50 a branch starts with an empty parameter scope
    (only the map variable ``item`` is injected), so branch tasks take no parent
    parameters; their returns are rolled up into the parent scope on fan-in.
    """
    from runnable import Map, Parallel, Pipeline, PythonTask

    def branch(name: str, fn: Callable[..., Any], returns: str) -> Pipeline:
        return Pipeline(steps=[PythonTask(name=name, function=fn, returns=[returns])])

    return Pipeline(
        steps=[
            PythonTask(name="prepare", function=_prepare, returns=["items", "base"]),
            Parallel(
                name="parallel",
                branches={
                    "left": branch("left_task", _left, "left_value"),
                    "right": branch("right_task", _right, "right_value"),
                },
            ),
            Map(
                name="map",
                iterate_on="items",
                iterate_as="item",
                branch=branch("process", _process, "processed"),
            ),
            PythonTask(name="summarise", function=_summarise, returns=["total"]),
        ]
    )


def _config_yaml(
    log_folder: Path,
    layout: Layout,
    catalog: Path,
    catalog_config: dict[str, Any] | None,
    *,
    job: bool = False,
) -> str:
    # JSON is valid YAML and needs no PyYAML here. ``enable_parallel`` makes the local
    # executor run parallel branches and map iterations in a multiprocessing Pool; the
    # ``file-system`` store does not support parallel writes, so for "single" runnable
    # would fall back to sequential anyway (logging a warning) - we ask for that directly.
    executor = (
        {"job-executor": {"type": "local"}}
        if job
        else {
            "pipeline-executor": {
                "type": "local",
                "config": {"enable_parallel": layout == "chunked"},
            }
        }
    )
    config = {
        **executor,
        "run-log-store": {
            "type": "chunked-fs" if layout == "chunked" else "file-system",
            "config": {"log_folder": str(log_folder)},
        },
        "catalog": catalog_config
        or {"type": "file-system", "config": {"catalog_location": str(catalog)}},
    }
    return json.dumps(config, indent=2) + "\n"


def _script(config_file: Path, run_id: str, parameters_file: Path | None) -> str:
    # runnable's SDK finds the pipeline definition by inspecting the caller of
    # ``Pipeline.execute()``: it must be a function in a file under the cwd that
    # *returns* the pipeline (runnable re-imports it, and then execute() is a no-op).
    return textwrap.dedent(
        f"""\
        from runlog_relay.runnable_compat import build_demo_pipeline


        def main():
            pipeline = build_demo_pipeline()
            pipeline.execute(
                configuration_file={str(config_file)!r},
                run_id={run_id!r},
                parameters_file={str(parameters_file) if parameters_file else ""!r},
            )
            return pipeline


        if __name__ == "__main__":
            main()
        """
    )


def _job_script(config_file: Path, run_id: str) -> str:
    # As for pipelines: runnable re-imports the caller of ``Job.execute()`` to find the job.
    return textwrap.dedent(
        f"""\
        from runnable import PythonJob

        from runlog_relay.runnable_compat import _job


        def main():
            job = PythonJob(function=_job, returns=["answer"])
            job.execute(configuration_file={str(config_file)!r}, job_id={run_id!r})
            return job


        if __name__ == "__main__":
            main()
        """
    )


def _tail(text: str) -> str:
    return text[-_STDERR_TAIL_CHARS:]


def run_pipeline(
    log_folder: Path,
    run_id: str,
    *,
    layout: Layout = "chunked",
    workdir: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    parameters: dict[str, Any] | None = None,
    catalog: dict[str, Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the demo pipeline (:func:`build_demo_pipeline`) with runnable, in a subprocess.

    Args:
        log_folder: the run log store's ``log_folder`` (created if missing). ``chunked``
            writes ``<log_folder>/<run_id>/RunLog.json`` + ``BranchLog-*.json``;
            ``single`` writes ``<log_folder>/<run_id>.json``.
        run_id: the run id, passed to ``Pipeline.execute(run_id=...)``. Must not exist
            yet in ``log_folder`` (runnable refuses to overwrite a run log).
        layout: ``"chunked"`` (``chunked-fs`` store, parallel execution) or
            ``"single"`` (``file-system`` store, sequential execution).
        workdir: the pipeline's working directory, where the generated script, config
            and runnable's ``.catalog`` go; kept. Default: a temporary directory,
            removed afterwards. Keep it outside ``log_folder``.
        timeout: seconds before the subprocess is killed.
        env: extra environment variables for the subprocess, applied last. The
            caller's ``RUNNABLE_*`` variables are dropped first, because runnable lets
            them override the config file and run id (e.g. ``RUNNABLE_RUN_ID``,
            ``RUNNABLE_CONFIGURATION_FILE``, ``RUNNABLE_RETRY_RUN_ID``). Pass
            ``RUNNABLE_RETRY_RUN_ID=<run_id>`` here to re-run a failed run (runnable
            skips what succeeded and adds attempts to what failed), and
            :data:`FAIL_ITEM_VARIABLE` to make one map iteration fail.
        parameters: the run's initial parameters (runnable's ``parameters_file``,
            written as JSON, which is YAML); they end up in the RunLog's
            ``parameters``.
        catalog: runnable's ``catalog`` configuration (e.g. ``{"type": "minio",
            "config": {...}}``); default a ``file-system`` catalog in ``workdir``.

    Returns:
        The finished process (text ``stdout``/``stderr``: runnable's console output;
        stderr also carries harmless ``fatal: not a git repository`` lines from
        runnable's code-identity probe). Takes about 1 s.

    Raises:
        PipelineFailedError: non-zero exit or timeout; the message ends with the tail
            of stderr (and stdout, where runnable prints its tracebacks).
    """
    if layout not in ("chunked", "single"):
        raise ValueError(f"layout must be 'chunked' or 'single', not {layout!r}")
    log_folder = Path(log_folder).resolve()
    log_folder.mkdir(parents=True, exist_ok=True)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="runlog-relay-runnable-") as tmp:
            return _run_in(Path(tmp), log_folder, run_id, layout, timeout, env, parameters, catalog)
    workdir.mkdir(parents=True, exist_ok=True)
    return _run_in(workdir, log_folder, run_id, layout, timeout, env, parameters, catalog)


def run_job(
    log_folder: Path,
    run_id: str,
    *,
    layout: Layout = "chunked",
    workdir: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a runnable *job* (one ``PythonJob``, as runnable's k8s-job executor runs in its
    Job's pod with ``runnable execute-job``) with the local job executor, in a subprocess.

    Its run log has no steps: the job's status is written once, when it ends. Set
    :data:`FAIL_JOB_VARIABLE` in ``env`` to make it fail. Otherwise as
    :func:`run_pipeline` (raises PipelineFailedError on a non-zero exit).
    """
    log_folder = Path(log_folder).resolve()
    log_folder.mkdir(parents=True, exist_ok=True)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="runlog-relay-runnable-") as tmp:
            return _run_in(Path(tmp), log_folder, run_id, layout, timeout, env, job=True)
    workdir.mkdir(parents=True, exist_ok=True)
    return _run_in(workdir, log_folder, run_id, layout, timeout, env, job=True)


def _run_in(
    workdir: Path,
    log_folder: Path,
    run_id: str,
    layout: Layout,
    timeout: float,
    env: dict[str, str] | None,
    parameters: dict[str, Any] | None = None,
    catalog: dict[str, Any] | None = None,
    *,
    job: bool = False,
) -> subprocess.CompletedProcess[str]:
    # Resolve so the script path is under Path.cwd() as runnable computes it, even when
    # the temp dir is reached through a symlink.
    workdir = workdir.resolve()
    if workdir == log_folder or log_folder in workdir.parents:
        raise ValueError(f"workdir {workdir} must not be inside log_folder {log_folder}")
    config_file = workdir / f"runnable-config-{layout}.yaml"
    config_file.write_text(_config_yaml(log_folder, layout, workdir / ".catalog", catalog, job=job))
    parameters_file = None
    if parameters is not None:
        parameters_file = workdir / f"parameters-{run_id}.yaml"
        parameters_file.write_text(json.dumps(parameters) + "\n")
    script = workdir / _SCRIPT_NAME
    script.write_text(
        _job_script(config_file, run_id) if job else _script(config_file, run_id, parameters_file)
    )

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNABLE_")}
    child_env.update(env or {})
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=workdir,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stdout = _as_text(exc.stdout)
        stderr = _as_text(exc.stderr)
        raise PipelineFailedError(
            f"runnable pipeline {run_id!r} timed out after {timeout:g}s\n"
            f"--- stderr (tail) ---\n{_tail(stderr)}\n--- stdout (tail) ---\n{_tail(stdout)}",
            returncode=None,
            stdout=stdout,
            stderr=stderr,
        ) from exc
    if proc.returncode != 0:
        raise PipelineFailedError(
            f"runnable pipeline {run_id!r} ({layout}) failed with exit code "
            f"{proc.returncode} after {time.monotonic() - started:.1f}s\n"
            f"--- stderr (tail) ---\n{_tail(proc.stderr)}\n"
            f"--- stdout (tail) ---\n{_tail(proc.stdout)}",
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
    return proc


def _as_text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


# ---------------------------------------------------------------------------- readers


def read_run_log_from_folder(
    log_folder: Path, run_id: str, layout: Layout = "chunked"
) -> dict[str, Any]:
    """Read the full run log with runnable's own filesystem store.

    ``chunked``: ``ChunkedFileSystemRunLogStore`` (``chunked-fs``), which attaches every
    ``BranchLog-*.json`` to its parent step (``get_run_log_by_id(run_id, full=True)``).
    ``single``: ``FileSystemRunLogstore`` (``file-system``).

    Returns ``RunLog.model_dump()``, a JSON-able dict. Raises runnable's
    ``RunLogNotFoundError`` if there is no run log for ``run_id``.
    """
    if layout == "chunked":
        from extensions.run_log_store.chunked_fs import ChunkedFileSystemRunLogStore

        store: Any = ChunkedFileSystemRunLogStore(log_folder=str(log_folder))
    elif layout == "single":
        from extensions.run_log_store.file_system import FileSystemRunLogstore

        store = FileSystemRunLogstore(log_folder=str(log_folder))
    else:
        raise ValueError(f"layout must be 'chunked' or 'single', not {layout!r}")
    # The filesystem stores never consult the run context; no _with_run_context needed.
    dumped: dict[str, Any] = store.get_run_log_by_id(run_id=run_id, full=True).model_dump()
    return dumped


def read_run_log_from_bucket(
    endpoint: str,
    access_key: str,
    secret_key: str,
    bucket: str,
    run_id: str,
    layout: Layout = "chunked",
) -> dict[str, Any]:
    """Read the full run log from S3/MinIO with runnable's own object-storage store.

    ``chunked``: ``ChunkedMinioRunLogStore`` (``chunked-minio``, keys
    ``<prefix>/<run_id>/RunLog`` and ``.../BranchLog-<name>``); ``single``:
    ``MinioRunLogStore`` (``minio``, key ``<prefix>/<run_id>/<run_id>.json``).

    Args:
        endpoint: e.g. ``http://127.0.0.1:9000`` (plain http is fine; runnable talks
            to it through cloudpathlib's ``S3Client``, i.e. boto3, with this
            ``endpoint_url``).
        access_key, secret_key: the S3 credentials.
        bucket: runnable's ``bucket[/prefix]`` form, e.g. ``runnable/run-logs``.
        run_id: the run to read.
        layout: which store pair, as for :func:`read_run_log_from_folder`.

    Returns ``RunLog.model_dump()``, equal to :func:`read_run_log_from_folder`'s
    result when the bucket mirrors the folder. Raises runnable's
    ``RunLogNotFoundError`` (chunked) or ``FileNotFoundError`` (single) if missing.

    Two things make this a fair, fresh read:

    * **Run context.** These stores locate objects via ``self._context.run_id``
      (``get_run_log_bucket``), and ``_context`` is ``runnable.context.get_run_context()``,
      a ``ContextVar``. We set it with runnable's public ``set_run_context`` inside a
      *copied* ``contextvars.Context`` (see :func:`_with_run_context`), so it never
      leaks into the caller's context, other threads, or a runnable run in the same
      process. The value is a minimal object with just ``run_id``, the only attribute
      the read path touches (a test reads through it, so a change in runnable fails
      loudly with ``AttributeError``). Building a real ``RunnableContext`` instead
      would write ``RUNNABLE_RUN_ID`` (and maybe more) into ``os.environ`` of the whole
      process from its ``model_post_init``; subclassing the stores to override
      ``_context`` would mean no longer testing runnable's own classes.
    * **No stale cache.** cloudpathlib caches downloads and re-downloads only if the
      object's ``LastModified`` (1 s resolution) is *newer* than the cached copy, so an
      object rewritten within the same second as the previous read would be read
      stale. runnable keeps one ``S3Client`` per endpoint/credentials in its
      ``lru_cache``d ``get_minio_client``; we fetch that same client (same positional
      arguments, so the same cache entry) and call its public ``clear_cache()`` first.
      (Dropping the ``lru_cache`` instead would leave the old client's
      ``TemporaryDirectory`` to the garbage collector, which emits a ResourceWarning.)
      Not safe against a concurrent read through the same client in another thread.
    """
    from pydantic import SecretStr

    module: Any
    store_cls: Any
    if layout == "chunked":
        from extensions.run_log_store import chunked_minio

        module, store_cls = chunked_minio, chunked_minio.ChunkedMinioRunLogStore
    elif layout == "single":
        from extensions.run_log_store import minio

        module, store_cls = minio, minio.MinioRunLogStore
    else:
        raise ValueError(f"layout must be 'chunked' or 'single', not {layout!r}")

    # Positional, exactly as runnable calls it, so we hit the lru_cache entry it uses.
    module.get_minio_client(endpoint, access_key, secret_key).clear_cache()
    store = store_cls(
        endpoint_url=endpoint,
        aws_access_key_id=SecretStr(access_key),
        aws_secret_access_key=SecretStr(secret_key),
        bucket=bucket,
    )

    def read() -> dict[str, Any]:
        dumped: dict[str, Any] = store.get_run_log_by_id(run_id=run_id, full=True).model_dump()
        return dumped

    return _with_run_context(run_id, read)


@dataclass(frozen=True)
class _ReadOnlyRunContext:
    """Stand-in for runnable's run context while reading: the stores need ``run_id``."""

    run_id: str


def _with_run_context(run_id: str, fn: Callable[[], _T]) -> _T:
    """Call ``fn`` with runnable's run context set to ``run_id``, in an isolated Context."""
    from runnable import context as runnable_context

    def call() -> _T:
        # Duck-typed on purpose (see read_run_log_from_bucket); not a RunnableContext.
        runnable_context.set_run_context(cast(Any, _ReadOnlyRunContext(run_id)))
        return fn()

    return contextvars.copy_context().run(call)
