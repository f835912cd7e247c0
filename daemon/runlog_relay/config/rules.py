"""The rules of the settings, without pydantic: defaults, patterns and validators.

One place for what a valid bucket, endpoint, duration, size or log folder is, used by
both readers of settings: the pydantic models (:mod:`runlog_relay.config.models` for the
CRD and the operator, :mod:`runlog_relay.config.settings_model` for the sidecar's schema
and its error messages) and the sidecar's own loader
(:mod:`runlog_relay.config.settings`), which starts without importing pydantic: its
import and model builds were ~130 ms of every sidecar's start-up CPU (issue 12, items 5
and 6; docs/benchmarks.md). Every function here is pure and raises ``ValueError`` with
the message a user sees.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import posixpath
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runlog_relay.layout import Layout, UnsafeNameError, key_for

__all__ = [
    "BUCKET_PATTERN",
    "DEFAULT_BUCKET",
    "DEFAULT_ENDPOINT",
    "DEFAULT_LOG_FOLDER",
    "DEFAULT_METRICS_PORT",
    "DNS_SUBDOMAIN_PATTERN",
    "DURATION_PATTERN",
    "ENDPOINT_PATTERN",
    "ENV_PREFIX",
    "KMS_KEY_MAX_LENGTH",
    "KMS_KEY_PATTERN",
    "LOG_LEVELS",
    "MAX_DURATION_SECONDS",
    "MAX_STORE_NAME",
    "REGION_PATTERN",
    "RESERVED_FOLDERS",
    "SECRET_DATA_KEY_PATTERN",
    "SIDECAR_CONFIG_DIR",
    "SIDECAR_SECRETS_DIR",
    "STORAGE_CLASS_PATTERN",
    "BucketParts",
    "LogFormat",
    "RetentionTimes",
    "SSEMode",
    "check_bucket",
    "check_duration",
    "check_http_url",
    "check_log_folder",
    "check_log_level",
    "check_region",
    "check_region_setting",
    "check_run_ids",
    "check_sidecar_sse",
    "check_source",
    "check_sse_fields",
    "duration_seconds",
    "format_size",
    "json_object_text",
    "not_a_switch",
    "optional_stripped",
    "parse_bucket",
    "reason_of",
    "size_bytes",
    "split_run_ids",
    "to_camel",
    "to_snake",
    "validate_endpoint",
]

#: runnable's own defaults (extensions/run_log_store/chunked_minio.py), so a runnable user
#: needs no new settings.
DEFAULT_ENDPOINT = "http://localhost:9002"
DEFAULT_BUCKET = "runnable/run-logs"
#: Where runnable's Argo and k8s-job executors write run logs inside their containers.
DEFAULT_LOG_FOLDER = "/tmp/run_logs"  # noqa: S108 - runnable's path, not a temp file of ours
#: Where the injected sidecar finds its config and the store's Secrets (the operator's
#: webhook mounts them there), and what the kubelet mounts into every container: a log
#: folder there, or above the system folders, would collide and the pod be rejected.
SIDECAR_CONFIG_DIR = "/etc/runlog-relay"
SIDECAR_SECRETS_DIR = "/var/run/secrets/runlog-relay"
RESERVED_FOLDERS = (
    SIDECAR_CONFIG_DIR,
    "/var/run/secrets",  # ours, and the service account token the kubelet mounts
    "/run/secrets",
    "/proc",
    "/sys",
    "/dev",
)
#: The longest RunLogStore name: it is a label value (the pods' and the ConfigMap's).
MAX_STORE_NAME = 63

# S3 bucket naming rules (lower case, 3-63, no "..", no IP-looking names are left to the
# server); a prefix is any run of safe path segments.
_BUCKET_NAME = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_PREFIX_SEGMENT = r"[A-Za-z0-9_.=+@,-]+"
BUCKET_PATTERN = rf"^{_BUCKET_NAME}(/{_PREFIX_SEGMENT})*/?$"
_BUCKET_RE = re.compile(BUCKET_PATTERN)
ENDPOINT_PATTERN = r"^https?://[^/\s?#]+/?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # noqa: S105 - a key-name pattern, not a secret


@functools.lru_cache(maxsize=64)  # read per file (the key's prefix): one parse per value
def parse_bucket(value: str) -> tuple[str, str]:
    """Split runnable's ``bucket[/prefix]`` into ``(bucket, prefix)``; prefix has no slashes
    at either end (``""`` when absent)."""
    if not _BUCKET_RE.match(value) or ".." in value.split("/", 1)[0]:
        name, slash, _ = value.partition("/")
        if slash and re.fullmatch(_BUCKET_NAME, name) and ".." not in name:
            # The bucket is fine: say what is wrong with the prefix.
            raise ValueError(
                f"bucket prefix must be /-separated segments of letters, digits and"
                f" _ . = + @ , - (no empty segment), got {value!r}"
            )
        raise ValueError(
            f"bucket must be BUCKET[/PREFIX] with an S3 bucket name (lower case letters, digits,"
            f" dots, dashes; 3-63 characters), got {value!r}"
        )
    bucket, _, prefix = value.partition("/")
    prefix = prefix.strip("/")
    if any(part in {".", ".."} for part in prefix.split("/")):
        raise ValueError(f"bucket prefix may not contain '.' or '..' segments, got {value!r}")
    return bucket, prefix


def check_bucket(value: str) -> str:
    parse_bucket(value)
    return value


def check_log_folder(value: str) -> str:
    """An absolute, plain path (no ``..``), not ``/`` and not inside (or equal to) a
    folder the injected sidecar or the kubelet mounts; normalised (no trailing ``/``)."""
    if ".." in value.split("/"):
        raise ValueError("logFolder may not contain '..'")
    folder = posixpath.normpath(value)
    if folder == "/":
        raise ValueError("logFolder may not be '/': the volume would hide the image")
    for reserved in RESERVED_FOLDERS:
        if folder == reserved or folder.startswith(reserved + "/"):
            raise ValueError(
                f"logFolder {folder} is in {reserved}, which the sidecar or the kubelet mounts"
            )
    return folder


def validate_endpoint(value: str) -> str:
    """An ``http(s)://host[:port]`` URL without a path, as minio's client needs it."""
    if "@" in value:
        # Credentials in a URL would end up in logs and status; they belong in a Secret.
        # Checked first, by the "@" alone, because the messages below echo the value.
        raise ValueError("endpoint must not contain credentials; use a Secret")
    if not re.match(ENDPOINT_PATTERN, value):
        raise ValueError(f"endpoint must be http(s)://HOST[:PORT] with no path, got {value!r}")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"endpoint has an invalid port: {value!r}") from exc
    return value.rstrip("/")


