"""``runlog-relay operator`` as a real process: KUBECONFIG login, /metrics, kopf's
liveness probe, JSON logs, graceful exit on SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runlog_relay.config.crd import crd_manifest
from tests.integration.kube import KubeHarness, wait_for
from tests.support.s3server import S3Server, free_port

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = pytest.mark.integration

RLS = "runlog-relay.dev/v1alpha1/runlogstores"
NS = "team-cli"
SECRET_VALUE = "cli-secret-value-never-logged"


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening yet
        return 0, ""


@pytest.fixture()
def operator_process(kube: KubeHarness, tmp_path: Path) -> Iterator[tuple[Any, int, int, Path]]:
    kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd_manifest())
    kube.ensure_namespace(NS)
    kubeconfig = kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
    metrics_port, liveness_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNLOG_RELAY_"))}
    env["KUBECONFIG"] = kubeconfig
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runlog_relay",
                "operator",
                "--namespace",
                NS,
                "--metrics-port",
                str(metrics_port),
                "--metrics-host",
                "127.0.0.1",
                "--liveness-port",
                str(liveness_port),
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield process, metrics_port, liveness_port, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_operator_command_serves_metrics_liveness_and_exits_cleanly(
    kube: KubeHarness, s3_server: S3Server, operator_process: tuple[Any, int, int, Path]
) -> None:
    process, metrics_port, liveness_port, log_path = operator_process

    def running() -> None:
        assert process.poll() is None, f"the operator exited:\n{log_path.read_text()}"

    def live() -> bool:
        return http_get(f"http://127.0.0.1:{liveness_port}/healthz")[0] == 200

    wait_for(live, 20, checks=[running], message="kopf's liveness endpoint to answer 200")

    secret = {
        "metadata": {"name": "creds", "namespace": NS},
        "data": {
            "AWS_ACCESS_KEY_ID": base64.b64encode(b"minioadmin").decode(),
            "AWS_SECRET_ACCESS_KEY": base64.b64encode(SECRET_VALUE.encode()).decode(),
        },
    }
    kube.create("v1/secrets", secret, NS)
    kube.create(
        RLS,
        {
            "apiVersion": "runlog-relay.dev/v1alpha1",
            "kind": "RunLogStore",
            "metadata": {"name": "main", "namespace": NS},
            "spec": {
                "endpoint": s3_server.endpoint,
                "bucket": "cli-test-bucket/runs",
                "createBucket": True,
                "credentialsSecretRef": {"name": "creds"},
            },
        },
        NS,
    )

    def ready() -> bool:
        status = kube.get(RLS, "main", NS).get("status") or {}
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )

    wait_for(ready, 20, checks=[running], message="the store to become Ready")
    assert kube.get("v1/configmaps", "runlog-relay-main", NS)

    def scraped() -> str:
        code, metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert code == 200
        assert f'runlog_relay_store_ready{{namespace="{NS}",store="main"}} 1.0' in metrics
        return metrics

    metrics = wait_for(scraped, 10, checks=[running], message="the store's metric")
    assert 'runlog_relay_operator_reconciles_total{result="ready"}' in metrics

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    output = log_path.read_text()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines, output
    assert any("Ready=True" in line["msg"] for line in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert SECRET_VALUE not in output
    assert base64.b64encode(SECRET_VALUE.encode()).decode() not in output
