"""The tools in a pseudo-terminal: ``top`` against a live sidecar, progress bars.

Real parts: the ``runlog-relay sidecar`` subprocess mirroring a folder to moto's S3
server, a real runnable pipeline writing into that folder while ``top`` watches, and
the tools themselves as subprocesses whose terminal is a pty. What the user would see is
reconstructed by :class:`Screen`, a small VT100 interpreter for the control sequences
rich emits (cursor up, erase line, colours), so the assertions are about the screen,
not about the byte stream: e.g. that the view is redrawn in place instead of scrolling.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer
from prometheus_client import CollectorRegistry, start_http_server

from runlog_relay.cli import main
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.runnable_compat import run_pipeline
from tests.support.s3server import free_port

pytestmark = [pytest.mark.integration]

ROWS, COLS = 40, 180
TITLE = "runlog-relay top"


class Screen:
    """The visible text of a terminal fed with VT100/ANSI output (no colours kept)."""

    _CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
    _OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.grid = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.cursor_visible = True
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def feed(self, data: bytes) -> None:
        text = self._pending + self._decoder.decode(data)
        self._pending = ""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                match = self._CSI.match(text, i) or self._OSC.match(text, i)
                if match is None:
                    if len(text) - i < 32:  # a sequence cut in two: wait for the rest
                        self._pending = text[i:]
                        return
                    i += 2  # an escape we do not model
                    continue
                if match.re is self._CSI:
                    self._csi(match.group(1), match.group(2))
                i = match.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._line_feed()
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch >= " ":
                if self.col >= self.cols:
                    self.col = 0
                    self._line_feed()
                self.grid[self.row][self.col] = ch
                self.col += 1
            i += 1

    def _line_feed(self) -> None:
        if self.row == self.rows - 1:
            self.grid.pop(0)
            self.grid.append([" "] * self.cols)
        else:
            self.row += 1

    def _csi(self, params: str, final: str) -> None:
        if params.startswith("?"):
            if params[1:] == "25":
                self.cursor_visible = final == "h"
            return
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = numbers[0] if numbers and numbers[0] else 1
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row = min(self.rows - 1, self.row + n)
        elif final == "C":
            self.col = min(self.cols - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "G":
            self.col = min(self.cols - 1, n - 1)
        elif final == "H":
            row = numbers[0] if numbers else 1
            col = numbers[1] if len(numbers) > 1 else 1
            self.row, self.col = max(0, row - 1), max(0, col - 1)
        elif final == "K":
            mode = numbers[0] if numbers else 0
            line = self.grid[self.row]
            start, end = {0: (self.col, self.cols), 1: (0, self.col + 1)}.get(mode, (0, self.cols))
            for c in range(start, end):
                line[c] = " "
        elif final == "J":
            mode = numbers[0] if numbers else 0
            if mode == 2:
                self.grid = [[" "] * self.cols for _ in range(self.rows)]
        # "m" (colours) and anything else: no effect on the text

    def lines(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.grid]

    def text(self) -> str:
        return "\n".join(self.lines()).strip("\n")


class PtyProcess:
    """A subprocess whose stdin/stdout/stderr are a pseudo-terminal of ROWS by COLS."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.master = master
        self.screen = Screen(ROWS, COLS)
        self.raw = b""
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)

    def _pump(self, wait: float) -> bool:
        """Read what is there (waiting up to ``wait``); False once the child closed it."""
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child has exited and closed the terminal
            return False
        if not data:
            return False
        self.raw += data
        self.screen.feed(data)
        return True

    def wait_for(self, condition: Callable[[Screen], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.screen):
            if time.monotonic() > deadline or (not self._pump(0.1) and not condition(self.screen)):
                raise AssertionError(f"screen never showed {what}; it shows:\n{self.screen.text()}")

    def interrupt(self, timeout: float = 10) -> int:
        """Ctrl-C, as the terminal would deliver it (SIGINT); the exit code."""
        self.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self._pump(0.1) and time.monotonic() < deadline:
            if self.process.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                break
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self.master)


