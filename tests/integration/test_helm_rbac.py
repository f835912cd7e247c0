"""The chart's RBAC against what the real operator does.

``runlog-relay`` runs as a process with exactly the arguments the chart renders for its
Deployment (plus loopback addresses and free ports), against the Kubernetes emulator, with
moto's S3 server behind the store. A typical life goes by: the webhook configurations get
their CA, a Secret and a RunLogStore appear and turn Ready, the spec and the Secret
change, a pod is admitted through the injection webhook, the store is deleted. Then every
request the operator made (kopf's and its own, told apart from the test's by User-Agent)
is mapped to an RBAC attribute (API group, resource, verb, namespace, name) and must be
allowed by :func:`runlog_relay.operator.permissions.required` -- which
tests/integration/test_helm.py shows is exactly what the chart grants -- in the scope the
chart grants it: a namespaced request outside the served namespaces, or a cluster-wide
list of a namespaced resource by a namespaced operator, is a failure too. Conversely,
every granted verb must have been used, or be listed in :data:`NOT_EXERCISED` with why.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from runlog_relay.operator import permissions
from tests.integration.kube import (
    WEBHOOK_CONFIGS,
    KubeHarness,
)
from tests.integration.kube import wait_for as _wait_for
from tests.support.s3server import S3Server, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))
import render_manifests

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

RLS = "runlog-relay.dev/v1alpha1/runlogstores"
RELEASE = NAMESPACE = "runlog-relay"
SERVED = "team-a"
OPERATOR_AGENTS = ("kopf/", "runlog-relay-operator")
STORE_LABEL = "runlog-relay.dev/store"
#: The cluster-scoped resources the operator uses (a ClusterRole grants them).
CLUSTER_SCOPED = {
    "namespaces",
    "customresourcedefinitions",
    "clusterkopfpeerings",
    "subjectaccessreviews",
    "nodes",
    *(spec.plural for spec in WEBHOOK_CONFIGS),
}

#: Granted, but a short test cannot make the operator use them, and why they are needed.
NOT_EXERCISED: dict[tuple[str, str, str], str] = {
    # The controller re-reads a store only in its periodic recheck (--recheck-interval).
    ("runlog-relay.dev", "runlogstores", "get"): "the recheck loop and the webhook's fallback",
}


@pytest.fixture()
def kube_resources(kube_resources: list[Any]) -> list[Any]:
    # RunLogStore comes from installing the chart's CRD, as in a real cluster.
    return [*kube_resources, *WEBHOOK_CONFIGS]


# --------------------------------------------------------------------------- requests → RBAC


@dataclass(frozen=True)
class Access:
    """One request as the API server's authorizer sees it."""

    group: str
    resource: str  # plural[/subresource]
    verb: str
    namespace: str | None
    name: str | None

    def __str__(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "cluster-wide"
        target = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource}{target} ({where})"


