"""cli: the command list, `sidecar --help` as documentation that is true, and exit codes.

Only paths that end before the sidecar starts are run here (help, usage and settings
errors); the running sidecar is covered by tests/integration/test_sidecar.py.
"""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from runlog_relay import __version__, cli
from runlog_relay.config.models import SyncSpec, size_bytes
from runlog_relay.config.settings import load_sidecar_settings

SECRET = "S3CR3T-cli-Zm9vYmFyYmF6"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)
    # argparse wraps help to the terminal width; pin it so assertions see whole words.
    monkeypatch.setenv("COLUMNS", "100")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def flat(text: str) -> str:
    """Help text with its line wrapping undone."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- top level


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    text = flat(out)
    for name, summary in cli.SUMMARIES.items():
        assert re.search(rf"\b{name}\b", out), name
        assert summary in text, name
    assert set(cli.SUMMARIES) == set(cli.COMMANDS)


def test_console_script_points_at_main() -> None:
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "runlog-relay"]
    assert script.value == "runlog_relay.cli:main"
    assert script.load() is cli.main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"runlog-relay {__version__}"


@pytest.mark.parametrize(
    "argv",
    [["no-such-command"], [], ["sidecar", "--no-such-option"], ["sidecar", "--layout", "flat"]],
    ids=["unknown-command", "no-command", "unknown-option", "bad-choice"],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert "usage: runlog-relay" in err
    assert out == ""


def test_unknown_command_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run_main(["no-such-command"], capsys)
    assert "invalid choice: 'no-such-command'" in err
    assert "sidecar" in err


# --------------------------------------------------------------------------- sidecar --help

#: option → (environment variable, settings attribute path, a value to set, documented
#: default or None where the option has none to show).
SIDECAR_OPTIONS: dict[str, tuple[str, str, str, str | None]] = {
    "--source": ("RUNLOG_RELAY_SOURCE", "source", "/data/run_logs", None),
    "--endpoint": (
        "RUNLOG_RELAY_ENDPOINT",
        "endpoint",
        "http://minio:9000",
        "http://localhost:9002",
    ),
    "--bucket": ("RUNLOG_RELAY_BUCKET", "bucket", "logs/team", "runnable/run-logs"),
    "--layout": ("RUNLOG_RELAY_LAYOUT", "layout", "single", "chunked"),
    "--region": ("RUNLOG_RELAY_REGION", "region", "eu-west-1", None),
    "--credentials": ("RUNLOG_RELAY_CREDENTIALS", "credential_source", "web-identity", "auto"),
    "--sse": ("RUNLOG_RELAY_SSE__MODE", "sse.mode", "s3", None),
    "--storage-class": ("RUNLOG_RELAY_STORAGE_CLASS", "storage_class", "STANDARD_IA", None),
    "--sts-endpoint": (
        "RUNLOG_RELAY_STS_ENDPOINT",
        "sts_endpoint",
        "https://sts.internal:8443",
        None,
    ),
    "--insecure-skip-verify": (
        "RUNLOG_RELAY_TLS__INSECURE_SKIP_VERIFY",
        "tls.insecure_skip_verify",
        "true",
        None,
    ),
    "--ca-file": ("RUNLOG_RELAY_TLS__CA_FILE", "tls.ca_file", "/etc/ca.pem", None),
    "--create-bucket": ("RUNLOG_RELAY_CREATE_BUCKET", "create_bucket", "true", None),
    "--metrics-port": ("RUNLOG_RELAY_METRICS_PORT", "metrics_port", "9100", "9464"),
    "--metrics-host": ("RUNLOG_RELAY_METRICS_HOST", "metrics_host", "127.0.0.1", "0.0.0.0"),
    "--log-level": ("RUNLOG_RELAY_LOG_LEVEL", "log_level", "DEBUG", "INFO"),
    "--log-format": ("RUNLOG_RELAY_LOG_FORMAT", "log_format", "json", "plain"),
    "--tag-sealed-runs": ("RUNLOG_RELAY_TAG_SEALED_RUNS", "tag_sealed_runs", "true", None),
    "--exit-when-sealed": ("RUNLOG_RELAY_EXIT_WHEN_SEALED", "exit_when_sealed", "true", None),
    "--retain-local": (
        "RUNLOG_RELAY_LOCAL_RETENTION__DELETE_AFTER",
        "local_retention.delete_after",
        "7d",
        "never",
    ),
    "--retain-local-dry-run": (
        "RUNLOG_RELAY_LOCAL_RETENTION__DRY_RUN",
        "local_retention.dry_run",
        "true",
        None,
    ),
}
#: Options that only mean something with a --sse mode: variable, field, value, the mode.
SSE_OPTIONS = {
    "--sse-kms-key-id": ("RUNLOG_RELAY_SSE__KMS_KEY_ID", "kms_key_id", "alias/relay", "kms"),
    "--sse-kms-context": ("RUNLOG_RELAY_SSE__KMS_CONTEXT", "kms_context", '{"a": "b"}', "kms"),
    "--sse-c-key-file": ("RUNLOG_RELAY_SSE__C_KEY_FILE", "c_key_file", "/run/key", "c"),
}
TUNING_OPTIONS = {
    "--debounce": "debounce_seconds",
    "--rescan-interval": "rescan_interval_seconds",
    "--concurrency": "concurrency",
    "--force-polling": "force_polling",
    "--poll-interval": "poll_interval_seconds",
    "--torn-grace": "torn_grace_seconds",
    "--drain-timeout": "drain_timeout_seconds",
    "--permanent-retry": "permanent_error_retry_seconds",
    "--max-pending-bytes": "max_pending_bytes",
    "--max-file-size": "max_file_bytes",
}


@pytest.fixture
def sidecar_help(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Each option's help text (unwrapped), from `runlog-relay sidecar --help`."""
    code, out, _ = run_main(["sidecar", "--help"], capsys)
    assert code == 0
    sections: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        match = re.match(r"^  (--[a-z-]+)", line)
        if match:
            current = match.group(1)
            sections[current] = line[len(match.group(0)) :]
        elif current is not None and line.startswith("      "):
            sections[current] += " " + line
        else:
            current = None
    return {option: flat(text) for option, text in sections.items()}


