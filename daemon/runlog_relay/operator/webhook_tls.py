"""HTTPS for the admission webhooks: the certificate, its rotation, and the caBundle.

The operator serves the webhooks itself, on kopf's request routing (the URL path of a
webhook is ``/<handler id>``: ``/mutate-pods``, ``/validate-runlogstores``), with a TLS
certificate from one of two sources:

- **Shared self-signed** (the default), modelled on Vault's agent injector: one CA and
  one serving certificate for the webhook Service, kept in a Secret in the operator's
  namespace (``--webhook-cert-secret``) and shared by every replica, so the caBundle of
  the webhook configurations verifies whichever replica the API server reaches. The
  active replica (:mod:`.leadership`) creates them, renews the certificate before it
  expires (``cert_renew_before_hours``) and the CA likewise, and writes the CA bundle
  into ``webhooks[*].clientConfig.caBundle`` of the Mutating- and
  ValidatingWebhookConfiguration named ``--webhook-config-name`` (:class:`CaBundleKeeper`;
  nothing else of those objects is written: the chart owns them). Every replica re-reads
  the Secret and serves what it holds (:class:`SharedCertificate`). A new CA joins the
  bundle next to the old one, and certificates are issued from it only after
  ``ca_propagation_seconds`` (one that falls due meanwhile waits, unless it would expire
  first), so no client ever sees a certificate its bundle does not trust. Writes are
  compare-and-swap (``resourceVersion``): two replicas that both think they lead for a
  moment cannot overwrite each other's CA.
- **Certificate directory** (``--webhook-cert-dir DIR``): ``DIR/tls.crt`` and
  ``DIR/tls.key``, e.g. a cert-manager Certificate's Secret mounted there, re-read when
  they change (:class:`CertificateFiles`); cert-manager's CA injector keeps the caBundle.

Either way a renewed certificate is loaded into the live SSL context
(:class:`RelayWebhookServer`): connections are never refused during a rotation (kopf's
own server restarts its listener). Certificates are made with ``cryptography`` (kopf's
generator needs ``certbuilder``/``oscrypto``, unmaintained for OpenSSL 3); this is the
only module that imports it. Private keys live in the Secret and in memory; for the SSL
context they touch a private temporary directory only for the instant of loading.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp.web
import kopf
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runlog_relay.errors import NotFoundError, PermanentError, RelayError
from runlog_relay.operator.kubeapi import KubeApi, secret_path
from runlog_relay.operator.settings import WebhookSettings

__all__ = [
    "CA_SINCE_ANNOTATION",
    "CONFIGURATION_KINDS",
    "CaBundleKeeper",
    "CertPolicy",
    "CertificateFiles",
    "RelayWebhookServer",
    "SharedCertificate",
    "TlsMaterial",
    "build_webhook_server",
    "ca_bundle_ops",
    "configuration_path",
    "issue_certificate",
    "make_ca",
    "plan_certificates",
    "service_names",
    "signed_by",
]

log = logging.getLogger(__name__)

#: The two configuration kinds whose caBundle is kept, as their REST plurals.
CONFIGURATION_KINDS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
_ADMISSION_API = "/apis/admissionregistration.k8s.io/v1"
#: When the current CA joined the bundle (ISO 8601), on the certificate Secret.
CA_SINCE_ANNOTATION = "runlog-relay.dev/ca-since"
TLS_CRT, TLS_KEY, CA_CRT, CA_KEY = "tls.crt", "tls.key", "ca.crt", "ca.key"
#: Polling while no certificate exists yet (first start): the webhook is not served.
_WAITING_INTERVAL = 1.0


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Service answers to; the API server uses ``<svc>.<ns>.svc``."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


# --------------------------------------------------------------------------- certificates


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    common_name: str, *, now: datetime.datetime, validity: datetime.timedelta
) -> tuple[bytes, bytes]:
    """A self-signed CA certificate and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = now - datetime.timedelta(minutes=5)  # clocks of API servers differ a little
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(certificate), _key_pem(key)


