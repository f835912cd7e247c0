"""One RunLogStore reconcile, with its I/O in order; called by the kopf handlers.

:class:`StoreController` is what :mod:`.handlers` delegates to for every trigger (create,
update, resume, the recheck timer, a referenced Secret changing, deletion). It runs the
steps of :mod:`.reconcile` against the real world -- the Kubernetes API through
:class:`~.kubeapi.KubeApi`, the bucket through :class:`~runlog_relay.objectstore.ObjectStore`
in a worker thread -- writes ``status`` through the status subresource and posts an Event
on each ``Ready`` transition. It imports no kopf, so the unit tests drive it with a fake
API and a fake bucket check.

Events are posted here rather than with ``kopf.event``/the handler logger because two of
the triggers (the recheck loop, a Secret event for another object) run outside kopf's
per-object context, and because kopf's own messages ("Handler succeeded", "failed
temporarily" on every retry) would bury the transitions users need to see.

Periodic rechecks (a bucket deleted behind our back, an outage healing, revoked
credentials) run in one loop over the known stores (:meth:`StoreController.recheck_forever`)
instead of a kopf timer per store: a kopf timer puts a finalizer on every RunLogStore, and
a finalizer without a running operator leaves stores -- and namespaces being deleted --
stuck in Terminating.

One ``asyncio.Lock`` per store serialises the triggers, so a timer tick and a Secret event
never interleave their status writes; the last conditions written are remembered, so
``lastTransitionTime`` and transition Events stay right even when kopf hands a handler a
body older than the last write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from runlog_relay.config.models import StoreSpec
from runlog_relay.config.settings import DEFAULT_MINIO_CREDENTIAL
from runlog_relay.errors import NotFoundError, PermanentError, RelayError, RetryableError
from runlog_relay.metrics import OperatorMetrics
from runlog_relay.objectstore import ObjectStore
from runlog_relay.operator import reconcile as rc
from runlog_relay.operator.kubeapi import configmap_path, event_path, secret_path, store_path
from runlog_relay.operator.leadership import Gate, always
from runlog_relay.operator.settings import ReconcileSettings

__all__ = [
    "BucketCheck",
    "KubeClient",
    "Result",
    "StoreController",
    "check_bucket",
]

log = logging.getLogger(__name__)


class KubeClient(Protocol):
    """What the controller needs from :class:`~.kubeapi.KubeApi` (tests pass a fake)."""

    async def get(self, path: str) -> dict[str, Any] | None: ...
    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def delete(self, path: str) -> bool: ...


#: Checks (or creates) the bucket; True when created. Blocking: runs in a thread.
BucketCheck = Callable[[StoreSpec, rc.ResolvedSecrets, float], bool]


def check_bucket(spec: StoreSpec, secrets: rc.ResolvedSecrets, timeout: float) -> bool:
    """The real bucket check: connect with the Secret's credentials, HEAD the bucket,
    create it when ``createBucket``. Raises the project's RetryableError/PermanentError."""
    with contextlib.ExitStack() as stack:
        ca_file = None
        if secrets.ca_pem is not None:
            handle = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".pem"))
            handle.write(secrets.ca_pem)
            handle.flush()
            ca_file = handle.name
        store = ObjectStore(
            endpoint=spec.endpoint,
            bucket=spec.bucket_name,
            prefix=spec.prefix,
            access_key=secrets.access_key or DEFAULT_MINIO_CREDENTIAL,
            secret_key=secrets.secret_key or DEFAULT_MINIO_CREDENTIAL,
            region=spec.region,
            insecure_skip_verify=spec.tls.insecure_skip_verify,
            ca_file=ca_file,
            connect_timeout=min(5.0, timeout),
            read_timeout=timeout,
            max_connections=1,
        )
        return store.check_bucket(create=spec.create_bucket)


@dataclass(frozen=True)
class Result:
    """What one reconcile concluded, for the handler to act on."""

    ready: rc.Step
    conditions: list[dict[str, Any]]
    #: Transient failure: the handler should retry after ``delay`` seconds.
    retry: bool = False
    delay: float = 0.0
    #: The spec is invalid: no retry until it changes.
    spec_error: rc.SpecError | None = None