def test_sidecar_help_covers_every_option(sidecar_help: dict[str, str]) -> None:
    expected = set(SIDECAR_OPTIONS) | set(SSE_OPTIONS) | set(TUNING_OPTIONS)
    expected |= {"--once", "--config", "--run-id", "--retry-run-id"}
    expected |= {"--access-key-id-file", "--secret-access-key-file", "--session-token-file"}
    expected |= {f"--shard-{name}" for name in ("group", "identity", "namespace")}
    expected |= {"--shard-lease-seconds", "--shard-api-url"}
    assert set(sidecar_help) == expected


def test_shard_options_fill_the_shard_group_and_document_their_variables(
    sidecar_help: dict[str, str], tmp_path: Path
) -> None:
    assert "env RUNLOG_RELAY_SHARD__GROUP" in sidecar_help["--shard-group"]
    assert "env RUNLOG_RELAY_SHARD__IDENTITY" in sidecar_help["--shard-identity"]
    from runlog_relay.sidecar.command import _overrides

    args = cli.build_parser(only="sidecar").parse_args(
        ["sidecar", "--source", str(tmp_path), "--shard-group", "relay", "--shard-identity", "r0"]
    )
    settings = load_sidecar_settings(_overrides(args))
    assert (settings.shard.group, settings.shard.identity) == ("relay", "r0")


@pytest.mark.parametrize("option", sorted(SIDECAR_OPTIONS))
def test_sidecar_option_documents_its_env_variable_and_default(
    sidecar_help: dict[str, str], option: str
) -> None:
    env, _, _, default = SIDECAR_OPTIONS[option]
    text = sidecar_help[option]
    assert f"env {env}" in text, text
    if default is not None:
        assert f"default {default}" in text, text


@pytest.mark.parametrize("option", sorted(TUNING_OPTIONS))
def test_tuning_option_documents_its_env_variable_and_true_default(
    sidecar_help: dict[str, str], option: str
) -> None:
    field = TUNING_OPTIONS[option]
    text = sidecar_help[option]
    assert f"env RUNLOG_RELAY_SYNC__{field.upper()}" in text, text
    default = SyncSpec.model_fields[field].default
    shown = re.search(r"default (\S+?)\)", text)
    assert shown is not None, text
    if isinstance(default, bool):
        assert shown.group(1) == ("true" if default else "false")
    else:  # the help cannot drift from the model
        value = shown.group(1)
        assert (size_bytes(value) if "bytes" in field else float(value)) == default