def issue_certificate(
    ca_pem: bytes,
    ca_key_pem: bytes,
    hostnames: Collection[str],
    *,
    now: datetime.datetime,
    validity: datetime.timedelta,
) -> tuple[bytes, bytes]:
    """A serving certificate for ``hostnames`` (DNS names and IP addresses) signed by the
    CA, and its key, PEM. It never outlives its CA."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
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
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + validity, ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(certificate), _key_pem(key)


def _load_certificates(pem: bytes | None) -> list[x509.Certificate]:
    if not pem:
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def _key_matches(certificate: x509.Certificate, key_pem: bytes | None) -> bool:
    if not key_pem:
        return False
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(
        key.public_key().public_bytes(der, public)
        == certificate.public_key().public_bytes(der, public)
    )


def _covers(certificate: x509.Certificate, hostnames: Collection[str]) -> bool:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    wanted = {h for h in hostnames if h and h not in ("0.0.0.0", "::")}  # noqa: S104
    return wanted <= names


def signed_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca``'s key signed ``certificate`` (by key, not name: every CA this module
    makes has the same name)."""
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class CertPolicy:
    """Lifetimes of the shared certificate and its CA (from :class:`WebhookSettings`)."""

    hostnames: tuple[str, ...]
    validity: datetime.timedelta
    renew_before: datetime.timedelta
    ca_validity: datetime.timedelta
    ca_renew_before: datetime.timedelta
    propagation: datetime.timedelta
    ca_name: str = "runlog-relay webhook CA"

    @classmethod
    def from_settings(cls, settings: WebhookSettings, hostnames: Sequence[str]) -> CertPolicy:
        hours = datetime.timedelta(hours=1)
        return cls(
            hostnames=tuple(hostnames),
            validity=settings.cert_validity_hours * hours,
            renew_before=settings.cert_renew_before_hours * hours,
            ca_validity=settings.ca_validity_hours * hours,
            ca_renew_before=settings.ca_renew_before_hours * hours,
            propagation=datetime.timedelta(seconds=settings.ca_propagation_seconds),
        )


@dataclass(frozen=True)
class Rotation:
    """What the certificate Secret must hold now, and why it changed."""

    data: dict[str, bytes]
    ca_since: datetime.datetime
    reasons: list[str]


