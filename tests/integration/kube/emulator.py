"""
A realism layer over kmock's ``KubernetesEmulator``, enough for a real kopf operator.

kmock 0.8 serves the Kubernetes API from memory, but too naively for kopf:
no ``resourceVersion``/``uid``/``creationTimestamp``/``generation``, no
``generateName``, no status subresource, no JSON-patch (and a failed ``test`` op
answers 500 instead of 422), no garbage collection, watches that ignore
``?resourceVersion=`` and can lose events, and ``/api/v1/namespaces`` fails to parse.
kopf relies on most of these (its finalizer patches are JSON-patches guarded by a
``test`` of ``/metadata/resourceVersion``; it waits for its own patches to come back
through the watch-stream by ``resourceVersion``), so this subclass re-implements the
stateful part of the emulator while keeping kmock's server, discovery and DSL:

* every write gets a cluster-wide, monotonic ``resourceVersion``; no-op writes don't;
* ``uid``, ``creationTimestamp``, ``generation`` (bumped on changes outside
  ``metadata``/``status`` only), ``generateName``;
* merge-patch (RFC 7386), JSON-patch (RFC 6902, 422 on a failed ``test``),
  strategic-merge-patch (approximated as a merge-patch), PUT, optimistic
  concurrency (409 on a stale ``resourceVersion``);
* the ``status`` subresource: the main endpoint ignores ``status``, ``/status``
  ignores everything else;
* finalizers: DELETE sets ``deletionTimestamp`` while finalizers remain; the object
  is removed when the last finalizer goes; no new finalizers on a deleting object;
* garbage collection by ``ownerReferences`` (background and orphan propagation);
* watches from a ``resourceVersion`` replay an append-only event log, so nothing
  is lost between a list and the following watch;
* discovery pre-seeded (see :data:`DEFAULT_RESOURCES`); creating a
  ``CustomResourceDefinition`` registers its resources, as a real API server does;
* ``SubjectAccessReview`` answered by RBAC over the stored Roles, ClusterRoles and their
  bindings (:mod:`.rbac`).

User-defined kmock reactions still work and take priority
(``emulator['patch', kmock.resource('v1/configmaps')][:1] << 500``); unlike in
plain kmock, an intercepted request changes nothing in the stored state.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import copy
import dataclasses
import datetime
import json
import random
import re
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import rendering as kmock_rendering  # StreamingError: not re-exported
from typing_extensions import override

from .rbac import authorize

# -----------------------------------------------------------------------------------------------
# Resources served by the emulator (discovery + per-resource behaviour).
# -----------------------------------------------------------------------------------------------

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """A resource kind served by the emulator (what the discovery API reports)."""

    group: str  # '' for the core v1 API
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str | None = None
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def ref(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    def __str__(self) -> str:
        return (
            f"{self.plural}.{self.version}.{self.group}"
            if self.group
            else f"{self.plural}.{self.version}"
        )


WEBHOOK_CONFIGS: tuple[ResourceSpec, ...] = (
    ResourceSpec(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        namespaced=False,
    ),
    ResourceSpec(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        namespaced=False,
    ),
)

#: Answered from the emulator's RBAC objects (:func:`.rbac.authorize`), never stored.
SUBJECT_ACCESS_REVIEWS = ResourceSpec(
    "authorization.k8s.io",
    "v1",
    "subjectaccessreviews",
    "SubjectAccessReview",
    namespaced=False,
    verbs=("create",),
)

RUNLOGSTORE = ResourceSpec(
    "runlog-relay.dev",
    "v1alpha1",
    "runlogstores",
    "RunLogStore",
    namespaced=True,
    singular="runlogstore",
    shortnames=("rls",),
    subresources=("status",),
)

DEFAULT_RESOURCES: tuple[ResourceSpec, ...] = (
    # Core v1.
    ResourceSpec(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        shortnames=("ns",),
        subresources=("status", "finalize"),
    ),
    ResourceSpec(
        "",
        "v1",
        "pods",
        "Pod",
        shortnames=("po",),
        categories=("all",),
        subresources=("status", "log", "binding", "eviction"),
    ),
    ResourceSpec("", "v1", "secrets", "Secret"),
    ResourceSpec("", "v1", "nodes", "Node", namespaced=False, subresources=("status",)),
    ResourceSpec("", "v1", "configmaps", "ConfigMap", shortnames=("cm",)),
    ResourceSpec("", "v1", "events", "Event", shortnames=("ev",)),
    ResourceSpec(
        "",
        "v1",
        "services",
        "Service",
        shortnames=("svc",),
        categories=("all",),
        subresources=("status",),
    ),
    ResourceSpec("", "v1", "serviceaccounts", "ServiceAccount", shortnames=("sa",)),
    # batch/v1: runnable's K8sJobExecutor creates Jobs with the kubernetes client.
    ResourceSpec("batch", "v1", "jobs", "Job", subresources=("status",)),
    # apps/v1.
    ResourceSpec(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        shortnames=("deploy",),
        categories=("all",),
        subresources=("status", "scale"),
    ),
    ResourceSpec(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        shortnames=("sts",),
        categories=("all",),
        subresources=("status", "scale"),
    ),
    ResourceSpec(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        shortnames=("ds",),
        categories=("all",),
        subresources=("status",),
    ),
    ResourceSpec(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        shortnames=("rs",),
        categories=("all",),
        subresources=("status", "scale"),
    ),
    # Admission webhooks (kopf manages these when it serves webhooks).
    *WEBHOOK_CONFIGS,
    # RBAC, so that SubjectAccessReviews are answered from real objects (see .rbac).
    ResourceSpec("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceSpec("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceSpec(
        "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False
    ),
    ResourceSpec(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
    ),
    SUBJECT_ACCESS_REVIEWS,
    # CRDs themselves (kopf watches them to notice new resources).
    ResourceSpec(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        shortnames=("crd", "crds"),
        subresources=("status",),
    ),
    # The project's own custom resource.
    RUNLOGSTORE,
)

DEFAULT_NAMESPACES: tuple[str, ...] = ("default", "kube-system")

_CRDS_KEY = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
_NAMESPACES_KEY = ("", "v1", "namespaces")
_SECRETS_KEY = ("", "v1", "secrets")

# Metadata fields owned by the server: clients cannot change them with PATCH/PUT.
_SYSTEM_METADATA = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as in k8s.io/apimachinery rand.String


def resource_spec_from_crd(crd: Mapping[str, Any]) -> list[ResourceSpec]:
    """The resources served for a ``CustomResourceDefinition`` body (one per served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    result = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = tuple(sorted((version.get("subresources") or {}).keys()))
        result.append(
            ResourceSpec(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular"),
                shortnames=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=subresources,
            )
        )
    return result


# -----------------------------------------------------------------------------------------------
# Errors as the real API server reports them (kmock renders them as a v1 Status).
# -----------------------------------------------------------------------------------------------


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=status, reason=reason, message=message, details=details or None
    )


