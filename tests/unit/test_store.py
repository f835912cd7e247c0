"""sidecar.store: upload workers and store health, with a fake StorePort and a fake clock.

Workers run in the test's thread (``concurrency=0``, ``work_once``) unless a test is
about the threads themselves; the queue's delays run on a fake clock.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from tests.support.fakes import FakeClock, FakeStore, denied, refused, request, unreachable
from tests.support.waiting import wait_until

from runlog_relay.layout import Layout
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.queue import UploadQueue
from runlog_relay.sidecar.store import RETRY_CAP_SECONDS, StoreHealth, UploadWorkers
from runlog_relay.sidecar.types import Inbox, Stale, Uploaded, UploadFailed, UploadRequest
from runlog_relay.stableread import read_stable


class Rig:
    def __init__(self, *, fail_fast: bool = False, concurrency: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry)
        self.clock = FakeClock()
        self.store = FakeStore()
        self.outcomes: list[Inbox] = []
        self.recovered = 0
        self.health = StoreHealth(
            self.metrics, on_recovered=self._recovered, permanent_retry=lambda: 30.0
        )
        self.queue = UploadQueue(max_pending_bytes=1 << 20, clock=self.clock)
        self.workers = UploadWorkers(
            self.queue,
            lambda: self.store,
            self.metrics,
            self.health,
            concurrency=concurrency,
            on_outcome=self.outcomes.append,
            fail_fast=fail_fast,
            clock=self.clock,
        )

    def _recovered(self) -> None:
        self.recovered += 1
        self.queue.expedite()

    def run(self) -> bool:
        return self.workers.work_once(timeout=0)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def test_an_upload_reports_its_outcome_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rig.queue.put(request("r/RunLog", "v1", seen_at=rig.clock() - 0.1))
    assert rig.run()
    assert rig.store.body("r/RunLog") == b"v1"
    assert rig.outcomes == [Uploaded(relative="r/RunLog.json", etag=request("r/RunLog", "v1").etag)]
    assert rig.value("runlog_relay_uploads_total", result="success") == 1
    assert rig.value("runlog_relay_upload_bytes_total") == 2
    assert rig.value("runlog_relay_sidecar_store_ready") == 1
    assert rig.queue.pending() == []


def test_transient_failures_are_retried_with_backoff_for_ever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="runlog_relay")
    rig = Rig()
    rig.store.fail_puts = [unreachable() for _ in range(12)]
    rig.queue.put(request("r/RunLog", "v1"))
    assert rig.run()  # the first attempt fails
    waits = []
    while rig.store.body("r/RunLog") is None:
        assert rig.queue.pending() == ["r/RunLog"]  # never dropped, never left "in flight"
        assert not rig.run()  # waiting for its delay
        before = rig.clock()
        while not rig.run():
            rig.clock.advance(0.05)
        waits.append(rig.clock() - before)
    assert rig.store.body("r/RunLog") == b"v1"  # no giving up after a few attempts
    assert len(rig.store.puts) == 13
    assert max(waits) <= RETRY_CAP_SECONDS + 0.05
    assert waits[-1] >= RETRY_CAP_SECONDS / 2 - 0.05  # it backed off up to the cap
    assert rig.value("runlog_relay_uploads_total", result="retry") == 12
    assert all(isinstance(o, UploadFailed) and o.doubtful for o in rig.outcomes[:-1])
    # One WARNING for the outage, one INFO when it is over; retries are DEBUG.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert rig.recovered == 1


def test_a_request_that_never_left_is_not_doubtful() -> None:
    rig = Rig()
    rig.store.fail_puts = [refused()]
    rig.queue.put(request("r/RunLog"))
    rig.run()
    (failed,) = rig.outcomes
    assert isinstance(failed, UploadFailed) and not failed.doubtful


def test_a_permanent_error_holds_the_queue_and_probes_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    rig.store.fail_put_for = lambda key: denied()
    for index in range(5):
        rig.queue.put(request(f"r/Branch-{index}"))
    assert rig.run()
    assert not rig.health.ok and "AccessDenied" in (rig.health.problem or "")
    assert rig.value("runlog_relay_sidecar_store_ready") == 0
    assert not rig.run()  # everything holds: no hammering with every key
    for _ in range(3):
        rig.clock.advance(29.9)
        assert not rig.run()
        rig.clock.advance(0.1)
        assert rig.run()  # one probe per interval
        assert not rig.run()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # one line per distinct problem
    assert "retrying every 30s" in errors[0].getMessage()
    # Fixed: the next probe succeeds and everything goes at once.
    rig.store.fail_put_for = lambda key: None
    rig.clock.advance(30.0)
    for _ in range(5):
        assert rig.run()
    assert len(rig.store.objects) == 5
    assert rig.health.ok


def test_with_fail_fast_a_permanent_error_gives_the_key_up() -> None:
    rig = Rig(fail_fast=True)
    rig.store.fail_puts = [denied()]
    rig.queue.put(request("r/RunLog"))
    rig.run()
    (failed,) = rig.outcomes
    assert isinstance(failed, UploadFailed) and failed.given_up
    assert rig.queue.failed() == {"r/RunLog": str(denied())}
    assert rig.queue.pending() == []


def test_a_worker_survives_any_exception_and_the_key_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(concurrency=1)
    rig.store.fail_puts = [KeyError("a bug"), RuntimeError("another"), KeyError("again")]
    rig.queue.put(request("r/RunLog", "v1"))
    for attempt in (1, 2, 3):
        wait_until(lambda attempt=attempt: rig.queue.attempts("r/RunLog") == attempt)
        rig.clock.advance(RETRY_CAP_SECONDS)  # its backoff is over
    wait_until(lambda: rig.store.body("r/RunLog") == b"v1", what="uploaded after the bugs")
    assert rig.workers.alive
    assert rig.queue.pending() == []
    assert rig.value("runlog_relay_uploads_total", result="failure") == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert {r.exc_info[0] for r in errors if r.exc_info} == {KeyError, RuntimeError}
    assert len(errors) == 2  # once per kind of exception
    rig.queue.close()
    rig.workers.join(5)


def test_a_file_changed_since_its_check_is_not_uploaded(tmp_path: Path) -> None:
    path = tmp_path / "r" / "RunLog.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"v": 1}))
    snapshot = read_stable(path, keep_body=0)
    path.write_text(json.dumps({"v": 2}))
    rig = Rig()
    rig.queue.put(
        UploadRequest(
            key="r/RunLog",
            run_id="r",
            relative="r/RunLog.json",
            root=tmp_path,
            layout=Layout.CHUNKED,
            snapshot=snapshot,
            seen_at=0.0,
        )
    )
    rig.run()
    assert rig.store.objects == {}
    assert rig.outcomes == [Stale(relative="r/RunLog.json", etag=snapshot.etag)]
    assert rig.queue.pending() == []


@pytest.mark.parametrize("layout", list(Layout))
def test_a_big_body_is_streamed_from_the_file(tmp_path: Path, layout: Layout) -> None:
    path = tmp_path / "r" / "RunLog.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"pad": 'x"\n' * 1000}))
    snapshot = read_stable(path, layout=layout, keep_body=0)
    assert snapshot.body is None
    rig = Rig()
    rig.queue.put(
        UploadRequest(
            key="r/RunLog",
            run_id="r",
            relative="r/RunLog.json",
            root=tmp_path,
            layout=layout,
            snapshot=snapshot,
            seen_at=0.0,
        )
    )
    rig.run()
    body = read_stable(path, layout=layout).body
    assert rig.store.body("r/RunLog") == body
    assert isinstance(rig.outcomes[0], Uploaded)


def test_streamed_uploads_in_flight_are_bounded_by_the_budget(tmp_path: Path) -> None:
    rig = Rig()
    rig.workers.max_stream_bytes = 10
    budget = rig.workers._budget
    budget.acquire(8)
    got = threading.Event()
    thread = threading.Thread(target=lambda: (budget.acquire(8), got.set()))
    thread.start()
    assert not got.wait(0.1)  # 8 + 8 > 10: waits
    budget.release(8)
    assert got.wait(5)
    thread.join(5)
    budget.release(8)
    budget.acquire(100)  # one oversized upload is always admitted
    budget.release(100)


def test_a_listing_success_does_not_clear_a_refused_upload() -> None:
    rig = Rig()
    rig.health.broken("uploading: AccessDenied", code="AccessDenied")
    rig.health.healthy(source="list")
    assert not rig.health.ok  # the bucket answers, but still refuses our writes
    rig.health.healthy()
    assert rig.health.ok
