"""The sidecar's settings: one typed object per process, built once by the CLI.

Sources, highest first: command-line options, ``RUNLOG_RELAY_*`` environment variables,
the YAML ``--config`` file, defaults. Each setting's variable is :func:`env_names` and its
file key :func:`config_key`, for ``--help``, the reference docs and the check of the
environment: a ``RUNLOG_RELAY_*`` variable that is no setting is ignored, whatever its
depth, and :func:`unknown_variables` says so (the commands warn), with the nearest name.

The schema, with every field's type, default, rule and description, is pydantic's:
:mod:`runlog_relay.config.settings_model`. A sidecar starts without importing pydantic
(its import and the models' builds were ~130 ms of CPU in every pod): the objects here are
checked from a table generated from that schema (:mod:`runlog_relay.config.fields`), and
pydantic is imported only to word an error, or to decide a value in a form the table's
reader does not take.

Credentials (:mod:`runlog_relay.config.credentials` has the table): ``credentials``
chooses the source, ``auto`` by default. Static keys come from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` [/ ``AWS_SESSION_TOKEN``] (like runnable and the AWS tools), the
``RUNLOG_RELAY_*`` variables of the same names, or files (``*_file``) mounted from a Secret,
which are re-read on reload so a rotated Secret takes effect without a restart; default
``minioadmin`` like runnable. Web identity and container credentials are read from the
standard AWS variables, exactly as the AWS tools read them. Secret values are
:class:`~runlog_relay.config.fields.Secret`: never printed, logged or put in ``--help``.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runlog_relay.config.credentials import (
    CONTAINER_CREDENTIALS_HOST,
    ContainerCredentials,
    CredentialPlan,
    CredentialSource,
    Encryption,
    InstanceProfile,
    StaticKeys,
    WebIdentity,
    check_container_uri,
    sts_endpoint_for,
)
from runlog_relay.config.credentials import describe as describe_credentials
from runlog_relay.config.fields import Fields, Secret, Setting
from runlog_relay.config.rules import (
    DEFAULT_METRICS_PORT,
    ENV_PREFIX,
    BucketParts,
    LogFormat,
    RetentionTimes,
    SSEMode,
    to_camel,
    to_snake,
)
from runlog_relay.config.settings_fields import (
    LocalRetentionFields,
    SidecarSettingsFields,
    SidecarShardFields,
    SidecarSSEFields,
    SidecarTLSFields,
    SyncFields,
)
from runlog_relay.errors import ConfigError

if TYPE_CHECKING:
    import yaml

__all__ = [
    "CONFIG_VARIABLE",
    "DEFAULT_METRICS_PORT",
    "ENV_PREFIX",
    "GROUPS",
    "LocalRetentionSettings",
    "LogFormat",
    "SidecarSSE",
    "SidecarSettings",
    "SidecarShard",
    "SidecarTLS",
    "SyncSettings",
    "ambient_identity",
    "config_key",
    "env_names",
    "environment_data",
    "load_sidecar_settings",
    "read_config_file",
    "setting_field",
    "setting_fields",
    "unknown_names",
    "unknown_variables",
]

#: Names the config file: the one option that cannot be a key of that file.
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
#: Variables of other runlog-relay programs that share the prefix (the operator's own).
_OTHER_PREFIXES = (f"{ENV_PREFIX}OPERATOR_",)
DEFAULT_MINIO_CREDENTIAL = "minioadmin"


class SidecarTLS(SidecarTLSFields):
    """TLS for https endpoints, as the sidecar sees it (the CA is a mounted file)."""


class SyncSettings(SyncFields):
    """How the sidecar watches and uploads (the ``sync`` group of a RunLogStore)."""


class SidecarSSE(SidecarSSEFields):
    """Server-side encryption, as the sidecar and the tools see it (the SSE-C key is a
    mounted file)."""


class LocalRetentionSettings(RetentionTimes, LocalRetentionFields):
    """Deleting sealed runs from the volume (the ``localRetention`` group)."""


class SidecarShard(SidecarShardFields):
    """Scale-out: replicas on one shared folder split its runs (docs/scale-out.md)."""


class SidecarSettings(BucketParts, SidecarSettingsFields):
    """Everything the sidecar needs; see ``runlog-relay sidecar --help``.

    Built from given values only (pydantic's ``ValidationError`` when the schema refuses
    them): :func:`load_sidecar_settings` adds the environment and the config file."""

    def credential_files(self) -> list[Path]:
        """The mounted files holding static credentials (re-read for rotation)."""
        files = (self.access_key_id_file, self.secret_access_key_file, self.session_token_file)
        return [path for path in files if path is not None]

    def mounted_files(self) -> list[Path]:
        """Every file these settings name that a Secret mount provides: the static
        credential files, the CA bundle and the SSE-C key (waited for at start, watched
        for changes)."""
        extra = [path for path in (self.tls.ca_file, self.sse.c_key_file) if path is not None]
        return self.credential_files() + extra

    def encryption(self) -> Encryption | None:
        """The server-side encryption to ask for (the SSE-C key read now); None: the
        bucket's default. ConfigError when the key file is unusable (never its content)."""
        sse = self.sse
        if sse.mode is None:
            return None
        if sse.mode is SSEMode.C and not _customer_key_may_travel(self.endpoint):
            raise ConfigError(
                "sse mode c sends the key with every request: it needs an https:// endpoint"
                " (or a loopback one)"
            )
        return Encryption(
            mode=sse.mode.value,
            kms_key_id=sse.kms_key_id,
            kms_context=tuple(sorted((sse.kms_context or {}).items())),
            customer_key=_read_customer_key(sse.c_key_file) if sse.c_key_file else None,
        )

    def _static_keys_given(self) -> bool:
        return bool(
            self.access_key_id_file
            or self.secret_access_key_file
            or _secret(self.access_key_id)
            or _secret(self.secret_access_key)
        )

    def credentials(self) -> CredentialPlan:
        """Where the credentials come from (``auto`` resolved); ConfigError naming what is
        missing or contradictory. Static keys are read now: files are re-read on every
        call, so comparing two results tells whether a mounted Secret was rotated."""
        source = self.credential_source
        if source is CredentialSource.AUTO:
            source = self._auto_source()
        elif source is CredentialSource.SERVICE_ACCOUNT:
            source = self._pod_identity_source()
        if source is CredentialSource.STATIC:
            return self._static_keys()
        if source is CredentialSource.WEB_IDENTITY:
            if self.web_identity_token_file is None:
                raise ConfigError(
                    "--credentials web-identity needs AWS_WEB_IDENTITY_TOKEN_FILE (IRSA sets it"
                    " with AWS_ROLE_ARN on pods whose ServiceAccount has the"
                    " eks.amazonaws.com/role-arn annotation)"
                )
            return WebIdentity(
                token_file=self.web_identity_token_file,
                sts_endpoint=self.sts_endpoint or sts_endpoint_for(self.aws_region),
                role_arn=self.role_arn,
                role_session_name=self.role_session_name,
            )
        if source is CredentialSource.CONTAINER:
            return self._container_credentials()
        for name, value in self._federation_variables().items():
            if value:
                # The SDK's instance provider would quietly prefer these over IMDS.
                raise ConfigError(
                    f"--credentials instance, but {name} is set; unset it, or choose"
                    " --credentials web-identity or container"
                )
        return InstanceProfile(endpoint=self.ec2_metadata_endpoint)

    def _auto_source(self) -> CredentialSource:
        if self._static_keys_given():
            return CredentialSource.STATIC
        if self.web_identity_token_file and self.role_arn:
            return CredentialSource.WEB_IDENTITY
        if self.container_credentials_full_uri or self.container_credentials_relative_uri:
            return CredentialSource.CONTAINER
        return CredentialSource.STATIC  # runnable's default minioadmin pair

    def _pod_identity_source(self) -> CredentialSource:
        if self.web_identity_token_file:
            return CredentialSource.WEB_IDENTITY
        if self.container_credentials_full_uri or self.container_credentials_relative_uri:
            return CredentialSource.CONTAINER
        raise ConfigError(
            "credentials: service-account, but this pod has no AWS identity: neither IRSA"
            " (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, from an eks.amazonaws.com/role-arn"
            " annotation on its ServiceAccount) nor EKS Pod Identity"
            " (AWS_CONTAINER_CREDENTIALS_FULL_URI, from a pod identity association) is set"
        )

    def _static_keys(self) -> StaticKeys:
        access = _read_secret_file(self.access_key_id_file) or _secret(self.access_key_id)
        secret = _read_secret_file(self.secret_access_key_file) or _secret(self.secret_access_key)
        token = _read_secret_file(self.session_token_file) or _secret(self.session_token)
        if bool(access) != bool(secret):
            have, lack = (
                ("access key id", "secret access key")
                if access
                else ("secret access key", "access key id")
            )
            raise ConfigError(
                f"a {have} is given but no {lack} (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,"
                " or their *_FILE settings): give both"
            )
        if not access:
            origin = "default"
        elif self.access_key_id_file or self.secret_access_key_file:
            origin = "files"
        else:
            origin = "environment"
        return StaticKeys(
            access or DEFAULT_MINIO_CREDENTIAL,
            secret or DEFAULT_MINIO_CREDENTIAL,
            token or None,
            origin=origin,
        )

    def _container_credentials(self) -> ContainerCredentials:
        full, relative = (
            self.container_credentials_full_uri,
            self.container_credentials_relative_uri,
        )
        if not full and not relative:
            raise ConfigError(
                "--credentials container needs AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod"
                " Identity sets it) or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (ECS)"
            )
        if relative:  # ECS's agent address is fixed; the AWS SDKs give it precedence too
            uri = CONTAINER_CREDENTIALS_HOST + "/" + relative.lstrip("/")
        else:
            assert full is not None
            try:
                uri = check_container_uri(full)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return ContainerCredentials(
            uri=uri,
            token_file=self.container_authorization_token_file,
            token=_secret(self.container_authorization_token) or None,
        )

    def _federation_variables(self) -> dict[str, object]:
        return {
            "AWS_WEB_IDENTITY_TOKEN_FILE": self.web_identity_token_file,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.container_credentials_full_uri,
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": self.container_credentials_relative_uri,
        }

    def describe(self) -> dict[str, Any]:
        """A loggable summary: no secret values, only where they come from."""
        try:
            credentials = describe_credentials(self.credentials())
        except ConfigError as exc:
            credentials = f"invalid: {exc}"
        try:
            encryption = self.encryption()
            sse = encryption.describe() if encryption else "bucket default"
        except ConfigError as exc:
            sse = f"invalid: {exc}"
        summary = {
            "source": str(self.source),
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "layout": self.layout.value,
            "credentials": credentials,
            "encryption": sse,
            "polling": self.sync.force_polling,
            "runs": list(self.run_ids) or "all",
            "exit_when_sealed": self.exit_when_sealed,
            "tag_sealed_runs": self.tag_sealed_runs,
            "retain_local": (
                "off"
                if self.local_retention.delete_after is None
                else self.local_retention.delete_after
                + (" (dry run)" if self.local_retention.dry_run else "")
            ),
        }
        if self.storage_class:
            summary["storage_class"] = self.storage_class
        return summary


