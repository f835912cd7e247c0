"""The Helm chart, through Helm's own engine (helm-python-sdk binds Helm v4's Go SDK).

- ``helm lint --strict`` is clean with the defaults and with every ``ci/`` values file;
- every ``ci/`` file renders, and every rendered object validates against the Kubernetes
  1.30 OpenAPI schema (kubernetes-validate, strict: unknown fields fail). Kinds that come
  from other projects' CRDs (prometheus-operator, cert-manager, kopf) are not in that
  schema; they are checked against :data:`FOREIGN_SCHEMAS`, the subset of their CRDs'
  fields this chart writes, with unknown fields refused -- a typo fails either way;
- every container runs restricted; selectors never carry the chart version;
- the CRD is ``runlog-relay crd``'s, byte for byte; RBAC is exactly
  :mod:`runlog_relay.operator.permissions`; the operator's arguments parse with the real
  command line; the webhook configurations follow the contract with the operator;
- the committed generated files (``manifests/install.yaml``, the chart's CRD copy and
  values table) are what ``hack/render_manifests.py`` produces now.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from runlog_relay import __version__
from runlog_relay.cli import build_parser
from runlog_relay.config.crd import crd_manifest, crd_yaml
from runlog_relay.operator import permissions
from runlog_relay.operator import settings as operator_settings
from runlog_relay.operator.command import settings_from_args

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "runlog-relay"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
KUBE_VERSION = "1.30"
RELEASE, NAMESPACE = "runlog-relay", "runlog-relay"

sys.path.insert(0, str(REPO / "hack"))
import chart_readme  # noqa: E402
import render_manifests  # noqa: E402

pytestmark = pytest.mark.integration


def ci_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [obj for _, obj in render_manifests.rendered_objects(render_of(values, **kwargs))]


def render_of(values: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, str]:
    kwargs.setdefault("name", RELEASE)
    kwargs.setdefault("namespace", NAMESPACE)
    return render_manifests.render_chart(values, **kwargs)


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = kinds(objects, kind)
    return found


def operator_part(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects of the operator and its sidecars, without the shared-volume relay's
    (``sharedRelay``: its own Deployment, ServiceAccount, Role; test_helm_shared_relay.py)."""
    return [
        o
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "shared-relay"
    ]


@pytest.fixture(params=CI_FILES, ids=lambda p: p.name)
def ci_file(request: pytest.FixtureRequest) -> Path:
    return request.param


# --------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize(
    "values_file", [None, *CI_FILES], ids=lambda p: p.name if p else "defaults"
)
def test_helm_lint_strict_is_clean(values_file: Path | None) -> None:
    values = ci_values(values_file) if values_file else None
    report = helm_python.lint(
        str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0"
    )
    # Severity 1 is "info" (only "icon is recommended": the project has no icon).
    problems = [m for m in report["messages"] if m["severity"] > 1]
    assert not problems and not report["errors"], json.dumps(report, indent=2)


def test_the_ci_files_cover_what_the_issue_asks_for() -> None:
    assert {p.name for p in CI_FILES} >= {
        "default-values.yaml",
        "namespaced-values.yaml",
        "all-enabled-values.yaml",
        "cert-manager-values.yaml",
    }
    everything = render(ci_values(CHART / "ci" / "all-enabled-values.yaml"))
    # Every optional template renders something with all-enabled, but the shared
    # self-signed certificate's Secret, the default's alternative to cert-manager.
    templates = {
        t
        for values in (ci_values(CHART / "ci" / "all-enabled-values.yaml"), {})
        for t, _ in render_manifests.rendered_objects(render_of(values))
    }
    sources = {
        f"runlog-relay/{p.relative_to(CHART)}" for p in (CHART / "templates").rglob("*.yaml")
    }
    assert sources <= templates, sorted(sources - templates)
    assert {o["kind"] for o in everything} >= {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "Certificate",
        "ConfigMap",
    }


