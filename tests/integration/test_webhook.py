"""The admission webhooks, served by the real kopf operator over HTTPS.

The operator is the product's own (``build_operator`` with webhooks on, self-signed
TLS), run by the harness against the Kubernetes emulator, which holds chart-like
Mutating/ValidatingWebhookConfigurations named ``runlog-relay``. Each test reads the
caBundle the operator wrote into them and sends AdmissionReviews as the API server
would: over HTTPS, trusting only that bundle, checking the certificate for the Service's
DNS name. The returned JSONPatch is applied to the pod with the ``jsonpatch`` library and
the result validated against the Kubernetes 1.30 schema (kubernetes-validate, strict).

The end-to-end test then runs the injected container as a real process -- its command,
args and env; its mounts materialised from the emulator's ConfigMap and Secret into temp
folders -- next to a real runnable pipeline, and checks the bucket mirrors the run.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from runlog_relay.operator.webhook_tls import issue_certificate, make_ca, signed_by
from runlog_relay.runnable_compat import run_pipeline
from tests.integration.kube import KubeHarness
from tests.integration.kube.kopf_runner import KopfRunner
from tests.integration.kube.webhooks import (
    K8S,
    MUTATING,
    NS,
    OTHER_NS,
    RLS,
    SERVICE_DNS,
    SERVICE_NS,
    VALIDATING,
    Cluster,
    prepare,
    webhook_configuration,
)
from tests.support.admission import AdmissionClient, ReviewAnswer, admission_review, pod_review
from tests.support.mirror import assert_mirror
from tests.support.s3server import AuthS3, free_port
from tests.support.waiting import wait_until

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = pytest.mark.integration

_buckets = itertools.count()


@pytest.fixture(scope="module")
def s3(auth_s3: AuthS3) -> AuthS3:
    """The signature-checking S3 server (tests/conftest.py), under this module's name."""
    return auth_s3


@pytest.fixture()
def cluster(kube: KubeHarness, kopf_runner: KopfRunner, s3: AuthS3) -> Cluster:
    prepare(kube)
    return Cluster(kube, kopf_runner, s3)


@pytest.fixture()
def bucket(s3: AuthS3) -> str:
    name = f"webhook-runs-{next(_buckets)}"
    s3.client().make_bucket(name)
    return name


@pytest.fixture()
def ready_cluster(cluster: Cluster, bucket: str) -> Cluster:
    cluster.start()
    cluster.put_creds()
    cluster.create_store("main", bucket)
    return cluster


# --------------------------------------------------------------------------- pods


def container(name: str = "main", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "ghcr.io/example/pipeline:1.0",
        "command": ["runnable", "execute-single-node"],
        **extra,
    }


def bare_pod(name: str = "pipeline", store: str = "main", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"runlog-relay.dev/store": store}},
        "spec": {"restartPolicy": "Never", "containers": [container()], **spec},
    }


def job_pod() -> dict[str, Any]:
    """A pod as the Job controller creates it for runnable's k8s-job executor: container
    ``default``, the executor's PVC at /tmp/run_logs and /tmp/catalog."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "runnable-job-",
            "namespace": NS,
            "labels": {
                "runlog-relay.dev/store": "main",
                "batch.kubernetes.io/job-name": "runnable-job",
                "job-name": "runnable-job",
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": "runnable-job",
                    "uid": "6c1c7a3e-3c3e-4f8e-9d7a-0d6f3e3f1a11",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                container(
                    "default",
                    command=["runnable", "execute-job", "job.py", "run-1"],
                    volumeMounts=[
                        {"name": "runnable", "mountPath": "/tmp/run_logs/"},
                        {"name": "runnable", "mountPath": "/tmp/catalog/"},
                    ],
                )
            ],
            "volumes": [{"name": "runnable", "persistentVolumeClaim": {"claimName": "runnable"}}],
        },
    }


def argo_pod(
    *, default_container: bool = True, volume_annotation: str | None = None
) -> dict[str, Any]:
    """A pod as Argo's controller makes it for a runnable step with pvc_for_runnable."""
    annotations = {"workflows.argoproj.io/node-name": "runnable-dag.hello"}
    if default_container:
        annotations["kubectl.kubernetes.io/default-container"] = "main"
    if volume_annotation:
        annotations["runlog-relay.dev/volume"] = volume_annotation
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "runnable-dag-hello-123",
            "namespace": NS,
            "labels": {"runlog-relay.dev/store": "main", "workflows.argoproj.io/workflow": "wf"},
            "annotations": annotations,
        },
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                container(
                    "init", volumeMounts=[{"name": "var-run-argo", "mountPath": "/var/run/argo"}]
                )
            ],
            "containers": [
                container(
                    "wait",
                    volumeMounts=[
                        {"name": "tmp-dir-argo", "mountPath": "/tmp", "subPath": "0"},
                        {"name": "var-run-argo", "mountPath": "/var/run/argo"},
                    ],
                ),
                container(
                    "main",
                    volumeMounts=[
                        {"name": "runnable", "mountPath": "/tmp"},
                        {"name": "var-run-argo", "mountPath": "/var/run/argo"},
                    ],
                ),
            ],
            "volumes": [
                {"name": "var-run-argo", "emptyDir": {}},
                {"name": "tmp-dir-argo", "emptyDir": {}},
                {"name": "runnable", "persistentVolumeClaim": {"claimName": "runnable-pvc"}},
            ],
        },
    }