#: Settings that are groups of settings: ``RUNLOG_RELAY_<GROUP>__<FIELD>`` in the
#: environment, a ``group: {field: …}`` mapping in the file.
GROUPS = tuple(
    s.name
    for s in SidecarSettings.FIELDS
    if isinstance(s.kind, type) and issubclass(s.kind, Fields)
)


def _customer_key_may_travel(endpoint: str) -> bool:
    """SSE-C keys go in request headers: https only, or a loopback endpoint (a local
    proxy, the tests), which never leaves the machine."""
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_customer_key(path: Path) -> bytes:
    """A 32-byte SSE-C key from a file: the raw bytes, or their base64 text."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the SSE-C key file {path}: {exc.strerror}") from None
    if len(data) == 32:
        return data
    try:
        decoded = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 32:
        raise ConfigError(
            f"the SSE-C key file {path} must hold 32 bytes, raw or base64-encoded"
            f" ({len(data)} bytes found)"
        )
    return decoded


def ambient_identity() -> CredentialPlan | None:
    """The identity this process has from its environment (the operator's own IRSA, Pod
    Identity or static keys), or None when it has none beyond runnable's default keys.
    ConfigError when the environment names one inconsistently."""
    plan = load_sidecar_settings().credentials()
    if isinstance(plan, StaticKeys) and plan.origin == "default":
        return None
    return plan


def _secret(value: Secret | None) -> str:
    return value.get_secret_value().strip() if value is not None else ""


def _read_secret_file(path: Path | None) -> str | None:
    """A credential file's content; ConfigError when it cannot be read or is empty (an
    empty file must not silently fall back to other credentials)."""
    if path is None:
        return None
    try:
        content = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"credentials file {path} is not UTF-8 text") from None
    if not content:
        raise ConfigError(f"credentials file {path} is empty")
    return content


def _snake_keys(value: Any) -> Any:
    """Accept camelCase keys (the operator's ConfigMap) as well as snake_case; ValueError
    when two spellings of one key are both given (which one wins would be a guess)."""
    if not isinstance(value, dict):
        return value
    converted: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, item in value.items():
        name = to_snake(str(key))
        if name in converted:
            raise ValueError(f"{spelt[name]!r} and {key!r} are the same setting; give one")
        converted[name], spelt[name] = _snake_keys(item), str(key)
    return converted


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML config file into settings keys; a clear ConfigError otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    import yaml  # here: most sidecars take flags and variables (~11 ms of start-up)

    try:
        data = yaml.load(text, Loader=_unique_keys_loader()) or {}  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a secret.
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    try:
        data = _snake_keys(data)
    except ValueError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    # Keys that are credentials must not come from a ConfigMap-style file.
    for forbidden in (
        "access_key_id",
        "secret_access_key",
        "session_token",
        "container_authorization_token",
    ):
        if forbidden in data:
            raise ConfigError(
                f"config file {path} must not contain {forbidden}: use the environment or"
                f" {forbidden}_file"
            )
    return data


@functools.cache
def _unique_keys_loader() -> type[yaml.SafeLoader]:
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the
    last, so a setting written twice would silently mean its second value."""
    import yaml

    class UniqueKeysLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # ``<<: *base``: its keys may be overridden, on purpose
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeysLoader


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What and where, without the snippet of the file PyYAML's message includes."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def load_sidecar_settings(
    overrides: dict[str, Any] | None = None, config_file: Path | None = None
) -> SidecarSettings:
    """Build the settings from options, environment and file; ConfigError when invalid.

    The error message lists each bad field with the reason pydantic gives, never the value
    of a secret.
    """
    file_data = read_config_file(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    data: dict[str, Any] = {}
    for source in (file_data, environment_data(os.environ), overrides):  # lowest first
        _merge_into(data, _by_field_name(source))
    try:
        return SidecarSettings(**data)
    except ValueError as exc:
        from pydantic import ValidationError  # imported already: the schema refused

        if not isinstance(exc, ValidationError):
            raise
        from runlog_relay.config.settings_model import explain

        raise ConfigError(explain(exc, config_file)) from None


def environment_data(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the variables give, keyed by field name (groups as mappings).

    A setting reads :func:`env_names` (case-insensitive, the first one set wins); a group
    also reads ``RUNLOG_RELAY_<GROUP>``, a JSON object, below its fields' own variables.
    Any other variable is no setting (:func:`unknown_variables` names it)."""
    given = {name.upper(): value for name, value in environ.items()}
    data: dict[str, Any] = {}
    for setting in SidecarSettings.FIELDS:
        name = setting.name
        if name in GROUPS:
            group = _group_json(name, given.get(ENV_PREFIX + name.upper()))
            for path, _ in _group_fields(name):
                variable = env_names(path)[0]
                if variable in given:
                    group[path[1]] = given[variable]
            if group:
                data[name] = group
            continue
        for variable in env_names((name,)):
            if variable in given:
                data[name] = given[variable]
                break
    return data


def _group_json(group: str, text: str | None) -> dict[str, Any]:
    variable = ENV_PREFIX + group.upper()
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{variable} is not valid JSON: {exc.msg} at character {exc.pos}"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{variable} must be a JSON object of {group} settings")
    return dict(_snake_keys(value))


def _by_field_name(data: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys spelt as an alias (``credentials``) by their field's name, so that
    the sources merge by setting, whatever their spelling."""
    names = _field_names_by_key()
    return {names.get(key, key): value for key, value in data.items()}


@functools.cache
def _field_names_by_key() -> dict[str, str]:
    names: dict[str, str] = {}
    for setting in SidecarSettings.FIELDS:
        for alias in setting.aliases:
            names.setdefault(alias, setting.name)
    return names


def _merge_into(data: dict[str, Any], higher: Mapping[str, Any]) -> None:
    """``higher`` wins, field by field inside a group (a flag for one sync field keeps
    the file's other sync fields)."""
    for key, value in higher.items():
        below = data.get(key)
        if key in GROUPS and isinstance(below, dict) and isinstance(value, dict):
            data[key] = {**below, **value}
        else:
            data[key] = value


def setting_fields() -> Iterator[tuple[tuple[str, ...], Setting]]:
    """Every setting that holds a value, as (path, field): groups are walked into."""
    for setting in SidecarSettings.FIELDS:
        if setting.name in GROUPS:
            yield from _group_fields(setting.name)
        else:
            yield (setting.name,), setting


def _group_fields(name: str) -> Iterator[tuple[tuple[str, ...], Setting]]:
    for setting in _group_class(name).FIELDS:
        yield (name, setting.name), setting


def _group_class(name: str) -> type[Fields]:
    kind = setting_field((name,)).kind
    assert isinstance(kind, type) and issubclass(kind, Fields)
    return kind


@functools.cache
def _settings_by_name() -> dict[str, Setting]:
    return {setting.name: setting for setting in SidecarSettings.FIELDS}


def setting_field(path: tuple[str, ...]) -> Setting:
    setting = _settings_by_name()[path[0]]
    if len(path) == 1:
        return setting
    kind = setting.kind
    assert isinstance(kind, type) and issubclass(kind, Fields)
    return next(s for s in kind.FIELDS if s.name == path[1])


def env_names(path: tuple[str, ...]) -> tuple[str, ...]:
    """The variables a setting reads, the ``RUNLOG_RELAY_*`` one first: upper-case
    aliases where the field has them (``AWS_ACCESS_KEY_ID``), else prefix + path."""
    if len(path) == 1:
        names = [alias for alias in setting_field(path).aliases if alias.isupper()]
        if names:
            return tuple(sorted(names, key=lambda name: not name.startswith(ENV_PREFIX)))
    return (ENV_PREFIX + "__".join(part.upper() for part in path),)


def config_key(path: tuple[str, ...]) -> str:
    """A setting's key in the config file (camelCase, the operator's ConfigMap spelling;
    snake_case is accepted too), dotted for a group's field: ``sync.debounceSeconds``."""
    if len(path) == 1:
        return to_camel(setting_field(path).aliases[0])  # the short name: ``credentials``
    return ".".join(to_camel(part) for part in path)


def _known_variables() -> frozenset[str]:
    names = {name for path, _ in setting_fields() for name in env_names(path)}
    names.update(ENV_PREFIX + group.upper() for group in GROUPS)  # a group as JSON
    names.add(CONFIG_VARIABLE)
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``RUNLOG_RELAY_*`` variable that is no setting (it is ignored),
    with the nearest known name when there is one."""
    environ = os.environ if environ is None else environ
    return [
        f"{name} is not a setting{hint}; it is ignored"
        for name, hint in unknown_names(environ, ENV_PREFIX, _known_variables(), _OTHER_PREFIXES)
    ]


def unknown_names(
    environ: Mapping[str, str],
    prefix: str,
    known: frozenset[str] | set[str],
    ignore: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """The variables with ``prefix`` that are not ``known`` (upper case), each with a
    ``" (did you mean X?)"`` hint naming the nearest known one, or an empty hint. Shared
    by the sidecar's and the operator's settings."""
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known or upper.startswith(ignore):
            continue
        near = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
        found.append((name, f" (did you mean {near[0]}?)" if near else ""))
    return found