def test_chart_metadata_matches_the_package() -> None:
    with helm_python.Chart.load(str(CHART)) as chart:
        metadata = chart.metadata
        schema = chart.schema
    assert metadata["apiVersion"] == "v2"
    assert metadata["appVersion"] == __version__
    assert schema is not None and schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"logLevel": "LOUD"}}, "logLevel"),
        ({"operator": {"replicas": 2}}, "replicas"),  # a typo of replicaCount
        ({"webhook": {"failurePolicy": "Sometimes"}}, "failurePolicy"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"image": {"digest": "latest"}}, "digest"),
    ],
)
def test_the_values_schema_refuses_mistakes(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render_of(values)


def test_several_replicas_need_peering() -> None:
    with pytest.raises(helm_python.HelmError, match=r"peering\.enabled"):
        render_of({"operator": {"replicaCount": 2}})
    objects = render({"operator": {"replicaCount": 2}, "peering": {"enabled": True}})
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # Peered replicas may overlap; a new one serves the webhook before an old one goes.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert "--peering=runlog-relay" in args and "--peering-lifetime=30" in args
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "runlog-relay"
    assert one(render({}), "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    # A drain never takes both; a node's loss is a failover.
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == spec["selector"]
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"] == spec["selector"] and term["topologyKey"].endswith("hostname")
    assert not kinds(render({}), "PodDisruptionBudget")
    assert "affinity" not in one(render({}), "Deployment")["spec"]["template"]["spec"]


def test_unsafe_ha_combinations_are_refused_or_warned_about() -> None:
    # Peering keeps a KopfPeering per watched namespace: names only (the schema says so).
    with pytest.raises(helm_python.HelmError, match="does not match pattern"):
        render_of({"peering": {"enabled": True}, "watchNamespaces": ["team-*"]})
    # failurePolicy Fail with one replica: every opted-in pod waits for its restarts.
    notes = render_of({"webhook": {"failurePolicy": "Fail"}})["runlog-relay/templates/NOTES.txt"]
    assert "WARNING" in notes and "replicaCount" in notes
    ha = {"webhook": {"failurePolicy": "Fail"}, "operator": {"replicaCount": 2}}
    ha_notes = render_of({**ha, "peering": {"enabled": True}})["runlog-relay/templates/NOTES.txt"]
    assert "WARNING" not in ha_notes


def test_kopfs_peering_crds_come_from_the_crds_folder() -> None:
    """Shared with other kopf operators: Helm installs them first, skips them when they
    exist and never deletes them."""
    with helm_python.Chart.load(str(CHART)) as chart:
        (crds,) = [c["data"] for c in chart.crds]  # what Helm installs before the templates
    documents = [d for d in yaml.safe_load_all(crds) if d]
    names = {d["metadata"]["name"] for d in documents}
    assert names == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for document in documents:
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


# --------------------------------------------------------------------------- schemas

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
            "maxLength": 253,
        },
        "namespace": {"type": "string"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    "additionalProperties": False,
}
_ANY_OBJECTS = {"type": "array", "items": {"type": "object"}}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$",
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


def _endpoint() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["port"],
        "properties": {
            "port": {"type": "string"},
            "path": {"type": "string"},
            "interval": _DURATION,
            "scrapeTimeout": _DURATION,
            "honorLabels": {"type": "boolean"},
            "relabelings": _ANY_OBJECTS,
            "metricRelabelings": _ANY_OBJECTS,
        },
        "additionalProperties": False,
    }


def _kind(api_version: str, kind: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": _METADATA,
    }
    if spec is not None:
        properties["spec"] = spec
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *(["spec"] if spec else [])],
        "properties": properties,
        "additionalProperties": False,
    }