def access_of(method: str, url: str) -> Access | None:
    """The RBAC attributes of a request; None for non-resource paths (discovery)."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if segments[:2] == ["api", "v1"]:
        group, rest = "", segments[2:]
    elif segments[:1] == ["apis"] and len(segments) >= 3:
        group, rest = segments[1], segments[3:]
    else:
        return None  # /api, /apis, /version, /apis/<group>/<version> discovery
    if not rest:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    query = parse_qs(parts.query)
    if method == "GET":
        if name is not None:
            verb = "get"
        elif query.get("watch", ["false"])[0] in ("true", "1"):
            verb = "watch"
        else:
            verb = "list"
    else:
        verb = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }[method]
    return Access(group, resource, verb, namespace, name)


def test_requests_map_to_rbac_attributes() -> None:
    assert access_of("GET", "/api/v1/namespaces/a/secrets?watch=true") == Access(
        "", "secrets", "watch", "a", None
    )
    assert access_of("GET", "/api/v1/secrets") == Access("", "secrets", "list", None, None)
    assert access_of("GET", "/api/v1/namespaces") == Access("", "namespaces", "list", None, None)
    assert access_of(
        "PATCH", "/apis/runlog-relay.dev/v1alpha1/namespaces/a/runlogstores/s/status"
    ) == Access("runlog-relay.dev", "runlogstores/status", "patch", "a", "s")
    assert access_of("DELETE", "/api/v1/namespaces/a/configmaps/c") == Access(
        "", "configmaps", "delete", "a", "c"
    )
    assert access_of("GET", "/apis/runlog-relay.dev/v1alpha1") is None
    assert access_of("GET", "/api") is None


def allowed(access: Access, granted: permissions.Permissions, served: list[str] | None) -> bool:
    """Whether the chart's grants (Role per served namespace or ClusterRole; the Role in
    the release namespace; the ClusterRole) allow it."""
    cluster_scoped = CLUSTER_SCOPED
    base = access.resource.split("/")[0]
    if base in cluster_scoped:
        rules = granted.cluster
    elif served is None:  # cluster-wide: the served rules are in the ClusterRole
        rules = granted.served + (granted.own if access.namespace == NAMESPACE else ())
    elif access.namespace in served:
        rules = granted.served
    elif access.namespace == NAMESPACE:
        rules = granted.own
    else:
        return False  # another namespace, or all namespaces at once: no Role grants that
    return any(r.allows(access.group, access.resource, access.verb, access.name) for r in rules)


# --------------------------------------------------------------------------- the operator


def _operator_args(values: dict[str, Any]) -> list[str]:
    objects = [
        obj
        for _, obj in render_manifests.rendered_objects(
            render_manifests.render_chart(values, name=RELEASE, namespace=NAMESPACE)
        )
    ]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def _rules(manifest: dict[str, Any]) -> tuple[permissions.Rule, ...]:
    return tuple(
        permissions.Rule(
            tuple(rule["apiGroups"]),
            tuple(rule["resources"]),
            tuple(rule["verbs"]),
            why="",
            resource_names=tuple(rule.get("resourceNames", ())),
        )
        for rule in manifest["rules"]
    )


def _granted_by_the_chart(values: dict[str, Any]) -> permissions.Permissions:
    """The rules the rendered chart grants, by scope: served (a Role per served
    namespace, or the ClusterRole's namespaced rules), own (the Role in the release
    namespace) and cluster (the ClusterRole's cluster-scoped rules)."""
    objects = _chart_objects(values)
    (cluster_role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    own_roles = [
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-own")
    ]
    own = _rules(own_roles[0]) if own_roles else ()
    roles = {_rules(o) for o in objects if o["kind"] == "Role" and o not in own_roles}
    assert len(roles) <= 1, "the served namespaces get different Roles"
    everything = _rules(cluster_role)
    cluster_rules = tuple(r for r in everything if set(r.resources) & CLUSTER_SCOPED)
    if not roles:  # cluster-wide: one ClusterRole, split as permissions.py does
        served = tuple(r for r in everything if r not in cluster_rules)
        return permissions.Permissions(served, own, cluster_rules)
    assert cluster_rules == everything
    return permissions.Permissions(roles.pop(), own, cluster_rules)


def _chart_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = render_manifests.render_chart(values, name=RELEASE, namespace=NAMESPACE)
    return [obj for _, obj in render_manifests.rendered_objects(rendered)]


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log: Path
    webhook_port: int
    metrics_port: int

    def check(self) -> None:
        assert self.process.poll() is None, f"the operator exited:\n{self.log.read_text()}"


@pytest.fixture()
def start_operator(kube: KubeHarness, tmp_path: Path) -> Iterator[Any]:
    processes: list[OperatorProcess] = []

    def start(values: dict[str, Any]) -> OperatorProcess:
        ports = {"metrics": free_port(), "liveness": free_port(), "webhook": free_port()}
        values = {
            **values,
            "operator": {"metricsPort": ports["metrics"], "livenessPort": ports["liveness"]},
            "webhook": {"port": ports["webhook"]},
        }
        # The cluster as `helm install` leaves it: CRD, webhook configurations, namespaces.
        for obj in _chart_objects(values):
            if obj["kind"] == "CustomResourceDefinition":
                kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", obj)
            elif obj["kind"] == "MutatingWebhookConfiguration":
                kube.create("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", obj)
            elif obj["kind"] == "ValidatingWebhookConfiguration":
                kube.create("admissionregistration.k8s.io/v1/validatingwebhookconfigurations", obj)
        kube.ensure_namespace(NAMESPACE)
        for obj in _chart_objects(values):
            if obj["kind"] == "Secret":  # the webhook certificate's, created empty
                kube.create("v1/secrets", obj, obj["metadata"]["namespace"])
        kube.ensure_namespace(SERVED)
        kube.ensure_namespace("team-other")
        args = _operator_args(values)
        # Loopback only, in a test.
        args += ["--metrics-host=127.0.0.1", "--webhook-host=127.0.0.1", "--recheck-interval=600"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNLOG_RELAY_"))}
        env["KUBECONFIG"] = kube.write_kubeconfig(str(tmp_path / f"kubeconfig-{len(processes)}"))
        log = tmp_path / f"operator-{len(processes)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "runlog_relay", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        running = OperatorProcess(process, log, ports["webhook"], ports["metrics"])
        processes.append(running)
        return running

    yield start
    for running in processes:
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(20)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait(10)


def _ca_bundle(kube: KubeHarness) -> bytes:
    """The CA the operator patched into both configurations (the same one)."""
    bundles = set()
    for spec in WEBHOOK_CONFIGS:
        config = kube.get(f"{spec.group}/{spec.version}/{spec.plural}", RELEASE, None)
        for webhook in config["webhooks"]:
            bundle = webhook["clientConfig"].get("caBundle")
            assert bundle, f"no caBundle yet in {spec.kind} webhook {webhook['name']}"
            bundles.add(bundle)
    (bundle,) = bundles
    return base64.b64decode(bundle)


def _admit_pod(port: int, ca_pem: bytes, namespace: str, store: str | None) -> dict[str, Any]:
    """POST an AdmissionReview for a pod that names ``store`` (None: its namespace's), as
    the API server would."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "step",
            "namespace": namespace,
            "labels": {"runlog-relay.dev/store": store} if store else {"app": "step"},
        },
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "runnable:latest",
                    "volumeMounts": [{"name": "run-logs", "mountPath": "/tmp/run_logs"}],
                }
            ],
            "volumes": [{"name": "run-logs", "emptyDir": {}}],
        },
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:argo:argo"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
    return _post_review(port, ca_pem, "/mutate-pods", review)


def _post_review(port: int, ca_pem: bytes, path: str, review: dict[str, Any]) -> dict[str, Any]:
    """POST an AdmissionReview over HTTPS as the API server would; its response."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    server_name = f"{RELEASE}.{NAMESPACE}.svc"
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection = http.client.HTTPSConnection(server_name, port, context=context, timeout=10)
    connection.sock = context.wrap_socket(raw, server_hostname=server_name)
    try:
        connection.request("POST", path, json.dumps(review), {"Content-Type": "application/json"})
        answer = connection.getresponse()
        body = json.loads(answer.read())
    finally:
        connection.close()
    assert answer.status == 200, body
    return dict(body["response"])


def _store_review(namespace: str, spec: dict[str, Any], user: str) -> dict[str, Any]:
    gvk = {"group": "runlog-relay.dev", "version": "v1alpha1", "kind": "RunLogStore"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": {**gvk, "resource": "runlogstores"},
            "requestKind": gvk,
            "requestResource": {**gvk, "resource": "runlogstores"},
            "namespace": namespace,
            "name": "other",
            "operation": "CREATE",
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "runlog-relay.dev/v1alpha1",
                "kind": "RunLogStore",
                "metadata": {"name": "other", "namespace": namespace},
                "spec": spec,
            },
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def _run_a_typical_life(
    kube: KubeHarness, operator: OperatorProcess, s3: S3Server, namespace: str
) -> None:
    def wait(predicate: Any, what: str) -> Any:
        return _wait_for(predicate, 30, checks=[operator.check], message=what)

    ca_pem = wait(lambda: _ca_bundle(kube), "the operator to patch the webhooks' caBundle")

    secret = {
        "metadata": {"name": "creds", "namespace": namespace},
        "data": {
            "AWS_ACCESS_KEY_ID": base64.b64encode(b"minioadmin").decode(),
            "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"minioadmin").decode(),
        },
    }
    kube.create("v1/secrets", secret, namespace)
    kube.create(
        RLS,
        {
            "apiVersion": "runlog-relay.dev/v1alpha1",
            "kind": "RunLogStore",
            "metadata": {"name": "main", "namespace": namespace},
            "spec": {
                "endpoint": s3.endpoint,
                "bucket": f"rbac-{uuid.uuid4().hex[:8]}/runs",
                "createBucket": True,
                "credentialsSecretRef": {"name": "creds"},
            },
        },
        namespace,
    )

    def ready(generation: int = 1) -> bool:
        status = kube.get(RLS, "main", namespace).get("status") or {}
        return status.get("observedGeneration") == generation and any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )

    wait(ready, "the store to become Ready")
    kube.patch(RLS, "main", {"spec": {"sync": {"concurrency": 2}}}, namespace)
    wait(lambda: ready(2), "the spec change to be reconciled")
    secret["data"]["AWS_SECRET_ACCESS_KEY"] = base64.b64encode(b"rotated").decode()
    kube.replace("v1/secrets", "creds", secret, namespace)

    response = wait(
        lambda: _admit_pod(operator.webhook_port, ca_pem, namespace, "main"),
        "the injection webhook to answer",
    )
    assert response["allowed"] is True
    injected = json.loads(base64.b64decode(response["patch"]))
    assert any("runlog-relay" in json.dumps(op) for op in injected), injected
    # A pod of a namespace that names its default store: the webhook reads the namespace.
    kube.patch("v1/namespaces", namespace, {"metadata": {"labels": {STORE_LABEL: "main"}}})
    by_namespace = _admit_pod(operator.webhook_port, ca_pem, namespace, None)
    assert "runlog-relay" in base64.b64decode(by_namespace["patch"]).decode()
    # A store naming a Secret its author may not read: the webhook asks the authorizer.
    spec = {"endpoint": s3.endpoint, "credentialsSecretRef": {"name": "creds"}}
    review = _store_review(namespace, spec, "system:serviceaccount:team-a:deployer")
    refused = _post_review(operator.webhook_port, ca_pem, "/validate-runlogstores", review)
    assert refused["allowed"] is False and refused["status"]["code"] == 403

    kube.delete(RLS, "main", namespace)
    kube.wait_gone("v1/configmaps", "runlog-relay-main", namespace)  # the GC's, not ours


def _operator_accesses(kube: KubeHarness) -> list[Access]:
    requests = kube.call(lambda: list(kube.emulator))
    accesses = []
    for request in requests:
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith(OPERATOR_AGENTS):
            continue  # the test's own client
        access = access_of(str(request.method.value).upper(), str(request.url))
        if access is not None:
            accesses.append(access)
    return accesses


@pytest.mark.parametrize("served", [None, [SERVED]], ids=["cluster-wide", "namespaced"])
def test_the_operator_needs_exactly_what_the_chart_grants(
    kube: KubeHarness, start_operator: Any, s3_server: S3Server, served: list[str] | None
) -> None:
    values: dict[str, Any] = {"watchNamespaces": served or []}
    operator = start_operator(values)

    _run_a_typical_life(kube, operator, s3_server, SERVED)

    operator.process.send_signal(signal.SIGTERM)
    assert operator.process.wait(30) == 0, operator.log.read_text()
    granted = _granted_by_the_chart(values)
    flags = permissions.flags_for(clusterwide=served is None)
    names = {"webhook_config_name": RELEASE, "webhook_cert_secret": f"{RELEASE}-webhook-cert"}
    assert granted == permissions.required(flags, names)
    accesses = _operator_accesses(kube)
    assert accesses, "no request of the operator was seen"
    denied = sorted({str(a) for a in accesses if not allowed(a, granted, served)})
    assert not denied, "the operator made requests the chart does not allow:\n" + "\n".join(denied)
    used = {(a.group, a.resource, a.verb) for a in accesses}
    unused = sorted(
        (group, resource, verb)
        for rule in granted.all_rules()
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
        if (group, resource, verb) not in used and (group, resource, verb) not in NOT_EXERCISED
    )
    assert not unused, f"granted but never used: {unused}"
    # What the webhook's patch in self-signed mode asked for: only the chart's configurations.
    webhook_names = {a.name for a in accesses if a.resource.endswith("webhookconfigurations")}
    assert webhook_names == {RELEASE}
