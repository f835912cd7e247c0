"""
Self-test of the Kubernetes test harness (tests/integration/kube/).

The first part checks the emulator's API semantics directly over HTTP; the second
runs a throwaway kopf operator (defined here, not product code) against it.
"""

from __future__ import annotations

import datetime
import http.client
import json
import pathlib
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import kopf
import pytest

from tests.integration.kube import (
    DEFAULT_RESOURCES,
    KubeApiError,
    KubeHarness,
    ResourceSpec,
    WaitTimeout,
    wait_for,
)
from tests.integration.kube.emulator import SUBJECT_ACCESS_REVIEWS
from tests.integration.kube.kopf_runner import KopfRunner, OperatorCrashed

pytest_plugins = ["tests.integration.kube.fixtures"]

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "runlog-relay.dev", "v1alpha1", "runlogstores"
RLS = f"{GROUP}/{VERSION}/{PLURAL}"
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


@pytest.fixture()
def kube_resources() -> Sequence[ResourceSpec]:
    return DEFAULT_RESOURCES  # RunLogStore pre-seeded: these tests are about the emulator


def store_body(
    name: str, namespace: str = "default", bucket: str = "logs", **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RunLogStore",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"bucket": bucket, "credentialsSecret": "creds"},
    }


# -----------------------------------------------------------------------------------------------
# The emulator's realism, checked directly over HTTP.
# -----------------------------------------------------------------------------------------------


def test_server_assigned_metadata_and_generate_name(kube: KubeHarness) -> None:
    first = kube.create(
        "v1/configmaps", {"metadata": {"generateName": "cm-", "namespace": "default"}}
    )
    second = kube.create(RLS, store_body("store-1"))

    meta = first["metadata"]
    assert meta["name"].startswith("cm-") and len(meta["name"]) == len("cm-") + 5
    assert meta["uid"] and meta["uid"] != second["metadata"]["uid"]
    assert datetime.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    assert meta["generation"] == 1
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert kube.get("configmaps", meta["name"], "default") == first

    with pytest.raises(KubeApiError) as err:
        kube.create(RLS, store_body("store-1"))
    assert err.value.status == 409 and err.value.reason == "AlreadyExists"
    with pytest.raises(KubeApiError) as err:
        kube.get(RLS, "absent", "default")
    assert err.value.status == 404


def test_generation_status_subresource_and_noop_writes(kube: KubeHarness) -> None:
    created = kube.create(RLS, {**store_body("store-1"), "status": {"ignored": True}})
    assert "status" not in created  # the main endpoint ignores the status of such resources

    # Metadata-only changes: a new resourceVersion, the same generation.
    labelled = kube.patch(RLS, "store-1", {"metadata": {"labels": {"a": "b"}}}, "default")
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )

    # Spec changes bump the generation; status changes via the main endpoint are ignored.
    changed = kube.patch(
        RLS, "store-1", {"spec": {"bucket": "other"}, "status": {"x": 1}}, "default"
    )
    assert changed["metadata"]["generation"] == 2
    assert changed["spec"]["bucket"] == "other" and "status" not in changed

    # The status subresource changes only the status, never the generation or the spec.
    status = kube.patch(
        RLS,
        "store-1",
        {"spec": {"bucket": "no"}, "status": {"observedGeneration": 2}},
        "default",
        subresource="status",
    )
    assert status["status"] == {"observedGeneration": 2}
    assert status["spec"]["bucket"] == "other" and status["metadata"]["generation"] == 2
    replaced = kube.replace(
        RLS,
        "store-1",
        {**status, "status": {"observedGeneration": 3}},
        "default",
        subresource="status",
    )
    assert replaced["status"] == {"observedGeneration": 3}

    # A no-op write is not a change: no new resourceVersion (as in a real API server).
    same = kube.patch(RLS, "store-1", {"spec": {"bucket": "other"}}, "default")
    assert same["metadata"]["resourceVersion"] == replaced["metadata"]["resourceVersion"]


