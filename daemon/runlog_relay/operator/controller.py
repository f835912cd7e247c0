"""One RunLogStore reconcile, with its I/O in order; called by the kopf handlers.

:class:`StoreController` is what :mod:`.handlers` delegates to for every trigger (create,
update, resume, a retry, the recheck timer, deletion). It runs the
steps of :mod:`.reconcile` against the real world -- the Kubernetes API through
:class:`~.kubeapi.KubeApi`, the bucket through :class:`~runlog_relay.objectstore.ObjectStore`
in a worker thread -- writes ``status`` through the status subresource and posts an Event
on each ``Ready`` transition. It imports no kopf, so the unit tests drive it with a fake
API and a fake bucket check.

Events are posted here rather than with ``kopf.event``/the handler logger because the
recheck loop runs outside kopf's per-object context, and because kopf's own messages
("Handler succeeded", "failed temporarily" on every retry) would bury the transitions
users need to see.

Periodic rechecks (a bucket deleted behind our back, an outage healing, revoked or
rotated credentials, a deleted Secret: Secrets are not watched) run in one loop over
the known stores (:meth:`StoreController.recheck_forever`) instead of a kopf timer per
store: a kopf timer puts a finalizer on every RunLogStore, and a finalizer without a
running operator leaves stores -- and namespaces being deleted -- stuck in Terminating.

One ``asyncio.Lock`` per store serialises the triggers, so a recheck and a kopf retry
never interleave their status writes; the last conditions written are remembered, so
``lastTransitionTime`` and transition Events stay right even when kopf hands a handler a
body older than the last write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from runlog_relay.config.credentials import CredentialPlan
from runlog_relay.config.models import StoreSpec
from runlog_relay.errors import NotFoundError, PermanentError, RelayError, RetryableError
from runlog_relay.metrics import OperatorMetrics
from runlog_relay.objectstore import ObjectStore
from runlog_relay.operator import reconcile as rc
from runlog_relay.operator.kubeapi import configmap_path, event_path, secret_path, store_path
from runlog_relay.operator.leadership import Gate, always
from runlog_relay.operator.policy import EndpointPolicy
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


#: Checks (or creates) the bucket; True when created. Blocking: runs in a thread.
BucketCheck = Callable[[StoreSpec, rc.ResolvedSecrets, float], bool]


def check_bucket(spec: StoreSpec, secrets: rc.ResolvedSecrets, timeout: float) -> bool:
    """The real bucket check: connect with the Secret's credentials (or the operator's own
    identity, for a service-account store), HEAD the bucket, create it when
    ``createBucket``. Raises the project's RetryableError/PermanentError."""
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
            credentials=secrets.plan(),
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
    #: Reconciles in a row that found a referenced Secret (or key) missing.
    waits: int = 0


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
        gate: Gate = always,
        policy: EndpointPolicy | None = None,
        clock: Callable[[], datetime] = _utcnow,
        identity: CredentialPlan | None = None,
    ) -> None:
        """``identity``: the operator's own AWS identity (its pod's IRSA or Pod Identity),
        used for stores whose sidecars use theirs (``credentials.serviceAccount``); None:
        such stores' buckets are left to the sidecars (``CheckedBySidecars``)."""
        self._identity = identity
        self._api = api
        self._metrics = metrics
        self._bucket_check = bucket_check
        self._options = options or ReconcileSettings()
        self._instance = instance
        self._clock = clock
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._states: dict[tuple[str, str], _State] = {}
        self._gate = gate
        self._policy = policy or EndpointPolicy()
        self._retries: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Every retry task until it has ended. A retry leaves ``_retries`` as soon as it
        # wakes (so that its reconcile may schedule the next one), but it still runs and
        # still uses the API client: close() must wait for it too, or it opens a new
        # session on a client that has just been closed.
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

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

    async def recheck_all(self) -> None:
        """Reconcile every known store once, a few at a time, where this replica leads
        (the gate says); failures are logged."""
        limit = asyncio.Semaphore(self._options.recheck_concurrency)
        leads = await self._gate()

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

    async def recheck_forever(self) -> None:
        """Run :meth:`recheck_all` every ``recheck_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._options.recheck_interval)
            try:
                await self.recheck_all()
            except Exception:  # the loop must outlive any one bad round
                log.exception("recheck round failed; trying again next interval")

    async def forget(self, body: Mapping[str, Any]) -> None:
        """The store was deleted: drop its metric and memory. Its ConfigMap goes with it
        through its owner reference (the garbage collector deletes it), so the operator
        needs no right to delete ConfigMaps. Guarded by uid so a store re-created under
        the same name keeps its own."""
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
            retry = self._retries.pop(key, None)
            if retry is not None and retry is not asyncio.current_task():
                retry.cancel()
        self._locks.pop(key, None)

    def pending_retries(self) -> list[tuple[str, str]]:
        """Stores with a retry scheduled (waiting for a Secret)."""
        return sorted(key for key, task in self._retries.items() if not task.done())

    async def close(self) -> None:
        """Cancel the scheduled and running retries (the operator is stopping)."""
        self._closed = True
        tasks = list(self._retry_tasks)
        self._retries.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _retry_later(self, namespace: str, name: str, delay: float) -> None:
        """Reconcile the store again after ``delay`` seconds (once; where this replica
        still leads then). A retry already scheduled stays as it is."""
        key = (namespace, name)
        pending = self._retries.get(key)
        if self._closed or (pending is not None and not pending.done()):
            return

        async def retry() -> None:
            await asyncio.sleep(delay)
            self._retries.pop(key, None)
            try:
                leads = await self._gate()
                if await leads(namespace):
                    await self.reconcile_named(namespace, name)
            except RelayError as exc:
                log.warning(
                    "retry of RunLogStore %s/%s failed: %s",
                    namespace,
                    name,
                    exc,
                    extra={"namespace": namespace, "store": name},
                )
            except Exception:
                log.exception(
                    "retry of RunLogStore %s/%s failed unexpectedly",
                    namespace,
                    name,
                    extra={"namespace": namespace, "store": name},
                )

        task = asyncio.create_task(retry(), name=f"runlog-relay retry {key}")
        self._retries[key] = task
        self._retry_tasks.add(task)
        task.add_done_callback(self._retry_tasks.discard)

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
            # Outside the allow-list: not a connection, not a Secret read (see policy).
            denial = self._policy.denial(spec.endpoint)
            if denial is not None:
                spec_error = rc.SpecError(denial)
                steps = rc.spec_steps(spec_error, "EndpointNotAllowed")
        if spec_error is None:
            steps = rc.spec_steps(None)
            steps.append(await self._apply_configmap(spec, namespace, name, uid))
            secrets = await self._resolve_secrets(spec, namespace)
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
        # Secrets are not watched (see handlers): a store waiting for its Secret, or for a
        # key in it, is reconciled again with backoff, so it turns Ready soon after they
        # appear. Waiting is the normal order of a GitOps sync, not a failure: the retry
        # is ours, not a kopf TemporaryError (which kopf logs as an error every time).
        if spec_error is None and not secrets.step.ok and not secrets.step.retryable:
            state.waits += 1
            self._retry_later(
                namespace,
                name,
                rc.backoff_delay(
                    state.waits - 1,
                    base=self._options.retry_base_delay,
                    cap=self._options.retry_max_delay,
                ),
            )
        else:
            state.waits = 0
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
        if rc.too_long(name):
            return rc.configmap_step(name=cm_name, error=None, name_too_long=True)
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

    async def _resolve_secrets(self, spec: StoreSpec, namespace: str) -> rc.ResolvedSecrets:
        fetched: dict[str, dict[str, bytes] | None] = {}
        for secret in sorted(rc.referenced_secret_names(spec.wire())):
            try:
                body = await self._api.get(secret_path(namespace, secret))
            except RelayError as exc:
                return rc.ResolvedSecrets(step=rc.secret_api_step(secret, exc))
            fetched[secret] = rc.decode_secret(body)
        return rc.resolve_secrets(spec, namespace=namespace, secrets=fetched)

    async def _check(self, spec: StoreSpec, secrets: rc.ResolvedSecrets) -> list[rc.Step]:
        hint = f"the access key pair in the Secret named by {spec.secret_ref_field}"
        if secrets.service_account:
            if self._identity is None:
                return list(rc.checked_by_sidecars_steps())
            secrets = dataclasses.replace(secrets, identity=self._identity)
            hint = "the operator's own AWS identity (its ServiceAccount's role)"
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
            location=location,
            endpoint=spec.endpoint,
            error=error,
            created=created,
            credentials=hint,
        )
        return [connected, bucket]
