"""The one exit-code table: every command has a row, its --help says it, and a missing
extra means the same code for every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runlog_relay.cli import COMMANDS, main
from runlog_relay.exitcodes import MEANINGS, ExitCode, epilog


def test_every_command_has_a_row_and_says_it_in_its_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert set(MEANINGS) == set(COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        # argparse re-wraps the text (also after hyphens): compare without whitespace.
        shown = "".join(capsys.readouterr().out.split())
        assert "".join(epilog(command).split()) in shown, command
        assert ExitCode.OK in MEANINGS[command]


def _exit_with_module_blocked(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter where ``import <module>`` fails, as it does
    when the extra that brings it is not installed."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from runlog_relay.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [
        ("kopf", ["operator"], "runlog-relay[operator]"),
        ("moto", ["demo"], "runlog-relay[demo]"),
    ],
)
def test_a_missing_extra_is_a_usage_error_naming_the_extra(
    module: str, argv: list[str], extra: str
) -> None:
    result = _exit_with_module_blocked(module, argv)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert f"dependency is missing ({module}" in result.stderr
    assert extra in result.stderr
    assert "Traceback" not in result.stderr


def test_a_command_whose_module_cannot_import_exits_like_a_missing_extra() -> None:
    result = _exit_with_module_blocked("rich", ["runs"])
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "runlog-relay runs: error: a dependency is missing (rich)" in result.stderr
