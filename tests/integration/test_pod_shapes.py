"""Real-world pod shapes through the real webhook, patched, and validated.

Each pod is built the way its controller builds it (tests/support/podshapes.py): the Job
that runnable's own K8sJobExecutor submits (run against the emulator with the kubernetes
client) as the Job controller turns it into a pod; a step of the Workflow runnable's own
ArgoExecutor writes, as Argo v3.6's controller turns it into an emissary pod; a pod after
Istio's injector with native sidecars; a hostNetwork, a Guaranteed, a Windows pod. Each
goes to the operator's webhook over HTTPS, the answer's JSONPatch is applied, and the
result must validate against the Kubernetes 1.28 and 1.30 schemas (kubernetes-validate,
strict). The runnable configurations are the documented ones in
manifests/examples/runnable/.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from runlog_relay.operator import podspec as ps
from tests.integration.kube import KubeHarness
from tests.integration.kube.kopf_runner import KopfRunner
from tests.integration.kube.webhooks import NS, Cluster, prepare
from tests.support import podshapes
from tests.support.admission import ReviewAnswer
from tests.support.s3server import AuthS3

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "runnable"
SCHEMAS = ("1.28", "1.30")
_buckets = itertools.count()


@pytest.fixture()
def cluster(kube: KubeHarness, kopf_runner: KopfRunner, auth_s3: AuthS3) -> Cluster:
    prepare(kube)
    nodes(kube, "v1.30.2", "v1.29.6")
    bucket = f"pod-shapes-{next(_buckets)}"
    auth_s3.client().make_bucket(bucket)
    cluster = Cluster(kube, kopf_runner, auth_s3)
    cluster.start(cluster_check_interval=0.2)
    cluster.put_creds()
    cluster.create_store("main", bucket)
    return cluster


def nodes(kube: KubeHarness, *kubelets: str) -> None:
    """The cluster's nodes, with these kubelet versions (replacing any there were)."""
    for node in kube.list("v1/nodes"):
        kube.delete("v1/nodes", node["metadata"]["name"])
    for index, version in enumerate(kubelets):
        name = f"node-{index}"
        kube.create("v1/nodes", {"metadata": {"name": name}})
        kube.patch_status("v1/nodes", name, {"nodeInfo": {"kubeletVersion": version}})


def admitted(cluster: Cluster, pod: dict[str, Any]) -> tuple[ReviewAnswer, dict[str, Any]]:
    """Admit ``pod``; the answer, and the patched pod, valid for both schemas."""
    answer = cluster.admit(pod)
    patched = answer.patched(pod)
    for version in SCHEMAS:
        kubernetes_validate.validate(patched, version, strict=True)
    return answer, patched


