"""Pure decisions of one RunLogStore reconcile: no I/O, no kopf, no clock of its own.

The controller (:mod:`.controller`) does the I/O in order and asks this module what each
result means: which conditions to write, whether to retry, which Event a transition
deserves, what the sidecar's ``config.yaml`` and ConfigMap look like. Keeping it pure is
what lets the unit tests cover every branch without a cluster or an S3 server.

Conditions (``status.conditions``), one per step, in order; a step that could not run
because an earlier one failed is ``Unknown``::

    SpecValid ─▶ ConfigRendered ─▶ SecretsAvailable ─▶ Connected ─▶ BucketReady
                                                      └──────── Ready = all True ───┘

``Ready`` carries the reason and message of the first failing step. Each condition has
``reason``, ``message``, ``observedGeneration`` and ``lastTransitionTime``, which changes
only when ``status`` changes (the Kubernetes convention).

Messages name fields, Secrets, keys, buckets and error codes, never a secret value;
:func:`redact` is a second line of defence for text that came from elsewhere (an S3
error message).
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError

from runlog_relay.backoff import backoff_delay as shared_backoff_delay
from runlog_relay.config.crd import API_VERSION, KIND
from runlog_relay.config.credentials import CredentialPlan, CredentialSource, StaticKeys
from runlog_relay.config.models import (
    MAX_STORE_NAME,
    SIDECAR_CONFIG_DIR,
    SIDECAR_SECRETS_DIR,
    StoreSpec,
)
from runlog_relay.config.settings import DEFAULT_MINIO_CREDENTIAL
from runlog_relay.errors import PermanentError, RelayError, RetryableError

__all__ = [
    "ACCESS_KEY_ID_FILE",
    "BUCKET_READY",
    "CA_FILE",
    "CHECKED_BY_SIDECARS",
    "CONDITION_TYPES",
    "CONFIG_FILE",
    "CONFIG_KEY",
    "CONFIG_RENDERED",
    "CONNECTED",
    "MANAGED_BY",
    "READY",
    "SECRETS_AVAILABLE",
    "SECRET_ACCESS_KEY_FILE",
    "SESSION_TOKEN_FILE",
    "SPEC_VALID",
    "SSE_C_KEY_FILE",
    "ConditionStatus",
    "Event",
    "ResolvedSecrets",
    "SecretKeyUse",
    "SpecError",
    "Step",
    "backoff_delay",
    "bucket_steps",
    "checked_by_sidecars_steps",
    "configmap_manifest",
    "configmap_name",
    "configmap_needs_update",
    "decode_secret",
    "event_manifest",
    "merge_conditions",
    "owned_by",
    "parse_spec",
    "pod_volumes",
    "ready_step",
    "redact",
    "referenced_secret_names",
    "render_sidecar_config",
    "resolve_secrets",
    "secret_key_uses",
    "too_long",
    "transition_event",
    "unknown_after",
]

READY = "Ready"
SPEC_VALID = "SpecValid"
CONFIG_RENDERED = "ConfigRendered"
SECRETS_AVAILABLE = "SecretsAvailable"
CONNECTED = "Connected"
BUCKET_READY = "BucketReady"
#: The step conditions, in the order the steps run.
CONDITION_TYPES = (SPEC_VALID, CONFIG_RENDERED, SECRETS_AVAILABLE, CONNECTED, BUCKET_READY)

#: Where the injected sidecar finds its files. The webhook mounts the ConfigMap and the
#: Secrets at these paths (see :func:`pod_volumes`); the ConfigMap names them.
CONFIG_DIR = SIDECAR_CONFIG_DIR
CONFIG_KEY = "config.yaml"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
CREDENTIALS_DIR = f"{SIDECAR_SECRETS_DIR}/credentials"
ACCESS_KEY_ID_FILE = f"{CREDENTIALS_DIR}/access-key-id"
SECRET_ACCESS_KEY_FILE = f"{CREDENTIALS_DIR}/secret-access-key"
SESSION_TOKEN_FILE = f"{CREDENTIALS_DIR}/session-token"
CA_DIR = f"{SIDECAR_SECRETS_DIR}/ca"
CA_FILE = f"{CA_DIR}/ca.crt"
SSE_C_DIR = f"{SIDECAR_SECRETS_DIR}/sse-c"
SSE_C_KEY_FILE = f"{SSE_C_DIR}/key"

MANAGED_BY = "runlog-relay-operator"
STORE_LABEL = "runlog-relay.dev/store"
_CONFIGMAP_PREFIX = "runlog-relay-"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one step: a condition without its timestamps."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    #: The failure is transient (unreachable, 5xx): retry with backoff.
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.status is ConditionStatus.TRUE


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the store."""

    type: str  # Normal | Warning
    reason: str
    message: str