def test_patch_types_and_optimistic_concurrency(kube: KubeHarness) -> None:
    cm = kube.create(
        "v1/configmaps",
        {"metadata": {"name": "cm", "namespace": "default"}, "data": {"a": "1", "b": "2"}},
    )
    rv = cm["metadata"]["resourceVersion"]

    merged = kube.patch("configmaps", "cm", {"data": {"a": None, "c": "3"}}, "default")
    assert merged["data"] == {"b": "2", "c": "3"}

    # JSON-patch with a stale resourceVersion test: 422, as kopf expects for its finalizer patches.
    with pytest.raises(KubeApiError) as err:
        kube.patch(
            "configmaps",
            "cm",
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "add", "path": "/data/d", "value": "4"},
            ],
            "default",
            type="json",
        )
    assert err.value.status == 422
    fresh_rv = merged["metadata"]["resourceVersion"]
    patched = kube.patch(
        "configmaps",
        "cm",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": fresh_rv},
            {"op": "add", "path": "/data/d", "value": "4"},
        ],
        "default",
        type="json",
    )
    assert patched["data"] == {"b": "2", "c": "3", "d": "4"}

    # A stale resourceVersion in a merge-patch or a PUT: 409 Conflict.
    for attempt in (
        lambda: kube.patch(
            "configmaps", "cm", {"metadata": {"resourceVersion": rv}, "data": {}}, "default"
        ),
        lambda: kube.replace("configmaps", "cm", {**cm, "data": {}}, "default"),
    ):
        with pytest.raises(KubeApiError) as err:
            attempt()
        assert err.value.status == 409
    assert kube.get("configmaps", "cm", "default")["data"] == {"b": "2", "c": "3", "d": "4"}

    # Secrets: stringData becomes base64 data, as the API server does.
    secret = kube.create(
        "v1/secrets",
        {"metadata": {"name": "s", "namespace": "default"}, "stringData": {"key": "value"}},
    )
    assert secret["data"] == {"key": "dmFsdWU="} and "stringData" not in secret


def test_finalizers_and_owner_garbage_collection(kube: KubeHarness) -> None:
    owner = kube.create(RLS, store_body("store-1", finalizers=["example.com/hold"]))
    ref = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RunLogStore",
        "name": "store-1",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for name in ("owned-1", "owned-2"):
        kube.create(
            "v1/configmaps",
            {"metadata": {"name": name, "namespace": "default", "ownerReferences": [ref]}},
        )
    kube.create("v1/configmaps", {"metadata": {"name": "unrelated", "namespace": "default"}})

    # Deletion with finalizers only marks the object.
    marked = kube.delete(RLS, "store-1", "default")
    assert marked is not None and marked["metadata"]["deletionTimestamp"]
    assert kube.get(RLS, "store-1", "default")["metadata"]["deletionTimestamp"]
    assert kube.find("configmaps", "owned-1", "default") is not None
    with pytest.raises(KubeApiError) as err:  # no new finalizers on a deleting object
        kube.patch(
            RLS, "store-1", {"metadata": {"finalizers": ["example.com/hold", "x/y"]}}, "default"
        )
    assert err.value.status == 422

    # Releasing the last finalizer removes the object, and the GC removes its dependents.
    current = kube.get(RLS, "store-1", "default")
    kube.patch(
        RLS,
        "store-1",
        [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": current["metadata"]["resourceVersion"],
            },
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ],
        "default",
        type="json",
    )
    assert kube.find(RLS, "store-1", "default") is None
    assert kube.find("configmaps", "owned-1", "default") is None
    assert kube.find("configmaps", "owned-2", "default") is None
    assert kube.find("configmaps", "unrelated", "default") is not None
    history = kube.history(RLS, "store-1", "default")
    assert (
        history[-1] is None
        and history[-2] is not None
        and "finalizers" not in history[-2]["metadata"]
    )

    # Orphan propagation keeps the dependents, without the owner reference.
    owner = kube.create(RLS, store_body("store-2"))
    ref = {**ref, "name": "store-2", "uid": owner["metadata"]["uid"]}
    kube.create(
        "v1/configmaps",
        {"metadata": {"name": "orphan", "namespace": "default", "ownerReferences": [ref]}},
    )
    kube.delete(RLS, "store-2", "default", propagation_policy="Orphan")
    orphan = kube.get("configmaps", "orphan", "default")
    assert "ownerReferences" not in orphan["metadata"]


class WatchStream:
    """A raw HTTP watch-stream reader (to check the emulator's watch semantics directly)."""

    def __init__(self, kube: KubeHarness, path: str, **params: str) -> None:
        parsed = urllib.parse.urlsplit(kube.url)
        self.conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=5)
        self.conn.request("GET", f"{path}?{urllib.parse.urlencode({'watch': 'true', **params})}")
        self.response = self.conn.getresponse()
        assert self.response.status == 200

    def next(self) -> dict[str, Any]:
        line = self.response.readline()
        assert line, "the watch-stream has ended"
        event: dict[str, Any] = json.loads(line)
        return event

    def close(self) -> None:
        self.response.close()
        self.conn.close()


