"""Every sidecar option is a flag, a RUNLOG_RELAY_* variable and a config key, exactly.

The table of options (cliopts.OPTION_GROUPS) is what --help and the reference page are
generated from; these tests set each option each of the three ways and read it back, so
the claim in the docs is checked, not trusted. The exceptions (secret values, the AWS
SDK's own variables, --config) are checked to be exactly what the docs say they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from runlog_relay import cli
from runlog_relay.cliopts import (
    AWS_FIELDS,
    OPTION_GROUPS,
    SECRET_FIELDS,
    Option,
    settings_from_args,
)
from runlog_relay.config.settings import (
    SidecarSettings,
    load_sidecar_settings,
    setting_fields,
    unknown_variables,
)
from runlog_relay.config.settings_model import SidecarSettingsModel
from runlog_relay.errors import ConfigError

OPTIONS = [option for group in OPTION_GROUPS for option in group.options]

#: setting path → (the value as typed, the value the settings hold). Every option needs a
#: row, so a new option cannot skip these tests.
SAMPLES: dict[tuple[str, ...], tuple[str, Any]] = {
    ("source",): ("/data/run_logs", Path("/data/run_logs")),
    ("run_ids",): ("run-7", ("run-7",)),
    ("retry_run_id",): ("run-6", "run-6"),
    ("once",): ("true", True),
    ("endpoint",): ("http://minio:9000", "http://minio:9000"),
    ("bucket",): ("logs/team", "logs/team"),
    ("layout",): ("single", "single"),
    ("region",): ("eu-west-1", "eu-west-1"),
    ("create_bucket",): ("true", True),
    ("storage_class",): ("STANDARD_IA", "STANDARD_IA"),
    ("tls", "ca_file"): ("/etc/ca.pem", Path("/etc/ca.pem")),
    ("tls", "insecure_skip_verify"): ("true", True),
    ("credential_source",): ("web-identity", "web-identity"),
    ("access_key_id_file",): ("/s/id", Path("/s/id")),
    ("secret_access_key_file",): ("/s/secret", Path("/s/secret")),
    ("session_token_file",): ("/s/token", Path("/s/token")),
    ("sts_endpoint",): ("https://sts.internal:8443", "https://sts.internal:8443"),
    ("sse", "mode"): ("s3", "s3"),
    ("sse", "kms_key_id"): ("alias/relay", "alias/relay"),
    ("sse", "kms_context"): ('{"team": "data"}', {"team": "data"}),
    ("sse", "c_key_file"): ("/s/sse-c", Path("/s/sse-c")),
    ("tag_sealed_runs",): ("true", True),
    ("exit_when_sealed",): ("true", True),
    ("local_retention", "delete_after"): ("7d", "7d"),
    ("local_retention", "dry_run"): ("true", True),
    ("shard", "group"): ("relays", "relays"),
    ("shard", "identity"): ("relay-0", "relay-0"),
    ("shard", "namespace"): ("team-a", "team-a"),
    ("shard", "lease_seconds"): ("20", 20.0),
    ("shard", "api_url"): ("https://10.0.0.1:6443", "https://10.0.0.1:6443"),
    ("sync", "debounce_seconds"): ("0.5", 0.5),
    ("sync", "rescan_interval_seconds"): ("120", 120.0),
    ("sync", "concurrency"): ("3", 3),
    ("sync", "force_polling"): ("true", True),
    ("sync", "poll_interval_seconds"): ("2.5", 2.5),
    ("sync", "torn_grace_seconds"): ("5", 5.0),
    ("sync", "permanent_error_retry_seconds"): ("45", 45.0),
    ("sync", "drain_timeout_seconds"): ("20", 20.0),
    ("sync", "max_pending_bytes"): ("32MiB", 32 * 1024 * 1024),
    ("sync", "max_file_bytes"): ("1GiB", 1024**3),
    ("metrics_host",): ("127.0.0.1", "127.0.0.1"),
    ("metrics_port",): ("9100", 9100),
    ("log_level",): ("DEBUG", "DEBUG"),
    ("log_format",): ("json", "json"),
}
#: What a setting needs beside it to be valid (the SSE fields belong to a mode).
COMPANIONS: dict[tuple[str, ...], dict[str, Any]] = {
    ("sse", "kms_key_id"): {"sse": {"mode": "kms"}},
    ("sse", "kms_context"): {"sse": {"mode": "kms"}},
    ("sse", "c_key_file"): {"sse": {"mode": "c"}},
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_", "RUNNABLE_")):
            monkeypatch.delenv(name)


def _value(settings: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        settings = getattr(settings, part)
    return getattr(settings, "value", settings)


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    return {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def test_every_setting_is_an_option_a_secret_or_an_aws_variable_exactly_once() -> None:
    kinds = [option.path for option in OPTIONS] + list(SECRET_FIELDS) + list(AWS_FIELDS)
    assert sorted(kinds) == sorted(path for path, _ in setting_fields())
    assert len(set(kinds)) == len(kinds)
    assert set(SAMPLES) == {option.path for option in OPTIONS}
    flags = [option.flag for option in OPTIONS]
    assert len(set(flags)) == len(flags)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.flag)
def test_each_option_is_a_flag_a_variable_and_a_config_key(
    option: Option, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text, expected = SAMPLES[option.path]
    companions = COMPANIONS.get(option.path, {})

    argv = ["sidecar", option.flag] if option.is_bool else ["sidecar", option.flag, text]
    for key, group in companions.items():  # the companion as a flag too
        argv += [f"--{key}", group["mode"]]
    args = cli.build_parser(only="sidecar").parse_args(argv)
    assert _value(settings_from_args(args), option.path) == expected, "flag"

    for key, group in companions.items():
        monkeypatch.setenv(f"RUNLOG_RELAY_{key.upper()}__MODE", group["mode"])
    monkeypatch.setenv(option.env[0], text)
    assert _value(load_sidecar_settings(), option.path) == expected, option.env[0]
    for name in list(os.environ):
        if name.startswith("RUNLOG_RELAY_"):
            monkeypatch.delenv(name)

    config = tmp_path / "config.yaml"
    key_path = tuple(option.key.split("."))
    config.write_text(yaml.safe_dump(_merge(_nested(key_path, text), companions)))
    assert _value(load_sidecar_settings({}, config), option.path) == expected, option.key


@pytest.mark.parametrize("path", SECRET_FIELDS, ids=lambda path: path[0])
def test_secrets_are_variables_only(
    path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from runlog_relay.config.settings import config_key, env_names

    parser = cli.build_parser(only="sidecar")
    assert not any(
        path[0].replace("_", "-") in s
        for a in parser._actions
        for s in a.option_strings
        if not s.endswith("-file")
    )
    monkeypatch.setenv(env_names(path)[0], "s3cr3t")
    assert load_sidecar_settings().model_dump()[path[0]].get_secret_value() == "s3cr3t"
    config = tmp_path / "config.yaml"
    config.write_text(f"{config_key(path)}: s3cr3t\n")
    with pytest.raises(ConfigError, match="must not contain"):
        load_sidecar_settings({}, config)


def test_the_config_file_is_a_flag_or_a_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("once: true\nendpoint: http://from-file:9000\n")
    monkeypatch.setenv("RUNLOG_RELAY_CONFIG", str(config))
    args = cli.build_parser(only="sidecar").parse_args(["sidecar"])
    settings = settings_from_args(args)
    assert (settings.once, settings.endpoint) == (True, "http://from-file:9000")
    other = tmp_path / "other.yaml"
    other.write_text("endpoint: http://from-flag:9000\n")
    args = cli.build_parser(only="sidecar").parse_args(["sidecar", "--config", str(other)])
    assert settings_from_args(args).endpoint == "http://from-flag:9000"  # the flag wins


def test_unknown_variables_are_ignored_and_named_at_any_depth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_ENDPIONT", "http://typo:1")
    monkeypatch.setenv("RUNLOG_RELAY_SYNC__DEBOUNCE", "9")
    monkeypatch.setenv("RUNLOG_RELAY_OPERATOR_METRICS_PORT", "1")  # the operator's own
    monkeypatch.setenv("CREDENTIALS", "bogus")  # a short alias is not a variable
    settings = load_sidecar_settings()  # neither misspelling is an error...
    assert settings.endpoint == "http://localhost:9002"
    assert settings.sync.debounce_seconds == 0.05
    assert settings.credential_source.value == "auto"
    assert unknown_variables() == [  # ...and both are named, with the nearest setting
        "RUNLOG_RELAY_ENDPIONT is not a setting (did you mean RUNLOG_RELAY_ENDPOINT?);"
        " it is ignored",
        "RUNLOG_RELAY_SYNC__DEBOUNCE is not a setting (did you mean"
        " RUNLOG_RELAY_SYNC__DEBOUNCE_SECONDS?); it is ignored",
    ]


def test_the_commands_warn_about_unknown_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_BUKET", "x")
    monkeypatch.setenv("RUNLOG_RELAY_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    code = cli.main(["runs"])
    assert code == 3
    err = capsys.readouterr().err
    assert "runlog-relay runs: warning: RUNLOG_RELAY_BUKET is not a setting" in err
    assert "did you mean RUNLOG_RELAY_BUCKET?" in err


def test_checking_a_flag_reads_no_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag's value is checked on its own: the models read no variable (a settings
    source walking every field and variable cost ~7 ms per flag); the loader does."""
    monkeypatch.setenv("RUNLOG_RELAY_BUCKET", "from-the-environment")
    assert SidecarSettings().bucket != "from-the-environment"
    assert SidecarSettingsModel.__pydantic_validator__.validate_python({}).bucket != (
        "from-the-environment"
    )
    assert load_sidecar_settings().bucket == "from-the-environment"