def sidecar_of(pod: dict[str, Any], where: str = "initContainers") -> dict[str, Any]:
    found = [c for c in pod["spec"].get(where) or [] if c["name"] == "runlog-relay"]
    assert len(found) == 1, pod["spec"]
    return found[0]


def log_mount(sidecar: dict[str, Any]) -> dict[str, Any]:
    mounts = [m for m in sidecar["volumeMounts"] if not m["name"].startswith("runlog-relay-")]
    mounts += [m for m in sidecar["volumeMounts"] if m["name"] == "runlog-relay-logs"]
    assert len(mounts) == 1, sidecar["volumeMounts"]
    return mounts[0]


def check_injected(
    answer: ReviewAnswer, pod: dict[str, Any], where: str = "initContainers"
) -> dict[str, Any]:
    patched = answer.patched(pod)
    kubernetes_validate.validate(patched, K8S, strict=True)
    assert patched["metadata"]["annotations"]["runlog-relay.dev/injected"] == "main"
    sidecar = sidecar_of(patched, where)
    assert sidecar["args"] == ["sidecar", "--config", "/etc/runlog-relay/config.yaml"]
    context = sidecar["securityContext"]
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["ports"] == [{"name": "relay-metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert log_mount(sidecar)["readOnly"] is True
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    assert volumes["runlog-relay-config"]["configMap"]["name"] == "runlog-relay-main"
    assert volumes["runlog-relay-credentials"]["secret"]["secretName"] == "s3-creds"
    return patched


# --------------------------------------------------------------------------- tests: pods


def test_plain_pod_without_volume_gets_a_native_sidecar_and_an_emptydir(
    ready_cluster: Cluster,
) -> None:
    pod = bare_pod()
    before = len(ready_cluster.kube.access_log())
    answer = ready_cluster.admit(pod)

    patched = check_injected(answer, pod)
    sidecar = patched["spec"]["initContainers"][0]
    assert sidecar["name"] == "runlog-relay" and sidecar["restartPolicy"] == "Always"
    logs = {"name": "runlog-relay-logs", "emptyDir": {"sizeLimit": "1Gi"}}
    assert logs in patched["spec"]["volumes"]
    main = patched["spec"]["containers"][0]
    assert {"name": "runlog-relay-logs", "mountPath": "/tmp/run_logs"} in main["volumeMounts"]
    assert log_mount(sidecar) == {
        "name": "runlog-relay-logs",
        "mountPath": "/tmp/run_logs",
        "readOnly": True,
    }
    assert not answer.warnings
    assert ready_cluster.metric("injected") == 1
    # The store came from the operator's index: the webhook read nothing from the API.
    during = ready_cluster.kube.access_log()[before:]
    assert [r for r in during if "/runlogstores/" in r.path and r.method == "GET"] == []


def test_job_pod_gets_the_sidecar_first_among_init_containers(ready_cluster: Cluster) -> None:
    pod = job_pod()
    pod["spec"]["initContainers"] = [container("fetch-code", command=["git", "clone"])]
    answer = ready_cluster.admit(pod)

    patched = check_injected(answer, pod)
    init = patched["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["runlog-relay", "fetch-code"]
    assert init[0]["restartPolicy"] == "Always"  # native: the Job completes without it
    # The executor's PVC holds the log folder: the sidecar reads it there, read-only.
    assert log_mount(init[0]) == {
        "name": "runnable",
        "mountPath": "/tmp/run_logs",
        "readOnly": True,
    }
    assert len(patched["spec"]["volumes"]) == 3  # runnable + config + credentials
    assert patched["spec"]["containers"] == pod["spec"]["containers"]


def test_volume_by_mount_path_and_by_default_container(ready_cluster: Cluster) -> None:
    pod = argo_pod()
    answer = ready_cluster.admit(pod)

    patched = check_injected(answer, pod)
    # Argo's wait container has its own emptyDir at /tmp; the default container is main.
    assert log_mount(sidecar_of(patched)) == {
        "name": "runnable",
        "mountPath": "/tmp",
        "readOnly": True,
    }


def test_volume_by_annotation(ready_cluster: Cluster) -> None:
    ambiguous = argo_pod(default_container=False)
    skipped = ready_cluster.admit(ambiguous).patched(ambiguous)
    assert skipped["metadata"]["annotations"]["runlog-relay.dev/skipped"].startswith(
        "VolumeAmbiguous: "
    )

    pod = argo_pod(default_container=False, volume_annotation="runnable")
    patched = check_injected(ready_cluster.admit(pod), pod)
    assert log_mount(sidecar_of(patched))["name"] == "runnable"


def test_classic_sidecar_by_annotation(ready_cluster: Cluster) -> None:
    pod = bare_pod(
        volumes=[{"name": "logs", "persistentVolumeClaim": {"claimName": "logs"}}],
        containers=[container(volumeMounts=[{"name": "logs", "mountPath": "/tmp/run_logs"}])],
    )
    pod["metadata"]["annotations"] = {"runlog-relay.dev/sidecar-mode": "classic"}
    answer = ready_cluster.admit(pod)

    patched = check_injected(answer, pod, where="containers")
    sidecar = patched["spec"]["containers"][-1]
    assert "restartPolicy" not in sidecar
    assert "initContainers" not in patched["spec"]
    assert log_mount(sidecar) == {"name": "logs", "mountPath": "/tmp/run_logs", "readOnly": True}


def test_already_injected_pod_is_left_alone(ready_cluster: Cluster) -> None:
    pod = bare_pod()
    patched = check_injected(ready_cluster.admit(pod), pod)

    again = ready_cluster.admit(patched)  # a reinvocation, or a pod re-created from it

    assert again.patch == []
    assert ready_cluster.metric("injected") == 1


def test_store_of_another_namespace_is_never_used(ready_cluster: Cluster, bucket: str) -> None:
    ready_cluster.put_creds(namespace=OTHER_NS)
    ready_cluster.create_store("elsewhere", bucket, OTHER_NS)
    pod = bare_pod(store="elsewhere")

    patched = ready_cluster.admit(pod).patched(pod)

    kubernetes_validate.validate(patched, K8S, strict=True)
    assert "initContainers" not in patched["spec"]
    assert patched["spec"] == pod["spec"]
    skipped = patched["metadata"]["annotations"]["runlog-relay.dev/skipped"]
    assert skipped.startswith("StoreNotFound: ") and "'team-a'" in skipped


def test_missing_store_annotates_the_pod_and_posts_an_event(ready_cluster: Cluster) -> None:
    pod = job_pod()
    pod["metadata"]["labels"]["runlog-relay.dev/store"] = "nope"

    answer = ready_cluster.admit(pod)

    patched = answer.patched(pod)
    kubernetes_validate.validate(patched, K8S, strict=True)
    assert patched["spec"] == pod["spec"]
    assert patched["metadata"]["annotations"]["runlog-relay.dev/skipped"].startswith(
        "StoreNotFound: RunLogStore 'nope' not found"
    )
    assert any("not injected" in w for w in answer.warnings)
    # On the Job (the pod has no name or uid yet): `kubectl describe job` shows it.
    events = ready_cluster.wait(
        lambda: ready_cluster.kube.events(NS, involved_name="runnable-job", involved_kind="Job"),
        "the Event about the pod",
    )
    assert events[0]["type"] == "Warning"
    assert events[0]["reason"] == "RunLogRelayStoreNotFound"
    assert events[0]["involvedObject"]["uid"] == pod["metadata"]["ownerReferences"][0]["uid"]
    assert "runnable-job-<generated>" in events[0]["message"]
    assert ready_cluster.metric("skipped") == 1


def test_unlabelled_pod_and_wrong_path_get_no_patch(ready_cluster: Cluster) -> None:
    pod = bare_pod()
    del pod["metadata"]["labels"]
    assert ready_cluster.admit(pod).patch == []
    labelled = bare_pod()
    # kopf routes /<handler id>: the store validator does not touch pods.
    assert ready_cluster.admit(labelled, path="/validate-runlogstores").patch == []


def wait_reason(cluster: Cluster, name: str, reason: str) -> None:
    def check() -> bool:
        status = cluster.kube.get(RLS, name, NS).get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        return bool(ready) and ready[0]["reason"] == reason

    cluster.wait(check, f"RunLogStore {name} Ready reason {reason}")


def test_not_ready_store_is_injected_by_default_with_a_warning(cluster: Cluster) -> None:
    cluster.start()
    cluster.put_creds()
    cluster.create_store("waiting", "no-such-bucket-here", wait=False)
    pod = bare_pod(store="waiting")
    # The store's reconcile ends at BucketNotFound (the sidecar can start, and wait); the
    # status reaches the webhook's index a moment after the API object.
    cluster.wait_webhook_warns(pod, "Ready=False (BucketNotFound)")

    answer = cluster.admit(pod)

    patched = answer.patched(pod)
    kubernetes_validate.validate(patched, K8S, strict=True)
    assert patched["metadata"]["annotations"]["runlog-relay.dev/injected"] == "waiting"
    assert any("is not Ready (Ready=False (BucketNotFound))" in w for w in answer.warnings)
    secret = {v["name"]: v for v in patched["spec"]["volumes"]}["runlog-relay-credentials"]
    assert secret["secret"]["optional"] is True


def test_store_without_its_secret_is_injected_with_a_warning(cluster: Cluster) -> None:
    """The Secret comes later (GitOps ordering): the sidecar is injected with optional
    volumes and waits for them, so the pod starts and its logs are mirrored later."""
    cluster.start()
    cluster.create_store("early", "some-bucket", wait=False)  # its Secret comes later
    wait_reason(cluster, "early", "SecretNotFound")
    pod = bare_pod(store="early")

    answer = cluster.admit(pod)
    patched = answer.patched(pod)

    kubernetes_validate.validate(patched, K8S, strict=True)
    assert patched["metadata"]["annotations"]["runlog-relay.dev/injected"] == "early"
    assert any("Secret 's3-creds'" in w and "waits for it" in w for w in answer.warnings)

    cluster.put_creds()  # the store's next pods get the sidecar
    wait_reason(cluster, "early", "BucketNotFound")
    assert cluster.admit(pod).patched(pod)["metadata"]["annotations"] == {
        "runlog-relay.dev/injected": "early"
    }


def test_not_ready_store_is_skipped_when_so_configured(cluster: Cluster) -> None:
    cluster.start(inject_when_not_ready=False)
    cluster.put_creds()
    cluster.create_store("waiting", "no-such-bucket-here", wait=False)
    wait_reason(cluster, "waiting", "BucketNotFound")
    pod = bare_pod(store="waiting")

    patched = cluster.admit(pod).patched(pod)

    assert patched["spec"] == pod["spec"]
    skipped = patched["metadata"]["annotations"]["runlog-relay.dev/skipped"]
    assert skipped.startswith("StoreNotReady: ") and "--no-inject-when-not-ready" in skipped


# --------------------------------------------------------------------------- tests: TLS


def test_ca_bundle_is_written_and_kept_in_both_configurations(cluster: Cluster) -> None:
    cluster.start()
    first = cluster.ca_bundle()
    assert first is not None and b"BEGIN CERTIFICATE" in first
    # The rest of the chart's objects is untouched.
    for resource, kind in (
        (MUTATING, "MutatingWebhookConfiguration"),
        (VALIDATING, "ValidatingWebhookConfiguration"),
    ):
        stored = cluster.kube.get(resource, "runlog-relay")["webhooks"][0]
        expected = webhook_configuration(kind)["webhooks"][0]
        stored["clientConfig"].pop("caBundle")
        assert stored == expected

    # A `helm upgrade` resets it: the operator puts it back.
    cluster.kube.patch(
        MUTATING,
        "runlog-relay",
        [{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}],
        type="json",
    )
    assert cluster.wait(cluster.ca_bundle, "the caBundle to be restored") == first

    # The server presents a certificate for the Service that this bundle verifies
    # (AdmissionClient checks both), on the path the chart points at.
    pod = bare_pod()
    pod["metadata"]["labels"]["runlog-relay.dev/store"] = "absent"
    assert cluster.admit(pod).allowed


#: Lifetimes short enough to live through, in order: renewals of the serving certificate
#: under the first CA (every 2 s: 9 s valid, renewed 7 s before the end, so a stall of
#: the test process shorter than 7 s never lets one expire), the CA's renewal 10 s in
#: (30 s valid, renewed 20 s before; a certificate must fit in the 10 s between), and 3 s
#: later the certificate signed by the new CA, once the bundle has carried it that long.
ROTATING = {
    "cert_validity_hours": 9 / 3600,
    "cert_renew_before_hours": 7 / 3600,
    "ca_validity_hours": 30 / 3600,
    "ca_renew_before_hours": 20 / 3600,
    "ca_propagation_seconds": 3.0,
}


def _certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def test_certificates_and_the_ca_rotate_while_the_api_server_keeps_calling(
    cluster: Cluster,
) -> None:
    """End to end, as a year and a decade pass in seconds: the operator renews the serving
    certificate and then its CA in the shared Secret, the server loads each renewal live,
    the new CA reaches both webhook configurations before it signs anything, and an API
    server that trusts whatever caBundle the configurations hold at each call is never
    refused, before, during or after the rotations."""
    cluster.start(webhook=ROTATING)
    assert cluster.client is not None
    port = cluster.client.port
    secret_path = ("v1/secrets", "runlog-relay-webhook-cert", SERVICE_NS)

    def stored() -> dict[str, bytes]:
        data = cluster.kube.get(*secret_path)["data"]
        return {key: base64.b64decode(value) for key, value in data.items()}

    def served() -> x509.Certificate:
        pem = ssl.get_server_certificate(("127.0.0.1", port)).encode("ascii")
        return x509.load_pem_x509_certificate(pem)

    calls: list[str] = []
    stop = threading.Event()

    def api_server() -> None:
        pod = bare_pod()
        pod["metadata"]["labels"]["runlog-relay.dev/store"] = "absent"
        review = pod_review(pod, NS)
        while not stop.is_set():
            bundle = cluster.ca_bundle()
            if bundle is None:  # a configuration being rewritten: the next call reads it
                stop.wait(0.01)
                continue
            try:
                answer = AdmissionClient(port, bundle, SERVICE_DNS).post("/mutate-pods", review)
                calls.append("ok" if answer.status == 200 and answer.allowed else repr(answer))
            except (OSError, ssl.SSLError) as exc:
                calls.append(f"{type(exc).__name__}: {exc}")
            stop.wait(0.05)  # the pace of the calls, not a wait for a condition

    caller = threading.Thread(target=api_server, daemon=True)
    caller.start()
    try:
        (first_ca,) = _certificates(stored()["ca.crt"])
        initial = served()

        def serving_the_secrets_renewal() -> x509.Certificate | None:
            leaf = served()  # the Secret may be renewed again between the two reads: retried
            return (
                leaf if leaf != initial and leaf == _certificates(stored()["tls.crt"])[0] else None
            )

        # The serving certificate is renewed under the same CA, and the server loads it.
        renewed = cluster.wait(serving_the_secrets_renewal, "a renewed certificate to be served")
        assert signed_by(renewed, first_ca)

        # A new CA joins the bundle (the current one first) in the Secret and in both
        # configurations.
        bundle = cluster.wait(
            lambda: len(cas := _certificates(stored()["ca.crt"])) == 2 and cas,
            "a new CA to join the bundle",
        )
        new_ca, old_ca = bundle
        assert old_ca == first_ca and new_ca != first_ca
        assert signed_by(new_ca, new_ca) and not signed_by(new_ca, first_ca)

        def configured() -> list[x509.Certificate]:
            pem = cluster.ca_bundle()  # None while the two configurations differ
            return _certificates(pem) if pem is not None else []

        cluster.wait(
            lambda: configured() == bundle, "the new bundle to reach both webhook configurations"
        )

        # Then, and only then, the certificate signed by the new CA is served: issued at
        # least the propagation time after the CA (both are backdated alike, to the second).
        leaf = cluster.wait(
            lambda: signed_by(leaf := served(), new_ca) and leaf,
            "a certificate of the new CA to be served",
        )
        waited = leaf.not_valid_before_utc - new_ca.not_valid_before_utc
        assert waited >= datetime.timedelta(seconds=ROTATING["ca_propagation_seconds"]), waited
        ok_before = calls.count("ok")
        cluster.wait(lambda: calls.count("ok") > ok_before, "a call under the new CA")
    finally:
        stop.set()
        caller.join(10)
    failures = [call for call in calls if call != "ok"]
    assert calls and not failures, failures[:5]


def test_certificate_directory_mode_serves_that_certificate_and_leaves_the_ca_bundle(
    cluster: Cluster, tmp_path: Path
) -> None:
    """cert-manager mode: tls.crt/tls.key from a directory; its CA injector, not the
    operator, owns the caBundle."""
    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = make_ca("cert-manager's CA", now=now, validity=datetime.timedelta(days=1))
    cert, key = issue_certificate(
        ca, ca_key, [SERVICE_DNS], now=now, validity=datetime.timedelta(hours=1)
    )
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(ca)
    cluster.start(cert_dir=tmp_path)  # the client trusts only this CA

    pod = bare_pod()
    pod["metadata"]["labels"]["runlog-relay.dev/store"] = "absent"
    assert cluster.admit(pod).patch  # served (an annotation) over HTTPS with that cert
    # No keeper exists, so nothing can write the caBundle later: no need to wait and see.
    assert cluster.operator is not None and cluster.operator.ca_keeper is None
    webhooks = cluster.kube.get(MUTATING, "runlog-relay")["webhooks"]
    assert "caBundle" not in webhooks[0]["clientConfig"]


# --------------------------------------------------------------------------- tests: stores


#: A developer of team-a, allowed to read its Secrets (see grant_secret_reading).
ALICE = {"username": "alice", "groups": ["team-a-devs", "system:authenticated"]}


def grant_secret_reading(kube: KubeHarness, group: str = "team-a-devs") -> None:
    """RBAC in the emulator: ``group`` may read the Secrets of team-a."""
    rbac = "rbac.authorization.k8s.io/v1"
    kube.create(
        f"{rbac}/roles",
        {
            "metadata": {"name": "secret-reader", "namespace": NS},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
        },
        NS,
    )
    kube.create(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "devs-read-secrets", "namespace": NS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "secret-reader",
            },
            "subjects": [{"kind": "Group", "name": group}],
        },
        NS,
    )


def store_review(
    spec: dict[str, Any],
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    user: dict[str, Any] | None = ALICE,
) -> dict[str, Any]:
    def body(spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "runlog-relay.dev/v1alpha1",
            "kind": "RunLogStore",
            "metadata": {"name": "new", "namespace": NS},
            "spec": spec,
        }

    return admission_review(
        body(spec),
        group="runlog-relay.dev",
        version="v1alpha1",
        resource="runlogstores",
        kind="RunLogStore",
        namespace=NS,
        operation=operation,
        old=body(old) if old is not None else None,
        name="new",
        user=user,
    )


def test_store_validation_warns_about_secrets_and_denies_what_the_schema_cannot(
    cluster: Cluster,
) -> None:
    cluster.start(allow_errors=True)  # kopf logs each denial as a failed handler
    assert cluster.client is not None
    grant_secret_reading(cluster.kube)
    missing = {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "later"}}

    answer = cluster.client.post("/validate-runlogstores", store_review(missing))

    assert answer.allowed  # a store before its Secret is a normal GitOps order
    assert answer.warnings == [
        "Secret 'later' not found in namespace 'team-a' (spec.credentialsSecretRef.name);"
        " the store stays NotReady until it exists"
    ]

    cluster.put_creds("later")
    wrong_key = {**missing, "credentialsSecretRef": {"name": "later", "accessKeyIdKey": "id"}}
    answer = cluster.client.post("/validate-runlogstores", store_review(wrong_key))
    assert answer.allowed
    assert answer.warnings == [
        "Secret 'later' has no key 'id' (spec.credentialsSecretRef.accessKeyIdKey); the store"
        " stays NotReady until it does"
    ]
    assert not cluster.client.post("/validate-runlogstores", store_review(missing)).warnings

    # The schema's pattern lets user:password@ through; the model does not.
    leaky = {"endpoint": "http://user:secret@minio:9000"}
    answer = cluster.client.post("/validate-runlogstores", store_review(leaky))
    assert not answer.allowed
    assert answer.response["status"]["code"] == 422
    message = answer.response["status"]["message"]
    assert (
        "spec.endpoint" in message
        and "credentials" in message
        and "secret" not in message.replace("a Secret", "")
    )

    # An update that leaves a (bad) spec alone is not refused: metadata writes go through.
    answer = cluster.client.post("/validate-runlogstores", store_review(leaky, "UPDATE", old=leaky))
    assert answer.allowed