def test_watch_from_resource_version_loses_nothing(kube: KubeHarness) -> None:
    kube.create("v1/configmaps", {"metadata": {"name": "before", "namespace": "default"}})
    listing = kube.request("GET", "/api/v1/namespaces/default/configmaps")
    assert [item["metadata"]["name"] for item in listing["items"]] == ["before"]
    list_rv = listing["metadata"]["resourceVersion"]

    # Changes between the list and the watch must be replayed by the watch from the list's version.
    kube.create("v1/configmaps", {"metadata": {"name": "between", "namespace": "default"}})
    kube.create("v1/configmaps", {"metadata": {"name": "elsewhere", "namespace": "kube-system"}})
    kube.patch("configmaps", "before", {"data": {"k": "v"}}, "default")

    stream = WatchStream(kube, "/api/v1/namespaces/default/configmaps", resourceVersion=list_rv)
    watch_key = (("", "v1", "configmaps"), "default")
    kube.wait_for(lambda: kube.active_watches().get(watch_key), message="the watch to be open")
    try:
        kube.delete("configmaps", "between", "default")
        events = [stream.next() for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "between"),
            ("MODIFIED", "before"),
            ("DELETED", "between"),
        ]
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(versions) and versions[0] > int(list_rv)
    finally:
        stream.close()
    kube.wait_for(
        lambda: not kube.active_watches().get(watch_key), message="the watch to be closed"
    )

    # Without a resourceVersion: the current objects as ADDED, then the changes; selectors apply.
    stream = WatchStream(kube, "/api/v1/configmaps", labelSelector="app=x")
    try:
        kube.create(
            "v1/configmaps",
            {"metadata": {"name": "labelled", "namespace": "default", "labels": {"app": "x"}}},
        )
        event = stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "labelled")
        kube.patch("configmaps", "labelled", {"metadata": {"labels": {"app": "y"}}}, "default")
        assert stream.next()["type"] == "DELETED"  # it has left the selector
    finally:
        stream.close()


def test_discovery_namespaces_and_crds(kube: KubeHarness) -> None:
    core = {r["name"]: r for r in kube.request("GET", "/api/v1")["resources"]}
    for name in ("pods", "secrets", "configmaps", "events", "namespaces", "services"):
        assert name in core
    assert core["namespaces"]["namespaced"] is False
    groups = {g["name"] for g in kube.request("GET", "/apis")["groups"]}
    assert {"apps", "admissionregistration.k8s.io", "apiextensions.k8s.io", GROUP} <= groups
    admission = kube.request("GET", "/apis/admissionregistration.k8s.io/v1")["resources"]
    assert {r["name"] for r in admission} == {
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    }
    custom = {r["name"]: r for r in kube.request("GET", f"/apis/{GROUP}/{VERSION}")["resources"]}
    assert set(custom) == {"runlogstores", "runlogstores/status"}
    assert custom["runlogstores"]["kind"] == "RunLogStore"
    assert custom["runlogstores"]["shortNames"] == ["rls"] and custom["runlogstores"]["namespaced"]

    # Namespaces are cluster-scoped objects at /api/v1/namespaces (kmock alone fails on this path).
    kube.ensure_namespace("team-a")
    assert {"default", "kube-system", "team-a"} <= {
        ns["metadata"]["name"] for ns in kube.list("namespaces")
    }
    assert kube.get("namespaces", "team-a")["status"]["phase"] == "Active"

    # A CRD registers its resource, as in a real cluster; tests can also add resources directly.
    kube.create(
        "customresourcedefinitions",
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}
                ],
            },
        },
    )
    assert kube.create("example.com/v1/widgets", {"metadata": {"name": "w", "namespace": "team-a"}})
    kube.add_resource(ResourceSpec("example.com", "v2", "gadgets", "Gadget", namespaced=False))
    assert kube.create("gadgets", {"metadata": {"name": "g"}})["metadata"].get("namespace") is None
    assert {r["name"] for r in kube.request("GET", "/apis/example.com/v1")["resources"]} == {
        "widgets",
        "widgets/status",
    }

    # Deleting a namespace deletes its content.
    kube.delete("namespaces", "team-a")
    assert kube.find("widgets", "w", "team-a") is None


