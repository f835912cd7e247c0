"""The README is where users look: its links, anchors and commands must be real."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors() -> set[str]:
    seen: Counter[str] = Counter()
    anchors = set()
    in_code = False
    for line in README.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def test_every_anchor_link_points_to_a_heading() -> None:
    anchors = _anchors()
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert links, "the README has a table of contents"
    assert not [link for link in links if link not in anchors]


def test_every_relative_link_points_to_a_file_in_the_repository() -> None:
    targets = [t for t in re.findall(r"\]\(([^)#:]+)\)", README) if not t.startswith("http")]
    assert targets
    assert not [t for t in targets if not (REPO / t).exists()]


def test_the_two_set_up_commands_exist() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
