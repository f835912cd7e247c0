"""Write :mod:`runlog_relay.config.settings_fields` from the pydantic schema.

``python -m runlog_relay.config.fieldgen`` (``make settings-fields``) rewrites the table; with
``--check`` it exits 1 when the committed table is not what the schema gives (a unit test
runs that check). Everything in a field that the table cannot say is an error here, not
a silent difference: a validator that is not a function of :mod:`runlog_relay.config.rules`,
a constraint or a type this generator does not know, or a model validator without its rule.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, SecretStr
from pydantic.fields import FieldInfo

from runlog_relay.config import models, rules, settings_model

__all__ = ["GROUPS", "generate", "main"]

TARGET = Path(__file__).with_name("settings_fields.py")

#: schema model → (generated class, the hand-written runtime class in config.settings),
#: groups first (a class refers only to those above it).
GROUPS: tuple[tuple[type[BaseModel], str, str], ...] = (
    (settings_model.SidecarTLSModel, "SidecarTLSFields", "SidecarTLS"),
    (models.SyncSpec, "SyncFields", "SyncSettings"),
    (settings_model.SidecarSSEModel, "SidecarSSEFields", "SidecarSSE"),
    (models.LocalRetention, "LocalRetentionFields", "LocalRetentionSettings"),
    (settings_model.SidecarShardModel, "SidecarShardFields", "SidecarShard"),
    (settings_model.SidecarSettingsModel, "SidecarSettingsFields", "SidecarSettings"),
)
#: A model validator of the schema → the rule of :mod:`rules` it applies to the group.
MODEL_RULES: dict[tuple[type[BaseModel], str], str] = {
    (settings_model.SidecarSSEModel, "_fields_of_the_mode"): "check_sidecar_sse"
}

_SCALARS: dict[Any, str] = {
    str: "str",
    bool: "bool",
    int: "int",
    float: "float",
    Path: "path",
    SecretStr: "secret",
}
_TYPE_TEXT = {"str": "str", "bool": "bool", "int": "int", "float": "float", "path": "Path"}
_TYPE_TEXT |= {"secret": "Secret", "tuple_str": "tuple[str, ...]", "dict_str": "dict[str, str]"}

_HEADER = '''"""The sidecar's settings fields: GENERATED from runlog_relay.config.settings_model.

