"""The README is the front door: short, and its links, anchors and commands real."""

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


def _page_anchors(text: str) -> set[str]:
    """The anchors of a page's headings, as GitHub and the docs site (pymdownx's
    slugify, configured in mkdocs.yml) both make them."""
    anchors, in_code = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"^#+ ", line):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def test_links_into_the_docs_name_real_sections() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)#([^)]+)\)", README)
    assert links
    broken = [
        f"{page}#{anchor}"
        for page, anchor in links
        if anchor not in _page_anchors((REPO / page).read_text(encoding="utf-8"))
    ]
    assert not broken


def test_the_readme_is_a_front_door_not_the_manual() -> None:
    assert len(README.splitlines()) <= 400
    for page in ("install.md", "helm.md", "argo.md", "k8s-job.md", "aws.md", "minio.md"):
        assert f"](docs/{page})" in README, page
    assert "](docs/troubleshooting.md)" in README and "](docs/faq.md)" in README


def test_the_two_set_up_commands_exist() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
