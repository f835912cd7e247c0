"""health + metrics: the HTTP endpoints on 127.0.0.1:0, and Prometheus naming rules."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from runlog_relay.health import HealthServer
from runlog_relay.metrics import OperatorMetrics, SidecarMetrics


class Probes:
    """Probe state a test flips; the server calls these on every request."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.live = (True, "")
        self.ready = (False, "NoSuchBucket: bucket 'runnable' does not exist")

    def live_probe(self) -> tuple[bool, str]:
        return self.live

    def ready_probe(self) -> tuple[bool, str]:
        return self.ready


# One server for the endpoint tests.
@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="module")
def metrics(registry: CollectorRegistry) -> SidecarMetrics:
    return SidecarMetrics(registry)


@pytest.fixture(scope="module")
def shared_probes() -> Probes:
    return Probes()


@pytest.fixture
def probes(shared_probes: Probes) -> Probes:
    shared_probes.reset()
    return shared_probes


@pytest.fixture(scope="module")
def server(registry: CollectorRegistry, shared_probes: Probes) -> Iterator[HealthServer]:
    health = HealthServer(
        registry,
        live=shared_probes.live_probe,
        ready=shared_probes.ready_probe,
        host="127.0.0.1",
        port=0,
    )
    health.start()
    try:
        yield health
    finally:
        health.stop()


def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


# --------------------------------------------------------------------------- endpoints


def test_port_zero_picks_a_free_port(server: HealthServer) -> None:
    assert server.port > 0


def test_metrics_are_served_in_prometheus_text_format(
    server: HealthServer, metrics: SidecarMetrics
) -> None:
    metrics.pending_files.set(3)
    metrics.uploads.labels(result="success").inc(5)
    metrics.upload_bytes.inc(1234)
    metrics.sync_lag.observe(0.07)
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert samples[("runlog_relay_pending_files", ())] == 3.0
    assert samples[("runlog_relay_uploads_total", (("result", "success"),))] == 5.0
    assert samples[("runlog_relay_uploads_total", (("result", "failure"),))] == 0.0
    assert samples[("runlog_relay_upload_bytes_total", ())] == 1234.0
    assert samples[("runlog_relay_sync_lag_seconds_count", ())] == 1.0
    assert samples[("runlog_relay_sync_lag_seconds_bucket", (("le", "0.1"),))] == 1.0
    assert samples[("runlog_relay_sync_lag_seconds_bucket", (("le", "0.05"),))] == 0.0


def test_healthz_and_livez_follow_the_live_probe(server: HealthServer, probes: Probes) -> None:
    assert get(server, "/healthz")[::2] == (200, "ok\n")
    assert get(server, "/livez")[::2] == (200, "ok\n")
    probes.live = (False, "a sidecar stage stopped")
    assert get(server, "/healthz")[::2] == (503, "a sidecar stage stopped\n")


def test_readyz_is_503_with_the_reason_then_200(server: HealthServer, probes: Probes) -> None:
    status, content_type, body = get(server, "/readyz")
    assert status == 503
    assert content_type.startswith("text/plain")
    assert body == "NoSuchBucket: bucket 'runnable' does not exist\n"
    probes.ready = (True, "")
    assert get(server, "/readyz")[::2] == (200, "ok\n")
    assert get(server, "/readyz?verbose=1")[0] == 200  # query strings are ignored


def test_not_ready_without_a_reason_still_says_so(server: HealthServer, probes: Probes) -> None:
    probes.ready = (False, "")
    assert get(server, "/readyz")[::2] == (503, "not ok\n")


@pytest.mark.parametrize("path", ["/", "/metricsx", "/ready", "/healthz/extra", "/favicon.ico"])
def test_other_paths_are_404(server: HealthServer, path: str) -> None:
    assert get(server, path)[0] == 404


def test_stop_closes_the_port(probes: Probes) -> None:
    health = HealthServer(
        CollectorRegistry(),
        live=probes.live_probe,
        ready=probes.ready_probe,
        host="127.0.0.1",
        port=0,
    )
    health.start()
    port = health.port
    assert get(health, "/healthz")[0] == 200
    health.stop()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        with pytest.raises(OSError):
            conn.request("GET", "/healthz")
            conn.getresponse()
    finally:
        conn.close()


# --------------------------------------------------------------------------- not a way in


def small_server(probes: Probes, **kwargs: float) -> HealthServer:
    health = HealthServer(
        CollectorRegistry(),
        live=probes.live_probe,
        ready=probes.ready_probe,
        host="127.0.0.1",
        port=0,
        **kwargs,  # type: ignore[arg-type]
    )
    health.start()
    return health


def test_hundreds_of_idle_and_half_sent_connections_cost_no_thread(probes: Probes) -> None:
    health = small_server(probes, read_timeout=30.0)
    threads = threading.active_count()
    idle = []
    try:
        for index in range(300):
            sock = socket.create_connection(("127.0.0.1", health.port))
            if index % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(sock)
        deadline = time.monotonic() + 10
        while health.connections < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health.connections == 300
        assert threading.active_count() == threads  # one loop thread, whatever comes in
        started = time.monotonic()
        assert get(health, "/healthz")[0] == 200  # probes still answer, at once
        assert time.monotonic() - started < 1.0
    finally:
        for sock in idle:
            sock.close()
        health.stop()


