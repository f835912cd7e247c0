"""The settings the docs promise, end to end: the sidecar as a real subprocess configured
only through variables and a config file named by a variable (RUNLOG_RELAY_ONCE,
RUNLOG_RELAY_CONFIG, sizes with units), and a misspelt variable named in its log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from minio import Minio

from tests.support.s3server import S3Server
from tests.support.sidecar import start_sidecar

pytestmark = pytest.mark.integration


def test_once_and_config_from_variables_and_a_warning_for_a_misspelt_one(
    s3_server: S3Server, s3_client: Minio, bucket: str, source: Path, tmp_path: Path
) -> None:
    (source / "env-run").mkdir(parents=True)
    (source / "env-run" / "RunLog.json").write_text(json.dumps({"run_id": "env-run"}))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"endpoint: {s3_server.endpoint}\nbucket: {bucket}\nsync:\n  maxPendingBytes: 32MiB\n"
    )
    sidecar = start_sidecar(
        source,
        None,  # endpoint and bucket come from the file the variable names
        None,
        tmp_path / "s.log",
        env={
            "RUNLOG_RELAY_CONFIG": str(config),
            "RUNLOG_RELAY_ONCE": "true",
            "RUNLOG_RELAY_SYNC__MAX_FILE_BYTES": "2MiB",
            "RUNLOG_RELAY_SYNC__DEBOUNCE": "9",  # misspelt: ignored, and named
        },
        metrics=False,
    )
    assert sidecar.process.wait(60) == 0, sidecar.log  # --once, from RUNLOG_RELAY_ONCE
    assert s3_client.stat_object(bucket, "env-run/RunLog").size > 0
    assert (
        "RUNLOG_RELAY_SYNC__DEBOUNCE is not a setting (did you mean"
        " RUNLOG_RELAY_SYNC__DEBOUNCE_SECONDS?); it is ignored" in sidecar.log
    )
