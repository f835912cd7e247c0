"""Webhook TLS: the self-signed certificate, the caBundle patch, the keeper loop, and the
operator's webhook command-line options."""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import datetime
import json
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
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
    CaBundleKeeper,
    RelayWebhookServer,
    build_webhook_server,
    ca_bundle_ops,
    configuration_path,
    self_signed_certificate,
    service_names,
)

# --------------------------------------------------------------------------- certificate


def test_self_signed_certificate_names_the_service_and_loads(tmp_path: Path) -> None:
    names = [*service_names("runlog-relay", "ops"), "127.0.0.1", "0.0.0.0"]
    cert_pem, key_pem = self_signed_certificate(names)
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "runlog-relay.ops.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.subject.rfc4514_string() == "CN=runlog-relay"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=3000)
    # A server context loads it, and a client trusting only it verifies it.
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        tmp_path / "tls.crt", tmp_path / "tls.key"
    )
    ssl.create_default_context(cadata=cert_pem.decode())
    with pytest.raises(ValueError, match="at least one"):
        self_signed_certificate(["0.0.0.0"])


def test_server_modes() -> None:
    signed = build_webhook_server(WebhookSettings(service_namespace="ops"), on_ca=lambda _: None)
    assert isinstance(signed, RelayWebhookServer) and signed.certfile is None
    assert "runlog-relay.ops.svc" in list(signed.extra_sans)
    assert signed.port == 9443 and signed.addr == "0.0.0.0"
    mounted = build_webhook_server(WebhookSettings(cert_dir=Path("/certs"), port=8443))
    assert (mounted.certfile, mounted.pkeyfile) == (Path("/certs/tls.crt"), Path("/certs/tls.key"))
    assert mounted.port == 8443
    with pytest.raises(ValueError, match="never encrypted"):
        RelayWebhookServer.build_certificate(["x"], "password")


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