#: The fields of other projects' CRDs that the chart writes (prometheus-operator
#: monitoring.coreos.com/v1, cert-manager.io/v1, kopf.dev/v1), from their CRDs; anything
#: else is refused so a misspelt field cannot pass unnoticed.
FOREIGN_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _kind(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "endpoints": {"type": "array", "minItems": 1, "items": _endpoint()},
            },
            "additionalProperties": False,
        },
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _kind(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _endpoint()},
            },
            "additionalProperties": False,
        },
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _kind(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {
                                            "type": "string",
                                            "pattern": "^[A-Za-z][A-Za-z0-9]*$",
                                        },
                                        "expr": {"type": "string"},
                                        "for": _DURATION,
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    ),
    ("cert-manager.io/v1", "Issuer"): _kind(
        "cert-manager.io/v1",
        "Issuer",
        {
            "type": "object",
            "properties": {
                "selfSigned": {"type": "object"},
                "ca": {
                    "type": "object",
                    "required": ["secretName"],
                    "properties": {"secretName": {"type": "string"}},
                    "additionalProperties": False,
                },
            },
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
        },
    ),
    ("cert-manager.io/v1", "Certificate"): _kind(
        "cert-manager.io/v1",
        "Certificate",
        {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string"},
                "isCA": {"type": "boolean"},
                "duration": {"type": "string"},
                "renewBefore": {"type": "string"},
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": {"type": "array", "items": {"type": "string"}},
                "privateKey": {
                    "type": "object",
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    },
                    "additionalProperties": False,
                },
                "usages": {"type": "array", "items": {"type": "string"}},
                "issuerRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "group": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    ),
    ("kopf.dev/v1", "ClusterKopfPeering"): _kind("kopf.dev/v1", "ClusterKopfPeering", None),
    ("kopf.dev/v1", "KopfPeering"): _kind("kopf.dev/v1", "KopfPeering", None),
}