def _not_found(spec: ResourceSpec, name: str) -> kmock.KubernetesError:
    what = f"{spec.plural}.{spec.group}" if spec.group else spec.plural
    return _error(
        404, "NotFound", f'{what} "{name}" not found', name=name, group=spec.group, kind=spec.plural
    )


def _no_resource(
    message: str = "the server could not find the requested resource",
) -> kmock.KubernetesError:
    return _error(404, "NotFound", message)


def _conflict(spec: ResourceSpec, name: str) -> kmock.KubernetesError:
    what = f"{spec.plural}.{spec.group}" if spec.group else spec.plural
    return _error(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {what} "{name}": the object has been modified;'
        f" please apply your changes to the latest version and try again",
        name=name,
        group=spec.group,
        kind=spec.plural,
    )


def _invalid(spec: ResourceSpec, name: str, message: str) -> kmock.KubernetesError:
    return _error(
        422,
        "Invalid",
        f'{spec.kind} "{name}" is invalid: {message}',
        name=name,
        group=spec.group,
        kind=spec.kind,
    )


# -----------------------------------------------------------------------------------------------
# Pure helpers: patches, selectors, paths.
# -----------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: dicts merge recursively, ``None`` deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


_LABEL_REQUIREMENT = re.compile(
    r"^(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<val>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<vals>[^)]*)\))?$"
)


