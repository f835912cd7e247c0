"""Debian's headless Chromium driven through ChromeDriver's W3C WebDriver HTTP API.

No Selenium: the handful of WebDriver calls the HTML tests need (open a page, find
elements, read their rendered rectangles and computed styles, take a screenshot) are
plain JSON over HTTP to a ``chromedriver`` this module starts on 127.0.0.1.

Chromium comes from Debian (``apt-get install chromium chromium-driver``; ``make test``
and ``.ci/run`` install it). Where it is missing the test fails with that instruction:
a rendering test that silently skips in CI is a test nobody runs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.s3server import free_port

#: The flags that work on these machines (no network but loopback, running as root).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
_W3C_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
INSTALL_HINT = (
    "Chromium and ChromeDriver are needed for the HTML timeline test: `make browser`"
    " (apt-get install -y chromium chromium-driver)"
)


class BrowserMissing(RuntimeError):
    pass


def find_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise BrowserMissing(INSTALL_HINT)
    return chromium, driver


@dataclass
class Browser:
    base: str  #: http://127.0.0.1:<port>/session/<id>

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"WebDriver {method} {path}: {exc.read()[:500]!r}") from None

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        found = self._call("POST", "/elements", {"using": "css selector", "value": css})
        return [item[_W3C_ELEMENT] for item in found]

    def rect(self, element: str) -> dict[str, float]:
        result: dict[str, float] = self._call("GET", f"/element/{element}/rect")
        return result

    def css(self, element: str, name: str) -> str:
        return str(self._call("GET", f"/element/{element}/css/{name}"))

    def attribute(self, element: str, name: str) -> str | None:
        value = self._call("GET", f"/element/{element}/attribute/{name}")
        return None if value is None else str(value)

    def text(self, element: str) -> str:
        return str(self._call("GET", f"/element/{element}/text"))

    def run_script(self, script: str) -> Any:
        return self._call("POST", "/execute/sync", {"script": script, "args": []})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Browser]:
    """A headless Chromium session (a fresh profile; driver and browser stopped after)."""
    chromium_binary, driver_binary = find_binaries()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="runlog-relay-chromium-") as profile:
        log = Path(profile) / "chromedriver.log"
        driver = subprocess.Popen(
            [driver_binary, f"--port={port}", "--allowed-ips=127.0.0.1", f"--log-path={log}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            root = f"http://127.0.0.1:{port}"
            _wait_ready(root, driver)
            capabilities = {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": chromium_binary,
                            "args": [
                                *CHROMIUM_FLAGS,
                                f"--user-data-dir={profile}/user-data",
                                f"--window-size={width},{height}",
                            ],
                        },
                    }
                }
            }
            request = urllib.request.Request(
                f"{root}/session",
                data=json.dumps(capabilities).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                session = json.loads(response.read())["value"]["sessionId"]
            browser = Browser(base=f"{root}/session/{session}")
            try:
                yield browser
            finally:
                browser._call("DELETE", "")
        finally:
            driver.terminate()
            try:
                driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait()


def _wait_ready(root: str, driver: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise BrowserMissing(f"chromedriver exited with {driver.returncode}")
        try:
            with urllib.request.urlopen(f"{root}/status", timeout=2) as response:
                if json.loads(response.read())["value"].get("ready"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)  # polling the driver's own readiness endpoint, not a guess
    raise BrowserMissing(f"chromedriver did not become ready within {timeout:g}s")
