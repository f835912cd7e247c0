"""The webhooks' I/O (:class:`Admission`) with a fake API: store lookup, Events, metrics,
and the promise that nothing ever raises into a denial of a pod."""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from runlog_relay.errors import PermanentError, RetryableError
from runlog_relay.metrics import OperatorMetrics
from runlog_relay.operator import webhook as wh
from runlog_relay.operator.admission import SUBJECT_ACCESS_REVIEWS, Admission
from runlog_relay.operator.kubeapi import configmap_path, secret_path, store_path
from runlog_relay.operator.policy import EndpointPolicy
from runlog_relay.operator.settings import InjectionSettings, WebhookSettings

NS = "team-a"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SPEC = {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "creds"}}


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[tuple[str, str], Exception] = {}
        self.delay = 0.0
        #: (user, namespace, secret) an authorizer would allow to `get`.
        self.readers: set[tuple[str, str, str]] = {("alice", NS, "creds")}
        self.reviews: list[dict[str, Any]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(("GET", path))
        if self.delay:
            await asyncio.sleep(self.delay)
        if ("GET", path) in self.fail:
            raise self.fail[("GET", path)]
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path))
        if ("POST", path) in self.fail:
            raise self.fail[("POST", path)]
        if path == SUBJECT_ACCESS_REVIEWS:  # an authorizer from the `readers` model
            spec = body["spec"]
            self.reviews.append(copy.deepcopy(spec))
            attributes = spec["resourceAttributes"]
            asked = (spec["user"], attributes["namespace"], attributes["name"])
            allowed = attributes["verb"] == "get" and asked in self.readers
            return {**body, "status": {"allowed": allowed}}
        self.created.append((path, copy.deepcopy(dict(body))))
        return dict(body)


class World:
    def __init__(
        self, lookup_timeout: float = 0.5, allowed: tuple[str, ...] = (), **options: Any
    ) -> None:
        self.api = FakeApi()
        self.registry = CollectorRegistry()
        self.admission = Admission(
            self.api,
            OperatorMetrics(self.registry),
            options=InjectionSettings(**options),
            instance="op-0",
            lookup_timeout=lookup_timeout,
            policy=EndpointPolicy.from_patterns(allowed),
            clock=lambda: NOW,
        )

    def mutate(self, pod: dict[str, Any], stores: Any = None, dryrun: bool = False) -> wh.Decision:
        async def run() -> wh.Decision:
            decision = await self.admission.mutate_pod(
                pod, namespace=NS, stores=stores, dryrun=dryrun
            )
            await self.admission.drain()
            return decision

        return asyncio.run(run())

    def count(self, result: str) -> float:
        value = self.registry.get_sample_value(
            "runlog_relay_operator_injections_total", {"result": result}
        )
        return value or 0.0

    def events(self) -> list[dict[str, Any]]:
        return [body for path, body in self.api.created if path.endswith("/events")]


def pod(store: str | None = "main") -> dict[str, Any]:
    labels = {wh.STORE_LABEL: store} if store else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "x"}]},
    }


def store_body(name: str = "main", namespace: str = NS) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": SPEC,
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]},
    }


def test_store_from_the_index_needs_no_api_call() -> None:
    world = World()
    index = {(NS, "main"): [wh.StoreInfo.from_body(store_body())]}
    decision = world.mutate(pod(), index)
    assert decision.outcome is wh.Outcome.INJECTED
    assert world.api.calls == []
    assert world.count("injected") == 1 and world.count("skipped") == 0


def test_store_missing_from_the_index_is_read_from_the_api_in_the_pods_namespace() -> None:
    world = World()
    world.api.objects[store_path(NS, "main")] = store_body()
    # The index knows a same-named store elsewhere: irrelevant.
    index = {("team-b", "main"): [wh.StoreInfo.from_body(store_body(namespace="team-b"))]}
    decision = world.mutate(pod(), index)
    assert decision.outcome is wh.Outcome.INJECTED
    assert world.api.calls == [("GET", store_path(NS, "main"))]


def not_ready_body(*steps: tuple[str, str]) -> dict[str, Any]:
    body = store_body()
    body["status"]["conditions"] = [{"type": "Ready", "status": "False"}] + [
        {"type": t, "status": v} for t, v in steps
    ]
    return body


