"""The chart's shared-volume relay (``sharedRelay``, templates/shared-relay.yaml).

- off by default: the defaults render nothing of it;
- on, it renders what docs/scale-out.md describes (a Deployment of sidecar replicas on the
  named PVC, its ServiceAccount, a Role for Leases in its namespace only, a
  PodDisruptionBudget with more than one replica), and the relay's settings, as the real
  settings loader reads them from the rendered environment and files, are those values;
  strict validation and the restricted security context of every ci/ file (this one's
  included) are in test_helm.py;
- the Role grants exactly what the sidecar's Lease code does: a real
  :class:`~runlog_relay.sidecar.shard.Shard` over the real
  :class:`~runlog_relay.sidecar.leases.LeaseApi` lives through joining, renewing, seeing a
  dead replica, collecting its Lease and leaving, against the Kubernetes emulator; every
  request it makes must be allowed by the rendered Role, and every granted verb used;
- unsafe or inconsistent values are refused with a message that names the value.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from runlog_relay.config.credentials import CredentialSource
from runlog_relay.config.settings import SidecarShard, load_sidecar_settings
from runlog_relay.operator import reconcile as rc
from runlog_relay.sidecar.leases import LeaseApi
from runlog_relay.sidecar.shard import Shard, placement
from tests.integration.kube.emulator import ResourceSpec
from tests.integration.kube.harness import KubeHarness

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "runlog-relay"
TEMPLATE = "runlog-relay/templates/shared-relay.yaml"
EXAMPLES = REPO / "manifests" / "examples"
RELEASE, NAMESPACE = "runlog-relay", "runlog-relay"

sys.path.insert(0, str(REPO / "hack"))
import render_manifests  # noqa: E402

from tests.integration.test_helm_rbac import access_of  # noqa: E402

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = pytest.mark.integration

LEASES = ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease")
#: The smallest values that turn it on (a PVC and a store).
ON: dict[str, Any] = {
    "enabled": True,
    "persistentVolumeClaim": {"claimName": "runnable"},
    "store": {"endpoint": "https://minio.example.com", "bucket": "runnable/run-logs"},
}


def values(**relay: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {**ON}
    for key, value in relay.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and key in ON else value
    return {"sharedRelay": merged}


def relay_objects(chart_values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = render_manifests.render_chart(chart_values, name=RELEASE, namespace=NAMESPACE)
    return [yaml.safe_load(d) for d in render_manifests.split_documents(rendered[TEMPLATE])]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


# --------------------------------------------------------------------------- off and on


def test_off_by_default_renders_nothing_of_it() -> None:
    assert relay_objects({}) == []
    everything = render_manifests.rendered_objects(render_manifests.render_chart({}))
    assert not [o for _, o in everything if "shared" in o["metadata"]["name"]]
    # Its knobs without `enabled` change nothing either.
    quiet = {"sharedRelay": {**ON, "enabled": False, "replicas": 5}}
    assert relay_objects(quiet) == []


def test_it_renders_the_documented_objects_in_its_namespace() -> None:
    objects = relay_objects(values(namespace="team-a", replicas=3))
    assert sorted(o["kind"] for o in objects) == [
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"team-a"}
    (deployment,) = by_kind(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]
    assert pod["metadata"]["labels"]["runlog-relay.dev/inject"] == "false"  # never injected
    assert "runlog-relay.dev/store" not in pod["metadata"]["labels"]
    (account,) = by_kind(objects, "ServiceAccount")
    (binding,) = by_kind(objects, "RoleBinding")
    (role,) = by_kind(objects, "Role")
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "team-a"}
    ]
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"] == spec["selector"]
    assert budget["spec"]["maxUnavailable"] == 1
    # The selector is a subset of the pod's labels, and stable across upgrades.
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert "helm.sh/chart" not in spec["selector"]["matchLabels"]
    # One replica: nothing to keep from a drain.
    assert not by_kind(relay_objects(values(replicas=1)), "PodDisruptionBudget")


def test_the_pvc_probes_resources_and_security() -> None:
    objects = relay_objects(values(persistentVolumeClaim={"claimName": "pipelines"}))
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["runs"]["persistentVolumeClaim"] == {"claimName": "pipelines", "readOnly": True}
    assert mounts["runs"]["readOnly"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"relay-metrics": 9464}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "relay-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "relay-metrics"}
    # docs/benchmarks.md: ~51 MiB idle, peaks up to 122 MiB; no CPU limit (bursts).
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] >= 50 + 5  # the drain, then the Lease


def test_an_existing_service_account_and_rbac_of_ones_own() -> None:
    """`serviceAccount.create: false` runs the relay as the named account, still bound to
    the Lease Role; `rbac.create: false` leaves the Role and binding to the user too."""
    objects = relay_objects(values(serviceAccount={"create": False, "name": "pipelines-relay"}))
    assert sorted(o["kind"] for o in objects) == [
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
    ]
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "pipelines-relay"
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipelines-relay", "namespace": NAMESPACE}
    ]
    chart_values = {**values(), "rbac": {"create": False}}
    assert sorted(o["kind"] for o in relay_objects(chart_values)) == [
        "Deployment",
        "PodDisruptionBudget",
        "ServiceAccount",
    ]


def test_a_network_policy_admits_scrapes_and_lets_out_only_what_the_relay_uses() -> None:
    assert not by_kind(relay_objects(values()), "NetworkPolicy")  # off by default
    monitoring = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    to_s3 = [{"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 9000}]}]
    objects = relay_objects(
        values(
            namespace="team-a",
            networkPolicy={
                "enabled": True,
                "metricsFrom": monitoring,
                "egress": {"enabled": True, "extraRules": to_s3},
            },
        )
    )
    (policy,) = by_kind(objects, "NetworkPolicy")
    (deployment,) = by_kind(objects, "Deployment")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == "team-a"
    # It selects the relay's pods, and only those (not the operator's, nor pipelines').
    assert spec["podSelector"] == deployment["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress == {"ports": [{"port": "relay-metrics", "protocol": "TCP"}], "from": monitoring}
    container_ports = {p["name"] for p in container_of(objects)["ports"]}
    assert {p["port"] for p in ingress["ports"]} <= container_ports
    dns, api, *extra = spec["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert [p["port"] for p in api["ports"]] == [443, 6443]  # the Leases
    assert extra == to_s3
    # Ingress only: egress stays open.
    open_egress = relay_objects(values(networkPolicy={"enabled": True}))
    (policy,) = by_kind(open_egress, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]
    assert "from" not in policy["spec"]["ingress"][0]  # any scraper


def test_a_startup_probe_only_when_asked_for() -> None:
    assert "startupProbe" not in container_of(relay_objects(values()))
    probe = {"httpGet": {"path": "/livez", "port": "relay-metrics"}, "failureThreshold": 30}
    assert container_of(relay_objects(values(startupProbe=probe)))["startupProbe"] == probe


def test_placement_passes_through() -> None:
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "shared-relay"}},
        }
    ]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    objects = relay_objects(
        values(
            topologySpreadConstraints=spread,
            affinity=affinity,
            nodeSelector={"pool": "io"},
            tolerations=[{"key": "io", "operator": "Exists"}],
            priorityClassName="high",
            extraVolumes=[{"name": "ca", "secret": {"secretName": "minio-ca"}}],
            extraVolumeMounts=[{"name": "ca", "mountPath": "/var/run/secrets/ca"}],
        )
    )
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == spread
    assert pod["affinity"] == affinity
    assert pod["nodeSelector"] == {"pool": "io"}
    assert pod["tolerations"] == [{"key": "io", "operator": "Exists"}]
    assert pod["priorityClassName"] == "high"
    assert pod["volumes"][-1] == {"name": "ca", "secret": {"secretName": "minio-ca"}}
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts[-1] == {"name": "ca", "mountPath": "/var/run/secrets/ca"}


def test_the_notes_say_how_to_see_the_replicas() -> None:
    notes = "runlog-relay/templates/NOTES.txt"
    on = render_manifests.render_chart(values(namespace="team-a"), name=RELEASE)[notes]
    assert "get leases -l runlog-relay.dev/shard-group=runlog-relay-shared" in on
    assert "-n team-a" in on
    assert "Shared-volume relay" not in render_manifests.render_chart({}, name=RELEASE)[notes]


def test_a_podmonitor_scrapes_the_relay_when_podmonitors_are_on() -> None:
    assert not by_kind(relay_objects(values()), "PodMonitor")
    objects = relay_objects({**values(), "prometheus": {"podMonitor": {"enabled": True}}})
    (monitor,) = by_kind(objects, "PodMonitor")
    (deployment,) = by_kind(objects, "Deployment")
    assert monitor["spec"]["selector"] == deployment["spec"]["selector"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "relay-metrics"


# --------------------------------------------------------------------------- the settings


def _settings_of(
    objects: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    config_file: Path | None = None,
) -> Any:
    """What the sidecar's own loader makes of the rendered container's environment."""
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)
    downward = {"metadata.name": "relay-7d9f-abcde", "metadata.namespace": "team-a"}
    for env in container_of(objects)["env"]:
        if "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
        else:
            monkeypatch.setenv(env["name"], downward[env["valueFrom"]["fieldRef"]["fieldPath"]])
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    return load_sidecar_settings({}, config_file)


def test_the_rendered_settings_are_the_values(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = relay_objects(
        values(
            shard={"leaseSeconds": 20},
            persistentVolumeClaim={"claimName": "jobs", "subPath": ""},
            credentials={"existingSecret": "s3-keys", "sessionTokenKey": "token"},
        )
    )
    settings = _settings_of(objects, monkeypatch)
    assert settings.shard == SidecarShard(group="runlog-relay-shared", lease_seconds=20)
    assert placement(settings.shard) == ("relay-7d9f-abcde", "team-a")
    assert str(settings.source) == "/var/run/runlog-relay/pvc"  # the k8s-job PVC's root
    assert settings.endpoint == "https://minio.example.com"
    assert (settings.bucket_name, settings.prefix) == ("runnable", "run-logs")
    assert settings.sync.force_polling and settings.sync.drain_timeout_seconds == 50
    assert settings.credential_source is CredentialSource.STATIC
    # The key files are where the Secret is mounted, under the names its items give.
    container = container_of(objects)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "credentials"]
    (deployment,) = by_kind(objects, "Deployment")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    files = {
        f"{mount['mountPath']}/{item['path']}": item["key"] for item in volume["secret"]["items"]
    }
    assert files == {
        str(settings.access_key_id_file): "AWS_ACCESS_KEY_ID",
        str(settings.secret_access_key_file): "AWS_SECRET_ACCESS_KEY",
        str(settings.session_token_file): "token",
    }


def test_without_a_secret_the_pod_identity_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    annotations = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/logs"}
    objects = relay_objects(values(serviceAccount={"annotations": annotations}))
    (account,) = by_kind(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == annotations
    settings = _settings_of(objects, monkeypatch)
    assert settings.credential_source is CredentialSource.SERVICE_ACCOUNT  # never minioadmin
    assert not any(
        v["name"] == "credentials"
        for v in by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    )


def test_a_runlogstore_gives_its_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `store.runLogStore` the relay reads the ConfigMap the operator renders for that
    store, at the path its arguments name, and the store's Secret where that config says."""
    objects = relay_objects(
        {
            "sharedRelay": {
                **ON,
                "store": {"runLogStore": "main"},
                "credentials": {"existingSecret": "minio-credentials"},
            }
        }
    )
    store = next(
        d
        for d in yaml.safe_load_all((EXAMPLES / "runlogstore.yaml").read_text())
        if d and d["kind"] == "RunLogStore"
    )
    spec = rc.parse_spec(store["spec"])
    configmap = rc.configmap_manifest(spec, namespace="team-a", store="main", uid=None)
    container = container_of(objects)
    (deployment,) = by_kind(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert container["args"] == ["sidecar", "--config", rc.CONFIG_FILE]
    assert f"{mounts['config']['mountPath']}/{rc.CONFIG_KEY}" == rc.CONFIG_FILE
    expected_volumes, expected_mounts = rc.pod_volumes(spec, store="main")
    assert mounts["credentials"]["mountPath"] in {m["mountPath"] for m in expected_mounts}
    assert volumes["credentials"]["secret"]["items"] == expected_volumes[1]["secret"]["items"]
    config_file = tmp_path / rc.CONFIG_KEY
    config_file.write_text(configmap["data"][rc.CONFIG_KEY])
    settings = _settings_of(objects, monkeypatch, config_file)
    assert settings.endpoint == spec.endpoint and settings.bucket == spec.bucket  # the store's
    assert settings.shard.group == "runlog-relay-shared"  # and this Deployment's own
    assert str(settings.source) == "/var/run/runlog-relay/pvc/run_logs"


def test_the_example_is_the_chart_rendered() -> None:
    """manifests/examples/shared-pvc-scale-out.yaml is generated (`make manifests`); the
    drift test in test_helm.py compares the committed file with this rendering."""
    text = render_manifests.render_scale_out_example()
    documents = [d for d in yaml.safe_load_all(text) if d]
    chart_values = yaml.safe_load(render_manifests.SCALE_OUT_VALUES.read_text())
    assert documents == relay_objects(chart_values)
    assert (EXAMPLES / "shared-pvc-scale-out.yaml").read_text() == text


# --------------------------------------------------------------------------- RBAC


@pytest.fixture()
def kube_resources(kube_resources: list[Any]) -> list[Any]:
    return [*kube_resources, LEASES]


def _granted(namespace: str) -> set[tuple[str, str, str]]:
    (role,) = by_kind(relay_objects(values(namespace=namespace)), "Role")
    assert role["metadata"]["namespace"] == namespace
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if not rule.get("resourceNames")
    }


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_role_is_exactly_what_the_lease_code_uses(kube: KubeHarness) -> None:
    """A replica's whole life over the real Lease client, against the emulator: join
    (create), renew (get, update), look at the group (list), see a replica die and
    collect its Lease, leave (delete). Time is the Shard's injected clock, so nothing
    waits."""
    group, namespace = "runlog-relay-shared", "team-a"
    kube.ensure_namespace(namespace)
    clock = _Clock()
    changes: list[str] = []

    def replica(identity: str) -> Shard:
        api = LeaseApi(kube.url, namespace, group)
        return Shard(identity, api, lease_seconds=15, on_change=changes.append, clock=clock)

    seen_before = len(kube.call(lambda: list(kube.emulator)))
    me, other = replica("relay-a"), replica("relay-b")
    me.step()  # create
    other.step()
    me.step()  # get + update, list: sees relay-b
    assert me.members == {"relay-a", "relay-b"}
    # relay-b dies (never renews again): gone after leaseSeconds, collected after 4x.
    for _ in range(25):
        clock.now += 5
        me.step()
    assert me.members == {"relay-a"}
    leases = kube.list("coordination.k8s.io/v1/leases", namespace)
    assert [lease["metadata"]["name"] for lease in leases] == [f"{group}-relay-a"]
    me.leave()  # delete
    assert kube.list("coordination.k8s.io/v1/leases", namespace) == []

    requests = kube.call(lambda: list(kube.emulator))[seen_before:]
    accesses = [
        access
        for request in requests
        if request.headers.get("User-Agent", "").startswith("python-urllib3")
        and (access := access_of(str(request.method.value).upper(), str(request.url)))
    ]
    assert accesses, "no request of the Lease client was seen"
    assert {a.namespace for a in accesses} == {namespace}  # its own namespace only
    used = {(a.group, a.resource, a.verb) for a in accesses}
    granted = _granted(namespace)
    assert used - granted == set(), f"the sidecar needs more than the Role grants: {used - granted}"
    assert granted - used == set(), f"the Role grants what the sidecar never does: {granted - used}"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ({"enabled": True, "store": ON["store"]}, r"persistentVolumeClaim\.claimName"),
        (
            {**ON, "store": {**ON["store"], "runLogStore": "main"}},
            r"either runLogStore .* not both",
        ),
        ({**ON, "store": {"endpoint": "https://s3.example.com"}}, r"both endpoint and bucket"),
        ({**ON, "store": {}}, r"sharedRelay\.store needs runLogStore"),
        ({**ON, "shard": {"leaseSeconds": 3}}, r"leaseSeconds=3 is too low: at least 6"),
        ({**ON, "replicas": 0}, r"replicas"),
        ({**ON, "shard": {"group": "Shared_Relay"}}, r"group"),
        (
            {**ON, "terminationGracePeriodSeconds": 30},
            r"terminationGracePeriodSeconds=30 must be at least sync\.drainTimeoutSeconds \+ 5",
        ),
        ({**ON, "persistentVolumeClaim": {"claimName": "x", "subPath": "../etc"}}, r"'\.\.'"),
        ({**ON, "store": {**ON["store"], "layout": "flat"}}, r"layout"),
        ({**ON, "replica": 3}, r"replica"),  # a typo of replicas
        (
            {**ON, "serviceAccount": {"create": False}},
            r"serviceAccount\.create=false needs sharedRelay\.serviceAccount\.name",
        ),
        (
            {**ON, "networkPolicy": {"enabled": True, "egress": {"enabled": True}}},
            r"egress\.enabled needs sharedRelay\.networkPolicy\.egress\.extraRules",
        ),
        ({**ON, "networkPolicy": {"webhookFrom": []}}, r"webhookFrom"),  # the operator's only
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_unsafe_or_inconsistent_values_are_refused(relay: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render_manifests.render_chart({"sharedRelay": relay}, name=RELEASE, namespace=NAMESPACE)
