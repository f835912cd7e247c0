"""``runlog-relay top``: a live terminal view of one or more sidecars' metrics.

Scrapes each sidecar's ``/metrics`` every ``--interval`` seconds (concurrently, so one
dead sidecar does not stall the others), parses it with ``prometheus_client.parser``
and shows one row per sidecar, redrawn in place with ``rich.live``. Rates and lag
quantiles are computed over the refresh window (the difference of two scrapes), the
way Prometheus' ``rate()`` and ``histogram_quantile()`` would, so the view shows what is
happening now rather than averages since the sidecar started. The metric names are
those of :class:`runlog_relay.metrics.SidecarMetrics`.

The pure parts (:func:`parse_metrics`, :func:`histogram_quantile`, :func:`compute_view`,
:func:`render`) are unit-tested; the loop is tested in a pseudo-terminal.
"""

from __future__ import annotations

import argparse
import base64
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runlog_relay.exitcodes import epilog
from runlog_relay.tools._common import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    format_bytes,
    format_seconds,
    guarded,
    stdout_console,
)

__all__ = [
    "DEFAULT_URL",
    "SidecarView",
    "Snapshot",
    "compute_view",
    "histogram_quantile",
    "normalise_url",
    "parse_metrics",
    "redact_url",
    "register",
    "render",
    "scrape",
]

DEFAULT_URL = "http://127.0.0.1:9464/metrics"

# Metric names exported by runlog_relay.metrics.SidecarMetrics.
UPLOADS = "runlog_relay_uploads_total"
RETRIES = "runlog_relay_retries_total"
WRITE_BYTES = "runlog_relay_fs_write_bytes_total"
UPLOAD_BYTES = "runlog_relay_upload_bytes_total"
LAG_BUCKET = "runlog_relay_sync_lag_seconds_bucket"
PENDING = "runlog_relay_pending_files"
TORN = "runlog_relay_torn_files"
STORE_READY = "runlog_relay_sidecar_store_ready"

LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One scrape: every sample by (name, sorted labels), and when it was taken."""

    values: dict[tuple[str, LabelSet], float]
    at: float  #: time.monotonic() of the scrape

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, tuple(sorted(labels.items()))))

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """Cumulative histogram buckets ``(le, count)``, sorted, ``+Inf`` last."""
        found = []
        for (sample, labels), value in self.values.items():
            if sample == name:
                le = dict(labels).get("le")
                if le is not None:
                    found.append((float(le), value))
        return sorted(found)

    @property
    def has_relay_metrics(self) -> bool:
        return any(name.startswith("runlog_relay_") for name, _ in self.values)


def parse_metrics(text: str, *, at: float = 0.0) -> Snapshot:
    """Parse Prometheus text exposition; ValueError when it is not that format."""
    values: dict[tuple[str, LabelSet], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Snapshot(values, at)


def normalise_url(url: str) -> str:
    """``host:port`` → ``http://host:port/metrics``; a given path or scheme is kept.

    ValueError, with a message that never holds a password, for what cannot be a
    sidecar's metrics URL: not http(s), no host, a port outside 1-65535, unparsable."""
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"{redact_url(url)!r} is not a URL ({exc})") from None
    shown = redact_url(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown}: only http and https URLs")
    host = parts.hostname or ""
    if not host or any(c.isspace() or c in '<>"{}|\\^`' for c in host):
        raise ValueError(f"{shown!r} is not a URL (no valid host)")
    if port == 0:
        raise ValueError(f"{shown}: port 0 is not a port (1-65535)")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def redact_url(url: str) -> str:
    """``url`` as it may be shown: a password in it (``user:pass@``) becomes ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{tail}"


def metrics_url(text: str) -> str:
    """argparse ``type=`` for ``--url``: a bad URL is a usage error (exit 2)."""
    try:
        return normalise_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def scrape(url: str, *, timeout: float) -> Snapshot | str:
    """A snapshot, or one short reason why the endpoint could not be read. Credentials
    in ``url`` (``user:pass@``) go as HTTP basic authentication, not in the request line."""
    parts = urlsplit(url)
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, see normalise_url
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        return getattr(reason, "strerror", None) or str(reason)
    except (TimeoutError, OSError) as exc:
        return getattr(exc, "strerror", None) or type(exc).__name__
    try:
        return parse_metrics(text, at=time.monotonic())
    except ValueError:
        return "not a Prometheus metrics endpoint"


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative ``(le, count)`` buckets.

    Linear interpolation inside the bucket holding the rank; a rank in the ``+Inf``
    bucket gives the highest finite bound. None without observations.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound  # pragma: no cover - +Inf always holds the total


def _delta(now: float | None, before: float | None) -> float | None:
    if now is None:
        return None
    if before is None or now < before:  # a counter restarts from 0 with the sidecar
        return now if before is not None else None
    return now - before


@dataclass(frozen=True, slots=True)
class SidecarView:
    """What one row shows."""

    url: str
    up: bool
    error: str = ""
    store_ready: bool | None = None
    pending: float | None = None
    torn: float | None = None
    lag_p50: float | None = None
    lag_p95: float | None = None
    lag_scope: str = "window"  #: window | total (first frame: since the sidecar started)
    uploads_per_s: float | None = None
    upload_bytes_per_s: float | None = None
    errors_per_s: float | None = None
    retries_per_s: float | None = None
    write_bytes_per_s: float | None = None


def compute_view(url: str, previous: Snapshot | None, current: Snapshot | str) -> SidecarView:
    """The row for one sidecar from its last two scrapes (``current`` may be an error)."""
    if isinstance(current, str):
        return SidecarView(url, up=False, error=current)
    if not current.has_relay_metrics:
        return SidecarView(url, up=False, error="no runlog-relay metrics here")
    ready = current.get(STORE_READY)
    view: dict[str, Any] = {
        "store_ready": None if ready is None else ready >= 1,
        "pending": current.get(PENDING),
        "torn": current.get(TORN),
    }
    lag_now = current.buckets(LAG_BUCKET)
    if previous is None or current.at <= previous.at:
        view["lag_scope"] = "total"
        lag = lag_now
    else:
        elapsed = current.at - previous.at
        lag_before = dict(previous.buckets(LAG_BUCKET))
        if lag_now and lag_now[-1][1] < lag_before.get(math.inf, 0.0):
            lag = lag_now  # restarted: everything is new
        else:
            lag = [(le, count - lag_before.get(le, 0.0)) for le, count in lag_now]

        def rate(name: str, **labels: str) -> float | None:
            change = _delta(current.get(name, **labels), previous.get(name, **labels))
            return None if change is None else change / elapsed

        view.update(
            uploads_per_s=rate(UPLOADS, result="success"),
            upload_bytes_per_s=rate(UPLOAD_BYTES),
            errors_per_s=rate(UPLOADS, result="failure"),
            retries_per_s=rate(RETRIES),
            write_bytes_per_s=rate(WRITE_BYTES),
        )
    view["lag_p50"] = histogram_quantile(0.5, lag)
    view["lag_p95"] = histogram_quantile(0.95, lag)
    return SidecarView(url, up=True, **view)


def _rate(value: float | None, *, unit: str = "/s") -> str:
    if value is None:
        return "…"
    return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render(
    views: list[SidecarView],
    *,
    interval: float,
    now: datetime | None = None,
    single: bool = False,
) -> Group:
    """One frame: a title line and a table with a row per sidecar. ``single``: the only
    frame (``--once``), which names no refresh period and no key to quit."""
    now = now or datetime.now()
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("SIDECAR", overflow="fold")
    table.add_column("STATE", no_wrap=True)
    table.add_column("STORE", no_wrap=True)
    table.add_column("PENDING", justify="right")
    table.add_column("LAG p50", justify="right", no_wrap=True)
    table.add_column("LAG p95", justify="right", no_wrap=True)
    table.add_column("UPLOADS", justify="right", no_wrap=True)
    table.add_column("ERRORS", justify="right", no_wrap=True)
    table.add_column("RETRIES", justify="right", no_wrap=True)
    table.add_column("WRITES", justify="right", no_wrap=True)
    table.add_column("TORN", justify="right")
    any_total = False
    for view in views:
        if not view.up:
            table.add_row(
                escape(view.url),
                f"[red]DOWN[/] [dim]{escape(view.error)}[/]",
                *(["-"] * 9),
            )
            continue
        store = {True: "[green]ready[/]", False: "[red]NOT READY[/]", None: "-"}[view.store_ready]
        mark = ""
        if view.lag_scope == "total" and view.lag_p50 is not None:
            mark, any_total = "*", True
        torn = _count(view.torn)
        if view.torn:
            torn = f"[red]{torn}[/]"
        errors = _rate(view.errors_per_s)
        if view.errors_per_s:
            errors = f"[red]{errors}[/]"
        table.add_row(
            escape(view.url),
            "[green]UP[/]",
            store,
            _count(view.pending),
            (format_seconds(view.lag_p50) + mark) if view.lag_p50 is not None else "-",
            (format_seconds(view.lag_p95) + mark) if view.lag_p95 is not None else "-",
            _rate(view.uploads_per_s),
            errors,
            _rate(view.retries_per_s),
            "…" if view.write_bytes_per_s is None else f"{format_bytes(view.write_bytes_per_s)}/s",
            torn,
        )
    up = sum(view.up for view in views)
    cadence = f"over {interval:g}s" if single else f"every {interval:g}s"
    quits = "" if single else "  [dim]Ctrl-C quits[/]"
    title = Text.from_markup(
        f"[bold]runlog-relay top[/]  {up}/{len(views)} up  {cadence}  {now:%H:%M:%S}{quits}"
    )
    notes = [
        "UPLOADS/ERRORS/RETRIES: uploads per second; WRITES: bytes written to the folder per"
        " second; LAG: change seen → in the bucket, over the last interval"
    ]
    if any_total:
        notes.append("* since the sidecar started (rates appear from the next refresh)")
    return Group(title, table, Text("\n".join(notes), style="dim"))


class _Monitor:
    """Keeps the previous snapshot of each sidecar and builds frames."""

    def __init__(self, urls: list[str], timeout: float) -> None:
        self.urls = urls
        self.timeout = timeout
        self.previous: dict[str, Snapshot] = {}
        self.pool = ThreadPoolExecutor(max_workers=min(16, len(urls)))

    def poll(self) -> list[SidecarView]:
        results = list(self.pool.map(lambda url: scrape(url, timeout=self.timeout), self.urls))
        views = []
        for url, current in zip(self.urls, results, strict=True):
            views.append(compute_view(redact_url(url), self.previous.get(url), current))
            if isinstance(current, Snapshot):
                self.previous[url] = current
            else:
                self.previous.pop(url, None)
        return views

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def run_top(
    urls: list[str],
    *,
    interval: float,
    once: bool,
    console: Console,
    stop: threading.Event | None = None,
) -> int:
    """The loop; returns the exit code (``--once``: 0 when every sidecar answered)."""
    stop = stop or threading.Event()
    monitor = _Monitor(urls, timeout=max(0.5, min(interval, 5.0)))
    try:
        if once:
            # Two scrapes one interval apart, so the frame has rates and window lag.
            monitor.poll()
            stop.wait(interval)
            views = monitor.poll()
            console.print(render(views, interval=interval, single=True))
            return EXIT_OK if all(view.up for view in views) else EXIT_UNREACHABLE
        if not console.is_terminal:
            while not stop.is_set():
                console.print(render(monitor.poll(), interval=interval))
                stop.wait(interval)
            return EXIT_OK
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while not stop.is_set():
                live.update(render(monitor.poll(), interval=interval), refresh=True)
                stop.wait(interval)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        monitor.close()


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.05 and 3600 seconds")
    return value


def handle(args: argparse.Namespace) -> int:
    urls = list(dict.fromkeys(args.url or [DEFAULT_URL]))  # --url arrives normalised
    return run_top(urls, interval=args.interval, once=args.once, console=stdout_console())


def register(subparsers: Any, summary: str) -> None:
    parser = subparsers.add_parser(
        "top",
        help=summary,
        description="A live view of sidecars' metrics, refreshed in place: state, store"
        " readiness, pending files, sync lag p50/p95, uploads, errors and retries per"
        " second, write activity, torn files. Ctrl-C quits. With --once: print one frame"
        " (two scrapes one interval apart) and exit.",
        epilog=epilog("top"),
    )
    parser.add_argument(
        "--url",
        action="append",
        type=metrics_url,
        metavar="URL",
        help=f"a sidecar's metrics URL; repeat for several (default {DEFAULT_URL};"
        " host:port is enough)",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=2.0,
        metavar="SECONDS",
        help="refresh interval, also the window for rates and lag (default 2)",
    )
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.set_defaults(handler=guarded("top", handle))
