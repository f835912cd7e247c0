"""The peering gate of the recheck loop: only the live top-priority replica rechecks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from runlog_relay.errors import RetryableError
from runlog_relay.operator.leadership import PeeringGate, always, is_leading, peering_path

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


def test_cluster_wide_gate_reads_the_cluster_peering_once_per_round() -> None:
    path = peering_path("relay", None)
    getter = Getter({path: {"status": {"me": peer(3), "b": peer(1)}}})
    gate = PeeringGate(
        getter, name="relay", identity="me", priority=3, clusterwide=True, clock=lambda: NOW
    )
    assert ask(gate, "a", "b", "c") == [True, True, True]
    assert getter.paths == ["/apis/kopf.dev/v1/clusterkopfpeerings/relay"]


def test_namespaced_gate_decides_per_namespace() -> None:
    getter = Getter(
        {
            peering_path("relay", "a"): {"status": {"me": peer(3)}},
            peering_path("relay", "b"): {"status": {"me": peer(3), "x": peer(9)}},
        }
    )
    gate = PeeringGate(
        getter, name="relay", identity="me", priority=3, clusterwide=False, clock=lambda: NOW
    )
    assert ask(gate, "a", "b", "a", "missing") == [True, False, True, False]
    assert getter.paths.count("/apis/kopf.dev/v1/namespaces/a/kopfpeerings/relay") == 1


def test_unreadable_peering_means_do_not_act() -> None:
    gate = PeeringGate(
        Getter({}, error=RetryableError("API down")),
        name="relay",
        identity="me",
        priority=3,
        clusterwide=True,
    )
    assert ask(gate, "a") == [False]


def test_standalone_always_leads() -> None:
    assert ask(always, "anything") == [True]
