"""kopf handlers: decorators and error translation only; the work is in the controller.

:func:`register_handlers` puts every handler on a given :class:`kopf.OperatorRegistry`
(not kopf's global default registry), bound to one :class:`~.controller.StoreController`,
so a process -- or a test -- can run operators side by side.

Triggers → controller:

- RunLogStore created, spec updated, or seen at start-up (resume) → ``reconcile``. A
  transient failure becomes ``kopf.TemporaryError`` (kopf retries with our backoff), an
  invalid spec ``kopf.PermanentError`` (no retry until the spec changes). Either way the
  status already says what is wrong.
- RunLogStore deleted (watch event) → ``forget``. No finalizer is involved, so deleting a
  store never waits for the operator.
- Secrets are never watched (a watch streams every Secret of the served namespaces,
  data included, into the operator's memory): a store reads the Secrets it references
  with one GET each when it reconciles; a store waiting for its Secret retries with
  backoff, and a changed or deleted Secret is seen by the next recheck.
- Every ``recheck_interval`` → all known stores, from one background task; with peering,
  only where this replica leads (:mod:`.leadership`), since kopf does not pause our task.

With webhooks on (an :class:`~.admission.Admission` and a webhook server given), also:

- Pod CREATE of a pod that opted in (label or annotation ``runlog-relay.dev/store``, or
  that label on its namespace) → ``mutate-pods``: served by kopf's
  webhook server at ``/mutate-pods`` (kopf routes ``/<handler id>``); the stores come from
  the ``stores_by_name`` index. Never raises: any failure lets the pod through.
- RunLogStore CREATE/UPDATE → ``validate-runlogstores`` at ``/validate-runlogstores``:
  denies a spec the model rejects, warns about missing Secrets.
- Background tasks: this replica's leadership, the webhook certificate (shared Secret or
  directory) and, on the active replica, the webhook configurations' caBundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from runlog_relay.config.crd import GROUP, PLURAL, VERSION
from runlog_relay.errors import RetryableError
from runlog_relay.operator import webhook as wh
from runlog_relay.operator.admission import Admission
from runlog_relay.operator.controller import StoreController
from runlog_relay.operator.kubeapi import KubeApi

__all__ = [
    "MUTATE_PODS",
    "VALIDATE_STORES",
    "HandlerOptions",
    "configure_settings",
    "register_handlers",
]

#: Webhook handler ids; kopf's server serves each at ``/<id>``, the chart points there.
MUTATE_PODS = "mutate-pods"
VALIDATE_STORES = "validate-runlogstores"


@dataclass(frozen=True)
class HandlerOptions:
    peering: str | None = None
    """kopf peering object name; None runs standalone (no peering CRDs needed)."""
    priority: int = 0
    """Peering priority: the highest-priority live operator works, the others wait."""
    lifetime: int = 30
    """Seconds a peer's keep-alive counts (kopf's ``peering.lifetime``)."""
    recheck: bool = True
    """Run the periodic recheck loop (off in tests that count reconciles)."""
    chunk_size: int = 500
    """Objects per page of kopf's listings."""


def configure_settings(settings: kopf.OperatorSettings, options: HandlerOptions) -> None:
    """kopf settings for this operator (also applied by the start-up handler)."""
    # Progress and diff-base as annotations under our own prefix, not in status: status
    # belongs to the conditions users read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # The controller posts one Event per Ready transition itself; kopf's per-handler
    # chatter (every success, every retry) stays in the operator log.
    settings.posting.enabled = False
    # Every listing in pages (limit/continue): a first listing of many objects never
    # arrives as one huge response held in memory.
    settings.watching.chunk_size = options.chunk_size
    if options.peering:
        settings.peering.standalone = False
        settings.peering.mandatory = True
        settings.peering.name = options.peering
        settings.peering.priority = options.priority
        settings.peering.lifetime = options.lifetime
    else:
        settings.peering.standalone = True