@dataclass
class Row:
    """One sidecar's row of the table, as the screen shows it."""

    url: str
    state: str
    store: str
    pending: str
    lag_p50: str
    lag_p95: str
    uploads: str
    errors: str
    retries: str
    writes: str
    torn: str

    @classmethod
    def find(cls, screen: Screen, url: str) -> Row | None:
        for line in screen.lines():
            tokens = line.split()
            if tokens[2:4] == ["NOT", "READY"]:
                tokens[2:4] = ["NOT READY"]
            if tokens and tokens[0] == url:
                if tokens[1] == "DOWN":
                    return cls(url, "DOWN", " ".join(tokens[2:]), *["-"] * 8)
                if len(tokens) < 11:
                    return None
                return cls(*tokens[:9], " ".join(tokens[9:-1]), tokens[-1])
        return None


def rate(text: str) -> float:
    """``12.5/s`` → 12.5; ``…`` (no window yet) → 0."""
    return float(text.removesuffix("/s")) if text.endswith("/s") else 0.0


def terminal_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE"}
        and not k.startswith("RUNLOG_RELAY_")
    }
    env["TERM"] = "xterm-256color"
    return env


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


@dataclass(frozen=True)
class LiveSidecar:
    metrics_url: str
    source: Path  # the folder it watches
    endpoint: str  # the S3 server it mirrors to
    bucket: str  # and where, runnable's bucket/prefix form


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[LiveSidecar]:
    """A real sidecar mirroring tmp_path/logs to moto's S3 server.

    moto's buckets are process-wide (shared by every ThreadedMotoServer), so each
    sidecar gets a bucket of its own.
    """
    bucket = f"terminal-{os.getpid()}-{time.time_ns() % 10**9}/run-logs"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    source = tmp_path / "logs"
    source.mkdir()
    log_path = tmp_path / "sidecar.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLOG_RELAY_")}
    env.update(AWS_ACCESS_KEY_ID="minioadmin", AWS_SECRET_ACCESS_KEY="minioadmin")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "runlog_relay", "sidecar",
                "--source", str(source),
                "--endpoint", f"http://{host}:{port}",
                "--bucket", bucket,
                "--create-bucket",
                "--metrics-host", "127.0.0.1",
                "--metrics-port", "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    try:

        def metrics_port() -> int | None:
            assert process.poll() is None, log_path.read_text()
            found = re.findall(r"on port (\d+)", log_path.read_text())
            return int(found[-1]) if found else None

        port_number = wait_until(metrics_port, "the sidecar's metrics port")
        yield LiveSidecar(
            f"http://127.0.0.1:{port_number}/metrics", source, f"http://{host}:{port}", bucket
        )
    finally:
        process.terminate()
        process.wait(30)
        server.stop()


def test_top_shows_a_live_sidecar_and_a_dead_one_refreshing_in_place(
    sidecar: LiveSidecar, tmp_path: Path
) -> None:
    url, source = sidecar.metrics_url, sidecar.source
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    top = PtyProcess(
        [
            sys.executable, "-m", "runlog_relay", "top",
            "--url", url, "--url", dead.removeprefix("http://").removesuffix("/metrics"),
            "--interval", "0.25",
        ],
        terminal_env(),
    )  # fmt: skip
    try:

        def both_rows(screen: Screen) -> bool:
            live, down = Row.find(screen, url), Row.find(screen, dead)
            return bool(live and live.state == "UP" and live.store == "ready" and down)

        top.wait_for(both_rows, "a row for each sidecar")
        assert "1/2 up" in top.screen.text()
        down = Row.find(top.screen, dead)
        assert down is not None and down.state == "DOWN"
        assert "refused" in down.store.lower()  # the reason, e.g. "Connection refused"

        # A real pipeline writes while top watches: rates and lag must show it.
        pipeline = threading.Thread(
            target=run_pipeline, args=(source, "top-run"), kwargs={"workdir": tmp_path / "w"}
        )
        pipeline.start()
        seen: list[Row] = []

        def busy(screen: Screen) -> bool:
            row = Row.find(screen, url)
            if row and rate(row.uploads) > 0:
                seen.append(row)
                return row.writes != "0 B/s" and row.lag_p50 != "-"
            return False

        top.wait_for(busy, "uploads, write activity and lag while the pipeline runs")
        pipeline.join(60)
        assert not pipeline.is_alive()
        busy_row = seen[-1]
        assert busy_row.errors == "0.0/s" and busy_row.torn == "0"
        assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", busy_row.lag_p50), busy_row

        def quiet(screen: Screen) -> bool:
            row = Row.find(screen, url)
            return bool(row and row.pending == "0" and row.uploads == "0.0/s")

        top.wait_for(quiet, "the sidecar idle with nothing pending after the run")

        # Redrawn in place: many frames were written, the screen holds one.
        assert top.raw.count(TITLE.encode()) >= 3
        assert top.screen.text().count(TITLE) == 1
        assert top.screen.text().startswith(TITLE)
        assert not top.screen.cursor_visible  # rich hides it while live

        assert top.interrupt() == 0
        assert top.screen.cursor_visible  # and gives it back on Ctrl-C
        assert Row.find(top.screen, url) is not None  # the last frame stays on screen
    finally:
        top.close()


