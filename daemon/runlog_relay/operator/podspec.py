"""The injected sidecar's shape in one given pod: pure helpers of :mod:`.webhook`.

What a pod says about how its sidecar should look -- by its own fields, by the
annotations its author may set, and by what its neighbours in the pod need -- decided
here without I/O:

- **run ids** (:func:`run_ids`): the runs the pod writes, so a per-pod sidecar mirrors
  only those (``RUNLOG_RELAY_RUN_IDS``). From ``runlog-relay.dev/run-ids``, from the
  writer's ``RUNNABLE_RUN_ID``, or from its command line: runnable's executors run
  ``runnable execute-job <file> <run id>`` (k8s-job) and ``runnable execute-single-node
  <run id> ...`` / ``runnable fan <run id> ...`` (Argo, after the controller has
  substituted ``{{workflow.parameters.run_id}}`` and put ``argoexec emissary --`` in
  front). The Job of runnable's K8sJobExecutor is also named after the run id, but a
  CronJob's Jobs are not, so the name label is not used: a wrong id would mirror nothing.
- **resources** (:func:`sidecar_resources`): the configured ones, per-pod annotations
  over them, and requests = limits in a pod whose every container has requests = limits
  (Guaranteed QoS: one Burstable container would demote the whole pod and cost it its
  exclusive CPUs). runnable's K8sJobExecutor sets only limits, so its pods are Guaranteed.
- **placement** (:func:`native_position`): after the pod's existing native sidecars
  (Istio's ``istio-proxy``, say): native sidecars start in order and stop in reverse, so
  ours stops before the mesh proxy and its final uploads still have a network.
- **security context** (:func:`security_context`) and the image a pod may ask for.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from runlog_relay.operator.settings import InjectionSettings, validate_resources

__all__ = [
    "AFTER_ANNOTATION",
    "DEFAULT_USER",
    "HOST_NETWORK_ANNOTATION",
    "IMAGE_ANNOTATION",
    "RESOURCE_ANNOTATIONS",
    "RUN_IDS_ANNOTATION",
    "InvalidAnnotation",
    "guaranteed",
    "image_for",
    "is_windows",
    "native_position",
    "parse_quantity",
    "run_ids",
    "security_context",
    "sidecar_resources",
]

RUN_IDS_ANNOTATION = "runlog-relay.dev/run-ids"
IMAGE_ANNOTATION = "runlog-relay.dev/sidecar-image"
AFTER_ANNOTATION = "runlog-relay.dev/sidecar-after"
HOST_NETWORK_ANNOTATION = "runlog-relay.dev/host-network"
#: (requests|limits, resource) → the annotation that sets it for one pod.
RESOURCE_ANNOTATIONS: Mapping[tuple[str, str], str] = {
    ("requests", "cpu"): "runlog-relay.dev/sidecar-cpu-request",
    ("requests", "memory"): "runlog-relay.dev/sidecar-memory-request",
    ("limits", "cpu"): "runlog-relay.dev/sidecar-cpu-limit",
    ("limits", "memory"): "runlog-relay.dev/sidecar-memory-limit",
}
#: The conventional "nonroot" uid/gid of distroless-style images; used when the pod does
#: not run its writer as a non-root user we could share.
DEFAULT_USER = 65532
#: What a run id looks like once substituted (runnable's own are words and digits).
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
#: runnable's subcommand → the index of the run id among its positional arguments.
_RUN_ID_POSITION = {"execute-job": 1, "execute-single-node": 0, "fan": 0}
#: runnable options that take a value (their value is not a positional argument).
_VALUED_OPTIONS = frozenset(
    {"--log-level", "--config", "--config-file", "--parameters", "--tag", "--iter-variable",
     "--mode", "--run-id"}
)  # fmt: skip


class InvalidAnnotation(ValueError):
    """A pod annotation of ours does not parse; the message names it."""


# --------------------------------------------------------------------------- run ids


def _runnable_argv(argv: Sequence[str]) -> list[str]:
    """The runnable command in a container's argv, past Argo's ``argoexec emissary ...
    --`` wrapper; [] when it runs something else."""
    argv = [str(a) for a in argv]
    if "emissary" in argv and "--" in argv[argv.index("emissary") :]:
        argv = argv[argv.index("--", argv.index("emissary")) + 1 :]
    for index, token in enumerate(argv):
        if token.rsplit("/", 1)[-1] == "runnable":
            return argv[index:]
    return []


def _run_id_from_argv(argv: Sequence[str]) -> str | None:
    command = _runnable_argv(argv)
    if len(command) < 2 or command[1] not in _RUN_ID_POSITION:
        return None
    positional: list[str] = []
    skip = False
    for token in command[2:]:
        if skip:
            skip = False
        elif token.startswith("--"):
            skip = token in _VALUED_OPTIONS  # "--opt value"; "--opt=value" is one token
        elif not token.startswith("-"):
            positional.append(token)
    wanted = _RUN_ID_POSITION[command[1]]
    candidate = positional[wanted] if len(positional) > wanted else None
    return candidate if candidate and _RUN_ID.match(candidate) else None


def run_ids(
    annotations: Mapping[str, Any], writers: Sequence[Mapping[str, Any]]
) -> tuple[str, ...] | None:
    """The runs the pod writes, in order; None when unknown or ``*`` (every run)."""
    annotated = annotations.get(RUN_IDS_ANNOTATION)
    if annotated is not None:
        ids = [part.strip() for part in str(annotated).split(",") if part.strip()]
        if ids == ["*"]:
            return None
        bad = [i for i in ids if not _RUN_ID.match(i)]
        if bad or not ids:
            raise InvalidAnnotation(
                f"{RUN_IDS_ANNOTATION} must be run ids separated by commas, or '*';"
                f" got {str(annotated)[:60]!r}"
            )
        return tuple(dict.fromkeys(ids))
    found: list[str] = []
    for container in writers:
        for env in container.get("env") or []:
            if isinstance(env, Mapping) and env.get("name") == "RUNNABLE_RUN_ID":
                value = env.get("value")
                if isinstance(value, str) and _RUN_ID.match(value):
                    found.append(value)
        from_argv = _run_id_from_argv(
            [*(container.get("command") or []), *(container.get("args") or [])]
        )
        if from_argv:
            found.append(from_argv)
    return tuple(dict.fromkeys(found)) or None


def retry_run_id(writers: Sequence[Mapping[str, Any]]) -> str | None:
    """The run the pod retries: a writer's ``RUNNABLE_RETRY_RUN_ID`` (runnable's retry;
    Argo fills it from the workflow's ``retry_run_id`` parameter, empty when not a retry)."""
    for container in writers:
        for env in container.get("env") or []:
            if isinstance(env, Mapping) and env.get("name") == "RUNNABLE_RETRY_RUN_ID":
                value = env.get("value")
                if isinstance(value, str) and _RUN_ID.match(value):
                    return value
    return None