def test_not_ready_store_whose_files_exist_per_status_is_injected_without_api_calls() -> None:
    world = World()
    body = not_ready_body(("ConfigRendered", "True"), ("SecretsAvailable", "True"))
    decision = world.mutate(pod(), {(NS, "main"): [wh.StoreInfo.from_body(body)]})
    assert decision.outcome is wh.Outcome.INJECTED and world.api.calls == []


def test_not_ready_store_is_checked_for_its_configmap_and_secret() -> None:
    world = World()
    index = {(NS, "main"): [wh.StoreInfo.from_body(not_ready_body())]}
    decision = world.mutate(pod(), index)
    # Injected all the same (the sidecar waits for them), with a warning naming both.
    assert decision.outcome is wh.Outcome.INJECTED
    assert any("ConfigMap 'runlog-relay-main', Secret 'creds'" in w for w in decision.warnings)
    assert ("GET", configmap_path(NS, "runlog-relay-main")) in world.api.calls
    # Both there (a store created a moment ago, not reconciled yet): injected.
    world.api.objects[configmap_path(NS, "runlog-relay-main")] = {"data": {"config.yaml": "x"}}
    world.api.objects[secret_path(NS, "creds")] = {
        "data": {"AWS_ACCESS_KEY_ID": b64("a"), "AWS_SECRET_ACCESS_KEY": b64("b")}
    }
    assert world.mutate(pod(), index).outcome is wh.Outcome.INJECTED


def test_missing_store_posts_one_warning_event_and_counts_skipped() -> None:
    world = World()
    decision = world.mutate(pod("ghost"), {})
    assert decision.outcome is wh.Outcome.SKIPPED and decision.reason == "StoreNotFound"
    (event,) = world.events()
    assert event["reason"] == "RunLogRelayStoreNotFound" and event["type"] == "Warning"
    assert event["involvedObject"]["name"] == "p"
    assert event["reportingInstance"] == "op-0"
    assert world.count("skipped") == 1


def test_dry_run_posts_no_event_and_counts_nothing_but_answers_the_same() -> None:
    world = World()
    decision = world.mutate(pod("ghost"), {}, dryrun=True)
    assert decision.reason == "StoreNotFound" and decision.ops
    assert world.events() == [] and world.count("skipped") == 0


def test_unlabelled_injected_and_opted_out_pods_cost_little() -> None:
    world = World()
    # A pod naming no store is sent only for its namespace's label: one namespace read.
    assert world.mutate(pod(None)).outcome is wh.Outcome.UNCHANGED
    assert world.api.calls == [("GET", "/api/v1/namespaces/team-a")]
    assert world.count("skipped") == 0
    out = pod()
    out["metadata"]["annotations"] = {wh.INJECT_OPT_OUT: "false"}
    calls = len(world.api.calls)
    assert world.mutate(out).outcome is wh.Outcome.UNCHANGED
    assert len(world.api.calls) == calls


def test_api_failure_lets_the_pod_through_annotated() -> None:
    world = World()
    world.api.fail[("GET", store_path(NS, "main"))] = RetryableError("Kubernetes API GET: 503")
    decision = world.mutate(pod(), {})
    assert decision.outcome is wh.Outcome.FAILED
    patched = wh.apply_json_patch(pod(), decision.ops)
    assert patched["spec"] == pod()["spec"]
    assert "503" in patched["metadata"]["annotations"][wh.SKIPPED_ANNOTATION]
    assert world.events()[0]["reason"] == "RunLogRelayInjectionFailed"
    assert world.count("failed") == 1


def test_slow_api_times_out_into_a_failure_not_a_hang() -> None:
    world = World()
    world.api.delay = 5.0
    decision = world.mutate(pod(), {})
    assert decision.outcome is wh.Outcome.FAILED
    assert "did not answer in time" in decision.message


def test_the_answer_beats_the_api_servers_timeout() -> None:
    """On a slow API the pod must still get its InjectionFailed annotation: the lookups'
    budget is below the configurations' timeoutSeconds, with room for the answer."""
    webhook = WebhookSettings(timeout_seconds=1)
    assert webhook.lookup_budget <= 0.6 * webhook.timeout_seconds
    world = World(lookup_timeout=webhook.lookup_budget)
    world.api.delay = 5.0
    started = time.monotonic()
    decision = world.mutate(pod(), {})
    assert time.monotonic() - started < webhook.timeout_seconds
    patched = wh.apply_json_patch(pod(), decision.ops)
    assert patched["metadata"]["annotations"][wh.SKIPPED_ANNOTATION].startswith("InjectionFailed")


