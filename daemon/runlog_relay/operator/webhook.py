"""Pure decisions of the admission webhooks: the JSONPatch that puts the sidecar into a
pod, and what a RunLogStore admission should warn about or refuse.

:mod:`.admission` does the I/O (finding the store, reading Secrets, posting Events) and
asks this module what each answer means; nothing here imports kopf or touches the
network, so the unit tests cover every branch with plain dicts.

A pod that names its store (the ``runlog-relay.dev/store`` label or annotation, or its
namespace's label of that name) gets, from :func:`decide_injection`:

- the sidecar ``runlog-relay`` -- a native sidecar (an init container with
  ``restartPolicy: Always``, placed after istio-proxy and before the pod's other init
  containers) where the cluster supports it (``native_sidecar``, or the pod's
  ``runlog-relay.dev/sidecar-mode``), else a plain container that exits once its pod's
  runs are sealed -- running ``runlog-relay sidecar --config`` with the store's rendered
  ConfigMap and credentials projected from the store's Secret, at exactly the paths the
  ConfigMap names (:func:`~.reconcile.pod_volumes`), mirroring only the pod's own runs
  when it can tell them (:func:`~.podspec.run_ids`), with resources fitted to the pod's
  QoS class (:func:`~.podspec.sidecar_resources`);
- the run-log volume mounted read-only in the sidecar at the path the pod's own
  containers see it at (see :func:`plan_volume` for how it is chosen);
- ``runlog-relay.dev/injected: <store>``.

When it cannot inject (store missing or invalid, volume ambiguous, ...) the patch only
adds ``runlog-relay.dev/skipped: "<Reason>: <message>"`` and the caller posts an Event.
A pod that already has the sidecar, or is not opted in, is left exactly as it is.
"""

from __future__ import annotations

import copy
import enum
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runlog_relay.config.crd import API_VERSION
from runlog_relay.config.models import MAX_STORE_NAME, StoreSpec
from runlog_relay.operator import podspec as ps
from runlog_relay.operator import reconcile as rc
from runlog_relay.operator.policy import EndpointPolicy
from runlog_relay.operator.settings import InjectionSettings, NativeSidecar

__all__ = [
    "CONTAINER_NAME",
    "DEFAULT_USER",
    "INJECTED_ANNOTATION",
    "INJECT_OPT_OUT",
    "LOGS_VOLUME",
    "METRICS_PORT",
    "METRICS_PORT_NAME",
    "MODE_ANNOTATION",
    "NAMESPACE_STORE_LABEL",
    "SKIPPED_ANNOTATION",
    "STORE_ANNOTATION",
    "STORE_LABEL",
    "VOLUME_ANNOTATION",
    "Decision",
    "Outcome",
    "SidecarMode",
    "StoreInfo",
    "VolumePlan",
    "apply_json_patch",
    "decide_injection",
    "failure_decision",
    "json_pointer",
    "missing_files",
    "opted_out",
    "plan_volume",
    "pod_event_manifest",
    "pod_opt_in",
    "store_spec_denial",
    "store_warnings",
]

STORE_LABEL = rc.STORE_LABEL
#: The same key, as a pod annotation, and as a namespace label naming its default store.
STORE_ANNOTATION = NAMESPACE_STORE_LABEL = STORE_LABEL
INJECT_OPT_OUT = "runlog-relay.dev/inject"
VOLUME_ANNOTATION = "runlog-relay.dev/volume"
MODE_ANNOTATION = "runlog-relay.dev/sidecar-mode"
INJECTED_ANNOTATION = "runlog-relay.dev/injected"
SKIPPED_ANNOTATION = "runlog-relay.dev/skipped"
#: Set by Argo (``main``) and many charts: the container that does the pod's work.
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

CONTAINER_NAME = "runlog-relay"
METRICS_PORT_NAME = "relay-metrics"
METRICS_PORT = 9464
#: The emptyDir added when no volume of the pod holds the log folder.
LOGS_VOLUME = "runlog-relay-logs"
DEFAULT_USER = ps.DEFAULT_USER
#: Seconds the kubelet needs besides the sidecar's own drain budget, to stop it cleanly.
_GRACE_MARGIN = 5.0
_DEFAULT_GRACE = 30.0
_ANNOTATION_LIMIT = 1024


class SidecarMode(enum.StrEnum):
    NATIVE = "native"
    """An init container with ``restartPolicy: Always`` (Kubernetes 1.29+): it starts
    before the pod's containers and is stopped after them, so Jobs complete."""
    CLASSIC = "classic"
    """A regular container, for clusters without native sidecars. A Job whose pod has
    one never completes by itself: use it for long-running pods."""


