"""The sidecar's shape in a given pod: run ids, resources and QoS, placement, security."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from tests.support.podshapes import EMISSARY

from runlog_relay.errors import PermanentError
from runlog_relay.operator import podspec as ps
from runlog_relay.operator.cluster import ClusterVersions, parse_version
from runlog_relay.operator.settings import InjectionSettings

# --------------------------------------------------------------------------- run ids

K8S_JOB = [
    "runnable",
    "execute-job",
    "job.main",
    "nightly-etl-42",
    "--log-level",
    "WARNING",
    "--config",
    "k8s-job.yaml",
]
ARGO_MAIN = [
    *EMISSARY,
    "runnable",
    "execute-single-node",
    "run-7",
    "pipeline.main",
    "hello",
    "--log-level",
    "INFO",
    "--mode",
    "python",
    "--iter-variable",
    '{"map_variable":{},"loop_variable":[]}',
]


def container(command: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "main", "image": "x", "command": command or ["python"], **extra}


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (container(K8S_JOB), ("nightly-etl-42",)),  # runnable's K8sJobExecutor
        (container(ARGO_MAIN), ("run-7",)),  # Argo's emissary wrapper, parameters substituted
        (container(["/usr/local/bin/runnable", "fan", "run-9", "map", "p.py", "out"]), ("run-9",)),
        (container(["runnable"], args=["execute-single-node", "run-3", "p.py", "s"]), ("run-3",)),
        (container(env=[{"name": "RUNNABLE_RUN_ID", "value": "by-env"}]), ("by-env",)),
        # An unsubstituted Argo parameter, a downward-API value, other programs: unknown.
        (container(["runnable", "execute-single-node", "{{workflow.parameters.run_id}}"]), None),
        (container(env=[{"name": "RUNNABLE_RUN_ID", "valueFrom": {"fieldRef": {}}}]), None),
        (container(["python", "train.py", "run-1"]), None),
        (container(["runnable", "execute", "pipeline.yaml"]), None),
    ],
)
def test_run_ids_come_from_what_runnable_really_puts_on_its_pods(
    writer: dict[str, Any], expected: tuple[str, ...] | None
) -> None:
    assert ps.run_ids({}, [writer]) == expected


def test_the_annotation_wins_and_star_means_every_run() -> None:
    writer = container(K8S_JOB)
    assert ps.run_ids({ps.RUN_IDS_ANNOTATION: "a, b,a"}, [writer]) == ("a", "b")
    assert ps.run_ids({ps.RUN_IDS_ANNOTATION: "*"}, [writer]) is None
    for bad in ("", "a,b c", "../x"):
        with pytest.raises(ps.InvalidAnnotation, match="run-ids"):
            ps.run_ids({ps.RUN_IDS_ANNOTATION: bad}, [writer])


# --------------------------------------------------------------------------- resources


def test_quantities() -> None:
    assert ps.parse_quantity("250m") == Decimal("0.25")
    assert ps.parse_quantity("1Gi") == ps.parse_quantity("1024Mi") == 2**30
    assert ps.parse_quantity("1e3") == 1000
    with pytest.raises(ValueError, match="quantity"):
        ps.parse_quantity("lots")


def limited(
    limits: dict[str, str] | None = None, requests: dict[str, str] | None = None
) -> dict[str, Any]:
    resources: dict[str, Any] = {"limits": limits or {"cpu": "250m", "memory": "1Gi"}}
    if requests:
        resources["requests"] = requests
    return container(resources=resources)


def test_guaranteed_is_every_container_with_requests_equal_to_limits() -> None:
    # runnable's K8sJobExecutor sets limits only: requests default to them.
    assert ps.guaranteed([limited()])
    assert ps.guaranteed([limited({"cpu": "1", "memory": "1Gi"}, {"cpu": "1000m"})])
    assert ps.guaranteed([limited(requests={"memory": "1024Mi"})])  # equal quantities
    assert not ps.guaranteed([limited(requests={"cpu": "100m"})])
    assert not ps.guaranteed([limited(), container()])
    assert not ps.guaranteed([container(resources={"limits": {"memory": "1Gi"}})])


CONFIGURED = InjectionSettings().resources


def test_a_guaranteed_pod_gets_a_sidecar_with_requests_equal_to_limits() -> None:
    resources = ps.sidecar_resources({}, CONFIGURED, [limited()])
    assert resources == {
        "requests": {"cpu": "200m", "memory": "128Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    }
    # A Burstable pod keeps the configured requests, below the limits.
    assert ps.sidecar_resources({}, CONFIGURED, [container()]) == CONFIGURED


def test_annotations_set_each_request_and_limit() -> None:
    annotations = {
        "runlog-relay.dev/sidecar-cpu-request": "50m",
        "runlog-relay.dev/sidecar-cpu-limit": "500m",
        "runlog-relay.dev/sidecar-memory-limit": "256Mi",
    }
    resources = ps.sidecar_resources(annotations, CONFIGURED, [container()])
    assert resources == {
        "requests": {"cpu": "50m", "memory": CONFIGURED["requests"]["memory"]},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    # In a Guaranteed pod, the annotated limits become the requests too.
    guaranteed = ps.sidecar_resources(annotations, CONFIGURED, [limited()])
    assert guaranteed["requests"] == guaranteed["limits"] == {"cpu": "500m", "memory": "256Mi"}
    with pytest.raises(ps.InvalidAnnotation, match="sidecar-cpu-limit"):
        ps.sidecar_resources({"runlog-relay.dev/sidecar-cpu-limit": "fast"}, CONFIGURED, [])
    with pytest.raises(ps.InvalidAnnotation, match="exceeds its limit"):
        ps.sidecar_resources(
            {"runlog-relay.dev/sidecar-memory-request": "1Gi"}, CONFIGURED, [container()]
        )


def test_a_pod_may_ask_only_for_allowed_images() -> None:
    options = InjectionSettings(image="ghcr.io/runlog-relay/runlog-relay:0.1.0")
    assert ps.image_for({}, options) == options.image
    same_repo = {ps.IMAGE_ANNOTATION: "ghcr.io/runlog-relay/runlog-relay:0.2.0"}
    assert ps.image_for(same_repo, options) == "ghcr.io/runlog-relay/runlog-relay:0.2.0"
    with pytest.raises(ps.InvalidAnnotation, match="not an image the operator allows"):
        ps.image_for({ps.IMAGE_ANNOTATION: "evil.example.com/steal:latest"}, options)
    mirror = InjectionSettings(allowed_images=["registry.internal/*"])
    assert ps.image_for({ps.IMAGE_ANNOTATION: "registry.internal/relay:1"}, mirror)


# --------------------------------------------------------------------------- placement


def test_the_native_sidecar_goes_after_the_pods_own_native_sidecars() -> None:
    plain = [container(name="fetch")]
    assert ps.native_position(plain, {}) == 0
    istio = [
        {"name": "istio-init", "image": "proxyv2"},
        {"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always"},
        {"name": "fetch", "image": "git"},
    ]
    assert ps.native_position(istio, {}) == 2  # stops before the mesh proxy
    assert ps.native_position(istio, {ps.AFTER_ANNOTATION: "fetch"}) == 3
    assert ps.native_position(istio, {ps.AFTER_ANNOTATION: "first"}) == 0
    with pytest.raises(ps.InvalidAnnotation, match="not an init container"):
        ps.native_position(istio, {ps.AFTER_ANNOTATION: "nope"})


def test_windows_pods_are_recognised() -> None:
    assert ps.is_windows({"spec": {"os": {"name": "windows"}}})
    assert ps.is_windows({"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}}})
    assert not ps.is_windows({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}})


def test_openshift_fixes_no_user_unless_the_writer_does() -> None:
    writer = container(securityContext={"runAsUser": 1000})
    assert ps.security_context({}, None, openshift=False)["runAsUser"] == ps.DEFAULT_USER
    openshift = ps.security_context({}, None, openshift=True)
    assert "runAsUser" not in openshift and "runAsGroup" not in openshift
    assert openshift["runAsNonRoot"] is True
    assert ps.security_context({}, writer, openshift=True)["runAsUser"] == 1000


# --------------------------------------------------------------------------- cluster


class Api:
    def __init__(self, server: str, kubelets: list[str], *, deny_nodes: bool = False) -> None:
        self.server, self.kubelets, self.deny_nodes = server, kubelets, deny_nodes
        self.paths: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.paths.append(path)
        if path == "/version":
            return {"gitVersion": self.server}
        if self.deny_nodes:
            raise PermanentError("nodes is forbidden", code="Forbidden")
        start = 0 if "continue=" not in path else int(path.rsplit("continue=", 1)[1])
        page = self.kubelets[start : start + 2]
        more = start + 2 < len(self.kubelets)
        return {
            "items": [{"status": {"nodeInfo": {"kubeletVersion": v}}} for v in page],
            "metadata": {"continue": str(start + 2) if more else ""},
        }


@pytest.mark.parametrize(
    ("server", "kubelets", "native"),
    [
        ("v1.30.2", ["v1.30.2", "v1.29.4-eks-1"], True),
        ("v1.30.2", ["v1.30.2", "v1.29.0", "v1.28.9"], False),  # one old node: pods hang
        ("v1.28.9", ["v1.30.0"], False),  # the API server drops the field and refuses
        ("v1.29.0+k3s1", [], True),
    ],
)
def test_native_sidecars_need_the_api_server_and_every_kubelet_at_1_29(
    server: str, kubelets: list[str], native: bool
) -> None:
    versions = ClusterVersions(Api(server, kubelets))
    assert versions.native_sidecars is None  # nothing known yet: classic
    asyncio.run(versions.refresh())
    assert versions.native_sidecars is native


def test_nodes_are_listed_in_pages_and_forbidden_nodes_leave_the_server_to_decide() -> None:
    api = Api("v1.30.1", ["v1.30.1"] * 5)
    asyncio.run(ClusterVersions(api).refresh())
    assert [p for p in api.paths if "nodes" in p] == [
        "/api/v1/nodes?limit=500",
        "/api/v1/nodes?limit=500&continue=2",
        "/api/v1/nodes?limit=500&continue=4",
    ]
    denied = ClusterVersions(Api("v1.30.1", [], deny_nodes=True))
    asyncio.run(denied.refresh())
    assert denied.native_sidecars is True and not denied.nodes_known
    assert parse_version("v1.31.0-gke.100") == (1, 31) and parse_version("nope") is None
