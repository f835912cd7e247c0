"""The sidecar's settings objects, validated without pydantic.

Every sidecar process validates its settings once, at start. With pydantic that cost its
import and the models' builds, ~130 ms of CPU in every pod (issue 12, items 5 and 6;
docs/benchmarks.md). Here the same settings are checked from a table generated from the
pydantic schema (:mod:`runlog_relay.config.settings_fields`, written by
:mod:`runlog_relay.config.fieldgen` from :mod:`runlog_relay.config.settings_model`, and a
test fails when it is stale), with the same rules (:mod:`runlog_relay.config.rules`).

The schema stays the authority. This reader only takes the plain, common forms of a
value (``"true"``, ``"16"``, ``"0.5"``, a list of strings, a mapping) and hands anything
else, and every value a rule refuses, to pydantic: :meth:`Fields.__init__` then builds
the pydantic model, which either raises pydantic's own ``ValidationError`` (the same
error, worded as before) or accepts a form this reader does not know (``"1_000"``,
``True`` for an int), whose values are then copied. So for any input the result is the
schema's: a test holds the two readers to that over a corpus of values.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from runlog_relay.config import rules

__all__ = ["Fields", "Refused", "Secret", "Setting"]

_TRUE = frozenset({"true", "yes", "on", "1", "t", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "f", "n"})
_UNSIGNED_INT = re.compile(r"[0-9]+")
_UNSIGNED_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


class Secret:
    """A secret value: shown as stars everywhere, read with :meth:`get_secret_value`
    (pydantic's ``SecretStr`` interface, which the schema uses)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        getter = getattr(other, "get_secret_value", None)
        return callable(getter) and getter() == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Refused(Exception):
    """This reader does not take the value: pydantic decides (and words the error)."""


class Setting:
    """One field of a settings object, as the generated table describes it."""

    __slots__ = (
        "_regex",
        "after",
        "aliases",
        "before",
        "default",
        "description",
        "ge",
        "kind",
        "le",
        "max_length",
        "name",
        "optional",
        "pattern",
    )

    def __init__(
        self,
        name: str,
        kind: str | type,
        default: Any,
        *,
        optional: bool = False,
        aliases: tuple[str, ...] = (),
        before: tuple[str, ...] = (),
        after: tuple[str, ...] = (),
        ge: float | None = None,
        le: float | None = None,
        pattern: str | None = None,
        max_length: int | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        #: "str", "path", "bool", "int", "float", "secret", "size", "tuple_str",
        #: "dict_str", an enum class, or a :class:`Fields` class (a group).
        self.kind = kind
        self.default = default
        self.optional = optional
        #: Every key the value may be given under, in the schema's order (its first
        #: one names the file key), with the field's name.
        self.aliases = aliases if name in aliases else (name, *aliases)
        self.before = before
        self.after = after
        self.ge, self.le = ge, le
        self.pattern, self.max_length = pattern, max_length
        self._regex: re.Pattern[str] | None = None
        self.description = description

    @property
    def annotation(self) -> Any:
        """What kind of value this is, for the command line's options."""
        kinds: dict[Any, Any] = {"bool": bool, "int": int, "float": float, "size": int}
        return kinds.get(self.kind, self.kind)

    def check(self, value: Any) -> Any:
        """The value in its settings form; :class:`Refused` when pydantic must decide."""
        for name in self.before:
            value = _rule(name)(value)
        if value is None and self.optional:
            return None
        value = self._typed(value)
        self._bounds(value)
        for name in self.after:
            value = _rule(name)(value)
        return value

    def _typed(self, value: Any) -> Any:  # one case per kind
        kind = self.kind
        if kind == "str":
            if isinstance(value, str):
                return value
        elif kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
        elif kind in ("int", "size"):
            if kind == "size":
                value = rules.size_bytes(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and _UNSIGNED_INT.fullmatch(value):
                return int(value)
        elif kind == "float":
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    return float(value)
            elif isinstance(value, str) and _UNSIGNED_DECIMAL.fullmatch(value):
                return float(value)
        elif kind == "path":
            if isinstance(value, str | Path):
                return Path(value)
        elif kind == "secret":
            if isinstance(value, str):
                return Secret(value)
            if isinstance(value, Secret):
                return value
        elif kind == "tuple_str":
            if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
                return tuple(value)
        elif kind == "dict_str":
            if isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                return dict(value)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            if isinstance(value, kind):
                return value
            if isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    pass
        elif isinstance(kind, type) and issubclass(kind, Fields):
            group = kind.runtime
            if isinstance(value, group):
                return value
            if hasattr(value, "model_dump"):  # a pydantic model of the group
                value = value.model_dump()
            if isinstance(value, Mapping):
                return group._checked(value)
        raise Refused(self.name)

    def _bounds(self, value: Any) -> None:
        if self.ge is not None and value < self.ge:
            raise Refused(self.name)
        if self.le is not None and value > self.le:
            raise Refused(self.name)
        if isinstance(value, str):
            if self.max_length is not None and len(value) > self.max_length:
                raise Refused(self.name)
            if self.pattern is not None:
                # pydantic-core's regex: ``$`` is the end of the text, never before a
                # final newline as in Python's; text with a newline goes to pydantic.
                if self._regex is None:
                    self._regex = re.compile(self.pattern)
                if "\n" in value or not self._regex.search(value):
                    raise Refused(self.name)


def _rule(name: str) -> Callable[[Any], Any]:
    rule: Callable[[Any], Any] = getattr(rules, name)
    return rule


class Fields:
    """A frozen settings object: its fields are :attr:`FIELDS`, checked as it is built.

    The generated subclasses (:mod:`runlog_relay.config.settings_fields`) declare the
    fields; a hand-written subclass of one adds behaviour and is what is built
    (:attr:`runtime`), for a group too."""

    FIELDS: ClassVar[tuple[Setting, ...]] = ()
    #: The pydantic model of the schema (in :mod:`runlog_relay.config.settings_model`).
    MODEL: ClassVar[str] = ""
    #: The group's own rule over its fields together, from :mod:`rules` (or none).
    GROUP_RULE: ClassVar[str] = ""
    GENERATED: ClassVar[bool] = False
    runtime: ClassVar[type[Fields]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "GENERATED" in cls.__dict__:
            cls.runtime = cls
            cls._by_key = {key: s for s in cls.FIELDS for key in s.aliases}
            return
        for base in cls.__mro__[1:]:
            if base.__dict__.get("GENERATED"):
                setattr(base, "runtime", cls)  # noqa: B010 - a ClassVar of the base
                break

    _by_key: ClassVar[dict[str, Setting]]

    def __init__(self, **values: Any) -> None:
        """Check ``values`` (field names or aliases); pydantic's ``ValidationError`` when
        the schema refuses them."""
        try:
            checked = self._fields_of(values)
        except (Refused, ValueError, TypeError):
            checked = self._from_schema(values)
        self._set(checked)

    @classmethod
    def _checked(cls, values: Mapping[str, Any]) -> Fields:
        """A checked object of the runtime class, or :class:`Refused` up to the caller
        (the whole settings object then goes to pydantic, which names the group's field)."""
        obj = object.__new__(cls.runtime)
        obj._set(cls.runtime._fields_of(values))
        return obj

    @classmethod
    def _fields_of(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        by_key = cls._by_key
        given: dict[str, Any] = {}
        for key, value in values.items():
            setting = by_key.get(key)
            if setting is None or setting.name in given:
                raise Refused(key)  # unknown, or one field given twice
            given[setting.name] = setting.check(value)
        checked = {s.name: given.get(s.name, s.default) for s in cls.FIELDS}
        for setting in cls.FIELDS:
            if isinstance(setting.kind, type) and setting.name not in given:
                default = setting.kind.runtime if issubclass(setting.kind, Fields) else None
                if default is not None:
                    checked[setting.name] = default._checked({})
        if cls.GROUP_RULE:
            _rule(cls.GROUP_RULE)(checked)
        return checked

    @classmethod
    def _from_schema(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """pydantic's verdict: its ValidationError, or the values it accepted."""
        from runlog_relay.config import settings_model  # only for what this reader refused

        model = getattr(settings_model, cls.MODEL).model_validate(_plain(values))
        return cls._values_of_model(model)

    @classmethod
    def _values_of_model(cls, model: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for setting in cls.FIELDS:
            value = getattr(model, setting.name)
            kind = setting.kind
            if isinstance(kind, type) and issubclass(kind, Fields):
                group = object.__new__(kind.runtime)
                group._set(kind.runtime._values_of_model(value))
                value = group
            elif kind == "secret" and value is not None:
                value = Secret(value.get_secret_value())
            values[setting.name] = value
        return values

    def _set(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be set")

    def model_dump(self) -> dict[str, Any]:
        """The values by field name, groups as mappings (pydantic's ``model_dump``)."""
        return {
            s.name: (v.model_dump() if isinstance(v, Fields) else v)
            for s in self.FIELDS
            for v in (getattr(self, s.name),)
        }

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with some fields replaced, unchecked (pydantic's ``model_copy``)."""
        values = {s.name: getattr(self, s.name) for s in self.FIELDS}
        values.update(update or {})
        obj = object.__new__(type(self))
        obj._set(values)
        return obj

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Fields) or hasattr(other, "model_dump"):
            dump = getattr(other, "model_dump", None)
            return callable(dump) and self.model_dump() == dump()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(_hashable(getattr(self, s.name)) for s in self.FIELDS))

    def __repr__(self) -> str:
        shown = ", ".join(f"{s.name}={getattr(self, s.name)!r}" for s in self.FIELDS)
        return f"{type(self).__name__}({shown})"


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values as pydantic takes them: groups as mappings, secrets as text."""
    plain: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Fields):
            value = _plain(value.model_dump())
        elif isinstance(value, Secret):
            value = value.get_secret_value()
        plain[key] = value
    return plain


def _hashable(value: Any) -> Any:
    return tuple(sorted(value.items())) if isinstance(value, dict) else value
