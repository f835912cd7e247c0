"""The Makefile's help is for people and for pipes alike, and names the tasks the docs
tell users to run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def test_help_piped_has_no_colour_codes_and_lists_the_tasks() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "\033[" not in result.stdout
    for target in ("demo", "test", "lint", "typecheck", "docs", "docs-serve", "docs-reference"):
        assert f"  {target} " in result.stdout, target
