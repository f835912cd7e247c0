"""sidecar.queue: coalescing, per-key ordering, backoff, back-pressure, idle and close."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.queue import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    UploadQueue,
    backoff_delay,
)
from runlog_relay.sidecar.types import UploadRequest

#: Generous bound for a wait that must succeed; only reached when the test fails.
PATIENCE = 5.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def uq(registry: CollectorRegistry) -> UploadQueue:
    return UploadQueue(SidecarMetrics(registry), max_pending_bytes=1 << 20)


def req(key: str, body: bytes | str = b"{}", seen_at: float = 0.0) -> UploadRequest:
    data = body.encode() if isinstance(body, str) else body
    return UploadRequest(
        key=key,
        run_id=key.split("/")[0],
        path=Path("/logs") / f"{key}.json",
        body=data,
        etag=f"etag-of-{data[:20]!r}",
        seen_at=seen_at,
        file_size=len(data),
    )


def pending_gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("runlog_relay_pending_files")


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


def test_retry_waits_for_its_backoff(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    retried_at = time.monotonic()
    delay = uq.retry(a1, cap=0.1)
    assert 0.05 <= delay <= 0.1
    assert uq.attempts("r/A") == 1
    assert uq.pending() == ["r/A"]  # nothing dropped
    assert uq.take(timeout=0) is None  # not before its time

    again = uq.take(timeout=PATIENCE)
    assert again is not None and again.body == b"a1"
    assert time.monotonic() - retried_at >= delay - 0.005
    uq.done(again)
    assert uq.attempts("r/A") == 0  # success resets the backoff
    assert uq.pending() == []


def test_retry_does_not_hold_up_other_keys(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.retry(a1, cap=BACKOFF_CAP_SECONDS)
    uq.put(req("r/B", "b1"))
    b1 = uq.take(timeout=0)
    assert b1 is not None and b1.key == "r/B"


def test_attempts_grow_with_each_failure(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    for attempt in (1, 2, 3):
        taken = uq.take(timeout=PATIENCE)
        assert taken is not None
        uq.retry(taken, cap=0.01)
        assert uq.attempts("r/A") == attempt


def test_newer_version_replaces_the_retried_one(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.put(req("r/A", "a2"))  # written while a1 was uploading
    uq.retry(a1, cap=0.02)  # a1 failed: a2 goes instead, never a1
    taken = uq.take(timeout=PATIENCE)
    assert taken is not None and taken.body == b"a2"
    uq.done(taken)
    assert uq.take(timeout=0.05) is None
    assert uq.pending() == []


def test_version_put_during_backoff_replaces_it_but_still_waits(uq: UploadQueue) -> None:
    uq.put(req("r/A", "a1"))
    a1 = uq.take(timeout=0)
    assert a1 is not None
    uq.retry(a1, cap=0.1)
    uq.put(req("r/A", "a3"))
    assert uq.take(timeout=0) is None  # the key is still backing off
    taken = uq.take(timeout=PATIENCE)
    assert taken is not None and taken.body == b"a3"
    assert uq.take(timeout=0.05) is None


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


def test_put_blocks_over_max_pending_bytes_until_a_take(registry: CollectorRegistry) -> None:
    uq = UploadQueue(SidecarMetrics(registry), max_pending_bytes=100)
    uq.put(req("r/A", b"a" * 60))
    returned = threading.Event()

    def producer() -> None:
        uq.put(req("r/B", b"b" * 60))
        returned.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    # The producer must still be inside put(): 60 + 60 > 100.
    assert not returned.wait(0.2)
    assert uq.pending() == ["r/A"]

    taken = uq.take(timeout=0)  # frees 60 bytes and wakes the producer
    assert taken is not None and taken.key == "r/A"
    assert returned.wait(PATIENCE)
    thread.join(PATIENCE)
    assert uq.pending() == ["r/A", "r/B"]


def test_an_oversized_body_is_admitted_when_nothing_waits(registry: CollectorRegistry) -> None:
    uq = UploadQueue(SidecarMetrics(registry), max_pending_bytes=100)
    uq.put(req("r/Huge", b"x" * 1000))  # would deadlock if it had to fit
    taken = uq.take(timeout=0)
    assert taken is not None and len(taken.body) == 1000


def test_in_flight_bodies_do_not_count_against_the_limit(registry: CollectorRegistry) -> None:
    uq = UploadQueue(SidecarMetrics(registry), max_pending_bytes=100)
    uq.put(req("r/A", b"a" * 90))
    assert uq.take(timeout=0) is not None
    done = threading.Event()
    thread = threading.Thread(target=lambda: (uq.put(req("r/B", b"b" * 90)), done.set()))
    thread.start()
    assert done.wait(PATIENCE)
    thread.join(PATIENCE)


def test_close_releases_a_blocked_producer(registry: CollectorRegistry) -> None:
    uq = UploadQueue(SidecarMetrics(registry), max_pending_bytes=100)
    uq.put(req("r/A", b"a" * 80))
    returned = threading.Event()
    thread = threading.Thread(target=lambda: (uq.put(req("r/B", b"b" * 80)), returned.set()))
    thread.start()
    assert not returned.wait(0.1)
    uq.close()
    assert returned.wait(PATIENCE)
    thread.join(PATIENCE)


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
    uq.retry(taken, cap=BACKOFF_CAP_SECONDS)
    assert uq.wait_idle(0.02) is False  # backing off is still pending


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


# --------------------------------------------------------------------------- gauge


def test_pending_gauge_counts_keys_waiting_in_flight_and_retrying(
    uq: UploadQueue, registry: CollectorRegistry
) -> None:
    assert pending_gauge(registry) == 0.0
    uq.put(req("r/A", "a1"))
    uq.put(req("r/B", "b1"))
    assert pending_gauge(registry) == 2.0
    for version in range(10):
        uq.put(req("r/A", f"a{version}"))
    assert pending_gauge(registry) == 2.0  # coalesced: still two files

    a = uq.take(timeout=0)
    assert a is not None
    assert pending_gauge(registry) == 2.0  # in flight is still pending
    uq.put(req("r/A", "a-next"))  # waiting and in flight: one file
    assert pending_gauge(registry) == 2.0
    uq.retry(a, cap=0.01)
    assert pending_gauge(registry) == 2.0

    b = uq.take(timeout=0)
    assert b is not None and b.key == "r/B"
    uq.done(b)
    assert pending_gauge(registry) == 1.0
    a2 = uq.take(timeout=PATIENCE)
    assert a2 is not None
    uq.fail(a2, "gone")
    assert pending_gauge(registry) == 0.0


# --------------------------------------------------------------------------- backoff_delay


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 8, 16, 17, 100, 10_000])
def test_backoff_delay_stays_within_half_to_full_ceiling(attempt: int) -> None:
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(attempt, 16))
    for _ in range(200):
        delay = backoff_delay(attempt)
        assert ceiling / 2 <= delay <= ceiling
        assert delay <= BACKOFF_CAP_SECONDS


def test_backoff_delay_grows_then_caps() -> None:
    assert max(backoff_delay(1) for _ in range(50)) <= 2 * BACKOFF_BASE_SECONDS
    assert min(backoff_delay(20) for _ in range(50)) >= BACKOFF_CAP_SECONDS / 2
    assert max(backoff_delay(20, cap=0.5) for _ in range(50)) <= 0.5


def test_backoff_delay_is_jittered() -> None:
    assert len({backoff_delay(10) for _ in range(50)}) > 1
