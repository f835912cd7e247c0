"""The operator's pure decisions: spec errors, secrets, conditions, events, ConfigMap."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from tests.support.credentials import key_pair

from runlog_relay.config.crd import spec_schema, structural_schema
from runlog_relay.config.credentials import ContainerCredentials, WebIdentity
from runlog_relay.config.models import StoreSpec
from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.errors import ConfigError, PermanentError, RetryableError
from runlog_relay.operator import reconcile as rc

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# --------------------------------------------------------------------------- spec


def test_invalid_spec_names_each_field_in_camel_case_without_values() -> None:
    with pytest.raises(rc.SpecError) as caught:
        rc.parse_spec(
            {
                "endpoint": "ftp://host",
                "credentialsSecretRef": {"name": "Bad_Name"},
                "sync": {"concurrency": 0},
                "bogus": 1,
            }
        )
    message = str(caught.value)
    assert "spec.endpoint" in message
    assert "spec.credentialsSecretRef.name" in message
    assert "spec.sync.concurrency" in message
    assert "spec.bogus" in message
    assert "Traceback" not in message
    assert "Bad_Name" not in message  # input values are not echoed


def test_referenced_secrets_read_leniently() -> None:
    assert rc.referenced_secret_names(None) == set()
    assert rc.referenced_secret_names({"credentialsSecretRef": {"name": "a"}}) == {"a"}
    spec = {
        "endpoint": "not even valid",
        "credentialsSecretRef": {"name": "a"},
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
    }
    assert rc.referenced_secret_names(spec) == {"a", "ca"}
    assert rc.referenced_secret_names({"credentialsSecretRef": "oops"}) == set()


# --------------------------------------------------------------------------- configmap


def test_configmap_round_trips_into_sidecar_settings(tmp_path: Path) -> None:
    spec = rc.parse_spec(
        {
            "endpoint": "https://minio.example:9000",
            "bucket": "logs/team-a",
            "region": "eu-west-1",
            "layout": "single",
            "logFolder": "/data/runs",
            "createBucket": True,
            "credentialsSecretRef": {"name": "creds", "accessKeyIdKey": "id"},
            "tls": {"caSecretRef": {"name": "ca", "key": "bundle.pem"}},
            "sync": {"concurrency": 3, "forcePolling": True, "tornGraceSeconds": 5},
            "tagSealedRuns": True,
            "localRetention": {"deleteAfter": "7d", "dryRun": True},
        }
    )
    cm = rc.configmap_manifest(spec, namespace="ns", store="main", uid="u-1")
    assert cm["metadata"]["name"] == "runlog-relay-main"
    assert cm["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "runlog-relay.dev/v1alpha1",
            "kind": "RunLogStore",
            "name": "main",
            "uid": "u-1",
            "controller": True,
        }
    ]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"], encoding="utf-8")

    settings = load_sidecar_settings({}, path)

    assert settings.endpoint == "https://minio.example:9000"
    assert (settings.bucket_name, settings.prefix) == ("logs", "team-a")
    assert settings.region == "eu-west-1"
    assert settings.layout.value == "single"
    assert str(settings.source) == "/data/runs"
    assert settings.create_bucket is True
    assert settings.sync == spec.sync
    assert str(settings.tls.ca_file) == rc.CA_FILE
    assert str(settings.access_key_id_file) == rc.ACCESS_KEY_ID_FILE
    assert str(settings.secret_access_key_file) == rc.SECRET_ACCESS_KEY_FILE
    assert settings.tag_sealed_runs is True
    assert settings.local_retention == spec.local_retention
    assert settings.local_retention.seconds == 7 * 86400 and settings.local_retention.dry_run


def test_configmap_without_secret_ref_uses_defaults(tmp_path: Path) -> None:
    cm = rc.configmap_manifest(StoreSpec(), namespace="ns", store="s", uid=None)
    assert "ownerReferences" not in cm["metadata"]
    data = yaml.safe_load(cm["data"]["config.yaml"])
    assert "accessKeyIdFile" not in data and "region" not in data
    path = tmp_path / "c.yaml"
    path.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    settings = load_sidecar_settings({}, path)
    assert key_pair(settings) == ("minioadmin", "minioadmin")
    assert str(settings.source) == "/tmp/run_logs"


def test_pod_volumes_put_files_where_the_config_says() -> None:
    spec = rc.parse_spec(
        {
            "endpoint": "https://m:9000",
            "credentialsSecretRef": {"name": "creds", "secretAccessKeyKey": "sk"},
            "tls": {"caSecretRef": {"name": "ca", "key": "bundle.pem"}},
        }
    )
    volumes, mounts = rc.pod_volumes(spec, store="main")
    files = {}
    by_name = {v["name"]: v for v in volumes}
    for mount in mounts:
        volume = by_name[mount["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == "runlog-relay-main"
            files[f"{mount['mountPath']}/{rc.CONFIG_KEY}"] = ("cm", rc.CONFIG_KEY)
        else:
            for item in volume["secret"]["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = (
                    volume["secret"]["secretName"],
                    item["key"],
                )
    assert files[rc.CONFIG_FILE] == ("cm", "config.yaml")
    assert files[rc.ACCESS_KEY_ID_FILE] == ("creds", "AWS_ACCESS_KEY_ID")
    assert files[rc.SECRET_ACCESS_KEY_FILE] == ("creds", "sk")
    assert files[rc.CA_FILE] == ("ca", "bundle.pem")


def test_ownership_and_update_detection() -> None:
    desired = rc.configmap_manifest(StoreSpec(), namespace="ns", store="s", uid="u1")
    assert rc.owned_by(desired, "s") and rc.owned_by(desired, "s", "u1")
    assert not rc.owned_by(desired, "s", "u2") and not rc.owned_by(desired, "other")
    assert not rc.owned_by({"metadata": {}}, "s")
    assert not rc.configmap_needs_update(desired, desired)
    changed = rc.configmap_manifest(StoreSpec(bucket="xyz/y"), namespace="ns", store="s", uid="u1")
    assert rc.configmap_needs_update(desired, changed)
    user_labels = {**desired, "metadata": {**desired["metadata"]}}
    user_labels["metadata"]["labels"] = {**desired["metadata"]["labels"], "team": "a"}
    assert not rc.configmap_needs_update(user_labels, desired)  # extra labels are left alone


def test_configmap_step_conflict_and_errors() -> None:
    assert rc.configmap_step(name="cm", error=None).ok
    conflict = rc.configmap_step(name="cm", error=None, conflict=True)
    assert conflict.reason == "ConfigMapConflict" and "'cm'" in conflict.message
    transient = rc.configmap_step(name="cm", error=RetryableError("API down"))
    assert transient.retryable and transient.reason == "ConfigMapWriteFailed"
    forbidden = rc.configmap_step(name="cm", error=PermanentError("403 Forbidden"))
    assert not forbidden.retryable and "403 Forbidden" in forbidden.message
    long = rc.configmap_step(name="cm", error=None, name_too_long=True)
    assert long.reason == "NameTooLong" and "63" in long.message
    assert rc.too_long("x" * 64) and not rc.too_long("x" * 63)


# --------------------------------------------------------------------------- secrets


CREDS_SPEC = rc.parse_spec(
    {"credentialsSecretRef": {"name": "creds", "secretAccessKeyKey": "secret"}}
)


def test_missing_secret_names_secret_namespace_and_field() -> None:
    resolved = rc.resolve_secrets(CREDS_SPEC, namespace="team", secrets={"creds": None})
    assert not resolved.step.ok
    assert resolved.step.reason == "SecretNotFound"
    assert "'creds'" in resolved.step.message and "'team'" in resolved.step.message
    assert "spec.credentialsSecretRef.name" in resolved.step.message
    assert not resolved.step.retryable


def test_missing_key_names_the_key_and_field() -> None:
    data = {"AWS_ACCESS_KEY_ID": b"id"}
    resolved = rc.resolve_secrets(CREDS_SPEC, namespace="team", secrets={"creds": data})
    assert resolved.step.reason == "SecretKeyNotFound"
    assert "'secret'" in resolved.step.message
    assert "spec.credentialsSecretRef.secretAccessKeyKey" in resolved.step.message


def test_empty_key_is_reported() -> None:
    data = {"AWS_ACCESS_KEY_ID": b"id", "secret": b"  \n"}
    resolved = rc.resolve_secrets(CREDS_SPEC, namespace="team", secrets={"creds": data})
    assert resolved.step.reason == "SecretKeyEmpty"


def test_found_secret_yields_values_but_never_shows_them() -> None:
    data = {"AWS_ACCESS_KEY_ID": b"AKIDVALUE\n", "secret": b"SUPERSECRETVALUE"}
    resolved = rc.resolve_secrets(CREDS_SPEC, namespace="team", secrets={"creds": data})
    assert resolved.step.ok and resolved.step.reason == "SecretsFound"
    assert (resolved.access_key, resolved.secret_key) == ("AKIDVALUE", "SUPERSECRETVALUE")
    assert "SUPERSECRETVALUE" not in repr(resolved) and "AKIDVALUE" not in repr(resolved)
    assert "SUPERSECRETVALUE" not in resolved.step.message


def test_no_secret_reference_means_default_credentials() -> None:
    resolved = rc.resolve_secrets(StoreSpec(), namespace="n", secrets={})
    assert resolved.step.ok and resolved.step.reason == "DefaultCredentials"
    assert resolved.access_key is None


def test_ca_secret_is_resolved() -> None:
    spec = rc.parse_spec(
        {"endpoint": "https://m:9000", "tls": {"caSecretRef": {"name": "ca", "key": "pem"}}}
    )
    missing = rc.resolve_secrets(spec, namespace="n", secrets={"ca": {}})
    assert missing.step.reason == "SecretKeyNotFound" and "spec.tls.caSecretRef.key" in (
        missing.step.message
    )
    found = rc.resolve_secrets(spec, namespace="n", secrets={"ca": {"pem": b"-----BEGIN"}})
    assert found.step.ok and found.ca_pem == b"-----BEGIN"


def test_decode_secret() -> None:
    body = {"data": {"a": b64("one"), "bad": "!!not-base64!!"}}
    assert rc.decode_secret(body) == {"a": b"one"}
    assert rc.decode_secret(None) is None
    assert rc.decode_secret({}) == {}


# --------------------------------------------------------------------------- bucket


def test_bucket_steps_map_errors_to_conditions() -> None:
    ok = rc.bucket_steps(location="b/p", endpoint="http://s3", error=None)
    assert [s.ok for s in ok] == [True, True] and ok[1].reason == "BucketExists"
    created = rc.bucket_steps(location="b", endpoint="http://s3", error=None, created=True)
    assert created[1].reason == "BucketCreated"

    missing = rc.bucket_steps(
        location="b/p", endpoint="http://s3", error=PermanentError("x", code="NoSuchBucket")
    )
    assert missing[0].ok and missing[1].reason == "BucketNotFound"
    assert "createBucket" in missing[1].message and not missing[1].retryable

    down = rc.bucket_steps(
        location="b", endpoint="http://s3", error=RetryableError("unreachable", code="Unreachable")
    )
    assert down[0].reason == "EndpointUnreachable" and down[0].retryable
    assert down[1].status is rc.ConditionStatus.UNKNOWN

    for code, reason in [
        ("InvalidAccessKeyId", "InvalidCredentials"),
        ("SignatureDoesNotMatch", "InvalidCredentials"),
        ("AccessDenied", "AccessDenied"),
        ("HTTP403", "AccessDenied"),
        ("TLS", "TLSFailure"),
        ("Weird", "ConnectionFailed"),
    ]:
        connected, bucket = rc.bucket_steps(
            location="b", endpoint="http://s3", error=PermanentError("e", code=code)
        )
        assert connected.reason == reason and not connected.retryable, code
        assert bucket.status is rc.ConditionStatus.UNKNOWN


# --------------------------------------------------------------------------- conditions


def all_ok() -> list[rc.Step]:
    spec = rc.spec_steps(None)
    return [
        *spec,
        rc.configmap_step(name="cm", error=None),
        rc.resolve_secrets(StoreSpec(), namespace="n", secrets={}).step,
        *rc.bucket_steps(location="b", endpoint="http://s3", error=None),
    ]


def test_ready_is_true_only_when_every_step_is() -> None:
    ready = rc.ready_step(all_ok())
    assert ready.ok and ready.reason == "Ready"
    steps = all_ok()
    steps[3] = rc.resolve_secrets(CREDS_SPEC, namespace="n", secrets={"creds": None}).step
    ready = rc.ready_step(steps)
    assert ready.status is rc.ConditionStatus.FALSE and ready.reason == "SecretNotFound"


def test_invalid_spec_makes_everything_else_unknown() -> None:
    steps = rc.spec_steps(rc.SpecError("invalid spec: spec.endpoint: bad"))
    assert [s.type for s in steps] == list(rc.CONDITION_TYPES)
    assert steps[0].status is rc.ConditionStatus.FALSE
    assert all(s.status is rc.ConditionStatus.UNKNOWN for s in steps[1:])
    assert "last valid config stays" in steps[1].message
    assert rc.ready_step(steps).reason == "InvalidSpec"


def test_conditions_carry_generation_and_keep_transition_times() -> None:
    first = rc.merge_conditions(None, all_ok(), generation=1, now=NOW)
    assert [c["type"] for c in first] == ["Ready", *rc.CONDITION_TYPES]
    for condition in first:
        assert set(condition) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
        assert condition["lastTransitionTime"] == "2025-01-02T03:04:05Z"
        assert condition["observedGeneration"] == 1

    # Same statuses later (new message, new generation): times stay.
    again = rc.merge_conditions(first, all_ok(), generation=2, now=LATER)
    assert all(c["lastTransitionTime"] == "2025-01-02T03:04:05Z" for c in again)
    assert all(c["observedGeneration"] == 2 for c in again)

    # A status change moves only the changed conditions' times.
    steps = all_ok()
    steps[4:6] = rc.bucket_steps(
        location="b", endpoint="http://s3", error=RetryableError("down", code="Unreachable")
    )
    changed = {c["type"]: c for c in rc.merge_conditions(again, steps, generation=2, now=LATER)}
    assert changed["Ready"]["lastTransitionTime"] == "2025-01-02T03:09:05Z"
    assert changed["Connected"]["lastTransitionTime"] == "2025-01-02T03:09:05Z"
    assert changed["SpecValid"]["lastTransitionTime"] == "2025-01-02T03:04:05Z"


def test_secret_values_are_redacted_from_messages() -> None:
    steps = all_ok()
    steps[4] = rc.Step(
        rc.CONNECTED, rc.ConditionStatus.FALSE, "X", "server said: key AKIDLEAK is bad"
    )
    conditions = rc.merge_conditions(None, steps, generation=1, now=NOW, secrets=["AKIDLEAK"])
    text = yaml.safe_dump(conditions)
    assert "AKIDLEAK" not in text and "***" in text
    assert rc.redact("abc", ["ab"]) == "abc"  # too short to be a credential worth masking


def test_events_only_on_ready_transitions() -> None:
    ok = rc.merge_conditions(None, all_ok(), generation=1, now=NOW)
    assert rc.transition_event(None, ok) == rc.Event("Normal", "Ready", ok[0]["message"])
    assert rc.transition_event(ok, ok) is None

    steps = all_ok()
    steps[3] = rc.resolve_secrets(CREDS_SPEC, namespace="n", secrets={"creds": None}).step
    broken = rc.merge_conditions(ok, steps, generation=1, now=LATER)
    event = rc.transition_event(ok, broken)
    assert event is not None and event.type == "Warning" and event.reason == "SecretNotFound"
    assert "'creds'" in event.message

    # Same status, different reason: a new event.
    steps[3] = rc.resolve_secrets(
        CREDS_SPEC, namespace="n", secrets={"creds": {"AWS_ACCESS_KEY_ID": b"x"}}
    ).step
    other = rc.merge_conditions(broken, steps, generation=1, now=LATER)
    assert rc.transition_event(broken, other) == rc.Event(
        "Warning", "SecretKeyNotFound", other[0]["message"]
    )


def test_status_patch_and_event_manifest() -> None:
    conditions = rc.merge_conditions(None, all_ok(), generation=3, now=NOW)
    patch = rc.status_patch(conditions, generation=3, store="s")
    assert patch == {
        "status": {
            "conditions": conditions,
            "configMapName": "runlog-relay-s",
            "observedGeneration": 3,
        }
    }
    event = rc.event_manifest(
        rc.Event("Warning", "SecretNotFound", "m" * 5000),
        namespace="ns",
        store="s",
        uid="u",
        now=NOW,
        instance="pod-1",
    )
    assert event["involvedObject"] == {
        "apiVersion": "runlog-relay.dev/v1alpha1",
        "kind": "RunLogStore",
        "name": "s",
        "namespace": "ns",
        "uid": "u",
    }
    assert event["metadata"]["name"].startswith("s.")
    assert event["metadata"]["namespace"] == "ns"
    assert len(event["message"]) <= 1024
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "SecretNotFound", 1)


def test_backoff_grows_and_is_capped() -> None:
    delays = [rc.backoff_delay(n, base=1, cap=10) for n in range(6)]
    assert delays == [1, 2, 4, 8, 10, 10]
    assert rc.backoff_delay(10_000) == 300


# --------------------------------------------------------------------------- credentials


def test_referenced_secrets_include_the_new_spelling() -> None:
    assert rc.referenced_secret_names({"credentials": {"secretRef": {"name": "b"}}}) == {"b"}
    assert rc.referenced_secret_names({"credentials": {"serviceAccount": {}}}) == set()
    assert rc.referenced_secret_names({"credentials": "oops"}) == set()


def test_session_token_key_is_mounted_and_named_in_the_config(tmp_path: Path) -> None:
    spec = rc.parse_spec(
        {"credentials": {"secretRef": {"name": "creds", "sessionTokenKey": "AWS_SESSION_TOKEN"}}}
    )
    volumes, _ = rc.pod_volumes(spec, store="main")
    secret = next(v for v in volumes if "secret" in v)["secret"]
    assert secret["secretName"] == "creds"
    assert {"key": "AWS_SESSION_TOKEN", "path": "session-token"} in secret["items"]
    path = tmp_path / "config.yaml"
    path.write_text(rc.render_sidecar_config(spec, namespace="ns", store="main"))
    settings = load_sidecar_settings({}, path)
    assert str(settings.session_token_file) == rc.SESSION_TOKEN_FILE
    assert settings.credential_source == "static"  # a Secret's keys, whatever the pod has
    uses = [(u.secret, u.key, u.field, u.key_field) for u in rc.secret_key_uses(spec)]
    assert uses[-1] == (
        "creds",
        "AWS_SESSION_TOKEN",
        "spec.credentials.secretRef",
        "sessionTokenKey",
    )


def test_a_service_account_store_mounts_nothing_and_needs_the_pods_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = rc.parse_spec({"credentials": {"serviceAccount": {}}})
    volumes, _ = rc.pod_volumes(spec, store="main")
    assert [v["name"] for v in volumes] == ["runlog-relay-config"]  # no Secret volume
    assert rc.secret_key_uses(spec) == []
    path = tmp_path / "config.yaml"
    path.write_text(rc.render_sidecar_config(spec, namespace="ns", store="main"))
    for name in (
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIGNORED")  # static keys do not count here
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ignored")
    settings = load_sidecar_settings({}, path)
    with pytest.raises(ConfigError, match=r"neither IRSA .* nor EKS Pod Identity"):
        settings.credentials()
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials")
    assert load_sidecar_settings({}, path).credentials() == ContainerCredentials(
        uri="http://169.254.170.23/v1/credentials"
    )
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks/token")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::1:role/r")
    plan = load_sidecar_settings({}, path).credentials()
    assert isinstance(plan, WebIdentity) and plan.role_arn == "arn:aws:iam::1:role/r"


def test_checked_by_sidecars_keeps_ready_true_and_says_why() -> None:
    connected, bucket = rc.checked_by_sidecars_steps()
    steps = [
        *rc.spec_steps(None),
        rc.configmap_step(name="runlog-relay-main", error=None),
        rc.Step(rc.SECRETS_AVAILABLE, rc.ConditionStatus.TRUE, "ServiceAccountIdentity", "x"),
        connected,
        bucket,
    ]
    ready = rc.ready_step(steps)
    assert (ready.status, ready.reason) == (rc.ConditionStatus.TRUE, rc.CHECKED_BY_SIDECARS)
    assert "readiness" in ready.message
    # Any real failure still wins.
    failing = [
        *steps[:2],
        rc.Step(rc.SECRETS_AVAILABLE, rc.ConditionStatus.FALSE, "SecretNotFound", "y"),
    ]
    assert rc.ready_step([*failing, connected, bucket]).reason == "SecretNotFound"


def test_no_secret_reference_in_the_crd_can_name_a_namespace() -> None:
    """A store never reaches another namespace's Secret: no reference has the field."""
    found: list[str] = []

    def walk(node: dict[str, object], path: str) -> None:
        properties = node.get("properties")
        if isinstance(properties, dict):
            if "namespace" in properties:
                found.append(path)
            for name, sub in properties.items():
                if isinstance(sub, dict):
                    walk(sub, f"{path}.{name}")

    walk(structural_schema(spec_schema()), "spec")
    assert found == []
