"""The webhook tests' cluster: the emulator as ``helm install`` leaves it, and the real
operator (``build_operator`` with webhooks on, shared self-signed TLS) run by the harness.

:func:`prepare` puts in the CRD, the namespaces and chart-like webhook configurations;
``Cluster.start(...)`` runs the operator; :class:`Cluster` then sends AdmissionReviews as
the API server would: over HTTPS, trusting only the caBundle the operator wrote. A test
module's fixtures build it: ``Cluster(kube, kopf_runner, s3)`` after ``prepare(kube)``.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import kubernetes_validate
from prometheus_client import CollectorRegistry

from runlog_relay.config.crd import crd_manifest
from runlog_relay.operator.runner import Operator, build_operator
from runlog_relay.operator.settings import OperatorSettings
from tests.support.admission import AdmissionClient, ReviewAnswer, pod_review
from tests.support.s3server import AuthS3, free_port

from .harness import KubeHarness
from .kopf_runner import KopfRunner, RunningOperator
from .waiting import DEFAULT_TIMEOUT

__all__ = [
    "K8S",
    "MUTATING",
    "NS",
    "OTHER_NS",
    "RLS",
    "SERVICE_DNS",
    "SERVICE_NS",
    "VALIDATING",
    "Cluster",
    "prepare",
    "webhook_configuration",
]

RLS = "runlog-relay.dev/v1alpha1/runlogstores"
MUTATING = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
VALIDATING = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
NS, OTHER_NS = "team-a", "team-b"
SERVICE, SERVICE_NS = "runlog-relay", "runlog-relay"
SERVICE_DNS = f"{SERVICE}.{SERVICE_NS}.svc"
K8S = "1.30"
WAIT = DEFAULT_TIMEOUT
_buckets = itertools.count()


# --------------------------------------------------------------------------- servers


def webhook_configuration(kind: str) -> dict[str, Any]:
    """What the chart installs: our Service, our paths, no caBundle (the operator's job)."""
    mutating = kind == "MutatingWebhookConfiguration"
    webhook: dict[str, Any] = {
        "name": ("pods" if mutating else "runlogstores") + ".runlog-relay.dev",
        "clientConfig": {
            "service": {
                "name": SERVICE,
                "namespace": SERVICE_NS,
                "path": "/mutate-pods" if mutating else "/validate-runlogstores",
                "port": 443,
            }
        },
        "rules": [
            {
                "apiGroups": [""] if mutating else ["runlog-relay.dev"],
                "apiVersions": ["v1"] if mutating else ["v1alpha1"],
                "operations": ["CREATE"] if mutating else ["CREATE", "UPDATE"],
                "resources": ["pods"] if mutating else ["runlogstores"],
            }
        ],
        "failurePolicy": "Ignore",
        "sideEffects": "NoneOnDryRun",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
    }
    if mutating:
        webhook["objectSelector"] = {
            "matchExpressions": [{"key": "runlog-relay.dev/store", "operator": "Exists"}]
        }
        webhook["reinvocationPolicy"] = "Never"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "runlog-relay"},
        "webhooks": [webhook],
    }