def plan_certificates(
    data: Mapping[str, bytes] | None,
    ca_since: datetime.datetime | None,
    policy: CertPolicy,
    now: datetime.datetime,
) -> Rotation | None:
    """The next content of the certificate Secret, or None when it is fine as it is.

    ``ca.crt`` is the bundle clients trust, the current CA first; ``ca.key`` the current
    CA's key; ``tls.crt``/``tls.key`` the serving certificate. Pure: the unit tests walk
    every rotation with a fake clock.
    """
    data = dict(data or {})
    bundle = _load_certificates(data.get(CA_CRT))
    ca = bundle[0] if bundle else None
    reasons: list[str] = []
    if ca is None or not _key_matches(ca, data.get(CA_KEY)):
        reasons.append("no usable CA")
    elif ca.not_valid_after_utc - policy.ca_renew_before <= now:
        reasons.append(f"the CA expires {ca.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    if ca is None or reasons:
        ca_pem, ca_key = make_ca(policy.ca_name, now=now, validity=policy.ca_validity)
        ca = x509.load_pem_x509_certificate(ca_pem)
        data[CA_KEY] = ca_key
        ca_since = now
        bundle = [ca, *bundle]
    elif ca_since is None:
        ca_since = ca.not_valid_before_utc
    # The bundle: the current CA, and older ones while unexpired (certificates they
    # signed may still be served by a replica that has not re-read the Secret yet).
    kept = [c for i, c in enumerate(bundle) if i == 0 or c.not_valid_after_utc > now]
    if len(kept) != len(bundle):
        reasons.append("an expired CA left the bundle")
    bundle = kept

    leaves = _load_certificates(data.get(TLS_CRT))
    leaf = leaves[0] if leaves else None
    # A new certificate can only be signed by the current CA (the old CA's key is gone),
    # which clients may not trust until the bundle has carried it for the propagation
    # time. Until then a certificate of the old CA that is due for renewal is kept, unless
    # it would expire first: renew_before is weeks, the propagation minutes.
    propagated = ca_since + policy.propagation
    renew = ""
    if leaf is None or not _key_matches(leaf, data.get(TLS_KEY)):
        renew = "no usable certificate"
    elif not any(signed_by(leaf, c) for c in bundle):
        renew = "the certificate is not signed by a CA of the bundle"
    elif not _covers(leaf, policy.hostnames):
        renew = "the certificate does not name the webhook Service"
    elif leaf.not_valid_after_utc - policy.renew_before <= now and (
        signed_by(leaf, bundle[0]) or propagated <= now or leaf.not_valid_after_utc <= propagated
    ):
        renew = f"the certificate expires {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
    elif not signed_by(leaf, bundle[0]) and propagated <= now:
        renew = "the bundle has carried the new CA long enough"
    if renew:
        reasons.append(renew)
        data[TLS_CRT], data[TLS_KEY] = issue_certificate(
            _pem(bundle[0]), data[CA_KEY], policy.hostnames, now=now, validity=policy.validity
        )
    if not reasons:
        return None
    data[CA_CRT] = b"".join(_pem(c) for c in bundle)
    return Rotation(data=data, ca_since=ca_since, reasons=reasons)


@dataclass(frozen=True)
class TlsMaterial:
    """What the server presents and what clients should trust."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_bundle: bytes
    """PEM certificates for the caBundle (the serving certificate itself, when no CA is
    known: a self-signed one, or a directory without ca.crt)."""

    @property
    def not_after(self) -> datetime.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert_pem).hexdigest()[:16]


def _material(data: Mapping[str, bytes]) -> TlsMaterial | None:
    leaves = _load_certificates(data.get(TLS_CRT))
    if not leaves or not _key_matches(leaves[0], data.get(TLS_KEY)):
        return None
    bundle = data.get(CA_CRT) or _pem(leaves[0])
    return TlsMaterial(cert_pem=data[TLS_CRT], key_pem=data[TLS_KEY], ca_bundle=bundle)


class TlsSource(Protocol):
    """Where the server gets its certificate: :class:`SharedCertificate` or
    :class:`CertificateFiles`."""

    @property
    def material(self) -> TlsMaterial | None: ...

    async def changed(self, current: TlsMaterial | None) -> TlsMaterial: ...


class _Published:
    """The latest material and a way to wait for a new one."""

    def __init__(self) -> None:
        self._material: TlsMaterial | None = None
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[TlsMaterial], None]] = []

    @property
    def material(self) -> TlsMaterial | None:
        return self._material

    def subscribe(self, listener: Callable[[TlsMaterial], None]) -> None:
        self._listeners.append(listener)

    def _publish(self, material: TlsMaterial) -> None:
        if self._material is not None and material == self._material:
            return
        self._material = material
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self._listeners:
            listener(material)

    async def changed(self, current: TlsMaterial | None) -> TlsMaterial:
        """The material, once it differs from ``current``."""
        while self._material is None or self._material == current:
            await self._changed.wait()
        return self._material


def _decode(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    decoded: dict[str, bytes] = {}
    for key, value in ((secret or {}).get("data") or {}).items():
        with contextlib.suppress(binascii.Error, ValueError):
            decoded[key] = base64.b64decode(str(value), validate=True)
    return decoded


def _ca_since(secret: Mapping[str, Any] | None) -> datetime.datetime | None:
    text = (((secret or {}).get("metadata") or {}).get("annotations") or {}).get(
        CA_SINCE_ANNOTATION
    )
    try:
        since = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return since if since.tzinfo else since.replace(tzinfo=datetime.UTC)


class _Leading(Protocol):
    leading: bool


class SharedCertificate(_Published):
    """The certificate Secret: renewed by the active replica, served by all."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str,
        policy: CertPolicy,
        leadership: _Leading,
        interval: float = 60.0,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        super().__init__()
        self._api = api
        self._namespace = namespace
        self._name = name
        self._policy = policy
        self._leadership = leadership
        self._interval = interval
        self._clock = clock

    @property
    def path(self) -> str:
        return secret_path(self._namespace, self._name)

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except RelayError as exc:
                log.warning(
                    "webhook certificate Secret %s/%s: %s", self._namespace, self._name, exc
                )
            except Exception:  # the loop must outlive any one bad round
                log.exception("could not check the webhook certificate")
            await asyncio.sleep(self._interval if self.material else _WAITING_INTERVAL)

    async def sync(self) -> TlsMaterial | None:
        """Read the Secret; as the active replica, renew what needs it (one attempt:
        a concurrent write wins and is read next round); publish what it holds."""
        secret = await self._api.get(self.path)
        if self._leadership.leading:
            rotation = plan_certificates(
                _decode(secret), _ca_since(secret), self._policy, self._clock()
            )
            if rotation is not None:
                written = await self._write(secret, rotation)
                if written is not None:
                    secret = written
        material = _material(_decode(secret))
        if material is not None:
            self._publish(material)
        elif not self._leadership.leading:
            log.debug("no webhook certificate yet; the active replica creates it")
        return material

    async def _write(
        self, secret: dict[str, Any] | None, rotation: Rotation
    ) -> dict[str, Any] | None:
        data = {k: base64.b64encode(v).decode("ascii") for k, v in rotation.data.items()}
        since = rotation.ca_since.strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any]
        try:
            if secret is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {
                        "name": self._name,
                        "namespace": self._namespace,
                        "labels": {"app.kubernetes.io/name": "runlog-relay"},
                        "annotations": {CA_SINCE_ANNOTATION: since},
                    },
                    "data": data,
                }
                written = await self._api.create(secret_path(self._namespace), body)
            else:
                body = dict(secret)
                metadata: dict[str, Any] = dict(body.get("metadata") or {})
                metadata["annotations"] = {
                    **(metadata.get("annotations") or {}),
                    CA_SINCE_ANNOTATION: since,
                }
                body["metadata"] = metadata  # with its resourceVersion: compare-and-swap
                body["data"] = data
                written = await self._api.replace(self.path, body)
        except PermanentError as exc:
            if exc.code in ("Conflict", "AlreadyExists"):
                log.info("webhook certificate Secret changed meanwhile; reading it again")
                return None
            raise
        log.info(
            "webhook certificate Secret %s/%s renewed: %s",
            self._namespace,
            self._name,
            "; ".join(rotation.reasons),
        )
        return written