def test_wait_for_reports_clearly(kube: KubeHarness) -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as err:
        kube.wait_for(
            lambda: kube.get("configmaps", "never", "default"),
            timeout=0.2,
            message='the configmap "never"',
        )
    assert time.monotonic() - started < 2
    text = str(err.value)
    assert "Timed out after 0.2s" in text and 'the configmap "never"' in text
    assert "HTTP 404" in text and "Last API requests:" in text
    assert wait_for(lambda: 42, timeout=1) == 42


# -----------------------------------------------------------------------------------------------
# A throwaway kopf operator (test code, not the product) against the emulator.
# -----------------------------------------------------------------------------------------------


class Recorder:
    """What the operator's handlers saw (handlers run in the operator's threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deleted: list[str] = []
        self.secrets: list[tuple[str | None, str | None, str]] = []

    def add(self, items: list[Any], item: Any) -> None:
        with self.lock:
            items.append(item)


def ready_condition(generation: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "observedGeneration": generation,
    }


def make_operator(kube_url: str, recorder: Recorder) -> Callable[[kopf.OperatorRegistry], None]:
    """A tiny operator: a ConfigMap per store, status conditions, a finalizer, a Secrets watcher."""

    async def api(method: str, path: str, body: Any, content_type: str = "application/json") -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"{kube_url}{path}", json=body, headers={"Content-Type": content_type}
            ) as rsp,
        ):
            rsp.raise_for_status()
            return await rsp.json()

    def register(registry: kopf.OperatorRegistry) -> None:

        @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
        async def store_created(
            body: kopf.Body,
            spec: kopf.Spec,
            name: str,
            namespace: str | None,
            meta: kopf.Meta,
            patch: kopf.Patch,
            logger: kopf.Logger,
            **_: Any,
        ) -> None:
            configmap = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{name}-settings"},
                "data": {"bucket": spec["bucket"]},
            }
            kopf.adopt(configmap, owner=body)
            await api("POST", f"/api/v1/namespaces/{namespace}/configmaps", configmap)
            patch.status["conditions"] = [
                ready_condition(meta["generation"], "Created", "configured")
            ]
            patch.status["observedGeneration"] = meta["generation"]
            logger.info(f"ConfigMap {name}-settings created")  # an Event if posting.loggers=True
            kopf.info(body, reason="Configured", message="explicitly posted")  # always an Event

        @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
        async def store_updated(
            new: Any, name: str, namespace: str | None, meta: kopf.Meta, patch: kopf.Patch, **_: Any
        ) -> None:
            await api(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/configmaps/{name}-settings",
                {"data": {"bucket": new["bucket"]}},
                "application/merge-patch+json",
            )
            patch.status["conditions"] = [
                ready_condition(meta["generation"], "Updated", "reconfigured")
            ]
            patch.status["observedGeneration"] = meta["generation"]

        @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
        def store_deleted(name: str, **_: Any) -> None:
            recorder.add(recorder.deleted, name)

        @kopf.on.event("v1", "secrets", registry=registry)
        def secret_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
            recorder.add(recorder.secrets, (type, namespace, name))

    return register


def test_operator_lifecycle(kube: KubeHarness, kopf_runner: KopfRunner) -> None:
    recorder = Recorder()

    def configure(settings: kopf.OperatorSettings) -> None:
        settings.posting.loggers = True  # kopf>=1.44: handlers' log lines are Events only if asked

    operator = kopf_runner.start(
        make_operator(kube.url, recorder), clusterwide=True, settings=configure
    )
    assert (("", "v1", "secrets"), None) in kube.active_watches()

    store = kube.create(RLS, store_body("store-1"))
    uid = store["metadata"]["uid"]

    # Creation: an owned ConfigMap, the status via the status subresource, kopf's finalizer.
    configmap = kopf_runner.wait_for(
        lambda: kube.get("configmaps", "store-1-settings", "default"),
        message="the ConfigMap of store-1",
    )
    assert configmap["data"] == {"bucket": "logs"}
    assert [(r["kind"], r["name"], r["uid"]) for r in configmap["metadata"]["ownerReferences"]] == [
        ("RunLogStore", "store-1", uid)
    ]
    status = kopf_runner.wait_for(
        lambda: kube.get(RLS, "store-1", "default")["status"]["conditions"][0],
        message="the Ready condition of store-1",
    )
    assert (status["type"], status["status"], status["observedGeneration"]) == ("Ready", "True", 1)
    current = kube.get(RLS, "store-1", "default")
    assert KOPF_FINALIZER in current["metadata"]["finalizers"]
    assert current["status"]["observedGeneration"] == 1
    assert any(
        r.method == "PATCH" and r.path.endswith("/runlogstores/store-1/status") and r.status == 200
        for r in kube.access_log()
    )

    # The handler's logger.info() and kopf.info() land as core v1 Events about the store.
    def store_events() -> dict[str, dict[str, Any]]:
        events = {e["message"]: e for e in kube.events("default", involved_name="store-1")}
        assert {"ConfigMap store-1-settings created", "explicitly posted"} <= set(events)
        return events

    events = kopf_runner.wait_for(store_events, message="the Events posted by the create handler")
    logged, posted = events["ConfigMap store-1-settings created"], events["explicitly posted"]
    assert (logged["type"], logged["reason"], posted["reason"]) == (
        "Normal",
        "Logging",
        "Configured",
    )
    assert (
        logged["involvedObject"]["uid"] == uid and logged["involvedObject"]["kind"] == "RunLogStore"
    )
    assert logged["metadata"]["name"].startswith("kopf-event-")  # generateName honoured

    # Update: a spec change bumps the generation; the operator reports it as observed.
    updated = kube.patch(RLS, "store-1", {"spec": {"bucket": "logs-2"}}, "default")
    assert updated["metadata"]["generation"] == 2
    kopf_runner.wait_for(
        lambda: kube.get(RLS, "store-1", "default")["status"]["observedGeneration"] == 2,
        message="observedGeneration 2",
    )
    kopf_runner.wait_for(
        lambda: (
            kube.get("configmaps", "store-1-settings", "default")["data"] == {"bucket": "logs-2"}
        ),
        message="the ConfigMap to follow the spec",
    )
    assert kube.get(RLS, "store-1", "default")["status"]["conditions"][0]["reason"] == "Updated"

    # Secrets are watched too: the creation of one is seen as an ADDED event.
    kube.create(
        "v1/secrets",
        {
            "metadata": {"name": "creds", "namespace": "default"},
            "stringData": {"accessKey": "a", "secretKey": "b"},
        },
    )
    kopf_runner.wait_for(
        lambda: ("ADDED", "default", "creds") in recorder.secrets,
        message="the Secret event handler to see the new Secret",
    )

    # Deletion: held by kopf's finalizer until the delete handler runs; then the store and its
    # ConfigMap (by the owner reference) are gone.
    marked = kube.delete(RLS, "store-1", "default")
    assert marked is not None and marked["metadata"]["deletionTimestamp"]
    kopf_runner.wait_for(lambda: recorder.deleted == ["store-1"], message="the delete handler")
    kopf_runner.wait_for(
        lambda: kube.find(RLS, "store-1", "default") is None, message="store-1 to be gone"
    )
    kopf_runner.wait_for(
        lambda: kube.find("configmaps", "store-1-settings", "default") is None,
        message="the owned ConfigMap to be garbage-collected",
    )
    *_, released, deleted = kube.history(RLS, "store-1", "default")
    assert deleted is None and released is not None
    assert KOPF_FINALIZER not in released["metadata"].get("finalizers", [])

    assert operator.errors == []
    assert kube.internal_errors() == []


def test_namespaced_operator_serves_only_its_namespace(
    kube: KubeHarness, kopf_runner: KopfRunner
) -> None:
    recorder = Recorder()
    kopf_runner.start(make_operator(kube.url, recorder), namespaces=["team-a"])
    # kopf lists & watches /api/v1/namespaces to find its namespaces; the runner made 'team-a'.
    assert kube.find("namespaces", "team-a") is not None

    kube.create(RLS, store_body("outside", namespace="default"))
    kube.create(RLS, store_body("inside", namespace="team-a"))
    kopf_runner.wait_for(
        lambda: kube.get("configmaps", "inside-settings", "team-a"),
        message="the ConfigMap in the served namespace",
    )
    kube.create("v1/secrets", {"metadata": {"name": "marker", "namespace": "team-a"}})
    kopf_runner.wait_for(
        lambda: ("ADDED", "team-a", "marker") in recorder.secrets,
        message="the Secret in the served namespace",
    )
    # Events are ordered within a watch-stream: the earlier store would have been seen by now.
    assert kube.find("configmaps", "outside-settings", "default") is None
    assert "finalizers" not in kube.get(RLS, "outside", "default")["metadata"]


OPERATOR_MODULE = """
import kopf

