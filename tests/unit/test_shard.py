"""Scale-out membership and assignment (runlog_relay.sidecar.shard) with a fake Lease
store and a fake clock; the real thing against the Kubernetes emulator is
tests/integration/test_scale_out.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from runlog_relay import cli
from runlog_relay.config.settings import SidecarShard
from runlog_relay.errors import ConfigError, RetryableError
from runlog_relay.sidecar.leases import LeaseRecord
from runlog_relay.sidecar.shard import Shard, owner_of, placement

RUNS = [f"run-{i:04d}" for i in range(3000)]


def test_rendezvous_spreads_runs_and_moves_only_what_it_must() -> None:
    three = {run: owner_of(run, ["a", "b", "c"]) for run in RUNS}
    counts = Counter(three.values())
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > len(RUNS) / 3 * 0.85  # roughly even
    # Without b, only b's runs move; with d added, runs move only to d.
    without_b = {run: owner_of(run, ["a", "c"]) for run in RUNS}
    assert all(without_b[r] == three[r] for r in RUNS if three[r] != "b")
    with_d = {run: owner_of(run, ["a", "b", "c", "d"]) for run in RUNS}
    assert all(with_d[r] in (three[r], "d") for r in RUNS)
    assert owner_of("run", []) is None


class FakeLeases:
    def __init__(self) -> None:
        self.renewed: dict[str, int] = {}
        self.released: list[str] = []
        self.fail = False

    def renew(self, identity: str, duration: float) -> None:
        if self.fail:
            raise RetryableError("API server unreachable")
        self.renewed[identity] = self.renewed.get(identity, 0) + 1

    def release(self, identity: str) -> None:
        self.released.append(identity)
        self.renewed.pop(identity, None)

    def members(self) -> list[LeaseRecord]:
        return [LeaseRecord(h, str(n), 3.0) for h, n in self.renewed.items()]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _shard(identity: str, leases: FakeLeases, clock: Clock, changes: list[str]) -> Shard:
    return Shard(identity, leases, lease_seconds=3.0, on_change=changes.append, clock=clock)


def test_gains_wait_one_period_losses_apply_at_once_and_the_dead_are_dropped() -> None:
    leases, clock, changes = FakeLeases(), Clock(), []
    a = _shard("a", leases, clock, changes)
    assert not any(a.owns(r) for r in RUNS[:50])  # no view yet: claims nothing
    a.step()
    assert a.members == {"a"} and not a.owns(RUNS[0])  # a gain: one period later
    clock.now += 1.0
    a.step()
    assert all(a.owns(r) for r in RUNS[:50])
    leases.renew("b", 3.0)  # b joins: a loses b's runs at once
    clock.now += 1.0
    a.step()
    b_runs = [r for r in RUNS if owner_of(r, ["a", "b"]) == "b"]
    assert b_runs and not any(a.owns(r) for r in b_runs)
    # b stops renewing: gone after lease_seconds of no change, its runs taken a period later
    for _ in range(3):
        clock.now += 1.0
        a.step()
    assert a.members == {"a"} and not a.owns(b_runs[0])
    clock.now += 1.0
    a.step()
    assert all(a.owns(r) for r in b_runs)
    assert changes.count("adopted") == 2


def test_an_unreachable_api_keeps_the_last_view_and_leave_releases() -> None:
    leases, clock, changes = FakeLeases(), Clock(), []
    a = _shard("a", leases, clock, changes)
    leases.renew("b", 3.0)
    a.step()
    clock.now += 1.0
    leases.renew("b", 3.0)
    a.step()
    assert a.members == {"a", "b"}
    leases.fail = True
    for _ in range(10):
        clock.now += 1.0
        a.step()
    assert a.members == {"a", "b"}  # never a guess: b's runs are not claimed
    a.leave()
    assert leases.released == ["a"]


def test_leases_of_long_gone_replicas_are_deleted() -> None:
    leases, clock, changes = FakeLeases(), Clock(), []
    a = _shard("a", leases, clock, changes)
    leases.renew("gone", 3.0)
    for _ in range(14):
        a.step()
        clock.now += 1.0
    assert "gone" in leases.released and "a" not in leases.released


def test_placement_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="cannot name a Lease"):
        placement(SidecarShard(group="relay", identity="Bad_Name", namespace="ns"))
    with pytest.raises(ConfigError, match="not a Kubernetes pod"):
        placement(SidecarShard(group="relay", identity="r0", namespace="ns"))
    monkeypatch.setenv("POD_NAME", "relay-7f9c-x2")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert placement(SidecarShard(group="relay")) == ("relay-7f9c-x2", "team-a")


def test_once_and_scale_out_do_not_mix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_SHARD__NAMESPACE", "default")
    monkeypatch.setenv("RUNLOG_RELAY_SHARD__API_URL", "http://127.0.0.1:1")
    args = ["sidecar", "--source", str(tmp_path), "--once", "--shard-group", "relay"]
    code = cli.main([*args, "--shard-identity", "r0", "--endpoint", "http://127.0.0.1:1"])
    assert code == 2
    assert "--once mirrors the whole folder" in capsys.readouterr().err
