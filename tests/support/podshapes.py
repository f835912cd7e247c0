"""Pods as real controllers make them, from what runnable's own executors produce.

- :func:`run_runnable_k8s_job`: runnable's ``K8sJobExecutor`` (the real code, with the
  ``kubernetes`` client) submits its Job to the Kubernetes emulator;
  :func:`job_controller_pod` turns that Job into the Pod the Job controller creates
  (``generateName`` from the Job's name, the labels the API server adds to a Job's
  template, the controller's owner reference and tracking finalizer).
- :func:`runnable_argo_workflow`: runnable's ``ArgoExecutor`` writes its Workflow;
  :func:`argo_pod` turns one of its templates into the Pod Argo v3.6's workflow
  controller creates with the emissary executor (``init`` and ``wait`` containers,
  ``argoexec emissary --`` in front of the step's command, parameters substituted).
- :func:`istio_injected`: what Istio's injector (1.22+, native sidecars) adds to a pod.

Each builder follows its controller's source for what matters to the webhook (names,
labels, annotations, containers, volumes and their mounts); API server defaults that
change nothing here (``dnsPolicy``, ``schedulerName``...) are included where cheap.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "EMISSARY",
    "argo_pod",
    "istio_injected",
    "job_controller_pod",
    "run_runnable_k8s_job",
    "runnable_argo_workflow",
]

ARGOEXEC = "quay.io/argoproj/argoexec:v3.6.2"
ISTIO_PROXY = "docker.io/istio/proxyv2:1.24.1"
#: What Argo's controller puts in front of a step's command (the emissary executor).
EMISSARY = (
    "/var/run/argo/argoexec", "emissary", "--loglevel", "info", "--log-format", "text", "--"
)  # fmt: skip

_JOB_SCRIPT = """
import os
from runnable import PythonJob


def hello():
    print("hello from a runnable job")


def main():
    job = PythonJob(function=hello)
    job.execute(
        configuration_file=os.environ["RUNNABLE_CONFIGURATION_FILE"],
        job_id=os.environ["JOB_ID"],
    )
    return job


if __name__ == "__main__":
    main()
"""

_PIPELINE_SCRIPT = """
import os
from runnable import Pipeline, PythonTask


def hello():
    print("hello from a runnable step")


def main():
    pipeline = Pipeline(
        steps=[PythonTask(name="hello", function=hello, terminate_with_success=True)]
    )
    pipeline.execute(configuration_file=os.environ["RUNNABLE_CONFIGURATION_FILE"])
    return pipeline


if __name__ == "__main__":
    main()
