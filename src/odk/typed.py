"""Plain containers to typed dataclasses: the generic half of the settings check.

`build` turns nested dicts (params.yaml as Hydra composed it) into an instance of a dataclass
schema, refusing a name the schema lacks (`unknown_key` lists the names it has) and a value of
another type (an int is a valid float; a bool is no number). Nothing here knows the settings
themselves: `odk.config` holds the schema and the rules of their values.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from odk.errors import ConfigError


def build(schema: type, data: Any) -> Any:
    """An instance of the dataclass `schema` from plain containers, checking names and types.

    Raises:
        ConfigError: a name the schema lacks, or a value of the wrong type, in one line.
    """
    return _build(schema, schema, data, "")


def show(value: Any) -> str:
    """A value as written on the command line; strings that look like another type quoted."""
    if isinstance(value, str):
        plain = value and not re.fullmatch(r"[-+.\d_eE]+|true|false|null|~|\[.*\]", value, re.I)
        return value if plain else f'"{value}"'
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return f"[{','.join(show(v) for v in value)}]"
    return str(value)


def unknown_key(schema: type, key: str, missing: str = "") -> str:
    """The message for a setting `key` that the `schema` (or params.yaml) does not have.

    Args:
        schema: The root dataclass.
        key: A dotted key, e.g. `data_module.foo`.
        missing: Where a key the schema has is missing from, if that is the trouble.
    """
    cls: Any = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return f"{key} is not a setting: {'.'.join(parts[:i])} is a single value"
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = f"in {'.'.join(parts[:i])}" if i else "at the top level"
            return (
                f"{'.'.join(parts[: i + 1])} is not a setting; allowed {where}: {', '.join(names)}"
            )
        cls = typing.get_type_hints(cls)[part]
    return f"cannot override {key}: {missing}; add it there or use +{key}=VALUE"


def _build(schema: type, cls: Any, data: Any, prefix: str) -> Any:
    """An instance of the dataclass `cls`, found at `prefix` of `schema`."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, dict):
        allowed = f"a mapping of {', '.join(names)}"
        raise ConfigError(f"{prefix[:-1]}={show(data)} is not allowed; allowed: {allowed}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(unknown_key(schema, f"{prefix}{key}"))
        if dataclasses.is_dataclass(hints[key]):
            values[key] = _build(schema, hints[key], value, f"{prefix}{key}.")
        else:
            values[key] = _typed(f"{prefix}{key}", value, hints[key])
    return cls(**values)


def _typed(key: str, value: Any, hint: Any) -> Any:
    """`value` if it has the type `hint` (an int is a valid float; a bool is no number)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is float and type(value) in (int, float):
            return float(value)
        if option in (int, str) and type(value) is option:
            return value
        is_list = typing.get_origin(option) is list and type(value) is list
        if is_list and all(type(v) is int for v in value):
            return list(value)
    names = {int: "an integer", float: "a number", str: "a string"}
    allowed = " or ".join(names.get(o, "a list of integers") for o in options)
    raise ConfigError(f"{key}={show(value)} is not allowed; allowed: {allowed}")