@dataclass
class Cluster:
    kube: KubeHarness
    runner: KopfRunner
    s3: AuthS3
    operator: Operator | None = None
    running: RunningOperator | None = None
    client: AdmissionClient | None = None

    def start(
        self,
        *,
        allow_errors: bool = False,
        cert_dir: Path | None = None,
        allowed_endpoints: list[str] | None = None,
        webhook: dict[str, Any] | None = None,
        **injection: Any,
    ) -> Operator:
        url = self.kube.url
        options = OperatorSettings(
            namespaces=[NS, OTHER_NS],
            instance="test",
            reconcile={"retry_base_delay": 0.2, "retry_max_delay": 1.0, "bucket_timeout": 2.0},
            webhook={
                "host": "127.0.0.1",
                "port": free_port(),
                "service_name": SERVICE,
                "service_namespace": SERVICE_NS,
                "cert_check_interval": 0.3,
                "cert_dir": cert_dir,
                **(webhook or {}),
            },
            injection=injection,
            allowed_endpoints=allowed_endpoints or [],
        )
        self.operator = build_operator(
            options,
            login=lambda: kopf.ConnectionInfo(server=url, insecure=True),
            prometheus=CollectorRegistry(),
            recheck=False,
        )
        self.running = self.runner.start(
            self.operator.registry, namespaces=(NS, OTHER_NS), allow_errors=allow_errors
        )
        server = self.operator.webhook_server
        assert server is not None
        url_seen = self.wait(lambda: server.url, "the webhook server to listen")
        if cert_dir is None:
            bundle = self.wait(self.ca_bundle, "the operator to write the caBundle")
        else:
            bundle = (cert_dir / "ca.crt").read_bytes()
        self.client = AdmissionClient(int(url_seen.rsplit(":", 1)[1]), bundle, SERVICE_DNS)
        return self.operator

    def ca_bundle(self) -> bytes | None:
        bundles = set()
        for resource in (MUTATING, VALIDATING):
            for webhook in self.kube.get(resource, "runlog-relay")["webhooks"]:
                bundles.add(webhook["clientConfig"].get("caBundle"))
        if len(bundles) != 1 or None in bundles:
            return None
        return base64.b64decode(bundles.pop())

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        assert self.running is not None
        return self.running.wait_for(predicate, timeout=timeout, message=what)

    # --- objects ---------------------------------------------------------------------------

    def put_creds(self, name: str = "s3-creds", namespace: str = NS) -> None:
        data = {
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
        }
        self.kube.create(
            "v1/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            },
            namespace,
        )

    def create_store(
        self, name: str, bucket: str, namespace: str = NS, *, wait: bool = True, **extra: Any
    ) -> None:
        spec = {
            "endpoint": self.s3.endpoint,
            "bucket": f"{bucket}/run-logs",
            "credentialsSecretRef": {"name": "s3-creds"},
            **extra,
        }
        self.kube.create(
            RLS,
            {
                "apiVersion": "runlog-relay.dev/v1alpha1",
                "kind": "RunLogStore",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            },
            namespace,
        )
        if wait:
            self.wait(lambda: self.ready(name, namespace), f"RunLogStore {name} Ready")

    def ready(self, name: str, namespace: str = NS) -> bool:
        status = self.kube.get(RLS, name, namespace).get("status") or {}
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
        )

    # --- admission -------------------------------------------------------------------------

    def admit(
        self,
        pod: dict[str, Any],
        namespace: str = NS,
        path: str = "/mutate-pods",
        *,
        dry_run: bool = False,
    ) -> ReviewAnswer:
        assert self.client is not None
        kubernetes_validate.validate(pod, K8S, strict=True)
        answer = self.client.post(path, pod_review(pod, namespace, dry_run=dry_run))
        assert answer.status == 200, answer
        assert answer.allowed, answer.response
        return answer

    def wait_webhook_warns(self, pod: dict[str, Any], text: str) -> None:
        """Wait until the webhook's own view of the pod's store -- kopf's in-memory index,
        which follows the API object's status a moment later -- makes it warn ``text``.
        Asked with dry-run reviews: the webhook decides as for real, but posts no Event
        and counts nothing."""

        def warns() -> bool:
            return any(text in w for w in self.admit(pod, dry_run=True).warnings)

        self.wait(warns, f"the webhook to warn {text!r}")

    def metric(self, result: str) -> float:
        assert self.operator is not None
        value = self.operator.prometheus.get_sample_value(
            "runlog_relay_operator_injections_total", {"result": result}
        )
        return value or 0.0


def prepare(kube: KubeHarness) -> None:
    """The emulator as ``helm install`` leaves it for these tests."""
    kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd_manifest())
    for namespace in (NS, OTHER_NS):
        kube.ensure_namespace(namespace)
    kube.create(MUTATING, webhook_configuration("MutatingWebhookConfiguration"))
    kube.create(VALIDATING, webhook_configuration("ValidatingWebhookConfiguration"))