def label_selector_matcher(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Equality- and set-based label selectors: ``a=b,c!=d,e,!f,g in (h,i),j notin (k)``."""
    requirements: list[tuple[str, str, frozenset[str]]] = []  # (key, operator, values)
    for requirement in _split_selector(selector or ""):
        match = _LABEL_REQUIREMENT.match(requirement)
        if not match:
            raise _error(400, "BadRequest", f"unable to parse requirement: {requirement!r}")
        if match["neg"]:
            requirements.append((match["key"], "!exists", frozenset()))
        elif match["op"]:
            operator = "!=" if match["op"] == "!=" else "="
            requirements.append((match["key"], operator, frozenset([match["val"]])))
        elif match["setop"]:
            values = frozenset(v.strip() for v in (match["vals"] or "").split(",") if v.strip())
            requirements.append((match["key"], match["setop"], values))
        else:
            requirements.append((match["key"], "exists", frozenset()))

    def satisfied(
        labels: Mapping[str, str], key: str, operator: str, values: frozenset[str]
    ) -> bool:
        if operator == "exists":
            return key in labels
        if operator == "!exists":
            return key not in labels
        if operator in ("=", "in"):
            return labels.get(key) in values
        return labels.get(key) not in values  # "!=" and "notin" also match absent labels

    def matcher(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(satisfied(labels, *requirement) for requirement in requirements)

    return matcher


def field_selector_matcher(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Field selectors on any dotted path: ``metadata.name=x,involvedObject.uid!=y``."""
    requirements: list[tuple[str, bool, str]] = []  # (path, equal?, value)
    for requirement in _split_selector(selector or ""):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", requirement)
        if not match:
            raise _error(400, "BadRequest", f"invalid field selector: {requirement!r}")
        path, operator, value = match.groups()
        requirements.append((path, operator != "!=", value))

    def lookup(obj: Mapping[str, Any], path: str) -> str:
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        if current is None:
            return ""
        return str(current).lower() if isinstance(current, bool) else str(current)

    def matcher(obj: Mapping[str, Any]) -> bool:
        return all((lookup(obj, path) == value) == equal for path, equal, value in requirements)

    return matcher


@dataclasses.dataclass(frozen=True)
class ParsedPath:
    group: str
    version: str | None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_k8s_path(path: str) -> ParsedPath | None:
    """
    Parse a Kubernetes API path; ``None`` for non-resource paths (``/``, ``/api``, ``/apis``).

    Unlike kmock 0.8's parser, this one understands the cluster-scoped ``namespaces``
    resource: ``/api/v1/namespaces`` and ``/api/v1/namespaces/NAME[/status|/finalize]``.
    """
    parts = [part for part in path.strip("/").split("/") if part]
    version: str | None
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        group, version, rest = parts[1], (parts[2] if len(parts) >= 3 else None), parts[3:]
    else:
        return None

    namespace = None
    namespaces_object = rest[:1] == ["namespaces"] and (
        len(rest) <= 2 or (len(rest) == 3 and rest[2] in ("status", "finalize"))
    )
    if rest[:1] == ["namespaces"] and not namespaces_object:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if len(rest) >= 1 else None
    name = rest[1] if len(rest) >= 2 else None
    subresource = "/".join(rest[2:]) or None
    return ParsedPath(group, version, plural, namespace, name, subresource)


def _guess_action(
    parsed: ParsedPath | None, method: str, query: Mapping[str, str]
) -> kmock.action | None:
    if parsed is None or parsed.plural is None:
        return None
    if method == "GET" and query.get("watch") in ("true", "1"):
        return kmock.action.WATCH
    if parsed.name is None:
        return {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
    return {
        "GET": kmock.action.FETCH,
        "PATCH": kmock.action.UPDATE,
        "DELETE": kmock.action.DELETE,
    }.get(method)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _user_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What bumps ``metadata.generation`` when changed: everything but metadata & status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# -----------------------------------------------------------------------------------------------
# The emulator.
# -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WatchEntry:
    """One change in the append-only event log that the watches replay."""

    rv: int
    key: tuple[str, str, str]
    namespace: str | None
    type: str  # ADDED, MODIFIED, DELETED
    object: Mapping[str, Any]
    old: Mapping[str, Any] | None


@dataclasses.dataclass(frozen=True)
class AccessRecord:
    """One served request, for assertions and for failure messages."""

    method: str
    path: str  # with the query string
    status: int

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


@attrs.define(kw_only=True)
class RealisticKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with enough Kubernetes semantics for a real kopf operator (see above)."""

    initial_resources: Sequence[ResourceSpec] = DEFAULT_RESOURCES
    initial_namespaces: Sequence[str] = DEFAULT_NAMESPACES

    _rv: int = attrs.field(default=0, init=False)
    _specs: dict[tuple[str, str, str], ResourceSpec] = attrs.field(factory=dict, init=False)
    _log: list[WatchEntry] = attrs.field(factory=list, init=False)
    _log_changed: Any = attrs.field(default=None, init=False)  # asyncio.Event, made in the loop
    _closing: bool = attrs.field(default=False, init=False)
    _orphaning: set[str] = attrs.field(factory=set, init=False)
    active_watches: collections.Counter[tuple[tuple[str, str, str], str | None]] = attrs.field(
        factory=collections.Counter, init=False
    )
    access_log: list[AccessRecord] = attrs.field(factory=list, init=False)
    #: What /version says (kmock's is a fixed 1.26); tests set it to model a cluster.
    server_version: str = attrs.field(default="v1.30.2", init=False)
    #: The SubjectAccessReviews asked, with the answers given.
    access_reviews: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    internal_errors: list[str] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # registers the fallbacks with our overridden _serve_*()
        self._log_changed = asyncio.Event()
        self.fallback[self._is_replace] << self._serve_replace
        for spec in self.initial_resources:
            self.register_resource(spec)
        for namespace in self.initial_namespaces:
            self.ensure_namespace(namespace)

    # --- resources ------------------------------------------------------------------------------

    def register_resource(self, spec: ResourceSpec) -> None:
        """Serve a resource kind (in discovery and for the objects' endpoints)."""
        self._specs[spec.key] = spec
        self.resources[spec.ref] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.singular_name,
            namespaced=spec.namespaced,
            verbs=set(spec.verbs),
            shortnames=set(spec.shortnames),
            categories=set(spec.categories),
            subresources=set(spec.subresources),
        )

    def unregister_resource(self, spec: ResourceSpec) -> None:
        self._specs.pop(spec.key, None)
        if spec.ref in self.resources:
            del self.resources[spec.ref]

    @property
    def specs(self) -> list[ResourceSpec]:
        return list(self._specs.values())

    def find_spec(self, name: str) -> ResourceSpec:
        """Find a served resource by group/version/plural, v1/plural, plural, kind or shortname."""
        ref = kmock.resource(name)
        if ref.group is not None and ref.version is not None and ref.plural is not None:
            spec = self._specs.get((ref.group, ref.version, ref.plural))
            if spec is not None:
                return spec
        lowered = name.lower()
        candidates = [
            spec
            for spec in self._specs.values()
            if lowered in (spec.plural, spec.kind.lower(), spec.singular_name, *spec.shortnames)
            or name in (f"{spec.plural}.{spec.group}", str(spec))
        ]
        candidates.sort(key=lambda spec: spec.group != "")  # core v1 wins, as in kubectl
        if not candidates:
            raise LookupError(f"The emulator serves no resource {name!r}.")
        return candidates[0]

    async def _serve_server_version(self, request: Any) -> Any:
        major, minor = self.server_version.lstrip("v").split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": self.server_version,
            "platform": "linux/amd64",
        }

    @override
    def _get_resources(self) -> list[kmock.resource]:
        # Only declared (and DSL-implied) resources; not those of left-over objects of removed CRDs.
        return kmock.KubernetesScaffold._get_resources(self)

    # --- stored objects -------------------------------------------------------------------------

    def live_objects(self, spec: ResourceSpec | None = None) -> list[dict[str, Any]]:
        """Current (not deleted) objects, optionally of one resource. Call in the server's loop."""
        result = []
        for (ref, _, _), obj in list(self._objects.items()):
            if obj.deleted or (spec is not None and ref != spec.ref):
                continue
            result.append(copy.deepcopy(obj.raw))
        return result

    def _get(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (spec.ref, namespace, name)
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else copy.deepcopy(obj.raw)

    def _live_items(self) -> Iterable[tuple[ResourceSpec, str | None, str, dict[str, Any]]]:
        for (ref, namespace, name), obj in list(self._objects.items()):
            spec = self._specs.get((ref.group or "", ref.version or "", ref.plural or ""))
            if spec is not None and not obj.deleted:
                yield spec, namespace, name, obj.raw

    def _commit(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        obj: dict[str, Any],
        type: str,
        old: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Store a change with a new resourceVersion and log it for the watchers (atomically)."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        key = (spec.ref, namespace, name)
        if key not in self._objects:
            self._objects[key] = copy.deepcopy(obj)
        else:
            self._objects[key].history.append(copy.deepcopy(obj))
        if type == "DELETED":
            self._objects[key].delete()
        self._log.append(WatchEntry(self._rv, spec.key, namespace, type, obj, old))
        self._notify()
        return copy.deepcopy(obj)

    def _notify(self) -> None:
        waiter = self._log_changed
        self._log_changed = asyncio.Event()
        if waiter is not None:
            waiter.set()

    def close_watches(self) -> None:
        """End all watch-streams (before the server shuts down, so that it won't wait for them)."""
        self._closing = True
        self._notify()

    def ensure_namespace(self, name: str) -> dict[str, Any]:
        spec = self._specs[_NAMESPACES_KEY]
        existing = self._get(spec, None, name)
        return (
            existing
            if existing is not None
            else self.create_object(spec, None, {"metadata": {"name": name}})
        )

    # --- the semantics of writes ----------------------------------------------------------------

    def create_object(
        self, spec: ResourceSpec, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise _error(400, "BadRequest", "metadata must be an object")
        obj["metadata"] = meta

        if spec.namespaced:
            if namespace and meta.get("namespace") and meta["namespace"] != namespace:
                raise _error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match"
                    " the namespace sent on the request",
                )
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)

        name: str = meta.get("name") or ""
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise _invalid(
                    spec, "", "metadata.name: Required value: name or generateName is required"
                )
            for _ in range(100):
                name = prefix + "".join(random.choices(_NAME_SUFFIX_ALPHABET, k=5))
                if self._get(spec, namespace, name) is None:
                    break
            meta["name"] = name
        if self._get(spec, namespace, name) is not None:
            what = f"{spec.plural}.{spec.group}" if spec.group else spec.plural
            raise _error(
                409,
                "AlreadyExists",
                f'{what} "{name}" already exists',
                name=name,
                group=spec.group,
                kind=spec.plural,
            )

        obj["apiVersion"] = spec.api_version
        obj["kind"] = spec.kind
        for field in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        if spec.has_status:
            obj.pop("status", None)  # set via /status only, as for real CRDs with the subresource
        self._normalize(spec, obj)
        if spec.key == _NAMESPACES_KEY:
            obj["status"] = {"phase": "Active"}
        if spec.key == _CRDS_KEY:
            self._validate_crd(obj)
            names = (obj.get("spec") or {}).get("names") or {}
            obj["status"] = {
                "acceptedNames": names,
                "storedVersions": [
                    v["name"] for v in obj["spec"].get("versions", []) if v.get("storage")
                ],
                "conditions": [
                    {
                        "type": "NamesAccepted",
                        "status": "True",
                        "reason": "NoConflicts",
                        "lastTransitionTime": _now(),
                        "message": "no conflicts found",
                    },
                    {
                        "type": "Established",
                        "status": "True",
                        "reason": "InitialNamesAccepted",
                        "lastTransitionTime": _now(),
                        "message": "the initial names have been accepted",
                    },
                ],
            }
        result = self._commit(spec, namespace, name, obj, "ADDED", None)
        if spec.key == _CRDS_KEY:
            for served in resource_spec_from_crd(result):
                self.register_resource(served)
        return result

    def update_object(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        current: dict[str, Any],
        candidate: Any,
        subresource: str | None,
    ) -> dict[str, Any]:
        """Apply a patched/replaced body with the server-side rules; commit unless it is a no-op."""
        if not isinstance(candidate, dict):
            raise _invalid(spec, name, "the patched object must be a JSON object")
        if subresource is None:
            if spec.has_status:  # the main endpoint ignores the status (as the real server does)
                candidate.pop("status", None)
                if "status" in current:
                    candidate["status"] = copy.deepcopy(current["status"])
        elif subresource == "status" and spec.has_status:
            status = candidate.get("status")
            candidate = copy.deepcopy(current)  # /status ignores everything but the status
            if status is None:
                candidate.pop("status", None)
            else:
                candidate["status"] = status
        else:
            raise _no_resource(
                f"the server does not serve {spec.plural}/{subresource} in this emulator"
            )

        # Optimistic concurrency: a resourceVersion in the new body must match the current one.
        meta = candidate.get("metadata")
        if not isinstance(meta, dict):
            raise _invalid(spec, name, "metadata must be an object")
        old_meta = current["metadata"]
        if meta.get("resourceVersion") not in (None, old_meta.get("resourceVersion")):
            raise _conflict(spec, name)
        if meta.get("uid") not in (None, old_meta.get("uid")):
            raise _invalid(spec, name, "metadata.uid: Invalid value: field is immutable")
        for field in _SYSTEM_METADATA:
            if field in old_meta:
                meta[field] = copy.deepcopy(old_meta[field])
            else:
                meta.pop(field, None)
        candidate["apiVersion"] = current.get("apiVersion", spec.api_version)
        candidate["kind"] = current.get("kind", spec.kind)

        new_finalizers = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
        if old_meta.get("deletionTimestamp") and new_finalizers:
            raise _invalid(
                spec,
                name,
                "metadata.finalizers: Forbidden: no new finalizers can be added"
                " if the object is being deleted",
            )
        self._normalize(spec, candidate)
        if spec.key == _CRDS_KEY:
            self._validate_crd(candidate)

        if _user_part(candidate) != _user_part(current):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1

        if candidate == current:
            return current  # a no-op: no new resourceVersion, no watch-event (as in a real server)
        if old_meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(spec, namespace, name, candidate, current)

        result = self._commit(spec, namespace, name, candidate, "MODIFIED", current)
        if spec.key == _CRDS_KEY:
            for served in resource_spec_from_crd(result):
                self.register_resource(served)
        return result

    def delete_object(
        self, spec: ResourceSpec, namespace: str | None, name: str, propagation: str = "Background"
    ) -> dict[str, Any]:
        current = self._get(spec, namespace, name)
        if current is None:
            raise _not_found(spec, name)
        if propagation == "Orphan":
            self._orphaning.add(current["metadata"]["uid"])
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return current  # already being deleted; waiting for the finalizers to go
            candidate = copy.deepcopy(current)
            candidate["metadata"]["deletionTimestamp"] = _now()
            candidate["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(spec, namespace, name, candidate, "MODIFIED", current)
        return self._remove(spec, namespace, name, current, current)

    def _remove(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        final: dict[str, Any],
        current: dict[str, Any],
    ) -> dict[str, Any]:
        result = self._commit(spec, namespace, name, final, "DELETED", current)
        uid = result["metadata"]["uid"]
        if spec.key == _CRDS_KEY:
            for served in resource_spec_from_crd(result):
                self.unregister_resource(served)
        if spec.key == _NAMESPACES_KEY:
            for other, other_ns, other_name, _ in list(self._live_items()):
                if other.namespaced and other_ns == name and self._get(other, other_ns, other_name):
                    self.delete_object(other, other_ns, other_name)
        self._collect_garbage(uid)
        return result

    def _collect_garbage(self, owner_uid: str) -> None:
        """Delete (or orphan) the dependents of a removed owner, as the GC controller does."""
        orphan = owner_uid in self._orphaning
        self._orphaning.discard(owner_uid)
        for spec, namespace, name, obj in list(self._live_items()):
            refs = obj.get("metadata", {}).get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            current = self._get(spec, namespace, name)
            if current is None:  # removed meanwhile by the cascade
                continue
            live_uids = {o.get("metadata", {}).get("uid") for *_, o in self._live_items()}
            remaining = [ref for ref in refs if ref.get("uid") in live_uids]
            if orphan or remaining:
                candidate = copy.deepcopy(current)
                candidate["metadata"]["ownerReferences"] = [
                    r for r in refs if r.get("uid") != owner_uid
                ]
                self.update_object(spec, namespace, name, current, candidate, None)
            else:
                self.delete_object(spec, namespace, name)

    def _normalize(self, spec: ResourceSpec, obj: dict[str, Any]) -> None:
        if spec.key == _SECRETS_KEY and obj.get("stringData"):
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if spec.key == _SECRETS_KEY:
            obj.pop("stringData", None)
        meta = obj.get("metadata") or {}
        for field in ("finalizers", "ownerReferences", "labels", "annotations"):
            if field in meta and not meta[field]:
                del meta[field]

    @staticmethod
    def _validate_crd(obj: Mapping[str, Any]) -> None:
        try:
            specs = resource_spec_from_crd(obj)
        except (KeyError, TypeError) as e:
            raise _error(422, "Invalid", f"CustomResourceDefinition is invalid: {e!r}") from None
        spec = obj.get("spec") or {}
        expected = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
        if obj["metadata"].get("name") != expected:
            raise _error(
                422,
                "Invalid",
                f"CustomResourceDefinition is invalid: metadata.name must be {expected!r}",
            )
        if not specs:
            raise _error(422, "Invalid", "CustomResourceDefinition is invalid: no served versions")

    # --- HTTP: parsing ----------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Same as kmock's, but with a parser that understands ``/api/v1/namespaces``."""
        body = await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        response: aiohttp.web.StreamResponse
        try:
            request = self._parse_request(raw_request, body)
            self._requests.append(request)
            try:
                response = await self._handle(request)
            except kmock_rendering.StreamingError as e:
                raw_response = e.args[0]
                raise (e.__cause__ or e) from None
        except Exception as e:
            if not isinstance(e, kmock.KubernetesError):
                self.internal_errors.append(
                    f"{raw_request.method} {raw_request.path_qs}:\n{traceback.format_exc()}"
                )
            if self._errors:
                self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                response = await self._render_error(e)
            else:
                await self._stream_error(e, raw_response)
                await raw_response.write_eof()
                response = raw_response
        self.access_log.append(
            AccessRecord(raw_request.method, raw_request.path_qs, response.status)
        )
        return response

    def _parse_request(self, raw_request: aiohttp.web.BaseRequest, body: bytes) -> kmock.Request:
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        parsed = parse_k8s_path(raw_request.path)
        query = dict(raw_request.query)
        return kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=query,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=text,
            data=data,
            action=_guess_action(parsed, raw_request.method, query),
            resource=None
            if parsed is None
            else kmock.resource(group=parsed.group, version=parsed.version, plural=parsed.plural),
            namespace=None if parsed is None else parsed.namespace,
            name=None if parsed is None else parsed.name,
            subresource=None if parsed is None else parsed.subresource,
        )

    @override
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip kmock's KubernetesEmulator._handle(): it mutates the state before the reactions run.
        # Here, all state changes happen in the fallback reactions below, and only if reached.
        return await kmock.RawHandler._handle(self, request)

    @override
    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError):
            status, reason, message, details = exc.status, exc.reason, exc.message, exc.details
        else:
            status, reason, message = 500, "InternalError", repr(exc)
            details = {"traceback": traceback.format_exception(exc)}
        return aiohttp.web.json_response(
            {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "code": status,
                "reason": reason or type(exc).__name__,
                "message": message or repr(exc),
                **({"details": details} if details else {}),
            },
            status=status,
        )

    def _spec_of(
        self, request: kmock.Request, *, named: bool
    ) -> tuple[ResourceSpec, str | None, str]:
        ref = request.resource
        if ref is None or ref.plural is None or ref.version is None:
            raise _no_resource()
        spec = self._specs.get((ref.group or "", ref.version, ref.plural))
        if spec is None:
            raise _no_resource()
        if not spec.namespaced and request.namespace is not None:
            raise _no_resource(f"{spec.plural} is cluster-scoped; the URL must have no namespace")
        if spec.namespaced and named and request.namespace is None:
            raise _no_resource(f"{spec.plural} is namespaced; the URL must have a namespace")
        return spec, request.namespace, request.name or ""

    @staticmethod
    def _content_type(request: kmock.Request) -> str:
        for key, value in request.headers.items():
            if key.lower() == "content-type":
                return value.split(";")[0].strip().lower()
        return ""

    @staticmethod
    def _json_body(request: kmock.Request) -> Any:
        if not request.body:
            return None
        try:
            return json.loads(request.body)
        except ValueError:
            raise _error(400, "BadRequest", "the request body is not valid JSON") from None

    @staticmethod
    def _is_replace(request: kmock.Request) -> bool:
        return request.method == "PUT" and request.resource is not None and request.name is not None

    # --- HTTP: the fallback reactions (reached unless intercepted by user reactions) ------------

    async def _serve_create(self, request: kmock.Request) -> kmock.Response:
        spec, namespace, _ = self._spec_of(request, named=False)
        if request.subresource is not None or request.name is not None:
            raise _error(
                405, "MethodNotAllowed", "POST is only supported on collections in this emulator"
            )
        if spec.key == SUBJECT_ACCESS_REVIEWS.key:
            review = self._json_body(request) or {}
            allowed, reason = authorize(self.live_objects(), review.get("spec") or {})
            self.access_reviews.append({"spec": review.get("spec"), "allowed": allowed})
            return kmock.Response(
                status=201,
                payload={**review, "status": {"allowed": allowed, "reason": reason}},
            )
        obj = self.create_object(spec, namespace, self._json_body(request))
        return kmock.Response(status=201, payload=obj)

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Response:
        spec, namespace, name = self._spec_of(request, named=True)
        obj = self._get(spec, namespace, name)
        if obj is None:
            raise _not_found(spec, name)
        if request.subresource not in (None, "status"):
            raise _no_resource()
        return kmock.Response(status=200, payload=obj)

    async def _serve_list(self, request: kmock.Request) -> kmock.Response:
        spec, namespace, _ = self._spec_of(request, named=False)
        labels = label_selector_matcher(request.params.get("labelSelector"))
        fields = field_selector_matcher(request.params.get("fieldSelector"))
        items = sorted(
            (
                obj
                for s, ns, _, obj in self._live_items()
                if s.key == spec.key
                and (namespace is None or ns == namespace)
                and labels(obj)
                and fields(obj)
            ),
            key=lambda obj: (obj["metadata"].get("namespace") or "", obj["metadata"]["name"]),
        )
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        limit = int(request.params.get("limit") or 0)
        if limit > 0:
            offset = int(request.params.get("continue") or 0)
            meta["continue"] = str(offset + limit) if offset + limit < len(items) else ""
            items = items[offset : offset + limit]
        return kmock.Response(
            status=200,
            payload={
                "apiVersion": spec.api_version,
                "kind": f"{spec.kind}List",
                "metadata": meta,
                "items": copy.deepcopy(items),
            },
        )

    async def _serve_update(self, request: kmock.Request) -> kmock.Response:
        spec, namespace, name = self._spec_of(request, named=True)
        current = self._get(spec, namespace, name)
        if current is None:
            raise _not_found(spec, name)
        content_type = self._content_type(request)
        patch = self._json_body(request)
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise _error(400, "BadRequest", "a JSON-patch must be a list of operations")
            try:
                candidate = jsonpatch.apply_patch(current, patch)
            except jsonpatch.JsonPatchTestFailed as e:
                raise _invalid(spec, name, f"the JSON-patch test failed: {e}") from None
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise _invalid(spec, name, f"the JSON-patch cannot be applied: {e}") from None
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json",
        ):
            if not isinstance(patch, dict):
                raise _error(400, "BadRequest", "a merge-patch must be a JSON object")
            candidate = merge_patch(current, patch)
        else:
            raise _error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type!r}",
            )
        obj = self.update_object(spec, namespace, name, current, candidate, request.subresource)
        return kmock.Response(status=200, payload=obj)

    async def _serve_replace(self, request: kmock.Request) -> kmock.Response:
        spec, namespace, name = self._spec_of(request, named=True)
        current = self._get(spec, namespace, name)
        if current is None:
            raise _not_found(spec, name)
        body = self._json_body(request)
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        body_name = (body.get("metadata") or {}).get("name")
        if body_name not in (None, name):
            raise _error(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        obj = self.update_object(
            spec, namespace, name, current, copy.deepcopy(body), request.subresource
        )
        return kmock.Response(status=200, payload=obj)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Response:
        spec, namespace, name = self._spec_of(request, named=True)
        if request.subresource is not None:
            raise _error(405, "MethodNotAllowed", "DELETE is not supported on subresources")
        options = self._json_body(request) or {}
        current = self._get(spec, namespace, name)
        if current is None:
            raise _not_found(spec, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") not in (None, current["metadata"]["uid"]):
            raise _conflict(spec, name)
        if preconditions.get("resourceVersion") not in (
            None,
            current["metadata"]["resourceVersion"],
        ):
            raise _conflict(spec, name)
        propagation = (
            options.get("propagationPolicy")
            or request.params.get("propagationPolicy")
            or "Background"
        )
        obj = self.delete_object(spec, namespace, name, propagation)
        return kmock.Response(status=200, payload=obj)

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:  # type: ignore[override]
        # Validate before streaming, so that errors are plain HTTP errors, not in-stream ones.
        spec, namespace, _ = self._spec_of(request, named=False)
        if request.name is not None:
            raise _error(
                405,
                "MethodNotAllowed",
                "watching a single object is not supported; use fieldSelector=metadata.name=...",
            )
        labels = label_selector_matcher(request.params.get("labelSelector"))
        fields = field_selector_matcher(request.params.get("fieldSelector"))
        since = request.params.get("resourceVersion") or ""
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        initial = request.params.get("sendInitialEvents") == "true"
        return self._watch_stream(spec, namespace, labels, fields, since, timeout, initial)

    async def _watch_stream(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        labels: Callable[[Mapping[str, Any]], bool],
        fields: Callable[[Mapping[str, Any]], bool],
        since: str,
        timeout: float | None,
        initial: bool,
    ) -> AsyncIterator[Any]:
        def matches(obj: Mapping[str, Any] | None) -> bool:
            return obj is not None and labels(obj) and fields(obj)

        # Everything up to the first `yield` runs atomically in the loop: a consistent snapshot.
        watch_key = (spec.key, namespace)
        self.active_watches[watch_key] += 1
        try:
            events: list[dict[str, Any]] = []
            if since in ("", "0") or initial:
                events = [
                    {"type": "ADDED", "object": copy.deepcopy(obj)}
                    for s, ns, _, obj in self._live_items()
                    if s.key == spec.key and (namespace is None or ns == namespace) and matches(obj)
                ]
                cursor = len(self._log)
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise _error(400, "BadRequest", f"invalid resourceVersion: {since!r}") from None
                cursor = bisect.bisect_right(self._log, start, key=lambda entry: entry.rv)
            if initial:
                events.append(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "apiVersion": spec.api_version,
                            "kind": spec.kind,
                            "metadata": {
                                "resourceVersion": str(self._rv),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        },
                    }
                )

            yield b""  # send the headers now: the stream is established even if nothing happens
            for event in events:
                yield event

            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while not self._closing:
                if cursor < len(self._log):
                    entry = self._log[cursor]
                    cursor += 1
                    if entry.key != spec.key or (
                        namespace is not None and entry.namespace != namespace
                    ):
                        continue
                    new_match, old_match = matches(entry.object), matches(entry.old)
                    if entry.type == "DELETED":
                        event_type = "DELETED" if new_match or old_match else None
                    elif new_match:
                        event_type = entry.type if old_match or entry.old is None else "ADDED"
                    else:
                        event_type = "DELETED" if old_match else None  # left the selector
                    if event_type is not None:
                        yield {"type": event_type, "object": entry.object}
                    continue
                waiter = self._log_changed
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(waiter.wait(), timeout=remaining)
                except TimeoutError:
                    break
        finally:
            self.active_watches[watch_key] -= 1