def _is_deletion(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


def _plain(body: Any) -> dict[str, Any]:
    """A kopf body as plain JSON data (the pure code gets no kopf views)."""
    return json.loads(json.dumps(dict(body)))


def _replace_with(raw: Any, ops: list[dict[str, Any]]) -> None:
    """A kopf patch function: turn the body kopf diffs against into our patched pod."""
    patched = wh.apply_json_patch(_plain(raw), ops)
    raw.clear()
    raw.update(patched)


def register_handlers(
    registry: kopf.OperatorRegistry,
    *,
    controller: StoreController,
    api: KubeApi,
    options: HandlerOptions,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    admission: Admission | None = None,
    webhook_server: kopf.WebhookServer | None = None,
) -> None:
    """Put the operator's handlers on ``registry``.

    Explicit ids: kopf derives them from qualified names (``register_handlers.<locals>...``)
    otherwise, and the index id is also the name of the handler argument that receives it.
    The admission handlers are registered only with both ``admission`` and
    ``webhook_server`` (kopf refuses to start with admission handlers and no server).
    ``background``: the operator's own loops (leadership, recheck, webhook certificate,
    caBundle), run as tasks from start-up to cleanup.
    """
    tasks: list[asyncio.Task[None]] = []
    webhooks = admission is not None and webhook_server is not None

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, options)
        for loop in background:
            tasks.append(asyncio.create_task(loop(), name=f"runlog-relay {loop.__qualname__}"))
        if webhooks:
            # kopf serves the handlers; the chart owns the webhook configurations, so
            # kopf's `managed` mode (which rewrites their webhooks) stays off.
            settings.admission.server = webhook_server
            settings.admission.managed = None

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()
        await controller.close()
        if admission is not None:
            await admission.close()
        await api.close()

    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        return api.login()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry, id="reconcile")
    async def reconcile(body: kopf.Body, retry: int, **_: Any) -> None:
        try:
            result = await controller.reconcile(body, retry=retry)
        except RetryableError as exc:  # the API server failed us; kopf retries
            raise kopf.TemporaryError(str(exc), delay=exc.delay or 5.0) from exc
        if result.spec_error is not None:
            raise kopf.PermanentError(str(result.spec_error))
        if result.retry:
            raise kopf.TemporaryError(result.ready.message, delay=result.delay)

    # `when=` keeps kopf from invoking (and logging "succeeded" for) every watch event.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="store_event", when=_is_deletion)
    async def store_event(body: kopf.Body, **_: Any) -> None:
        await controller.forget(body)

    if not webhooks:
        return
    assert admission is not None  # for mypy: `webhooks` says so

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="stores_by_name")
    def stores_by_name(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], wh.StoreInfo]:
        # Stamped, so a replica that stood by (kopf paused, index frozen) can tell.
        info = wh.StoreInfo.from_body(_plain(body), indexed_at=time.monotonic())
        return {(str(namespace), name): info}

    @kopf.on.mutate(
        "v1",
        "pods",
        registry=registry,
        id=MUTATE_PODS,
        operations=["CREATE"],
        # No label filter: pods opt in by label, by annotation or by their namespace's
        # label; the webhook configurations' matchConditions send only those.
        side_effects=True,  # Events, skipped on dry runs
        ignore_failures=True,
    )
    async def mutate_pods(
        body: kopf.Body,
        namespace: str | None,
        patch: kopf.Patch,
        warnings: list[str],
        dryrun: bool,
        **kwargs: Any,
    ) -> None:
        # Admission.mutate_pod never raises; a denial here would block the user's pod.
        decision = await admission.mutate_pod(
            _plain(body),
            namespace=str(namespace or ""),
            stores=kwargs.get("stores_by_name"),
            dryrun=dryrun,
        )
        if decision.ops:
            ops = decision.ops
            patch.fns.append(lambda raw: _replace_with(raw, ops))
        warnings.extend(decision.warnings)

    @kopf.on.validate(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id=VALIDATE_STORES,
        operations=["CREATE", "UPDATE"],
        ignore_failures=True,
    )
    async def validate_runlogstores(
        body: kopf.Body, namespace: str | None, name: str, warnings: list[str], **kwargs: Any
    ) -> None:
        old = kwargs.get("old")
        denial, notes = await admission.validate_store(
            _plain(body.get("spec") or {}),
            _plain(old.get("spec") or {}) if old is not None else None,
            operation=str(kwargs.get("operation") or ""),
            namespace=str(namespace or ""),
            name=str(name or ""),
            user=kwargs.get("userinfo"),
        )
        warnings.extend(notes)
        if denial is not None:
            raise kopf.AdmissionError(denial.message, code=denial.code)