#: ``90s``, ``15m``, ``12h``, ``7d``, ``1h30m``, or plain seconds (``3600``, ``0.5``).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$|^[0-9]+(\.[0-9]+)?$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: Ten years: a longer duration is a typo (and would overflow some clocks).
MAX_DURATION_SECONDS = 10 * 365 * 86400.0


def duration_seconds(value: str) -> float:
    """Seconds in a duration such as ``7d``, ``1h30m`` or ``3600``; ValueError if invalid."""
    text = value.strip()
    if not re.match(DURATION_PATTERN, text):
        raise ValueError(
            f"a duration is a number of seconds or units like 90s, 15m, 12h, 7d, 1h30m;"
            f" got {value!r}"
        )
    if _DURATION_PART.match(text) is None:
        seconds = float(text)
    else:
        seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value!r} is longer than ten years")
    return seconds


def check_duration(value: str) -> str:
    duration_seconds(value)
    return value.strip()


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*$")
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB")


def not_a_switch(value: Any) -> Any:
    """Before a number: YAML's ``true``/``false`` is no number, though Python's bool is an
    int (``concurrency: true`` meant 1 upload in flight)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def size_bytes(value: Any) -> Any:
    """Bytes in a size such as ``16MiB``, ``512KiB``, ``1.5GiB``, ``16Mi`` (Kubernetes'
    spelling) or ``20MB`` (decimal), or a plain number of bytes; other values are left for
    the integer validation to refuse."""
    if not isinstance(not_a_switch(value), str):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(
            f"a size is a number of bytes or one with a unit, like 16MiB, 512KiB, 1GiB or"
            f" 20MB; got {value!r}"
        )
    number, unit = match.groups()
    if unit is None:
        amount = float(number)
    else:
        base = 1024 if unit.endswith("i") else 1000
        amount = float(number) * base ** _SIZE_POWERS[unit[0].lower()]
    if amount != int(amount):
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(amount)


def format_size(value: int) -> str:
    """``16777216`` → ``16MiB``: the largest binary unit that divides it exactly."""
    for power in range(len(_BINARY_UNITS), 0, -1):
        if value and value % 1024**power == 0:
            return f"{value // 1024**power}{_BINARY_UNITS[power - 1]}"
    return str(value)


class BucketParts:
    """``bucket_name`` and ``prefix`` of a model with runnable's ``bucket[/prefix]`` field.

    The field itself is declared by each model (a class annotation here would become a
    pydantic field and reorder the generated CRD)."""

    if TYPE_CHECKING:
        bucket: str

    @property
    def bucket_name(self) -> str:
        return parse_bucket(self.bucket)[0]

    @property
    def prefix(self) -> str:
        return parse_bucket(self.bucket)[1]


class SSEMode(enum.StrEnum):
    """Server-side encryption of the objects written: S3-managed keys, a KMS key, or a
    key of your own sent with every request (SSE-C)."""

    S3 = "s3"
    KMS = "kms"
    C = "c"


#: A KMS key id, alias or ARN: no spaces (AWS allows up to 2048 characters, checked
#: with ``max_length``: a bounded repetition of a Unicode class, ``{1,2048}``, compiles
#: into an 8 MiB automaton in pydantic-core's regex engine, in every sidecar's memory).
KMS_KEY_PATTERN = r"^\S+$"
KMS_KEY_MAX_LENGTH = 2048
#: An S3 storage class name (STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, …).
STORAGE_CLASS_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"


def check_sse_fields(
    mode: SSEMode | None, *, kms_key_id: str | None, kms_context: object, customer_key: object
) -> None:
    """The SSE fields that go together: KMS options only with ``kms``, the customer key
    with ``c`` and only then (one rule for the CRD spec and the sidecar settings)."""
    if (kms_key_id or kms_context) and mode is not SSEMode.KMS:
        raise ValueError("kmsKeyId and kmsContext need mode kms")
    if mode is SSEMode.C and not customer_key:
        raise ValueError("mode c needs the customer key (a 32-byte key in a Secret / file)")
    if customer_key and mode is not SSEMode.C:
        raise ValueError("a customer key is only used with mode c")


def check_sidecar_sse(values: dict[str, Any]) -> None:
    """The sidecar's ``sse`` group: :func:`check_sse_fields` with the key as a file."""
    check_sse_fields(
        values["mode"],
        kms_key_id=values["kms_key_id"],
        kms_context=values["kms_context"],
        customer_key=values["c_key_file"],
    )


