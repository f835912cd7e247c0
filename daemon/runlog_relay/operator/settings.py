"""The operator's settings: one typed object per process, built once by the CLI.

:class:`OperatorSettings` holds every option of ``runlog-relay operator``, grouped the
way kopf groups its own (``settings.peering.priority``): ``reconcile``, ``peering``,
``webhook``, ``injection``. Each default is written here and only here; the command line
(:mod:`.command`), the chart and the docs take theirs from these fields, and each field's
docstring is its ``--help`` text.

Sources, highest first: command-line flags, ``RUNLOG_RELAY_OPERATOR_*`` environment
variables, the defaults. A field of a group is ``RUNLOG_RELAY_OPERATOR_<GROUP>__<FIELD>``
(``RUNLOG_RELAY_OPERATOR_WEBHOOK__PORT=0``), like the sidecar's nested settings; a list
is comma-separated (``RUNLOG_RELAY_OPERATOR_NAMESPACES=team-a,team-b``) and a JSON
object is JSON (``RUNLOG_RELAY_OPERATOR_INJECTION__RESOURCES``). :func:`env_name` gives
the variable of any field, for help texts and docs.

Pure pydantic, no kopf: the chart tests and the docs import it without the operator extra.
"""

from __future__ import annotations

import enum
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runlog_relay import __version__
from runlog_relay.config.settings import LogFormat, unknown_names
from runlog_relay.operator.policy import EndpointPolicy

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_RESOURCES",
    "ENV_PREFIX",
    "InjectionSettings",
    "NativeSidecar",
    "OperatorSettings",
    "PeeringSettings",
    "ReconcileSettings",
    "WebhookSettings",
    "env_name",
    "iter_fields",
    "unknown_variables",
    "validate_resources",
]

ENV_PREFIX = "RUNLOG_RELAY_OPERATOR_"
NESTED_DELIMITER = "__"

DEFAULT_IMAGE = f"ghcr.io/runlog-relay/runlog-relay:{__version__}"
#: Sized from the benchmark (docs/benchmarks.md, "Sizing the injected sidecar"): the
#: requests cover a Job pod's sidecar (31 MiB idle and after mirroring a run of 20 files
#: rewritten 4 times, 45 MiB in a first sync of 2,000 files; ~0 mCPU idle), the limits
#: its peaks (71-91 MiB mirroring 16-64 MiB run logs; start-up 0.14-0.20 CPU-s, about
#: 1 s at 200m). The CPU limit keeps the sidecar inside quotas on `limits.cpu`.
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "10m", "memory": "48Mi"},
    "limits": {"cpu": "200m", "memory": "128Mi"},
}

_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")


def validate_resources(value: Any) -> dict[str, dict[str, str]]:
    """A ResourceRequirements object (``requests``/``limits`` of quantities), checked for
    shape and quantity syntax; ValueError naming the bad part."""
    if not isinstance(value, Mapping):
        raise ValueError('must be a JSON object like {"requests": {"cpu": "10m"}}')
    unknown = set(value) - {"requests", "limits"}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; expected requests, limits")
    result: dict[str, dict[str, str]] = {}
    for part in ("requests", "limits"):
        amounts = value.get(part)
        if amounts is None:
            continue
        if not isinstance(amounts, Mapping):
            raise ValueError(f"{part} must be an object of resource name to quantity")
        checked = {}
        for resource, quantity in amounts.items():
            text = (
                str(quantity)
                if isinstance(quantity, int | float | str) and not isinstance(quantity, bool)
                else None
            )
            if text is None or not _QUANTITY.match(text):
                raise ValueError(f"{part}.{resource} is not a Kubernetes quantity: {quantity!r}")
            checked[str(resource)] = text
        result[part] = checked
    return result


def _split_list(value: Any) -> Any:
    """``a,b`` (an environment variable) or a list; blanks dropped."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: A list that the environment gives comma-separated.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
Port = Annotated[int, Field(ge=0, le=65535)]
Resources = Annotated[dict[str, dict[str, str]], BeforeValidator(validate_resources)]


def _quantity(value: Any) -> str:
    text = str(value)
    if not _QUANTITY.match(text):
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return text


Quantity = Annotated[str, BeforeValidator(_quantity)]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class NativeSidecar(enum.StrEnum):
    AUTO = "auto"
    """Native where the API server and every node's kubelet are 1.29 or newer."""
    ALWAYS = "always"
    NEVER = "never"


class ReconcileSettings(_Group):
    """How stores are reconciled and rechecked."""

    recheck_interval: float = Field(default=300.0, gt=0)
    """Seconds between rechecks of every known store: bucket still there, credentials and
    Secrets still valid, endpoint back."""
    bucket_timeout: float = Field(default=10.0, gt=0)
    """Seconds for the bucket check's requests (connect at most 5)."""
    retry_base_delay: float = Field(default=5.0, gt=0)
    """Seconds before the first retry of a transient failure; doubles each time."""
    retry_max_delay: float = Field(default=300.0, gt=0)
    """Upper bound of the retry delay, in seconds."""
    recheck_concurrency: int = Field(default=8, ge=1, le=256)
    """Stores rechecked at once."""


