"""The sidecar's settings reader (config.fields, no pydantic) against the schema (pydantic).

For any input the result must be the schema's: the same values when it accepts, its
ValidationError when it refuses. The corpus covers every field with the forms each
source gives (variables: text; the file: YAML's types; flags and callers: objects), the
edges of every bound and pattern, and forms only pydantic takes.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from runlog_relay.config import fieldgen
from runlog_relay.config.fields import Fields, Refused, Secret
from runlog_relay.config.settings import (
    SidecarSettings,
    SidecarShard,
    SyncSettings,
    setting_fields,
)
from runlog_relay.config.settings_model import SidecarSettingsModel, SidecarShardModel

#: Values tried for every field, whatever its type.
_EVERYWHERE: tuple[Any, ...] = ("", " ", "x", "0", "1", "-1", 0, 1, -1, 1.5, True, False, None)
#: More values by the kind of the field.
_BY_KIND: dict[str, tuple[Any, ...]] = {
    "bool": ("true", "TRUE", "yes", "Off", "n", "2", " true", 2, 1.0, 0.0, [True]),
    "int": ("16", "064", "1_000", "16.0", " 16", "+5", "1e3", 16.0, 16.5, 65535, 65536, 2**70),
    "float": ("0.05", ".5", "5.", "1e3", "inf", "nan", "-0", " 0.5", 60, 60.0001, 1e309),
    "str": ("a\n", "A", "ab" * 40, "é", 5, b"bytes", ["x"]),
    "path": ("/tmp/x", "rel/x", Path("/p"), 5, b"/b"),
    "secret": ("s3cr3t", SecretStr("s"), 5),
    "tuple_str": ("a,b", "a, a ,b", ["a", "b"], ("a",), ["a/b"], [1], "../x", "a\tb", []),
    "dict_str": ('{"a": "b"}', "{bad", '{"a": 1}', {"a": "b"}, {"a": 1}, {1: "b"}, []),
}
_FIELD_VALUES: dict[str, tuple[Any, ...]] = {
    "endpoint": ("http://h:9000", "https://h/", "http://u:p@h", "ftp://h", "http://h:99999"),
    "bucket": ("b-1/p", "ab", "a..b", "runnable/run-logs/", "B/x", "bb/./x", "bb/" + "p" * 1030),
    "region": ("us-east-1", "us east 1"),
    "layout": ("chunked", "single", "Chunked"),
    "credential_source": ("auto", "web-identity", "container", "nope"),
    "log_level": ("debug", "Warning", "trace"),
    "log_format": ("json", "plain", "JSON"),
    "storage_class": ("STANDARD_IA", "standard", "S" * 64, "S" * 65),
    "sts_endpoint": ("https://sts.example", "sts.example", "http://u@h"),
    "metrics_port": ("9464", "65535", "65536", "-1"),
    "retry_run_id": ("run-1", "  ", " r "),
    "run_ids": ("r1,r2", "r1,,r1", ".hidden", "a\\b"),
    "source": ("/var/log", "", "   "),
    "mode": ("s3", "kms", "c", "KMS", "x"),
    "kms_key_id": ("alias/x", "with space", "k" * 2048, "k" * 2049),
    "delete_after": ("7d", "1h30m", "90", "0.5", "11y", "1000w", "7 d", "d"),
    "max_pending_bytes": ("16MiB", "16Mi", "1MB", "1MiB", "1048575", "0.5GiB", "1.5", "lots"),
    "max_file_bytes": ("256MiB", "1.5KiB", "2GiB"),
    "group": ("relay", "Relay", "-x", "a" * 40, "a" * 41),
    "lease_seconds": ("1", "600", "0.5", "601"),
    "concurrency": ("1", "64", "65", "0"),
    "debounce_seconds": ("0", "60", "60.5"),
}


def _schema(model: type, values: dict[str, Any]) -> Any:
    try:
        return ("ok", _comparable(model.model_validate(values).model_dump()))
    except ValidationError as exc:
        return ("refused", str(exc).replace(model.__name__, "<model>"))


def _reader(cls: type[Fields], values: dict[str, Any]) -> Any:
    try:
        return ("ok", _comparable(cls(**values).model_dump()))
    except ValidationError as exc:
        return ("refused", str(exc).replace(exc.title, "<model>"))


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, SecretStr | Secret):
        return ("secret", value.get_secret_value())
    return value


def _cases() -> list[tuple[tuple[str, ...], Any]]:
    cases = []
    for path, setting in setting_fields():
        kind = setting.kind if isinstance(setting.kind, str) else "enum"
        extra = _BY_KIND.get(kind, ())
        for value in itertools.chain(_EVERYWHERE, extra, _FIELD_VALUES.get(path[-1], ())):
            cases.append((path, value))
    return cases


_CASES = _cases()


def test_the_corpus_reaches_every_field_and_both_outcomes() -> None:
    paths = {path for path, _ in setting_fields()}
    assert {path for path, _ in _CASES} == paths
    outcomes = {_reader(SidecarSettings, _nest(path, value))[0] for path, value in _CASES}
    assert outcomes == {"ok", "refused"}


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    return {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}


@pytest.mark.parametrize(("path", "value"), _CASES, ids=lambda v: repr(v)[:40])
def test_the_reader_gives_the_schemas_result(path: tuple[str, ...], value: Any) -> None:
    values = _nest(path, value)
    assert _reader(SidecarSettings, values) == _schema(SidecarSettingsModel, values)


def test_a_group_built_on_its_own_is_the_schemas_too() -> None:
    for values in ({"group": "relay", "lease_seconds": "20"}, {"group": "Bad"}, {"nope": 1}):
        assert _reader(SidecarShard, values) == _schema(SidecarShardModel, values)
    assert SidecarShard(group="r") == SidecarShardModel(group="r")  # equal across readers


def test_defaults_are_the_schemas() -> None:
    assert _comparable(SidecarSettings().model_dump()) == _comparable(
        SidecarSettingsModel().model_dump()
    )


def test_aliases_and_both_spellings_of_group_keys_are_taken() -> None:
    settings = SidecarSettings(
        credentials="static",
        AWS_ACCESS_KEY_ID="k",
        sync={"debounceSeconds": "0.1", "max_file_bytes": "2MiB"},
    )
    assert settings.credential_source.value == "static"
    assert settings.access_key_id == Secret("k")
    assert isinstance(settings.sync, SyncSettings)
    assert (settings.sync.debounce_seconds, settings.sync.max_file_bytes) == (0.1, 2 * 1024**2)


def test_the_plain_forms_are_taken_without_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a sidecar is given in practice never reaches pydantic (whose import is what
    this reader saves); a form it does not take does."""
    from runlog_relay.config import fields

    def no_schema(cls: type, values: Any) -> Any:
        raise AssertionError(f"went to the schema: {values}")

    monkeypatch.setattr(fields.Fields, "_from_schema", classmethod(no_schema))
    SidecarSettings(
        source="/logs",
        endpoint="https://s3.example:443",
        bucket="runs/team-a",
        run_ids="r1,r2",
        sync={"concurrency": "32", "debounce_seconds": "0.2", "max_pending_bytes": "32MiB"},
        sse={"mode": "kms", "kms_context": '{"team": "a"}'},
        local_retention={"delete_after": "7d"},
        tls={"insecure_skip_verify": "false"},
        log_level="debug",
        metrics_port="0",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_ACCESS_KEY_ID="k",
    )
    with pytest.raises(AssertionError, match="went to the schema"):
        SidecarSettings(sync={"concurrency": "1_0"})


def test_a_value_refused_by_a_field_goes_to_the_schema() -> None:
    setting = next(s for p, s in setting_fields() if p == ("sync", "concurrency"))
    assert setting.check("8") == 8
    for value in ("65", "1_0", True, "x"):
        with pytest.raises((Refused, ValueError)):
            setting.check(value)


def test_the_generated_table_is_what_the_schema_gives() -> None:
    """``make settings-fields`` rewrites it; a stale table would let the two readers drift."""
    assert fieldgen.TARGET.read_text(encoding="utf-8") == fieldgen.generate()
    result = subprocess.run(
        [sys.executable, "-m", "runlog_relay.config.fieldgen", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