class LogFormat(enum.StrEnum):
    PLAIN = "plain"
    JSON = "json"


class RetentionTimes:
    """``seconds`` and ``deletes`` of the local-retention settings, for both readers."""

    if TYPE_CHECKING:
        delete_after: str | None
        dry_run: bool

    @property
    def seconds(self) -> float | None:
        """``delete_after`` in seconds, None when retention is off."""
        return None if self.delete_after is None else duration_seconds(self.delete_after)

    @property
    def deletes(self) -> bool:
        """Files are really deleted (not off, not a dry run): the volume must be writable."""
        return self.delete_after is not None and not self.dry_run


# -- the sidecar's own fields ------------------------------------------------------------

ENV_PREFIX = "RUNLOG_RELAY_"
DEFAULT_METRICS_PORT = 9464
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_source(value: Any) -> Any:
    """Before the path type: ``Path("")`` is ".", so an empty variable would mirror the
    working directory (in a container often "/"), not refuse the missing setting."""
    if isinstance(value, str | os.PathLike) and not os.fspath(value).strip():
        raise ValueError("must not be empty: the folder runnable writes run logs to")
    return value


def optional_stripped(value: str | None) -> str | None:
    """Blank is unset: Argo fills RUNNABLE_RETRY_RUN_ID from a workflow parameter that is
    empty unless the workflow is a retry."""
    return value.strip() or None if value is not None else None


