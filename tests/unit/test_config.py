"""config: the shared StoreSpec model and the sidecar's settings (sources, secrets, errors)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from tests.support.credentials import key_pair

from runlog_relay.config.models import (
    DEFAULT_BUCKET,
    DEFAULT_ENDPOINT,
    Layout,
    StoreSpec,
    SyncSpec,
    parse_bucket,
    validate_endpoint,
)
from runlog_relay.config.settings import LogFormat, SidecarSettings, load_sidecar_settings
from runlog_relay.errors import ConfigError

#: Distinctive enough that finding it anywhere in output is never a coincidence.
SECRET = "S3CR3T-zq8Xv-never-print-me"
ACCESS = "AKIA-ACCESS-k7Pw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: start every test from none of ours."""
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- parse_bucket


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("runnable/run-logs", ("runnable", "run-logs")),
        ("runnable", ("runnable", "")),
        ("runnable/", ("runnable", "")),
        ("my.bucket-1/a/b", ("my.bucket-1", "a/b")),
        ("logs/team=x/run_logs/", ("logs", "team=x/run_logs")),
        ("abc", ("abc", "")),
        ("a" * 63, ("a" * 63, "")),
    ],
)
def test_parse_bucket_accepts_runnables_form(value: str, expected: tuple[str, str]) -> None:
    assert parse_bucket(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "ab",  # too short
        "a" * 64,  # too long
        "Runnable/run-logs",  # upper case
        "-runnable",
        "runnable-",
        "my..bucket",
        "my_bucket",
        "s3://runnable/run-logs",
        "runnable//run-logs",
        "runnable/../other",
        "runnable/./x",
        "runnable/a b",
        "runnable/a\nb",
        "/runnable",
    ],
)
def test_parse_bucket_rejects_bad_forms(value: str) -> None:
    with pytest.raises(ValueError, match="bucket"):
        parse_bucket(value)


@pytest.mark.parametrize("value", ["runnable/a b", "runnable//run-logs", "runnable/a\nb"])
def test_a_bad_prefix_is_named_as_the_prefix_not_the_bucket(value: str) -> None:
    with pytest.raises(ValueError, match=r"^bucket prefix must be /-separated segments"):
        parse_bucket(value)


def test_default_bucket_is_runnables() -> None:
    assert parse_bucket(DEFAULT_BUCKET) == ("runnable", "run-logs")