class SpecError(ValueError):
    """The spec does not validate; the message names each bad field (camelCase path)."""


# --------------------------------------------------------------------------- spec


def parse_spec(raw: Mapping[str, Any] | None) -> StoreSpec:
    """Validate a RunLogStore ``spec``; SpecError names every bad field, no input values."""
    try:
        return StoreSpec.model_validate(dict(raw or {}))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False, include_context=False):
            path = ".".join(["spec", *(str(part) for part in error["loc"])])
            problems.append(f"{path}: {error['msg']}")
        raise SpecError("invalid spec: " + "; ".join(problems)) from None


def referenced_secret_names(raw_spec: Mapping[str, Any] | None) -> set[str]:
    """Secrets a spec names, read leniently (also from an invalid spec), so a Secret
    event can find the stores waiting for it."""
    names: set[str] = set()
    spec = raw_spec if isinstance(raw_spec, Mapping) else {}
    credentials = spec.get("credentials")
    for creds in (
        spec.get("credentialsSecretRef"),
        credentials.get("secretRef") if isinstance(credentials, Mapping) else None,
    ):
        if isinstance(creds, Mapping) and isinstance(creds.get("name"), str):
            names.add(creds["name"])
    tls, sse = spec.get("tls"), spec.get("sse")
    for ref in (
        tls.get("caSecretRef") if isinstance(tls, Mapping) else None,
        sse.get("customerKeySecretRef") if isinstance(sse, Mapping) else None,
    ):
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            names.add(ref["name"])
    return names


# --------------------------------------------------------------------------- sidecar config


def configmap_name(store: str) -> str:
    return f"{_CONFIGMAP_PREFIX}{store}"


def too_long(store: str) -> bool:
    """A store name is a label value (the pods' opt-in, the ConfigMap's store label)."""
    return len(store) > MAX_STORE_NAME


def sidecar_config(spec: StoreSpec) -> dict[str, Any]:
    """The sidecar's settings for ``spec``, camelCase as in the config file. File paths
    for credentials and the CA; never their values."""
    config: dict[str, Any] = {
        "source": spec.log_folder,
        "endpoint": spec.endpoint,
        "bucket": spec.bucket,
    }
    if spec.region:
        config["region"] = spec.region
    config["layout"] = spec.layout.value
    config["createBucket"] = spec.create_bucket
    tls: dict[str, Any] = {"insecureSkipVerify": spec.tls.insecure_skip_verify}
    if spec.tls.ca_secret_ref is not None:
        tls["caFile"] = CA_FILE
    config["tls"] = tls
    config["sync"] = spec.sync.wire()
    config["tagSealedRuns"] = spec.tag_sealed_runs
    if spec.local_retention.delete_after is not None:
        config["localRetention"] = spec.local_retention.wire()
    if spec.sse is not None:
        sse: dict[str, Any] = {"mode": spec.sse.mode.value}
        if spec.sse.kms_key_id:
            sse["kmsKeyId"] = spec.sse.kms_key_id
        if spec.sse.kms_context:
            sse["kmsContext"] = dict(spec.sse.kms_context)
        if spec.sse.customer_key_secret_ref is not None:
            sse["cKeyFile"] = SSE_C_KEY_FILE
        config["sse"] = sse
    if spec.storage_class:
        config["storageClass"] = spec.storage_class
    creds = spec.secret_ref
    if creds is not None:
        config["credentials"] = CredentialSource.STATIC.value
        config["accessKeyIdFile"] = ACCESS_KEY_ID_FILE
        config["secretAccessKeyFile"] = SECRET_ACCESS_KEY_FILE
        if creds.session_token_key:
            config["sessionTokenFile"] = SESSION_TOKEN_FILE
    elif spec.uses_service_account:
        # The pod's IRSA or Pod Identity variables; an error naming both if it has neither.
        config["credentials"] = CredentialSource.SERVICE_ACCOUNT.value
    return config