@kopf.on.login()
def login_to_a_real_cluster(**_):
    raise RuntimeError("the runner must replace this login handler")

@kopf.on.create("runlog-relay.dev", "v1alpha1", "runlogstores")
def mark(patch, **_):
    patch.status["seenBy"] = "module"
"""


def test_operator_from_a_module_path(
    kube: KubeHarness,
    kopf_runner: KopfRunner,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module_name = f"throwaway_operator_{uuid.uuid4().hex}"
    (tmp_path / f"{module_name}.py").write_text(OPERATOR_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    default_handlers = len(kopf.get_default_registry()._changing.get_all_handlers())

    kopf_runner.start(module_name, clusterwide=True)
    kube.create(RLS, store_body("store-1"))
    kopf_runner.wait_for(
        lambda: kube.get(RLS, "store-1", "default")["status"]["seenBy"] == "module",
        message="the module's handler to mark the store",
    )
    # The module's handlers went to their own registry, not to kopf's global default one.
    assert len(kopf.get_default_registry()._changing.get_all_handlers()) == default_handlers


def test_operator_for_an_unserved_resource_fails_clearly(
    kube: KubeHarness, kopf_runner: KopfRunner
) -> None:
    def unserved(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.create("example.com", "v1", "widgets", registry=registry)
        def create_fn(**_: Any) -> None:
            pass

    with pytest.raises(AssertionError, match=r"widgets.*does not serve.*kube_resources"):
        kopf_runner.start(unserved)
    assert not kopf_runner.operators[0].alive  # it has not even been started


def test_operator_crash_is_reported_with_its_logs(
    kube: KubeHarness, kopf_runner: KopfRunner
) -> None:
    def broken(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.startup(registry=registry)
        def refuse_to_start(**_: Any) -> None:
            raise kopf.PermanentError("cannot start in this test")

    started = time.monotonic()
    with pytest.raises(OperatorCrashed) as err:
        kopf_runner.start(broken, ready_timeout=60)
    # Reported when the thread exits (kopf gives its leftover tasks 5s), not at the ready timeout.
    assert time.monotonic() - started < 15
    assert "failed permanently: cannot start in this test" in str(err.value)


# --------------------------------------------------------------------------- RBAC


def _review(kube: KubeHarness, user: str, groups: list[str], **attributes: str) -> bool:
    answer = kube.create(
        "authorization.k8s.io/v1/subjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": attributes},
        },
    )
    return bool(answer["status"]["allowed"])


def test_subject_access_reviews_follow_the_stored_rbac(kube: KubeHarness) -> None:
    rbac = "rbac.authorization.k8s.io/v1"
    kube.ensure_namespace("a")
    kube.create(
        f"{rbac}/roles",
        {
            "metadata": {"name": "read-creds", "namespace": "a"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "verbs": ["get"],
                    "resourceNames": ["creds"],
                }
            ],
        },
        "a",
    )
    kube.create(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "alice-creds", "namespace": "a"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-creds",
            },
            "subjects": [
                {"kind": "User", "name": "alice"},
                {"kind": "ServiceAccount", "name": "ci", "namespace": "a"},
            ],
        },
        "a",
    )
    kube.create(
        f"{rbac}/clusterroles",
        {
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}],
        },
    )
    kube.create(
        f"{rbac}/clusterrolebindings",
        {
            "metadata": {"name": "auditors"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "reader",
            },
            "subjects": [{"kind": "Group", "name": "auditors"}],
        },
    )
    secret = {"verb": "get", "group": "", "resource": "secrets", "namespace": "a"}
    assert _review(kube, "alice", [], name="creds", **secret)
    assert not _review(kube, "alice", [], name="other", **secret)  # resourceNames
    assert not _review(kube, "alice", [], name="creds", **{**secret, "namespace": "b"})
    assert not _review(kube, "alice", [], name="creds", **{**secret, "verb": "list"})
    assert _review(
        kube, "system:serviceaccount:a:ci", ["system:serviceaccounts"], name="creds", **secret
    )
    assert not _review(kube, "system:serviceaccount:b:ci", [], name="creds", **secret)
    assert _review(kube, "bob", ["auditors"], name="anything", **{**secret, "namespace": "z"})
    assert not _review(kube, "bob", [], name="creds", **secret)
    assert _review(kube, "root", ["system:masters"], name="creds", **{**secret, "verb": "delete"})
    # Answered, never stored (as on a real API server).
    assert kube.call(lambda: kube.emulator.live_objects(SUBJECT_ACCESS_REVIEWS)) == []