def split_run_ids(value: Any) -> Any:
    """Before the tuple type: the variable's comma-separated form."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def check_run_ids(value: tuple[str, ...]) -> tuple[str, ...]:
    """Each id a safe folder name of one run; duplicates dropped, order kept."""
    for run_id in value:
        if "/" in run_id or "\\" in run_id:
            raise ValueError(f"run id {run_id!r} contains a path separator")
        try:
            key_for(f"{run_id}/RunLog.json", Layout.CHUNKED)
        except UnsafeNameError as exc:
            raise ValueError(f"run id {run_id!r} is not a safe run id: {exc.reason}") from None
    return tuple(dict.fromkeys(value))


#: An S3 region name (``us-east-1``, MinIO's ``site-a``).
REGION_PATTERN = r"[a-z0-9-]{1,64}"
_REGION = re.compile(REGION_PATTERN)


def check_region(value: str) -> str:
    """A region name, checked where it is set: a typo (``us east 1``) is a settings
    error, not a request signed for a scope no server knows."""
    if not _REGION.fullmatch(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ValueError(
            "region must be 1-64 lower-case letters, digits and dashes, such as us-east-1,"
            f" got {shown!r}"
        )
    return value


def check_region_setting(value: str) -> str:
    """:func:`check_region` in the process settings, where an empty variable means unset
    (Argo and templates leave variables empty)."""
    return value if value == "" else check_region(value)


def reason_of(error: Mapping[str, Any]) -> str:
    """The words of one pydantic error (an ``ErrorDetails``) as a user reads them: a rule
    here raised it with its own message, which pydantic labels "Value error, "."""
    message = str(error["msg"])
    return message.removeprefix("Value error, ") if error["type"] == "value_error" else message


def check_http_url(value: str | None) -> str | None:
    """An http(s)://HOST[:PORT] URL without credentials (STS, IMDS)."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname or "@" in parts.netloc:
        raise ValueError("must be an http(s)://HOST[:PORT] URL without credentials")
    return value.rstrip("/")


def check_log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ValueError("log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def json_object_text(value: Any) -> Any:
    """Before the mapping type: a mapping may be given as its JSON text (a variable)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError('must be a JSON object of strings, e.g. {"team": "data"}') from None
    return value


# -- key spellings: the same conversions as pydantic.alias_generators (a test holds them
# to it), which the file keys and the CRD's camelCase use ---------------------------------

_CAMEL_ALREADY = re.compile(r"^[a-z]+[A-Za-z0-9]*$")
_DIGIT_LOWER = re.compile(r"\d[a-z]")
_SNAKE_STEPS = (
    (re.compile(r"([A-Z]+)([A-Z][a-z])"), r"\1_\2"),
    (re.compile(r"([a-z])([A-Z])"), r"\1_\2"),
    (re.compile(r"([0-9])([A-Z])"), r"\1_\2"),
    (re.compile(r"([a-z])([0-9])"), r"\1_\2"),
)
_PASCAL_JOIN = re.compile(r"([0-9A-Za-z])_(?=[0-9A-Z])")
_LEADING_UPPER = re.compile(r"(^_*[A-Z])")


def to_snake(camel: str) -> str:
    """``debounceSeconds`` → ``debounce_seconds`` (and kebab-case)."""
    snake = camel
    for pattern, replacement in _SNAKE_STEPS:
        snake = pattern.sub(replacement, snake)
    return snake.replace("-", "_").lower()


def to_camel(snake: str) -> str:
    """``debounce_seconds`` → ``debounceSeconds``."""
    if _CAMEL_ALREADY.match(snake) and not _DIGIT_LOWER.search(snake):
        return snake
    pascal = _PASCAL_JOIN.sub(lambda m: m.group(1), snake.title())
    return _LEADING_UPPER.sub(lambda m: m.group(1).lower(), pascal)
