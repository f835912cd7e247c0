"""The values table of charts/runlog-relay/README.md, from the comments in values.yaml.

Every value in values.yaml has a comment starting with ``# --`` right above it (more
``#`` lines may continue it). A key whose children are all documented (``image:``) needs
none; a documented key's undocumented children (a probe's ``httpGet``) are part of its
default. :func:`values_docs` reads those; :func:`updated_readme` puts the table between
the README's ``<!-- values:start -->`` and ``<!-- values:end -->`` markers. Run through
``make manifests`` (hack/render_manifests.py), checked by tests/integration/test_helm.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "runlog-relay"
START = "<!-- values:start -->"
END = "<!-- values:end -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")
_DOC = re.compile(r"^ *# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")


@dataclass(frozen=True)
class ValueDoc:
    path: str
    description: str
    default: Any


def _lookup(values: dict[str, Any], path: list[str]) -> Any:
    node: Any = values
    for part in path:
        node = node[part]
    return node


def values_docs(values_file: Path = CHART / "values.yaml") -> list[ValueDoc]:
    """Documented values, in file order."""
    text = values_file.read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    docs: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        doc = _DOC.match(line)
        if doc:
            pending = [doc.group("text")]
            continue
        more = _MORE.match(line)
        if more:
            if pending is not None:
                pending.append(more.group("text") or "")
            continue
        key = _KEY.match(line)
        if not key:
            continue  # list items and blank lines belong to the value above
        indent = len(key.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key.group("key")]
        stack.append((indent, key.group("key")))
        if pending is not None:
            docs.append(ValueDoc(".".join(path), " ".join(pending).strip(), _lookup(values, path)))
        pending = None
    return docs


def value_paths(values: Any, prefix: str = "") -> list[str]:
    """Every key path in a values mapping (maps and leaves)."""
    paths: list[str] = []
    if isinstance(values, dict):
        for key, child in values.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.append(path)
            paths.extend(value_paths(child, path))
    return paths


def undocumented(values_file: Path = CHART / "values.yaml") -> list[str]:
    """Keys that are neither documented, nor inside a documented key, nor only a parent
    of documented keys."""
    documented = [d.path for d in values_docs(values_file)]
    values = yaml.safe_load(values_file.read_text(encoding="utf-8"))
    missing = []
    for path in value_paths(values):
        if path in documented:
            continue
        if any(path.startswith(d + ".") for d in documented):
            continue  # part of a documented default
        if any(d.startswith(path + ".") for d in documented):
            continue  # a group such as `image`
        missing.append(path)
    return missing


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(values_file: Path = CHART / "values.yaml") -> str:
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for doc in values_docs(values_file):
        default = json.dumps(doc.default, separators=(", ", ": "))
        rows.append(
            f"| `{doc.path}` | {_type(doc.default)} | `{_cell(default)}` |"
            f" {_cell(doc.description)} |"
        )
    return "\n".join(rows) + "\n"


def updated_readme(readme: Path = CHART / "README.md") -> str:
    """The README with a fresh values table between the markers."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(START) + len(START), text.index(END)
    return text[:start] + "\n" + table() + text[end:]
