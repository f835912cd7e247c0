"""Server-side encryption and storage class settings: validation, the SSE-C key file,
the headers sent, and what the operator renders and mounts for a RunLogStore."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from runlog_relay.config.credentials import Encryption
from runlog_relay.config.models import StoreSpec
from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.errors import ConfigError
from runlog_relay.objectstore import _sse
from runlog_relay.operator import reconcile as rc

KEY = bytes(range(32))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


def key_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "sse-c.key"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "content",
    [KEY, base64.b64encode(KEY), base64.b64encode(KEY) + b"\n"],
    ids=["raw", "base64", "base64-newline"],
)
def test_customer_key_raw_or_base64(tmp_path: Path, content: bytes) -> None:
    settings = load_sidecar_settings(
        {
            "endpoint": "https://s3.example.com",
            "sse": {"mode": "c", "c_key_file": key_file(tmp_path, content)},
        }
    )
    encryption = settings.encryption()
    assert encryption is not None and encryption.customer_key == KEY
    assert KEY.hex() not in repr(encryption) and str(KEY) not in repr(encryption)
    assert settings.describe()["encryption"] == "SSE-C with a customer key"


@pytest.mark.parametrize("content", [b"short", b"x" * 33, base64.b64encode(b"y" * 31)])
def test_a_customer_key_of_the_wrong_size_is_named_not_shown(
    tmp_path: Path, content: bytes
) -> None:
    settings = load_sidecar_settings(
        {
            "endpoint": "https://s3.example.com",
            "sse": {"mode": "c", "c_key_file": key_file(tmp_path, content)},
        }
    )
    with pytest.raises(ConfigError, match="must hold 32 bytes") as caught:
        settings.encryption()
    assert content.decode(errors="replace") not in str(caught.value)


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("https://s3.example.com", True),
        ("http://127.0.0.1:9000", True),
        ("http://localhost:9000", True),
        ("http://minio.storage:9000", False),
    ],
)
def test_customer_keys_travel_only_over_https_or_loopback(
    tmp_path: Path, endpoint: str, allowed: bool
) -> None:
    settings = load_sidecar_settings(
        {"endpoint": endpoint, "sse": {"mode": "c", "c_key_file": key_file(tmp_path, KEY)}}
    )
    if allowed:
        assert settings.encryption() is not None
    else:
        with pytest.raises(ConfigError, match="needs an https:// endpoint"):
            settings.encryption()


@pytest.mark.parametrize(
    ("sse", "problem"),
    [
        ({"kms_key_id": "alias/x"}, "need mode kms"),
        ({"mode": "s3", "kms_context": {"a": "b"}}, "need mode kms"),
        ({"mode": "c"}, "mode c needs the customer key"),
        ({"mode": "kms", "c_key_file": "/k"}, "only used with mode c"),
        ({"mode": "kms", "kms_context": "not json"}, "must be a JSON object"),
        ({"mode": "kms", "kms_key_id": "has space"}, "kms_key_id"),
        ({"mode": "rot13"}, "sse.mode"),
    ],
)
def test_sse_fields_that_do_not_go_together(sse: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_sidecar_settings({"sse": sse})


def test_kms_context_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_SSE__MODE", "kms")
    monkeypatch.setenv("RUNLOG_RELAY_SSE__KMS_CONTEXT", '{"team": "data", "env": "prod"}')
    encryption = load_sidecar_settings().encryption()
    assert encryption == Encryption(mode="kms", kms_context=(("env", "prod"), ("team", "data")))
    assert (
        encryption.describe() == "SSE-KMS with the bucket's default key and an encryption context"
    )


def test_headers_sent_for_each_mode() -> None:
    assert _sse(None) is None
    assert _sse(Encryption("s3")).headers() == {"X-Amz-Server-Side-Encryption": "AES256"}  # type: ignore[union-attr]
    kms = _sse(Encryption("kms", kms_key_id="alias/relay", kms_context=(("team", "data"),)))
    assert kms is not None and kms.headers() == {
        "X-Amz-Server-Side-Encryption": "aws:kms",
        "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id": "alias/relay",
        "X-Amz-Server-Side-Encryption-Context": base64.b64encode(
            json.dumps({"team": "data"}).encode()
        ).decode(),
    }
    bucket_key = _sse(Encryption("kms", kms_context=(("team", "data"),)))
    assert bucket_key is not None
    headers = bucket_key.headers()
    assert headers["X-Amz-Server-Side-Encryption"] == "aws:kms"
    assert "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id" not in headers
    assert json.loads(base64.b64decode(headers["X-Amz-Server-Side-Encryption-Context"])) == {
        "team": "data"
    }
    customer = _sse(Encryption("c", customer_key=KEY))
    assert customer is not None
    assert (
        customer.headers()["X-Amz-Server-Side-Encryption-Customer-Key"]
        == base64.b64encode(KEY).decode()
    )


def test_storage_class_is_validated() -> None:
    assert load_sidecar_settings({"storage_class": "STANDARD_IA"}).storage_class == "STANDARD_IA"
    with pytest.raises(ConfigError, match="storage_class"):
        load_sidecar_settings({"storage_class": "standard ia"})


# --------------------------------------------------------------------------- RunLogStore


def test_store_sse_c_mounts_the_key_and_names_it_in_the_config(tmp_path: Path) -> None:
    spec = rc.parse_spec(
        {
            "endpoint": "https://s3.example.com",
            "sse": {"mode": "c", "customerKeySecretRef": {"name": "sse", "key": "key.b64"}},
            "storageClass": "INTELLIGENT_TIERING",
        }
    )
    volumes, mounts = rc.pod_volumes(spec, store="main")
    volume = next(v for v in volumes if v["name"] == "runlog-relay-sse-c")
    assert volume["secret"] == {"secretName": "sse", "items": [{"key": "key.b64", "path": "key"}]}
    assert any(m["mountPath"] + "/key" == rc.SSE_C_KEY_FILE for m in mounts)
    uses = [(u.secret, u.key, u.field) for u in rc.secret_key_uses(spec)]
    assert ("sse", "key.b64", "spec.sse.customerKeySecretRef") in uses
    assert rc.referenced_secret_names(spec.wire()) == {"sse"}
    config = tmp_path / "config.yaml"
    config.write_text(rc.render_sidecar_config(spec, namespace="ns", store="main"))
    settings = load_sidecar_settings({}, config)
    assert settings.sse.mode == "c" and str(settings.sse.c_key_file) == rc.SSE_C_KEY_FILE
    assert settings.storage_class == "INTELLIGENT_TIERING"


def test_store_sse_kms_renders_key_and_context(tmp_path: Path) -> None:
    spec = rc.parse_spec(
        {
            "sse": {
                "mode": "kms",
                "kmsKeyId": "arn:aws:kms:eu-west-1:1:key/abc",
                "kmsContext": {"team": "data"},
            }
        }
    )
    config = tmp_path / "config.yaml"
    config.write_text(rc.render_sidecar_config(spec, namespace="ns", store="main"))
    encryption = load_sidecar_settings({}, config).encryption()
    assert encryption == Encryption(
        mode="kms", kms_key_id="arn:aws:kms:eu-west-1:1:key/abc", kms_context=(("team", "data"),)
    )


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            {
                "endpoint": "http://minio:9000",
                "sse": {"mode": "c", "customerKeySecretRef": {"name": "s", "key": "k"}},
            },
            "https",
        ),
        ({"sse": {"mode": "c"}}, "customer key"),
        ({"sse": {"mode": "s3", "kmsKeyId": "alias/x"}}, "need mode kms"),
        ({"storageClass": "glacier"}, "storageClass"),
    ],
)
def test_store_sse_rules(spec: dict[str, object], problem: str) -> None:
    with pytest.raises(rc.SpecError, match=problem):
        rc.parse_spec(spec)
    assert StoreSpec.model_validate({"sse": {"mode": "s3"}}).sse is not None