class Outcome(enum.StrEnum):
    INJECTED = "injected"
    SKIPPED = "skipped"
    """Opted in but not injected; the pod is annotated with the reason."""
    FAILED = "failed"
    """A bug or an API failure: the pod is let through unchanged but annotated."""
    UNCHANGED = "unchanged"
    """Not opted in, or the sidecar is already there: nothing to do, nothing to say."""


@dataclass(frozen=True)
class StoreInfo:
    """What the webhook needs to know about one RunLogStore (from the index or the API)."""

    namespace: str
    name: str
    spec: Mapping[str, Any]
    ready: str | None = None
    """``status`` of the Ready condition: True, False, Unknown; None before the first
    reconcile."""
    ready_reason: str | None = None
    files_ready: bool = False
    """The last reconcile found the ConfigMap written and the Secrets present
    (``ConfigRendered`` and ``SecretsAvailable`` True): a sidecar can start."""
    indexed_at: float = 0.0
    """When kopf's index took this entry (monotonic seconds): a standby replica's index
    is frozen, so the webhook uses an entry only if it is newer than the last standby."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, indexed_at: float = 0.0) -> StoreInfo:
        meta = body.get("metadata") or {}
        conditions = (body.get("status") or {}).get("conditions")
        ready = rc.condition(conditions, rc.READY)
        true = rc.ConditionStatus.TRUE.value
        return cls(
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            ready=ready.get("status"),
            ready_reason=ready.get("reason"),
            files_ready=ready.get("status") == true
            or all(
                rc.condition(conditions, kind).get("status") == true
                for kind in (rc.CONFIG_RENDERED, rc.SECRETS_AVAILABLE)
            ),
            indexed_at=indexed_at,
        )


@dataclass(frozen=True)
class Decision:
    """The webhook's answer for one pod."""

    outcome: Outcome
    ops: list[dict[str, Any]] = field(default_factory=list)
    """RFC 6902 operations against the pod as it was admitted."""
    store: str | None = None
    reason: str = ""
    """CamelCase reason (``StoreNotFound``), as in Events."""
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    """Admission warnings (shown by kubectl to whoever created the pod)."""

    @property
    def wants_event(self) -> bool:
        return self.outcome in (Outcome.SKIPPED, Outcome.FAILED)


@dataclass(frozen=True)
class VolumePlan:
    """Where the sidecar finds the run logs, and what the pod needs for that."""

    sidecar_mount: dict[str, Any]
    new_volume: dict[str, Any] | None = None
    """A volume to add to the pod (the emptyDir case)."""
    extra_mounts: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    """``(containers|initContainers, index, volumeMount)`` to add to the pod's containers."""
    writer: Mapping[str, Any] | None = None
    """The container whose mount was chosen (for the user and group to share)."""


