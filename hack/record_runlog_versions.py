"""Record every version of the RunLog that runnable 0.50 writes during real runs.

Sealing (``runlog_relay.runstate``) must call a run final exactly once per attempt: at
the RunLog version that ends it, never at one of the versions runnable writes on the way
(the terminal status is set before the terminal step is recorded; a retry keeps the old
terminal status while it re-runs steps). Polling the file could miss versions written a
millisecond apart, so this script wraps the chunked-fs store's ``_store`` in the
pipeline's own processes (a ``sitecustomize`` on ``PYTHONPATH``) and appends each RunLog
document to a file as runnable writes it. It runs the demo pipeline three ways -- a
success, a run whose map iteration ``b`` fails, and runnable's retry of that run
(``RUNNABLE_RETRY_RUN_ID``) -- and writes ``tests/fixtures/runlog-versions-0.50.json``:
for each attempt, the sequence of ``{status, steps: {name: {status, step_type,
attempts: [{start_time}]}}}`` documents (the fields the status rule reads; parameters
and run config are left out to keep the fixture small).

Usage (about five seconds): ``.venv/bin/python hack/record_runlog_versions.py``
"""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from runlog_relay.runnable_compat import FAIL_ITEM_VARIABLE, PipelineFailedError, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "tests" / "fixtures" / "runlog-versions-0.50.json"

SITECUSTOMIZE = """
import json, os
from extensions.run_log_store import chunked_fs

_original = chunked_fs.ChunkedFileSystemRunLogStore._store
_record = os.environ["RUNLOG_RELAY_RECORD_VERSIONS"]

def _store(self, run_id, contents, name, insert=False):
    _original(self, run_id, contents, name, insert)
    if name == "RunLog":
        with open(_record, "a") as out:
            out.write(json.dumps(contents) + "\\n")

chunked_fs.ChunkedFileSystemRunLogStore._store = _store
"""


def _slim(document: dict[str, Any]) -> dict[str, Any]:
    steps = {
        name: {
            "status": step.get("status"),
            "step_type": step.get("step_type"),
            "attempts": [{"start_time": a.get("start_time")} for a in step.get("attempts", [])],
        }
        for name, step in (document.get("steps") or {}).items()
    }
    return {"status": document.get("status"), "steps": steps}


def _attempt(folder: Path, hooks: Path, record: Path, env: dict[str, str]) -> list[Any]:
    record.unlink(missing_ok=True)
    env = {**env, "PYTHONPATH": str(hooks), "RUNLOG_RELAY_RECORD_VERSIONS": str(record)}
    try:
        run_pipeline(folder, "recorded", layout="chunked", env=env)
    except PipelineFailedError:
        pass  # the failing attempt fails, as intended
    return [_slim(json.loads(line)) for line in record.read_text().splitlines()]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="runlog-relay-record-") as tmp:
        base = Path(tmp)
        hooks = base / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
        record = base / "versions.jsonl"
        fixture = {
            "success": _attempt(base / "ok", hooks, record, {}),
            "failed": _attempt(base / "retry", hooks, record, {FAIL_ITEM_VARIABLE: "b"}),
            "retried": _attempt(
                base / "retry", hooks, record, {"RUNNABLE_RETRY_RUN_ID": "recorded"}
            ),
        }
    TARGET.write_text(json.dumps(fixture, indent=1) + "\n")
    counts = {name: len(versions) for name, versions in fixture.items()}
    print(f"wrote {TARGET.relative_to(ROOT)}: {counts}")


if __name__ == "__main__":
    main()
