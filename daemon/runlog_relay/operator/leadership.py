"""Whether this replica leads, read from kopf's peering objects.

With ``--peering NAME`` several replicas run and kopf pauses all but the live one with
the highest priority -- but kopf only pauses what it drives (watches and handlers). The
periodic recheck loop is ours, so it asks :class:`PeeringGate` before each round: this
replica rechecks a namespace's stores only if its own entry in the peering object is
alive and no other live peer has an equal or higher priority (kopf freezes everybody on
a tie; so do we). When the peering object cannot be read the answer is "no": a skipped
recheck costs one interval, two replicas writing the same status cost confusing Events.

kopf keeps one ``ClusterKopfPeering`` for a cluster-wide operator and one ``KopfPeering``
per served namespace otherwise (``kopf.dev/v1``); each has ``status[<identity>] =
{priority, lifetime, lastseen}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from runlog_relay.errors import RelayError

__all__ = ["Gate", "PeeringGate", "always", "is_leading", "peering_path"]

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
    """Our entry is alive and every other live peer has a lower priority."""
    peers = {k: v for k, v in (status or {}).items() if isinstance(v, Mapping) and _alive(v, now)}
    if identity not in peers:
        return False
    return all(
        int(info.get("priority", 0)) < priority for peer, info in peers.items() if peer != identity
    )


class PeeringGate:
    """Reads the peering object(s) once per recheck round."""

    def __init__(
        self,
        api: _Getter,
        *,
        name: str,
        identity: str,
        priority: int,
        clusterwide: bool,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self._name = name
        self._identity = identity
        self._priority = priority
        self._clusterwide = clusterwide
        self._clock = clock

    async def _leads(self, namespace: str | None) -> bool:
        try:
            body = await self._api.get(peering_path(self._name, namespace))
        except RelayError as exc:
            log.warning("cannot read peering %r: %s; skipping the recheck", self._name, exc)
            return False
        if body is None:
            log.warning("peering object %r not found; skipping the recheck", self._name)
            return False
        return is_leading(
            body.get("status"),
            identity=self._identity,
            priority=self._priority,
            now=self._clock(),
        )

    async def __call__(self) -> Callable[[str], Awaitable[bool]]:
        cache: dict[str | None, bool] = {}

        async def leads(namespace: str) -> bool:
            key = None if self._clusterwide else namespace
            if key not in cache:
                cache[key] = await self._leads(key)
            return cache[key]

        return leads