def test_a_bad_flag_is_still_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sidecar", "--once", "--bucket", "Not_A_Bucket"])
    assert exit_info.value.code == 2
    assert "argument --bucket" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["variable", "flag", "file"])
def test_an_empty_source_is_refused_not_taken_for_the_working_directory(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Path("") is "."; in a container the working directory is often "/".
    monkeypatch.chdir(tmp_path)
    args = ["sidecar", "--once", "--endpoint", "http://127.0.0.1:1", "--bucket", "bkt/p"]
    if how == "variable":
        monkeypatch.setenv("RUNLOG_RELAY_SOURCE", "")
    elif how == "flag":
        args += ["--source", " "]
    else:
        (tmp_path / "c.yaml").write_text("source: ''\n")
        args += ["--config", str(tmp_path / "c.yaml")]
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse refuses a bad flag itself
        code = int(exc.code or 0)
    assert code == 2
    assert "must not be empty" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "folder", "not PEM"])
def test_a_ca_file_that_cannot_be_used_is_a_usage_error_naming_it(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logs").mkdir()
    ca = {"missing": tmp_path / "none.pem", "folder": tmp_path, "not PEM": tmp_path / "x.pem"}[kind]
    (tmp_path / "x.pem").write_text("not a certificate\n")
    args = ["sidecar", "--once", "--source", str(tmp_path / "logs"), "--bucket", "bkt/p"]
    args += ["--endpoint", "https://127.0.0.1:1", "--ca-file", str(ca)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"tls.caFile {ca}: cannot be used as a PEM CA bundle" in err, err
    assert "Traceback" not in err
