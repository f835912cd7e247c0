"""The examples in manifests/examples/ stay valid, and do what they say.

Kubernetes kinds are validated against the 1.30 schema (kubernetes-validate, strict);
RunLogStores against the CRD schema generated from the models (jsonschema) and the model
itself; the Argo Workflow (Argo's CRD is not bundled) is parsed and its pod label
checked. Beyond the schemas: the opted-in pods really get the sidecar, and the shared-PVC
Deployment mounts the store's files where its rendered config says they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from runlog_relay.config.crd import crd_manifest
from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.operator import reconcile as rc
from runlog_relay.operator import webhook as wh
from runlog_relay.operator.settings import InjectionSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
K8S = "1.30"
EXPECTED = {
    "runlogstore.yaml",
    "runlogstore-irsa.yaml",
    "k8s-job.yaml",
    "argo-workflow.yaml",
    "shared-pvc-deployment.yaml",
}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def by_kind(name: str, kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents(name) if d["kind"] == kind]
    return found


def store_info() -> wh.StoreInfo:
    store = by_kind("runlogstore.yaml", "RunLogStore")
    return wh.StoreInfo(
        namespace=store["metadata"]["namespace"],
        name=store["metadata"]["name"],
        spec=store["spec"],
        ready="True",
    )


def test_the_examples_are_all_there() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_document_is_valid(name: str) -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in documents(name):
        if doc["apiVersion"] == "runlog-relay.dev/v1alpha1":
            jsonschema.validate(doc, schema)
            rc.parse_spec(doc["spec"])  # and what only the model checks
        elif doc["apiVersion"].startswith("argoproj.io/"):
            assert doc["kind"] == "Workflow"
            assert doc["spec"]["podMetadata"]["labels"][wh.STORE_LABEL] == "main"
            templates = {t["name"] for t in doc["spec"]["templates"]}
            assert doc["spec"]["entrypoint"] in templates
        else:
            kubernetes_validate.validate(doc, K8S, strict=True)


def test_examples_share_one_namespace_store_and_secret() -> None:
    store = by_kind("runlogstore.yaml", "RunLogStore")
    secret = by_kind("runlogstore.yaml", "Secret")
    ref = store["spec"]["credentials"]["secretRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) == {ref["accessKeyIdKey"], ref["secretAccessKeyKey"]}
    for name in EXPECTED:
        for doc in documents(name):
            assert doc["metadata"]["namespace"] == "team-a", (name, doc["kind"])


def inject(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    decision = wh.decide_injection(
        pod, namespace="team-a", store=store_info(), options=InjectionSettings(), native=True
    )
    assert decision.outcome is wh.Outcome.INJECTED, decision
    assert not decision.warnings, decision.warnings
    patched = wh.apply_json_patch(pod, decision.ops)
    kubernetes_validate.validate(patched, K8S, strict=True)
    return patched, patched["spec"]["initContainers"][0]


def test_k8s_job_pod_gets_the_sidecar_on_the_executors_pvc() -> None:
    job = by_kind("k8s-job.yaml", "Job")
    template = job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **template["metadata"],
            "generateName": "runnable-job-x-",
            "namespace": "team-a",
        },
        "spec": template["spec"],
    }
    _, sidecar = inject(pod)
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["volumeMounts"][0] == {
        "name": "runnable",
        "mountPath": "/tmp/run_logs",
        "readOnly": True,
    }
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["RUNLOG_RELAY_RUN_IDS"] == job["metadata"]["name"]  # runnable's run id
    assert sidecar["resources"]["requests"] == sidecar["resources"]["limits"]  # Guaranteed


def test_argo_step_pod_gets_the_sidecar_on_the_runnable_pvc() -> None:
    """A step pod as Argo builds it from the template: its `main` container, Argo's
    `wait` container with its own emptyDir at /tmp, and the workflow's podMetadata."""
    workflow = documents("argo-workflow.yaml")[0]
    step = next(t for t in workflow["spec"]["templates"] if "container" in t)
    meta = workflow["spec"]["podMetadata"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "runnable-dag-abcde-hello-123",
            "namespace": "team-a",
            "labels": {**meta["labels"], "workflows.argoproj.io/workflow": "runnable-dag-abcde"},
            "annotations": {
                **meta["annotations"],
                "kubectl.kubernetes.io/default-container": "main",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "wait",
                    "image": "quay.io/argoproj/argoexec:v3.6.0",
                    "volumeMounts": [{"name": "tmp-dir-argo", "mountPath": "/tmp", "subPath": "0"}],
                },
                {"name": "main", **step["container"]},
            ],
            "volumes": [*workflow["spec"]["volumes"], {"name": "tmp-dir-argo", "emptyDir": {}}],
        },
    }
    _, sidecar = inject(pod)
    assert sidecar["volumeMounts"][0] == {"name": "runnable", "mountPath": "/tmp", "readOnly": True}
    # Without the annotation the default container decides the same.
    del pod["metadata"]["annotations"][wh.VOLUME_ANNOTATION]
    _, sidecar = inject(pod)
    assert sidecar["volumeMounts"][0]["name"] == "runnable"


def test_shared_pvc_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = by_kind("shared-pvc-deployment.yaml", "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]
    assert wh.STORE_LABEL not in pod["metadata"]["labels"]  # the relay is not injected,
    assert wh.opted_out(pod)  # not even in a namespace that opts its pods in
    (container,) = pod["spec"]["containers"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["runs"]["readOnly"] and volumes["runs"]["persistentVolumeClaim"]["readOnly"]

    # The rendered ConfigMap of the example store, and the Secret, at the mount paths.
    info = store_info()
    spec = rc.parse_spec(info.spec)
    configmap = rc.configmap_manifest(spec, namespace="team-a", store="main", uid=None)
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    expected_volumes, expected_mounts = rc.pod_volumes(spec, store="main")
    expected = {m["mountPath"] for m in expected_mounts}
    assert {mounts["config"]["mountPath"], mounts["credentials"]["mountPath"]} == expected
    assert volumes["credentials"]["secret"]["items"] == expected_volumes[1]["secret"]["items"]

    # The settings the relay ends up with: the store's, with this Deployment's overrides.
    config_file = tmp_path / "config.yaml"
    config_file.write_text(configmap["data"][rc.CONFIG_KEY])
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    settings = load_sidecar_settings({}, config_file)
    assert str(settings.source) == "/var/run/runlog-relay/pvc/run_logs"
    assert settings.sync.force_polling and settings.sync.poll_interval_seconds == 2
    assert settings.sync.rescan_interval_seconds == 300
    assert settings.sync.debounce_seconds == spec.sync.debounce_seconds  # from the store
    assert settings.endpoint == spec.endpoint and settings.bucket == spec.bucket
    assert str(settings.access_key_id_file) == rc.ACCESS_KEY_ID_FILE
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.sync.drain_timeout_seconds + 5
    # Read-only exactly because nothing is deleted; the documented switch to retention
    # (the variable, and both readOnly flags false) gives a relay that may delete.
    assert not settings.local_retention.deletes
    monkeypatch.setenv("RUNLOG_RELAY_LOCAL_RETENTION__DELETE_AFTER", "7d")
    assert load_sidecar_settings({}, config_file).local_retention.deletes
    text = (EXAMPLES / "shared-pvc-deployment.yaml").read_text()
    assert "RUNLOG_RELAY_LOCAL_RETENTION__DELETE_AFTER" in text and "readOnly below" in text
