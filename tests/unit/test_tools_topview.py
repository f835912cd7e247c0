"""top's pure parts, fed with the real exposition of runlog_relay.metrics.SidecarMetrics."""

from __future__ import annotations

import io
import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from runlog_relay.metrics import SidecarMetrics
from runlog_relay.tools.top import (
    SidecarView,
    Snapshot,
    compute_view,
    histogram_quantile,
    normalise_url,
    parse_metrics,
    redact_url,
    render,
    run_top,
    scrape,
)

URL = "http://sidecar:9464/metrics"


class Sidecar:
    """A SidecarMetrics on its own registry, scraped as text like top scrapes it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry)

    def scrape(self, at: float):
        return parse_metrics(generate_latest(self.registry).decode(), at=at)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(0.1, 5), (0.5, 10), (math.inf, 10)], 0.1),
        (0.75, [(0.1, 5), (0.5, 10), (math.inf, 10)], 0.3),
        (0.5, [(0.1, 0), (0.5, 4), (math.inf, 4)], 0.3),
        (0.95, [(0.1, 0), (1.0, 0), (math.inf, 3)], 1.0),  # beyond the last bound
        (0.5, [(0.1, 0), (math.inf, 0)], None),
        (0.5, [], None),
    ],
)
def test_histogram_quantile_like_prometheus(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    result = histogram_quantile(q, buckets)
    assert result == (None if expected is None else pytest.approx(expected))


def test_rates_and_lag_come_from_the_refresh_window() -> None:
    sidecar = Sidecar()
    m = sidecar.metrics
    m.store_ready.set(1)
    for _ in range(100):
        m.sync_lag.observe(20.0)  # an old backlog: must not weigh on the window's lag
    m.uploads.labels(result="success").inc(100)
    before = sidecar.scrape(at=10.0)

    m.uploads.labels(result="success").inc(10)
    m.uploads.labels(result="failure").inc(2)
    m.retries.inc(4)
    m.fs_write_bytes.inc(4096)
    m.upload_bytes.inc(1024)
    m.pending_files.set(7)
    m.torn_files.set(1)
    for value in (0.03,) * 9 + (0.7,):
        m.sync_lag.observe(value)
    after = sidecar.scrape(at=12.0)

    view = compute_view(URL, before, after)
    assert view.up and view.store_ready is True
    assert (view.pending, view.torn) == (7, 1)
    assert view.uploads_per_s == pytest.approx(5.0)
    assert view.errors_per_s == pytest.approx(1.0)
    assert view.retries_per_s == pytest.approx(2.0)
    assert view.write_bytes_per_s == pytest.approx(2048.0)
    assert view.upload_bytes_per_s == pytest.approx(512.0)
    assert view.lag_scope == "window"
    assert 0.025 < view.lag_p50 <= 0.05  # nine of ten in the (0.025, 0.05] bucket
    assert 0.5 < view.lag_p95 <= 1.0


def test_first_frame_has_lag_since_start_and_no_rates() -> None:
    sidecar = Sidecar()
    sidecar.metrics.sync_lag.observe(0.2)
    view = compute_view(URL, None, sidecar.scrape(at=1.0))
    assert view.lag_scope == "total" and 0.1 < view.lag_p50 <= 0.25
    assert view.uploads_per_s is None and view.write_bytes_per_s is None


def test_a_restarted_sidecar_counts_from_zero() -> None:
    old, new = Sidecar(), Sidecar()
    old.metrics.uploads.labels(result="success").inc(500)
    for _ in range(50):
        old.metrics.sync_lag.observe(5)
    new.metrics.uploads.labels(result="success").inc(4)
    new.metrics.sync_lag.observe(0.01)
    view = compute_view(URL, old.scrape(at=0.0), new.scrape(at=2.0))
    assert view.uploads_per_s == pytest.approx(2.0)  # not negative
    assert view.lag_p50 is not None and view.lag_p50 <= 0.025


def test_down_and_foreign_endpoints() -> None:
    down = compute_view(URL, None, "Connection refused")
    assert not down.up and down.error == "Connection refused"
    foreign = compute_view(URL, None, parse_metrics("other_metric_total 3\n", at=1.0))
    assert not foreign.up and "no runlog-relay metrics" in foreign.error


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:9464", "http://127.0.0.1:9464/metrics"),
        ("http://pod:9464", "http://pod:9464/metrics"),
        ("http://pod:9464/", "http://pod:9464/metrics"),
        ("https://pod/custom/path", "https://pod/custom/path"),
        ("pod:9464/metrics?x=1", "http://pod:9464/metrics?x=1"),
    ],
)
def test_normalise_url(given: str, url: str) -> None:
    assert normalise_url(given) == url


def test_render_shows_one_row_per_sidecar() -> None:
    views = [
        SidecarView(
            URL,
            up=True,
            store_ready=False,
            pending=3,
            torn=2,
            lag_p50=0.012,
            lag_p95=1.5,
            uploads_per_s=5,
            errors_per_s=0.5,
            retries_per_s=0,
            write_bytes_per_s=2048,
        ),
        SidecarView("http://other:9464/metrics", up=False, error="timed out"),
    ]
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(render(views, interval=2))
    text = console.export_text()
    assert "runlog-relay top  1/2 up  every 2s" in text
    row = next(line for line in text.splitlines() if URL in line).split()
    assert row == [URL, "UP", "NOT", "READY", "3", "12ms", "1.5s", "5.0/s", "0.5/s", "0.0/s",
                   "2.0", "KiB/s", "2"]  # fmt: skip
    down = next(line for line in text.splitlines() if "other" in line)
    assert "DOWN timed out" in " ".join(down.split())
    assert "Ctrl-C quits" in text


def test_the_single_frame_of_once_names_its_window_and_no_key_to_quit() -> None:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(render([SidecarView(URL, up=False, error="refused")], interval=2, single=True))
    text = console.export_text()
    assert "0/1 up  over 2s" in text
    assert "Ctrl-C" not in text


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("not a url", "is not a URL (no valid host)"),
        ("http://[::1", "is not a URL (Invalid IPv6 URL)"),
        ("http://127.0.0.1:99999", "Port out of range"),  # was reported as "refused"
        ("http://127.0.0.1:0", "port 0 is not a port"),
        ("http://:9464", "no valid host"),
        ("ftp://pod:9464", "only http and https URLs"),
    ],
)
def test_a_bad_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], given: str, says: str
) -> None:
    """A traceback and exit 1 (or "Connection refused" for port 99999) before."""
    from tests.support.toolcli import cli

    result = cli(capsys, "top", "--once", "--url", given)
    assert result.code == 2
    assert says in result.err and "Traceback" not in result.err


def test_credentials_in_a_url_are_never_shown_and_go_as_basic_auth() -> None:
    import base64
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(generate_latest(Sidecar().registry))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = normalise_url(f"user:S3cret%40pw@127.0.0.1:{server.server_port}")
        assert redact_url(url) == f"http://user:***@127.0.0.1:{server.server_port}/metrics"
        assert isinstance(scrape(url, timeout=5), Snapshot)
        assert seen == ["Basic " + base64.b64encode(b"user:S3cret@pw").decode()]
        out = io.StringIO()
        top = run_top([url], interval=0.05, once=True, console=Console(file=out, width=200))
        assert top == 0
        assert "S3cret" not in out.getvalue() and "user:***@127.0.0.1" in out.getvalue()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match=r"user:\*\*\*@") as caught:
        normalise_url("http://user:S3cret@host:99999")
    assert "S3cret" not in str(caught.value)