class PeeringSettings(_Group):
    """Several replicas: one works, the others stand by (kopf peering)."""

    name: str | None = None
    """kopf peering object to coordinate replicas through (needs kopf's peering CRDs);
    unset: the operator runs standalone."""
    priority: int = Field(default=0, ge=-(2**20), le=2**20)
    """Priority class: the live replica with the highest one works. Replicas with the
    same class (one pod template) are told apart by a random tie-breaker, so they never
    freeze each other."""
    lifetime: int = Field(default=30, ge=10, le=3600)
    """Seconds a replica's keep-alive counts; a standby takes over at most this long after
    the active replica died without saying goodbye (a clean exit hands over at once)."""
    leadership_check_interval: float = Field(default=2.0, gt=0, le=60)
    """Seconds between reads of the peering object by this replica's own logic (the
    recheck loop, the webhook certificate, the webhook's use of kopf's index)."""


class WebhookSettings(_Group):
    """The admission webhooks (pod injection, RunLogStore validation) over HTTPS."""

    port: Port = 9443
    """HTTPS port of the admission webhooks; 0 turns them off."""
    host: str = "0.0.0.0"  # noqa: S104 - the API server calls in from outside the pod
    """Address the webhook server binds to."""
    cert_dir: Path | None = None
    """Serve DIR/tls.crt and DIR/tls.key (cert-manager or your own), re-read when they
    change; unset: the operator keeps a CA and a certificate in a Secret, shared by all
    replicas, and the webhook configurations' caBundle."""
    service_name: str = "runlog-relay"
    """The webhook Service, named in the certificate the operator issues."""
    service_namespace: str | None = None
    """Namespace of that Service and of the certificate Secret; default: the operator's."""
    config_name: str = "runlog-relay"
    """Mutating- and ValidatingWebhookConfiguration whose caBundle the operator keeps."""
    timeout_seconds: int = Field(default=5, ge=1, le=30)
    """The webhook configurations' timeoutSeconds: how long the API server waits. The
    webhook's own API lookups get 60% of it, so its answer -- with the reason when it
    could not decide -- always arrives before the API server gives up."""
    cert_secret: str = "runlog-relay-webhook-cert"  # noqa: S105 - a name, not a secret
    """Secret (in the service namespace) holding the webhook's CA and certificate, shared
    by all replicas; the chart creates it empty and the active replica fills it."""
    cert_validity_hours: float = Field(default=2160.0, gt=0)
    """Lifetime of the webhook's serving certificate (90 days)."""
    cert_renew_before_hours: float = Field(default=720.0, gt=0)
    """Renew the certificate this long before it expires (30 days)."""
    ca_validity_hours: float = Field(default=87600.0, gt=0)
    """Lifetime of the CA that signs it (10 years)."""
    ca_renew_before_hours: float = Field(default=8760.0, gt=0)
    """Replace the CA this long before it expires (1 year): the new one joins the bundle
    next to the old one first."""
    ca_propagation_seconds: float = Field(default=600.0, ge=0)
    """How long a new CA is in the caBundle before certificates are issued from it, so
    API servers trust it first."""
    cert_check_interval: float = Field(default=60.0, gt=0)
    """Seconds between reads of the certificate Secret (renewal by the active replica,
    pick-up by the others) and checks that the webhook configurations carry the CA (a
    helm upgrade may reset it); a certificate directory is re-read as often."""

    @property
    def self_signed(self) -> bool:
        return self.cert_dir is None

    @property
    def lookup_budget(self) -> float:
        """Seconds the webhook may spend on API calls for one admission request."""
        return round(self.timeout_seconds * 0.6, 3)

    @model_validator(mode="after")
    def _renewal_before_expiry(self) -> WebhookSettings:
        if self.cert_renew_before_hours >= self.cert_validity_hours:
            raise ValueError("cert_renew_before_hours must be less than cert_validity_hours")
        if self.ca_renew_before_hours >= self.ca_validity_hours:
            raise ValueError("ca_renew_before_hours must be less than ca_validity_hours")
        if self.cert_validity_hours > self.ca_validity_hours - self.ca_renew_before_hours:
            raise ValueError(
                "cert_validity_hours must fit in the CA's life before its renewal"
                " (ca_validity_hours - ca_renew_before_hours)"
            )
        return self


