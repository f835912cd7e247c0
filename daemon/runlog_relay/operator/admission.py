"""The admission webhooks' I/O: find the store, read Secrets, post Events, count.

:mod:`.handlers` registers kopf's admission handlers (``mutate-pods`` and
``validate-runlogstores``) and delegates to :class:`Admission`; the decisions themselves
are pure (:mod:`.webhook`). Like :mod:`.controller`, this module imports no kopf, so the
unit tests drive it with a fake API.

Never in the way of a pod: nothing here raises into a denial. A bug, a slow or failing
API call lets the pod through unchanged, annotated with what went wrong, with a Warning
Event and ``runlog_relay_operator_injections_total{result="failed"}``. RunLogStores are
denied for a spec the model rejects, an endpoint outside the allow-list, and Secrets
their author may not read (:meth:`Admission.validate_store`).

Stores come from the operator's kopf index (no API call per pod); a store missing there
is looked up once through the API before the pod is declared store-less, because the
index lags a store created a moment before its pods, and is empty for a moment after
the operator starts. A standby replica (kopf peering) has a frozen index: it answers
from the API, and so does a replica just promoted, for entries older than its promotion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from runlog_relay.config.models import StoreSpec
from runlog_relay.errors import RelayError
from runlog_relay.metrics import OperatorMetrics
from runlog_relay.operator import reconcile as rc
from runlog_relay.operator import webhook as wh
from runlog_relay.operator.cluster import ClusterVersions
from runlog_relay.operator.kubeapi import (
    configmap_path,
    event_path,
    namespace_path,
    secret_path,
    store_path,
)
from runlog_relay.operator.policy import EndpointPolicy, credential_exposure
from runlog_relay.operator.settings import InjectionSettings

__all__ = ["SUBJECT_ACCESS_REVIEWS", "Admission", "AdmissionApi", "Denial", "StoreIndex"]

#: How long a namespace's default store (its label) is remembered, in seconds.
_NAMESPACE_TTL = 10.0
#: Where a SubjectAccessReview is posted (cluster-scoped, answered, never stored).
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

log = logging.getLogger(__name__)

#: ``(namespace, name)`` → the indexed stores (kopf's index: a collection per key).
StoreIndex = Mapping[tuple[str, str], Iterable[wh.StoreInfo]]


class AdmissionApi(Protocol):
    """What the webhooks need from :class:`~.kubeapi.KubeApi` (tests pass a fake)."""

    async def get(self, path: str) -> dict[str, Any] | None: ...
    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Denial:
    """A refused admission: what the requester reads, and the HTTP code."""

    message: str
    code: int


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _summary(exc: BaseException) -> str:
    """An error for an annotation or Event: our own errors say what failed; anything else
    is a bug, named by its type only (its text could quote the pod)."""
    if isinstance(exc, RelayError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "the Kubernetes API did not answer in time"
    return f"internal error ({type(exc).__name__}); see the operator log"


class Admission:
    def __init__(
        self,
        api: AdmissionApi,
        metrics: OperatorMetrics,
        *,
        options: InjectionSettings | None = None,
        instance: str = "runlog-relay-operator",
        lookup_timeout: float = 3.0,
        fresh: Callable[[float], bool] = lambda indexed_at: True,
        policy: EndpointPolicy | None = None,
        cluster: ClusterVersions | None = None,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``lookup_timeout``: seconds for the API calls of one admission request, below
        the API server's own timeout (:attr:`~.settings.WebhookSettings.lookup_budget`),
        so a slow API still gets the pod its ``InjectionFailed`` annotation.
        ``fresh(indexed_at)``: whether an index entry reflects the cluster
        (:meth:`~.leadership.Leadership.fresh`); a stale one is read from the API."""
        self._api = api
        self._metrics = metrics
        self.options = options or InjectionSettings()
        self._instance = instance
        self._timeout = lookup_timeout
        self._fresh = fresh
        self._policy = policy or EndpointPolicy()
        self._cluster = cluster
        self._monotonic = monotonic
        self._namespaces: dict[str, tuple[str | None, float]] = {}
        self._clock = clock
        self._pending: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ pods

    async def mutate_pod(
        self,
        pod: Mapping[str, Any],
        *,
        namespace: str,
        stores: StoreIndex | None = None,
        dryrun: bool = False,
    ) -> wh.Decision:
        """The decision for one pod CREATE; Events are posted in the background."""
        name: str | None = None
        try:
            name = wh.pod_opt_in(pod)
            if wh.already_injected(pod) or wh.opted_out(pod):
                return wh.Decision(outcome=wh.Outcome.UNCHANGED, store=name)
            async with asyncio.timeout(self._timeout):
                if name is None:  # sent for its namespace's label (webhook `namespace-pods`)
                    name = await self._namespace_store(namespace)
                    if name is None:
                        return wh.Decision(outcome=wh.Outcome.UNCHANGED)
                store, missing = await self._find_store(namespace, name, stores)
            decision = wh.decide_injection(
                pod,
                namespace=namespace,
                store=store,
                options=self.options,
                missing=missing,
                policy=self._policy,
                store_name=name,
                native=self._cluster.native_sidecars if self._cluster is not None else None,
            )
            wh.apply_json_patch(pod, decision.ops)  # it must apply, or it is not sent
        except Exception as exc:
            if isinstance(exc, RelayError | TimeoutError):
                log.warning(
                    "pod in %s: could not decide on the runlog-relay sidecar: %s",
                    namespace,
                    _summary(exc),
                    extra={"namespace": namespace, "store": name},
                )
            else:
                log.exception(
                    "pod in %s: deciding on the runlog-relay sidecar failed",
                    namespace,
                    extra={"namespace": namespace, "store": name},
                )
            decision = wh.failure_decision(
                pod, name, f"the sidecar was not injected: {_summary(exc)}"
            )
        if decision.outcome is not wh.Outcome.UNCHANGED and not dryrun:
            self._metrics.injections.labels(result=decision.outcome.value).inc()
            self._log(decision, pod, namespace)
            if decision.wants_event:
                self._post_later(decision, pod, namespace)
        return decision

    async def _namespace_store(self, namespace: str) -> str | None:
        """The default store a namespace names with its ``runlog-relay.dev/store`` label
        (read at most every few seconds per namespace: they rarely change)."""
        now = self._monotonic()
        cached = self._namespaces.get(namespace)
        if cached is not None and now - cached[1] < _NAMESPACE_TTL:
            return cached[0]
        body = await self._api.get(namespace_path(namespace))
        labels = ((body or {}).get("metadata") or {}).get("labels") or {}
        value = labels.get(wh.NAMESPACE_STORE_LABEL)
        store = str(value) if value else None
        self._namespaces[namespace] = (store, now)
        return store

    async def _find_store(
        self, namespace: str, name: str, stores: StoreIndex | None
    ) -> tuple[wh.StoreInfo | None, list[str]]:
        """The store, and what its sidecar would miss at start (checked only when the
        store's status does not already say the ConfigMap and Secrets are there)."""
        # Another namespace's store is never even looked at: the key has the pod's own.
        info = next(iter((stores or {}).get((namespace, name), ())), None)
        if info is not None and not self._fresh(info.indexed_at):
            info = None  # a standby's frozen index: the API says how things are now
        if info is None:
            body = await self._api.get(store_path(namespace, name))
            info = None if body is None else wh.StoreInfo.from_body(body)
        if info is None or info.files_ready:
            return info, []
        try:
            spec = rc.parse_spec(info.spec)
        except rc.SpecError:
            return info, []  # decide_injection says so
        configmap = await self._api.get(configmap_path(namespace, rc.configmap_name(name)))
        secrets = {
            secret: rc.decode_secret(await self._api.get(secret_path(namespace, secret)))
            for secret in sorted(rc.referenced_secret_names(spec.wire()))
        }
        return info, wh.missing_files(spec, store=name, configmap=configmap, secrets=secrets)

    def _log(self, decision: wh.Decision, pod: Mapping[str, Any], namespace: str) -> None:
        meta = pod.get("metadata") or {}
        pod_name = meta.get("name") or f"{meta.get('generateName') or ''}<generated>"
        extra = {"namespace": namespace, "store": decision.store, "reason": decision.reason}
        if decision.outcome is wh.Outcome.INJECTED:
            log.info("pod %s/%s: %s", namespace, pod_name, decision.message, extra=extra)
        else:
            log.warning("pod %s/%s: %s", namespace, pod_name, decision.message, extra=extra)

    def _post_later(self, decision: wh.Decision, pod: Mapping[str, Any], namespace: str) -> None:
        """Post the Event without holding up the admission answer (the API server waits
        for it, and the pod with it)."""
        try:
            manifest = wh.pod_event_manifest(
                decision, pod, namespace=namespace, now=self._clock(), instance=self._instance
            )
        except Exception:
            log.exception("could not build an Event for a pod in %s", namespace)
            return
        task = asyncio.create_task(self._post(manifest, namespace), name="runlog-relay event")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, manifest: Mapping[str, Any], namespace: str) -> None:
        try:
            await asyncio.wait_for(self._api.create(event_path(namespace), manifest), 10.0)
        except (RelayError, TimeoutError) as exc:  # the annotation is the record
            log.warning("could not post Event %s: %s", manifest.get("reason"), _summary(exc))
        except Exception:
            log.exception("could not post Event %s", manifest.get("reason"))

    async def drain(self) -> None:
        """Wait for the Events being posted (tests; and the operator's cleanup)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ stores

    async def validate_store(
        self,
        spec: Mapping[str, Any] | None,
        old_spec: Mapping[str, Any] | None,
        *,
        operation: str,
        namespace: str,
        name: str,
        user: Mapping[str, Any] | None = None,
    ) -> tuple[Denial | None, list[str]]:
        """``(denial, warnings)`` for a RunLogStore CREATE/UPDATE.

        Denied: a spec the model rejects (422); an endpoint outside the allow-list (403);
        a CREATE, or an UPDATE of where credentials go (:func:`~.policy.credential_exposure`),
        by someone the API server's authorizer does not allow to ``get`` each referenced
        Secret (403, asked with a SubjectAccessReview for the request's ``userInfo``) --
        otherwise anyone who may create a store could have the operator carry a Secret
        of the namespace to an endpoint of their choice. Warned about: Secrets and keys
        that do not exist (yet), a ConfigMap the operator could not take over."""
        message = wh.store_spec_denial(spec, old_spec, operation=operation, name=name)
        if message is not None:
            return Denial(message, 422), []
        if operation not in ("CREATE", "UPDATE"):
            return None, []
        if operation == "UPDATE" and dict(spec or {}) == dict(old_spec or {}):
            return None, []
        parsed = rc.parse_spec(spec)  # store_spec_denial has accepted it
        message = self._policy.denial(parsed.endpoint)
        if message is not None:
            return Denial(message, 403), []
        exposed = operation == "CREATE" or credential_exposure(spec) != credential_exposure(
            old_spec
        )
        try:
            async with asyncio.timeout(self._timeout):
                if exposed:
                    message = await self._may_read_secrets(parsed, namespace, user)
                    if message is not None:
                        return Denial(message, 403), []
                warnings = await self._store_warnings(spec, namespace=namespace, name=name)
        except Exception as exc:
            if not isinstance(exc, RelayError | TimeoutError):
                log.exception("checking RunLogStore %s/%s failed", namespace, name)
            if exposed:  # a guard that fails open is no guard
                return Denial(
                    f"could not check that the requester may read the Secrets this store"
                    f" names ({_summary(exc)}); try again",
                    503,
                ), []
            warnings = [f"could not check the referenced Secrets: {_summary(exc)}"]
        return None, warnings

    async def _may_read_secrets(
        self, spec: StoreSpec, namespace: str, user: Mapping[str, Any] | None
    ) -> str | None:
        """Why the requester may not name the store's Secrets, or None."""
        secrets = sorted(rc.referenced_secret_names(spec.wire()))
        if not secrets:
            return None
        if not isinstance(user, Mapping) or not user.get("username"):
            return "the request names no user, so its access to the Secrets cannot be checked"
        who = str(user["username"])
        for secret in secrets:
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": who,
                    "groups": list(user.get("groups") or []),
                    "uid": str(user.get("uid") or ""),
                    "extra": dict(user.get("extra") or {}),
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": "get",
                        "group": "",
                        "resource": "secrets",
                        "name": secret,
                    },
                },
            }
            answer = await self._api.create(SUBJECT_ACCESS_REVIEWS, review)
            if not (answer.get("status") or {}).get("allowed"):
                return (
                    f"{who} may not read Secret {secret!r} in namespace {namespace!r}: a"
                    " RunLogStore sends the keys of the Secrets it names to spec.endpoint,"
                    " so it may only name Secrets its author can read"
                )
        return None

    async def _store_warnings(
        self, raw_spec: Mapping[str, Any] | None, *, namespace: str, name: str
    ) -> list[str]:
        spec = rc.parse_spec(raw_spec)
        fetched: dict[str, Mapping[str, bytes] | Exception | None] = {}
        for secret in sorted(rc.referenced_secret_names(spec.wire())):
            try:
                fetched[secret] = rc.decode_secret(
                    await self._api.get(secret_path(namespace, secret))
                )
            except RelayError as exc:
                fetched[secret] = exc
        warnings = wh.store_warnings(spec, namespace=namespace, secrets=fetched)
        if name:
            configmap = rc.configmap_name(name)
            try:
                existing = await self._api.get(configmap_path(namespace, configmap))
            except RelayError:
                existing = None
            if existing is not None and not rc.owned_by(existing, name):
                warnings.append(
                    f"ConfigMap {configmap!r} exists and is not owned by a RunLogStore; the"
                    " operator cannot manage it until it is deleted or renamed"
                )
        return warnings
