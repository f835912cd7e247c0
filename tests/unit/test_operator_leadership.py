"""Leadership among kopf peers: only the live top-priority replica acts, and a standby's
frozen index is never taken for the cluster."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runlog_relay.errors import RetryableError
from runlog_relay.operator.leadership import Leadership, always, is_leading, peering_path

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float = 1, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(),
    }


def test_top_live_priority_leads() -> None:
    status = {"me": peer(10), "other": peer(5)}
    assert is_leading(status, identity="me", priority=10, now=NOW)
    assert not is_leading(status, identity="other", priority=5, now=NOW)


def test_a_tie_freezes_everybody_like_kopf() -> None:
    status = {"me": peer(7), "other": peer(7)}
    assert not is_leading(status, identity="me", priority=7, now=NOW)


def test_dead_peers_do_not_count_and_we_must_be_registered() -> None:
    status = {"me": peer(1), "gone": peer(99, seen_ago=120)}
    assert is_leading(status, identity="me", priority=1, now=NOW)
    assert not is_leading({"other": peer(1)}, identity="me", priority=50, now=NOW)
    assert not is_leading(None, identity="me", priority=1, now=NOW)
    assert not is_leading({"me": peer(1, seen_ago=61)}, identity="me", priority=1, now=NOW)
    assert not is_leading({"me": {"priority": 1}}, identity="me", priority=1, now=NOW)


class Getter:
    def __init__(self, objects: dict[str, Any], error: Exception | None = None) -> None:
        self.objects = objects
        self.error = error
        self.paths: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.paths.append(path)
        if self.error is not None:
            raise self.error
        return self.objects.get(path)


def ask(gate: Any, *namespaces: str) -> list[bool]:
    async def scenario() -> list[bool]:
        leads = await gate()
        return [await leads(ns) for ns in namespaces]

    return asyncio.run(scenario())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def leadership(getter: Getter, namespaces: list[str] | None = None, **kwargs: Any) -> Leadership:
    return Leadership(
        getter,
        name="relay",
        identity="me",
        priority=3,
        namespaces=namespaces,
        clock=lambda: NOW,
        **kwargs,
    )


def test_cluster_wide_replica_reads_the_cluster_peering() -> None:
    path = peering_path("relay", None)
    getter = Getter({path: {"status": {"me": peer(3), "b": peer(1)}}})
    changes: list[bool] = []
    replica = leadership(getter, on_change=changes.append)
    assert not replica.leading  # until it has looked
    assert asyncio.run(replica.refresh()) is True
    assert getter.paths == ["/apis/kopf.dev/v1/clusterkopfpeerings/relay"]
    assert ask(replica.gate, "a", "b") == [True, True]
    getter.objects[path]["status"]["b"] = peer(4)  # a higher priority joins
    assert asyncio.run(replica.refresh()) is False
    assert ask(replica.gate, "a") == [False]
    assert changes == [True, False]


def test_namespaced_replica_leads_only_where_every_peering_says_so() -> None:
    # kopf pauses the whole operator when any of its peerings says another replica leads.
    getter = Getter(
        {
            peering_path("relay", "a"): {"status": {"me": peer(3)}},
            peering_path("relay", "b"): {"status": {"me": peer(3), "x": peer(9)}},
        }
    )
    assert asyncio.run(leadership(getter, ["a"]).refresh()) is True
    assert asyncio.run(leadership(getter, ["a", "b"]).refresh()) is False
    assert asyncio.run(leadership(getter, ["a", "missing"]).refresh()) is False


def test_unreadable_peering_means_standing_by() -> None:
    replica = leadership(Getter({}, error=RetryableError("API down")))
    assert asyncio.run(replica.refresh()) is False


def test_standalone_always_leads() -> None:
    assert ask(always, "anything") == [True]
    alone = Leadership(None, name=None, identity="me", priority=0, namespaces=None)
    assert alone.leading and alone.standalone and alone.fresh(0.0)


def test_index_entries_from_before_a_standby_are_not_fresh() -> None:
    """A standby's kopf index is frozen: entries indexed before (or during) a standby
    period are stale once the replica leads again; entries indexed after are live."""
    path = peering_path("relay", None)
    getter = Getter({path: {"status": {"me": peer(3)}}})
    clock = Clock()
    replica = leadership(getter, monotonic=clock)
    asyncio.run(replica.refresh())
    clock.now = 110.0
    indexed_while_leading = 105.0
    assert replica.fresh(indexed_while_leading)

    getter.objects[path]["status"]["other"] = peer(7)  # demoted: kopf pauses, index freezes
    asyncio.run(replica.refresh())
    assert not replica.fresh(indexed_while_leading)
    assert not replica.fresh(clock.now)

    clock.now = 130.0
    asyncio.run(replica.refresh())  # still standing by at 130
    del getter.objects[path]["status"]["other"]  # the other one left: we lead again
    clock.now = 140.0
    asyncio.run(replica.refresh())
    assert replica.leading
    assert not replica.fresh(indexed_while_leading)  # frozen since the demotion
    assert not replica.fresh(125.0)  # indexed before the last standby look
    assert replica.fresh(135.0)  # indexed after kopf resumed


def test_peering_with_namespace_patterns_is_refused() -> None:
    from runlog_relay.operator.settings import OperatorSettings

    with pytest.raises(ValueError, match="by name"):
        OperatorSettings(namespaces=["team-*"], peering={"name": "relay"})
    OperatorSettings(namespaces=["team-a"], peering={"name": "relay"})
