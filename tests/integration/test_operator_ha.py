"""Several operator replicas: election, failover, one shared webhook certificate.

Two ``runlog-relay operator`` processes with identical arguments (those of the chart with
``operator.replicaCount: 2`` and ``peering.enabled``, the same ``--priority`` included)
run against the Kubernetes emulator, which holds what ``helm install`` creates: the CRDs
(kopf's peering CRDs from the chart's ``crds/`` folder), the ClusterKopfPeering, the
webhook configurations and the empty certificate Secret. Which replica is active is read
from its own ``runlog_relay_operator_leading`` gauge; admission reviews go over HTTPS to
each replica and must verify against the caBundle in the configurations, as the API
server would. ``make bench-operator`` prints the failover time too.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from runlog_relay.config.crd import crd_manifest
from tests.integration.kube import KubeHarness, wait_for
from tests.integration.kube.processes import OperatorProcess, settled_leader
from tests.support.admission import AdmissionClient, ReviewAnswer, pod_review

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RLS = "runlog-relay.dev/v1alpha1/runlogstores"
NS, RELEASE = "team-a", "runlog-relay"
SECRET = f"{RELEASE}-webhook-cert"
SERVICE_DNS = f"{RELEASE}.{RELEASE}.svc"
#: The chart's arguments for two peered replicas (cluster-wide, self-signed webhook).
SAME_ARGS = [
    "--all-namespaces",
    f"--peering={RELEASE}",
    "--peering-lifetime=30",
    "--priority=100",
    f"--webhook-service-name={RELEASE}",
    f"--webhook-service-namespace={RELEASE}",
    f"--webhook-config-name={RELEASE}",
    f"--webhook-cert-secret={SECRET}",
    "--recheck-interval=600",
]
FAILOVER_LIMIT = 60.0


def webhook_configuration(kind: str) -> dict[str, Any]:
    mutating = kind == "MutatingWebhookConfiguration"
    path = "/mutate-pods" if mutating else "/validate-runlogstores"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": RELEASE},
        "webhooks": [
            {
                "name": ("inject.pods" if mutating else "validate.runlogstores")
                + ".runlog-relay.dev",
                "clientConfig": {
                    "service": {"name": RELEASE, "namespace": RELEASE, "path": path, "port": 443}
                },
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
            }
        ],
    }


@dataclass
class Replicas:
    kube: KubeHarness
    start_process: Callable[..., OperatorProcess]
    processes: list[OperatorProcess]

    def start(self, *extra: str, name: str | None = None) -> OperatorProcess:
        kwargs = {"name": name} if name else {}
        process = self.start_process([*SAME_ARGS, *extra], **kwargs)
        self.processes.append(process)
        return process

    def active(self) -> OperatorProcess:
        """Wait until the election has settled; the active replica."""
        return wait_for(
            lambda: settled_leader(self.kube, self.processes, RELEASE),
            90,
            interval=0.2,
            message="exactly one active replica",
        )

    def store(self, name: str) -> None:
        self.kube.create(
            RLS,
            {
                "apiVersion": "runlog-relay.dev/v1alpha1",
                "kind": "RunLogStore",
                "metadata": {"name": name, "namespace": NS},
                # Nothing listens on port 9: reconciled at once, NotReady.
                "spec": {
                    "endpoint": "http://127.0.0.1:9",
                    "credentialsSecretRef": {"name": "creds"},
                },
            },
            NS,
        )

    def reconciled(self, name: str) -> bool:
        return bool((self.kube.get(RLS, name, NS).get("status") or {}).get("conditions"))

    def ca_bundle(self) -> bytes:
        bundles = set()
        for resource in (
            "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            "admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        ):
            for webhook in self.kube.get(resource, RELEASE)["webhooks"]:
                bundles.add(webhook["clientConfig"].get("caBundle"))
        assert len(bundles) == 1 and None not in bundles, bundles
        return base64.b64decode(bundles.pop())

    def admit(self, process: OperatorProcess, pod: dict[str, Any], ca: bytes) -> ReviewAnswer:
        client = AdmissionClient(process.webhook_port, ca, SERVICE_DNS)
        answer = client.post("/mutate-pods", pod_review(pod, NS))
        assert answer.status == 200, answer
        return answer


@pytest.fixture()
def replicas(
    kube: KubeHarness, operator_processes: Callable[..., OperatorProcess]
) -> Iterator[Replicas]:
    kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd_manifest())
    peering = (REPO / "charts/runlog-relay/crds/kopf-peering.yaml").read_text()
    for crd in yaml.safe_load_all(peering):
        if crd:
            kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    kube.create(
        "kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": RELEASE}},
    )
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        plural = kind.lower() + "s"
        kube.create(f"admissionregistration.k8s.io/v1/{plural}", webhook_configuration(kind))
    kube.ensure_namespace(RELEASE)
    kube.create("v1/secrets", {"metadata": {"name": SECRET}, "type": "Opaque"}, RELEASE)
    kube.ensure_namespace(NS)
    kube.create(
        "v1/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"AWS_ACCESS_KEY_ID": "a"}},
        NS,
    )
    yield Replicas(kube, operator_processes, [])


def pod(store: str = "main") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "step", "namespace": NS, "labels": {"runlog-relay.dev/store": store}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "runnable"}]},
    }


def test_identical_replicas_elect_one_and_fail_over_within_a_minute(replicas: Replicas) -> None:
    first, second = replicas.start(name="replica-1"), replicas.start(name="replica-2")
    active = replicas.active()
    standby = second if active is first else first
    replicas.store("before")
    wait_for(lambda: replicas.reconciled("before"), 30, message="the first store reconciled")
    assert "RunLogStore team-a/before" in active.log()
    assert "RunLogStore team-a/before" not in standby.log()  # a standby does nothing

    active.kill()  # no goodbye: its keep-alive must expire
    killed = time.monotonic()
    replicas.store("after")
    wait_for(
        lambda: replicas.reconciled("after"),
        FAILOVER_LIMIT + 10,
        interval=0.2,
        checks=[standby.check],
        message="the standby to take over",
    )
    failover = time.monotonic() - killed
    print(f"failover after SIGKILL of the active replica: {failover:.1f}s")
    assert failover < FAILOVER_LIMIT
    assert replicas.active() is standby
    assert "RunLogStore team-a/after" in standby.log()


def test_a_clean_shutdown_hands_over_at_once(replicas: Replicas) -> None:
    first, second = replicas.start(name="replica-1"), replicas.start(name="replica-2")
    active = replicas.active()
    standby = second if active is first else first
    assert active.stop() == 0  # SIGTERM, as in a rollout: kopf says goodbye to its peers
    stopped = time.monotonic()
    replicas.store("after")
    wait_for(lambda: replicas.reconciled("after"), 20, interval=0.1, checks=[standby.check])
    assert time.monotonic() - stopped < 15  # no lifetime to wait for


def test_every_replica_serves_the_one_certificate_through_renewals(replicas: Replicas) -> None:
    # Certificates living 36 s, renewed 18 s before they expire: several renewals while
    # admission requests go to both replicas, as the Service spreads them.
    fast = [
        "--webhook-cert-validity-hours=0.01",
        "--webhook-cert-renew-before-hours=0.005",
        "--webhook-cert-check-interval=1",
    ]
    first, second = replicas.start(*fast, name="replica-1"), replicas.start(*fast, name="replica-2")
    replicas.active()
    ca = wait_for(replicas.ca_bundle, 30, retry_on=(AssertionError, KeyError), message="caBundle")
    for process in (first, second):  # ready: listening with a certificate, as the probe sees
        wait_for(
            lambda p=process: replicas.admit(p, pod("absent"), ca),
            30,
            retry_on=(ConnectionError,),
            message=f"{process.name} to serve the webhook",
        )
    serials: set[int] = set()
    errors: list[str] = []
    answers = 0
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        for process in (first, second):
            try:
                answer = replicas.admit(process, pod("absent"), ca)
            except OSError as exc:  # a TLS failure is an OSError (ssl.SSLError)
                errors.append(f"{process.name}: {exc!r}")
                continue
            assert answer.allowed
            answers += 1
        secret = replicas.kube.get("v1/secrets", SECRET, RELEASE)
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        serials.add(leaf.serial_number)
        time.sleep(0.2)
    print(
        f"admission over TLS: {answers} answered, {len(errors)} failed, {len(serials)} certificates"
    )
    assert not errors and answers > 50
    assert len(serials) >= 2  # renewed at least once while being served
    assert replicas.ca_bundle() == ca  # a renewal never changes what clients trust


def test_a_demoted_replica_does_not_answer_from_its_frozen_index(replicas: Replicas) -> None:
    low = replicas.start(name="low")
    assert replicas.active() is low
    replicas.store("main")
    ca = wait_for(replicas.ca_bundle, 30, retry_on=(AssertionError, KeyError), message="caBundle")
    pod_ = pod("main")
    wait_for(
        lambda: "runlog-relay.dev/injected" in str(replicas.admit(low, pod_, ca).patch),
        30,
        message="the store in the low replica's index",
    )

    high = replicas.start("--priority=101", name="high")  # outranks every class-100 replica
    assert replicas.active() is high  # kopf paused the low one: its index is frozen
    replicas.kube.delete(RLS, "main", NS)

    patch = replicas.admit(low, pod_, ca).patched(pod_)
    assert "runlog-relay.dev/injected" not in patch["metadata"].get("annotations", {})
    assert patch["metadata"]["annotations"]["runlog-relay.dev/skipped"].startswith("StoreNotFound")
