"""The base of every typed config: a frozen dataclass that goes to and from plain JSON-able dicts.

Configs validate themselves in `__post_init__` (raising `InputError` naming the flag), are saved next to
whatever they made (model checkpoints, training runs), and are read back strictly: an unknown field is
an error, never silently dropped.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass

from neuralmorph.errors import InputError


@dataclass(frozen=True)
class Config:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config"):
        """The config a saved dict describes, checked field by field against the annotations (a JSON list
        becomes a tuple where one is expected); InputError naming `where` for anything that does not fit:
        not an object, unknown or missing fields, a value of the wrong type, or one its own validation
        refuses."""
        if not isinstance(d, dict):
            raise InputError(where, f"{cls.__name__} must be a JSON object, got {_json_type(d)}")
        names = {f.name for f in fields(cls) if f.init}
        unknown = sorted(str(k) for k in d if k not in names)
        if unknown:
            raise InputError(where, f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        missing = sorted(f.name for f in fields(cls)
                         if f.init and f.name not in d and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise InputError(where, f"{cls.__name__} lacks field(s): {', '.join(missing)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in d.items():
            try:
                values[name] = _typed(value, hints[name], f"{where}: {cls.__name__}.{name}")
            except _Mismatch:
                raise InputError(where, f"{cls.__name__} field {name!r} must be {_describe(hints[name])}, "
                                        f"got {_json_type(value)} {_short(value)}") from None
        try:
            return cls(**values)
        except InputError as exc:  # the config's own validation names a flag: say which file held it
            raise InputError(where, f"{cls.__name__}: {exc.where}: {exc.problem}") from None


class _Mismatch(Exception):
    """A saved value does not have its field's type (turned into an InputError by `from_dict`)."""


def _typed(value, tp, where: str):
    """`value` (parsed JSON) as field type `tp`: checked, with lists turned into tuples and nested configs
    built; raises _Mismatch when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _typed(value, arg, where)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is typing.Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_typed(v, args[0], where) for v in value]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise _Mismatch
            items = [_typed(v, a, where) for v, a in zip(value, args)]
        else:
            items = [_typed(v, args[0], where) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        kt, vt = args if args else (typing.Any, typing.Any)
        return {_typed(k, kt, where): _typed(v, vt, where) for k, v in value.items()}
    if isinstance(tp, type) and is_dataclass(tp) and issubclass(tp, Config):
        if not isinstance(value, dict):
            raise _Mismatch
        return tp.from_dict(value, where)
    return value  # a type this check does not know: the config's own validation has the last word


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "an object"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _json_type(value) -> str:
    """What a parsed JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number" if math.isfinite(value) else "a non-finite number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
