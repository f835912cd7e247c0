"""The webhook's pure decisions: the JSONPatch for a pod, Events, store checks.

Every injected pod is checked against the Kubernetes 1.30 schema (strict), and every
patch is applied both by the module's own RFC 6902 code and by the ``jsonpatch`` library,
which must agree.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from runlog_relay.operator import podspec as ps
from runlog_relay.operator import reconcile as rc
from runlog_relay.operator import webhook as wh
from runlog_relay.operator.settings import (
    DEFAULT_IMAGE,
    DEFAULT_RESOURCES,
    InjectionSettings,
    validate_resources,
)

NS = "team-a"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
CREDS = {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "creds"}}


def store(
    spec: dict[str, Any] | None = None, ready: str | None = "True", **kw: Any
) -> wh.StoreInfo:
    return wh.StoreInfo(
        namespace=kw.get("namespace", NS),
        name=kw.get("name", "main"),
        spec=CREDS if spec is None else spec,
        ready=ready,
        ready_reason=kw.get("reason"),
    )


def ctr(
    name: str = "main", mounts: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "example/pipeline:1", **extra}
    if mounts is not None:
        container["volumeMounts"] = mounts
    return container


def pod(
    containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    label: str | None = "main",
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": NS}
    if label is not None:
        meta["labels"] = {wh.STORE_LABEL: label}
    if annotations is not None:
        meta["annotations"] = annotations
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": containers or [ctr()], **spec},
    }
    if volumes is not None:
        body["spec"]["volumes"] = volumes
    return body


def decide(
    body: dict[str, Any],
    info: wh.StoreInfo | None = None,
    native: bool | None = True,
    **options: Any,
) -> wh.Decision:
    return wh.decide_injection(
        body,
        namespace=NS,
        store=store() if info is None else info,
        options=InjectionSettings(**options),
        native=native,
    )


def apply(body: dict[str, Any], decision: wh.Decision) -> dict[str, Any]:
    ours = wh.apply_json_patch(body, decision.ops)
    theirs = jsonpatch.apply_patch(body, decision.ops)
    assert ours == theirs
    kubernetes_validate.validate(ours, "1.30", strict=True)
    return ours


def injected(body: dict[str, Any], **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    decision = decide(body, **options)
    assert decision.outcome is wh.Outcome.INJECTED, decision
    patched = apply(body, decision)
    kinds = ("initContainers", "containers")
    sidecars = [c for k in kinds for c in patched["spec"].get(k, []) if c["name"] == "runlog-relay"]
    assert len(sidecars) == 1
    return patched, sidecars[0]


def skipped(body: dict[str, Any], info: wh.StoreInfo | None = None, **options: Any) -> wh.Decision:
    decision = decide(body, info, **options)
    assert decision.outcome is wh.Outcome.SKIPPED, decision
    patched = apply(body, decision)
    assert patched["spec"] == body["spec"]
    annotation = patched["metadata"]["annotations"][wh.SKIPPED_ANNOTATION]
    assert annotation == f"{decision.reason}: {decision.message}"[:1024]
    return decision


def logs_mount(sidecar: dict[str, Any]) -> dict[str, Any]:
    return sidecar["volumeMounts"][0]


# --------------------------------------------------------------------------- who is injected


def test_pods_not_opted_in_or_already_injected_are_unchanged() -> None:
    assert decide(pod(label=None)).outcome is wh.Outcome.UNCHANGED
    assert decide(pod(label=None)).ops == []
    patched, _ = injected(pod())
    again = decide(patched)
    assert again.outcome is wh.Outcome.UNCHANGED and again.ops == []
    # The annotation alone also counts (a pod re-created from an injected one's YAML).
    marked = pod(annotations={wh.INJECTED_ANNOTATION: "main"})
    assert decide(marked).outcome is wh.Outcome.UNCHANGED


def test_missing_store_and_other_namespaces_store_are_skipped() -> None:
    decision = wh.decide_injection(pod(), namespace=NS, store=None, options=InjectionSettings())
    assert decision.outcome is wh.Outcome.SKIPPED and decision.reason == "StoreNotFound"
    assert "'main' not found in namespace 'team-a'" in decision.message
    # A store object from elsewhere is never used, even if handed over by mistake.
    elsewhere = skipped(pod(), store(namespace="team-b"))
    assert elsewhere.reason == "StoreNotFound"
    other_name = skipped(pod(label="main"), store(name="other"))
    assert other_name.reason == "StoreNotFound"


def test_invalid_store_is_skipped_with_the_field() -> None:
    decision = skipped(pod(), store({"endpoint": "ftp://nope"}))
    assert decision.reason == "StoreInvalid" and "spec.endpoint" in decision.message


def test_store_not_ready_injects_with_a_warning_unless_configured_not_to() -> None:
    waiting = store(ready="False", reason="SecretNotFound")
    decision = decide(pod(), waiting)
    assert decision.outcome is wh.Outcome.INJECTED
    assert any("Ready=False (SecretNotFound)" in w for w in decision.warnings)
    never_reconciled = decide(pod(), store(ready=None))
    assert any("Ready=Unknown" in w for w in never_reconciled.warnings)
    refused = skipped(pod(), waiting, inject_when_not_ready=False)
    assert refused.reason == "StoreNotReady" and "--no-inject-when-not-ready" in refused.message


def test_missing_configmap_or_secret_is_injected_with_a_warning() -> None:
    # The sidecar waits for optional volumes to be filled, so the pod is not held back.
    decision = wh.decide_injection(
        pod(),
        namespace=NS,
        store=store(ready="False"),
        options=InjectionSettings(),
        missing=["Secret 'creds'"],
    )
    assert decision.outcome is wh.Outcome.INJECTED
    assert any("Secret 'creds' does not exist yet" in w for w in decision.warnings)


def test_missing_configmap_or_secret_is_skipped_when_not_ready_stores_are_not_injected() -> None:
    decision = wh.decide_injection(
        pod(),
        namespace=NS,
        store=store(ready="False"),
        options=InjectionSettings(inject_when_not_ready=False),
        missing=["Secret 'creds'"],
    )
    assert decision.outcome is wh.Outcome.SKIPPED and decision.reason == "StoreNotReady"
    assert "Secret 'creds' does not exist (yet)" in decision.message


def test_missing_files() -> None:
    spec = rc.parse_spec(
        {
            "endpoint": "https://minio:9000",
            "credentialsSecretRef": {"name": "creds"},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
        }
    )
    configmap = {"data": {rc.CONFIG_KEY: "endpoint: x"}}
    both = {"AWS_ACCESS_KEY_ID": b"a", "AWS_SECRET_ACCESS_KEY": b"b"}
    found = {"creds": both, "ca": {"ca.crt": b"x"}}
    assert wh.missing_files(spec, store="main", configmap=configmap, secrets=found) == []
    assert wh.missing_files(spec, store="main", configmap=None, secrets={"creds": None}) == [
        "ConfigMap 'runlog-relay-main'",
        "Secret 'creds'",
        "Secret 'ca'",
    ]
    partial = {"creds": {"AWS_ACCESS_KEY_ID": b"a"}, "ca": {"ca.crt": b"x"}}
    assert wh.missing_files(spec, store="main", configmap=configmap, secrets=partial) == [
        "key 'AWS_SECRET_ACCESS_KEY' of Secret 'creds'"
    ]


def test_files_ready_from_status() -> None:
    def info(*conditions: tuple[str, str]) -> wh.StoreInfo:
        status = {"conditions": [{"type": t, "status": v} for t, v in conditions]}
        return wh.StoreInfo.from_body({"metadata": {}, "spec": {}, "status": status})

    assert info(("Ready", "True")).files_ready
    assert info(
        ("Ready", "False"), ("ConfigRendered", "True"), ("SecretsAvailable", "True")
    ).files_ready
    assert not info(
        ("Ready", "False"), ("ConfigRendered", "True"), ("SecretsAvailable", "False")
    ).files_ready
    assert not info().files_ready


# --------------------------------------------------------------------------- the sidecar


def test_native_sidecar_is_the_first_init_container() -> None:
    body = pod(initContainers=[ctr("setup")])
    patched, sidecar = injected(body)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["runlog-relay", "setup"]
    assert sidecar["restartPolicy"] == "Always"
    patched, _ = injected(pod())
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["runlog-relay"]


def test_classic_sidecar_is_a_container_and_modes_are_case_insensitive() -> None:
    patched, sidecar = injected(pod(annotations={wh.MODE_ANNOTATION: "Classic"}))
    assert patched["spec"]["containers"][-1] is not None and "restartPolicy" not in sidecar
    assert [c["name"] for c in patched["spec"]["containers"]] == ["main", "runlog-relay"]
    bad = skipped(pod(annotations={wh.MODE_ANNOTATION: "sidecar"}))
    assert bad.reason == "InvalidAnnotation" and "'native' or 'classic'" in bad.message


def test_sidecar_container_shape() -> None:
    _, sidecar = injected(
        pod(), image="registry.local/relay:9", resources={"limits": {"memory": "1Gi"}}
    )
    assert sidecar["image"] == "registry.local/relay:9"
    assert sidecar["command"] == ["runlog-relay"]
    assert sidecar["args"] == ["sidecar", "--config", rc.CONFIG_FILE]
    assert sidecar["resources"] == {"limits": {"memory": "1Gi"}}
    assert sidecar["ports"] == [{"name": "relay-metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert sidecar["env"] == [{"name": "RUNLOG_RELAY_METRICS_PORT", "value": "9464"}]
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "relay-metrics"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "relay-metrics"}
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    _, default = injected(pod())
    assert default["image"] == DEFAULT_IMAGE and default["resources"] == dict(DEFAULT_RESOURCES)


def test_config_and_credentials_are_mounted_where_the_configmap_says() -> None:
    spec = {
        "endpoint": "https://minio:9000",
        "credentialsSecretRef": {
            "name": "creds",
            "accessKeyIdKey": "id",
            "secretAccessKeyKey": "key",
        },
        "tls": {"caSecretRef": {"name": "ca", "key": "bundle.pem"}},
    }
    body = pod()
    decision = decide(body, store(spec))
    patched = apply(body, decision)
    sidecar = patched["spec"]["initContainers"][0]
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    config = rc.sidecar_config(rc.parse_spec(spec))
    # Each file the rendered config names is where a mount puts it.
    creds = volumes["runlog-relay-credentials"]["secret"]
    files = {
        f"{mounts['runlog-relay-credentials']}/{item['path']}": item["key"]
        for item in creds["items"]
    }
    assert files == {config["accessKeyIdFile"]: "id", config["secretAccessKeyFile"]: "key"}
    ca = volumes["runlog-relay-ca"]["secret"]
    assert f"{mounts['runlog-relay-ca']}/{ca['items'][0]['path']}" == config["tls"]["caFile"]
    assert f"{mounts['runlog-relay-config']}/{rc.CONFIG_KEY}" == rc.CONFIG_FILE
    # Optional: a store whose Secret or ConfigMap is not there yet must not block the pod.
    assert (
        creds["optional"]
        and ca["optional"]
        and volumes["runlog-relay-config"]["configMap"]["optional"]
    )
    assert all(m["readOnly"] for m in sidecar["volumeMounts"])


def test_the_volume_is_writable_only_when_retention_deletes() -> None:
    def mount(retention: dict[str, Any] | None) -> dict[str, Any]:
        spec = {**CREDS, **({"localRetention": retention} if retention else {})}
        _, sidecar = injected(pod(), info=store(spec))
        return logs_mount(sidecar)

    assert mount(None)["readOnly"] is True
    assert mount({"deleteAfter": "7d", "dryRun": True})["readOnly"] is True  # reads only
    deleting = mount({"deleteAfter": "7d"})
    assert deleting["readOnly"] is False
    _, sidecar = injected(pod(), info=store({**CREDS, "localRetention": {"deleteAfter": "1h"}}))
    # Its config and credentials stay read-only.
    assert all(m["readOnly"] for m in sidecar["volumeMounts"][1:])


def test_sidecar_shares_the_writers_non_root_user_and_group() -> None:
    writer = ctr(securityContext={"runAsUser": 1001})
    _, sidecar = injected(pod([writer], securityContext={"runAsGroup": 2002, "fsGroup": 3003}))
    context = sidecar["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (1001, 2002)
    root = ctr(securityContext={"runAsUser": 0, "runAsGroup": 0})
    _, sidecar = injected(pod([root]))
    assert (sidecar["securityContext"]["runAsUser"], sidecar["securityContext"]["runAsGroup"]) == (
        65532,
        65532,
    )


def test_fs_group_is_never_set_on_the_pod() -> None:
    body = pod()
    patched, _ = injected(body)
    assert "securityContext" not in patched["spec"]


def test_metrics_port_moves_when_the_pod_uses_9464() -> None:
    busy = ctr(ports=[{"containerPort": 9464}, {"containerPort": 9465}])
    _, sidecar = injected(pod([busy]))
    assert sidecar["ports"][0]["containerPort"] == 9466
    assert sidecar["env"] == [{"name": "RUNLOG_RELAY_METRICS_PORT", "value": "9466"}]


def test_scrape_annotations_only_when_asked_and_never_over_the_pods_own() -> None:
    patched, _ = injected(pod(), scrape_annotations=True)
    assert patched["metadata"]["annotations"] == {
        wh.INJECTED_ANNOTATION: "main",
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9464",
        "prometheus.io/path": "/metrics",
    }
    own = {"prometheus.io/port": "8000"}
    patched, _ = injected(pod(annotations=own), scrape_annotations=True)
    assert patched["metadata"]["annotations"] == {**own, wh.INJECTED_ANNOTATION: "main"}
    patched, _ = injected(pod())
    assert patched["metadata"]["annotations"] == {wh.INJECTED_ANNOTATION: "main"}


def test_short_grace_period_warns() -> None:
    decision = decide(pod(terminationGracePeriodSeconds=10))
    assert any("terminationGracePeriodSeconds 10" in w for w in decision.warnings)
    assert not decide(pod()).warnings  # 30 s default vs 25 s drain + 5 s


# --------------------------------------------------------------------------- the volume


def test_no_volume_adds_an_emptydir_in_every_container() -> None:
    body = pod([ctr("a"), ctr("b")], initContainers=[ctr("setup")])
    patched, sidecar = injected(body)
    # Bounded, like every emptyDir should be (policy engines and quotas ask for it).
    logs = {"name": "runlog-relay-logs", "emptyDir": {"sizeLimit": "1Gi"}}
    assert logs in patched["spec"]["volumes"]
    expected = {"name": "runlog-relay-logs", "mountPath": "/tmp/run_logs"}
    for kind in ("containers", "initContainers"):
        for container in patched["spec"][kind]:
            if container["name"] != "runlog-relay":
                assert expected in container["volumeMounts"], container
    assert logs_mount(sidecar) == {**expected, "readOnly": True}


def test_volume_mounted_at_or_above_the_log_folder() -> None:
    exact = pod(
        [ctr(mounts=[{"name": "logs", "mountPath": "/tmp/run_logs/"}])],
        volumes=[{"name": "logs", "emptyDir": {}}],
    )
    _, sidecar = injected(exact)
    assert logs_mount(sidecar) == {"name": "logs", "mountPath": "/tmp/run_logs", "readOnly": True}
    above = pod(
        [
            ctr(
                mounts=[
                    {"name": "data", "mountPath": "/"},
                    {"name": "tmp", "mountPath": "/tmp", "subPath": "x"},
                ]
            )
        ],
        volumes=[{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    )
    _, sidecar = injected(above)  # the deepest mount is what the writer writes through
    assert logs_mount(sidecar) == {
        "name": "tmp",
        "mountPath": "/tmp",
        "subPath": "x",
        "readOnly": True,
    }


def test_containers_without_the_folder_on_a_volume_are_ignored() -> None:
    body = pod(
        [ctr("istio-proxy"), ctr("main", mounts=[{"name": "tmp", "mountPath": "/tmp"}])],
        volumes=[{"name": "tmp", "emptyDir": {}}],
    )
    _, sidecar = injected(body)
    assert logs_mount(sidecar)["name"] == "tmp"


def test_containers_agreeing_through_different_mounts_are_not_ambiguous() -> None:
    body = pod(
        [
            ctr("a", mounts=[{"name": "v", "mountPath": "/tmp"}]),
            ctr("b", mounts=[{"name": "v", "mountPath": "/tmp/run_logs", "subPath": "run_logs"}]),
        ],
        volumes=[{"name": "v", "emptyDir": {}}],
    )
    _, sidecar = injected(body)
    assert logs_mount(sidecar) == {"name": "v", "mountPath": "/tmp", "readOnly": True}


def test_two_volumes_are_ambiguous_until_the_annotation_or_default_container_says() -> None:
    containers = [
        ctr("wait", mounts=[{"name": "argo-tmp", "mountPath": "/tmp", "subPath": "0"}]),
        ctr("main", mounts=[{"name": "runnable", "mountPath": "/tmp"}]),
    ]
    volumes = [{"name": "argo-tmp", "emptyDir": {}}, {"name": "runnable", "emptyDir": {}}]
    decision = skipped(pod(containers, volumes))
    assert decision.reason == "VolumeAmbiguous" and wh.VOLUME_ANNOTATION in decision.message
    _, sidecar = injected(pod(containers, volumes, annotations={wh.VOLUME_ANNOTATION: "runnable"}))
    assert logs_mount(sidecar)["name"] == "runnable"
    default = {"kubectl.kubernetes.io/default-container": "main"}
    _, sidecar = injected(pod(containers, volumes, annotations=default))
    assert logs_mount(sidecar)["name"] == "runnable"


def test_annotated_volume_problems_are_skipped_with_reasons() -> None:
    missing = skipped(pod(annotations={wh.VOLUME_ANNOTATION: "nope"}))
    assert missing.reason == "VolumeNotFound"
    elsewhere = pod(
        [ctr(mounts=[{"name": "data", "mountPath": "/data"}])],
        volumes=[{"name": "data", "emptyDir": {}}],
        annotations={wh.VOLUME_ANNOTATION: "data"},
    )
    decision = skipped(elsewhere)
    assert decision.reason == "VolumeNotAtLogFolder" and "main:/data" in decision.message
    expr = pod(
        [ctr(mounts=[{"name": "v", "mountPath": "/tmp", "subPathExpr": "$(POD_NAME)"}])],
        volumes=[{"name": "v", "emptyDir": {}}],
    )
    assert skipped(expr).reason == "UnsupportedSubPathExpr"


def test_annotated_volume_not_mounted_anywhere_is_mounted_at_the_log_folder() -> None:
    body = pod(
        volumes=[{"name": "shared", "emptyDir": {}}], annotations={wh.VOLUME_ANNOTATION: "shared"}
    )
    patched, sidecar = injected(body)
    assert {"name": "shared", "mountPath": "/tmp/run_logs"} in patched["spec"]["containers"][0][
        "volumeMounts"
    ]
    assert logs_mount(sidecar) == {"name": "shared", "mountPath": "/tmp/run_logs", "readOnly": True}
    assert len(patched["spec"]["volumes"]) == 3  # shared + config + credentials: no emptyDir


def test_volume_name_clashes_are_skipped() -> None:
    clash = pod(volumes=[{"name": "runlog-relay-config", "emptyDir": {}}])
    assert skipped(clash).reason == "VolumeConflict"
    logs = pod(volumes=[{"name": "runlog-relay-logs", "emptyDir": {}}])
    assert skipped(logs).reason == "VolumeConflict"
    taken = pod(
        [ctr(mounts=[{"name": "other", "mountPath": "/tmp/run_logs"}]), ctr("b")],
        volumes=[{"name": "other", "emptyDir": {}}, {"name": "named", "emptyDir": {}}],
        annotations={wh.VOLUME_ANNOTATION: "named"},
    )
    assert skipped(taken).reason == "VolumeConflict"


def test_custom_log_folder_is_used() -> None:
    body = pod(
        [ctr(mounts=[{"name": "w", "mountPath": "/work"}])], volumes=[{"name": "w", "emptyDir": {}}]
    )
    decision = decide(body, store({**CREDS, "logFolder": "/work/.run_log_store"}))
    patched = apply(body, decision)
    assert logs_mount(patched["spec"]["initContainers"][0])["mountPath"] == "/work"


# --------------------------------------------------------------------------- patch details


def test_annotations_are_added_to_existing_ones_with_escaped_pointers() -> None:
    body = pod(annotations={"a/b": "c"})
    decision = decide(body)
    assert {
        "op": "add",
        "path": "/metadata/annotations/runlog-relay.dev~1injected",
        "value": "main",
    } in decision.ops
    assert apply(body, decision)["metadata"]["annotations"] == {
        "a/b": "c",
        wh.INJECTED_ANNOTATION: "main",
    }


def test_json_patch_helpers() -> None:
    assert wh.json_pointer("a/b", "c~d", 0) == "/a~1b/c~0d/0"
    doc = {"a": [1, 2], "b": {"c": 1}}
    ops = [
        {"op": "test", "path": "/b/c", "value": 1},
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "remove", "path": "/a/0"},
    ]
    assert (
        wh.apply_json_patch(doc, ops)
        == jsonpatch.apply_patch(doc, ops)
        == {"a": [2, 3], "b": {"c": 2}}
    )
    assert doc == {"a": [1, 2], "b": {"c": 1}}  # not modified
    with pytest.raises(ValueError, match="test failed"):
        wh.apply_json_patch(doc, [{"op": "test", "path": "/b/c", "value": 9}])
    with pytest.raises(IndexError):
        wh.apply_json_patch(doc, [{"op": "add", "path": "/a/5", "value": 0}])


def test_failure_decision_only_annotates() -> None:
    body = pod()
    decision = wh.failure_decision(body, "main", "the sidecar was not injected: boom")
    assert decision.outcome is wh.Outcome.FAILED and decision.wants_event
    patched = apply(body, decision)
    assert patched["spec"] == body["spec"]
    assert patched["metadata"]["annotations"][wh.SKIPPED_ANNOTATION].startswith("InjectionFailed: ")


def test_long_messages_fit_an_annotation() -> None:
    body = pod(annotations={wh.VOLUME_ANNOTATION: "x" * 3000})
    decision = skipped(body)
    assert len(apply(body, decision)["metadata"]["annotations"][wh.SKIPPED_ANNOTATION]) <= 1024


# --------------------------------------------------------------------------- events


def test_event_goes_to_the_controller_of_a_pod_without_a_name() -> None:
    body = pod()
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "job-x-"
    body["metadata"]["ownerReferences"] = [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "job-x", "uid": "u-1", "controller": True}
    ]
    decision = wh.decide_injection(body, namespace=NS, store=None, options=InjectionSettings())
    event = wh.pod_event_manifest(decision, body, namespace=NS, now=NOW, instance="op-0")
    kubernetes_validate.validate(event, "1.30", strict=True)
    assert event["involvedObject"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "job-x",
        "namespace": NS,
        "uid": "u-1",
    }
    assert event["type"] == "Warning" and event["reason"] == "RunLogRelayStoreNotFound"
    assert event["message"].startswith("pod job-x-<generated>: RunLogStore 'main' not found")
    assert event["metadata"]["name"].startswith("job-x.")


def test_event_goes_to_a_bare_pod_by_name() -> None:
    decision = wh.decide_injection(pod(), namespace=NS, store=None, options=InjectionSettings())
    event = wh.pod_event_manifest(decision, pod(), namespace=NS, now=NOW, instance="op-0")
    kubernetes_validate.validate(event, "1.30", strict=True)
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "p",
        "namespace": NS,
    }


# --------------------------------------------------------------------------- stores


def test_store_spec_denial() -> None:
    leaky = {"endpoint": "http://user:pw@minio:9000"}
    denial = wh.store_spec_denial(leaky, None, operation="CREATE", name="s")
    assert denial is not None and "spec.endpoint" in denial and "pw" not in denial
    assert wh.store_spec_denial(CREDS, None, operation="CREATE", name="s") is None
    assert wh.store_spec_denial(leaky, leaky, operation="UPDATE", name="s") is None
    assert wh.store_spec_denial(leaky, CREDS, operation="UPDATE", name="s") is not None
    assert wh.store_spec_denial(leaky, None, operation="DELETE", name="s") is None
    # A store name is a label value (pods name their store in one): 63 at most.
    long_name = wh.store_spec_denial(CREDS, None, operation="CREATE", name="s" * 64)
    assert long_name is not None and "longer than 63" in long_name
    assert wh.store_spec_denial(CREDS, None, operation="CREATE", name="s" * 63) is None
    # A log folder the sidecar's mounts would collide with.
    for folder in ("/", "/etc/runlog-relay", "/var/run/secrets/app", "/data/../etc"):
        denial = wh.store_spec_denial(
            {**CREDS, "logFolder": folder}, None, operation="CREATE", name="s"
        )
        assert denial is not None and "spec.logFolder" in denial, folder


def test_store_warnings_name_each_missing_secret_and_key_once() -> None:
    spec = rc.parse_spec(
        {
            "endpoint": "https://minio:9000",
            "credentialsSecretRef": {"name": "creds"},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
        }
    )
    warnings = wh.store_warnings(spec, namespace=NS, secrets={"creds": None, "ca": {"other": b"x"}})
    assert warnings == [
        "Secret 'creds' not found in namespace 'team-a' (spec.credentialsSecretRef.name); the"
        " store stays NotReady until it exists",
        "Secret 'ca' has no key 'ca.crt' (spec.tls.caSecretRef.key); the store stays NotReady"
        " until it does",
    ]
    found = {"AWS_ACCESS_KEY_ID": b"a", "AWS_SECRET_ACCESS_KEY": b"b"}
    assert (
        wh.store_warnings(spec, namespace=NS, secrets={"creds": found, "ca": {"ca.crt": b"x"}})
        == []
    )
    failed = wh.store_warnings(
        spec, namespace=NS, secrets={"creds": RuntimeError("403"), "ca": {"ca.crt": b"x"}}
    )
    assert failed == ["could not check Secret 'creds' (spec.credentialsSecretRef.name): 403"]
    assert wh.store_warnings(rc.parse_spec({}), namespace=NS, secrets={}) == []


# --------------------------------------------------------------------------- options


def test_validate_resources() -> None:
    good = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": 1073741824}}
    assert validate_resources(good) == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "1073741824"},
    }
    for bad, match in (
        ([], "JSON object"),
        ({"request": {}}, "unknown field"),
        ({"limits": {"memory": "lots"}}, "limits.memory"),
        ({"limits": ["1Gi"]}, "limits must be an object"),
        ({"limits": {"cpu": True}}, "limits.cpu"),
    ):
        with pytest.raises(ValueError, match=match):
            validate_resources(bad)


def test_store_info_from_body() -> None:
    body = {
        "metadata": {"name": "main", "namespace": NS},
        "spec": {"endpoint": "http://x:1"},
        "status": {
            "conditions": [{"type": "Ready", "status": "False", "reason": "BucketNotFound"}]
        },
    }
    info = wh.StoreInfo.from_body(body)
    assert (info.namespace, info.name, info.ready, info.ready_reason) == (
        NS,
        "main",
        "False",
        "BucketNotFound",
    )
    copy_of = copy.deepcopy(body)
    info.spec["endpoint"] = "changed"  # type: ignore[index]
    assert body == copy_of


# --------------------------------------------------------------------------- opt-in and shape


def env_of(sidecar: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in sidecar["env"]}


def test_a_pod_opts_in_by_annotation_and_out_by_inject_false() -> None:
    body = pod(label=None, annotations={wh.STORE_ANNOTATION: "main"})
    assert wh.pod_opt_in(body) == "main"
    patched, _ = injected(body)
    assert patched["metadata"]["annotations"][wh.INJECTED_ANNOTATION] == "main"
    out = pod(annotations={wh.INJECT_OPT_OUT: "false"})
    assert decide(out).outcome is wh.Outcome.UNCHANGED
    # The namespace's default store (its label, resolved by the caller) is used the same way.
    plain = pod(label=None)
    decision = wh.decide_injection(
        plain, namespace=NS, store=store(), options=InjectionSettings(), store_name="main"
    )
    assert decision.outcome is wh.Outcome.INJECTED


def test_native_or_classic_follows_the_cluster_the_setting_and_the_pod() -> None:
    def mode(native: bool | None, annotations: dict[str, str] | None = None, **options: Any) -> str:
        _, sidecar = injected(pod(annotations=annotations), native=native, **options)
        return "native" if sidecar.get("restartPolicy") == "Always" else "classic"

    assert mode(True) == "native"
    assert mode(False) == "classic"
    assert mode(None) == "classic"  # unknown: what every API server accepts
    assert mode(False, native_sidecar="always") == "native"
    assert mode(True, native_sidecar="never") == "classic"
    assert mode(False, {wh.MODE_ANNOTATION: "native"}) == "native"


def test_a_classic_sidecar_exits_once_sealed_and_says_when_it_cannot_know() -> None:
    job = pod(restartPolicy="Never")
    decision = decide(job, native=False)
    _, sidecar = injected(job, native=False)
    assert env_of(sidecar)["RUNLOG_RELAY_EXIT_WHEN_SEALED"] == "true"
    assert any("without the pod's run ids" in w for w in decision.warnings)
    runs = pod(restartPolicy="Never", annotations={"runlog-relay.dev/run-ids": "r1"})
    assert not [w for w in decide(runs, native=False).warnings if "run ids" in w]
    _, native = injected(job)
    assert "RUNLOG_RELAY_EXIT_WHEN_SEALED" not in env_of(native)


def test_a_classic_sidecar_of_a_retry_knows_the_run_is_retried() -> None:
    # Argo substitutes {{workflow.parameters.retry_run_id}} before the pod is created:
    # empty for a first attempt, the run id for runnable's retry.
    def step(retry: str) -> dict[str, Any]:
        argv = ["runnable", "execute-single-node", "etl-7", "summarise"]
        env = [{"name": "RUNNABLE_RETRY_RUN_ID", "value": retry}]
        return pod([ctr("main", command=argv, env=env)], restartPolicy="Never")

    _, retried = injected(step("etl-7"), native=False)
    assert env_of(retried)["RUNNABLE_RETRY_RUN_ID"] == "etl-7"
    _, first = injected(step(""), native=False)
    assert "RUNNABLE_RETRY_RUN_ID" not in env_of(first)
    _, native = injected(step("etl-7"), native=True)
    assert "RUNNABLE_RETRY_RUN_ID" not in env_of(native)  # only an exiting sidecar needs it


def test_the_sidecar_mirrors_only_the_pods_runs() -> None:
    writer = ctr("default", command=["runnable", "execute-job", "job.main", "etl-7"])
    _, sidecar = injected(pod([writer]))
    assert env_of(sidecar)["RUNLOG_RELAY_RUN_IDS"] == "etl-7"
    _, unknown = injected(pod())
    assert "RUNLOG_RELAY_RUN_IDS" not in env_of(unknown)  # every run, as before


def test_windows_and_host_network_pods_are_skipped_unless_asked() -> None:
    assert skipped(pod(os={"name": "windows"})).reason == "WindowsPod"
    assert skipped(pod(hostNetwork=True)).reason == "HostNetwork"
    asked = pod(hostNetwork=True, annotations={"runlog-relay.dev/host-network": "inject"})
    injected(asked)
    injected(pod(hostNetwork=True), host_network=True)


def test_the_sidecar_image_can_be_pulled_and_asked_for() -> None:
    body = pod(imagePullSecrets=[{"name": "regcred"}])
    patched, _ = injected(body, image_pull_secrets=["regcred", "mirror"])
    assert patched["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    bad = pod(annotations={"runlog-relay.dev/sidecar-image": "evil.example.com/x:1"})
    assert skipped(bad).reason == "InvalidAnnotation"


def test_a_guaranteed_pod_stays_guaranteed() -> None:
    limits = {"cpu": "250m", "memory": "1Gi"}
    body = pod([ctr(resources={"limits": limits})])  # how runnable's K8sJobExecutor sets them
    _, sidecar = injected(body)
    assert sidecar["resources"]["requests"] == sidecar["resources"]["limits"]
    assert ps.guaranteed([*body["spec"]["containers"], sidecar])
