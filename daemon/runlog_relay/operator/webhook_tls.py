"""HTTPS for the admission webhooks: kopf's webhook server, its certificate, and the
``caBundle`` of the webhook configurations.

The operator serves the webhooks itself, with kopf's :class:`kopf.WebhookServer` (the
URL path of a webhook is ``/<handler id>``: ``/mutate-pods``, ``/validate-runlogstores``).
Two TLS modes:

- **Certificate directory** (``--webhook-cert-dir DIR``): ``DIR/tls.crt`` and
  ``DIR/tls.key``, for instance a cert-manager Certificate's Secret mounted there. kopf
  re-reads them when they change (cert-manager renews them); cert-manager's CA injector
  keeps the configurations' ``caBundle`` right, so this module does not touch them.
- **Self-signed** (the default): a key and certificate made at start-up in memory by
  :func:`self_signed_certificate` (names: the webhook Service's DNS names, and the
  listening address), and :class:`CaBundleKeeper` writing that certificate into
  ``webhooks[*].clientConfig.caBundle`` of the MutatingWebhookConfiguration and the
  ValidatingWebhookConfiguration named ``--webhook-config-name``, then re-checking it
  periodically (a ``helm upgrade`` may reset it). Nothing else of those objects is
  written: the chart owns them (kopf's own ``settings.admission.managed`` would replace
  their webhooks, so it stays off).

The certificate is made with ``cryptography`` -- kopf's own generator needs
``certbuilder``/``oscrypto``, which are not maintained for OpenSSL 3 -- through kopf's
``build_certificate`` hook, so kopf's server still does the rest (SSL context, restart on
renewed files). Each replica makes its own certificate, so self-signed mode is for one
replica; several replicas should use a certificate directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any
from urllib.parse import quote

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runlog_relay.errors import NotFoundError, RelayError
from runlog_relay.operator.kubeapi import KubeApi
from runlog_relay.operator.settings import WebhookSettings

__all__ = [
    "CONFIGURATION_KINDS",
    "CaBundleKeeper",
    "RelayWebhookServer",
    "build_webhook_server",
    "ca_bundle_ops",
    "configuration_path",
    "self_signed_certificate",
    "service_names",
]

log = logging.getLogger(__name__)

#: The two configuration kinds whose caBundle is kept, as their REST plurals.
CONFIGURATION_KINDS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
_ADMISSION_API = "/apis/admissionregistration.k8s.io/v1"
#: A self-signed certificate lives as long as the process that made it; this only has to
#: outlast any realistic uptime.
CERTIFICATE_DAYS = 3650


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Service answers to, the API server uses ``<svc>.<ns>.svc``."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def self_signed_certificate(
    hostnames: Collection[str],
    *,
    days: int = CERTIFICATE_DAYS,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed CA certificate for ``hostnames`` (DNS names and IP addresses) and its
    private key, PEM-encoded. The first DNS name is the common name. It is its own CA, so
    it is also the caBundle clients trust."""
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for name in hostnames:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            if name and name not in dns:
                dns.append(name)
        else:
            if not address.is_unspecified and address not in ips:
                ips.append(address)
    if not dns and not ips:
        raise ValueError("a certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else str(ips[0]))])
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class RelayWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server, with a ``cryptography`` certificate generator and a
    callback that learns each CA bundle the server hands out (to keep the caBundle)."""

    def __init__(self, *, on_ca: Callable[[bytes], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_ca = on_ca
        self.url: str | None = None
        """The URL the server listens on, once it does (tests read the port here)."""

    @staticmethod
    def build_certificate(
        hostnames: Collection[str], password: str | None = None
    ) -> tuple[bytes, bytes]:
        if password:
            raise ValueError("the self-signed webhook key is never encrypted")
        return self_signed_certificate(hostnames)

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for config in super().__call__(fn):
            self.url = config.get("url")
            bundle = config.get("caBundle")
            if bundle and self._on_ca is not None:
                self._on_ca(base64.b64decode(bundle))
            yield config


def build_webhook_server(
    options: WebhookSettings, on_ca: Callable[[bytes], None] | None = None
) -> RelayWebhookServer:
    """kopf's server for ``options``: a certificate directory, or self-signed."""
    namespace = options.service_namespace or "runlog-relay"
    if options.cert_dir is not None:
        return RelayWebhookServer(
            addr=options.host,
            port=options.port,
            certfile=options.cert_dir / "tls.crt",
            pkeyfile=options.cert_dir / "tls.key",
        )
    return RelayWebhookServer(
        addr=options.host,
        port=options.port,
        host=f"{options.service_name}.{namespace}.svc",
        extra_sans=service_names(options.service_name, namespace),
        on_ca=on_ca,
    )


def configuration_path(kind: str, name: str) -> str:
    return f"{_ADMISSION_API}/{kind}/{quote(name, safe='')}"


def ca_bundle_ops(configuration: Mapping[str, Any], ca_bundle: str) -> list[dict[str, Any]]:
    """JSON-patch operations setting ``caBundle`` on every webhook of ``configuration``
    that lacks it; each guarded by a ``test`` of the webhook's name, so a concurrent
    change of the list fails the patch instead of writing into the wrong entry."""
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        if not isinstance(webhook, Mapping):
            continue
        client = webhook.get("clientConfig")
        if isinstance(client, Mapping) and client.get("caBundle") == ca_bundle:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        if isinstance(client, Mapping):
            ops.append(
                {
                    "op": "add",
                    "path": f"/webhooks/{index}/clientConfig/caBundle",
                    "value": ca_bundle,
                }
            )
        else:
            ops.append(
                {
                    "op": "add",
                    "path": f"/webhooks/{index}/clientConfig",
                    "value": {"caBundle": ca_bundle},
                }
            )
    return ops


class CaBundleKeeper:
    """Keeps the self-signed CA in the webhook configurations' ``caBundle``.

    :meth:`offer` is called by the server with the CA it serves with; :meth:`run` (a task
    for the operator's lifetime) writes it as soon as it is known and re-checks every
    ``interval`` seconds, retrying failures then. A missing configuration (the chart not
    installed yet, or webhooks disabled in it) is logged once, not treated as an error.
    """

    def __init__(self, api: KubeApi, *, name: str, interval: float = 60.0) -> None:
        self._api = api
        self._name = name
        self._interval = interval
        self._bundle: str | None = None
        self._changed = asyncio.Event()
        self._missing: set[str] = set()
        self.synced = asyncio.Event()
        """Set once every existing configuration carries the current bundle."""

    @property
    def bundle(self) -> str | None:
        return self._bundle

    def offer(self, ca_pem: bytes) -> None:
        bundle = base64.b64encode(ca_pem).decode("ascii")
        if bundle != self._bundle:
            self._bundle = bundle
            self.synced.clear()
            self._changed.set()

    async def run(self) -> None:
        while True:
            self._changed.clear()  # before the round: an offer during it wakes the next
            if self._bundle is not None:
                try:
                    await self.ensure()
                except Exception:  # the loop must outlive any one bad round
                    log.exception("could not check the webhook configurations' caBundle")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self._interval)

    async def ensure(self) -> bool:
        """Write the bundle where it is missing; True when all configurations have it."""
        bundle = self._bundle
        if bundle is None:
            return False
        complete = True
        for kind in CONFIGURATION_KINDS:
            path = configuration_path(kind, self._name)
            try:
                complete &= await self._ensure_one(kind, path, bundle)
            except RelayError as exc:
                complete = False
                log.warning("could not set the caBundle of %s %s: %s", kind, self._name, exc)
        if complete and bundle == self._bundle:
            self.synced.set()
        return complete

    async def _ensure_one(self, kind: str, path: str, bundle: str) -> bool:
        for _attempt in range(3):
            configuration = await self._api.get(path)
            if configuration is None:
                if kind not in self._missing:
                    log.warning(
                        "%s %r does not exist; its caBundle is set once it does",
                        kind,
                        self._name,
                    )
                    self._missing.add(kind)
                return True
            self._missing.discard(kind)
            ops = ca_bundle_ops(configuration, bundle)
            if not ops:
                return True
            try:
                await self._api.json_patch(path, ops)
            except NotFoundError:
                continue
            except RelayError as exc:
                if getattr(exc, "code", "") in ("Invalid", "Conflict", "HTTP422", "HTTP409"):
                    continue  # the list changed under us: read it again
                raise
            log.info("set the caBundle of %s %r (%d webhooks)", kind, self._name, len(ops) // 2)
            return True
        return False
