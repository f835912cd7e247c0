"""The real kopf operator against the Kubernetes emulator, with a real S3 server behind it.

The operator is the product's own registry (``build_operator``), run by the harness in
its own thread against ``RealisticKubernetesEmulator`` over HTTP; the CRD installed in the
emulator is the one ``runlog-relay crd`` generates. S3 is moto's server in its own
process with authentication enforced: only the IAM key created by the ``s3`` fixture is
accepted, so a store turning Ready proves the operator used the Secret's credentials.
Everything is awaited by polling with deadlines; nothing sleeps in place of a condition.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry

from runlog_relay.config.crd import crd_manifest
from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.operator.runner import Operator, build_operator
from runlog_relay.operator.settings import OperatorSettings
from tests.integration.kube import KubeHarness
from tests.integration.kube.kopf_runner import KopfRunner, RunningOperator
from tests.integration.kube.waiting import DEFAULT_TIMEOUT
from tests.support.s3server import AuthS3

pytest_plugins = ["tests.integration.kube.fixtures"]
pytestmark = pytest.mark.integration

RLS = "runlog-relay.dev/v1alpha1/runlogstores"
NS = "team-a"
WAIT = DEFAULT_TIMEOUT
_buckets = itertools.count()


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3(auth_s3: AuthS3) -> AuthS3:
    """The signature-checking S3 server (tests/conftest.py), under this module's name."""
    return auth_s3


@pytest.fixture()
def bucket(s3: AuthS3) -> str:
    name = f"runs-{next(_buckets)}"
    s3.client().make_bucket(name)
    return name


# --------------------------------------------------------------------------- Kubernetes