def test_a_silent_connection_is_dropped_after_the_read_timeout(probes: Probes) -> None:
    health = small_server(probes, read_timeout=0.3)
    try:
        with socket.create_connection(("127.0.0.1", health.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request, then nothing
            sock.settimeout(5)
            started = time.monotonic()
            assert sock.recv(100) == b""  # closed by the server
            assert 0.25 <= time.monotonic() - started < 4
    finally:
        health.stop()


def test_past_the_limit_the_longest_idle_connection_makes_room(probes: Probes) -> None:
    health = small_server(probes, max_connections=20, read_timeout=30.0)
    idle = [socket.create_connection(("127.0.0.1", health.port)) for _ in range(50)]
    try:
        assert get(health, "/readyz")[0] == 503  # a probe always gets in
        assert health.connections <= 20
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""  # the oldest was closed
    finally:
        for sock in idle:
            sock.close()
        health.stop()


def test_a_request_head_too_large_is_refused(probes: Probes) -> None:
    health = small_server(probes)
    try:
        with socket.create_connection(("127.0.0.1", health.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(100).startswith(b"HTTP/1.1 431")
    finally:
        health.stop()


def test_keep_alive_serves_several_requests_on_one_connection(server: HealthServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for path in ("/healthz", "/metrics", "/readyz"):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status in (200, 503)
        conn.request("HEAD", "/metrics")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
    finally:
        conn.close()


def test_only_get_and_head(server: HealthServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("DELETE", "/healthz")
        assert conn.getresponse().status == 405
    finally:
        conn.close()


# --------------------------------------------------------------------------- naming


REQUIRED_SIDECAR_SAMPLES = {
    "runlog_relay_fs_events_total",
    "runlog_relay_fs_write_bytes_total",
    "runlog_relay_uploads_total",
    "runlog_relay_upload_bytes_total",
    "runlog_relay_sync_lag_seconds_bucket",
    "runlog_relay_pending_files",
    "runlog_relay_torn_reads_total",
    "runlog_relay_retries_total",
    "runlog_relay_last_sync_timestamp_seconds",
    "runlog_relay_runs_tracked",
}
FORBIDDEN_LABELS = {"path", "key", "run_id", "file", "object", "bucket_key"}


def families(registry: CollectorRegistry) -> list:  # type: ignore[type-arg]
    return list(registry.collect())


@pytest.mark.parametrize("metrics_class", [SidecarMetrics, OperatorMetrics])
def test_metric_names_follow_prometheus_conventions(metrics_class: type) -> None:
    registry = CollectorRegistry()
    metrics_class(registry)
    collected = families(registry)
    assert collected
    for family in collected:
        assert family.name.startswith("runlog_relay_"), family.name
        assert family.documentation.strip(), f"{family.name} has no help text"
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client adds it once
            names = {s.name for s in family.samples}
            assert f"{family.name}_total" in names or not family.samples, names
        else:
            assert not family.name.endswith("_total"), f"{family.name} is not a counter"
        # Base units, spelled at the end of the name.
        for unit_word in ("seconds", "bytes"):
            if unit_word in family.name:
                assert family.name.endswith(unit_word), family.name
        for avoided in ("millis", "_ms", "kilobytes", "_kb", "minutes"):
            assert avoided not in family.name, family.name


@pytest.mark.parametrize("metrics_class", [SidecarMetrics, OperatorMetrics])
def test_no_label_is_a_path_key_or_run_id(metrics_class: type) -> None:
    registry = CollectorRegistry()
    metrics_class(registry)
    labels = {name for family in families(registry) for s in family.samples for name in s.labels}
    assert not labels & FORBIDDEN_LABELS, labels


def test_sidecar_exports_the_metrics_the_issue_names() -> None:
    registry = CollectorRegistry()
    SidecarMetrics(registry)
    names = {s.name for family in families(registry) for s in family.samples}
    assert names >= REQUIRED_SIDECAR_SAMPLES, REQUIRED_SIDECAR_SAMPLES - names


def test_labelled_counters_start_at_zero_for_every_value() -> None:
    registry = CollectorRegistry()
    SidecarMetrics(registry)
    for result in ("success", "retry", "failure"):
        assert registry.get_sample_value("runlog_relay_uploads_total", {"result": result}) == 0.0
    for result in ("applied", "rejected"):
        value = registry.get_sample_value("runlog_relay_config_reloads_total", {"result": result})
        assert value == 0.0


def test_skipped_reasons_are_a_bounded_label() -> None:
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    metrics.skipped_files.labels(reason="symlink").inc()
    assert registry.get_sample_value("runlog_relay_skipped_files_total", {"reason": "symlink"}) == 1


def test_two_metric_sets_do_not_share_a_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    SidecarMetrics(first).pending_files.set(7)
    SidecarMetrics(second)
    assert first.get_sample_value("runlog_relay_pending_files") == 7
    assert second.get_sample_value("runlog_relay_pending_files") == 0