class CertificateFiles(_Published):
    """``tls.crt``/``tls.key`` (and ``ca.crt`` when there) of a directory, re-read every
    ``interval`` seconds (a mounted Secret changes by an atomic symlink swap)."""

    def __init__(self, directory: Path, *, interval: float = 10.0) -> None:
        super().__init__()
        self._directory = directory
        self._interval = interval

    def read(self) -> TlsMaterial | None:
        data: dict[str, bytes] = {}
        for key in (TLS_CRT, TLS_KEY, CA_CRT):
            with contextlib.suppress(FileNotFoundError):
                data[key] = (self._directory / key).read_bytes()
        material = _material(data)
        if material is not None:
            self._publish(material)
        return material

    async def run(self) -> None:
        reported = False
        while True:
            try:
                if self.read() is None and not reported:
                    log.warning(
                        "no valid tls.crt/tls.key pair in %s yet; the webhook waits for it",
                        self._directory,
                    )
                    reported = True
            except OSError as exc:
                log.warning("cannot read the webhook certificate in %s: %s", self._directory, exc)
            await asyncio.sleep(self._interval if self.material else _WAITING_INTERVAL)


# --------------------------------------------------------------------------- server


def _load_into(context: ssl.SSLContext, material: TlsMaterial) -> None:
    """Put the certificate into the live context: connections made from now on get it."""
    with tempfile.TemporaryDirectory(prefix="runlog-relay-tls-") as folder:
        cert, key = Path(folder, "tls.crt"), Path(folder, "tls.key")
        cert.write_bytes(material.cert_pem)
        descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(material.key_pem)
        context.load_cert_chain(cert, key)


