"""sidecar.queue: coalescing, per-key ordering, delays, holds, back-pressure, close.

Delays are measured on a fake clock: a test moves time instead of sleeping."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from tests.support.fakes import FakeClock, request, snapshot_of

from runlog_relay.layout import Layout
from runlog_relay.sidecar.queue import UploadQueue
from runlog_relay.sidecar.types import UploadRequest

#: Generous bound for a wait that must succeed; only reached when the test fails.
PATIENCE = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def uq(clock: FakeClock) -> UploadQueue:
    return UploadQueue(max_pending_bytes=1 << 20, clock=clock)


def req(key: str, body: bytes | str = b"{}", seen_at: float = 0.0) -> UploadRequest:
    return request(key, body, seen_at=seen_at)


# --------------------------------------------------------------------------- coalescing


def test_a_thousand_rewrites_during_one_upload_make_exactly_one_more(uq: UploadQueue) -> None:
    uq.put(req("r/RunLog", "v0", seen_at=1.0))
    first = uq.take(timeout=0)
    assert first is not None and first.body == b"v0"

    for version in range(1, 1001):
        uq.put(req("r/RunLog", f"v{version}", seen_at=1.0 + version))
    assert uq.take(timeout=0) is None  # same key in flight: never two at once
    uq.done(first)

    second = uq.take(timeout=0)
    assert second is not None
    assert second.body == b"v1000"
    # The bucket has been behind since the oldest change not yet sent.
    assert second.seen_at == 2.0
    assert uq.take(timeout=0) is None
    uq.done(second)
    assert uq.pending() == []
    assert uq.take(timeout=0) is None


def test_waiting_versions_coalesce_before_any_take(uq: UploadQueue) -> None:
    for version in range(50):
        uq.put(req("r/RunLog", f"v{version}", seen_at=10.0 - version * 0.1))
    only = uq.take(timeout=0)
    assert only is not None and only.body == b"v49"
    assert only.seen_at == pytest.approx(10.0 - 49 * 0.1)  # the minimum seen
    assert uq.take(timeout=0) is None


def test_coalescing_keeps_the_first_seen_time_when_it_is_older(uq: UploadQueue) -> None:
    uq.put(req("k/a", "old", seen_at=5.0))
    uq.put(req("k/a", "new", seen_at=9.0))
    taken = uq.take(timeout=0)
    assert taken is not None
    assert (taken.body, taken.seen_at) == (b"new", 5.0)


# --------------------------------------------------------------------------- ordering


def test_never_two_in_flight_for_one_key_but_other_keys_go(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.put(req("r/A", "a2"))
    uq.put(req("r/B", "b1"))

    b1 = uq.take(timeout=0)
    assert b1 is not None and b1.key == "r/B"
    assert uq.take(timeout=0) is None  # a2 waits for a1

    uq.done(a1)
    a2 = uq.take(timeout=0)
    assert a2 is not None and a2.body == b"a2"
    uq.done(b1)
    uq.done(a2)
    assert uq.pending() == []


def test_keys_are_served_first_in_first_out(uq: UploadQueue) -> None:
    keys = [f"r/K{i}" for i in range(20)]
    for key in keys:
        uq.put(req(key))
    taken = [uq.take(timeout=0) for _ in keys]
    assert [t.key for t in taken if t is not None] == keys


def test_take_blocks_until_a_put(uq: UploadQueue) -> None:
    got: list[UploadRequest | None] = []
    taker = threading.Thread(target=lambda: got.append(uq.take(timeout=PATIENCE)))
    taker.start()
    uq.put(req("r/A", "late"))
    taker.join(PATIENCE)
    assert not taker.is_alive()
    assert got and got[0] is not None and got[0].body == b"late"


def test_take_times_out_with_none(uq: UploadQueue) -> None:
    started = time.monotonic()
    assert uq.take(timeout=0.05) is None
    assert time.monotonic() - started >= 0.04


# --------------------------------------------------------------------------- retry


def test_retry_waits_for_its_delay(uq: UploadQueue, clock: FakeClock) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    assert uq.retry(a1, 2.0) == 1
    assert uq.attempts("r/A") == 1
    assert uq.pending() == ["r/A"]  # nothing dropped
    assert uq.take(timeout=0) is None  # not before its time
    clock.advance(1.9)
    assert uq.take(timeout=0) is None
    clock.advance(0.2)
    again = uq.take(timeout=0)
    assert again is not None and again.body == b"a1"
    uq.done(again)
    assert uq.attempts("r/A") == 0  # success resets the count
    assert uq.pending() == []


def test_a_sleeping_taker_wakes_when_the_delay_ends(uq: UploadQueue, clock: FakeClock) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.retry(a1, 0.5)
    got: list[UploadRequest | None] = []
    taker = threading.Thread(target=lambda: got.append(uq.take(timeout=PATIENCE)))
    taker.start()
    clock.advance(1.0)  # the taker re-reads the clock at least once a second
    taker.join(PATIENCE)
    assert got and got[0] is not None and got[0].body == b"a1"


def test_retry_does_not_hold_up_other_keys(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.retry(a1, 10.0)
    uq.put(req("r/B", "b1"))
    b1 = uq.take(timeout=0)
    assert b1 is not None and b1.key == "r/B"


def test_attempts_grow_with_each_failure(uq: UploadQueue, clock: FakeClock) -> None:
    uq.put(req("r/A", "a1"))
    for attempt in (1, 2, 3, 4, 5):
        taken = uq.take(timeout=0)
        assert taken is not None
        assert uq.retry(taken, 1.0) == attempt
        clock.advance(1.0)


def test_newer_version_replaces_the_retried_one(uq: UploadQueue, clock: FakeClock) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.put(req("r/A", "a2"))  # written while a1 was uploading
    uq.retry(a1, 0.5)  # a1 failed: a2 goes instead, never a1
    clock.advance(0.5)
    taken = uq.take(timeout=0)
    assert taken is not None and taken.body == b"a2"
    uq.done(taken)
    assert uq.take(timeout=0) is None
    assert uq.pending() == []


def test_version_put_during_a_delay_replaces_it_but_still_waits(
    uq: UploadQueue, clock: FakeClock
) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.retry(a1, 1.0)
    uq.put(req("r/A", "a3"))
    assert uq.take(timeout=0) is None  # the key is still waiting
    clock.advance(1.0)
    taken = uq.take(timeout=0)
    assert taken is not None and taken.body == b"a3"
    assert uq.take(timeout=0) is None


def test_expedite_ends_every_delay_now(uq: UploadQueue) -> None:
    for key in ("r/A", "r/B"):
        uq.put(req(key))
        taken = uq.take(timeout=0)
        assert taken is not None
        uq.retry(taken, 3600.0)
    assert uq.take(timeout=0) is None
    assert uq.expedite() == 2
    assert {uq.take(timeout=0).key, uq.take(timeout=0).key} == {"r/A", "r/B"}  # type: ignore[union-attr]


def test_drop_forgets_an_in_flight_request(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.drop(a1)
    assert uq.pending() == []
    uq.put(req("r/A", "a2"))
    a2 = uq.take(timeout=0)
    uq.put(req("r/A", "a3"))
    assert a2 is not None
    uq.drop(a2)  # a newer one waits: it goes next
    a3 = uq.take(timeout=0)
    assert a3 is not None and a3.body == b"a3"


# --------------------------------------------------------------------------- hold


def test_a_hold_sends_one_probe_when_it_ends(uq: UploadQueue, clock: FakeClock) -> None:
    for key in ("r/A", "r/B", "r/C"):
        uq.put(req(key))
    uq.hold(30.0)
    assert uq.take(timeout=0) is None
    clock.advance(30.0)
    probe = uq.take(timeout=0)
    assert probe is not None
    assert uq.take(timeout=0) is None  # one probe at a time
    uq.retry(probe, 30.0)
    uq.hold(30.0)  # the probe failed too
    clock.advance(29.0)
    assert uq.take(timeout=0) is None
    clock.advance(1.0)
    second = uq.take(timeout=0)
    assert second is not None
    uq.done(second)
    uq.release()  # it worked: everything goes
    assert uq.take(timeout=0) is not None
    assert uq.take(timeout=0) is not None


def test_expedite_ends_a_hold(uq: UploadQueue) -> None:
    uq.put(req("r/A"))
    uq.put(req("r/B"))
    uq.hold(3600.0)
    assert uq.take(timeout=0) is None
    uq.expedite()
    assert uq.take(timeout=0) is not None
    assert uq.take(timeout=0) is not None


# --------------------------------------------------------------------------- fail


def test_fail_gives_the_key_up_and_reports_it(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.fail(a1, "AccessDenied")
    assert uq.failed() == {"r/A": "AccessDenied"}
    assert uq.pending() == []
    assert uq.take(timeout=0) is None

    # A newer version is another chance: the failure is forgotten.
    uq.put(req("r/A", "a2"))
    assert uq.failed() == {}
    assert uq.pending() == ["r/A"]


def test_fail_with_a_newer_version_waiting_sends_the_newer_one(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.put(req("r/A", "a2"))
    uq.fail(a1, "InvalidObjectName")
    assert uq.failed() == {}
    taken = uq.take(timeout=0)
    assert taken is not None and taken.body == b"a2"


def test_failed_returns_a_copy(uq: UploadQueue) -> None:
    uq.put(req("r/A"))
    a = uq.take(timeout=0)
    assert a is not None
    uq.fail(a, "x")
    uq.failed().clear()
    assert uq.failed() == {"r/A": "x"}


# --------------------------------------------------------------------------- back-pressure


def test_has_room_says_when_a_body_fits() -> None:
    uq = UploadQueue(max_pending_bytes=100)
    assert uq.has_room(1000)  # nothing waits: even an oversized body is admitted
    uq.put(req("r/A", b"a" * 60))
    assert uq.has_room(40)
    assert not uq.has_room(41)  # 60 + 41 > 100: the detector waits before reading
    taken = uq.take(timeout=0)  # in flight: no longer held waiting
    assert taken is not None
    assert uq.has_room(100)


def test_a_streamed_body_holds_no_memory_while_it_waits() -> None:
    uq = UploadQueue(max_pending_bytes=100)
    streamed = UploadRequest(
        key="r/Big",
        run_id="r",
        relative="r/Big.json",
        root=Path("/logs"),
        layout=Layout.CHUNKED,
        snapshot=snapshot_of(b"x" * 1000, keep=False),
        seen_at=0.0,
    )
    assert streamed.held_bytes == 0
    uq.put(req("r/A", b"a" * 90))
    assert uq.put(streamed)
    assert uq.has_room(10)


def test_a_closed_queue_queues_nothing() -> None:
    uq = UploadQueue(max_pending_bytes=100)
    uq.put(req("r/A", b"a" * 80))
    uq.close()
    assert uq.has_room(80)  # the caller goes on, and put says no
    assert uq.put(req("r/B", b"b" * 80)) is False
    assert uq.pending() == ["r/A"]


# --------------------------------------------------------------------------- idle, close


def test_wait_idle(uq: UploadQueue) -> None:
    assert uq.wait_idle(0) is True
    uq.put(req("r/A"))
    assert uq.wait_idle(0.05) is False

    def worker() -> None:
        taken = uq.take(timeout=PATIENCE)
        assert taken is not None
        uq.done(taken)

    thread = threading.Thread(target=worker)
    thread.start()
    assert uq.wait_idle(PATIENCE) is True
    thread.join(PATIENCE)


def test_wait_idle_counts_in_flight_and_backing_off(uq: UploadQueue) -> None:
    uq.put(req("r/A"))
    taken = uq.take(timeout=0)
    assert taken is not None
    assert uq.wait_idle(0.02) is False  # in flight
    uq.retry(taken, 10.0)
    assert uq.wait_idle(0.02) is False  # waiting on a delay is still pending


def test_close_wakes_a_blocked_take(uq: UploadQueue) -> None:
    got: list[object] = ["not returned"]
    thread = threading.Thread(target=lambda: got.__setitem__(0, uq.take()))
    thread.start()
    assert not uq.closed
    uq.close()
    thread.join(PATIENCE)
    assert not thread.is_alive()
    assert got == [None]
    assert uq.closed
    assert uq.take(timeout=None) is None  # and never blocks again
    assert uq.put(req("r/late")) is False