class _Skip(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- JSON patch


def json_pointer(*parts: str | int) -> str:
    """An RFC 6901 pointer: ``~`` and ``/`` in a part are escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _parse_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"not a JSON pointer: {pointer!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def apply_json_patch(document: Any, ops: Iterable[Mapping[str, Any]]) -> Any:
    """Apply RFC 6902 ``add``, ``replace``, ``remove`` and ``test`` operations to a copy of
    ``document``; the result. Enough for the patches built here (and to check them)."""
    result = copy.deepcopy(document)
    for op in ops:
        parts = _parse_pointer(str(op["path"]))
        if not parts:
            if op["op"] in ("add", "replace"):
                result = copy.deepcopy(op["value"])
                continue
            raise ValueError(f"unsupported operation on the root: {op['op']}")
        parent: Any = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                if not 0 <= index <= len(parent):
                    raise IndexError(f"index {index} out of range at {op['path']}")
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[index]
            elif kind == "test":
                if parent[index] != op["value"]:
                    raise ValueError(f"test failed at {op['path']}")
            else:
                raise ValueError(f"unsupported operation {kind!r}")
        elif isinstance(parent, dict):
            if kind == "add":
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "replace":
                if last not in parent:
                    raise KeyError(f"nothing to replace at {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            elif kind == "test":
                if parent.get(last) != op["value"]:
                    raise ValueError(f"test failed at {op['path']}")
            else:
                raise ValueError(f"unsupported operation {kind!r}")
        else:
            raise TypeError(f"cannot apply {kind} at {op['path']}: parent is not a container")
    return result


def _annotation_ops(pod: Mapping[str, Any], values: Mapping[str, str]) -> list[dict[str, Any]]:
    current = (pod.get("metadata") or {}).get("annotations")
    if not values:
        return []
    if not isinstance(current, Mapping):
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(values)}]
    return [
        {"op": "add", "path": json_pointer("metadata", "annotations", key), "value": value}
        for key, value in values.items()
    ]


def _list_add_ops(
    obj: Mapping[str, Any], base: Sequence[str | int], key: str, items: Sequence[Any]
) -> list[dict[str, Any]]:
    """Append ``items`` to the list ``obj[key]`` (creating it when absent)."""
    if not items:
        return []
    if not isinstance(obj.get(key), list):
        return [{"op": "add", "path": json_pointer(*base, key), "value": list(items)}]
    return [{"op": "add", "path": json_pointer(*base, key, "-"), "value": item} for item in items]


# --------------------------------------------------------------------------- pods


def _containers(pod: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    items = spec.get(kind) or []
    return [c for c in items if isinstance(c, Mapping)]


def _has_sidecar(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("name") == CONTAINER_NAME
        for kind in ("containers", "initContainers")
        for c in _containers(pod, kind)
    )


def _covers(mount_path: str, folder: str) -> bool:
    mount = posixpath.normpath(mount_path or "/")
    return mount == "/" or folder == mount or folder.startswith(mount.rstrip("/") + "/")


def _location(mount: Mapping[str, Any], folder: str) -> str:
    """Where ``folder`` is inside the mounted volume (for comparing containers' views)."""
    relative = posixpath.relpath(folder, posixpath.normpath(str(mount.get("mountPath") or "/")))
    return posixpath.normpath(posixpath.join(str(mount.get("subPath") or ""), relative))


def _deepest_covering(container: Mapping[str, Any], folder: str) -> Mapping[str, Any] | None:
    """The mount a process in ``container`` writes ``folder`` through (the deepest one)."""
    best: Mapping[str, Any] | None = None
    for mount in container.get("volumeMounts") or []:
        if not isinstance(mount, Mapping) or not _covers(str(mount.get("mountPath", "")), folder):
            continue
        if best is None or len(posixpath.normpath(mount["mountPath"])) > len(
            posixpath.normpath(best["mountPath"])
        ):
            best = mount
    return best


def _sidecar_mount(mount: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": mount["name"],
        "mountPath": posixpath.normpath(str(mount["mountPath"])),
        "readOnly": True,
    }
    if mount.get("subPath"):
        result["subPath"] = mount["subPath"]
    return result


def _writers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The containers that may write run logs: the pod's default container when it names
    one (Argo's ``main``: its ``wait`` container has an emptyDir at ``/tmp`` of its own),
    else every regular container."""
    containers = [c for c in _containers(pod, "containers") if c.get("name") != CONTAINER_NAME]
    default = ((pod.get("metadata") or {}).get("annotations") or {}).get(
        DEFAULT_CONTAINER_ANNOTATION
    )
    chosen = [c for c in containers if default and c.get("name") == default]
    return chosen or containers


def _mount_everywhere(
    pod: Mapping[str, Any], volume: str, folder: str
) -> list[tuple[str, int, dict[str, Any]]]:
    """Mounts of ``volume`` at ``folder`` in every container (init ones too) of the pod."""
    mounts = []
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(_containers(pod, kind)):
            for mount in container.get("volumeMounts") or []:
                if posixpath.normpath(str(mount.get("mountPath", ""))) == folder:
                    raise _Skip(
                        "VolumeConflict",
                        f"container {container.get('name')!r} already mounts volume"
                        f" {mount.get('name')!r} at {folder}",
                    )
            mounts.append((kind, index, {"name": volume, "mountPath": folder}))
    return mounts


def plan_volume(
    pod: Mapping[str, Any], folder: str, *, size_limit: str | None = None
) -> VolumePlan:
    """Which volume holds the run logs in ``folder``, and how the sidecar mounts it.

    1. ``runlog-relay.dev/volume: NAME``: that volume. Mounted by a container at
       ``folder`` or above it: the sidecar mounts it at the same path (and subPath). Not
       mounted anywhere: it is mounted at ``folder`` in every container.
    2. Else the volume the writers (see :func:`_writers`) see ``folder`` through, when
       they agree on it; containers that see ``folder`` on their own root filesystem are
       ignored (a mesh proxy, say): the sidecar could not read it anyway.
    3. Else an emptyDir ``runlog-relay-logs`` (of ``size_limit``, so it counts against
       the node's ephemeral storage like any bounded volume), mounted at ``folder`` in
       every container.

    Raises ``_Skip`` when the answer is not clear: two volumes, a named volume that does
    not exist or is mounted elsewhere, a ``subPathExpr`` the sidecar cannot reproduce.
    """
    folder = posixpath.normpath(folder)
    volumes = {
        v.get("name"): v
        for v in (pod.get("spec") or {}).get("volumes") or []
        if isinstance(v, Mapping)
    }
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    named = annotations.get(VOLUME_ANNOTATION)
    every = [*_containers(pod, "containers"), *_containers(pod, "initContainers")]
    if named:
        if named not in volumes:
            raise _Skip(
                "VolumeNotFound",
                f"the pod has no volume {named!r} (annotation {VOLUME_ANNOTATION})",
            )
        users = [
            (c, m)
            for c in every
            for m in c.get("volumeMounts") or []
            if isinstance(m, Mapping) and m.get("name") == named
        ]
        if not users:
            return VolumePlan(
                sidecar_mount={"name": named, "mountPath": folder, "readOnly": True},
                extra_mounts=_mount_everywhere(pod, named, folder),
                writer=next(iter(_writers(pod)), None),
            )
        covering = [(c, m) for c, m in users if _covers(str(m.get("mountPath", "")), folder)]
        if not covering:
            where = ", ".join(f"{c.get('name')}:{m.get('mountPath')}" for c, m in users)
            raise _Skip(
                "VolumeNotAtLogFolder",
                f"volume {named!r} is mounted at {where}, which does not contain the store's"
                f" logFolder {folder}; set spec.logFolder to where runnable writes",
            )
        writers = {id(c) for c in _writers(pod)}
        covering.sort(key=lambda cm: id(cm[0]) not in writers)  # a writer's view first
        container, mount = covering[0]
        return _plan_from(container, mount)

    seen: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
    for writer in _writers(pod):
        deepest = _deepest_covering(writer, folder)
        if deepest is not None:
            seen.append((writer, deepest))
    if not seen:
        if LOGS_VOLUME in volumes:
            raise _Skip("VolumeConflict", f"the pod already has a volume named {LOGS_VOLUME!r}")
        return VolumePlan(
            sidecar_mount={"name": LOGS_VOLUME, "mountPath": folder, "readOnly": True},
            new_volume={
                "name": LOGS_VOLUME,
                "emptyDir": {"sizeLimit": size_limit} if size_limit else {},
            },
            extra_mounts=_mount_everywhere(pod, LOGS_VOLUME, folder),
            writer=next(iter(_writers(pod)), None),
        )
    views = {(m.get("name"), _location(m, folder)) for _, m in seen}
    if len(views) > 1:
        described = ", ".join(f"{c.get('name')} through volume {m.get('name')!r}" for c, m in seen)
        raise _Skip(
            "VolumeAmbiguous",
            f"containers see {folder} on different volumes ({described}); name the one"
            f" holding the run logs with the annotation {VOLUME_ANNOTATION}",
        )
    return _plan_from(*seen[0])


def _plan_from(container: Mapping[str, Any], mount: Mapping[str, Any]) -> VolumePlan:
    if mount.get("subPathExpr"):
        raise _Skip(
            "UnsupportedSubPathExpr",
            f"container {container.get('name')!r} mounts volume {mount.get('name')!r} with a"
            " subPathExpr, which the sidecar cannot reproduce",
        )
    return VolumePlan(sidecar_mount=_sidecar_mount(mount), writer=container)


def _used_ports(pod: Mapping[str, Any]) -> set[int]:
    ports = set()
    for kind in ("containers", "initContainers"):
        for container in _containers(pod, kind):
            for port in container.get("ports") or []:
                if isinstance(port, Mapping) and isinstance(port.get("containerPort"), int):
                    ports.add(port["containerPort"])
    return ports


def _metrics_port(pod: Mapping[str, Any]) -> int:
    """9464, unless a container of the pod declares it (the pod shares one network)."""
    used = _used_ports(pod)
    port = METRICS_PORT
    while port in used:
        port += 1
    return port


def sidecar_container(
    spec: StoreSpec,
    *,
    store: str,
    plan: VolumePlan,
    pod: Mapping[str, Any],
    mode: SidecarMode,
    options: InjectionSettings,
    image: str,
    resources: Mapping[str, Any],
    runs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``runlog-relay`` container for ``pod``. ``runs``: the run ids it mirrors
    (None: every run on the volume)."""
    _, config_mounts = rc.pod_volumes(spec, store=store)
    port = _metrics_port(pod)
    env = [{"name": "RUNLOG_RELAY_METRICS_PORT", "value": str(port)}]
    if runs:
        env.append({"name": "RUNLOG_RELAY_RUN_IDS", "value": ",".join(runs)})
    if mode is SidecarMode.CLASSIC:
        # A plain container keeps a Job's pod running: it exits once its runs are sealed
        # and the pod's work is done. A retry's run is final before the pod writes it:
        # the sidecar must know to wait for the retry.
        env.append({"name": "RUNLOG_RELAY_EXIT_WHEN_SEALED", "value": "true"})
        retried = ps.retry_run_id(_writers(pod))
        if retried:
            env.append({"name": "RUNNABLE_RETRY_RUN_ID", "value": retried})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": ["runlog-relay"],
        "args": ["sidecar", "--config", rc.CONFIG_FILE],
        "env": env,
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "resources": copy.deepcopy(dict(resources)),
        "securityContext": ps.security_context(pod, plan.writer, openshift=options.openshift),
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # Read-only, unless local retention deletes sealed runs from the volume.
        "volumeMounts": [
            {**plan.sidecar_mount, "readOnly": not spec.local_retention.deletes},
            *config_mounts,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if mode is SidecarMode.NATIVE:
        container["restartPolicy"] = "Always"
    return container


def _pod_volumes(spec: StoreSpec, store: str) -> list[dict[str, Any]]:
    """The ConfigMap and Secret volumes, optional: a store whose ConfigMap or Secret does
    not exist (yet) must not keep the pod from starting; the sidecar waits instead."""
    volumes, _ = rc.pod_volumes(spec, store=store)
    for volume in volumes:
        for source in ("configMap", "secret"):
            if source in volume:
                volume[source]["optional"] = True
    return volumes


def _mode(
    annotations: Mapping[str, Any], options: InjectionSettings, native: bool | None
) -> SidecarMode:
    """The pod's annotation, else the setting; ``auto`` follows what the cluster runs
    (``native``: see :mod:`.cluster`; unknown means classic, which every cluster takes)."""
    raw = annotations.get(MODE_ANNOTATION)
    if raw is not None:
        try:
            return SidecarMode(str(raw).strip().lower())
        except ValueError:
            raise _Skip(
                "InvalidAnnotation",
                f"{MODE_ANNOTATION} must be 'native' or 'classic', not {str(raw)[:40]!r}",
            ) from None
    if options.native_sidecar is NativeSidecar.ALWAYS:
        return SidecarMode.NATIVE
    if options.native_sidecar is NativeSidecar.NEVER:
        return SidecarMode.CLASSIC
    return SidecarMode.NATIVE if native else SidecarMode.CLASSIC


def _skipped(
    pod: Mapping[str, Any], reason: str, message: str, *, store: str | None, outcome: Outcome
) -> Decision:
    text = f"{reason}: {message}"[:_ANNOTATION_LIMIT]
    return Decision(
        outcome=outcome,
        ops=_annotation_ops(pod, {SKIPPED_ANNOTATION: text}),
        store=store,
        reason=reason,
        message=message,
        warnings=[f"runlog-relay sidecar not injected: {message}"],
    )


def failure_decision(pod: Mapping[str, Any], store: str | None, message: str) -> Decision:
    """The answer when something went wrong: the pod unchanged but for the annotation."""
    try:
        return _skipped(pod, "InjectionFailed", message, store=store, outcome=Outcome.FAILED)
    except Exception:  # a pod too odd even to annotate: let it through untouched
        return Decision(
            outcome=Outcome.FAILED, store=store, reason="InjectionFailed", message=message
        )


def _metadata_value(obj: Mapping[str, Any], kind: str, key: str) -> str | None:
    values = (obj.get("metadata") or {}).get(kind) or {}
    value = values.get(key) if isinstance(values, Mapping) else None
    return str(value) if value else None


def pod_opt_in(pod: Mapping[str, Any]) -> str | None:
    """The store a pod asks for itself: its label, else its annotation (runnable's
    K8sJobExecutor lets users set only annotations on the pod template)."""
    return _metadata_value(pod, "labels", STORE_LABEL) or _metadata_value(
        pod, "annotations", STORE_ANNOTATION
    )


def opted_out(pod: Mapping[str, Any]) -> bool:
    """``runlog-relay.dev/inject: "false"`` (label or annotation): never this pod, even
    in a namespace that opts every pod in."""
    for kind in ("labels", "annotations"):
        value = _metadata_value(pod, kind, INJECT_OPT_OUT)
        if value is not None and value.strip().lower() in ("false", "no", "off", "disabled"):
            return True
    return False


def already_injected(pod: Mapping[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return _has_sidecar(pod) or INJECTED_ANNOTATION in annotations


def missing_files(
    spec: StoreSpec,
    *,
    store: str,
    configmap: Mapping[str, Any] | None,
    secrets: Mapping[str, Mapping[str, bytes] | None],
) -> list[str]:
    """What the sidecar would need at start and does not exist: the store's ConfigMap
    (``configmap`` None) and each referenced Secret or key (``secrets[name]`` None when
    the Secret does not exist)."""
    missing = []
    if configmap is None or rc.CONFIG_KEY not in (configmap.get("data") or {}):
        missing.append(f"ConfigMap {rc.configmap_name(store)!r}")
    refs = [(use.secret, use.key) for use in rc.secret_key_uses(spec)]
    for secret, key in refs:
        data = secrets.get(secret)
        if data is None:
            what = f"Secret {secret!r}"
        elif key not in data:
            what = f"key {key!r} of Secret {secret!r}"
        else:
            continue
        if what not in missing:
            missing.append(what)
    return missing


def decide_injection(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    store: StoreInfo | None,
    options: InjectionSettings,
    missing: Sequence[str] = (),
    policy: EndpointPolicy | None = None,
    store_name: str | None = None,
    native: bool | None = None,
) -> Decision:
    """The patch for an admitted pod.

    ``store_name``: the store the pod opted into (:func:`pod_opt_in`, or its namespace's
    label; default: the pod's own); ``store``: that RunLogStore, looked up in the pod's
    own ``namespace`` (None when there is none); ``missing``: what the sidecar needs and
    does not exist (:func:`missing_files`); ``native``: whether the cluster runs native
    sidecars (:mod:`.cluster`; None: unknown).

    A store that is not Ready is injected (by default): the sidecar waits for the
    bucket and retries, nothing is lost. That includes a store whose ConfigMap or Secret
    does not exist yet: their volumes are optional, and the sidecar, started without
    them, stays up (so the kubelet starts the pod's other containers) and begins
    mirroring once the kubelet delivers them."""
    name = store_name if store_name is not None else pod_opt_in(pod)
    if name is None or already_injected(pod) or opted_out(pod):
        return Decision(outcome=Outcome.UNCHANGED, store=name)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    pod_spec = pod.get("spec") or {}
    if ps.is_windows(pod):
        return _skipped(
            pod,
            "WindowsPod",
            "the runlog-relay sidecar runs on Linux nodes only",
            store=name,
            outcome=Outcome.SKIPPED,
        )
    wants_host = str(annotations.get(ps.HOST_NETWORK_ANNOTATION, "")).strip() == "inject"
    if pod_spec.get("hostNetwork") and not (options.host_network or wants_host):
        return _skipped(
            pod,
            "HostNetwork",
            "the pod uses the node's network: the sidecar's metrics port would be on the"
            f" node and may clash (annotate {ps.HOST_NETWORK_ANNOTATION}: inject to have it)",
            store=name,
            outcome=Outcome.SKIPPED,
        )
    if store is None or store.namespace != namespace or store.name != name:
        return _skipped(
            pod,
            "StoreNotFound",
            f"RunLogStore {name!r} not found in namespace {namespace!r} (a pod only gets a"
            " store of its own namespace)",
            store=name,
            outcome=Outcome.SKIPPED,
        )
    try:
        spec = rc.parse_spec(store.spec)
    except rc.SpecError as exc:
        return _skipped(
            pod, "StoreInvalid", f"RunLogStore {name!r}: {exc}", store=name, outcome=Outcome.SKIPPED
        )
    if rc.too_long(name):
        return _skipped(
            pod,
            "StoreInvalid",
            f"RunLogStore name {name[:70]!r}... is longer than {MAX_STORE_NAME} characters",
            store=name,
            outcome=Outcome.SKIPPED,
        )
    denial = (policy or EndpointPolicy()).denial(spec.endpoint)
    if denial is not None:  # no sidecar sends credentials there either
        return _skipped(pod, "EndpointNotAllowed", denial, store=name, outcome=Outcome.SKIPPED)
    warnings: list[str] = []
    if missing:
        if not options.inject_when_not_ready:
            return _skipped(
                pod,
                "StoreNotReady",
                f"RunLogStore {name!r} is not ready for sidecars: {', '.join(missing)} does"
                " not exist (yet) and the operator runs with --no-inject-when-not-ready",
                store=name,
                outcome=Outcome.SKIPPED,
            )
        warnings.append(
            f"RunLogStore {name!r}: {', '.join(missing)} does not exist yet; the"
            " runlog-relay sidecar waits for it and starts mirroring once it exists"
        )
    if store.ready != rc.ConditionStatus.TRUE.value:
        state = f"Ready={store.ready or 'Unknown'}" + (
            f" ({store.ready_reason})" if store.ready_reason else ""
        )
        if not options.inject_when_not_ready:
            return _skipped(
                pod,
                "StoreNotReady",
                f"RunLogStore {name!r} is not Ready ({state}) and the operator runs with"
                " --no-inject-when-not-ready",
                store=name,
                outcome=Outcome.SKIPPED,
            )
        warnings.append(
            f"RunLogStore {name!r} is not Ready ({state}); the runlog-relay sidecar is"
            " injected and uploads once it is"
        )
    init = _containers(pod, "initContainers")
    try:
        mode = _mode(annotations, options, native)
        plan = plan_volume(pod, spec.log_folder, size_limit=options.logs_volume_size_limit)
        volumes = _pod_volumes(spec, name)
        existing = {
            str(v.get("name"))
            for v in (pod.get("spec") or {}).get("volumes") or []
            if isinstance(v, Mapping)
        }
        clash = sorted(existing & {v["name"] for v in volumes})
        if clash:
            raise _Skip("VolumeConflict", f"the pod already has a volume named {clash[0]!r}")
        image = ps.image_for(annotations, options)
        runs = ps.run_ids(annotations, _writers(pod))
        others = [*init, *_containers(pod, "containers")]
        resources = ps.sidecar_resources(annotations, options.resources, others)
        position = ps.native_position(init, annotations) if mode is SidecarMode.NATIVE else 0
    except ps.InvalidAnnotation as exc:
        return _skipped(pod, "InvalidAnnotation", str(exc), store=name, outcome=Outcome.SKIPPED)
    except _Skip as skip:
        return _skipped(pod, skip.reason, skip.message, store=name, outcome=Outcome.SKIPPED)

    container = sidecar_container(
        spec,
        store=name,
        plan=plan,
        pod=pod,
        mode=mode,
        options=options,
        image=image,
        resources=resources,
        runs=runs,
    )
    ops: list[dict[str, Any]] = []
    added = {INJECTED_ANNOTATION: name}
    if options.scrape_annotations and not any(k.startswith("prometheus.io/") for k in annotations):
        added.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(container["ports"][0]["containerPort"]),
                "prometheus.io/path": "/metrics",
            }
        )
    ops += _annotation_ops(pod, added)
    ops += _list_add_ops(
        pod_spec, ["spec"], "volumes", [*([plan.new_volume] if plan.new_volume else []), *volumes]
    )
    for kind, index, mount in plan.extra_mounts:
        ops += _list_add_ops(
            _containers(pod, kind)[index], ["spec", kind, index], "volumeMounts", [mount]
        )
    if mode is SidecarMode.NATIVE:
        if isinstance(pod_spec.get("initContainers"), list):
            path = json_pointer("spec", "initContainers", position)
            ops.append({"op": "add", "path": path, "value": container})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    else:
        ops += _list_add_ops(pod_spec, ["spec"], "containers", [container])
        if not runs and pod_spec.get("restartPolicy") in ("Never", "OnFailure"):
            warnings.append(
                "classic sidecar without the pod's run ids: it cannot tell when the pod's"
                f" runs are sealed and keeps the pod running; set {ps.RUN_IDS_ANNOTATION}"
            )
    have = {
        str(s.get("name")) for s in pod_spec.get("imagePullSecrets") or [] if isinstance(s, Mapping)
    }
    pull = [{"name": n} for n in options.image_pull_secrets if n not in have]
    ops += _list_add_ops(pod_spec, ["spec"], "imagePullSecrets", pull)

    grace = pod_spec.get("terminationGracePeriodSeconds")
    grace = float(grace) if isinstance(grace, int | float) else _DEFAULT_GRACE
    if grace < spec.sync.drain_timeout_seconds + _GRACE_MARGIN:
        warnings.append(
            f"terminationGracePeriodSeconds {grace:g} leaves the sidecar less than its drain"
            f" budget (sync.drainTimeoutSeconds {spec.sync.drain_timeout_seconds:g} +"
            f" {_GRACE_MARGIN:g}s): uploads pending at shutdown may be cut short"
        )
    scope = f"runs {', '.join(runs)}" if runs else "every run on the volume"
    return Decision(
        outcome=Outcome.INJECTED,
        ops=ops,
        store=name,
        reason="Injected",
        message=f"runlog-relay sidecar ({mode.value}, {scope}) injected for RunLogStore {name!r}",
        warnings=warnings,
    )


def pod_event_manifest(
    decision: Decision,
    pod: Mapping[str, Any],
    *,
    namespace: str,
    now: datetime,
    instance: str,
) -> dict[str, Any]:
    """A Warning Event about a pod the webhook did not inject.

    At admission a pod usually has no uid and often no name yet (``generateName``), and
    ``kubectl describe`` only shows Events whose uid matches, so the Event goes to the
    pod's controller when it has one (a Job, a ReplicaSet, an Argo Workflow) -- whose
    name and uid the pod carries -- and to the pod by name otherwise."""
    meta = pod.get("metadata") or {}
    pod_name = meta.get("name") or f"{meta.get('generateName') or ''}<generated>"
    owner = next(
        (
            ref
            for ref in meta.get("ownerReferences") or []
            if isinstance(ref, Mapping) and ref.get("controller") and ref.get("name")
        ),
        None,
    )
    involved: dict[str, Any]
    if owner is not None:
        involved = {
            "apiVersion": owner.get("apiVersion"),
            "kind": owner.get("kind"),
            "name": owner.get("name"),
            "namespace": namespace,
        }
        if owner.get("uid"):
            involved["uid"] = owner["uid"]
        message = f"pod {pod_name}: {decision.message}"
    else:
        involved = {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "namespace": namespace}
        message = decision.message
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    nanos = int(now.timestamp() * 1_000_000_000)
    base = re.sub(r"[^a-z0-9.-]", "-", str(involved["name"]).lower()).strip(".-")[:200] or "pod"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{base}.{nanos:x}", "namespace": namespace},
        "involvedObject": involved,
        "type": "Warning",
        "reason": f"RunLogRelay{decision.reason}",
        "message": message.encode("utf-8")[:1000].decode("utf-8", "ignore"),
        "source": {"component": rc.MANAGED_BY},
        "reportingComponent": f"{API_VERSION.split('/')[0]}/webhook",
        "reportingInstance": instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


# --------------------------------------------------------------------------- stores


def store_spec_denial(
    spec: Mapping[str, Any] | None,
    old_spec: Mapping[str, Any] | None,
    *,
    operation: str,
    name: str,
) -> str | None:
    """Why a RunLogStore CREATE/UPDATE must be refused, or None.

    Only what the CRD's schema cannot say: the model's own validators (no credentials in
    the endpoint URL, a valid port, no ``..`` in the prefix, a log folder clear of the
    sidecar's mounts) and a name short enough to be a label value (pods name their store
    in one, and its ConfigMap carries it in one). An UPDATE that leaves the spec as it was
    is never refused, so kopf's and kubectl's metadata writes go through even on a store
    that was invalid already."""
    if operation not in ("CREATE", "UPDATE"):
        return None
    if operation == "UPDATE" and dict(spec or {}) == dict(old_spec or {}):
        return None
    if operation == "CREATE" and rc.too_long(name):
        return (
            f"RunLogStore name {name[:70]!r}... is longer than {MAX_STORE_NAME} characters:"
            " pods name their store in a label, which cannot hold more"
        )
    try:
        rc.parse_spec(spec)
    except rc.SpecError as exc:
        return str(exc)
    return None


def store_warnings(
    spec: StoreSpec,
    *,
    namespace: str,
    secrets: Mapping[str, Mapping[str, bytes] | Exception | None],
) -> list[str]:
    """Admission warnings about the Secrets a valid spec references: each missing Secret
    or key, by name and field. ``secrets[name]`` is the decoded data, None when the
    Secret does not exist, or the error that kept it from being read.

    Warnings, not a denial: creating a store before its Secret is the normal order of a
    GitOps sync, and the store turns Ready by itself once the Secret appears."""
    refs = [(u.secret, u.key, u.field, u.key_field) for u in rc.secret_key_uses(spec)]
    warnings: list[str] = []
    reported: set[str] = set()
    for secret, key, ref_field, key_field in refs:
        data = secrets.get(secret)
        if isinstance(data, Exception):
            if secret not in reported:
                warnings.append(f"could not check Secret {secret!r} ({ref_field}.name): {data}")
                reported.add(secret)
        elif data is None:
            if secret not in reported:
                warnings.append(
                    f"Secret {secret!r} not found in namespace {namespace!r} ({ref_field}.name);"
                    " the store stays NotReady until it exists"
                )
                reported.add(secret)
        elif key not in data:
            warnings.append(
                f"Secret {secret!r} has no key {key!r} ({ref_field}.{key_field}); the store"
                " stays NotReady until it does"
            )
    return warnings