def sidecar(patched: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """Where the sidecar is: (initContainers|containers, index, container)."""
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(patched["spec"].get(kind) or []):
            if container["name"] == "runlog-relay":
                return kind, index, container
    raise AssertionError(f"no sidecar in {patched['spec']}")


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def runnable_config(name: str, **executor: Any) -> str:
    """A documented runnable config, with ``executor`` added to its executor's config."""
    config = yaml.safe_load((EXAMPLES / name).read_text())
    section = "job-executor" if "job-executor" in config else "pipeline-executor"
    config[section]["config"].update(executor)
    return yaml.safe_dump(config)


def test_the_job_of_runnables_k8s_job_executor(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
    config = runnable_config("k8s-job.yaml", config_path=kubeconfig)
    podshapes.run_runnable_k8s_job(config, tmp_path / "job", run_id="nightly-etl-42")
    (job,) = cluster.kube.list("batch/v1/jobs", NS)  # submitted by runnable itself
    assert job["metadata"]["name"] == "nightly-etl-42"  # named after the run id
    pod = podshapes.job_controller_pod(job)
    assert "labels" not in job["spec"]["template"]["metadata"]  # annotations only

    answer, patched = admitted(cluster, pod)

    assert patched["metadata"]["annotations"]["runlog-relay.dev/injected"] == "main"
    kind, index, relay = sidecar(patched)
    assert (kind, index, relay.get("restartPolicy")) == ("initContainers", 0, "Always")
    assert env(relay)["RUNLOG_RELAY_RUN_IDS"] == "nightly-etl-42"
    # The executor's PVC holds /tmp/run_logs: the sidecar reads it there, read-only.
    (mount,) = [m for m in relay["volumeMounts"] if m["name"] == "runnable"]
    assert mount == {"name": "runnable", "mountPath": "/tmp/run_logs", "readOnly": True}
    # runnable sets limits only, so the pod is Guaranteed; it stays so.
    assert ps.guaranteed([*patched["spec"]["containers"], *patched["spec"]["initContainers"]])
    assert not answer.warnings


def argo_workflow(tmp_path: Path) -> tuple[dict[str, Any], str]:
    workflow = podshapes.runnable_argo_workflow(runnable_config("argo.yaml"), tmp_path / "argo")
    (step,) = [t for t in workflow["spec"]["templates"] if t["name"].startswith("hello-")]
    return workflow, step["name"]


def test_a_step_of_runnables_argo_workflow_by_namespace_label(
    cluster: Cluster, tmp_path: Path
) -> None:
    workflow, step = argo_workflow(tmp_path)
    cluster.kube.patch(
        "v1/namespaces", NS, {"metadata": {"labels": {"runlog-relay.dev/store": "main"}}}
    )
    parameters = {"run_id": "argo-run-7", "log_level": "INFO", "retry_run_id": ""}
    pod = podshapes.argo_pod(
        workflow, step, workflow_name="runnable-x7k2p", namespace=NS, parameters=parameters
    )
    assert "runlog-relay.dev/store" not in pod["metadata"]["labels"]  # only the namespace says

    _, patched = admitted(cluster, pod)

    kind, index, relay = sidecar(patched)
    # First: native sidecars start before the init containers after them, so it watches
    # while Argo's `init` runs too (no native sidecar to go after here).
    assert kind == "initContainers" and index == 0
    assert env(relay)["RUNLOG_RELAY_RUN_IDS"] == "argo-run-7"  # from main's emissary argv
    # The default container `main` sees the log folder on the PVC at /tmp; Argo's `wait`
    # has an emptyDir at /tmp of its own, which is not where runnable writes.
    (mount,) = [m for m in relay["volumeMounts"] if m["name"] == "runnable"]
    assert mount == {"name": "runnable", "mountPath": "/tmp", "readOnly": True}
    # Opted out despite its namespace.
    out = podshapes.argo_pod(
        workflow,
        step,
        workflow_name="runnable-x7k2p",
        namespace=NS,
        parameters=parameters,
        pod_metadata={"annotations": {"runlog-relay.dev/inject": "false"}},
    )
    assert cluster.admit(out).patch == []


def test_a_step_of_runnables_argo_workflow_by_pod_metadata(
    cluster: Cluster, tmp_path: Path
) -> None:
    workflow, step = argo_workflow(tmp_path)
    pod = podshapes.argo_pod(
        workflow,
        step,
        workflow_name="runnable-q9w8e",
        namespace=NS,
        parameters={"run_id": "argo-run-8", "log_level": "INFO"},
        pod_metadata={"labels": {"runlog-relay.dev/store": "main"}},
    )
    _, patched = admitted(cluster, pod)
    assert env(sidecar(patched)[2])["RUNLOG_RELAY_RUN_IDS"] == "argo-run-8"


def test_a_pod_with_istios_native_sidecars(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
    config = runnable_config("k8s-job.yaml", config_path=kubeconfig)
    podshapes.run_runnable_k8s_job(config, tmp_path / "job", run_id="meshed-1")
    (job,) = cluster.kube.list("batch/v1/jobs", NS)
    pod = podshapes.istio_injected(podshapes.job_controller_pod(job))

    _, patched = admitted(cluster, pod)

    names = [c["name"] for c in patched["spec"]["initContainers"]]
    # Native sidecars stop in reverse order: ours stops before istio-proxy, and its
    # final uploads still have the mesh.
    assert names == ["istio-init", "istio-proxy", "runlog-relay"]


def test_a_host_network_pod_is_skipped_unless_it_asks(cluster: Cluster) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "agent",
            "namespace": NS,
            "labels": {"runlog-relay.dev/store": "main"},
        },
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "example/agent:1", "ports": [{"containerPort": 9464}]}
            ],
        },
    }
    _, patched = admitted(cluster, pod)
    assert patched["metadata"]["annotations"]["runlog-relay.dev/skipped"].startswith("HostNetwork")
    asks = {
        **pod,
        "metadata": {**pod["metadata"], "annotations": {ps.HOST_NETWORK_ANNOTATION: "inject"}},
    }
    _, injected = admitted(cluster, asks)
    relay = sidecar(injected)[2]
    assert relay["ports"][0]["containerPort"] == 9465  # the node's 9464 is the pod's own


def test_a_guaranteed_pod_stays_guaranteed(cluster: Cluster) -> None:
    resources = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "train",
            "namespace": NS,
            "labels": {"runlog-relay.dev/store": "main"},
        },
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "fetch", "image": "git", "resources": resources}],
            "containers": [{"name": "main", "image": "example/train:1", "resources": resources}],
        },
    }
    _, patched = admitted(cluster, pod)
    relay = sidecar(patched)[2]
    assert relay["resources"]["requests"] == relay["resources"]["limits"]
    assert ps.guaranteed([*patched["spec"]["initContainers"], *patched["spec"]["containers"]])


def test_a_windows_pod_is_skipped(cluster: Cluster) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "win", "namespace": NS, "labels": {"runlog-relay.dev/store": "main"}},
        "spec": {"os": {"name": "windows"}, "containers": [{"name": "main", "image": "mcr/win"}]},
    }
    answer, patched = admitted(cluster, pod)
    assert patched["spec"] == pod["spec"]
    assert patched["metadata"]["annotations"]["runlog-relay.dev/skipped"].startswith("WindowsPod")
    assert any("Linux" in w for w in answer.warnings)


def test_old_kubelets_get_a_classic_sidecar(cluster: Cluster) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "step", "namespace": NS, "labels": {"runlog-relay.dev/store": "main"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "x",
                    "command": ["runnable", "execute-job", "j.main", "r-1"],
                }
            ],
        },
    }
    nodes(cluster.kube, "v1.30.2", "v1.28.11")  # one node would hold a native sidecar in Init

    def classic() -> bool:
        return sidecar(cluster.admit(pod, dry_run=True).patched(pod))[0] == "containers"

    cluster.wait(classic, "the webhook to see the old kubelet")
    _, patched = admitted(cluster, pod)
    relay = sidecar(patched)[2]
    assert "restartPolicy" not in relay
    assert env(relay)["RUNLOG_RELAY_EXIT_WHEN_SEALED"] == "true"  # so the Job completes
    assert env(relay)["RUNLOG_RELAY_RUN_IDS"] == "r-1"
    nodes(cluster.kube, "v1.30.2")
    cluster.wait(lambda: not classic(), "native sidecars once the node is upgraded")
