"""How the variables become settings (config.settings.environment_data and the loader).

The sources, lowest first: the config file, the environment, the flags; inside a group,
field by field. These cases pin the spellings a user writes: a group's JSON variable
below its fields' variables, case-insensitive names, the order of a setting's names
(``RUNLOG_RELAY_*`` before the AWS SDK's), and a config key spelt as an alias.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("RUNLOG_RELAY_", "AWS_", "RUNNABLE_")):
            monkeypatch.delenv(name)


def test_a_groups_json_variable_is_below_its_fields_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_SYNC", '{"debounceSeconds": 2, "concurrency": 4}')
    monkeypatch.setenv("RUNLOG_RELAY_SYNC__CONCURRENCY", "6")
    sync = load_sidecar_settings().sync
    assert (sync.debounce_seconds, sync.concurrency) == (2.0, 6)


def test_file_environment_and_flags_merge_field_by_field_in_a_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("sync:\n  debounceSeconds: 3\n  concurrency: 2\n  tornGraceSeconds: 9\n")
    monkeypatch.setenv("RUNLOG_RELAY_SYNC__CONCURRENCY", "5")
    monkeypatch.setenv("RUNLOG_RELAY_SYNC__DEBOUNCE_SECONDS", "1")
    sync = load_sidecar_settings({"sync": {"debounce_seconds": 0.5}}, config).sync
    assert (sync.debounce_seconds, sync.concurrency, sync.torn_grace_seconds) == (0.5, 5, 9.0)


def test_a_group_variable_that_is_not_a_json_object_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_TLS", "{not json")
    with pytest.raises(ConfigError, match="RUNLOG_RELAY_TLS"):
        load_sidecar_settings()
    monkeypatch.setenv("RUNLOG_RELAY_TLS", "[1, 2]")
    with pytest.raises(ConfigError, match="RUNLOG_RELAY_TLS"):
        load_sidecar_settings()


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("runlog_relay_bucket", "lower-case/prefix")
    monkeypatch.setenv("Runlog_Relay_Sync__Concurrency", "7")
    settings = load_sidecar_settings()
    assert (settings.bucket, settings.sync.concurrency) == ("lower-case/prefix", 7)


def test_a_settings_own_variable_wins_over_the_aws_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-aws")
    monkeypatch.setenv("RUNLOG_RELAY_ACCESS_KEY_ID", "from-relay")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    settings = load_sidecar_settings()
    assert settings.access_key_id is not None
    assert settings.access_key_id.get_secret_value() == "from-relay"
    assert settings.aws_region == "eu-west-2"  # the SDK's fallback name
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert load_sidecar_settings().aws_region == "eu-west-1"  # before AWS_DEFAULT_REGION


def test_a_config_key_spelt_as_an_alias_is_below_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("credentials: web-identity\nretryRunId: from-file\n")
    assert load_sidecar_settings({}, config).credential_source.value == "web-identity"
    monkeypatch.setenv("RUNLOG_RELAY_CREDENTIALS", "static")
    monkeypatch.setenv("RUNNABLE_RETRY_RUN_ID", "from-runnable")
    settings = load_sidecar_settings({}, config)
    assert settings.credential_source.value == "static"
    assert settings.retry_run_id == "from-runnable"
    flags = {"credential_source": "container", "retry_run_id": "from-flag"}
    settings = load_sidecar_settings(flags, config)
    assert (settings.credential_source.value, settings.retry_run_id) == ("container", "from-flag")


def test_a_comma_separated_variable_is_a_list_of_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_RUN_IDS", "run-1, run-2,,run-3")
    assert load_sidecar_settings().run_ids == ("run-1", "run-2", "run-3")


def test_an_empty_variable_is_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Argo fills RUNNABLE_RETRY_RUN_ID with "" unless the workflow is a retry.
    monkeypatch.setenv("RUNNABLE_RETRY_RUN_ID", "")
    monkeypatch.setenv("RUNLOG_RELAY_REGION", "")
    settings = load_sidecar_settings()
    assert settings.retry_run_id is None
    assert settings.region == ""
