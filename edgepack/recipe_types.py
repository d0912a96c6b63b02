"""The types a recipe (TOML) or a recorded request (a manifest's JSON) value may have, read from the
request parts' type hints: a value of another type is one line naming the key and the type expected
(``'model' must be a path (string), not a list``), never a TypeError deep in the request."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgepack.errors import UsageError

_STRINGS = (str,)
_PATH_OR_TABLE = (str, Mapping)
_LIST_LIKE = (list, tuple, str, Mapping)
_SPECIAL: dict[tuple[str, str], tuple[tuple[type, ...], str]] = {
    ("calibration", "data"): (_PATH_OR_TABLE, "a path or a table of paths"),
    ("budget", "data"): (_PATH_OR_TABLE, "a path or a table of paths"),
    ("calibration", "inputs"): ((Mapping, list, tuple), "a table of paths"),
    ("budget", "inputs"): ((Mapping, list, tuple), "a table of paths"),
    ("optimize", "low_rank"): ((str, int, float), "a number or a string"),
    ("", "target"): (_STRINGS, "a string"), ("", "seed"): ((int,), "a whole number"),
    ("", "recipe"): (_STRINGS, "a path (string)"),
}


def _expected(cls: type | None, part: str, key: str) -> tuple[tuple[type, ...], str, bool] | None:
    """(allowed types, their name, None allowed) of ``part.key``, from the part's (``cls``) type hints."""
    import types
    import typing

    if (part, key) in _SPECIAL:
        return (*_SPECIAL[(part, key)], True)
    hint = typing.get_type_hints(cls).get(key) if cls is not None else None
    if hint is None:
        return None
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    nullable = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    base = typing.get_origin(args[0]) or args[0]
    if base is bool:
        return (bool,), "true or false", nullable
    if base is int:
        return (int,), "a whole number", nullable
    if base is float:
        return (int, float), "a number", nullable
    if base is Path:
        return _STRINGS, "a path (string)", nullable
    if base is tuple:
        return _LIST_LIKE, "a list or a table", nullable
    if isinstance(base, type) and issubclass(base, str):
        return _STRINGS, "a string", nullable
    return None


def check_type(where: str, cls: type | None, part: str, key: str, value: Any, *, short: bool = False) -> None:
    """:class:`UsageError` naming ``part.key`` (a field of the dataclass ``cls``; ``part`` "" for the
    top level) and the type expected when ``value`` has another (``short``: the ``model = "..."``
    form of a part)."""
    found = _expected(cls, part, key)
    if found is None:
        return
    allowed, name, nullable = found
    if value is None and nullable:
        return
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if allowed is _LIST_LIKE and key.endswith("_layers"):
        name = "a name pattern or a list of them (strings)"
        ok = isinstance(value, str) or isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if not ok:
        label = part if short else ".".join(p for p in (part, key) if p)
        raise UsageError(f"{where}: '{label}' must be {name}, not {_type_name(value)}")


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "a table", type(None): "null"}.get(type(value), type(value).__name__)
