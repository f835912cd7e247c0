"""The docs site builds with `mkdocs build --strict`: every page in the nav, every link
and anchor resolving, every included example file present. A few seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_with_every_page_and_example(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr
    for page in ("reference/settings", "reference/crd", "reference/metrics", "faq", "argo"):
        assert (site / page / "index.html").exists(), page
    # The task pages include the very example files the tests apply (pymdownx.snippets).
    argo = (site / "argo" / "index.html").read_text(encoding="utf-8")
    example = (REPO / "manifests" / "examples" / "argo-workflow.yaml").read_text(encoding="utf-8")
    assert "podMetadata" in argo and "generateName: runnable-dag-" in example
    assert "runnable-dag-" in argo