# --------------------------------------------------------------------------- resources

_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$"
)


def parse_quantity(text: Any) -> Decimal:
    """A Kubernetes quantity (``250m``, ``1Gi``, ``0.5``) as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]
    except InvalidOperation as exc:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from exc


def _effective(container: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = container.get("resources") or {}
    limits = dict(resources.get("limits") or {})
    requests = {**limits, **(resources.get("requests") or {})}  # requests default to limits
    return requests, limits


def guaranteed(containers: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a pod with these containers is Guaranteed QoS: each has CPU and memory
    limits, and requests equal to them."""
    if not containers:
        return False
    for container in containers:
        requests, limits = _effective(container)
        for resource in ("cpu", "memory"):
            if resource not in limits:
                return False
            try:
                if parse_quantity(requests[resource]) != parse_quantity(limits[resource]):
                    return False
            except ValueError:
                return False
    return True


def sidecar_resources(
    annotations: Mapping[str, Any],
    configured: Mapping[str, Mapping[str, str]],
    containers: Sequence[Mapping[str, Any]],
) -> dict[str, dict[str, str]]:
    """The sidecar's ResourceRequirements for a pod: ``configured``, then the pod's
    annotations, then requests = limits when every other container of the pod has them
    equal (the pod stays Guaranteed)."""
    resources = {part: dict(values) for part, values in configured.items()}
    for (part, resource), key in RESOURCE_ANNOTATIONS.items():
        if key in annotations:
            try:
                parse_quantity(annotations[key])
            except ValueError:
                raise InvalidAnnotation(
                    f"{key} is not a Kubernetes quantity: {str(annotations[key])[:40]!r}"
                ) from None
            resources.setdefault(part, {})[resource] = str(annotations[key])
    if guaranteed(containers):
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        equal = {r: limits.get(r) or requests.get(r) for r in ("cpu", "memory")}
        if all(equal.values()):
            resources = {"requests": dict(equal), "limits": dict(equal)}  # type: ignore[arg-type]
    else:
        _check_request_fits(resources)
    return validate_resources(resources)


