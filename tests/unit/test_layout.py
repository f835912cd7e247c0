"""layout: runnable file names ↔ object keys, and the body encodings (DESIGN.md's table)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from runlog_relay.layout import (
    MAX_KEY_BYTES,
    KeyTooLongError,
    Layout,
    Mapping,
    UnsafeNameError,
    decode_body,
    encode_body,
    key_for,
    path_for,
    relative_parts,
    run_id_of_key,
)

CHUNKED, SINGLE = Layout.CHUNKED, Layout.SINGLE


# --------------------------------------------------------------------------- chunked


@pytest.mark.parametrize(
    ("relative", "key"),
    [
        ("run-1/RunLog.json", "run-1/RunLog"),
        ("run-1/BranchLog-parallel.branch_a.json", "run-1/BranchLog-parallel.branch_a"),
        # Older runnable releases: every *.json maps to its name without the suffix.
        ("run-1/StepLog-hello-1712345678901234.json", "run-1/StepLog-hello-1712345678901234"),
        ("run-1/BranchLog-map.1-1712345678901234.json", "run-1/BranchLog-map.1-1712345678901234"),
        ("run-1/Parameter-x-1712345678901234.json", "run-1/Parameter-x-1712345678901234"),
        # Map values become branch names: inner spaces and non-ASCII letters are allowed.
        ("run-1/BranchLog-map.café crème.json", "run-1/BranchLog-map.café crème"),
        # Only one suffix is stripped.
        ("run-1/odd.json.json", "run-1/odd.json"),
    ],
)
def test_chunked_key_strips_the_json_suffix(relative: str, key: str) -> None:
    mapping = key_for(relative, CHUNKED)
    assert mapping == Mapping(run_id="run-1", key=key)
    assert not mapping.key.endswith("/RunLog.json")


@pytest.mark.parametrize(
    "relative",
    [
        "run-1/RunLog.json",
        "20260101-120000-abc/BranchLog-map.1.json",
        "r/StepLog-a b-1.json",
        "r/odd.json.json",
        "r/ünïcode.json",
    ],
)
def test_chunked_round_trip(relative: str) -> None:
    assert path_for(key_for(relative, CHUNKED).key, CHUNKED) == relative


def test_chunked_path_for_adds_the_suffix() -> None:
    assert path_for("run-1/RunLog", CHUNKED) == "run-1/RunLog.json"
    assert key_for(path_for("run-1/RunLog", CHUNKED), CHUNKED).key == "run-1/RunLog"


# --------------------------------------------------------------------------- single


def test_single_key_is_minio_stores_key() -> None:
    assert key_for("run-1.json", SINGLE) == Mapping(run_id="run-1", key="run-1/run-1.json")


@pytest.mark.parametrize("relative", ["run-1.json", "a.b.json", "x.json.json"])
def test_single_round_trip(relative: str) -> None:
    mapping = key_for(relative, SINGLE)
    assert mapping.key == f"{mapping.run_id}/{relative}"
    assert path_for(mapping.key, SINGLE) == relative


def test_single_path_for_rejects_keys_of_other_names() -> None:
    with pytest.raises(UnsafeNameError, match=r"not <run_id>/<run_id>\.json"):
        path_for("run-1/other.json", SINGLE)
    with pytest.raises(UnsafeNameError):
        path_for("run-1/run-1", SINGLE)


@pytest.mark.parametrize(
    ("root", "path"),
    [
        ("/data/logs", "/data/logs/run-1/RunLog.json"),
        ("/data/logs", "/data/logs/run-1"),
        ("/data/logs", "/data/logs"),  # the root itself: no parts
        ("/", "/run-1/RunLog.json"),  # a root that ends in a slash
        (".", "run-1/RunLog.json"),  # relative roots are spelled differently
        ("logs", "logs/run-1/RunLog.json"),
        ("/data/logs", "/data/logs/a/../b.json"),  # kept as pathlib keeps it
    ],
)
def test_relative_parts_are_pathlibs(root: str, path: str) -> None:
    expected = list(PurePosixPath(path).relative_to(PurePosixPath(root)).parts)
    assert relative_parts(Path(root), Path(path)) == expected


@pytest.mark.parametrize(
    ("root", "path"),
    [
        ("/data/logs", "/data/logs-other/run-1/RunLog.json"),  # a sibling sharing the prefix
        ("/data/logs", "/data"),
        ("/data/logs", "/elsewhere/RunLog.json"),
    ],
)
def test_relative_parts_of_a_path_outside_the_root_are_none(root: str, path: str) -> None:
    assert relative_parts(Path(root), Path(path)) is None


def test_run_id_of_key() -> None:
    assert run_id_of_key("run-1/RunLog") == "run-1"
    assert run_id_of_key("run-1/run-1.json") == "run-1"


# --------------------------------------------------------------------------- unsafe names


@pytest.mark.parametrize(
    ("relative", "layout", "reason"),
    [
        ("run\n1/RunLog.json", CHUNKED, "control or invisible character"),
        ("run-1/Run\nLog.json", CHUNKED, "control or invisible character"),
        ("run-1/Run\x00Log.json", CHUNKED, "control or invisible character"),
        ("run-1/Run\x7fLog.json", CHUNKED, "control or invisible character"),  # DEL: ASCII
        ("run-1/Run\tLog.json", CHUNKED, "control or invisible character"),
        ("run\u202e1/RunLog.json", CHUNKED, "control or invisible character"),  # bidi override
        ("run-1/gol\u202enuR.json", CHUNKED, "control or invisible character"),
        ("run-1/zero\u200bwidth.json", CHUNKED, "control or invisible character"),
        ("run\u202e1.json", SINGLE, "control or invisible character"),
        (".hidden/RunLog.json", CHUNKED, "starts with a dot"),
        ("run-1/.RunLog.json", CHUNKED, "starts with a dot"),
        ("run-1/..json", CHUNKED, "starts with a dot"),
        ("../RunLog.json", CHUNKED, "starts with a dot"),
        ("..json", SINGLE, "starts with a dot"),
        (".run.json", SINGLE, "starts with a dot"),
        ("run\\1/RunLog.json", CHUNKED, "path separator"),
        ("run-1/..\\..\\etc.json", CHUNKED, "starts with a dot"),
        ("run-1/a\\b.json", CHUNKED, "path separator"),
        ("a\\b.json", SINGLE, "path separator"),
        (" run/RunLog.json", CHUNKED, "white space"),
        ("run-1/RunLog .json", CHUNKED, "white space"),
        ("run-1/" + "a" * 256 + ".json", CHUNKED, "longer than 255 bytes"),
        # 128 characters but 256 bytes in UTF-8: the limit is in bytes, as S3's is.
        ("run-1/" + "é" * 128 + ".json", CHUNKED, "longer than 255 bytes"),
        ("r" * 256 + ".json", SINGLE, "longer than 255 bytes"),
        # Wrong depth for the layout.
        ("RunLog.json", CHUNKED, "not <run_id>/<chunk>.json"),
        ("a/b/RunLog.json", CHUNKED, "not <run_id>/<chunk>.json"),
        ("run-1/RunLog.json", SINGLE, "not <run_id>.json"),
        # Not a .json file.
        ("run-1/RunLog.txt", CHUNKED, "not a .json chunk"),
        ("run-1/RunLog", CHUNKED, "not a .json chunk"),
        ("run-1/.json", CHUNKED, "not a .json chunk"),
        ("run-1.yaml", SINGLE, "not a .json run log"),
        (".json", SINGLE, "not a .json run log"),
        ("/RunLog.json", CHUNKED, "empty run id"),
    ],
)
def test_unsafe_names_are_rejected_with_a_reason(
    relative: str, layout: Layout, reason: str
) -> None:
    with pytest.raises(UnsafeNameError) as caught:
        key_for(relative, layout)
    assert reason in caught.value.reason
    # The message is repr-escaped: a hostile name cannot forge log lines.
    assert "\n" not in str(caught.value)
    assert "\u202e" not in str(caught.value)


def test_non_utf8_names_from_surrogateescape_are_rejected() -> None:
    # os.scandir/os.listdir give undecodable bytes as lone surrogates.
    name = b"run-1/\xffRun\xfeLog.json".decode("utf-8", "surrogateescape")
    with pytest.raises(UnsafeNameError, match="not valid UTF-8"):
        key_for(name, CHUNKED)
    run = b"\xff.json".decode("utf-8", "surrogateescape")
    with pytest.raises(UnsafeNameError, match="not valid UTF-8"):
        key_for(run, SINGLE)


def test_dotted_names_inside_a_component_are_fine() -> None:
    # ".." only matters as a whole path segment; runnable's internal names contain dots.
    assert key_for("run-1/BranchLog-a..b.json", CHUNKED).key == "run-1/BranchLog-a..b"


def test_name_of_exactly_255_bytes_is_allowed() -> None:
    stem = "a" * 255
    assert key_for(f"run-1/{stem}.json", CHUNKED).key == f"run-1/{stem}"


@pytest.mark.parametrize(
    ("key", "layout"),
    [
        ("run-1", CHUNKED),
        ("a/b/c", CHUNKED),
        ("run-1/", CHUNKED),
        ("../RunLog", CHUNKED),
        ("run-1/.hidden", CHUNKED),
        ("run\n1/RunLog", CHUNKED),
        ("run-1/Run\u202eLog", CHUNKED),
        ("run-1/a\\b", CHUNKED),
        ("run-1", SINGLE),
        ("../..json", SINGLE),
    ],
)
def test_path_for_rejects_keys_that_cannot_become_safe_paths(key: str, layout: Layout) -> None:
    with pytest.raises(UnsafeNameError):
        path_for(key, layout)


def test_unsafe_name_error_is_a_value_error_with_name_and_reason() -> None:
    with pytest.raises(ValueError, match="starts with a dot") as caught:
        key_for(".x/RunLog.json", CHUNKED)
    assert isinstance(caught.value, UnsafeNameError)
    assert caught.value.name == ".x"


# --------------------------------------------------------------------------- bodies


DOCUMENT = {"run_id": "run-1", "status": "SUCCESS", "note": 'naïve "quoted" \\ line\nnext'}


def test_chunked_body_is_the_same_bytes() -> None:
    raw = json.dumps(DOCUMENT, indent=4).encode()
    assert encode_body(raw, CHUNKED) == raw
    assert decode_body(raw, CHUNKED) == raw


def test_single_body_is_the_text_encoded_once_more_as_a_json_string() -> None:
    text = json.dumps(DOCUMENT, ensure_ascii=False, indent=4)
    raw = text.encode("utf-8")
    body = encode_body(raw, SINGLE)
    assert body == json.dumps(text).encode("utf-8")
    # What runnable's minio store does when it reads the object:
    assert json.loads(json.loads(body)) == DOCUMENT
    assert decode_body(body, SINGLE) == raw


@pytest.mark.parametrize("body", [b'{"a": 1}', b"[1, 2]", b"42", b"null", b"true"])
def test_single_decode_rejects_bodies_that_are_not_a_json_string(body: bytes) -> None:
    with pytest.raises(ValueError, match="JSON string"):
        decode_body(body, SINGLE)


def test_single_decode_rejects_invalid_json() -> None:
    with pytest.raises(ValueError):
        decode_body(b'"unterminated', SINGLE)


# --------------------------------------------------------------------------- key length


def test_a_key_over_s3s_limit_with_the_prefix_is_refused_in_utf8_bytes() -> None:
    run_id = "é" * 127  # 254 bytes, 127 characters: a component within its limit
    name = f"{'b' * 250}.json"
    key = f"{run_id}/{'b' * 250}"
    room = MAX_KEY_BYTES - len(key.encode()) - 1  # bytes left for the prefix and its "/"
    assert key_for(f"{run_id}/{name}", CHUNKED, "p" * room).key == key  # exactly 1024
    with pytest.raises(KeyTooLongError, match="1025 bytes, over S3's limit of 1024"):
        key_for(f"{run_id}/{name}", CHUNKED, "p" * (room + 1))
    # The single layout's key holds the run id twice.
    with pytest.raises(KeyTooLongError):
        key_for(f"{'s' * 250}.json", SINGLE, "p" * 520)
    assert issubclass(KeyTooLongError, UnsafeNameError)  # never uploaded, like one