def attribute(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


@pytest.mark.parametrize("option", sorted(SIDECAR_OPTIONS))
def test_documented_env_variables_really_work(monkeypatch: pytest.MonkeyPatch, option: str) -> None:
    env, path, value, _ = SIDECAR_OPTIONS[option]
    before = attribute(load_sidecar_settings(), path)
    monkeypatch.setenv(env, value)
    after = attribute(load_sidecar_settings(), path)
    assert after != before
    assert str(getattr(after, "value", after)).lower() == value.lower()


@pytest.mark.parametrize("option", sorted(SSE_OPTIONS))
def test_sse_options_document_and_read_their_variables(
    sidecar_help: dict[str, str], monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    env, field, value, mode = SSE_OPTIONS[option]
    assert f"env {env}" in sidecar_help[option]
    monkeypatch.setenv("RUNLOG_RELAY_SSE__MODE", mode)
    monkeypatch.setenv(env, value)
    got = getattr(load_sidecar_settings().sse, field)
    assert got == (json.loads(value) if field == "kms_context" else type(got)(value))


@pytest.mark.parametrize("option", sorted(TUNING_OPTIONS))
def test_documented_tuning_env_variables_really_work(
    monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    field = TUNING_OPTIONS[option]
    default = SyncSpec.model_fields[field].default
    value = "true" if isinstance(default, bool) else str(default * 2)
    monkeypatch.setenv(f"RUNLOG_RELAY_SYNC__{field.upper()}", value)
    got = getattr(load_sidecar_settings().sync, field)
    assert got == (True if isinstance(default, bool) else default * 2)


def test_help_never_prints_a_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("RUNLOG_RELAY_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET + "-id")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    monkeypatch.setenv("RUNLOG_RELAY_SECRET_ACCESS_KEY_FILE", str(secret_file))
    for argv in (["sidecar", "--help"], ["--help"]):
        code, out, err = run_main(argv, capsys)
        assert code == 0
        assert SECRET not in out + err
    _, out, _ = run_main(["sidecar", "--help"], capsys)
    assert "AWS_SECRET_ACCESS_KEY" in out  # names the variable, never its value
    assert "minioadmin" in out  # the documented default is not a secret


# --------------------------------------------------------------------------- sidecar errors


def test_sidecar_without_source_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["sidecar", "--once"], capsys)
    assert code == 2
    assert "--source (or RUNLOG_RELAY_SOURCE) is required" in err


@pytest.mark.parametrize("once", [True, False])
def test_a_source_that_is_a_file_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, once: bool
) -> None:
    a_file = tmp_path / "run_logs"
    a_file.write_text("not a folder")
    code, _, err = run_main(
        ["sidecar", "--source", str(a_file), *(["--once"] if once else [])], capsys
    )
    assert code == 2
    assert f"source {a_file} is not a directory" in err


def test_once_says_when_the_source_does_not_exist(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_main(["sidecar", "--source", str(tmp_path / "misspelt"), "--once"], capsys)
    assert code == 2
    assert f"source folder {tmp_path / 'misspelt'} does not exist" in err


def test_run_ids_come_from_flags_the_environment_or_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from runlog_relay.config.settings import load_sidecar_settings
    from runlog_relay.sidecar.command import _overrides

    args = cli.build_parser(only="sidecar").parse_args(
        ["sidecar", "--source", str(tmp_path), "--run-id", "a-1", "--run-id", "b-2"]
    )
    assert load_sidecar_settings(_overrides(args)).run_ids == ("a-1", "b-2")
    monkeypatch.setenv("RUNLOG_RELAY_RUN_IDS", "pod-run-7")  # one id, from a fieldRef
    assert load_sidecar_settings({}).run_ids == ("pod-run-7",)
    monkeypatch.setenv("RUNLOG_RELAY_RUN_IDS", "x, y,,z")
    assert load_sidecar_settings({}).run_ids == ("x", "y", "z")
    monkeypatch.delenv("RUNLOG_RELAY_RUN_IDS")
    config = tmp_path / "config.yaml"
    config.write_text("runIds: [c-3]\n")
    assert load_sidecar_settings({}, config).run_ids == ("c-3",)
    with pytest.raises(Exception, match="path separator"):
        load_sidecar_settings({"run_ids": ["../etc"]})


def test_sidecar_invalid_settings_exit_2_listing_each_without_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("RUNLOG_RELAY_SYNC__CONCURRENCY", "0")
    monkeypatch.setenv("RUNLOG_RELAY_BUCKET", "Not_A_Bucket")
    monkeypatch.setenv("RUNLOG_RELAY_ENDPOINT", f"http://user:{SECRET}@minio:9000/path")
    monkeypatch.setenv("RUNLOG_RELAY_METRICS_PORT", "70000")
    code, out, err = run_main(["sidecar", "--source", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("runlog-relay sidecar: error: invalid settings")
    for field, variable in (
        ("bucket", "RUNLOG_RELAY_BUCKET"),
        ("endpoint", "RUNLOG_RELAY_ENDPOINT"),
        ("metrics_port", "RUNLOG_RELAY_METRICS_PORT"),
        ("sync.concurrency", "RUNLOG_RELAY_SYNC__CONCURRENCY"),
    ):
        assert f"{field}:" in err, field
        assert f"({variable})" in err, variable  # where the bad value came from
    assert SECRET not in out + err


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--bucket", "Not_A_Bucket"], "argument --bucket: bucket must be BUCKET[/PREFIX]"),
        (["--endpoint", f"http://user:{SECRET}@minio:9000"], "argument --endpoint:"),
        (["--metrics-port", "70000"], "argument --metrics-port: Input should be less than"),
        (["--max-pending-bytes", "16XB"], "argument --max-pending-bytes: a size is"),
        (["--debounce", "soon"], "argument --debounce: Input should be a valid number"),
    ],
)
def test_a_bad_option_value_is_a_usage_error_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], problem: str
) -> None:
    code, out, err = run_main(["sidecar", "--source", str(tmp_path), *argv], capsys)
    assert code == 2
    assert problem in err
    assert "usage: runlog-relay sidecar" in err
    assert SECRET not in out + err


def test_a_misspelt_option_shows_the_commands_usage_and_the_nearest_option(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_main(["sidecar", "--sorce", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("usage: runlog-relay sidecar")
    assert "unrecognized arguments: --sorce" in err and "did you mean --source?" in err
    code, _, err = run_main(["runs", "--endpont", "http://x:1"], capsys)
    assert code == 2
    assert err.startswith("usage: runlog-relay runs")
    assert "did you mean --endpoint?" in err


def test_sidecar_unreadable_credentials_file_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("RUNLOG_RELAY_SECRET_ACCESS_KEY_FILE", str(tmp_path / "missing"))
    code, _, err = run_main(["sidecar", "--source", str(tmp_path), "--once"], capsys)
    assert code == 2
    assert "cannot read credentials file" in err
    assert SECRET not in err


def test_sidecar_bad_config_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"secretAccessKey: {SECRET}\n")
    code, _, err = run_main(["sidecar", "--source", str(tmp_path), "--config", str(config)], capsys)
    assert code == 2
    assert "must not contain secret_access_key" in err
    assert SECRET not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["pull", "r1", "--f"], "unrecognized arguments: --f (did you mean --force?)"),
        (["sidecar", "--sour", "x", "--once"], "unrecognized arguments: --sour x"),
        (["runs", "--stat", "FAIL"], "unrecognized arguments: --stat FAIL"),
        (["runs", "--status", "SUCESS"], "invalid choice: 'SUCESS' (choose from 'SUCCESS',"),
    ],
)
def test_abbreviations_and_unknown_statuses_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """`--f` silently meant --force, and `--status SUCESS` listed nothing, exit 0."""
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    assert says in capsys.readouterr().err


def test_status_takes_any_case() -> None:
    args = cli.build_parser(only="runs").parse_args(["runs", "--status", "fail"])
    assert args.status == "FAIL"