class RelayWebhookServer(kopf.WebhookServer):
    """kopf's request routing over HTTPS with a certificate from a :class:`TlsSource`,
    renewed in place. Listens only once a certificate exists (the chart's readiness probe
    is the webhook port: a replica without one gets no admission traffic)."""

    def __init__(
        self,
        source: TlsSource,
        *,
        addr: str,
        port: int,
        host: str,
        on_material: Callable[[TlsMaterial], None] | None = None,
        ready: Sequence[asyncio.Event] = (),
    ) -> None:
        """``ready``: what must have happened before the first request is answered
        (the first look at the cluster's versions)."""
        super().__init__(addr=addr, port=port, host=host)
        self._source = source
        self._on_material = on_material
        self._ready = tuple(ready)
        self.url: str | None = None
        """The URL the server listens on, once it does (tests read the port here)."""
        self.serving: TlsMaterial | None = None

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        material = self._source.material or await self._source.changed(None)
        for event in self._ready:
            await event.wait()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._use(context, material)
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            port = self.port or self._allocate_free_port()
            site = aiohttp.web.TCPSite(runner, self.addr or None, port, ssl_context=context)
            await site.start()
            self.url = f"https://{self.addr or '0.0.0.0'}:{port}"  # noqa: S104
            log.info("admission webhooks listening on %s", self.url)
            yield kopf.WebhookClientConfig(
                url=f"https://{self.host}:{port}",
                caBundle=base64.b64encode(material.ca_bundle).decode("ascii"),
            )
            while True:
                material = await self._source.changed(material)
                self._use(context, material)
                log.info(
                    "webhook certificate renewed in place (%s, valid until %s)",
                    material.fingerprint,
                    f"{material.not_after:%Y-%m-%d %H:%M}Z",
                )
        finally:
            await runner.cleanup()

    def _use(self, context: ssl.SSLContext, material: TlsMaterial) -> None:
        _load_into(context, material)
        self.serving = material
        if self._on_material is not None:
            self._on_material(material)


def build_webhook_server(
    options: WebhookSettings,
    source: TlsSource,
    *,
    on_material: Callable[[TlsMaterial], None] | None = None,
    ready: Sequence[asyncio.Event] = (),
) -> RelayWebhookServer:
    namespace = options.service_namespace or "runlog-relay"
    return RelayWebhookServer(
        source,
        addr=options.host,
        port=options.port,
        host=f"{options.service_name}.{namespace}.svc",
        on_material=on_material,
        ready=ready,
    )


# --------------------------------------------------------------------------- caBundle


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
    """Keeps the CA bundle in the webhook configurations' ``caBundle`` (the active
    replica only).

    :meth:`offer` takes the bundle the certificate Secret holds; :meth:`run` (a task for
    the operator's lifetime) writes it as soon as it is known and re-checks every
    ``interval`` seconds (a ``helm upgrade`` may reset it), retrying failures then. A
    missing configuration (the chart not installed yet, or webhooks disabled in it) is
    logged once, not treated as an error.
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        name: str,
        interval: float = 60.0,
        leadership: _Leading | None = None,
    ) -> None:
        self._api = api
        self._name = name
        self._interval = interval
        self._leadership = leadership
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

    def wake(self) -> None:
        """Check now (this replica has just become the active one)."""
        self._changed.set()

    async def run(self) -> None:
        while True:
            self._changed.clear()  # before the round: an offer during it wakes the next
            leading = self._leadership is None or self._leadership.leading
            if self._bundle is not None and leading:
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