def test_a_bug_is_reported_by_type_only() -> None:
    class Broken(Mapping[tuple[str, str], Any]):
        def __getitem__(self, key: tuple[str, str]) -> Any:
            raise KeyError(key)

        def __iter__(self) -> Any:
            return iter(())

        def __len__(self) -> int:
            return 1

        def get(self, key: Any, default: Any = None) -> Any:
            raise ZeroDivisionError("secret detail")

    world = World()
    decision = world.mutate(pod(), Broken())
    assert decision.outcome is wh.Outcome.FAILED
    assert "ZeroDivisionError" in decision.message and "secret detail" not in decision.message


def test_event_post_failure_is_swallowed() -> None:
    world = World()
    world.api.fail[("POST", f"/api/v1/namespaces/{NS}/events")] = PermanentError("forbidden")
    decision = world.mutate(pod("ghost"), {})
    assert decision.outcome is wh.Outcome.SKIPPED  # and no exception escaped


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


ALICE = {"username": "alice", "uid": "u-1", "groups": ["team-a-devs", "system:authenticated"]}


def validate(
    world: World, spec: Any, old: Any = None, operation: str = "CREATE", user: Any = ALICE
) -> Any:
    return asyncio.run(
        world.admission.validate_store(
            spec, old, operation=operation, namespace=NS, name="main", user=user
        )
    )


def test_store_validation_warns_and_denies() -> None:
    world = World()
    denial, warnings = validate(world, SPEC)
    assert denial is None
    assert warnings == [
        "Secret 'creds' not found in namespace 'team-a' (spec.credentialsSecretRef.name); the"
        " store stays NotReady until it exists"
    ]
    world.api.objects[secret_path(NS, "creds")] = {
        "data": {"AWS_ACCESS_KEY_ID": b64("a"), "AWS_SECRET_ACCESS_KEY": b64("b")}
    }
    assert validate(world, SPEC) == (None, [])
    denial, _ = validate(world, {"endpoint": "http://a:b@minio"})
    assert denial is not None and "spec.endpoint" in denial.message and denial.code == 422


def test_a_store_may_only_name_secrets_its_author_may_read() -> None:
    """The confused deputy: a store sends its Secrets' keys to its endpoint, so naming a
    Secret needs the right to read it (a SubjectAccessReview for the request's user)."""
    world = World()
    assert validate(world, SPEC)[0] is None
    (review,) = world.api.reviews
    assert review == {
        "user": "alice",
        "groups": ["team-a-devs", "system:authenticated"],
        "uid": "u-1",
        "extra": {},
        "resourceAttributes": {
            "namespace": NS,
            "verb": "get",
            "group": "",
            "resource": "secrets",
            "name": "creds",
        },
    }
    denial, _ = validate(world, SPEC, user={"username": "mallory", "groups": []})
    assert denial is not None and denial.code == 403
    assert "mallory may not read Secret 'creds' in namespace 'team-a'" in denial.message
    assert validate(world, SPEC, user=None)[0] is not None  # no user: no way to check
    # A store naming no Secret needs no review.
    reviews = len(world.api.reviews)
    assert validate(world, {"endpoint": "http://minio:9000"}, user={"username": "m"})[0] is None
    assert len(world.api.reviews) == reviews


def test_an_update_is_reviewed_when_it_changes_where_credentials_go() -> None:
    world = World()
    mallory = {"username": "mallory"}
    tuned = {**SPEC, "sync": {"concurrency": 2}}
    # Tuning does not send the keys anywhere new: no review needed.
    assert validate(world, tuned, SPEC, "UPDATE", user=mallory)[0] is None
    assert world.api.reviews == []
    for changed in (
        {**SPEC, "endpoint": "https://evil.example.com"},
        {**SPEC, "endpoint": "https://minio:9000", "tls": {"insecureSkipVerify": True}},
        {**SPEC, "credentialsSecretRef": {"name": "creds", "accessKeyIdKey": "other"}},
    ):
        denial, _ = validate(world, changed, SPEC, "UPDATE", user=mallory)
        assert denial is not None and denial.code == 403, changed