@dataclass
class Cluster:
    kube: KubeHarness
    runner: KopfRunner
    s3: AuthS3
    operator: Operator | None = None
    running: RunningOperator | None = None

    def start(
        self, *, allow_errors: bool = False, namespaces: tuple[str, ...] = (NS,), **options: Any
    ) -> Operator:
        reconcile = {"retry_base_delay": 0.2, "retry_max_delay": 1.0, "bucket_timeout": 2.0}
        url = self.kube.url
        self.operator = build_operator(
            OperatorSettings(
                namespaces=list(namespaces),
                instance="test-operator",
                reconcile={**reconcile, **options},
                webhook={"port": 0},
            ),
            login=lambda: kopf.ConnectionInfo(server=url, insecure=True),
            prometheus=CollectorRegistry(),
            recheck="recheck_interval" in options,
        )
        self.running = self.runner.start(
            self.operator.registry, namespaces=namespaces, allow_errors=allow_errors
        )
        return self.operator

    # --- objects ---------------------------------------------------------------------------

    def put_secret(self, name: str, data: dict[str, str], namespace: str = NS) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        if self.kube.find("v1/secrets", name, namespace) is None:
            self.kube.create("v1/secrets", body, namespace)
        else:
            self.kube.replace("v1/secrets", name, body, namespace)

    def put_creds(self, name: str = "s3-creds", namespace: str = NS, **override: str) -> None:
        data = {
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
        }
        self.put_secret(name, {**data, **override}, namespace)

    def create_store(self, name: str, spec: dict[str, Any], namespace: str = NS) -> dict[str, Any]:
        body = {
            "apiVersion": "runlog-relay.dev/v1alpha1",
            "kind": "RunLogStore",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        return self.kube.create(RLS, body, namespace)

    def spec(self, bucket: str, **extra: Any) -> dict[str, Any]:
        return {
            "endpoint": self.s3.endpoint,
            "bucket": f"{bucket}/run-logs",
            "credentialsSecretRef": {"name": "s3-creds"},
            **extra,
        }

    def conditions(self, name: str, namespace: str = NS) -> dict[str, dict[str, Any]]:
        status = self.kube.get(RLS, name, namespace).get("status") or {}
        return {c["type"]: c for c in status.get("conditions") or []}

    def wait_ready(
        self, name: str, status: str = "True", reason: str | None = None, namespace: str = NS
    ) -> dict[str, Any]:
        def check() -> dict[str, Any]:
            ready = self.conditions(name, namespace)["Ready"]
            assert ready["status"] == status, ready
            assert reason is None or ready["reason"] == reason, ready
            return ready

        what = f"RunLogStore {namespace}/{name} Ready={status}" + (f" ({reason})" if reason else "")
        return self.wait(check, what)

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        assert self.running is not None
        return self.running.wait_for(predicate, timeout=timeout, message=what)

    def events(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        return self.kube.events(namespace, involved_name=name, involved_kind="RunLogStore")

    def metric(self, name: str, labels: dict[str, str]) -> float | None:
        assert self.operator is not None
        return self.operator.prometheus.get_sample_value(name, labels)

    def reconciles(self, result: str) -> float:
        """Reconciles counted so far (the counter moves just after the status write)."""
        return self.metric("runlog_relay_operator_reconciles_total", {"result": result}) or 0.0

    def stored_versions(self, *, skip_secrets: bool = True) -> list[dict[str, Any]]:
        """Every version of every object the emulator ever stored (Secrets excluded)."""
        secrets = self.kube.spec("v1/secrets").ref

        def read() -> list[dict[str, Any]]:
            versions = []
            for key, obj in self.kube.emulator.objects.items():
                if skip_secrets and key[0] == secrets:
                    continue
                versions.extend(v.raw for v in obj.history if v is not None)
            return versions

        return self.kube.call(read)


@pytest.fixture()
def cluster(kube: KubeHarness, kopf_runner: KopfRunner, s3: AuthS3) -> Cluster:
    kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd_manifest())
    kube.ensure_namespace(NS)
    return Cluster(kube, kopf_runner, s3)


# --------------------------------------------------------------------------- tests


def test_create_makes_the_store_ready_with_its_configmap(
    cluster: Cluster, bucket: str, tmp_path: Path
) -> None:
    cluster.start()
    cluster.put_creds()
    created = cluster.create_store("main", cluster.spec(bucket, layout="single"))

    ready = cluster.wait_ready("main")

    assert ready["reason"] == "Ready" and bucket in ready["message"]
    conditions = cluster.conditions("main")
    assert set(conditions) == {
        "Ready",
        "SpecValid",
        "ConfigRendered",
        "SecretsAvailable",
        "Connected",
        "BucketReady",
    }
    for condition in conditions.values():
        assert condition["status"] == "True"
        assert condition["observedGeneration"] == 1
        assert condition["lastTransitionTime"].endswith("Z")
    status = cluster.kube.get(RLS, "main", NS)["status"]
    assert status["observedGeneration"] == 1
    assert status["configMapName"] == "runlog-relay-main"

    cm = cluster.kube.get("v1/configmaps", "runlog-relay-main", NS)
    (owner,) = cm["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "RunLogStore",
        "main",
        created["metadata"]["uid"],
    )
    config = tmp_path / "config.yaml"
    config.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    settings = load_sidecar_settings({}, config)
    assert settings.endpoint == cluster.s3.endpoint
    assert (settings.bucket_name, settings.prefix) == (bucket, "run-logs")
    assert settings.layout.value == "single"
    assert str(settings.access_key_id_file).startswith("/var/run/secrets/runlog-relay/")

    events = cluster.wait(lambda: cluster.events("main"), "a Ready event")
    assert [(e["type"], e["reason"]) for e in events] == [("Normal", "Ready")]
    labels = {"namespace": NS, "store": "main"}
    assert cluster.metric("runlog_relay_store_ready", labels) == 1
    cluster.wait(lambda: cluster.reconciles("ready") >= 1, "the reconcile to be counted")
    # No finalizer: deleting a store never waits for the operator.
    assert not cluster.kube.get(RLS, "main", NS)["metadata"].get("finalizers")


def test_spec_update_rewrites_the_configmap_and_bumps_observed_generation(
    cluster: Cluster, bucket: str
) -> None:
    cluster.start()
    cluster.put_creds()
    cluster.create_store("main", cluster.spec(bucket))
    cluster.wait_ready("main")
    first_cm = cluster.kube.get("v1/configmaps", "runlog-relay-main", NS)
    first_transition = cluster.conditions("main")["Ready"]["lastTransitionTime"]

    cluster.kube.patch(
        RLS, "main", {"spec": {"sync": {"concurrency": 3}, "logFolder": "/data/logs"}}, NS
    )

    def updated() -> dict[str, Any]:
        status = cluster.kube.get(RLS, "main", NS)["status"]
        assert status["observedGeneration"] == 2
        return status

    status = cluster.wait(updated, "observedGeneration 2")
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])
    ready = cluster.conditions("main")["Ready"]
    assert ready["status"] == "True" and ready["lastTransitionTime"] == first_transition
    cm = cluster.kube.get("v1/configmaps", "runlog-relay-main", NS)
    assert cm["metadata"]["uid"] == first_cm["metadata"]["uid"]  # updated, not re-created
    assert "concurrency: 3" in cm["data"]["config.yaml"]
    assert "source: /data/logs" in cm["data"]["config.yaml"]
    assert len(cluster.events("main")) == 1  # still Ready: no new event


