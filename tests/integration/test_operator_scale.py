"""The operator's cost does not grow with what it does not serve.

A cluster holds many Secrets that no store references, in namespaces without stores;
the operator (a real process, serving every namespace as the chart's default does) must
neither stream them (kopf watching Secrets keeps their data flowing through its memory)
nor list them. ``make bench-operator`` prints the figures at the issue's scale (10,000 x
20 KB) next to the old code's.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from runlog_relay.config.crd import crd_manifest
from tests.integration.kube import KubeHarness, wait_for
from tests.integration.kube.processes import OperatorProcess, operator_requests

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

RLS = "runlog-relay.dev/v1alpha1/runlogstores"
NS = "team-a"
SECRETS, SIZE = 2000, 20_000
#: RSS is sampled after the store is reconciled and the operator has been idle this long.
SETTLE = 2.0
#: Allowed growth of the peak RSS with the Secrets: the Python heap's noise. The old
#: operator, which watched Secrets, grew by more than the Secrets' size (40 MB here).
MARGIN_KIB = 15 * 1024


def store(kube: KubeHarness, name: str) -> None:
    kube.create(
        RLS,
        {
            "apiVersion": "runlog-relay.dev/v1alpha1",
            "kind": "RunLogStore",
            "metadata": {"name": name, "namespace": NS},
            # Nothing listens on port 9: the reconcile ends at once, NotReady.
            "spec": {"endpoint": "http://127.0.0.1:9", "credentialsSecretRef": {"name": "creds"}},
        },
        NS,
    )


def run_once(
    kube: KubeHarness, operator_processes: Callable[..., OperatorProcess], name: str
) -> tuple[int, list[Any]]:
    """Start an operator, let it reconcile a new store, sample its peak RSS, stop it."""
    since = len(kube.call(lambda: list(kube.emulator)))
    process = operator_processes(["--all-namespaces", "--webhook-port=0"], name=name)
    store(kube, name)
    wait_for(
        lambda: (kube.get(RLS, name, NS).get("status") or {}).get("conditions"),
        60,
        checks=[process.check],
        message=f"store {name} reconciled",
    )
    time.sleep(SETTLE)
    peak = process.peak_rss_kib()
    assert process.stop() == 0, process.log()
    return peak, operator_requests(kube, since)


def test_thousands_of_secrets_elsewhere_cost_the_operator_nothing(
    kube: KubeHarness, operator_processes: Callable[..., OperatorProcess]
) -> None:
    kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd_manifest())
    kube.ensure_namespace(NS)
    kube.create(
        "v1/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"AWS_ACCESS_KEY_ID": "a"}},
        NS,
    )
    baseline, _ = run_once(kube, operator_processes, "without")
    payload = base64.b64encode(os.urandom(SIZE * 3 // 4)).decode()
    kube.bulk_create(
        "v1/secrets",
        (
            (f"other-{i % 10}", {"metadata": {"name": f"app-{i}"}, "data": {"blob": payload}})
            for i in range(SECRETS)
        ),
    )

    peak, requests = run_once(kube, operator_processes, "with")

    secret_requests = [r for r in requests if "/secrets" in str(r.url.path)]
    assert secret_requests, "the store's own Secret was not read"
    # Only GETs of the one Secret a store names; no list, no watch, no other namespace.
    assert {(r.method.value.upper(), str(r.url.path)) for r in secret_requests} == {
        ("GET", f"/api/v1/namespaces/{NS}/secrets/creds")
    }
    assert peak <= baseline + MARGIN_KIB, (
        f"peak RSS {peak // 1024} MiB with {SECRETS} Secrets elsewhere,"
        f" {baseline // 1024} MiB without"
    )