"""


def _run(script: str, config: str, workdir: Path, **env: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    name = "job.py" if "PythonJob" in script else "pipeline.py"
    (workdir / name).write_text(textwrap.dedent(script))
    (workdir / "runnable.yaml").write_text(textwrap.dedent(config))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNABLE_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, name],
        cwd=workdir,
        env={**clean, "RUNNABLE_CONFIGURATION_FILE": "runnable.yaml", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"runnable failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def run_runnable_k8s_job(config: str, workdir: Path, run_id: str) -> None:
    """Submit a Job with runnable's K8sJobExecutor; ``config`` is the runnable config
    (a ``job-executor: {type: k8s-job, config: {config_path: <kubeconfig>, ...}}``)."""
    _run(_JOB_SCRIPT, config, workdir, JOB_ID=run_id)


def runnable_argo_workflow(config: str, workdir: Path) -> dict[str, Any]:
    """The Workflow runnable's ArgoExecutor writes for a one-step pipeline; ``config``
    must name ``output_file: argo-pipeline.yaml``."""
    _run(_PIPELINE_SCRIPT, config, workdir)
    return dict(yaml.safe_load((workdir / "argo-pipeline.yaml").read_text()))


# --------------------------------------------------------------------------- Job controller


def job_controller_pod(job: dict[str, Any]) -> dict[str, Any]:
    """The Pod the Job controller creates for ``job`` (as the API server returned it)."""
    meta = job["metadata"]
    template = copy.deepcopy(job["spec"]["template"])
    uid = meta["uid"]
    # The API server puts these on a Job's template (and selector) at creation.
    labels = {
        **(template.get("metadata") or {}).get("labels", {}),
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": meta["name"],
        "controller-uid": uid,
        "job-name": meta["name"],
    }
    spec = template["spec"]
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for container in spec["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            # The controller names pods after the Job; the template's generateName and
            # namespace are not used.
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
            "finalizers": ["batch.kubernetes.io/job-tracking"],
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


# --------------------------------------------------------------------------- Argo


def _value(match: re.Match[str], parameters: dict[str, str]) -> str:
    return parameters.get(match.group(1).strip(), match.group(0))


def _substitute(value: Any, parameters: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(
            r"\{\{([^}]+)\}\}", lambda m: parameters.get(m.group(1).strip(), m.group(0)), value
        )
    if isinstance(value, list):
        return [_substitute(v, parameters) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, parameters) for k, v in value.items()}
    return value


def _executor_env(name: str, pod_name: str, template: dict[str, Any], node_id: str) -> list[Any]:
    return [
        {
            "name": "ARGO_POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        {
            "name": "ARGO_POD_UID",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}},
        },
        {"name": "GODEBUG", "value": "x509ignoreCN=0"},
        {"name": "ARGO_WORKFLOW_NAME", "value": pod_name.rsplit("-", 2)[0]},
        {"name": "ARGO_CONTAINER_NAME", "value": name},
        {"name": "ARGO_TEMPLATE", "value": json.dumps(template, separators=(",", ":"))},
        {"name": "ARGO_NODE_ID", "value": node_id},
        {"name": "ARGO_INCLUDE_SCRIPT_OUTPUT", "value": "false"},
        {"name": "ARGO_DEADLINE", "value": "0001-01-01T00:00:00Z"},
        {"name": "ARGO_PROGRESS_FILE", "value": "/var/run/argo/progress"},
        {"name": "ARGO_PROGRESS_PATCH_TICK_DURATION", "value": "1m0s"},
        {"name": "ARGO_PROGRESS_FILE_TICK_DURATION", "value": "3s"},
    ]


def argo_pod(
    workflow: dict[str, Any],
    template_name: str,
    *,
    workflow_name: str,
    namespace: str,
    parameters: dict[str, str],
    pod_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Pod Argo's controller creates for ``template_name`` of ``workflow``.

    ``parameters``: the values of ``workflow.parameters.*`` as submitted; ``pod_metadata``:
    the workflow's ``spec.podMetadata`` (labels and annotations for every pod), which is
    how Argo users label their pods (runnable's executor does not write it: add it to the
    generated file, or label the namespace)."""
    workflow_uid = str(uuid.uuid4())
    values = {
        **{f"workflow.parameters.{k}": v for k, v in parameters.items()},
        "workflow.uid": workflow_uid,
        "workflow.name": workflow_name,
    }
    template = _substitute(
        next(t for t in workflow["spec"]["templates"] if t["name"] == template_name), values
    )
    step = template["container"]
    node_id = f"{workflow_name}-{abs(hash(template_name)) % 10**10}"
    pod_name = f"{workflow_name}-{template_name}-{abs(hash(node_id)) % 10**10}"
    metadata = pod_metadata or {}
    argo_mount = {"name": "var-run-argo", "mountPath": "/var/run/argo"}
    executor_resources = {"requests": {"cpu": "10m", "memory": "64Mi"}}
    init = {
        "name": "init",
        "image": ARGOEXEC,
        "command": ["argoexec", "init", "--loglevel", "info", "--log-format", "text"],
        "env": _executor_env("init", pod_name, template, node_id),
        "resources": executor_resources,
        "volumeMounts": [argo_mount],
    }
    wait = {
        "name": "wait",
        "image": ARGOEXEC,
        "command": ["argoexec", "wait", "--loglevel", "info", "--log-format", "text"],
        "env": _executor_env("wait", pod_name, template, node_id),
        "resources": executor_resources,
        "volumeMounts": [argo_mount, {"name": "tmp-dir-argo", "mountPath": "/tmp", "subPath": "0"}],
    }
    main = {
        "name": "main",
        "image": step["image"],
        "imagePullPolicy": step.get("imagePullPolicy", "IfNotPresent"),
        # The emissary runs the step's command as its own child, after "--".
        "command": list(EMISSARY),
        "args": [*step.get("command", []), *step.get("args", [])],
        "env": [*step.get("env", []), *_executor_env("main", pod_name, template, node_id)],
        "resources": step.get("resources", {}),
        "volumeMounts": [*step.get("volumeMounts", []), argo_mount],
    }
    volumes = [
        {"name": "var-run-argo", "emptyDir": {}},
        {"name": "tmp-dir-argo", "emptyDir": {}},
        *template.get("volumes", []),
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": namespace,
            "labels": {
                "workflows.argoproj.io/completed": "false",
                "workflows.argoproj.io/workflow": workflow_name,
                **(metadata.get("labels") or {}),
            },
            "annotations": {
                "kubectl.kubernetes.io/default-container": "main",
                "workflows.argoproj.io/node-id": node_id,
                "workflows.argoproj.io/node-name": f"{workflow_name}.{template_name}",
                **(metadata.get("annotations") or {}),
            },
            "ownerReferences": [
                {
                    "apiVersion": "argoproj.io/v1alpha1",
                    "kind": "Workflow",
                    "name": workflow_name,
                    "uid": workflow_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": workflow["spec"].get("serviceAccountName", "default"),
            "activeDeadlineSeconds": template.get("activeDeadlineSeconds", 86400),
            "initContainers": [init],
            "containers": [wait, main],
            "volumes": volumes,
        },
    }


# --------------------------------------------------------------------------- Istio


def istio_injected(pod: dict[str, Any]) -> dict[str, Any]:
    """``pod`` after Istio's injector with native sidecars (ENABLE_NATIVE_SIDECARS): the
    ``istio-init`` iptables init container, then ``istio-proxy`` as a native sidecar,
    both ahead of the pod's own init containers, and the proxy's volumes."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    proxy_mounts = [
        {"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"},
        {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
        {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
        {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
        {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
        {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
    ]
    init = {
        "name": "istio-init",
        "image": ISTIO_PROXY,
        "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT"],
        "resources": {
            "limits": {"cpu": "2", "memory": "1Gi"},
            "requests": {"cpu": "10m", "memory": "40Mi"},
        },
        "securityContext": {
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "runAsUser": 0,
            "runAsNonRoot": False,
        },
    }
    proxy = {
        "name": "istio-proxy",
        "image": ISTIO_PROXY,
        "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
        "restartPolicy": "Always",
        "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
        "resources": {
            "limits": {"cpu": "2", "memory": "1Gi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "securityContext": {
            "runAsUser": 1337,
            "runAsGroup": 1337,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": proxy_mounts,
    }
    spec["initContainers"] = [init, proxy, *spec.get("initContainers", [])]
    spec["volumes"] = [
        *spec.get("volumes", []),
        {"name": "workload-socket", "emptyDir": {}},
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-data", "emptyDir": {}},
        {
            "name": "istio-podinfo",
            "downwardAPI": {
                "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
            },
        },
        {
            "name": "istio-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "istio-ca",
                            "expirationSeconds": 43200,
                            "path": "istio-token",
                        }
                    }
                ]
            },
        },
        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
    ]
    annotations = pod["metadata"].setdefault("annotations", {})
    annotations["sidecar.istio.io/status"] = json.dumps(
        {"initContainers": ["istio-init"], "containers": ["istio-proxy"], "revision": "default"}
    )
    pod["metadata"].setdefault("labels", {})["security.istio.io/tlsMode"] = "istio"
    return pod