# --------------------------------------------------------------------------- endpoint


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://localhost:9002", "http://localhost:9002"),
        ("https://s3.eu-west-1.amazonaws.com", "https://s3.eu-west-1.amazonaws.com"),
        ("https://minio.example:443/", "https://minio.example:443"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_endpoint_accepts_scheme_host_port(value: str, expected: str) -> None:
    assert StoreSpec(endpoint=value).endpoint == expected


@pytest.mark.parametrize(
    "value",
    [
        "localhost:9002",
        "ftp://host",
        "http://host/path",
        "http://host/bucket/",
        "http://host?x=1",
        "http://host#frag",
        "http://host:notaport",
        "http://host:99999",
        "http://ho st",
        "http://",
    ],
)
def test_endpoint_rejects_paths_and_malformed_urls(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        StoreSpec(endpoint=value)
    assert [e["loc"] for e in caught.value.errors()] == [("endpoint",)]


@pytest.mark.parametrize(
    "value",
    [
        f"http://user:{SECRET}@minio:9000",
        f"https://user:{SECRET}@minio",
        f"http://user:{SECRET}@minio:9000/with/a/path",
        f"http://{SECRET}@minio",
        f"user:{SECRET}@minio:9000",
    ],
)
def test_endpoint_with_credentials_is_rejected_without_echoing_them(value: str) -> None:
    with pytest.raises(ValueError) as direct:
        validate_endpoint(value)
    assert SECRET not in str(direct.value)
    with pytest.raises(ValidationError) as caught:
        StoreSpec(endpoint=value)
    messages = [e["msg"] for e in caught.value.errors(include_input=False)]
    assert messages and all(SECRET not in m for m in messages)
    with pytest.raises(ConfigError) as config:
        load_sidecar_settings({"endpoint": value})
    assert "endpoint" in str(config.value)
    assert SECRET not in str(config.value)


# --------------------------------------------------------------------------- StoreSpec


def test_store_spec_defaults_are_runnables() -> None:
    spec = StoreSpec()
    assert spec.endpoint == DEFAULT_ENDPOINT == "http://localhost:9002"
    assert (spec.bucket_name, spec.prefix) == ("runnable", "run-logs")
    assert spec.layout is Layout.CHUNKED
    assert spec.credentials_secret_ref is None
    assert spec.create_bucket is False


FULL_WIRE = {
    "endpoint": "https://minio.example:9000",
    "bucket": "logs/team-a",
    "region": "eu-west-1",
    "tls": {"insecureSkipVerify": False, "caSecretRef": {"name": "ca", "key": "ca.crt"}},
    "credentialsSecretRef": {
        "name": "s3-creds",
        "accessKeyIdKey": "id",
        "secretAccessKeyKey": "secret",
    },
    "layout": "single",
    "logFolder": "/var/run_logs",
    "createBucket": True,
    "sync": {
        "debounceSeconds": 0.2,
        "rescanIntervalSeconds": 30.0,
        "concurrency": 4,
        "forcePolling": True,
        "pollIntervalSeconds": 2.0,
        "tornGraceSeconds": 10.0,
        "permanentErrorRetrySeconds": 10.0,
        "drainTimeoutSeconds": 20.0,
        "maxPendingBytes": 2 * 1024 * 1024,
        "maxFileBytes": 64 * 1024 * 1024,
    },
    "tagSealedRuns": True,
    "localRetention": {"deleteAfter": "7d", "dryRun": True},
}


def test_store_spec_wire_round_trip_is_camel_case() -> None:
    spec = StoreSpec.model_validate(FULL_WIRE)
    assert spec.credentials_secret_ref is not None
    assert spec.credentials_secret_ref.secret_access_key_key == "secret"
    assert spec.sync.force_polling is True
    assert spec.log_folder == "/var/run_logs"
    assert spec.wire() == FULL_WIRE
    assert StoreSpec.model_validate(json.loads(json.dumps(spec.wire()))) == spec


def test_store_spec_wire_omits_unset_optionals_and_uses_no_snake_case() -> None:
    wire = StoreSpec().wire()
    assert "region" not in wire and "credentialsSecretRef" not in wire

    def keys(value: object) -> list[str]:
        if isinstance(value, dict):
            return [k for k, v in value.items() for k in [k, *keys(v)]]
        return []

    assert all("_" not in key for key in keys(wire))
    assert {"logFolder", "createBucket"} <= set(wire)
    assert "debounceSeconds" in wire["sync"]


def test_store_spec_accepts_snake_case_in_python() -> None:
    spec = StoreSpec(create_bucket=True, sync=SyncSpec(force_polling=True))
    assert spec.wire()["createBucket"] is True
    assert spec.wire()["sync"]["forcePolling"] is True


@pytest.mark.parametrize(
    "wire",
    [
        {"bogus": 1},
        {"sync": {"debounceSecs": 1}},
        {"tls": {"verify": False}},
        {"credentialsSecretRef": {"name": "x", "extra": "y"}},
    ],
)
def test_store_spec_forbids_unknown_fields(wire: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        StoreSpec.model_validate(wire)


def test_store_spec_tls_options_need_https() -> None:
    with pytest.raises(ValidationError, match="https"):
        StoreSpec.model_validate({"endpoint": "http://h:1", "tls": {"insecureSkipVerify": True}})
    spec = StoreSpec.model_validate(
        {"endpoint": "https://h:1", "tls": {"insecureSkipVerify": True}}
    )
    assert spec.tls.insecure_skip_verify is True


@pytest.mark.parametrize(
    "wire",
    [
        {"sync": {"concurrency": 0}},
        {"sync": {"concurrency": 65}},
        {"sync": {"debounceSeconds": -1}},
        {"sync": {"maxPendingBytes": 1024}},
        {"logFolder": "relative/path"},
        {"region": "EU WEST"},
        {"layout": "flat"},
        {"credentialsSecretRef": {"name": "Not_A_DNS_Name"}},
    ],
)
def test_store_spec_rejects_out_of_range_values(wire: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        StoreSpec.model_validate(wire)


def test_a_bad_region_is_worded_by_the_rule_and_the_crd_keeps_its_pattern() -> None:
    with pytest.raises(ValidationError) as caught:
        StoreSpec.model_validate({"region": "EU WEST"})
    assert "region must be 1-64 lower-case letters" in str(caught.value)
    assert "should match pattern" not in str(caught.value)
    assert StoreSpec.model_validate({"region": "eu-west-1"}).region == "eu-west-1"
    schema = StoreSpec.model_json_schema(by_alias=True)["properties"]["region"]
    region = next(
        option for option in schema.get("anyOf", [schema]) if option.get("type") == "string"
    )
    assert (region["pattern"], region["maxLength"]) == ("^[a-z0-9-]{1,64}$", 64)


def test_store_spec_is_frozen() -> None:
    spec = StoreSpec()
    with pytest.raises(ValidationError):
        spec.bucket = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- settings sources


def test_settings_defaults() -> None:
    settings = load_sidecar_settings()
    assert isinstance(settings, SidecarSettings)
    assert settings.endpoint == "http://localhost:9002"
    assert (settings.bucket_name, settings.prefix) == ("runnable", "run-logs")
    assert settings.layout is Layout.CHUNKED
    assert settings.metrics_port == 9464
    assert settings.log_level == "INFO"
    assert settings.log_format is LogFormat.PLAIN
    assert settings.sync == SyncSpec()
    assert key_pair(settings) == ("minioadmin", "minioadmin")


def test_precedence_overrides_then_env_then_file_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path / "config.yaml",
        "endpoint: http://from-file:1\nbucket: file-bucket/p\nregion: eu-file-1\n",
    )
    from_file = load_sidecar_settings(config_file=config)
    assert (from_file.endpoint, from_file.bucket, from_file.region) == (
        "http://from-file:1",
        "file-bucket/p",
        "eu-file-1",
    )
    assert from_file.layout is Layout.CHUNKED  # not in the file: default

    monkeypatch.setenv("RUNLOG_RELAY_ENDPOINT", "http://from-env:2")
    monkeypatch.setenv("RUNLOG_RELAY_BUCKET", "env-bucket")
    from_env = load_sidecar_settings(config_file=config)
    assert (from_env.endpoint, from_env.bucket, from_env.region) == (
        "http://from-env:2",
        "env-bucket",
        "eu-file-1",
    )

    explicit = load_sidecar_settings({"endpoint": "http://from-cli:3"}, config)
    assert (explicit.endpoint, explicit.bucket, explicit.region) == (
        "http://from-cli:3",
        "env-bucket",
        "eu-file-1",
    )


def test_unset_options_fall_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_ENDPOINT", "http://from-env:2")
    settings = load_sidecar_settings({"endpoint": None, "bucket": None, "layout": None})
    assert settings.endpoint == "http://from-env:2"
    assert settings.bucket == DEFAULT_BUCKET


def test_nested_env_variable_and_deep_merge_with_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "c.yaml", "sync:\n  concurrency: 3\n  debounce_seconds: 0.9\n")
    monkeypatch.setenv("RUNLOG_RELAY_SYNC__DEBOUNCE_SECONDS", "0.5")
    monkeypatch.setenv("RUNLOG_RELAY_TLS__INSECURE_SKIP_VERIFY", "true")
    settings = load_sidecar_settings({"sync": {"torn_grace_seconds": 5}}, config)
    assert settings.sync.debounce_seconds == 0.5  # env beats file
    assert settings.sync.concurrency == 3  # file's other sync fields survive
    assert settings.sync.torn_grace_seconds == 5.0  # option
    assert settings.sync.rescan_interval_seconds == SyncSpec().rescan_interval_seconds
    assert settings.tls.insecure_skip_verify is True


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("RUNLOG_RELAY_SOURCE", "/data/logs", "source", Path("/data/logs")),
        ("RUNLOG_RELAY_LAYOUT", "single", "layout", Layout.SINGLE),
        ("RUNLOG_RELAY_CREATE_BUCKET", "true", "create_bucket", True),
        ("RUNLOG_RELAY_METRICS_PORT", "9100", "metrics_port", 9100),
        ("RUNLOG_RELAY_METRICS_HOST", "127.0.0.1", "metrics_host", "127.0.0.1"),
        ("RUNLOG_RELAY_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("RUNLOG_RELAY_LOG_FORMAT", "json", "log_format", LogFormat.JSON),
        ("RUNLOG_RELAY_REGION", "us-east-1", "region", "us-east-1"),
    ],
)
def test_every_top_level_setting_reads_its_env_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, attribute: str, expected: object
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_sidecar_settings(), attribute) == expected