Do not edit: run ``make settings-fields`` (``python -m runlog_relay.config.fieldgen``); a unit
test fails while this file is not what the schema gives. :mod:`runlog_relay.config.fields`
checks values with it, without importing pydantic.
"""

# ruff: noqa: E501, S104

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from runlog_relay.config.credentials import CredentialSource
from runlog_relay.config.fields import Fields, Secret, Setting
from runlog_relay.config.rules import LogFormat, SSEMode
from runlog_relay.layout import Layout

if TYPE_CHECKING:
    from runlog_relay.config.settings import (
{runtime_imports}
    )

__all__ = [
{exports}
]
'''


def _unwrap(annotation: Any) -> tuple[Any, bool, list[Any]]:
    """(the type, whether None is allowed, metadata of an Annotated inside a union)."""
    optional = False
    extra: list[Any] = []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise SystemExit(f"fieldgen: cannot say {annotation!r}")
        annotation = members[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        flattened: list[Any] = []
        for item in extra:
            flattened += item.metadata if isinstance(item, FieldInfo) else [item]
        extra = flattened
    return annotation, optional, extra


def _kind(annotation: Any, classes: dict[type[BaseModel], str]) -> tuple[str, str]:
    """(the kind as Python source, the attribute's type as Python source)."""
    if annotation in _SCALARS:
        kind = _SCALARS[annotation]
        return repr(kind), _TYPE_TEXT[kind]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation.__name__, annotation.__name__
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return classes[annotation], dict((m, r) for m, _, r in GROUPS)[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and args == (str, ...):
        return repr("tuple_str"), _TYPE_TEXT["tuple_str"]
    if origin is dict and args == (str, str):
        return repr("dict_str"), _TYPE_TEXT["dict_str"]
    raise SystemExit(f"fieldgen: no kind for {annotation!r}")


def _rule_name(function: Any, where: str) -> str:
    name = str(getattr(function, "__name__", ""))
    if getattr(rules, name, None) is not function:
        raise SystemExit(f"fieldgen: {where}: validator {function!r} is not a rule of config.rules")
    return name


def _default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, BaseModel):
        return "None"  # a group: built from its own defaults
    if isinstance(value, bool | int | float | str | tuple) or value is None:
        return repr(value)
    raise SystemExit(f"fieldgen: cannot write the default {value!r}")


def _setting(name: str, field: FieldInfo, classes: dict[type[BaseModel], str], where: str) -> str:
    annotation, optional, metadata = _unwrap(field.annotation)
    kind, _ = _kind(annotation, classes)
    arguments = [repr(name), kind, _default(field.default)]
    if optional:
        arguments.append("optional=True")
    aliases: list[str] = []
    if isinstance(field.validation_alias, AliasChoices):
        aliases += [str(choice) for choice in field.validation_alias.choices]
    if field.alias:
        aliases.append(field.alias)
    aliases = list(dict.fromkeys(aliases))
    if aliases:
        arguments.append(f"aliases={tuple(aliases)!r}")
    before, after = [], []
    for item in [*field.metadata, *metadata]:
        if isinstance(item, BeforeValidator):
            before.append(_rule_name(item.func, f"{where}.{name}"))
        elif isinstance(item, AfterValidator):
            after.append(_rule_name(item.func, f"{where}.{name}"))
        elif isinstance(item, annotated_types.Ge):
            arguments.append(f"ge={item.ge!r}")
        elif isinstance(item, annotated_types.Le):
            arguments.append(f"le={item.le!r}")
        elif isinstance(item, annotated_types.MaxLen):
            arguments.append(f"max_length={item.max_length!r}")
        elif type(item).__name__ == "_PydanticGeneralMetadata" and set(vars(item)) == {"pattern"}:
            arguments.append(f"pattern={vars(item)['pattern']!r}")
        else:
            raise SystemExit(f"fieldgen: {where}.{name}: cannot say {item!r}")
    if before:
        arguments.append(f"before={tuple(before)!r}")
    if after:
        arguments.append(f"after={tuple(after)!r}")
    arguments.append(f"description={' '.join((field.description or '').split())!r}")
    return "        Setting(" + ", ".join(arguments) + "),"


def _group_rule(model: type[BaseModel]) -> str:
    decorators = model.__pydantic_decorators__
    if decorators.field_validators:
        names = ", ".join(decorators.field_validators)
        raise SystemExit(f"fieldgen: {model.__name__}: field validators ({names}): use rules")
    found = [MODEL_RULES.get((model, name), "") for name in decorators.model_validators]
    if "" in found or len(found) > 1:
        raise SystemExit(f"fieldgen: {model.__name__}: a model validator without its rule")
    return found[0] if found else ""


def generate() -> str:
    """The text of settings_fields.py for the schema as it is now."""
    classes = {model: generated for model, generated, _ in GROUPS}
    runtime = sorted((r for _, _, r in GROUPS[:-1]), key=str.lower)  # the top is no field
    body = [
        _HEADER.format(
            runtime_imports="\n".join(f"        {name}," for name in runtime),
            exports="\n".join(f'    "{g}",' for g in sorted(g for _, g, _ in GROUPS)),
        )
    ]
    for model, generated, _ in GROUPS:
        lines = ["", f"class {generated}(Fields):"]
        lines.append(f'    """The fields of {model.__module__}.{model.__name__}."""')
        lines.append("")
        lines.append("    GENERATED: ClassVar[bool] = True")
        lines.append(f"    MODEL: ClassVar[str] = {model.__name__!r}")
        rule = _group_rule(model)
        if rule:
            lines.append(f"    GROUP_RULE: ClassVar[str] = {rule!r}")
        lines.append("")
        for name, field in model.model_fields.items():
            annotation, optional, _ = _unwrap(field.annotation)
            text = _kind(annotation, classes)[1]
            lines.append(f"    {name}: {text}{' | None' if optional else ''}")
        lines.append("")
        lines.append("    FIELDS: ClassVar[tuple[Setting, ...]] = (")
        for name, field in model.model_fields.items():
            lines.append(_setting(name, field, classes, model.__name__))
        lines.append("    )")
        body.append("\n".join(lines))
    return "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runlog_relay.config.fieldgen")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale: run make settings-fields", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