def render_sidecar_config(spec: StoreSpec, *, namespace: str, store: str) -> str:
    """The ``config.yaml`` text: loads with ``load_sidecar_settings({}, path)``."""
    header = (
        f"# runlog-relay sidecar config, rendered by the operator from RunLogStore"
        f" {namespace}/{store}.\n# Edits are overwritten: change the RunLogStore instead.\n"
    )
    return header + yaml.safe_dump(sidecar_config(spec), sort_keys=False)


def _owner_reference(store: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": store,
        "uid": uid,
        "controller": True,
    }


def configmap_manifest(
    spec: StoreSpec, *, namespace: str, store: str, uid: str | None
) -> dict[str, Any]:
    """The ConfigMap holding ``config.yaml``, owned by the store (garbage-collected with
    it). Without a uid (never on a real API server) there is no owner reference."""
    metadata: dict[str, Any] = {
        "name": configmap_name(store),
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/name": "runlog-relay",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            STORE_LABEL: store,
        },
    }
    if uid:
        metadata["ownerReferences"] = [_owner_reference(store, uid)]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {CONFIG_KEY: render_sidecar_config(spec, namespace=namespace, store=store)},
    }


def owned_by(obj: Mapping[str, Any], store: str, uid: str | None = None) -> bool:
    """Whether ``obj`` is controlled by the RunLogStore ``store`` (and ``uid``, if given)."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if (
            ref.get("kind") == KIND
            and str(ref.get("apiVersion", "")).split("/")[0] == API_VERSION.split("/")[0]
            and ref.get("name") == store
            and (uid is None or ref.get("uid") == uid)
        ):
            return True
    return False


def configmap_needs_update(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    meta, want = existing.get("metadata", {}), desired["metadata"]
    return (
        existing.get("data") != desired["data"]
        or any(meta.get("labels", {}).get(k) != v for k, v in want["labels"].items())
        or (meta.get("ownerReferences") or []) != want.get("ownerReferences", [])
    )


def configmap_step(
    *, name: str, error: RelayError | None, conflict: bool = False, name_too_long: bool = False
) -> Step:
    if conflict:
        return Step(
            CONFIG_RENDERED,
            ConditionStatus.FALSE,
            "ConfigMapConflict",
            f"ConfigMap {name!r} exists and is not owned by this RunLogStore; delete or rename"
            " it so the operator can manage it",
        )
    if name_too_long:
        return Step(
            CONFIG_RENDERED,
            ConditionStatus.FALSE,
            "NameTooLong",
            f"the store name is longer than {MAX_STORE_NAME} characters: pods name it in a"
            " label, and its ConfigMap carries it in one, which cannot hold more",
        )
    if error is not None:
        return Step(
            CONFIG_RENDERED,
            ConditionStatus.FALSE,
            "ConfigMapWriteFailed",
            f"could not write ConfigMap {name!r}: {error}",
            retryable=isinstance(error, RetryableError),
        )
    return Step(
        CONFIG_RENDERED,
        ConditionStatus.TRUE,
        "ConfigMapUpToDate",
        f"sidecar config is in ConfigMap {name!r}, key {CONFIG_KEY!r}",
    )


def pod_volumes(
    spec: StoreSpec, *, store: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and the sidecar's volumeMounts that put the files named in the rendered
    config where it says they are (for the injection webhook). Only the referenced Secret
    keys are projected, each under a fixed file name."""
    volumes: list[dict[str, Any]] = [
        {"name": "runlog-relay-config", "configMap": {"name": configmap_name(store)}}
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "runlog-relay-config", "mountPath": CONFIG_DIR, "readOnly": True}
    ]
    creds = spec.secret_ref
    if creds is not None:
        items = [
            {"key": creds.access_key_id_key, "path": "access-key-id"},
            {"key": creds.secret_access_key_key, "path": "secret-access-key"},
        ]
        if creds.session_token_key:
            items.append({"key": creds.session_token_key, "path": "session-token"})
        volumes.append(
            {
                "name": "runlog-relay-credentials",
                "secret": {"secretName": creds.name, "items": items},
            }
        )
        mounts.append(
            {"name": "runlog-relay-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True}
        )
    ca = spec.tls.ca_secret_ref
    if ca is not None:
        volumes.append(
            {
                "name": "runlog-relay-ca",
                "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]},
            }
        )
        mounts.append({"name": "runlog-relay-ca", "mountPath": CA_DIR, "readOnly": True})
    customer_key = spec.sse.customer_key_secret_ref if spec.sse is not None else None
    if customer_key is not None:
        volumes.append(
            {
                "name": "runlog-relay-sse-c",
                "secret": {
                    "secretName": customer_key.name,
                    "items": [{"key": customer_key.key, "path": "key"}],
                },
            }
        )
        mounts.append({"name": "runlog-relay-sse-c", "mountPath": SSE_C_DIR, "readOnly": True})
    return volumes, mounts


# --------------------------------------------------------------------------- secrets


def decode_secret(body: Mapping[str, Any] | None) -> dict[str, bytes] | None:
    """A Secret object's ``data`` decoded (None when the Secret does not exist). A value
    that is not base64 is left out, so it reads as a missing key."""
    if body is None:
        return None
    decoded: dict[str, bytes] = {}
    for key, value in (body.get("data") or {}).items():
        try:
            decoded[key] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            continue
    return decoded


@dataclass(frozen=True, slots=True)
class ResolvedSecrets:
    """What the bucket check needs from the Secrets (values: never log this object)."""

    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    ca_pem: bytes | None = None
    step: Step = field(
        default_factory=lambda: Step(
            SECRETS_AVAILABLE, ConditionStatus.TRUE, "SecretsFound", "referenced Secrets found"
        )
    )
    #: ``spec.credentials.serviceAccount``: the pods use their own identity.
    service_account: bool = False
    #: The operator's own identity, used to check a service-account store's bucket.
    identity: CredentialPlan | None = None

    def __repr__(self) -> str:
        return f"ResolvedSecrets(step={self.step!r})"

    def values(self) -> list[str]:
        """The secret strings, for :func:`redact`."""
        return [v for v in (self.access_key, self.secret_key, self.session_token) if v]

    def plan(self) -> CredentialPlan:
        """The credentials to check the bucket with: the operator's own identity for a
        service-account store, else the Secret's keys, else runnable's default."""
        if self.identity is not None:
            return self.identity
        if self.access_key and self.secret_key:
            return StaticKeys(self.access_key, self.secret_key, self.session_token, "Secret")
        return StaticKeys(DEFAULT_MINIO_CREDENTIAL, DEFAULT_MINIO_CREDENTIAL, origin="default")


@dataclass(frozen=True, slots=True)
class SecretKeyUse:
    """One key of one Secret that a spec needs, and where the spec says so."""

    secret: str
    key: str
    field: str  #: the reference, e.g. ``spec.credentials.secretRef``
    key_field: str  #: the field naming the key, e.g. ``accessKeyIdKey``


def secret_key_uses(spec: StoreSpec) -> list[SecretKeyUse]:
    """Every Secret key the sidecar will mount for ``spec``: the credentials (the key
    pair, and the session token when named) and the CA bundle. Always Secrets of the
    store's own namespace: a reference has a name, never a namespace."""
    uses = []
    creds = spec.secret_ref
    if creds is not None:
        ref = spec.secret_ref_field
        uses.append(SecretKeyUse(creds.name, creds.access_key_id_key, ref, "accessKeyIdKey"))
        uses.append(
            SecretKeyUse(creds.name, creds.secret_access_key_key, ref, "secretAccessKeyKey")
        )
        if creds.session_token_key:
            uses.append(SecretKeyUse(creds.name, creds.session_token_key, ref, "sessionTokenKey"))
    ca = spec.tls.ca_secret_ref
    if ca is not None:
        uses.append(SecretKeyUse(ca.name, ca.key, "spec.tls.caSecretRef", "key"))
    customer_key = spec.sse.customer_key_secret_ref if spec.sse is not None else None
    if customer_key is not None:
        uses.append(
            SecretKeyUse(
                customer_key.name, customer_key.key, "spec.sse.customerKeySecretRef", "key"
            )
        )
    return uses


def resolve_secrets(
    spec: StoreSpec, *, namespace: str, secrets: Mapping[str, Mapping[str, bytes] | None]
) -> ResolvedSecrets:
    """Pick the values out of the fetched Secrets (``secrets[name]`` is None when the
    Secret does not exist); a failing step names the Secret, the key and the field."""

    def missing(reason: str, message: str) -> ResolvedSecrets:
        return ResolvedSecrets(step=Step(SECRETS_AVAILABLE, ConditionStatus.FALSE, reason, message))

    def lookup(name: str, key: str, ref_field: str, key_field: str) -> bytes | ResolvedSecrets:
        data = secrets.get(name)
        if data is None:
            return missing(
                "SecretNotFound",
                f"Secret {name!r} not found in namespace {namespace!r} ({ref_field}.name)",
            )
        value = data.get(key)
        if value is None:
            return missing(
                "SecretKeyNotFound",
                f"Secret {name!r} has no key {key!r} ({ref_field}.{key_field})",
            )
        if not value.strip():
            return missing("SecretKeyEmpty", f"key {key!r} of Secret {name!r} is empty")
        return value

    found: dict[str, bytes] = {}
    for use in secret_key_uses(spec):
        value = lookup(use.secret, use.key, use.field, use.key_field)
        if isinstance(value, ResolvedSecrets):
            return value
        found[f"{use.field}.{use.key_field}"] = value
    ref = spec.secret_ref_field
    access, secret, token = (
        found.get(f"{ref}.{key_field}")
        for key_field in ("accessKeyIdKey", "secretAccessKeyKey", "sessionTokenKey")
    )
    ca_pem = found.get("spec.tls.caSecretRef.key")
    creds = spec.secret_ref
    try:
        access_text, secret_text, token_text = (
            value.decode("utf-8").strip() if value is not None else None
            for value in (access, secret, token)
        )
    except UnicodeDecodeError:
        return missing(
            "SecretKeyInvalid",
            f"the credentials in Secret {getattr(creds, 'name', '')!r} are not UTF-8 text",
        )
    names = sorted(referenced_secret_names(spec.wire()))
    using = f"Secret{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)}"
    if spec.uses_service_account:
        reason = "ServiceAccountIdentity"
        message = "the pods' own identity (spec.credentials.serviceAccount)" + (
            f"; using {using}" if names else ""
        )
    elif names:
        reason, message = "SecretsFound", f"using {using}"
    else:
        reason = "DefaultCredentials"
        message = "no Secret referenced: runnable's default minioadmin credentials"
    return ResolvedSecrets(
        access_key=access_text,
        secret_key=secret_text,
        session_token=token_text,
        ca_pem=ca_pem,
        step=Step(SECRETS_AVAILABLE, ConditionStatus.TRUE, reason, message),
        service_account=spec.uses_service_account,
    )


def secret_api_step(name: str, error: RelayError) -> Step:
    """Reading a Secret failed for a reason other than its absence (RBAC, API outage)."""
    return Step(
        SECRETS_AVAILABLE,
        ConditionStatus.FALSE,
        "SecretUnreadable",
        f"could not read Secret {name!r}: {error}",
        retryable=isinstance(error, RetryableError),
    )


# --------------------------------------------------------------------------- bucket

_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch"})


#: Neither Connected nor BucketReady can be checked by the operator: a service-account
#: store, and no identity of its own. The sidecars' readiness is the truth.
CHECKED_BY_SIDECARS = "CheckedBySidecars"


def checked_by_sidecars_steps() -> tuple[Step, Step]:
    """Connected and BucketReady for a service-account store the operator cannot check."""
    message = (
        "the operator has no AWS identity of its own to check with (spec.credentials."
        "serviceAccount uses the pods' identity); each sidecar's readiness reports it"
    )
    return (
        Step(CONNECTED, ConditionStatus.UNKNOWN, CHECKED_BY_SIDECARS, message),
        Step(BUCKET_READY, ConditionStatus.UNKNOWN, CHECKED_BY_SIDECARS, message),
    )


def bucket_steps(
    *,
    location: str,
    endpoint: str,
    error: RelayError | None,
    created: bool = False,
    credentials: str = "the access key pair in the Secret named by spec.credentials.secretRef",
) -> tuple[Step, Step]:
    """The Connected and BucketReady steps for the result of the bucket check;
    ``credentials`` says what to check when they are rejected."""
    """The Connected and BucketReady steps for the result of the bucket check."""
    connected_ok = Step(
        CONNECTED, ConditionStatus.TRUE, "Connected", f"{endpoint} accepts the credentials"
    )
    if error is None:
        return connected_ok, Step(
            BUCKET_READY,
            ConditionStatus.TRUE,
            "BucketCreated" if created else "BucketExists",
            f"bucket {location} {'created' if created else 'exists'}",
        )
    code = getattr(error, "code", "")
    if isinstance(error, PermanentError) and code == "NoSuchBucket":
        return connected_ok, Step(
            BUCKET_READY,
            ConditionStatus.FALSE,
            "BucketNotFound",
            f"bucket {location.split('/')[0]!r} does not exist at {endpoint}; create it or set"
            " spec.createBucket: true",
        )
    if isinstance(error, RetryableError):
        connected = Step(
            CONNECTED, ConditionStatus.FALSE, "EndpointUnreachable", str(error), retryable=True
        )
    elif code in _CREDENTIAL_CODES:
        connected = Step(
            CONNECTED,
            ConditionStatus.FALSE,
            "InvalidCredentials",
            f"{endpoint} rejected the credentials ({code}); check {credentials}",
        )
    elif code in {"AccessDenied", "HTTP403", "HTTP401"}:
        connected = Step(
            CONNECTED,
            ConditionStatus.FALSE,
            "AccessDenied",
            f"{endpoint} denied access to bucket {location.split('/')[0]!r} ({code}); check the"
            " credentials and their policy",
        )
    elif code == "TLS":
        connected = Step(CONNECTED, ConditionStatus.FALSE, "TLSFailure", str(error))
    else:
        connected = Step(CONNECTED, ConditionStatus.FALSE, "ConnectionFailed", str(error))
    return connected, unknown_after(BUCKET_READY, CONNECTED)


def unknown_after(step_type: str, failed: str) -> Step:
    return Step(step_type, ConditionStatus.UNKNOWN, "NotChecked", f"waiting for {failed}")


def spec_steps(error: SpecError | None, reason: str = "InvalidSpec") -> list[Step]:
    """Steps for a spec that failed validation (or the operator's policy, ``reason``):
    nothing else can run."""
    if error is None:
        return [Step(SPEC_VALID, ConditionStatus.TRUE, "Valid", "spec is valid")]
    steps = [Step(SPEC_VALID, ConditionStatus.FALSE, reason, str(error))]
    steps.append(
        Step(
            CONFIG_RENDERED,
            ConditionStatus.UNKNOWN,
            "NotChecked",
            "waiting for SpecValid; the last valid config stays in its ConfigMap",
        )
    )
    steps += [unknown_after(t, SPEC_VALID) for t in (SECRETS_AVAILABLE, CONNECTED, BUCKET_READY)]
    return steps


def ready_step(steps: Sequence[Step]) -> Step:
    """Ready is True when every step is; otherwise it repeats the first failure."""
    for step in steps:
        if not step.ok and step.status is ConditionStatus.FALSE:
            return Step(READY, ConditionStatus.FALSE, step.reason, step.message, step.retryable)
    for step in steps:
        # A bucket only the sidecars can check does not hold the store back: the operator
        # did all it can, and each sidecar's /readyz tells the rest.
        if not step.ok and step.reason != CHECKED_BY_SIDECARS:
            return Step(READY, ConditionStatus.UNKNOWN, step.reason, step.message)
    bucket = next((s for s in steps if s.type == BUCKET_READY), None)
    if bucket is not None and bucket.reason == CHECKED_BY_SIDECARS:
        return Step(READY, ConditionStatus.TRUE, CHECKED_BY_SIDECARS, f"ready: {bucket.message}")
    message = f"ready: {bucket.message}" if bucket else "ready"
    return Step(READY, ConditionStatus.TRUE, "Ready", message)


# --------------------------------------------------------------------------- status


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace any occurrence of a secret value in ``text`` (defence in depth)."""
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    steps: Sequence[Step],
    *,
    generation: int | None,
    now: datetime,
    secrets: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``status.conditions`` for ``steps`` (Ready first), keeping each condition's
    ``lastTransitionTime`` when its status did not change. ``now`` must be UTC."""
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    secret_values = list(secrets)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = []
    for step in [ready_step(steps), *steps]:
        old = before.get(step.type)
        changed = old is None or old.get("status") != step.status.value
        condition: dict[str, Any] = {
            "type": step.type,
            "status": step.status.value,
            "reason": step.reason,
            "message": redact(step.message, secret_values),
            "lastTransitionTime": stamp if changed else old.get("lastTransitionTime", stamp),  # type: ignore[union-attr]
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        conditions.append(condition)
    return conditions


def status_patch(
    conditions: list[dict[str, Any]], *, generation: int | None, store: str
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions, "configMapName": configmap_name(store)}
    if generation is not None:
        status["observedGeneration"] = generation
    return {"status": status}


def condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any]:
    for item in conditions or []:
        if isinstance(item, Mapping) and item.get("type") == type_:
            return item
    return {}


def transition_event(
    previous: Sequence[Mapping[str, Any]] | None, current: Sequence[Mapping[str, Any]]
) -> Event | None:
    """An Event when Ready changed status or reason; None when nothing changed."""
    old, new = condition(previous, READY), condition(current, READY)
    if old.get("status") == new.get("status") and old.get("reason") == new.get("reason"):
        return None
    if new.get("status") == ConditionStatus.TRUE.value:
        return Event("Normal", "Ready", str(new.get("message", "ready")))
    return Event("Warning", str(new.get("reason", "NotReady")), str(new.get("message", "")))


def event_manifest(
    event: Event,
    *,
    namespace: str,
    store: str,
    uid: str | None,
    now: datetime,
    instance: str,
) -> dict[str, Any]:
    """A core/v1 Event about the store. Named like client-go names them (``<object>.<hex
    nanoseconds>``) rather than with generateName, so its name is known before posting."""
    involved: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": store,
        "namespace": namespace,
    }
    if uid:
        involved["uid"] = uid
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    nanos = int(now.timestamp() * 1_000_000_000)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{store}.{nanos:x}", "namespace": namespace},
        "involvedObject": involved,
        "type": event.type,
        "reason": event.reason,
        # The API server caps messages at 1024 bytes.
        "message": event.message.encode("utf-8")[:1000].decode("utf-8", "ignore"),
        "source": {"component": MANAGED_BY},
        "reportingComponent": f"{API_VERSION.split('/')[0]}/operator",
        "reportingInstance": instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def backoff_delay(retry: int, *, base: float = 5.0, cap: float = 300.0) -> float:
    """Seconds before retry number ``retry`` (0-based) of a transient failure: the
    project's one backoff rule, without jitter (one retry per store, not a crowd)."""
    return shared_backoff_delay(retry, base=base, cap=cap, jitter=False)