@dataclass
class _State:
    uid: str | None
    conditions: list[dict[str, Any]] | None = None
    generation: int | None = None
    #: secret name → fingerprint of its data at the last reconcile (memory only).
    fingerprints: dict[str, str] = field(default_factory=dict)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class StoreController:
    def __init__(
        self,
        api: KubeClient,
        metrics: OperatorMetrics,
        *,
        bucket_check: BucketCheck = check_bucket,
        options: ReconcileSettings | None = None,
        instance: str = "runlog-relay-operator",
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._api = api
        self._metrics = metrics
        self._bucket_check = bucket_check
        self._options = options or ReconcileSettings()
        self._instance = instance
        self._clock = clock
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._states: dict[tuple[str, str], _State] = {}

    # ------------------------------------------------------------------ triggers

    async def reconcile(self, body: Mapping[str, Any], *, retry: int = 0) -> Result:
        """Reconcile the store in ``body``: ConfigMap, Secrets, bucket, status, Event."""
        meta = body.get("metadata", {})
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        key = (namespace, name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            try:
                result = await self._reconcile(body, namespace, name, retry=retry)
            except Exception:
                self._metrics.reconciles.labels(result="error").inc()
                raise
        self._metrics.reconciles.labels(result="ready" if result.ready.ok else "not_ready").inc()
        return result

    async def reconcile_named(self, namespace: str, name: str) -> Result | None:
        """Reconcile a store by name with a fresh body; None when it no longer exists."""
        body = await self._api.get(store_path(namespace, name))
        if body is None:
            # Deleted while we were not looking (a missed watch event): forget it.
            await self.forget({"metadata": {"namespace": namespace, "name": name}})
            return None
        return await self.reconcile(body)

    def known_stores(self) -> list[tuple[str, str]]:
        return sorted(self._states)

    async def recheck_all(self, gate: Gate = always) -> None:
        """Reconcile every known store once, a few at a time, where ``gate`` says this
        replica leads; failures are logged."""
        limit = asyncio.Semaphore(self._options.recheck_concurrency)
        leads = await gate()

        async def one(namespace: str, name: str) -> None:
            async with limit:
                try:
                    if await leads(namespace):
                        await self.reconcile_named(namespace, name)
                except RelayError as exc:
                    log.warning(
                        "recheck of RunLogStore %s/%s failed: %s",
                        namespace,
                        name,
                        exc,
                        extra={"namespace": namespace, "store": name},
                    )
                except Exception:
                    log.exception(
                        "recheck of RunLogStore %s/%s failed unexpectedly",
                        namespace,
                        name,
                        extra={"namespace": namespace, "store": name},
                    )

        await asyncio.gather(*(one(ns, name) for ns, name in self.known_stores()))

    async def recheck_forever(self, gate: Gate = always) -> None:
        """Run :meth:`recheck_all` every ``recheck_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._options.recheck_interval)
            try:
                await self.recheck_all(gate)
            except Exception:  # the loop must outlive any one bad round
                log.exception("recheck round failed; trying again next interval")

    async def secret_changed(
        self,
        namespace: str,
        secret: str,
        secret_body: Mapping[str, Any] | None,
        stores: Iterable[str],
    ) -> dict[str, Result | None]:
        """A Secret was created, changed or deleted (``secret_body`` None): reconcile the
        stores referencing it whose view of it is now out of date."""
        fingerprint = rc.secret_fingerprint(rc.decode_secret(secret_body))
        results: dict[str, Result | None] = {}
        for store in sorted(set(stores)):
            state = self._states.get((namespace, store))
            if state is not None and state.fingerprints.get(secret) == fingerprint:
                continue  # nothing this store uses changed (or we saw it already)
            log.info(
                "Secret %s/%s changed; reconciling RunLogStore %s",
                namespace,
                secret,
                store,
                extra={"namespace": namespace, "store": store},
            )
            try:
                results[store] = await self.reconcile_named(namespace, store)
            except RelayError as exc:
                # The store's own retry/timer picks it up; this trigger is best effort.
                log.warning(
                    "reconciling %s/%s after a Secret change failed: %s",
                    namespace,
                    store,
                    exc,
                    extra={"namespace": namespace, "store": store},
                )
                results[store] = None
        return results

    async def forget(self, body: Mapping[str, Any]) -> None:
        """The store was deleted: drop its metric and memory, and its ConfigMap (the
        garbage collector would too, through the owner reference; doing it here makes it
        immediate). Guarded by uid so a store re-created under the same name keeps its own."""
        meta = body.get("metadata", {})
        namespace, name, uid = str(meta.get("namespace")), str(meta.get("name")), meta.get("uid")
        key = (namespace, name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            state = self._states.get(key)
            if state is not None and uid and state.uid and state.uid != uid:
                return
            self._states.pop(key, None)
            with contextlib.suppress(KeyError):
                self._metrics.store_ready.remove(namespace, name)
            path = configmap_path(namespace, rc.configmap_name(name))
            try:
                existing = await self._api.get(path)
                if existing is not None and rc.owned_by(existing, name, uid):
                    await self._api.delete(path)
            except RelayError as exc:
                log.warning(
                    "could not delete ConfigMap %s/%s: %s",
                    namespace,
                    rc.configmap_name(name),
                    exc,
                    extra={"namespace": namespace, "store": name},
                )
        self._locks.pop(key, None)

    # ------------------------------------------------------------------ steps

    async def _reconcile(
        self, body: Mapping[str, Any], namespace: str, name: str, *, retry: int
    ) -> Result:
        meta = body.get("metadata", {})
        uid = meta.get("uid")
        generation = meta.get("generation")
        state = self._states.get((namespace, name))
        if state is None or (uid and state.uid != uid):
            state = _State(uid=uid)
            previous = (body.get("status") or {}).get("conditions")
            state.generation = (body.get("status") or {}).get("observedGeneration")
        else:
            previous = state.conditions
        secrets = rc.ResolvedSecrets()
        spec_error: rc.SpecError | None = None
        try:
            spec = rc.parse_spec(body.get("spec"))
        except rc.SpecError as exc:
            spec_error = exc
            steps = rc.spec_steps(exc)
        else:
            steps = rc.spec_steps(None)
            steps.append(await self._apply_configmap(spec, namespace, name, uid))
            secrets = await self._resolve_secrets(spec, namespace, state)
            steps.append(secrets.step)
            if secrets.step.ok:
                steps.extend(await self._check(spec, secrets))
            else:
                waiting = rc.SECRETS_AVAILABLE
                steps += [rc.unknown_after(rc.CONNECTED, waiting)]
                steps += [rc.unknown_after(rc.BUCKET_READY, waiting)]

        conditions = rc.merge_conditions(
            previous, steps, generation=generation, now=self._clock(), secrets=secrets.values()
        )
        ready = rc.ready_step(steps)
        if conditions != previous or generation != state.generation:
            try:
                await self._api.merge_patch(
                    store_path(namespace, name, "status"),
                    rc.status_patch(conditions, generation=generation, store=name),
                )
            except NotFoundError:
                # Deleted while we worked (a stale body): remember nothing about it.
                log.debug("RunLogStore %s/%s is gone; status not written", namespace, name)
                self._states.pop((namespace, name), None)
                with contextlib.suppress(KeyError):
                    self._metrics.store_ready.remove(namespace, name)
                return Result(ready=ready, conditions=conditions)
        state.conditions, state.generation = conditions, generation
        self._states[(namespace, name)] = state

        self._metrics.store_ready.labels(namespace=namespace, store=name).set(1 if ready.ok else 0)
        event = rc.transition_event(previous, conditions)
        if event is not None:
            log.info(
                "RunLogStore %s/%s: Ready=%s (%s)",
                namespace,
                name,
                ready.status.value,
                ready.reason,
                extra={"namespace": namespace, "store": name, "reason": ready.reason},
            )
            await self._post_event(event, namespace, name, uid)
        retry_needed = any(step.retryable for step in steps)
        delay = rc.backoff_delay(
            retry, base=self._options.retry_base_delay, cap=self._options.retry_max_delay
        )
        return Result(
            ready=ready,
            conditions=conditions,
            retry=retry_needed,
            delay=delay if retry_needed else 0.0,
            spec_error=spec_error,
        )

    async def _post_event(
        self, event: rc.Event, namespace: str, name: str, uid: str | None
    ) -> None:
        manifest = rc.event_manifest(
            event,
            namespace=namespace,
            store=name,
            uid=uid,
            now=self._clock(),
            instance=self._instance,
        )
        try:
            await self._api.create(event_path(namespace), manifest)
        except RelayError as exc:  # an Event is a courtesy; the status is the record
            log.warning(
                "could not post Event %s on %s/%s: %s",
                event.reason,
                namespace,
                name,
                exc,
                extra={"namespace": namespace, "store": name},
            )

    async def _apply_configmap(
        self, spec: StoreSpec, namespace: str, name: str, uid: str | None
    ) -> rc.Step:
        cm_name = rc.configmap_name(name)
        if len(cm_name) > 253:
            return rc.configmap_step(name=cm_name, error=None)
        desired = rc.configmap_manifest(spec, namespace=namespace, store=name, uid=uid)
        path = configmap_path(namespace, cm_name)
        try:
            existing = await self._api.get(path)
            if existing is None:
                try:
                    await self._api.create(configmap_path(namespace), desired)
                except PermanentError as exc:
                    if exc.code != "AlreadyExists":
                        raise
                    existing = await self._api.get(path)
            if existing is not None:
                if not rc.owned_by(existing, name):
                    return rc.configmap_step(name=cm_name, error=None, conflict=True)
                if rc.configmap_needs_update(existing, desired):
                    await self._api.merge_patch(
                        path,
                        {
                            "metadata": {
                                "labels": desired["metadata"]["labels"],
                                "ownerReferences": desired["metadata"].get("ownerReferences"),
                            },
                            "data": desired["data"],
                        },
                    )
        except RelayError as exc:
            return rc.configmap_step(name=cm_name, error=exc)
        return rc.configmap_step(name=cm_name, error=None)

    async def _resolve_secrets(
        self, spec: StoreSpec, namespace: str, state: _State
    ) -> rc.ResolvedSecrets:
        fetched: dict[str, dict[str, bytes] | None] = {}
        fingerprints: dict[str, str] = {}
        for secret in sorted(rc.referenced_secret_names(spec.wire())):
            try:
                body = await self._api.get(secret_path(namespace, secret))
            except RelayError as exc:
                return rc.ResolvedSecrets(step=rc.secret_api_step(secret, exc))
            fetched[secret] = rc.decode_secret(body)
            fingerprints[secret] = rc.secret_fingerprint(fetched[secret])
        state.fingerprints = fingerprints
        return rc.resolve_secrets(spec, namespace=namespace, secrets=fetched)

    async def _check(self, spec: StoreSpec, secrets: rc.ResolvedSecrets) -> list[rc.Step]:
        loop = asyncio.get_running_loop()
        error: RelayError | None = None
        created = False
        check = functools.partial(self._bucket_check, spec, secrets, self._options.bucket_timeout)
        try:
            created = await loop.run_in_executor(None, check)
        except RelayError as exc:
            error = exc
        except Exception as exc:  # a bug or an SDK surprise: no traceback in the status
            log.exception("bucket check for %s failed unexpectedly", spec.endpoint)
            error = RetryableError(
                f"checking bucket at {spec.endpoint}: unexpected {type(exc).__name__}"
            )
        location = f"{spec.bucket_name}/{spec.prefix}" if spec.prefix else spec.bucket_name
        connected, bucket = rc.bucket_steps(
            location=location, endpoint=spec.endpoint, error=error, created=created
        )
        return [connected, bucket]
