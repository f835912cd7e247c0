"""What a sidecar process loads at start-up: the per-pod cost of issue 12 item 5.

Start-up CPU and memory are figures for the benchmark (bench/podcost.py); what is checked
here is deterministic: which work and which modules a ``runlog-relay sidecar`` process
leaves out. The cases about imports run in a fresh interpreter, as the pod does, because
what matters is what is imported first; the one about the models' patterns reads the
models in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

#: Runs ``runlog-relay sidecar ARGS`` as the console script does (``main()`` reading
#: sys.argv), then prints what the process holds.
_PROBE = """
import json, sys
sys.argv = ["runlog-relay", *json.loads(sys.argv[1])]
from runlog_relay import cli
try:
    code = cli.main()
except SystemExit as exc:
    code = exc.code
modules = sorted(sys.modules)
docs = None
if "runlog_relay.config.models" in modules:  # only then: importing them here would skew it
    from runlog_relay.config.models import SyncSpec
    docs = SyncSpec.model_fields["debounce_seconds"].description
print(json.dumps({
    "code": code,
    "spec_doc": docs,
    "plugins": __import__("os").environ.get("PYDANTIC_DISABLE_PLUGINS"),
    "modules": modules,
}))
"""


def probe(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(args))],
        env={k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"} | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    data["stdout"] = result.stdout
    data["stderr"] = result.stderr
    return data


def not_a_folder(tmp_path: Path) -> str:
    """A --source that ends the command at once with a usage error (exit 2), after the
    settings, and so the models, are loaded."""
    path = tmp_path / "file"
    path.write_text("")
    return str(path)


def test_a_sidecar_run_imports_no_pydantic(tmp_path: Path) -> None:
    """Its settings are checked from the generated table (config.fields): pydantic's
    import and the models' builds were ~130 ms of every pod's start-up CPU."""
    data = probe(tmp_path, "sidecar", "--source", not_a_folder(tmp_path), "--once")
    assert data["code"] == 2  # the settings were loaded, then the source refused
    modules = set(data["modules"])  # type: ignore[call-overload]
    assert "runlog_relay.sidecar.pipeline" in modules
    for absent in ("pydantic", "pydantic_core", "runlog_relay.config.models"):
        assert absent not in modules, absent


def test_a_refused_setting_brings_pydantic_in_to_word_it_without_docstrings(
    tmp_path: Path,
) -> None:
    """The schema words the errors; in a sidecar run it is built without the docstrings
    (fielddocs), which only --help and the CRD show."""
    data = probe(tmp_path, "sidecar", "--once", "--source", str(tmp_path), env=_ENV_REFUSED)
    assert data["code"] == 2
    assert "sync.concurrency: Input should be less than or equal to 64" in str(data["stderr"])
    assert "RUNLOG_RELAY_SYNC__CONCURRENCY" in str(data["stderr"])
    assert "pydantic" in data["modules"]  # type: ignore[operator]
    assert data["spec_doc"] is None


_ENV_REFUSED = {"RUNLOG_RELAY_SYNC__CONCURRENCY": "100"}


def test_sidecar_help_still_has_the_descriptions(tmp_path: Path) -> None:
    for flag in ("--help", "-h"):
        data = probe(tmp_path, "sidecar", flag)
        assert data["code"] == 0
        help_text = " ".join(str(data["stdout"]).split())
        assert "runnable writes run logs to" in help_text
        assert "Coalesce bursts of writes" in help_text
    assert probe(tmp_path, "sidecar", "--he")["code"] == 2  # no abbreviations (allow_abbrev)


def test_other_commands_keep_the_descriptions(tmp_path: Path) -> None:
    # `crd` prints the CRD, whose descriptions come from the docstrings.
    data = probe(tmp_path, "crd")
    assert data["code"] == 0
    assert data["spec_doc"]


def test_a_sidecar_run_imports_no_operator_tools_or_docs_machinery(tmp_path: Path) -> None:
    data = probe(tmp_path, "sidecar", "--source", not_a_folder(tmp_path), "--once")
    modules = set(data["modules"])  # type: ignore[call-overload]
    for absent in (
        "kopf",
        "rich",
        "runnable",
        "runlog_relay.operator",
        "runlog_relay.tools",
        "runlog_relay.config.crd",
        # The sidecar reads its variables itself (config.settings.environment_data):
        # pydantic-settings and python-dotenv are the operator's, ~20 ms of each start.
        "pydantic_settings",
        "dotenv",
    ):
        assert absent not in modules, absent


def test_a_one_shot_sync_imports_no_health_server(tmp_path: Path) -> None:
    """``--once`` serves no /metrics or probes: the health server and its asyncio (~14 ms
    of a one-shot sync's start-up, the part of its time rclone does not pay) stay out."""
    data = probe(tmp_path, "sidecar", "--source", not_a_folder(tmp_path), "--once")
    modules = set(data["modules"])  # type: ignore[call-overload]
    assert "runlog_relay.sidecar.pipeline" in modules  # the sidecar command loaded
    assert "runlog_relay.health" not in modules
    assert "asyncio" not in modules
    # Nor prometheus_client: its exposition pulls in http.server and email (~25 ms).
    assert "prometheus_client" not in modules
    assert "http.server" not in modules


def test_a_sidecar_run_loads_no_pydantic_plugins_and_no_yaml_without_a_config_file(
    tmp_path: Path,
) -> None:
    data = probe(tmp_path, "sidecar", "--source", str(tmp_path), "--once", env=_ENV_REFUSED)
    assert data["plugins"] == "__all__"  # pydantic, to word the error, scans no entry points
    assert "yaml" not in data["modules"]  # type: ignore[operator]
    with_config = tmp_path / "sidecar.yaml"
    with_config.write_text("logLevel: DEBUG\n")
    args = ("sidecar", "--config", str(with_config), "--source", not_a_folder(tmp_path), "--once")
    assert "yaml" in probe(tmp_path, *args)["modules"]  # type: ignore[operator]


def test_a_plugin_setting_of_the_users_wins(tmp_path: Path) -> None:
    args = ("sidecar", "--source", str(tmp_path), "--once")
    data = probe(tmp_path, *args, env={"PYDANTIC_DISABLE_PLUGINS": "logfire", **_ENV_REFUSED})
    assert data["plugins"] == "logfire"


def test_a_per_pod_sidecar_imports_neither_the_sdk_nor_urllib3() -> None:
    """The S3 calls made per file go through runlog_relay.s3http; the minio SDK and
    urllib3 (the Lease client's, only with a shard group) load only when used."""
    code = (
        "import sys, runlog_relay.cli, runlog_relay.sidecar.command, runlog_relay.sidecar.pipeline;"
        "print(sorted(m for m in ('minio', 'urllib3') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_reading_ordinary_run_logs_compiles_no_json_checker_patterns(tmp_path: Path) -> None:
    """The streaming checker's patterns cost ~9 ms to compile; files under 1 MiB that
    json.loads accepts never need them, so a sidecar compiles them only for the rare big
    or torn file."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "RunLog.json").write_text('{"run_id": "r", "status": "SUCCESS"}')
    (run / "BranchLog-x.json").write_text('{"half": ')
    code = (
        "import sys, runlog_relay.cli, runlog_relay.sidecar.command, runlog_relay.sidecar.pipeline;"
        "from pathlib import Path; from runlog_relay import jsoncheck, stableread;"
        f"stableread.read_stable(Path({str(run / 'RunLog.json')!r}));"
        "print(jsoncheck._patterns.cache_info().currsize);"
        "\ntry:\n"
        f"    stableread.read_stable(Path({str(run / 'BranchLog-x.json')!r}))\n"
        "except stableread.TornRead as exc:\n"
        "    print(type(exc).__name__, jsoncheck._patterns.cache_info().currsize)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "TornRead", "1"]  # compiled for the torn file only


#: A counted repetition, ``{m,n}`` or ``{n}``, with its upper bound.
_BOUNDED_REPEAT = re.compile(r"\{(?:\d*,)?(\d+)\}")


def _field_patterns() -> list[tuple[str, str]]:
    """Every ``pattern`` constraint of the config models (the sidecar's and the CRD's)."""
    from pydantic import BaseModel

    from runlog_relay.config import models, settings_model

    found = []
    for module in (models, settings_model):
        for name, value in vars(module).items():
            if not (isinstance(value, type) and issubclass(value, BaseModel)):
                continue
            for field_name, field in value.model_fields.items():
                for meta in field.metadata:
                    pattern = getattr(meta, "pattern", None)
                    if isinstance(pattern, str):
                        found.append((f"{name}.{field_name}", pattern))
    return found


def test_no_settings_pattern_has_a_long_counted_repetition() -> None:
    """pydantic-core compiles patterns into automata whose size grows with a repetition's
    count: ``^[^\\s]{1,2048}$`` alone cost every sidecar 8 MiB of RSS (of the 45 MiB
    target). Lengths are ``max_length``'s job; patterns keep counts small."""
    patterns = _field_patterns()
    assert any(where == "SidecarSSEModel.kms_key_id" for where, _ in patterns)  # the walk sees them
    long = [
        (where, pattern)
        for where, pattern in patterns
        if any(int(bound) > 255 for bound in _BOUNDED_REPEAT.findall(pattern))
    ]
    assert long == []
