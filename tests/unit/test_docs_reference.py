"""The reference pages are generated from the code, and a stale one is a failure.

`make docs-reference` (hack/docs_reference.py) writes docs/reference/: the settings (from
the option table and the settings models), the RunLogStore fields (from the CRD), the
metrics (from their definitions) and the exit codes (from the one table). Each test here
also checks that the page really carries what it is generated from, so a generator that
quietly dropped a row would fail too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from runlog_relay.cliopts import AWS_FIELDS, OPTION_GROUPS, SECRET_FIELDS
from runlog_relay.config.crd import crd_manifest
from runlog_relay.config.settings import env_names
from runlog_relay.exitcodes import MEANINGS
from runlog_relay.metrics import OperatorMetrics, SidecarMetrics

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))
import docs_reference  # noqa: E402

PAGES = docs_reference.pages()


@pytest.mark.parametrize("path", sorted(PAGES), ids=lambda path: path.name)
def test_the_committed_page_is_what_the_code_generates(path: Path) -> None:
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    assert committed == PAGES[path], f"{path.relative_to(REPO)} is stale: run `make docs-reference`"


def test_the_check_mode_names_a_stale_page(tmp_path: Path) -> None:
    stale = REPO / "docs" / "reference" / "exit-codes.md"
    original = stale.read_text(encoding="utf-8")
    try:
        stale.write_text(original + "\nedited by hand\n", encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(REPO / "hack" / "docs_reference.py"), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        stale.write_text(original, encoding="utf-8")
    assert result.returncode == 1
    assert "docs/reference/exit-codes.md" in result.stderr


def test_the_settings_page_has_every_option_variable_and_key() -> None:
    page = PAGES[REPO / "docs" / "reference" / "settings.md"]
    for group in OPTION_GROUPS:
        for option in group.options:
            assert f"`{option.flag}" in page, option.flag
            assert f"`{option.key}`" in page, option.key
            for name in option.env:
                assert f"`{name}`" in page, name
    for path in SECRET_FIELDS + AWS_FIELDS:
        for name in env_names(path):
            assert f"`{name}`" in page, name
    assert "`RUNLOG_RELAY_CONFIG`" in page


def test_the_crd_page_has_every_spec_and_status_field() -> None:
    page = PAGES[REPO / "docs" / "reference" / "crd.md"]
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def leaves(node: dict, prefix: str) -> list[str]:
        paths = []
        for name, sub in node.get("properties", {}).items():
            paths.append(f"{prefix}.{name}")
            paths += leaves(sub, f"{prefix}.{name}")
            paths += leaves(sub.get("items", {}), f"{prefix}.{name}[]")
        return paths

    for part in ("spec", "status"):
        missing = [p for p in leaves(schema["properties"][part], part) if f"| `{p}`" not in page]
        assert not missing, missing


def test_the_metrics_page_has_every_metric() -> None:
    page = PAGES[REPO / "docs" / "reference" / "metrics.md"]
    for build in (SidecarMetrics, OperatorMetrics):
        registry = CollectorRegistry()
        build(registry)
        for family in registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            assert f"| `{name}` |" in page, name


def test_the_exit_codes_page_has_every_command_and_code() -> None:
    page = PAGES[REPO / "docs" / "reference" / "exit-codes.md"]
    for command, meanings in MEANINGS.items():
        section = page.split(f"## `runlog-relay {command}`", 1)[1].split("\n## ", 1)[0]
        for code in meanings:
            assert f"| {int(code)} |" in section, (command, code)


def test_help_and_the_settings_page_use_the_same_placeholders(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runlog_relay.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # one option per line, unwrapped
    with pytest.raises(SystemExit):
        main(["sidecar", "--help"])
    shown = capsys.readouterr().out
    page = PAGES[REPO / "docs" / "reference" / "settings.md"]
    for group in OPTION_GROUPS:
        for option in group.options:
            if option.is_bool and not option.switch:
                usage = f"{option.flag}, --no-{option.flag[2:]}"
            else:
                usage = f"{option.flag} {option.placeholder}".strip()
            assert f"  {usage}" in shown, usage
            assert f"| `{usage}` |" in page, usage
            flat = " ".join(shown.split())
            assert f"key {option.key}" in flat, option.key
            if option.default:
                assert f"default {option.default}" in flat, option.default
