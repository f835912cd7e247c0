"""Webhook TLS: the self-signed certificate, the caBundle patch, the keeper loop, and the
operator's webhook command-line options."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import datetime
import json
import socket
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from runlog_relay import cli
from runlog_relay.errors import PermanentError
from runlog_relay.operator.command import settings_from_args
from runlog_relay.operator.handlers import MUTATE_PODS, VALIDATE_STORES
from runlog_relay.operator.runner import build_operator
from runlog_relay.operator.settings import (
    DEFAULT_IMAGE,
    DEFAULT_RESOURCES,
    OperatorSettings,
    WebhookSettings,
)
from runlog_relay.operator.webhook_tls import (
    CA_SINCE_ANNOTATION,
    CaBundleKeeper,
    CertificateFiles,
    CertPolicy,
    RelayWebhookServer,
    SharedCertificate,
    TlsMaterial,
    build_webhook_server,
    ca_bundle_ops,
    configuration_path,
    issue_certificate,
    plan_certificates,
    service_names,
    signed_by,
)

# --------------------------------------------------------------------------- certificate

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
HOURS = datetime.timedelta(hours=1)
NAMES = tuple(service_names("runlog-relay", "ops"))
POLICY = CertPolicy(
    hostnames=NAMES,
    validity=90 * 24 * HOURS,
    renew_before=30 * 24 * HOURS,
    ca_validity=3650 * 24 * HOURS,
    ca_renew_before=365 * 24 * HOURS,
    propagation=datetime.timedelta(minutes=10),
)


def leaf_of(data: Mapping[str, bytes]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data["tls.crt"])


def bundle_of(data: Mapping[str, bytes]) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data["ca.crt"])


def verifies(data: Mapping[str, bytes], ca_pem: bytes) -> bool:
    """Whether a client trusting ``ca_pem`` accepts the serving certificate."""
    try:
        x509.load_pem_x509_certificate(data["tls.crt"]).verify_directly_issued_by(
            x509.load_pem_x509_certificates(ca_pem)[0]
        )
    except Exception:
        return any(_issued(data["tls.crt"], c) for c in x509.load_pem_x509_certificates(ca_pem)[1:])
    return True


def _issued(leaf_pem: bytes, ca: x509.Certificate) -> bool:
    return signed_by(x509.load_pem_x509_certificate(leaf_pem), ca)


def test_a_first_plan_makes_a_ca_and_a_certificate_for_the_service(tmp_path: Path) -> None:
    rotation = plan_certificates(None, None, POLICY, NOW)
    assert rotation is not None and rotation.ca_since == NOW
    leaf, (ca,) = leaf_of(rotation.data), bundle_of(rotation.data)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "runlog-relay.ops.svc" in sans.get_values_for_type(x509.DNSName)
    leaf.verify_directly_issued_by(ca)
    assert leaf.not_valid_after_utc == NOW + POLICY.validity
    # What clients do: trust the bundle, verify the server's name.
    (tmp_path / "tls.crt").write_bytes(rotation.data["tls.crt"])
    (tmp_path / "tls.key").write_bytes(rotation.data["tls.key"])
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        tmp_path / "tls.crt", tmp_path / "tls.key"
    )
    # A fine Secret needs nothing.
    assert plan_certificates(rotation.data, rotation.ca_since, POLICY, NOW + 24 * HOURS) is None


def test_the_certificate_is_renewed_before_it_expires_under_the_same_ca() -> None:
    first = plan_certificates(None, None, POLICY, NOW)
    assert first is not None
    almost = NOW + POLICY.validity - POLICY.renew_before
    assert plan_certificates(first.data, first.ca_since, POLICY, almost - HOURS) is None
    renewed = plan_certificates(first.data, first.ca_since, POLICY, almost)
    assert renewed is not None and "expires" in renewed.reasons[0]
    assert renewed.data["ca.crt"] == first.data["ca.crt"]  # the caBundle does not change
    assert renewed.data["tls.crt"] != first.data["tls.crt"]
    assert verifies(renewed.data, first.data["ca.crt"])


def test_a_new_ca_joins_the_bundle_before_it_signs_anything() -> None:
    first = plan_certificates(None, None, POLICY, NOW)
    assert first is not None
    ca_due = NOW + POLICY.ca_validity - POLICY.ca_renew_before
    # Keep the certificate fresh up to then, as the loop would.
    data, since = first.data, first.ca_since
    data = {**data, **issue_pair(data, ca_due - HOURS)}

    rotated = plan_certificates(data, since, POLICY, ca_due)
    assert rotated is not None and "the CA expires" in rotated.reasons[0]
    new_ca, old_ca = bundle_of(rotated.data)
    assert old_ca == bundle_of(first.data)[0] and new_ca != old_ca
    # The serving certificate stays (clients may not trust the new CA yet) ...
    assert rotated.data["tls.crt"] == data["tls.crt"]
    assert plan_certificates(rotated.data, rotated.ca_since, POLICY, ca_due + HOURS / 60) is None
    # ... until the bundle has carried the new CA long enough.
    moved = plan_certificates(rotated.data, rotated.ca_since, POLICY, ca_due + POLICY.propagation)
    assert moved is not None
    leaf_of(moved.data).verify_directly_issued_by(new_ca)
    # The old CA stays in the bundle until it expires, then leaves it.
    assert len(bundle_of(moved.data)) == 2
    later = old_ca.not_valid_after_utc + HOURS
    refreshed = {**moved.data, **issue_pair(moved.data, later - HOURS)}
    dropped = plan_certificates(refreshed, rotated.ca_since, POLICY, later)
    assert dropped is not None and bundle_of(dropped.data) == [new_ca]


def test_a_certificate_due_while_a_new_ca_propagates_waits_for_it_unless_it_would_expire() -> None:
    """Only the new CA can sign (the old one's key is gone), and clients may not trust it
    yet: a certificate of the old CA that falls due in that window is kept until the
    propagation time is over, then signed by the new CA; one that would expire first is
    renewed at once all the same."""
    first = plan_certificates(None, None, POLICY, NOW)
    assert first is not None
    ca_due = NOW + POLICY.ca_validity - POLICY.ca_renew_before
    # The certificate falls due for renewal 5 minutes after the CA is renewed.
    leaf_due = ca_due + datetime.timedelta(minutes=5)
    data = {
        **first.data,
        **issue_pair(first.data, leaf_due - POLICY.validity + POLICY.renew_before),
    }
    rotated = plan_certificates(data, first.ca_since, POLICY, ca_due)
    assert rotated is not None and rotated.data["tls.crt"] == data["tls.crt"]
    new_ca, old_ca = bundle_of(rotated.data)

    assert plan_certificates(rotated.data, rotated.ca_since, POLICY, leaf_due) is None
    moved = plan_certificates(rotated.data, rotated.ca_since, POLICY, ca_due + POLICY.propagation)
    assert moved is not None
    leaf_of(moved.data).verify_directly_issued_by(new_ca)

    # A certificate of the old CA that expires within the propagation time cannot wait.
    ending = {**first.data, **issue_pair(first.data, ca_due - POLICY.validity + HOURS / 60)}
    rotated = plan_certificates(ending, first.ca_since, POLICY, ca_due)
    assert rotated is not None and rotated.data["tls.crt"] != ending["tls.crt"]
    assert "expires" in rotated.reasons[-1]
    leaf_of(rotated.data).verify_directly_issued_by(bundle_of(rotated.data)[0])
    assert old_ca == bundle_of(rotated.data)[1]


def issue_pair(data: Mapping[str, bytes], now: datetime.datetime) -> dict[str, bytes]:
    cert, key = issue_certificate(
        bundle_of(data)[0].public_bytes(serialization.Encoding.PEM),
        data["ca.key"],
        NAMES,
        now=now,
        validity=POLICY.validity,
    )
    return {"tls.crt": cert, "tls.key": key}


@pytest.mark.parametrize(
    "damage",
    [
        {"tls.key": b"not a key"},
        {"tls.crt": b"garbage"},
        {"ca.key": b""},
    ],
)
def test_a_damaged_secret_is_repaired(damage: dict[str, bytes]) -> None:
    first = plan_certificates(None, None, POLICY, NOW)
    assert first is not None
    repaired = plan_certificates({**first.data, **damage}, first.ca_since, POLICY, NOW)
    assert repaired is not None
    # Served by a CA of the bundle (an old one while a new one propagates).
    assert verifies(repaired.data, repaired.data["ca.crt"])
    assert plan_certificates(repaired.data, repaired.ca_since, POLICY, NOW) is None


def test_a_renamed_service_gets_a_certificate_for_its_names() -> None:
    first = plan_certificates(None, None, POLICY, NOW)
    assert first is not None
    moved = CertPolicy(**{**POLICY.__dict__, "hostnames": tuple(service_names("relay", "x"))})
    renamed = plan_certificates(first.data, first.ca_since, moved, NOW)
    assert renamed is not None and "name the webhook Service" in renamed.reasons[0]
    assert renamed.data["ca.crt"] == first.data["ca.crt"]


class SecretApi:
    """Just enough of the API for the certificate Secret: GET, POST, PUT with
    compare-and-swap on resourceVersion."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.version = 0

    async def get(self, path: str) -> dict[str, Any] | None:
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise PermanentError("exists", code="AlreadyExists")
        return self._store("POST", full, body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        current = self.objects[path]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise PermanentError("modified", code="Conflict")
        return self._store("PUT", path, body)

    def _store(self, verb: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(dict(body))
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[path] = obj
        self.writes.append(verb)
        return copy.deepcopy(obj)


class Standing:
    def __init__(self, leading: bool) -> None:
        self.leading = leading


SECRET = "/api/v1/namespaces/ops/secrets/runlog-relay-webhook-cert"


def shared(api: SecretApi, leading: bool, clock: Any = lambda: NOW) -> SharedCertificate:
    return SharedCertificate(
        api,  # type: ignore[arg-type]
        namespace="ops",
        name="runlog-relay-webhook-cert",
        policy=POLICY,
        leadership=Standing(leading),
        clock=clock,
    )


def test_the_active_replica_fills_the_secret_and_every_replica_serves_it() -> None:
    api = SecretApi()
    standby, active = shared(api, False), shared(api, True)

    assert asyncio.run(standby.sync()) is None  # nothing yet, and a standby never writes
    assert api.writes == []
    served = asyncio.run(active.sync())
    assert served is not None and api.writes == ["POST"]
    assert asyncio.run(standby.sync()) == served  # the same certificate on both
    secret = api.objects[SECRET]
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    assert secret["metadata"]["annotations"][CA_SINCE_ANNOTATION] == "2026-01-01T00:00:00Z"
    asyncio.run(active.sync())
    assert api.writes == ["POST"]  # fine as it is: not written again


def test_a_write_racing_another_replica_loses_and_reads_the_winner() -> None:
    api = SecretApi()
    asyncio.run(shared(api, True).sync())
    due = NOW + POLICY.validity - POLICY.renew_before
    racer = shared(api, True, clock=lambda: due)
    stale = asyncio.run(api.get(SECRET))

    async def race() -> None:
        # The other replica renews between our read and our write.
        original_get = api.get

        async def get_then_change(path: str) -> dict[str, Any] | None:
            answer = await original_get(path)
            api.version += 1
            api.objects[SECRET]["metadata"]["resourceVersion"] = str(api.version)
            return answer

        api.get = get_then_change  # type: ignore[method-assign]
        assert await racer.sync() is not None
        api.get = original_get  # type: ignore[method-assign]

    asyncio.run(race())
    assert api.writes == ["POST"]  # our PUT was refused: the winner's content stands
    assert stale is not None and api.objects[SECRET]["data"] == stale["data"]


def test_a_directory_is_read_and_reread_when_it_changes(tmp_path: Path) -> None:
    first = plan_certificates(None, None, POLICY, NOW)
    second = plan_certificates(None, None, POLICY, NOW)
    assert first is not None and second is not None
    files = CertificateFiles(tmp_path)
    assert files.read() is None  # nothing there yet
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(first.data[key])
    one = files.read()
    assert one is not None and one.ca_bundle == first.data["ca.crt"]
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(second.data[key])
    two = files.read()
    assert two is not None and two.cert_pem == second.data["tls.crt"]


class Source:
    def __init__(self, material: TlsMaterial) -> None:
        self.material: TlsMaterial | None = material
        self.next: asyncio.Queue[TlsMaterial] = asyncio.Queue()

    async def changed(self, current: TlsMaterial | None) -> TlsMaterial:
        material = await self.next.get()
        self.material = material
        return material


def material(rotation: Any) -> TlsMaterial:
    data = rotation.data
    return TlsMaterial(cert_pem=data["tls.crt"], key_pem=data["tls.key"], ca_bundle=data["ca.crt"])


def test_the_server_renews_its_certificate_without_refusing_a_connection() -> None:
    now = datetime.datetime.now(datetime.UTC)
    first = plan_certificates(None, None, POLICY, now)
    assert first is not None
    # A renewal under the same CA (the caBundle stays; the certificate changes).
    second = plan_certificates({**first.data, "tls.key": b""}, first.ca_since, POLICY, now)
    assert second is not None and second.data["ca.crt"] == first.data["ca.crt"]
    source = Source(material(first))
    server = RelayWebhookServer(source, addr="127.0.0.1", port=0, host="runlog-relay.ops.svc")
    client = ssl.create_default_context(cadata=first.data["ca.crt"].decode())

    def presented(port: int) -> bytes:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname="runlog-relay.ops.svc") as tls,
        ):
            return tls.getpeercert(binary_form=True) or b""

    async def scenario() -> None:
        async def fn(*args: Any, **kwargs: Any) -> Any:
            return {}

        configs = server(fn)
        config = await configs.__anext__()
        assert config["caBundle"] == base64.b64encode(first.data["ca.crt"]).decode()
        assert server.url is not None
        port = int(server.url.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        before = await loop.run_in_executor(None, presented, port)
        pending = asyncio.create_task(configs.__anext__())
        await source.next.put(material(second))
        while server.serving != source.material:
            await asyncio.sleep(0.01)
        after = await loop.run_in_executor(None, presented, port)
        assert before != after  # the renewed certificate, on the same listening socket
        assert after == x509.load_pem_x509_certificate(second.data["tls.crt"]).public_bytes(
            serialization.Encoding.DER
        )
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending
        await configs.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_server_modes() -> None:
    source = CertificateFiles(Path("/certs"))
    server = build_webhook_server(WebhookSettings(service_namespace="ops"), source)
    assert isinstance(server, RelayWebhookServer)
    assert (
        server.port == 9443 and server.addr == "0.0.0.0" and server.host == "runlog-relay.ops.svc"
    )


# --------------------------------------------------------------------------- caBundle


def configuration(*bundles: str | None) -> dict[str, Any]:
    webhooks = []
    for index, bundle in enumerate(bundles):
        client: dict[str, Any] = {"service": {"name": "runlog-relay", "namespace": "ops"}}
        if bundle is not None:
            client["caBundle"] = bundle
        webhooks.append({"name": f"hook-{index}.runlog-relay.dev", "clientConfig": client})
    return {"metadata": {"name": "runlog-relay"}, "webhooks": webhooks}


def test_ca_bundle_ops_touch_only_the_bundles_that_differ() -> None:
    config = configuration(None, "CA", "OLD")
    ops = ca_bundle_ops(config, "CA")
    patched = jsonpatch.apply_patch(config, ops)
    assert [w["clientConfig"]["caBundle"] for w in patched["webhooks"]] == ["CA", "CA", "CA"]
    assert [w["clientConfig"]["service"] for w in patched["webhooks"]] == [
        w["clientConfig"]["service"] for w in config["webhooks"]
    ]
    assert [op["op"] for op in ops] == ["test", "add", "test", "add"]
    assert ca_bundle_ops(patched, "CA") == []
    # A concurrent reorder fails the guard instead of writing into the wrong webhook.
    reordered = copy.deepcopy(config)
    reordered["webhooks"].reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(reordered, ops)


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.conflicts = 0

    async def get(self, path: str) -> dict[str, Any] | None:
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    async def json_patch(self, path: str, ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if self.conflicts:
            self.conflicts -= 1
            raise PermanentError("test failed", code="Invalid")
        self.patches.append((path, [dict(op) for op in ops]))
        self.objects[path] = jsonpatch.apply_patch(self.objects[path], list(ops))
        return self.objects[path]


MUTATING = configuration_path("mutatingwebhookconfigurations", "runlog-relay")
VALIDATING = configuration_path("validatingwebhookconfigurations", "runlog-relay")


def test_keeper_writes_the_bundle_into_both_configurations_and_retries_conflicts() -> None:
    api = FakeApi()
    api.objects[MUTATING] = configuration(None)
    api.objects[VALIDATING] = configuration("stale", None)
    api.conflicts = 1
    keeper = CaBundleKeeper(api, name="runlog-relay")  # type: ignore[arg-type]
    keeper.offer(b"-----BEGIN CERTIFICATE-----\n")
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()

    assert asyncio.run(keeper.ensure()) is True
    for path in (MUTATING, VALIDATING):
        assert {w["clientConfig"]["caBundle"] for w in api.objects[path]["webhooks"]} == {bundle}
    writes = len(api.patches)
    assert asyncio.run(keeper.ensure()) is True
    assert len(api.patches) == writes  # nothing to do: nothing written
    assert MUTATING.startswith("/apis/admissionregistration.k8s.io/v1/")


def test_keeper_tolerates_missing_configurations_and_wakes_on_a_new_ca() -> None:
    api = FakeApi()
    keeper = CaBundleKeeper(api, name="runlog-relay", interval=30.0)  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.create_task(keeper.run())
        keeper.offer(b"one")
        await asyncio.wait_for(keeper.synced.wait(), 2)  # nothing exists: nothing to do
        api.objects[MUTATING] = configuration(None)
        keeper.offer(b"two")  # wakes the loop at once, not after 30 s
        await asyncio.wait_for(keeper.synced.wait(), 2)
        task.cancel()

    asyncio.run(scenario())
    assert (
        api.objects[MUTATING]["webhooks"][0]["clientConfig"]["caBundle"]
        == base64.b64encode(b"two").decode()
    )


def test_only_the_active_replica_writes_the_bundle() -> None:
    api = FakeApi()
    api.objects[MUTATING] = configuration(None)
    standing = Standing(False)
    keeper = CaBundleKeeper(api, name="runlog-relay", interval=30.0, leadership=standing)  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.create_task(keeper.run())
        keeper.offer(b"ca")
        await asyncio.sleep(0.05)
        assert api.patches == []  # a standby never writes
        standing.leading = True
        keeper.wake()  # what the leadership change does
        await asyncio.wait_for(keeper.synced.wait(), 2)
        task.cancel()

    asyncio.run(scenario())
    assert len(api.patches) == 1


# --------------------------------------------------------------------------- command line


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser(only="operator").parse_args(["operator", *argv])


def test_webhook_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "relay-system")
    options = settings_from_args(parse())
    webhook = options.webhook
    assert webhook == WebhookSettings(
        host="0.0.0.0",
        port=9443,
        cert_dir=None,
        service_name="runlog-relay",
        service_namespace="relay-system",
        config_name="runlog-relay",
    )
    injection = options.injection
    assert injection.image == DEFAULT_IMAGE and injection.image.endswith(":0.1.0")
    assert injection.resources == dict(DEFAULT_RESOURCES)
    assert injection.inject_when_not_ready and not injection.scrape_annotations


def test_webhook_options() -> None:
    resources = {"requests": {"cpu": "5m"}, "limits": {"memory": "96Mi"}}
    options = settings_from_args(
        parse(
            "--webhook-port",
            "8443",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-cert-dir",
            "/certs",
            "--webhook-service-name",
            "relay-webhook",
            "--webhook-service-namespace",
            "ops",
            "--webhook-config-name",
            "relay",
            "--sidecar-image",
            "registry.local/relay:1",
            "--sidecar-resources",
            json.dumps(resources),
            "--no-inject-when-not-ready",
            "--scrape-annotations",
        )
    )
    assert options.webhook == WebhookSettings(
        host="127.0.0.1",
        port=8443,
        cert_dir=Path("/certs"),
        service_name="relay-webhook",
        service_namespace="ops",
        config_name="relay",
    )
    assert options.injection.image == "registry.local/relay:1"
    assert options.injection.resources == resources
    assert not options.injection.inject_when_not_ready and options.injection.scrape_annotations
    assert settings_from_args(parse("--webhook-port", "0")).webhook.port == 0


@pytest.mark.parametrize(
    "value", ["not json", "[]", '{"limits": {"memory": "lots"}}', '{"request": {}}']
)
def test_bad_sidecar_resources_are_rejected(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--sidecar-resources", value)
    assert "ResourceRequirements" in capsys.readouterr().err


def test_registry_serves_the_webhooks_at_the_contract_ids() -> None:
    operator = build_operator(
        OperatorSettings(webhook=WebhookSettings(port=9443)), prometheus=CollectorRegistry()
    )
    webhooks = {h.id: h for h in operator.registry._webhooks.get_all_handlers()}
    assert (
        set(webhooks) == {MUTATE_PODS, VALIDATE_STORES} == {"mutate-pods", "validate-runlogstores"}
    )
    assert webhooks["mutate-pods"].operations == ["CREATE"]
    assert (
        webhooks["mutate-pods"].ignore_failures
        and webhooks["validate-runlogstores"].ignore_failures
    )
    assert {h.id for h in operator.registry._indexing.get_all_handlers()} == {"stores_by_name"}
    assert operator.ca_keeper is not None and operator.admission is not None
    # Without webhooks: neither handlers nor index (kopf needs a server for the former).
    plain = build_operator(OperatorSettings(webhook={"port": 0}), prometheus=CollectorRegistry())
    assert not plain.registry._webhooks.get_all_handlers()
    assert plain.admission is None and plain.webhook_server is None
    mounted = build_operator(
        OperatorSettings(webhook=WebhookSettings(cert_dir=Path("/certs"))),
        prometheus=CollectorRegistry(),
    )
    assert mounted.ca_keeper is None  # cert-manager's CA injector owns the caBundle then
