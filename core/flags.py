"""Command-line flags for config keys: one `--key-name` per key, its help read from the field.

    add_config_flags(parser, sections=("model", "data", "generation"))
    cfg = config_from_args(parser.parse_args())

A flag overrides the `--config` file; a flag that is not given leaves the file's value
(argparse.SUPPRESS), so config_from_args sees exactly the keys the user typed.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any, Literal

from core.config import Config, key_help, key_index, load_config, section_classes
from core.hints import describe, unwrap_optional

_FLAG_HELP = "config key '{key}' ({type}; {default!r} unless a --config sets it)"


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag_parser(hint: Any):
    """A string->value parser for a flag; 'null'/'none' gives None for optional keys."""
    hint, optional = unwrap_optional(hint)
    origin = typing.get_origin(hint)

    def parse(text: str):
        if optional and text.lower() in ("null", "none"):
            return None
        if origin is list:
            return [s.strip() for s in text.split(",") if s.strip()]
        if origin is Literal:
            if text not in typing.get_args(hint):
                raise argparse.ArgumentTypeError(f"expected {describe(hint)}, got {text!r}")
            return text
        if hint is bool:
            return _parse_bool(text)
        try:
            return hint(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {describe(hint)}, got {text!r}") from None

    return parse


def _metavar(hint: Any) -> str:
    inner, _ = unwrap_optional(hint)
    if typing.get_origin(inner) is Literal:
        return "{" + ",".join(typing.get_args(inner)) + "}"
    return describe(hint).split(" ")[0].upper()


def add_config_flags(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Add `--config` and one `--key-name` flag per config key of the given sections."""
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", help="YAML config file (flags below override its values)")
    defaults = Config()
    for section, cls in section_classes().items():
        if sections is not None and section not in sections:
            continue
        group = parser.add_argument_group(f"config: {section}")
        helps = key_help(cls)
        for key, hint in typing.get_type_hints(cls).items():
            if key in skip:
                continue
            default = getattr(getattr(defaults, section), key)
            where = _FLAG_HELP.format(key=key, type=describe(hint), default=default)
            extra = {"nargs": "?", "const": True} if hint is bool else {}  # `--resume` == `--resume true`
            group.add_argument(
                "--" + key.replace("_", "-"),
                dest=key,
                type=_flag_parser(hint),
                default=argparse.SUPPRESS,
                **extra,
                metavar=_metavar(hint),
                help=f"{helps[key]}; {where}".replace("%", "%%"),
            )


def config_from_args(args: argparse.Namespace) -> Config:
    """Load `args.config` and apply every config flag the user gave."""
    index = key_index()
    overrides = {k: v for k, v in vars(args).items() if k in index}
    return load_config(getattr(args, "config", None), overrides)