def test_camel_case_yaml_keys_are_accepted(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.yaml",
        """
source: /data/run_logs
endpoint: https://minio.example:9000
bucket: logs/team-a
layout: single
createBucket: true
metricsPort: 9100
logFormat: json
tls:
  insecureSkipVerify: true
sync:
  debounceSeconds: 0.25
  forcePolling: true
  tornGraceSeconds: 7
""",
    )
    settings = load_sidecar_settings(config_file=config)
    assert settings.source == Path("/data/run_logs")
    assert settings.create_bucket is True
    assert settings.metrics_port == 9100
    assert settings.log_format is LogFormat.JSON
    assert settings.tls.insecure_skip_verify is True
    assert settings.sync.debounce_seconds == 0.25
    assert settings.sync.force_polling is True
    assert settings.sync.torn_grace_seconds == 7.0
    assert (settings.bucket_name, settings.prefix) == ("logs", "team-a")


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    assert load_sidecar_settings(config_file=write(tmp_path / "c.yaml", "")).bucket == (
        DEFAULT_BUCKET
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must hold a mapping"),
        ("endpoint: [unclosed\n", "not valid YAML"),
        ("unknownSetting: 1\n", "unknown_setting"),
        ("sync:\n  concurrency: many\n", "sync.concurrency"),
        # PyYAML keeps the last of a repeated key: a setting given twice is refused.
        (
            "sync:\n  concurrency: 4\nsync:\n  forcePolling: true\n",
            "'sync' is given twice at line 3",
        ),
        ("sync:\n  concurrency: 4\n  concurrency: 8\n", "'concurrency' is given twice"),
        ("sync:\n  debounceSeconds: 1\n  debounce_seconds: 2\n", "are the same setting"),
        ("logLevel: INFO\nlog_level: DEBUG\n", "'logLevel' and 'log_level' are the same"),
        # A bool is an int in Python: `true` meant 1 upload in flight.
        ("sync:\n  concurrency: true\n", "sync.concurrency: must be a number"),
        ("sync:\n  maxFileBytes: false\n", "must be a number, not false"),
        ("metricsPort: true\n", "metrics_port: must be a number"),
        # The rule's words, not pydantic's pattern (a user cannot read a regex).
        ("region: us east 1\n", "region: region must be 1-64 lower-case letters, digits and"),
        ("region: US-EAST-1\n", "such as us-east-1, got 'US-EAST-1'"),
    ],
)
def test_bad_config_files_raise_config_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    config = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_sidecar_settings(config_file=config)
    assert str(config) in str(caught.value)


