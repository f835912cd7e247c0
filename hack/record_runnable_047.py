"""Record a real run written by runnable 0.47, the last release with the older chunk names.

runnable 0.47 and earlier split a chunked-fs run into ``RunLog.json``,
``Parameter-<name>.json``, ``StepLog-<internal name>-<ns>.json`` and
``BranchLog-<internal name>-<ns>.json``; 0.48 changed to one ``BranchLog-<name>.json``
per branch. Buckets mirrored by older pipelines still hold the old chunks, so ``show``
and ``diff`` read both. The tests cannot install a second runnable next to 0.50, so
this script records one real 0.47 run (parallel + map with a failing iteration, initial
parameters) into ``tests/fixtures/runnable-0.47/old-047/``, with ``expected.json``: the
same run as runnable 0.47's own ``ChunkedFileSystemRunLogStore`` assembles it
(``get_run_log_by_id(full=True)``, ``run_config`` left out), which the tests compare with.

Usage (needs PyPI; about a minute): ``.venv/bin/python hack/record_runnable_047.py``
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import venv
from pathlib import Path

RUN_ID = "old-047"
ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "tests" / "fixtures" / "runnable-0.47" / RUN_ID

TASKS = """
import os

def prepare(label):
    return ["a", "b", "c"], 10

def left():
    return 1

def right():
    return 2

def process(item):
    if os.environ.get("FAIL_ITEM") == item:
        raise ValueError(f"cannot process {item!r}")
    return item + "!"

def summarise(base, left_value, right_value, processed):
    return base + left_value + right_value + len(processed)
"""

PIPELINE = f"""
from runnable import Map, Parallel, Pipeline, PythonTask
import tasks

def branch(name, function, returns):
    return Pipeline(steps=[PythonTask(name=name, function=function, returns=[returns])])

def main():
    pipeline = Pipeline(steps=[
        PythonTask(name="prepare", function=tasks.prepare, returns=["items", "base"]),
        Parallel(name="parallel", branches={{
            "left": branch("left_task", tasks.left, "left_value"),
            "right": branch("right_task", tasks.right, "right_value"),
        }}),
        Map(name="map", iterate_on="items", iterate_as="item",
            branch=branch("process", tasks.process, "processed")),
        PythonTask(name="summarise", function=tasks.summarise, returns=["total"]),
    ])
    pipeline.execute(configuration_file="config.yaml", run_id={RUN_ID!r},
                     parameters_file="parameters.yaml")
    return pipeline

if __name__ == "__main__":
    main()
"""

EXPECTED = f"""
import json
from extensions.run_log_store.chunked_fs import ChunkedFileSystemRunLogStore
store = ChunkedFileSystemRunLogStore(log_folder="logs")
document = store.get_run_log_by_id(run_id={RUN_ID!r}, full=True).model_dump(mode="json")
document.pop("run_config")
print(json.dumps(document, indent=1))
"""


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="runnable-047-") as tmp:
        work = Path(tmp)
        venv.create(work / "venv", with_pip=True)
        python = str(work / "venv" / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "-q", "runnable==0.47.0"], check=True)
        (work / "tasks.py").write_text(textwrap.dedent(TASKS))
        (work / "pipeline.py").write_text(textwrap.dedent(PIPELINE))
        (work / "parameters.yaml").write_text('{"label": "first", "threshold": 0.5}\n')
        config = {
            "pipeline-executor": {"type": "local", "config": {"enable_parallel": True}},
            "run-log-store": {"type": "chunked-fs", "config": {"log_folder": "logs"}},
            "catalog": {"type": "file-system", "config": {"catalog_location": ".catalog"}},
        }
        (work / "config.yaml").write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNABLE_")}
        env["FAIL_ITEM"] = "b"
        failed = subprocess.run([python, "pipeline.py"], cwd=work, env=env, check=False)
        if failed.returncode == 0:
            print("the pipeline was meant to fail", file=sys.stderr)
            return 1
        expected = subprocess.run(
            [python, "-c", EXPECTED], cwd=work, check=True, capture_output=True, text=True
        ).stdout
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(work / "logs" / RUN_ID, TARGET)
        # runnable greets on import; keep the JSON only.
        (TARGET.parent / "expected.json").write_text(expected[expected.index("{") :])
    print(f"recorded {len(list(TARGET.iterdir()))} chunks in {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
