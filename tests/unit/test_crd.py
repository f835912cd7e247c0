"""The RunLogStore CRD: generated from StoreSpec, structural, committed file in sync."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from runlog_relay import cli
from runlog_relay.config import crd
from runlog_relay.config.models import BUCKET_PATTERN, ENDPOINT_PATTERN, StoreSpec, WireModel

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / crd.CRD_FILE


def spec_schema() -> dict[str, Any]:
    return crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]


def walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def test_committed_crd_is_the_generated_one() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == crd.crd_yaml(), (
        f"{crd.CRD_FILE} is stale: run `runlog-relay crd > {crd.CRD_FILE}`"
    )


def test_crd_command_prints_it_and_checks_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["crd"]) == 0
    assert capsys.readouterr().out == crd.crd_yaml()

    assert cli.main(["crd", "--check", str(COMMITTED)]) == 0
    stale = tmp_path / "stale.yaml"
    stale.write_text(crd.crd_yaml().replace("rls", "rl"), encoding="utf-8")
    assert cli.main(["crd", "--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_crd_is_a_valid_kubernetes_object() -> None:
    # The apiextensions.k8s.io/v1 schema of the API server itself, strict: unknown fields fail.
    kubernetes_validate.validate(crd.crd_manifest(), "1.30", strict=True)


def test_names_scope_printer_columns_and_status_subresource() -> None:
    manifest = crd.crd_manifest()
    assert manifest["metadata"]["name"] == "runlogstores.runlog-relay.dev"
    spec = manifest["spec"]
    assert spec["group"] == "runlog-relay.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "RunLogStore"
    assert spec["names"]["plural"] == "runlogstores"
    assert spec["names"]["shortNames"] == ["rls"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert set(columns) >= {"Ready", "Endpoint", "Bucket", "Age"}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Endpoint"]["jsonPath"] == ".spec.endpoint"
    assert columns["Bucket"]["jsonPath"] == ".spec.bucket"
    assert columns["Age"]["type"] == "date"


def test_schema_is_structural() -> None:
    root = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(root):
        if path.endswith("/properties"):
            continue  # a map of field names, not a schema node
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const"):
            assert banned not in node, f"{banned} at {path}"
        if "properties" in node:
            assert "additionalProperties" not in node, path
            assert node.get("type") == "object", path
    preserve = [
        path for path, node in walk(root) if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserve == ["/properties/status"]


def test_every_model_field_is_in_the_schema_with_a_description() -> None:
    def check(model: type[WireModel], schema: dict[str, Any], path: str) -> None:
        for name, info in model.model_fields.items():
            alias = info.alias or name
            assert alias in schema["properties"], f"{path}.{alias} missing"
            node = schema["properties"][alias]
            assert node.get("description"), f"{path}.{alias} has no description"
            annotation = info.annotation
            inner = [
                a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
            ]
            for sub in inner:
                if issubclass(sub, WireModel):
                    check(sub, node, f"{path}.{alias}")

    check(StoreSpec, spec_schema(), "spec")


def test_validation_lives_in_the_schema() -> None:
    schema = spec_schema()
    props = schema["properties"]
    assert props["endpoint"]["pattern"] == ENDPOINT_PATTERN
    assert props["bucket"]["pattern"] == BUCKET_PATTERN
    assert props["layout"]["enum"] == ["chunked", "single"]
    assert props["region"]["pattern"]
    assert props["sync"]["properties"]["concurrency"] == {
        **props["sync"]["properties"]["concurrency"],
        "minimum": 1,
        "maximum": 64,
    }
    creds = props["credentialsSecretRef"]
    assert creds["required"] == ["name"]
    assert creds["properties"]["accessKeyIdKey"]["default"] == "AWS_ACCESS_KEY_ID"
    assert creds["properties"]["secretAccessKeyKey"]["default"] == "AWS_SECRET_ACCESS_KEY"
    assert props["logFolder"]["default"] == "/tmp/run_logs"
    assert schema["x-kubernetes-validations"][0]["message"] == (
        "tls options need an https:// endpoint"
    )


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server does with `default`s (only where a parent object exists)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def test_schema_defaults_are_the_model_defaults() -> None:
    schema = spec_schema()
    defaulted = apply_defaults(schema, {})
    assert StoreSpec.model_validate(defaulted) == StoreSpec()
    assert defaulted == StoreSpec().wire()


VALID = [
    {},
    {"endpoint": "https://s3.example.com:9000", "bucket": "logs/team-a/runs"},
    {"credentialsSecretRef": {"name": "minio-creds"}, "layout": "single", "createBucket": True},
    {"endpoint": "https://minio:9000", "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}},
    {"sync": {"concurrency": 64, "forcePolling": True, "pollIntervalSeconds": 0.5}},
    {"region": "eu-west-1", "logFolder": "/data/run_logs"},
]
INVALID = [
    {"endpoint": "ftp://minio:9000"},
    {"endpoint": "http://minio:9000/path"},
    {"bucket": "Upper_Case"},
    {"bucket": "ab"},
    {"layout": "flat"},
    {"logFolder": "relative/path"},
    {"sync": {"concurrency": 0}},
    {"sync": {"debounceSeconds": -1}},
    {"credentialsSecretRef": {}},
    {"credentialsSecretRef": {"name": "Not_A_DNS_Name"}},
    {"tls": {"caSecretRef": {"name": "ca"}}},
    {"region": "EU WEST"},
]


@pytest.mark.parametrize("spec", VALID)
def test_schema_and_model_accept_the_same_valid_specs(spec: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(spec_schema()).validate(spec)
    StoreSpec.model_validate(spec)


@pytest.mark.parametrize("spec", INVALID)
def test_schema_rejects_what_the_model_rejects(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StoreSpec.model_validate(spec)
    assert list(jsonschema.Draft4Validator(spec_schema()).iter_errors(spec)), spec


def test_conversion_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="several non-null types"):
        crd.structural_schema(
            {
                "type": "object",
                "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            }
        )
    with pytest.raises(ValueError, match="no structural form"):
        crd.structural_schema(
            {"type": "object", "properties": {"x": {"type": "string", "const": "a"}}}
        )
    converted = crd.structural_schema(
        {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 0}}}
    )
    assert converted["properties"]["n"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
    }


def test_yaml_round_trips() -> None:
    text = crd.crd_yaml()
    assert text.startswith("# Generated by `runlog-relay crd`")
    assert yaml.safe_load(text) == crd.crd_manifest()


def test_the_operator_docs_table_covers_every_spec_field() -> None:
    # docs/reference/crd.md is generated (test_docs_reference keeps it current).
    docs = (REPO / "docs" / "reference" / "crd.md").read_text(encoding="utf-8")

    def leaves(schema: dict[str, Any], prefix: str = "") -> list[str]:
        paths = []
        for name, sub in schema.get("properties", {}).items():
            path = f"{prefix}{name}"
            paths += leaves(sub, f"{path}.") if "properties" in sub else [path]
        return paths

    missing = [path for path in leaves(spec_schema()) if f"| `spec.{path}`" not in docs]
    assert not missing, f"docs/reference/crd.md does not document: {missing}"


def test_every_string_is_bounded_and_every_status_field_described() -> None:
    unbounded_strings = crd.unbounded_strings
    root = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert unbounded_strings(root["properties"]["spec"]) == []
    assert unbounded_strings(root["properties"]["status"]) == []
    assert unbounded_strings({"type": "string"}) == ["."]  # what it finds

    def undescribed(node: dict[str, Any], path: str) -> list[str]:
        found = [] if node.get("description") else [path]
        for name, child in (node.get("properties") or {}).items():
            found += undescribed(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            found += undescribed(node["items"], f"{path}[]")
        return found

    assert undescribed(root["properties"]["status"], ".status") == []
    # The name is a label value: the API server refuses longer ones (CEL at the root).
    (rule,) = root["x-kubernetes-validations"]
    assert rule["rule"] == "self.metadata.name.size() <= 63"


def test_the_log_folder_stays_clear_of_the_sidecars_mounts() -> None:
    assert StoreSpec(log_folder="/tmp/run_logs/").log_folder == "/tmp/run_logs"
    assert StoreSpec(log_folder="/etc").log_folder == "/etc"  # a parent mount is fine
    for folder in (
        "/",
        "/etc/runlog-relay",
        "/etc/runlog-relay/x",
        "/var/run/secrets",
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "/proc/x",
        "/a/../b",
    ):
        with pytest.raises(ValueError, match="logFolder"):
            StoreSpec(log_folder=folder)