@pytest.fixture
def fake_sidecar_metrics() -> Iterator[tuple[str, SidecarMetrics]]:
    """SidecarMetrics in a prometheus_client server: states a live sidecar rarely shows."""
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_top_once_for_scripts_not_ready_torn_and_exit_codes(
    fake_sidecar_metrics: tuple[str, SidecarMetrics],
) -> None:
    url, metrics = fake_sidecar_metrics
    metrics.store_ready.set(0)
    metrics.pending_files.set(3)
    metrics.torn_files.set(2)
    for _ in range(4):
        metrics.sync_lag.observe(0.2)
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLOG_RELAY_")}

    def top(*urls: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "runlog_relay", "top", "--once", "--interval", "0.1"]
        for one in urls:
            args += ["--url", one]
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)

    alive = top(url)
    assert alive.returncode == 0, alive.stderr
    assert "\x1b[" not in alive.stdout  # not a terminal: no colours, no cursor moves
    screen = Screen(ROWS, 1000)
    screen.feed(alive.stdout.encode())
    row = Row.find(screen, url)
    assert row is not None, alive.stdout
    assert (row.state, row.store, row.pending, row.torn) == ("UP", "NOT READY", "3", "2")
    # Nothing was uploaded between the two scrapes: rates are zero, window lag empty.
    assert "0.0/s" in alive.stdout and "1/1 up" in alive.stdout

    with_dead = top(url, dead)
    assert with_dead.returncode == 3
    assert "1/2 up" in with_dead.stdout
    dead_line = next(line for line in with_dead.stdout.splitlines() if dead in line)
    assert "DOWN" in dead_line


def test_verify_and_pull_show_progress_on_a_terminal_only(
    sidecar: LiveSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: runnable writes, the sidecar mirrors, verify agrees, pull brings it back."""
    run_pipeline(sidecar.source, "progress-run", workdir=tmp_path / "w")
    store = ["--endpoint", sidecar.endpoint, "--bucket", sidecar.bucket]
    env = terminal_env()
    env.update(AWS_ACCESS_KEY_ID="minioadmin", AWS_SECRET_ACCESS_KEY="minioadmin")

    def in_sync() -> bool:
        capsys.readouterr()
        code = main(["verify", "--source", str(sidecar.source), "--json", *store])
        return code == 0 and json.loads(capsys.readouterr().out)["counts"]["same"] == 6

    wait_until(in_sync, "the sidecar to mirror the run")

    verify = PtyProcess(
        [sys.executable, "-m", "runlog_relay", "verify", "--source", str(sidecar.source), *store],
        env,
    )
    try:
        verify.wait_for(lambda screen: "IN SYNC" in screen.text(), "verify's verdict")
        assert verify.process.wait(30) == 0
    finally:
        verify.close()
    assert b"hashing" in verify.raw  # the bar was drawn...
    assert "hashing" not in verify.screen.text()  # ...and removed (transient)

    dest = tmp_path / "pulled"
    pull = PtyProcess(
        [sys.executable, "-m", "runlog_relay", "pull", "progress-run", "--dest", str(dest), *store],
        env,
    )
    try:
        pull.wait_for(lambda screen: "pulled progress-run" in screen.text(), "pull's summary")
        assert pull.process.wait(30) == 0
    finally:
        pull.close()
    assert b"pulling" in pull.raw and "pulling" not in pull.screen.text()
    assert "6 file(s)" in pull.screen.text()
    assert {p.name: p.read_bytes() for p in (dest / "progress-run").iterdir()} == {
        p.name: p.read_bytes() for p in (sidecar.source / "progress-run").iterdir()
    }

    piped = subprocess.run(
        [sys.executable, "-m", "runlog_relay", "verify", "--source", str(sidecar.source), *store],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert piped.returncode == 0
    assert piped.stderr == ""  # no bar, no escape codes when stderr is not a terminal
    assert "\x1b[" not in piped.stdout
