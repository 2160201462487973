"""What a config field's type hint allows: Optional, list, Literal and the plain types.

core.config checks each YAML or override value against its field's hint here (one line
naming the key), and core.flags parses and describes flags with the same helpers.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from core.errors import ConfigError


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the hint inside Optional[...], whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)][0], True
    return hint, False


def describe(hint: Any) -> str:
    hint, optional = unwrap_optional(hint)
    if optional:
        return f"{describe(hint)} or null"
    origin = typing.get_origin(hint)
    if origin is list:
        return f"list of {describe(typing.get_args(hint)[0])}"
    if origin is Literal:
        return "one of " + ", ".join(typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


_ONE_OR_MORE = ("dataset",)  # list keys where a single value is fine too


def check_type(key: str, value: Any, hint: Any) -> Any:
    """Return value coerced to hint (int -> float only), or raise ConfigError naming key."""
    hint, optional = unwrap_optional(hint)
    if optional and value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str) and key in _ONE_OR_MORE:
            value = [value]  # `dataset: a.jsonl` means a list of one
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a {describe(hint)}, got {value!r}")
        return [check_type(key, v, item) for v in value]
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"config key '{key}' must be {describe(hint)}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be an int, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"config key '{key}' must be a {describe(hint)}, got {value!r}")
    return value
