"""runnable compatibility and crash safety, end to end with real processes.

A real runnable pipeline (parallel + map, local executor with enable_parallel, the
chunked-fs or file-system store) writes while the sidecar watches; after SIGTERM,
runnable's own chunked-minio (or minio) store must read the same run log that its
filesystem store reads.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
from minio import Minio

from runlog_relay import runnable_compat
from tests.support.mirror import assert_mirror
from tests.support.s3server import S3Endpoint, S3Server
from tests.support.sidecar import start_sidecar
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("layout", ["chunked", "single"])
def test_runnable_reads_back_what_it_wrote_through_the_sidecar(
    layout: str,
    any_s3: S3Endpoint,
    any_s3_client: Minio,
    any_bucket: str,
    source: Path,
    tmp_path: Path,
) -> None:
    sidecar = start_sidecar(
        source,
        any_s3.endpoint,
        f"{any_bucket}/run-logs",
        tmp_path / "sidecar.log",
        "--layout",
        layout,
    )
    sidecar.wait_ready()
    run_id = f"compat-{layout}"
    runnable_compat.run_pipeline(source, run_id, layout=layout, workdir=tmp_path / "work")
    assert sidecar.terminate() == 0, sidecar.log

    from_folder = runnable_compat.read_run_log_from_folder(source, run_id, layout=layout)
    from_bucket = runnable_compat.read_run_log_from_bucket(
        any_s3.endpoint,
        any_s3.access_key,
        any_s3.secret_key,
        f"{any_bucket}/run-logs",
        run_id,
        layout=layout,
    )
    assert from_bucket == from_folder
    assert from_bucket["status"] == "SUCCESS"
    assert set(from_bucket["steps"]) == set(runnable_compat.DEMO_STEPS)
    if layout == "chunked":
        for step, branches in runnable_compat.DEMO_BRANCHES.items():
            assert set(from_bucket["steps"][step]["branches"]) == set(branches)
    assert_mirror(any_s3_client, any_bucket, "run-logs", source, layout)
    # The sidecar saw the files being written (not just the final scan).
    assert "mirror complete" in sidecar.log


class Rewriter:
    """Rewrites files in place, like runnable's parallel branches, until stopped."""

    def __init__(self, folder: Path, files: int, seed: int) -> None:
        self.paths = [folder / f"run-{i % 3}" / f"BranchLog-b{i}.json" for i in range(files)]
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            path = self.random.choice(self.paths)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as handle:
                json.dump(
                    {"n": self.writes, "pad": "z" * self.random.randint(0, 4000)}, handle, indent=4
                )
            self.writes += 1
            self.stop.wait(0.002)

    def __enter__(self) -> Rewriter:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_sigkill_while_files_are_rewritten_loses_nothing(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    chooser = random.Random(7)
    with Rewriter(source, files=12, seed=11) as writer:
        for round_number in range(5):
            sidecar = start_sidecar(
                source, s3_server.endpoint, bucket, tmp_path / f"kill-{round_number}.log"
            )
            wait_until(
                lambda sidecar=sidecar: (
                    sidecar.metric("runlog_relay_uploads_total", result="success") >= 1
                ),
                what="some uploads before the kill",
            )
            threading.Event().wait(chooser.uniform(0.05, 0.4))  # kill at an arbitrary point
            sidecar.kill()
        assert writer.writes > 100
    final = start_sidecar(source, s3_server.endpoint, bucket, tmp_path / "final.log")
    final.wait_ready()
    assert final.terminate() == 0, final.log
    assert_mirror(s3_client, bucket, "", source)