# --------------------------------------------------------------------------- end to end


@dataclass
class Materialised:
    """The sidecar container's filesystem view, as temp folders on this machine."""

    mounts: dict[str, Path]  # mountPath in the container → folder here

    def host_path(self, container_path: str) -> str:
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            if container_path == mount_path or container_path.startswith(
                mount_path.rstrip("/") + "/"
            ):
                rest = container_path[len(mount_path) :].lstrip("/")
                return str(self.mounts[mount_path] / rest) if rest else str(self.mounts[mount_path])
        return container_path

    def translate(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("/"):
            return self.host_path(value)
        if isinstance(value, dict):
            return {k: self.translate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.translate(v) for v in value]
        return value


def materialise(
    kube: KubeHarness, pod: dict[str, Any], sidecar: dict[str, Any], root: Path
) -> Materialised:
    """Fill a folder per volumeMount as the kubelet would: ConfigMap keys and Secret items
    as files; the run-log volume an empty folder shared with the pipeline."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts: dict[str, Path] = {}
    for index, mount in enumerate(sidecar["volumeMounts"]):
        folder = root / f"mount-{index}-{mount['name']}"
        folder.mkdir(parents=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = kube.get("v1/configmaps", volume["configMap"]["name"], NS)["data"]
            for key, value in data.items():
                (folder / key).write_text(value)
        elif "secret" in volume:
            data = kube.get("v1/secrets", volume["secret"]["secretName"], NS)["data"]
            for item in volume["secret"]["items"]:
                (folder / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        mounts[mount["mountPath"]] = folder
    view = Materialised(mounts)
    # config.yaml names container paths (the log folder, the credential files): in this
    # process's "mount namespace" they are the folders above.
    for folder in mounts.values():
        for file in folder.glob("*.yaml"):
            config = yaml.safe_load(file.read_text())
            file.write_text(yaml.safe_dump(view.translate(config)))
    return view


def test_injected_sidecar_runs_and_mirrors_a_real_runnable_run(
    ready_cluster: Cluster, bucket: str, tmp_path: Path
) -> None:
    pod = job_pod()
    patched = check_injected(ready_cluster.admit(pod), pod)
    sidecar = sidecar_of(patched)
    view = materialise(ready_cluster.kube, patched, sidecar, tmp_path / "pod")

    command = sidecar["command"] + view.translate(sidecar["args"])
    assert command[0] == "runlog-relay"
    command[0] = str(Path(sys.executable).with_name("runlog-relay"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNLOG_RELAY_"))}
    env.update({e["name"]: e["value"] for e in sidecar["env"]})
    assert env["RUNLOG_RELAY_METRICS_PORT"] == "9464"
    port = free_port()  # this machine's network is shared: not 9464 itself
    env["RUNLOG_RELAY_METRICS_PORT"] = str(port)
    env["RUNLOG_RELAY_METRICS_HOST"] = "127.0.0.1"
    log_path = tmp_path / "sidecar.log"

    def probe(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:

        def ready() -> bool:
            assert process.poll() is None, log_path.read_text()
            return probe(sidecar["readinessProbe"]["httpGet"]["path"]) == 200

        wait_until(ready, timeout=30, what="the sidecar's readiness probe")
        assert probe(sidecar["livenessProbe"]["httpGet"]["path"]) == 200

        log_folder = Path(view.host_path("/tmp/run_logs"))  # the store's logFolder
        # The pod's command names run-1 (``runnable execute-job job.py run-1``), so the
        # webhook gives the sidecar RUNLOG_RELAY_RUN_IDS=run-1: that run is the one mirrored.
        run_pipeline(log_folder, "run-1", layout="chunked")
        time.sleep(0.2)  # let a few writes land while it runs, as in a pod
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the kubelet stopping the native sidecar
        code = process.wait(60)
    assert code == 0, log_path.read_text()  # 0: the mirror was complete at exit
    assert ready_cluster.s3.secret_key not in log_path.read_text()
    assert_mirror(ready_cluster.s3.client(), bucket, "run-logs", log_folder, layout="chunked")
    assert any(log_folder.glob("run-1/RunLog.json"))


def test_a_store_may_only_name_secrets_its_author_may_read(cluster: Cluster) -> None:
    """The confused deputy, end to end: the webhook asks the API server's authorizer
    (the emulator's RBAC objects) whether the requester may read each named Secret."""
    cluster.start(allow_errors=True)
    assert cluster.client is not None
    grant_secret_reading(cluster.kube)
    cluster.put_creds()
    spec = {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "s3-creds"}}

    assert cluster.client.post("/validate-runlogstores", store_review(spec)).allowed
    bob = {"username": "bob", "groups": ["other-team", "system:authenticated"]}
    refused = cluster.client.post("/validate-runlogstores", store_review(spec, user=bob))
    assert not refused.allowed and refused.response["status"]["code"] == 403
    assert "bob may not read Secret 's3-creds'" in refused.response["status"]["message"]
    # bob may not redirect a store's Secret to his endpoint either ...
    moved = {**spec, "endpoint": "https://collector.example.com"}
    answer = cluster.client.post("/validate-runlogstores", store_review(moved, "UPDATE", spec, bob))
    assert not answer.allowed
    # ... but may tune one, which sends the keys nowhere new.
    tuned = {**spec, "sync": {"concurrency": 2}}
    assert cluster.client.post(
        "/validate-runlogstores", store_review(tuned, "UPDATE", spec, bob)
    ).allowed
    asked = cluster.kube.call(lambda: list(cluster.kube.emulator.access_reviews))
    assert {(r["spec"]["user"], r["allowed"]) for r in asked} == {("alice", True), ("bob", False)}


def test_endpoints_outside_the_allow_list_get_no_store_and_no_sidecar(
    cluster: Cluster, bucket: str
) -> None:
    cluster.start(allow_errors=True, allowed_endpoints=["http://minio.storage.svc:9000"])
    assert cluster.client is not None
    grant_secret_reading(cluster.kube)
    cluster.put_creds()
    internal = {"endpoint": "http://169.254.169.254", "credentialsSecretRef": {"name": "s3-creds"}}
    refused = cluster.client.post("/validate-runlogstores", store_review(internal))
    assert not refused.allowed and "allow-list" in refused.response["status"]["message"]
    # A store that got in anyway (the webhook was down, say) is not connected to ...
    cluster.create_store("sneaky", bucket, wait=False)
    wait_reason(cluster, "sneaky", "EndpointNotAllowed")
    # ... and its pods get no sidecar carrying its credentials there.
    pod = bare_pod(store="sneaky")
    cluster.wait_webhook_warns(pod, "not in the operator's allow-list")
    patched = cluster.admit(pod).patched(pod)
    assert patched["spec"] == pod["spec"]
    assert patched["metadata"]["annotations"]["runlog-relay.dev/skipped"].startswith(
        "EndpointNotAllowed"
    )