def validate(obj: dict[str, Any]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in FOREIGN_SCHEMAS:
        jsonschema.validate(obj, FOREIGN_SCHEMAS[key])
        return
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_every_rendered_object_validates(ci_file: Path) -> None:
    values = ci_values(ci_file)
    rendered = render_of(values)
    objects = render_manifests.rendered_objects(rendered)
    assert objects
    for template, obj in objects:
        try:
            validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            message = getattr(exc, "message", str(exc))
            pytest.fail(f"{template}: {obj['kind']} {obj['metadata'].get('name')}: {message}")
    assert "runlog-relay/templates/NOTES.txt" in rendered


def test_the_validation_catches_mistakes() -> None:
    deployment = one(render(), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    monitor = one(render({"prometheus": {"monitor": {"enabled": True}}}), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


# --------------------------------------------------------------------------- pods


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] == "Pod":
            yield f"Pod {obj['metadata']['name']}", obj["spec"]
        elif obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield f"{obj['kind']} {obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def test_every_container_is_restricted(ci_file: Path) -> None:
    specs = list(pod_specs(render(ci_values(ci_file))))
    assert {name.split()[0] for name, _ in specs} == {"Deployment", "Pod"}  # + the test pod
    for name, spec in specs:
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        containers = spec["containers"] + spec.get("initContainers", [])
        for container in containers:
            where = f"{name} container {container['name']}"
            context = {**pod, **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, where
            assert isinstance(context.get("runAsUser"), int) and context["runAsUser"] > 0, where
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in context.get("capabilities", {}).get("drop", []), where
            assert not context.get("capabilities", {}).get("add"), where
            assert not context.get("privileged"), where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name


def test_the_operator_has_probes_and_a_writable_tmp_only() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    assert "resources" not in container  # unset by default
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9464, "liveness": 8080, "webhook": 9443}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    no_webhook = one(render({"webhook": {"enabled": False}}), "Deployment")
    probe = no_webhook["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "liveness"}


def _chart_with_version(tmp_path: Path, version: str) -> Path:
    copy_dir = tmp_path / f"chart-{version}"
    shutil.copytree(CHART, copy_dir)
    chart_yaml = copy_dir / "Chart.yaml"
    text = chart_yaml.read_text()
    chart_yaml.write_text(re.sub(r"(?m)^version: .*$", f"version: {version}", text))
    return copy_dir


def selectors(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        spec, where = obj.get("spec", {}), f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in {"Deployment", "Service", "ServiceMonitor", "PodMonitor"}:
            yield where, spec["selector"]
        elif obj["kind"] == "NetworkPolicy":
            yield where, spec["podSelector"]


def test_selectors_never_include_the_chart_version(tmp_path: Path) -> None:
    values = ci_values(CHART / "ci" / "all-enabled-values.yaml")
    found = dict(selectors(render(values)))
    assert {w.split()[0] for w in found} == {
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PodMonitor",
        "NetworkPolicy",
    }
    for where, selector in found.items():
        text = json.dumps(selector)
        assert "helm.sh/chart" not in text and "app.kubernetes.io/version" not in text, where
        assert "0.1.0" not in text, where
    # The same release from a newer chart selects exactly the same pods.
    newer = _chart_with_version(tmp_path, "9.8.7")
    upgraded = dict(selectors(render(values, chart=newer)))
    assert upgraded == found
    deployment = one(operator_part(render(values, chart=newer)), "Deployment")
    assert deployment["metadata"]["labels"]["helm.sh/chart"] == "runlog-relay-9.8.7"
    assert set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


# --------------------------------------------------------------------------- CRD


def _without_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    crd = copy.deepcopy(crd)
    metadata = crd["metadata"]
    metadata.pop("annotations", None)
    generated_labels = crd_manifest()["metadata"]["labels"]
    metadata["labels"] = {k: v for k, v in metadata["labels"].items() if k in generated_labels}
    return crd


def test_the_chart_crd_is_the_generated_one() -> None:
    chart_copy = CHART / "files" / "crds" / "runlogstores.runlog-relay.dev.yaml"
    assert chart_copy.read_text(encoding="utf-8") == crd_yaml(), (
        f"{chart_copy.relative_to(REPO)} is stale: run `make manifests`"
    )
    crd = one(render(), "CustomResourceDefinition")
    assert _without_chart_metadata(crd) == crd_manifest()
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    # Integers stay integers (a fromYaml/toYaml round trip would make them floats, and
    # Python's 1 == 1.0 would not notice): compare the JSON texts.
    assert json.dumps(_without_chart_metadata(crd)) == json.dumps(crd_manifest())


def test_crds_keep_and_enabled() -> None:
    crd = one(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]
    assert _without_chart_metadata(crd) == crd_manifest()
    assert not kinds(render({"crds": {"enabled": False}}), "CustomResourceDefinition")


# --------------------------------------------------------------------------- RBAC


def _expected_permissions(values: dict[str, Any]) -> permissions.Permissions:
    merged = _merged(values)
    webhook = merged["webhook"]
    flags = permissions.flags_for(
        clusterwide=not merged["watchNamespaces"],
        peering=merged["peering"]["enabled"],
        webhook=webhook["enabled"],
        self_signed=not webhook["certManager"]["enabled"],
    )
    return permissions.required(
        flags, {"webhook_config_name": RELEASE, "webhook_cert_secret": f"{RELEASE}-webhook-cert"}
    )


def _merged(values: dict[str, Any]) -> dict[str, Any]:
    with helm_python.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


RBAC_CASES = [
    *[ci_values(p) for p in CI_FILES],
    {"webhook": {"enabled": False}},
    {"watchNamespaces": ["team-a"], "peering": {"enabled": True}, "operator": {"replicaCount": 2}},
    {"watchNamespaces": ["team-a"], "webhook": {"certManager": {"enabled": True}}},
]


@pytest.mark.parametrize("values", RBAC_CASES, ids=lambda v: json.dumps(v)[:60])
def test_rbac_is_exactly_what_the_operator_needs(values: dict[str, Any]) -> None:
    expected = _expected_permissions(values)
    objects = operator_part(render(values))
    namespaces = _merged(values)["watchNamespaces"]
    cluster_role = one(objects, "ClusterRole")
    own = [r for r in kinds(objects, "Role") if r["metadata"]["name"].endswith("-own")]
    served = [r for r in kinds(objects, "Role") if r not in own]
    if namespaces:
        assert cluster_role["rules"] == permissions.rules_manifest(expected.cluster)
        assert sorted(r["metadata"]["namespace"] for r in served) == sorted(namespaces)
        for role in served:
            assert role["rules"] == permissions.rules_manifest(expected.served)
    else:
        assert cluster_role["rules"] == permissions.rules_manifest(
            expected.served + expected.cluster
        )
        assert not served
    if expected.own:
        (role,) = own
        assert role["metadata"]["namespace"] == NAMESPACE
        assert role["rules"] == permissions.rules_manifest(expected.own)
    else:
        assert not own
    bound = sorted(
        (b["metadata"]["namespace"], b["roleRef"]["name"]) for b in kinds(objects, "RoleBinding")
    )
    assert bound == sorted(
        (r["metadata"]["namespace"], r["metadata"]["name"]) for r in own + served
    )
    account = one(objects, "ServiceAccount")["metadata"]
    for binding in kinds(objects, "RoleBinding") + kinds(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
        ]
    for role in kinds(objects, "Role") + kinds(objects, "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_rbac_is_documented_where_users_look() -> None:
    """docs/rbac.md is generated from the same rules (test_generated_files_are_up_to_date
    keeps it so); the Helm page's RBAC section points there."""
    doc = (REPO / "docs" / "rbac.md").read_text(encoding="utf-8")
    for rule in permissions.RULES:
        assert rule.why in doc
    section = (REPO / "docs" / "helm.md").read_text(encoding="utf-8").split("## RBAC", 1)[1]
    assert "](rbac.md)" in section.split("\n## ", 1)[0]


# --------------------------------------------------------------------------- the operator


def operator_args(values: dict[str, Any] | None = None) -> list[str]:
    deployment = one(operator_part(render(values)), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["args"]


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name)
def test_the_operator_arguments_parse_with_the_real_command_line(values_file: Path) -> None:
    args = operator_args(ci_values(values_file))
    assert args[0] == "operator"
    parser = build_parser(only="operator")
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"`runlog-relay {' '.join(args)}` is refused by the command line")


def test_the_operator_arguments_follow_the_contract() -> None:
    default = operator_args()
    assert "--all-namespaces" in default
    assert "--webhook-port=9443" in default
    assert f"--webhook-service-name={RELEASE}" in default
    assert f"--webhook-service-namespace={NAMESPACE}" in default
    assert f"--webhook-config-name={RELEASE}" in default
    assert not any(a.startswith("--webhook-cert-dir") for a in default)
    assert f"--sidecar-image=ghcr.io/runlog-relay/runlog-relay:{__version__}" in default
    resources = next(a for a in default if a.startswith("--sidecar-resources="))
    assert (
        json.loads(resources.split("=", 1)[1]) == _merged({})["injection"]["sidecar"]["resources"]
    )
    assert "--inject-when-not-ready" in default and "--no-scrape-annotations" in default

    namespaced = operator_args(ci_values(CHART / "ci" / "namespaced-values.yaml"))
    assert "--namespace=team-a" in namespaced and "--namespace=team-b" in namespaced
    assert "--all-namespaces" not in namespaced

    cert_manager = operator_args(ci_values(CHART / "ci" / "cert-manager-values.yaml"))
    cert_dir = next(a for a in cert_manager if a.startswith("--webhook-cert-dir="))
    assert not any(a.startswith("--webhook-config-name") for a in cert_manager)
    deployment = one(render(ci_values(CHART / "ci" / "cert-manager-values.yaml")), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "webhook-tls")
    assert mount["mountPath"] == cert_dir.split("=", 1)[1] and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-tls")
    (certificate,) = [
        c
        for c in kinds(render(ci_values(CHART / "ci" / "cert-manager-values.yaml")), "Certificate")
        if not c["spec"].get("isCA")
    ]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]

    everything = operator_args(ci_values(CHART / "ci" / "all-enabled-values.yaml"))
    assert "--sidecar-image=registry.example.com/runlog-relay-sidecar:0.1.0" in everything
    assert "--no-inject-when-not-ready" in everything and "--scrape-annotations" in everything
    assert "--priority=100" in everything and "--log-level=DEBUG" in everything
    injection = settings_of(everything).injection
    assert injection.native_sidecar == "never" and injection.logs_volume_size_limit == "4Gi"
    assert injection.host_network and injection.openshift
    assert injection.allowed_images == ["registry.example.com/runlog-relay-sidecar:*"]
    assert injection.image_pull_secrets == ["regcred"]

    digest = "sha256:" + "a" * 64
    pinned = operator_args({"image": {"digest": digest}})
    assert f"--sidecar-image=ghcr.io/runlog-relay/runlog-relay@{digest}" in pinned


def settings_of(args: list[str]) -> operator_settings.OperatorSettings:
    return settings_from_args(build_parser(only="operator").parse_args(args))


def test_the_sidecar_defaults_are_the_webhooks() -> None:
    webhook = pytest.importorskip("runlog_relay.operator.webhook")
    # The chart's defaults are the operator's (written once, in settings.py).
    charted = settings_of(operator_args()).injection.model_dump(exclude={"image"})
    assert charted == operator_settings.InjectionSettings().model_dump(exclude={"image"})
    assert _merged({})["injection"]["sidecar"]["resources"] == dict(
        operator_settings.DEFAULT_RESOURCES
    )
    assert _merged({})["image"]["repository"] == operator_settings.DEFAULT_IMAGE.rsplit(":", 1)[0]
    podmonitor = one(render({"prometheus": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == webhook.METRICS_PORT_NAME
    assert webhook.CONTAINER_NAME == "runlog-relay"


# --------------------------------------------------------------------------- webhooks


def test_the_webhook_configurations_follow_the_contract() -> None:
    objects = render()
    service = one(objects, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "metrics": "metrics",
        "webhook": "webhook",
    }
    mutating = one(objects, "MutatingWebhookConfiguration")
    validating = one(objects, "ValidatingWebhookConfiguration")
    assert mutating["metadata"]["name"] == validating["metadata"]["name"] == RELEASE
    inject, by_namespace = mutating["webhooks"]
    assert [inject["name"], by_namespace["name"]] == [
        "inject.pods.runlog-relay.dev",
        "inject.namespace-pods.runlog-relay.dev",
    ]
    assert "objectSelector" not in inject  # matchConditions choose the pods (see below)
    assert by_namespace["namespaceSelector"]["matchExpressions"][0] == {
        "key": "runlog-relay.dev/store",
        "operator": "Exists",
    }
    assert by_namespace["clientConfig"] == inject["clientConfig"]
    # NoneOnDryRun rather than None: the pod webhook posts an Event when it cannot inject
    # (never on a dry run; see the README).
    assert (inject["failurePolicy"], inject["sideEffects"], inject["timeoutSeconds"]) == (
        "Ignore",
        "NoneOnDryRun",
        5,
    )
    assert inject["admissionReviewVersions"] == ["v1"]
    assert inject["reinvocationPolicy"] == "Never"
    assert inject["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "operations": ["CREATE"],
            "scope": "Namespaced",
        }
    ]
    (excluded,) = inject["namespaceSelector"]["matchExpressions"]
    assert excluded == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", NAMESPACE],
    }
    (validate_store,) = validating["webhooks"]
    # Fail: the allow-list and the Secret-access check are not skipped while it is down.
    assert validate_store["failurePolicy"] == "Fail"
    # ... and the operator's own writes are never sent to the webhook it serves itself.
    assert validate_store["matchConditions"] == [
        {
            "name": "not-the-operator",
            "expression": "request.userInfo.username !="
            f" 'system:serviceaccount:{NAMESPACE}:{RELEASE}'",
        }
    ]
    assert validate_store["sideEffects"] == "None"  # it only reads
    assert validate_store["rules"][0]["resources"] == ["runlogstores"]
    assert validate_store["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    for webhook, path in (
        (inject, "/mutate-pods"),
        (by_namespace, "/mutate-pods"),
        (validate_store, "/validate-runlogstores"),
    ):
        client = webhook["clientConfig"]
        assert client["service"] == {
            "name": service["metadata"]["name"],
            "namespace": NAMESPACE,
            "path": path,
            "port": 443,
        }
        # Self-signed mode: no caBundle at all, so upgrades never reset what the operator wrote.
        assert "caBundle" not in client
    for config in (mutating, validating):
        assert "annotations" not in config["metadata"]


def _sent_by(
    webhook: dict[str, Any], pod: dict[str, Any], namespace_labels: dict[str, str]
) -> bool:
    """Whether the API server would send ``pod`` to ``webhook``: its namespaceSelector
    on the namespace's labels, then its CEL matchConditions on the pod (cel-python)."""
    labels = {"kubernetes.io/metadata.name": "team-a", **namespace_labels}
    for expression in webhook["namespaceSelector"]["matchExpressions"]:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "Exists" and not present:
            return False
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
    environment = celpy.Environment()
    for condition in webhook.get("matchConditions") or []:
        program = environment.program(environment.compile(condition["expression"]))
        if not program.evaluate({"object": celpy.json_to_cel(pod)}):
            return False
    return True


@pytest.mark.parametrize(
    ("metadata", "namespace_labels", "sent_to"),
    [
        ({"labels": {"runlog-relay.dev/store": "main"}}, {}, ["pods"]),
        # runnable's K8sJobExecutor can only set annotations on its pod template.
        ({"annotations": {"runlog-relay.dev/store": "main"}}, {}, ["pods"]),
        ({"labels": {"app": "web"}}, {}, []),  # unrelated pods never reach the webhook
        ({}, {}, []),
        # A namespace naming a default store: its other pods, once, by the second entry.
        ({"labels": {"app": "step"}}, {"runlog-relay.dev/store": "main"}, ["namespace-pods"]),
        (
            {"labels": {"runlog-relay.dev/store": "other"}},
            {"runlog-relay.dev/store": "main"},
            ["pods"],
        ),
        (
            {"annotations": {"runlog-relay.dev/inject": "false"}},
            {"runlog-relay.dev/store": "main"},
            [],
        ),
    ],
)
def test_only_opted_in_pods_are_sent_to_the_webhook_and_only_once(
    metadata: dict[str, Any], namespace_labels: dict[str, str], sent_to: list[str]
) -> None:
    mutating = one(render(), "MutatingWebhookConfiguration")
    pod = {"metadata": {"name": "p", "namespace": "team-a", **metadata}, "spec": {}}
    chosen = [
        w["name"].split(".")[1] for w in mutating["webhooks"] if _sent_by(w, pod, namespace_labels)
    ]
    assert chosen == sent_to
    off = one(render({"webhook": {"namespaceOptIn": False}}), "MutatingWebhookConfiguration")
    assert [w["name"] for w in off["webhooks"]] == ["inject.pods.runlog-relay.dev"]


def test_cert_manager_mode_signs_the_serving_certificate_with_a_ca() -> None:
    """Self-signed root → CA Issuer → serving certificate: the caBundle is the CA, which the
    serving certificate's renewals leave alone (a self-signed Issuer signing the serving
    certificate directly made the caBundle the leaf: TLS failures at every renewal)."""
    objects = render(ci_values(CHART / "ci" / "cert-manager-values.yaml"))
    issuers = {i["metadata"]["name"]: i["spec"] for i in kinds(objects, "Issuer")}
    certificates = {c["metadata"]["name"]: c["spec"] for c in kinds(objects, "Certificate")}
    (ca_name,) = [name for name, spec in certificates.items() if spec.get("isCA")]
    (serving_name,) = [name for name in certificates if name != ca_name]
    ca, serving = certificates[ca_name], certificates[serving_name]
    assert "selfSigned" in issuers[ca["issuerRef"]["name"]]
    assert issuers[serving["issuerRef"]["name"]] == {"ca": {"secretName": ca["secretName"]}}
    assert not serving.get("isCA")
    assert f"{RELEASE}.{NAMESPACE}.svc" in serving["dnsNames"]
    assert ca["duration"] == "87600h" and serving["duration"] == "8760h"
    # cainjector takes ca.crt of the serving certificate's Secret: the CA.
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        config = one(objects, kind)
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{serving_name}"
        }
    deployment = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in deployment["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == serving["secretName"]
    everything = render(ci_values(CHART / "ci" / "all-enabled-values.yaml"))
    assert not kinds(everything, "Issuer")  # an existing ClusterIssuer is used instead
    assert one(everything, "Certificate")["spec"]["issuerRef"]["kind"] == "ClusterIssuer"


def test_namespaced_mode_sends_only_served_namespaces_to_the_webhooks() -> None:
    objects = render(ci_values(CHART / "ci" / "namespaced-values.yaml"))
    for inject in one(objects, "MutatingWebhookConfiguration")["webhooks"]:
        assert {
            "key": "kubernetes.io/metadata.name",
            "operator": "In",
            "values": ["team-a", "team-b"],
        } in inject["namespaceSelector"]["matchExpressions"]
    podmonitor = one(objects, "PodMonitor")
    assert podmonitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert not one(
        render({"webhook": {"validating": {"enabled": False}}}), "ValidatingWebhookConfiguration"
    )["webhooks"]


# --------------------------------------------------------------------------- monitoring etc.


def test_monitoring_objects() -> None:
    objects = operator_part(render(ci_values(CHART / "ci" / "all-enabled-values.yaml")))
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    podmonitor = one(objects, "PodMonitor")
    assert podmonitor["spec"]["selector"] == {
        "matchExpressions": [{"key": "runlog-relay.dev/store", "operator": "Exists"}]
    }
    assert podmonitor["spec"]["namespaceSelector"] == {"any": True}
    endpoint = podmonitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "relay-metrics"
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_runlog_relay_dev_store"],
        "targetLabel": "store",
    } in endpoint["relabelings"]
    dashboard = next(o for o in kinds(objects, "ConfigMap") if "dashboard" in o["metadata"]["name"])
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["runlog-relay.json"]) == json.loads(
        (CHART / "dashboards" / "runlog-relay.json").read_text()
    )
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    # Optional features are off by default.
    defaults = {o["kind"] for o in render()}
    assert not defaults & {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "ConfigMap",
    }


def test_the_helm_test_pod_checks_the_operators_metrics() -> None:
    rendered = render_of()
    pod = yaml.safe_load(rendered["runlog-relay/templates/tests/test-connection.yaml"])
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{RELEASE}.{NAMESPACE}.svc:9464/metrics" in script
    assert "runlog_relay_operator_reconciles_total" in script
    compile(script, "test-connection", "exec")  # the script is valid Python


def test_notes_say_what_to_do_next() -> None:
    notes = render_of()["runlog-relay/templates/NOTES.txt"]
    assert "kubectl -n team-a create secret generic" in notes
    assert "kind: RunLogStore" in notes
    assert "runlog-relay.dev/store: main" in notes
    namespaced = render_of(ci_values(CHART / "ci" / "namespaced-values.yaml"))
    assert "kubectl -n team-a" in namespaced["runlog-relay/templates/NOTES.txt"]


# --------------------------------------------------------------------------- generated files


def test_generated_files_are_up_to_date() -> None:
    stale = [
        str(path.relative_to(REPO))
        for path, text in render_manifests.generated_files().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"{stale} are out of date: run `make manifests`"


def test_install_yaml_is_the_rendered_chart() -> None:
    documents = [
        d for d in yaml.safe_load_all(render_manifests.INSTALL.read_text()) if d is not None
    ]
    assert documents[0]["kind"] == "Namespace"
    assert documents[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    chart_objects = [
        obj
        for template, obj in render_manifests.rendered_objects(render_of())
        if "/tests/" not in template
    ]
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    assert sorted(documents[1:], key=key) == sorted(chart_objects, key=key)
    order = [d["kind"] for d in documents]
    assert order.index("CustomResourceDefinition") < order.index("Deployment")
    assert order.index("ServiceAccount") < order.index("Deployment")
    for document in documents:
        validate(document)


def test_every_value_is_documented_in_the_readme() -> None:
    assert chart_readme.undocumented() == []
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    with helm_python.Chart.load(str(CHART)) as chart:
        values = chart.values
    documented = [d.path for d in chart_readme.values_docs()]
    assert len(documented) > 50
    for path in chart_readme.value_paths(values):
        if path in documented:
            assert f"| `{path}` |" in readme, f"{path} is not in the chart's README"