class InjectionSettings(_Group):
    """What the pod webhook injects."""

    image: str = DEFAULT_IMAGE
    """Image of the injected sidecar."""
    resources: Resources = Field(
        default_factory=lambda: {part: dict(v) for part, v in DEFAULT_RESOURCES.items()}
    )
    """The sidecar's ResourceRequirements, as JSON."""
    inject_when_not_ready: bool = True
    """Inject into pods of a store that is not Ready yet; the sidecar uploads once it is."""
    scrape_annotations: bool = False
    """Add prometheus.io/scrape, port and path to injected pods that have none."""
    native_sidecar: NativeSidecar = NativeSidecar.AUTO
    """auto: a native sidecar (an init container with restartPolicy Always, 1.29+) where
    the API server and every node's kubelet support it, else a classic container that
    exits once its pod's runs are sealed; always; never. A pod's
    runlog-relay.dev/sidecar-mode annotation wins."""
    allowed_images: CommaList = Field(default_factory=list)
    """Images a pod may ask for with the runlog-relay.dev/sidecar-image annotation (globs);
    empty: any tag or digest of the configured image's repository."""
    image_pull_secrets: CommaList = Field(default_factory=list)
    """Secrets to pull the sidecar image with, added to injected pods' imagePullSecrets
    (they must exist in each pod's namespace)."""
    logs_volume_size_limit: Quantity = "1Gi"
    """sizeLimit of the emptyDir the webhook adds when no volume of the pod holds the log
    folder."""
    host_network: bool = False
    """Inject into hostNetwork pods too (their sidecar's port is on the node); a pod's
    runlog-relay.dev/host-network: inject annotation asks for it alone."""
    openshift: bool = False
    """OpenShift: fix no user or group in the sidecar's securityContext (the namespace's
    SCC assigns them); the writer's own are still shared."""
    cluster_check_interval: float = Field(default=300.0, gt=0)
    """Seconds between reads of the API server's and the nodes' versions (what
    native_sidecar auto decides from)."""


def _own_instance() -> str:
    return socket.gethostname()


class OperatorSettings(BaseSettings):
    """Everything ``runlog-relay operator`` takes; see ``runlog-relay operator --help``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    namespaces: CommaList = Field(default_factory=list)
    """Namespaces to serve (globs like team-* work); empty serves every namespace.
    Namespaced serving needs only namespaced RBAC."""
    all_namespaces: bool = False
    """Serve every namespace (the default when no namespace is given)."""
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    """Address /metrics binds to."""
    metrics_port: Port = 9464
    """Port for Prometheus /metrics; 0 picks a free port."""
    liveness_port: Port = 8080
    """Port of kopf's liveness probe at /healthz; 0 turns it off."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""
    log_format: LogFormat = LogFormat.PLAIN
    """plain for people, json for log pipelines."""
    allowed_endpoints: CommaList = Field(default_factory=list)
    """Endpoints stores may use, as scheme://host[:port] ('*.example.com' for any name
    under it; no port: the scheme's default; ':*' any port). Empty allows every endpoint.
    Stores elsewhere are refused by the validating webhook, never connected to by the
    operator, and get no sidecar."""
    list_chunk_size: int = Field(default=500, ge=1, le=10000)
    """Objects per page when the operator lists a resource (limit/continue), so a big
    first listing never arrives as one response held in memory."""
    instance: str = Field(default_factory=_own_instance)
    """This replica's name in Events and logs; default: the host (pod) name."""
    reconcile: ReconcileSettings = ReconcileSettings()
    peering: PeeringSettings = PeeringSettings()
    webhook: WebhookSettings = WebhookSettings()
    injection: InjectionSettings = InjectionSettings()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("allowed_endpoints")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        EndpointPolicy.from_patterns(value)  # a clear error naming the bad pattern
        return value

    @model_validator(mode="after")
    def _peering_needs_named_namespaces(self) -> OperatorSettings:
        patterns = [ns for ns in self.namespaces if any(c in ns for c in "*?!,")]
        if self.peering.name and patterns and not self.all_namespaces:
            raise ValueError(
                "peering needs the served namespaces by name: kopf keeps a KopfPeering in"
                f" each, and the operator reads them; got the patterns {patterns}"
            )
        return self

    @property
    def clusterwide(self) -> bool:
        return self.all_namespaces or not self.namespaces


def iter_fields(
    model: type[BaseModel] = OperatorSettings, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf option as ``(path, field)``, groups flattened, in declaration order."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Group):
            yield from iter_fields(annotation, (*prefix, name))
        else:
            yield (*prefix, name), field


def env_name(path: tuple[str, ...] | str) -> str:
    """The environment variable of the option at ``path`` (``("webhook", "port")``)."""
    parts = path.split(".") if isinstance(path, str) else path
    return ENV_PREFIX + NESTED_DELIMITER.join(part.upper() for part in parts)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``RUNLOG_RELAY_OPERATOR_*`` variable that is no option, with the
    nearest option's variable: a misspelt one would otherwise be ignored in silence."""
    known = {env_name(path) for path, _ in iter_fields()}
    known |= {env_name((name,)) for name in OperatorSettings.model_fields}  # a group as JSON
    return [
        f"{name} is not an operator setting{hint}; it is ignored"
        for name, hint in unknown_names(environ, ENV_PREFIX, known)
    ]
