"""StoreController: one reconcile's I/O in order, against a fake API and bucket check.

The fake API is a dict of objects by path (the small part of the Kubernetes REST
semantics the controller relies on); the bucket check is a callable that records the
credentials it was given. The real API server and S3 server are in the integration tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from runlog_relay.config.credentials import WebIdentity
from runlog_relay.config.models import StoreSpec
from runlog_relay.errors import NotFoundError, PermanentError, RetryableError
from runlog_relay.metrics import OperatorMetrics
from runlog_relay.operator import reconcile as rc
from runlog_relay.operator.controller import StoreController
from runlog_relay.operator.policy import EndpointPolicy
from runlog_relay.operator.settings import ReconcileSettings

NS = "team"
STORE_PATH = f"/apis/runlog-relay.dev/v1alpha1/namespaces/{NS}/runlogstores/main"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps/runlog-relay-main"
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/creds"
ACCESS = "AKIDFAKEACCESSKEY"
SECRET = "fake/secret+VALUE/never-shown"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []
        self.reads: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], Exception] = {}

    def _check(self, verb: str, path: str) -> None:
        error = self.fail.get((verb, path))
        if error is not None:
            raise error

    async def get(self, path: str) -> dict[str, Any] | None:
        self._check("GET", path)
        self.reads.append(("GET", path))
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check("POST", path)
        self.writes.append(("POST", path, copy.deepcopy(dict(body))))
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise PermanentError("exists", code="AlreadyExists")
        self.objects[full] = copy.deepcopy(dict(body))
        return dict(body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check("PATCH", path)
        self.writes.append(("PATCH", path, copy.deepcopy(dict(body))))
        target = path.removesuffix("/status")
        if target not in self.objects:
            raise NotFoundError("gone", code="NotFound")
        obj = self.objects[target]
        for key, value in body.items():
            if isinstance(value, dict) and isinstance(obj.get(key), dict):
                obj[key].update(value)
            else:
                obj[key] = copy.deepcopy(value)
        return obj

    # helpers
    def events(self) -> list[dict[str, Any]]:
        return [body for verb, path, body in self.writes if path.endswith("/events")]

    def status_writes(self) -> list[dict[str, Any]]:
        return [b for v, p, b in self.writes if p.endswith("/status")]


class FakeBucket:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.error: Exception | None = None
        self.created = False

    def __call__(self, spec: StoreSpec, secrets: rc.ResolvedSecrets, timeout: float) -> bool:
        self.calls.append((spec.endpoint, secrets.access_key, secrets.secret_key))
        if self.error is not None:
            raise self.error
        return self.created


def store(spec: dict[str, Any], *, generation: int = 1, uid: str = "uid-1") -> dict[str, Any]:
    return {
        "apiVersion": "runlog-relay.dev/v1alpha1",
        "kind": "RunLogStore",
        "metadata": {"name": "main", "namespace": NS, "uid": uid, "generation": generation},
        "spec": spec,
    }


CREDS_SPEC = {"endpoint": "http://s3.local:9000", "credentialsSecretRef": {"name": "creds"}}
SECRET_BODY = {
    "metadata": {"name": "creds", "namespace": NS},
    "data": {"AWS_ACCESS_KEY_ID": b64(ACCESS), "AWS_SECRET_ACCESS_KEY": b64(SECRET)},
}


class World:
    def __init__(self) -> None:
        self.api = FakeApi()
        self.bucket = FakeBucket()
        self.registry = CollectorRegistry()
        self.controller = StoreController(
            self.api,
            OperatorMetrics(self.registry),
            bucket_check=self.bucket,
            options=ReconcileSettings(retry_base_delay=2, retry_max_delay=30),
            instance="test",
            gate=self.gate,
            clock=lambda: datetime(2025, 1, 1, tzinfo=UTC),
        )
        self.leading = True

    async def gate(self) -> Any:
        async def leads(namespace: str) -> bool:
            return self.leading

        return leads

    def put_store(self, spec: dict[str, Any], **kw: Any) -> dict[str, Any]:
        body = store(spec, **kw)
        existing = self.api.objects.get(STORE_PATH)
        if existing and "status" in existing:
            body["status"] = existing["status"]
        self.api.objects[STORE_PATH] = body
        return copy.deepcopy(body)

    def reconcile(self, body: dict[str, Any] | None = None, retry: int = 0) -> Any:
        body = body if body is not None else copy.deepcopy(self.api.objects[STORE_PATH])
        return asyncio.run(self.controller.reconcile(body, retry=retry))

    def conditions(self) -> dict[str, dict[str, Any]]:
        status = self.api.objects[STORE_PATH]["status"]
        return {c["type"]: c for c in status["conditions"]}

    def metric(self, name: str, labels: dict[str, str]) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def retrying_controller(self, max_delay: float) -> StoreController:
        """A controller of its own on this world, whose retries come within milliseconds."""
        return StoreController(
            self.api,
            OperatorMetrics(CollectorRegistry()),
            bucket_check=self.bucket,
            options=ReconcileSettings(retry_base_delay=0.01, retry_max_delay=max_delay),
            gate=self.gate,
        )


@pytest.fixture()
def world() -> World:
    return World()


def test_ready_store_gets_configmap_status_event_and_metrics(world: World) -> None:
    world.api.objects[SECRET_PATH] = SECRET_BODY
    world.put_store(CREDS_SPEC)

    result = world.reconcile()

    assert result.ready.ok and not result.retry
    assert world.bucket.calls == [("http://s3.local:9000", ACCESS, SECRET)]
    cm = world.api.objects[CM_PATH]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert "endpoint: http://s3.local:9000" in cm["data"]["config.yaml"]
    status = world.api.objects[STORE_PATH]["status"]
    assert status["observedGeneration"] == 1
    assert status["configMapName"] == "runlog-relay-main"
    conditions = world.conditions()
    assert {t: c["status"] for t, c in conditions.items()} == dict.fromkeys(
        ["Ready", *rc.CONDITION_TYPES], "True"
    )
    (event,) = world.api.events()
    assert (event["type"], event["reason"]) == ("Normal", "Ready")
    assert event["involvedObject"]["uid"] == "uid-1"
    assert event["reportingInstance"] == "test"
    labels = {"namespace": NS, "store": "main"}
    assert world.metric("runlog_relay_store_ready", labels) == 1
    assert world.metric("runlog_relay_operator_reconciles_total", {"result": "ready"}) == 1


def test_unchanged_state_writes_nothing(world: World) -> None:
    world.api.objects[SECRET_PATH] = SECRET_BODY
    world.put_store(CREDS_SPEC)
    world.reconcile()
    writes = len(world.api.writes)

    world.reconcile()

    assert len(world.api.writes) == writes  # no status patch, no event, no ConfigMap patch
    assert world.metric("runlog_relay_operator_reconciles_total", {"result": "ready"}) == 2


def test_missing_secret_is_retried_quietly_until_it_appears(world: World) -> None:
    world.put_store(CREDS_SPEC)
    controller = world.retrying_controller(max_delay=0.05)

    async def scenario() -> None:
        result = await controller.reconcile(copy.deepcopy(world.api.objects[STORE_PATH]))
        # Waiting for a Secret is not a failure for kopf to retry (and log as an error):
        # the controller reconciles again by itself, with backoff.
        assert not result.ready.ok and not result.retry
        assert controller.pending_retries() == [(NS, "main")]
        conditions = world.conditions()
        assert conditions["Ready"]["reason"] == "SecretNotFound"
        assert "'creds'" in conditions["Ready"]["message"]
        assert conditions["Connected"]["status"] == "Unknown"
        assert world.bucket.calls == []
        assert world.api.objects[CM_PATH]  # the sidecar config does not wait for the Secret
        await asyncio.sleep(0.1)  # a few retries, still waiting
        assert world.conditions()["Ready"]["reason"] == "SecretNotFound"
        assert len([e for e in world.api.events() if e["reason"] == "SecretNotFound"]) == 1

        world.api.objects[SECRET_PATH] = SECRET_BODY
        while world.conditions()["Ready"]["status"] != "True":
            await asyncio.sleep(0.01)
        assert controller.pending_retries() == []
        await controller.close()

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert world.api.events()[-1]["reason"] == "Ready"
    # Only the referenced Secret was ever read, and never listed.
    assert {path for method, path in world.api.reads if "/secrets" in path} == {SECRET_PATH}


def test_retries_stop_when_the_store_is_deleted_or_another_replica_leads(world: World) -> None:
    body = world.put_store(CREDS_SPEC)
    controller = world.retrying_controller(max_delay=0.01)

    async def scenario() -> None:
        await controller.reconcile(copy.deepcopy(body))
        world.leading = False
        reads = len(world.api.reads)
        await asyncio.sleep(0.1)
        assert len(world.api.reads) == reads  # a standby does not reconcile
        world.leading = True
        await controller.reconcile(copy.deepcopy(body))
        await controller.forget(body)
        assert controller.pending_retries() == []
        await controller.close()

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_close_stops_a_retry_that_is_already_running(world: World) -> None:
    """A retry leaves the schedule when it wakes; close() must still end it, or it goes on
    using the API client after the operator closed it (a new, never-closed session)."""
    body = world.put_store(CREDS_SPEC)
    controller = world.retrying_controller(max_delay=0.01)

    async def scenario() -> None:
        ours = asyncio.all_tasks()  # this scenario and asyncio's own wrapper
        await controller.reconcile(copy.deepcopy(body))  # no Secret yet: a retry is due
        entered, release = asyncio.Event(), asyncio.Event()
        get = world.api.get

        async def blocking_get(path: str) -> dict[str, Any] | None:
            if path == SECRET_PATH:
                entered.set()
                await release.wait()
            return await get(path)

        world.api.get = blocking_get  # type: ignore[method-assign]
        await entered.wait()  # the retry is running, inside its reconcile
        assert controller.pending_retries() == []
        await controller.close()
        assert asyncio.all_tasks() - ours == set()  # nothing of the controller still runs
        release.set()

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_deleted_secret_is_seen_by_the_recheck(world: World) -> None:
    world.api.objects[SECRET_PATH] = SECRET_BODY
    world.put_store(CREDS_SPEC)
    world.reconcile()
    del world.api.objects[SECRET_PATH]

    asyncio.run(world.controller.recheck_all())

    assert world.conditions()["SecretsAvailable"]["reason"] == "SecretNotFound"


def test_unreachable_endpoint_asks_for_a_retry_with_backoff(world: World) -> None:
    world.put_store({"endpoint": "http://s3.local:9000"})
    world.bucket.error = RetryableError("endpoint unreachable (ConnectionRefused)", code="x")

    first = world.reconcile(retry=0)
    third = world.reconcile(retry=2)

    assert first.retry and first.delay == 2 and third.delay == 8
    conditions = world.conditions()
    assert conditions["Ready"]["reason"] == "EndpointUnreachable"
    assert conditions["BucketReady"]["status"] == "Unknown"
    assert world.bucket.calls[0][1] is None  # no Secret: default credentials


def test_wrong_credentials_and_missing_bucket(world: World) -> None:
    world.api.objects[SECRET_PATH] = SECRET_BODY
    world.put_store(CREDS_SPEC)
    world.bucket.error = PermanentError("denied", code="InvalidAccessKeyId")
    result = world.reconcile()
    assert not result.retry and world.conditions()["Ready"]["reason"] == "InvalidCredentials"

    world.bucket.error = PermanentError("no bucket", code="NoSuchBucket")
    world.reconcile()
    conditions = world.conditions()
    assert conditions["Connected"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "BucketNotFound"
    reasons = [e["reason"] for e in world.api.events()]
    assert reasons == ["InvalidCredentials", "BucketNotFound"]


def test_invalid_spec_keeps_the_last_good_configmap(world: World) -> None:
    world.put_store({"bucket": "good/runs"})
    world.reconcile()
    good = world.api.objects[CM_PATH]["data"]

    world.put_store({"bucket": "BAD BUCKET"}, generation=2)
    result = world.reconcile()

    assert result.spec_error is not None and not result.retry
    assert "spec.bucket" in str(result.spec_error)
    assert world.api.objects[CM_PATH]["data"] == good
    conditions = world.conditions()
    assert conditions["Ready"]["reason"] == "InvalidSpec"
    assert conditions["SpecValid"]["observedGeneration"] == 2
    assert world.api.objects[STORE_PATH]["status"]["observedGeneration"] == 2
    assert len(world.bucket.calls) == 1


def test_spec_change_updates_the_configmap_and_generation(world: World) -> None:
    world.put_store({"bucket": "first/runs"})
    world.reconcile()
    world.put_store({"bucket": "second/runs", "layout": "single"}, generation=2)

    world.reconcile()

    text = world.api.objects[CM_PATH]["data"]["config.yaml"]
    assert "bucket: second/runs" in text and "layout: single" in text
    assert world.api.objects[STORE_PATH]["status"]["observedGeneration"] == 2
    assert world.conditions()["Ready"]["observedGeneration"] == 2


def test_foreign_configmap_is_not_taken_over(world: World) -> None:
    world.api.objects[CM_PATH] = {
        "metadata": {"name": "runlog-relay-main", "namespace": NS},
        "data": {"config.yaml": "mine"},
    }
    world.put_store({})
    world.reconcile()
    assert world.api.objects[CM_PATH]["data"] == {"config.yaml": "mine"}
    conditions = world.conditions()
    assert conditions["ConfigRendered"]["reason"] == "ConfigMapConflict"
    assert conditions["Ready"]["status"] == "False"


def test_api_failures_on_side_objects_become_conditions(world: World) -> None:
    world.put_store(CREDS_SPEC)
    world.api.fail[("GET", SECRET_PATH)] = PermanentError("403 Forbidden", code="Forbidden")
    world.api.fail[("POST", f"/api/v1/namespaces/{NS}/configmaps")] = RetryableError("503")
    result = world.reconcile()
    conditions = world.conditions()
    assert conditions["ConfigRendered"]["reason"] == "ConfigMapWriteFailed"
    assert conditions["SecretsAvailable"]["reason"] == "SecretUnreadable"
    assert result.retry  # the ConfigMap write is worth retrying


def test_status_write_failure_is_raised_for_kopf_to_retry(world: World) -> None:
    world.put_store({})
    world.api.fail[("PATCH", STORE_PATH + "/status")] = RetryableError("API 503")
    with pytest.raises(RetryableError):
        world.reconcile()
    assert world.metric("runlog_relay_operator_reconciles_total", {"result": "error"}) == 1


def test_store_deleted_mid_reconcile_is_not_an_error(world: World) -> None:
    body = world.put_store({})
    del world.api.objects[STORE_PATH]
    result = world.reconcile(body)
    assert result.ready.ok and not result.retry
    assert world.controller.known_stores() == []  # nothing remembered about a gone store
    assert world.metric("runlog_relay_store_ready", {"namespace": NS, "store": "main"}) is None
    assert world.api.events() == []


def test_event_post_failure_does_not_fail_the_reconcile(world: World) -> None:
    world.put_store({})
    world.api.fail[("POST", f"/api/v1/namespaces/{NS}/events")] = PermanentError("forbidden")
    assert world.reconcile().ready.ok


def test_forget_removes_metric_and_state_and_leaves_the_configmap_to_the_gc(
    world: World,
) -> None:
    body = world.put_store({})
    world.reconcile()
    labels = {"namespace": NS, "store": "main"}
    assert world.metric("runlog_relay_store_ready", labels) == 1

    asyncio.run(world.controller.forget(body))

    assert world.metric("runlog_relay_store_ready", labels) is None
    assert world.controller.known_stores() == []
    # Owned by the store: the garbage collector deletes it; the operator may not.
    assert not [w for w in world.api.writes if w[0] == "DELETE"]


def test_forget_of_an_older_incarnation_leaves_the_new_one_alone(world: World) -> None:
    world.put_store({}, uid="new")
    world.reconcile()
    asyncio.run(world.controller.forget(store({}, uid="old")))
    assert CM_PATH in world.api.objects
    assert world.controller.known_stores() == [(NS, "main")]


def test_recheck_reconciles_known_stores_and_forgets_vanished_ones(world: World) -> None:
    world.put_store({})
    world.reconcile()
    world.bucket.error = PermanentError("no bucket", code="NoSuchBucket")

    asyncio.run(world.controller.recheck_all())

    assert world.conditions()["Ready"]["reason"] == "BucketNotFound"
    del world.api.objects[STORE_PATH]
    asyncio.run(world.controller.recheck_all())
    assert world.controller.known_stores() == []


def test_unexpected_bucket_check_exception_is_not_a_traceback_in_status(world: World) -> None:
    world.put_store({})
    world.bucket.error = ZeroDivisionError("boom")
    result = world.reconcile()
    assert result.retry
    message = world.conditions()["Connected"]["message"]
    assert "unexpected ZeroDivisionError" in message and "Traceback" not in message


def test_secret_values_never_written_anywhere(world: World) -> None:
    world.api.objects[SECRET_PATH] = SECRET_BODY
    world.put_store(CREDS_SPEC)
    world.bucket.error = PermanentError(f"server echoed {ACCESS} and {SECRET}", code="Weird")
    world.reconcile()
    world.bucket.error = None
    world.reconcile()

    written = json.dumps(world.api.writes)
    assert world.api.writes
    for value in (ACCESS, SECRET, b64(ACCESS), b64(SECRET)):
        assert value not in written


def test_recheck_skips_namespaces_where_another_replica_leads(world: World) -> None:
    world.put_store({})
    world.reconcile()
    world.bucket.error = PermanentError("no bucket", code="NoSuchBucket")

    world.leading = False
    asyncio.run(world.controller.recheck_all())

    assert world.conditions()["Ready"]["status"] == "True"  # untouched
    assert len(world.bucket.calls) == 1


def test_recheck_loop_survives_a_failing_round(world: World) -> None:
    world.put_store({})
    world.reconcile()
    rounds: list[int] = []

    async def flaky_gate() -> Any:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("gate exploded")

        async def leads(namespace: str) -> bool:
            return True

        return leads

    controller = StoreController(
        world.api,
        OperatorMetrics(CollectorRegistry()),
        bucket_check=world.bucket,
        options=ReconcileSettings(recheck_interval=0.01),
        gate=flaky_gate,
    )
    asyncio.run(controller.reconcile(copy.deepcopy(world.api.objects[STORE_PATH])))

    async def scenario() -> None:
        task = asyncio.create_task(controller.recheck_forever())
        while len(rounds) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert len(rounds) >= 3  # the first round's failure did not end the loop


def test_an_endpoint_outside_the_allow_list_is_never_connected_to(world: World) -> None:
    controller = StoreController(
        world.api,
        OperatorMetrics(CollectorRegistry()),
        bucket_check=world.bucket,
        policy=EndpointPolicy.from_patterns(["https://*.amazonaws.com"]),
    )
    world.api.objects[SECRET_PATH] = SECRET_BODY
    world.put_store(CREDS_SPEC)  # http://s3.local:9000
    result = asyncio.run(controller.reconcile(copy.deepcopy(world.api.objects[STORE_PATH])))
    assert result.spec_error is not None  # permanent: no retry until the spec changes
    ready = world.conditions()["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "EndpointNotAllowed"
    assert "allow-list" in ready["message"]
    assert world.bucket.calls == []  # not a single request to it
    assert not [path for _, path in world.api.reads if "/secrets/" in path]  # nor a Secret read


# --------------------------------------------------------------------------- credentials


def test_credentials_secret_ref_is_the_same_as_the_deprecated_spelling(world: World) -> None:
    world.api.objects[SECRET_PATH] = SECRET_BODY
    world.put_store(
        {"endpoint": "http://s3.local:9000", "credentials": {"secretRef": {"name": "creds"}}}
    )
    assert world.reconcile().ready.ok
    assert world.bucket.calls == [("http://s3.local:9000", ACCESS, SECRET)]
    config = world.api.objects[CM_PATH]["data"]["config.yaml"]
    assert "accessKeyIdFile: /var/run/secrets/runlog-relay/credentials/access-key-id" in config

    del world.api.objects[SECRET_PATH]
    world.reconcile()
    message = world.conditions()["SecretsAvailable"]["message"]
    assert message == (
        f"Secret 'creds' not found in namespace '{NS}' (spec.credentials.secretRef.name)"
    )


def test_both_credentials_fields_are_an_invalid_spec(world: World) -> None:
    world.put_store(
        {**CREDS_SPEC, "credentials": {"serviceAccount": {}}}  # and credentialsSecretRef
    )
    result = world.reconcile()
    assert result.spec_error is not None
    assert "not both" in world.conditions()["SpecValid"]["message"]
    assert world.bucket.calls == []


def test_service_account_store_without_an_operator_identity_is_checked_by_sidecars(
    world: World,
) -> None:
    world.put_store(
        {"endpoint": "https://s3.eu-west-1.amazonaws.com", "credentials": {"serviceAccount": {}}}
    )
    result = world.reconcile()
    conditions = world.conditions()
    assert world.bucket.calls == []  # nothing to check with
    assert (conditions["BucketReady"]["status"], conditions["BucketReady"]["reason"]) == (
        "Unknown",
        "CheckedBySidecars",
    )
    assert conditions["Connected"]["reason"] == "CheckedBySidecars"
    assert conditions["SecretsAvailable"]["reason"] == "ServiceAccountIdentity"
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "True",
        "CheckedBySidecars",
    )
    assert result.ready.ok and not result.retry
    assert not [r for r in world.api.reads if "/secrets/" in r[1]]  # no Secret read at all
    config = world.api.objects[CM_PATH]["data"]["config.yaml"]
    assert "credentials: service-account" in config
    assert "accessKeyIdFile" not in config


def test_service_account_store_is_checked_with_the_operators_own_identity() -> None:
    identity = WebIdentity(
        token_file=Path("/var/run/secrets/eks.amazonaws.com/serviceaccount/token"),
        sts_endpoint="https://sts.eu-west-1.amazonaws.com",
        role_arn="arn:aws:iam::1:role/operator",
    )
    seen: list[object] = []

    def bucket_check(spec: StoreSpec, secrets: rc.ResolvedSecrets, timeout: float) -> bool:
        seen.append(secrets.plan())
        raise PermanentError("checking bucket 'runs': AccessDenied", code="AccessDenied")

    api = FakeApi()
    controller = StoreController(
        api, OperatorMetrics(CollectorRegistry()), bucket_check=bucket_check, identity=identity
    )
    body = store(
        {
            "endpoint": "https://s3.amazonaws.com",
            "bucket": "runs",
            "credentials": {"serviceAccount": {}},
        }
    )
    api.objects[STORE_PATH] = copy.deepcopy(body)
    result = asyncio.run(controller.reconcile(body))
    assert seen == [identity]
    assert result.ready.reason == "AccessDenied"


def test_a_secret_reference_never_names_another_namespace(world: World) -> None:
    """A reference is a name only. Were a `namespace` field added and used, the store
    below would read team-b's Secret and turn Ready: this test would fail."""
    other = "/api/v1/namespaces/team-b/secrets/creds"
    world.api.objects[other] = {**SECRET_BODY, "metadata": {"name": "creds", "namespace": "team-b"}}
    for ref in (
        {"credentialsSecretRef": {"name": "creds", "namespace": "team-b"}},
        {"credentials": {"secretRef": {"name": "creds", "namespace": "team-b"}}},
        {"tls": {"caSecretRef": {"name": "creds", "key": "ca", "namespace": "team-b"}}},
    ):
        world.put_store({"endpoint": "https://s3.local:9000", **ref})
        result = world.reconcile()
        assert not result.ready.ok
        assert "namespace: Extra inputs are not permitted" in result.ready.message
    # And a valid reference is looked up in the store's own namespace only.
    world.put_store(CREDS_SPEC)
    assert world.reconcile().ready.reason == "SecretNotFound"
    secret_reads = [path for verb, path in world.api.reads if "/secrets/" in path]
    assert secret_reads and all(
        p.startswith(f"/api/v1/namespaces/{NS}/secrets/") for p in secret_reads
    )
    assert world.bucket.calls == []