def _check_request_fits(resources: Mapping[str, Mapping[str, str]]) -> None:
    """An annotation must not make a request exceed its limit (the API server refuses)."""
    for resource, limit in (resources.get("limits") or {}).items():
        request = (resources.get("requests") or {}).get(resource)
        if request is not None and parse_quantity(request) > parse_quantity(limit):
            raise InvalidAnnotation(
                f"the sidecar's {resource} request {request} exceeds its limit {limit}"
                " (set both with the runlog-relay.dev/sidecar-* annotations)"
            )


def image_for(annotations: Mapping[str, Any], options: InjectionSettings) -> str:
    """The configured image, or the one the pod asks for if the operator allows it."""
    wanted = annotations.get(IMAGE_ANNOTATION)
    if wanted is None:
        return options.image
    wanted = str(wanted).strip()
    allowed = options.allowed_images or [_repository(options.image) + "*"]
    if any(fnmatch.fnmatchcase(wanted, pattern) for pattern in allowed):
        return wanted
    raise InvalidAnnotation(
        f"{IMAGE_ANNOTATION} {wanted[:100]!r} is not an image the operator allows"
        f" ({', '.join(allowed)})"
    )


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


# --------------------------------------------------------------------------- placement


def native_position(
    init_containers: Sequence[Mapping[str, Any]], annotations: Mapping[str, Any]
) -> int:
    """Where the native sidecar goes among ``initContainers``: after the container the
    ``runlog-relay.dev/sidecar-after`` annotation names (``first``: at the start), else
    after the last native sidecar already there, else first (so it runs while the other
    init containers do)."""
    after = annotations.get(AFTER_ANNOTATION)
    names = [str(c.get("name")) for c in init_containers]
    if after is not None:
        after = str(after).strip()
        if after == "first":
            return 0
        if after not in names:
            raise InvalidAnnotation(
                f"{AFTER_ANNOTATION} names {after[:63]!r}, which is not an init container of"
                f" the pod ({', '.join(names) or 'it has none'})"
            )
        return names.index(after) + 1
    natives = [i for i, c in enumerate(init_containers) if c.get("restartPolicy") == "Always"]
    return natives[-1] + 1 if natives else 0


def is_windows(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    os_name = ((spec.get("os") or {}).get("name") or "").lower()
    selector = (spec.get("nodeSelector") or {}).get("kubernetes.io/os", "")
    return os_name == "windows" or str(selector).lower() == "windows"


def security_context(
    pod: Mapping[str, Any], writer: Mapping[str, Any] | None, *, openshift: bool
) -> dict[str, Any]:
    """The restricted profile, running as the writer's user and group when those are
    explicit and not root, so files it wrote 0600/0640 are readable too; else 65532.
    OpenShift assigns each namespace's pods a user from its range and refuses others:
    there, no user or group is fixed unless the writer fixes its own."""
    pod_context = (pod.get("spec") or {}).get("securityContext") or {}
    own = (writer or {}).get("securityContext") or {}

    def explicit(key: str) -> int | None:
        value = own.get(key, pod_context.get(key))
        return (
            value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
        )

    context: dict[str, Any] = {"runAsNonRoot": True}
    for key in ("runAsUser", "runAsGroup"):
        value = explicit(key)
        if value is not None:
            context[key] = value
        elif not openshift:
            context[key] = DEFAULT_USER
    context.update(
        {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    )
    return context
