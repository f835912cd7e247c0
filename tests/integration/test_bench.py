"""The benchmark's scenarios all run, at toy size (``python -m bench --toy``).

Not the figures (the machine is shared; targets are for ``make bench``): only that every
scenario starts its servers and sidecars, measures, prints its rows, and cleans up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bench.__main__ import SCENARIOS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_every_scenario_runs_at_toy_size() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--toy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
    )
    output = result.stdout + result.stderr
    assert "FAILED" not in output, output
    for name in SCENARIOS:
        assert f"running {name}:" in output, output
    table = output.split("scenario ", 1)[1]
    for name in SCENARIOS:
        assert f"\n{name} " in table, f"no figures for {name}:\n{output}"
    assert result.returncode in (0, 1), output  # 1: a toy size may miss a real target


def test_one_scenario_can_be_chosen() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--list"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(SCENARIOS)
    wrong = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"], cwd=REPO, capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "unknown scenario" in wrong.stderr