def test_delete_removes_the_configmap_and_the_metric(cluster: Cluster, bucket: str) -> None:
    cluster.start()
    cluster.put_creds()
    cluster.create_store("main", cluster.spec(bucket))
    cluster.wait_ready("main")
    labels = {"namespace": NS, "store": "main"}
    cluster.wait(lambda: cluster.metric("runlog_relay_store_ready", labels) == 1, "the metric")

    cluster.kube.delete(RLS, "main", NS)

    cluster.kube.wait_gone(RLS, "main", NS)
    cluster.kube.wait_gone("v1/configmaps", "runlog-relay-main", NS)
    cluster.wait(
        lambda: cluster.metric("runlog_relay_store_ready", labels) is None,
        "the store's metric to be removed",
    )


def test_missing_secret_then_created_turns_ready_without_touching_the_store(
    cluster: Cluster, bucket: str
) -> None:
    cluster.start(recheck_interval=0.5)  # the deletion below is seen by the recheck
    cluster.create_store("main", cluster.spec(bucket))

    waiting = cluster.wait_ready("main", "False", "SecretNotFound")

    assert "'s3-creds'" in waiting["message"] and f"'{NS}'" in waiting["message"]
    assert "spec.credentialsSecretRef.name" in waiting["message"]
    conditions = cluster.conditions("main")
    assert conditions["SecretsAvailable"]["status"] == "False"
    assert conditions["Connected"]["status"] == "Unknown"
    assert cluster.kube.get("v1/configmaps", "runlog-relay-main", NS)  # config does not wait
    generation = cluster.kube.get(RLS, "main", NS)["metadata"]["generation"]

    cluster.put_creds()

    cluster.wait_ready("main")
    assert cluster.kube.get(RLS, "main", NS)["metadata"]["generation"] == generation
    cluster.wait(
        lambda: [e["reason"] for e in cluster.events("main")] == ["SecretNotFound", "Ready"],
        "one Event per transition",
    )

    # Deleting the Secret is noticed too, by the recheck: Secrets are not watched.
    cluster.kube.delete("v1/secrets", "s3-creds", NS)
    cluster.wait_ready("main", "False", "SecretNotFound")


def test_missing_key_names_the_secret_and_key(cluster: Cluster, bucket: str) -> None:
    cluster.start()
    cluster.put_secret("s3-creds", {"AWS_ACCESS_KEY_ID": cluster.s3.access_key})
    cluster.create_store("main", cluster.spec(bucket))
    ready = cluster.wait_ready("main", "False", "SecretKeyNotFound")
    assert "'s3-creds'" in ready["message"] and "'AWS_SECRET_ACCESS_KEY'" in ready["message"]