def test_yaml_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    config = write(
        tmp_path / "ok.yaml",
        "sync:\n  <<: &tuned {concurrency: 4}\n  forcePolling: true\n"
        "localRetention: {deleteAfter: &week 7d}\n",
    )
    settings = load_sidecar_settings(config_file=config)
    assert (settings.sync.concurrency, settings.sync.force_polling) == (4, True)
    assert settings.local_retention.delete_after == "7d"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_sidecar_settings(config_file=tmp_path / "absent.yaml")


def test_binary_config_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"bucket: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_sidecar_settings(config_file=config)


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    "line",
    [
        f"secretAccessKey: {SECRET}",
        f"secret_access_key: {SECRET}",
        f"accessKeyId: {SECRET}",
        f"access_key_id: {SECRET}",
    ],
)
def test_credentials_in_the_config_file_are_rejected(tmp_path: Path, line: str) -> None:
    config = write(tmp_path / "c.yaml", f"bucket: runnable/x\n{line}\n")
    with pytest.raises(ConfigError, match="must not contain") as caught:
        load_sidecar_settings(config_file=config)
    assert SECRET not in str(caught.value)


def test_yaml_syntax_error_does_not_echo_a_secret_on_the_bad_line(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", f'endpoint: http://h:1\nsecretAccessKey: "{SECRET}\n')
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_sidecar_settings(config_file=config)
    assert SECRET not in str(caught.value)
    assert "line 3, column 1" in str(caught.value)  # still says where


@pytest.mark.parametrize("prefix", ["AWS_", "RUNLOG_RELAY_"])
def test_credentials_from_env(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv(f"{prefix}ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv(f"{prefix}SECRET_ACCESS_KEY", SECRET)
    assert key_pair(load_sidecar_settings()) == (ACCESS, SECRET)


def test_credential_files_win_and_are_reread_on_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    key_file = write(tmp_path / "id", f"{ACCESS}\n")
    secret_file = write(tmp_path / "secret", f"{SECRET}\n")
    monkeypatch.setenv("RUNLOG_RELAY_ACCESS_KEY_ID_FILE", str(key_file))
    monkeypatch.setenv("RUNLOG_RELAY_SECRET_ACCESS_KEY_FILE", str(secret_file))
    settings = load_sidecar_settings()
    assert key_pair(settings) == (ACCESS, SECRET)  # stripped of the newline
    assert settings.describe()["credentials"] == "static keys from mounted files"

    write(secret_file, "rotated-secret")
    write(key_file, "rotated-id")
    assert key_pair(settings) == ("rotated-id", "rotated-secret")


def test_missing_credential_file_is_a_config_error_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    settings = load_sidecar_settings({"secret_access_key_file": tmp_path / "gone"})
    with pytest.raises(ConfigError, match="cannot read credentials file") as caught:
        settings.credentials()
    assert str(tmp_path / "gone") in str(caught.value)
    assert SECRET not in str(caught.value)


# --------------------------------------------------------------------------- errors, secrets


def test_config_error_lists_every_bad_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_SYNC__CONCURRENCY", "0")
    config = write(tmp_path / "c.yaml", "layout: flat\n")
    with pytest.raises(ConfigError) as caught:
        load_sidecar_settings(
            {"metrics_port": 70000, "log_level": "LOUD", "bucket": "Not A Bucket"}, config
        )
    message = str(caught.value)
    assert message.startswith(f"invalid settings (config file {config}): ")
    for field in ("metrics_port", "log_level", "bucket", "sync.concurrency", "layout"):
        assert f"{field}:" in message, field
    # Reasons, not just names.
    assert "less than or equal to 65535" in message


def test_no_secret_in_repr_describe_or_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    settings = load_sidecar_settings({"source": tmp_path})
    assert key_pair(settings) == (ACCESS, SECRET)
    shown = [
        repr(settings),
        str(settings),
        json.dumps(settings.describe()),
        json.dumps(settings.model_dump(), default=str),
        repr(settings.secret_access_key),
    ]
    for text in shown:
        assert SECRET not in text
        assert ACCESS not in text
    assert settings.describe()["credentials"] == "static keys from the environment"
    assert ACCESS not in repr(settings.credentials()) and SECRET not in repr(settings.credentials())

    with pytest.raises(ConfigError) as caught:
        load_sidecar_settings({"metrics_port": -1, "bucket": "BAD"})
    assert SECRET not in str(caught.value)
    assert ACCESS not in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load_sidecar_settings()
    with pytest.raises(AttributeError, match="frozen"):
        settings.bucket = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        settings.sync.concurrency = 1  # type: ignore[misc]