def test_a_review_that_cannot_be_asked_denies() -> None:
    world = World()
    world.api.fail[("POST", SUBJECT_ACCESS_REVIEWS)] = PermanentError("403 Forbidden")
    denial, _ = validate(world, SPEC)
    assert denial is not None and denial.code == 503 and "try again" in denial.message
    world = World()
    world.api.delay = 5.0  # the review itself is quick; the Secret lookups are slow
    denial, _ = validate(world, SPEC)
    assert denial is not None and "did not answer in time" in denial.message


def test_an_endpoint_outside_the_allow_list_is_denied_and_not_injected() -> None:
    world = World(allowed=("https://*.s3.amazonaws.com", "http://minio:9000"))
    assert validate(world, SPEC)[0] is None
    denial, _ = validate(world, {**SPEC, "endpoint": "http://169.254.169.254"})
    assert denial is not None and denial.code == 403 and "allow-list" in denial.message
    assert len(world.api.reviews) == 1  # refused before anything is asked
    store = wh.StoreInfo(namespace=NS, name="main", spec={"endpoint": "http://10.0.0.1:9000"})
    decision = world.mutate(pod(), {(NS, "main"): [store]})
    assert decision.outcome is wh.Outcome.SKIPPED and decision.reason == "EndpointNotAllowed"


def test_store_validation_of_an_unchanged_spec_reads_nothing() -> None:
    world = World()
    assert validate(world, SPEC, SPEC, "UPDATE") == (None, [])
    assert world.api.calls == []


def test_store_validation_reports_a_foreign_configmap_and_api_errors() -> None:
    world = World()
    world.api.objects[secret_path(NS, "creds")] = {
        "data": {"AWS_ACCESS_KEY_ID": b64("a"), "AWS_SECRET_ACCESS_KEY": b64("b")}
    }
    world.api.objects[configmap_path(NS, "runlog-relay-main")] = {"metadata": {"name": "x"}}
    _, warnings = validate(world, SPEC)
    assert warnings == [
        "ConfigMap 'runlog-relay-main' exists and is not owned by a RunLogStore; the operator"
        " cannot manage it until it is deleted or renamed"
    ]
    world.api.fail[("GET", secret_path(NS, "creds"))] = PermanentError("GET secrets: 403 Forbidden")
    _, warnings = validate(world, SPEC)
    assert warnings[0] == (
        "could not check Secret 'creds' (spec.credentialsSecretRef.name):"
        " GET secrets: 403 Forbidden"
    )
    world.api.delay = 5.0
    # Where credentials go does not change (an UPDATE of tuning): only warnings are late.
    denial, warnings = validate(world, {**SPEC, "sync": {"concurrency": 2}}, SPEC, "UPDATE")
    assert denial is None
    assert warnings == [
        "could not check the referenced Secrets: the Kubernetes API did not answer in time"
    ]


def test_a_namespace_label_opts_its_pods_in_and_is_remembered_briefly() -> None:
    world = World()
    world.api.objects["/api/v1/namespaces/team-a"] = {
        "metadata": {"name": NS, "labels": {"runlog-relay.dev/store": "main"}}
    }
    info = wh.StoreInfo(namespace=NS, name="main", spec=SPEC, ready="True", files_ready=True)
    plain = pod()
    del plain["metadata"]["labels"]  # the pod names no store; its namespace does
    first = world.mutate(plain, {(NS, "main"): [info]})
    second = world.mutate(plain, {(NS, "main"): [info]})
    assert first.outcome is second.outcome is wh.Outcome.INJECTED
    assert world.api.calls.count(("GET", "/api/v1/namespaces/team-a")) == 1
    # A pod naming its own store never needs the namespace.
    calls = len(world.api.calls)
    assert world.mutate(pod(), {(NS, "main"): [info]}).outcome is wh.Outcome.INJECTED
    assert len(world.api.calls) == calls
    # A namespace without the label: nothing to do.
    empty = World()
    empty.api.objects["/api/v1/namespaces/team-a"] = {"metadata": {"name": NS}}
    assert empty.mutate(plain, {}).outcome is wh.Outcome.UNCHANGED