def test_wrong_credentials_then_rotated_secret(cluster: Cluster, bucket: str) -> None:
    cluster.start(recheck_interval=0.5)  # a rotation is seen by the recheck
    cluster.put_creds(AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG0")
    cluster.create_store("main", cluster.spec(bucket))

    ready = cluster.wait_ready("main", "False", "InvalidCredentials")

    assert "InvalidAccessKeyId" in ready["message"]
    assert cluster.conditions("main")["BucketReady"]["status"] == "Unknown"

    cluster.put_creds(AWS_SECRET_ACCESS_KEY="not-the-secret")
    cluster.wait(
        lambda: "SignatureDoesNotMatch" in cluster.conditions("main")["Ready"]["message"],
        "the second wrong key to be tried",
    )

    cluster.put_creds()  # the rotation to the right pair reaches the operator by itself
    cluster.wait_ready("main")


def test_missing_bucket_without_and_with_create_bucket(cluster: Cluster) -> None:
    cluster.start()
    cluster.put_creds()
    name = f"missing-{next(_buckets)}"
    cluster.create_store("main", cluster.spec(name))

    ready = cluster.wait_ready("main", "False", "BucketNotFound")

    assert f"'{name}'" in ready["message"] and "createBucket" in ready["message"]
    assert cluster.conditions("main")["Connected"]["status"] == "True"
    assert not cluster.s3.client().bucket_exists(name)

    cluster.kube.patch(RLS, "main", {"spec": {"createBucket": True}}, NS)

    cluster.wait_ready("main")
    assert cluster.conditions("main")["BucketReady"]["reason"] == "BucketCreated"
    assert cluster.s3.client().bucket_exists(name)


def test_invalid_spec_is_reported_and_recovers_when_fixed(cluster: Cluster, bucket: str) -> None:
    cluster.start(allow_errors=True)  # kopf logs the PermanentError of the invalid spec
    cluster.put_creds()
    cluster.create_store(
        "main", cluster.spec(bucket, endpoint="ftp://nowhere", sync={"concurrency": 0})
    )

    ready = cluster.wait_ready("main", "False", "InvalidSpec")

    assert "spec.endpoint" in ready["message"] and "spec.sync.concurrency" in ready["message"]
    assert "Traceback" not in json.dumps(cluster.conditions("main"))
    assert cluster.kube.find("v1/configmaps", "runlog-relay-main", NS) is None
    assert cluster.running is not None and cluster.running.alive

    cluster.kube.patch(
        RLS, "main", {"spec": {"endpoint": cluster.s3.endpoint, "sync": {"concurrency": 2}}}, NS
    )
    cluster.wait_ready("main")
    assert cluster.kube.get("v1/configmaps", "runlog-relay-main", NS)


def test_unreachable_endpoint_is_retried_until_fixed(cluster: Cluster, bucket: str) -> None:
    cluster.start(allow_errors=True)  # kopf logs each TemporaryError retry
    cluster.put_creds()
    cluster.create_store("main", cluster.spec(bucket, endpoint="http://127.0.0.1:9"))

    ready = cluster.wait_ready("main", "False", "EndpointUnreachable")
    assert "unreachable" in ready["message"]
    # Retried with backoff (kopf's TemporaryError), not given up on.
    cluster.wait(
        lambda: cluster.reconciles("not_ready") >= 3,
        "retries of the unreachable endpoint",
    )

    cluster.kube.patch(RLS, "main", {"spec": {"endpoint": cluster.s3.endpoint}}, NS)
    cluster.wait_ready("main")


def test_recheck_notices_a_bucket_deleted_behind_its_back(cluster: Cluster, bucket: str) -> None:
    cluster.start(recheck_interval=0.3)
    cluster.put_creds()
    cluster.create_store("main", cluster.spec(bucket))
    cluster.wait_ready("main")

    cluster.s3.client().remove_bucket(bucket)

    cluster.wait_ready("main", "False", "BucketNotFound")
    cluster.s3.client().make_bucket(bucket)
    cluster.wait_ready("main")


def test_a_store_never_reads_another_namespaces_secret(cluster: Cluster, bucket: str) -> None:
    cluster.kube.ensure_namespace("team-b")
    cluster.start(namespaces=(NS, "team-b"))
    cluster.put_creds(namespace="team-b")  # the right Secret, but in the wrong namespace
    cluster.create_store("main", cluster.spec(bucket))

    ready = cluster.wait_ready("main", "False", "SecretNotFound")
    assert f"'{NS}'" in ready["message"]

    # A store in team-b with the same reference is Ready: each uses its own namespace.
    cluster.create_store("main", cluster.spec(bucket), namespace="team-b")
    cluster.wait_ready("main", namespace="team-b")
    assert cluster.conditions("main")["Ready"]["reason"] == "SecretNotFound"


def test_secret_values_never_reach_status_events_configmaps_or_logs(
    cluster: Cluster, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cluster.start(recheck_interval=0.5)
    cluster.put_creds(AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG0")  # a failure path first
    cluster.create_store("main", cluster.spec(bucket))
    cluster.wait_ready("main", "False", "InvalidCredentials")
    cluster.put_creds()
    cluster.wait_ready("main")
    cluster.kube.patch(RLS, "main", {"spec": {"layout": "single"}}, NS)
    cluster.wait(
        lambda: cluster.kube.get(RLS, "main", NS)["status"]["observedGeneration"] == 2,
        "the update to be handled",
    )

    secrets = [cluster.s3.access_key, cluster.s3.secret_key, "AKIAWRONGWRONGWRONG0"]
    encoded = [base64.b64encode(s.encode()).decode() for s in secrets]
    stored = json.dumps(cluster.stored_versions())
    assert "runlog-relay-main" in stored and "Ready" in stored  # the scan sees our objects
    logs = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.__dict__.get('store', '')}" for r in caplog.records
    )
    assert "Ready=True" in logs  # the scan sees the operator's log
    for value in secrets + encoded:
        assert value not in stored, "a secret value was written to a non-Secret object"
        assert value not in logs, "a secret value was logged"


# --------------------------------------------------------------------------- credentials


def test_new_credentials_secret_ref_spelling(cluster: Cluster, bucket: str) -> None:
    cluster.start()
    cluster.put_creds()
    spec = {**cluster.spec(bucket), "credentials": {"secretRef": {"name": "s3-creds"}}}
    del spec["credentialsSecretRef"]
    cluster.create_store("main", spec)
    assert bucket in cluster.wait_ready("main", reason="Ready")["message"]


def test_service_account_store_without_an_operator_identity(
    cluster: Cluster, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    cluster.start()
    spec = {
        "endpoint": cluster.s3.endpoint,
        "bucket": bucket,
        "credentials": {"serviceAccount": {}},
    }
    cluster.create_store("main", spec)

    ready = cluster.wait_ready("main", "True", "CheckedBySidecars")
    conditions = cluster.conditions("main")
    assert (conditions["BucketReady"]["status"], conditions["BucketReady"]["reason"]) == (
        "Unknown",
        "CheckedBySidecars",
    )
    assert conditions["SecretsAvailable"]["reason"] == "ServiceAccountIdentity"
    assert "readiness" in ready["message"]
    config = cluster.kube.get("v1/configmaps", "runlog-relay-main", NS)["data"]["config.yaml"]
    assert "credentials: service-account" in config and "accessKeyIdFile" not in config


def test_service_account_store_checked_with_the_operators_own_identity(
    cluster: Cluster, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator pod's own identity (here static keys in its environment; on EKS its
    ServiceAccount's IRSA role) checks the bucket; the signature-checking S3 proves it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cluster.s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", cluster.s3.secret_key)
    cluster.start()
    spec = {
        "endpoint": cluster.s3.endpoint,
        "bucket": bucket,
        "credentials": {"serviceAccount": {}},
    }
    cluster.create_store("main", spec)
    assert bucket in cluster.wait_ready("main", "True", "Ready")["message"]

    cluster.s3.client().remove_bucket(bucket)  # and it really looks
    cluster.create_store("other", {**spec, "bucket": f"{bucket}-gone"})
    cluster.wait_ready("other", "False", "BucketNotFound")


def test_a_secret_reference_cannot_name_another_namespace(cluster: Cluster, bucket: str) -> None:
    """Issue 9: a `namespace` on the Secret reference, were it added and used, would let a
    store in team-a use team-b's keys and turn Ready. It must not."""
    cluster.kube.ensure_namespace("team-b")
    cluster.start(namespaces=(NS, "team-b"), allow_errors=True)  # InvalidSpec is logged
    cluster.put_creds(namespace="team-b")
    for name, ref in (
        ("old", {"credentialsSecretRef": {"name": "s3-creds", "namespace": "team-b"}}),
        ("new", {"credentials": {"secretRef": {"name": "s3-creds", "namespace": "team-b"}}}),
    ):
        spec = {"endpoint": cluster.s3.endpoint, "bucket": f"{bucket}/run-logs", **ref}
        cluster.create_store(name, spec)
        # Pruned by the API server's structural schema, or refused by the operator:
        # either way never Ready with another namespace's Secret.
        ready = cluster.wait(
            lambda n=name: (
                (c := cluster.conditions(n).get("Ready")) and c["status"] == "False" and c
            ),
            f"{name} not Ready",
        )
        assert ready["reason"] in {"SecretNotFound", "InvalidSpec"}, ready
        if ready["reason"] == "SecretNotFound":
            assert f"namespace '{NS}'" in ready["message"]
