"""Whether this replica is the active operator, as kopf's peering decides it.

With ``--peering NAME`` several replicas run from one pod template. kopf elects the
active one by itself: every replica keeps an entry ``{priority, lifetime, lastseen}``
under its identity in ``status`` of the peering object (one ``ClusterKopfPeering`` for a
cluster-wide operator, one ``KopfPeering`` per served namespace otherwise) and pauses
-- closes its watch streams, runs no handler -- while any other live peer has an equal
or higher priority. Replicas of one template get distinct priorities (see
:func:`~.runner.effective_priority`), so exactly one works; when it dies without a
goodbye its entry expires after ``lifetime`` seconds and the next one takes over.

kopf pauses only what it drives. :class:`Leadership` makes the same decision from the
same objects for what the operator does on its own: the recheck loop and retries, the
webhook certificate and caBundle, and the webhook's use of kopf's in-memory index. A
paused replica's index is frozen (no watch feeds it), so the webhook answers from it
only for entries indexed since this replica last became active (:meth:`Leadership.fresh`)
and reads the API otherwise. When the peering objects cannot be read, the answer is
"not leading": a skipped recheck costs one interval; two replicas writing costs trust.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from runlog_relay.errors import RelayError

__all__ = ["Gate", "Leadership", "always", "is_leading", "peering_path"]

log = logging.getLogger(__name__)

#: Given a namespace, whether this replica should do background work there now.
Gate = Callable[[], Awaitable[Callable[[str], Awaitable[bool]]]]


class _Getter(Protocol):
    async def get(self, path: str) -> dict[str, Any] | None: ...


async def _yes(namespace: str) -> bool:
    return True


async def always() -> Callable[[str], Awaitable[bool]]:
    """The gate of a standalone operator: it always leads."""
    return _yes


def peering_path(name: str, namespace: str | None) -> str:
    if namespace is None:
        return f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}"
    return f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/{name}"


def _alive(info: Mapping[str, Any], now: datetime) -> bool:
    """kopf's rule (``Peer.is_dead``): alive until ``lastseen + lifetime``."""
    try:
        lastseen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
    except (KeyError, TypeError, ValueError):
        return False
    if lastseen.tzinfo is None:
        lastseen = lastseen.replace(tzinfo=UTC)
    return lastseen + lifetime > now


def is_leading(
    status: Mapping[str, Any] | None, *, identity: str, priority: int, now: datetime
) -> bool:
    """Our entry is alive and every other live peer has a lower priority (kopf freezes
    everybody on a tie; so do we)."""
    peers = {k: v for k, v in (status or {}).items() if isinstance(v, Mapping) and _alive(v, now)}
    if identity not in peers:
        return False
    return all(
        int(info.get("priority", 0)) < priority for peer, info in peers.items() if peer != identity
    )


class Leadership:
    """This replica's standing, refreshed every ``interval`` seconds by :meth:`run`."""

    def __init__(
        self,
        api: _Getter | None,
        *,
        name: str | None,
        identity: str,
        priority: int,
        namespaces: Sequence[str] | None,
        interval: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``name`` None: standalone, always leading. ``namespaces`` None: cluster-wide
        (one ClusterKopfPeering), else the served namespaces by name (the settings refuse
        patterns with peering), each with a KopfPeering."""
        self._api = api
        self._name = name
        self._identity = identity
        self._priority = priority
        self._scopes: list[str | None] = [None] if namespaces is None else list(namespaces)
        self._interval = interval
        self._on_change = on_change
        self._clock = clock
        self._monotonic = monotonic
        self.leading = name is None
        #: monotonic time of the last refresh that found this replica standing by; an
        #: index entry older than that may come from a frozen index.
        self._standby_seen = -1.0 if name is None else monotonic()
        self.refreshed = asyncio.Event()
        """Set after the first refresh (at once when standalone)."""
        if name is None:
            self.refreshed.set()

    @property
    def standalone(self) -> bool:
        return self._name is None

    def fresh(self, indexed_at: float) -> bool:
        """Whether an entry kopf indexed at ``indexed_at`` (monotonic) reflects the
        cluster: this replica leads, and has since before the entry was indexed."""
        return self.leading and indexed_at > self._standby_seen

    async def gate(self) -> Callable[[str], Awaitable[bool]]:
        """The :data:`Gate` of the controller's own loops."""
        leading = self.leading

        async def leads(namespace: str) -> bool:
            return leading

        return leads

    async def refresh(self) -> bool:
        """Read the peering object(s) once; whether this replica leads."""
        if self._name is None:
            return True
        leading = True
        for namespace in self._scopes:
            try:
                body = (
                    await self._api.get(peering_path(self._name, namespace)) if self._api else None
                )
            except RelayError as exc:
                log.warning("cannot read peering %r: %s; standing by", self._name, exc)
                leading = False
                break
            if body is None:
                where = f"in namespace {namespace!r}" if namespace else "(ClusterKopfPeering)"
                log.warning(
                    "peering object %r %s not found; standing by (kopf waits for it too)",
                    self._name,
                    where,
                )
                leading = False
                break
            if not is_leading(
                body.get("status"),
                identity=self._identity,
                priority=self._priority,
                now=self._clock(),
            ):
                leading = False
                break
        self._set(leading)
        self.refreshed.set()
        return leading

    def _set(self, leading: bool) -> None:
        if not leading:
            self._standby_seen = self._monotonic()
        if leading == self.leading:
            return
        self.leading = leading
        if leading:
            log.info("this replica is now the active operator (peering %r)", self._name)
        else:
            log.info("standing by: another replica is the active operator (peering %r)", self._name)
        if self._on_change is not None:
            self._on_change(leading)

    async def run(self) -> None:
        """Refresh forever (a task for the operator's lifetime)."""
        if self._name is None:
            return
        while True:
            try:
                await self.refresh()
            except Exception:  # the loop must outlive any one bad round
                log.exception("could not check the peering; standing by")
                self._set(False)
            await asyncio.sleep(self._interval)
