"""Command-line flags generated from options dataclasses (:func:`fusion.options.option_fields`), so a method's or an
analysis's options reach the command line with the same names, defaults and help as the app's widgets."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from fusion.options import OptionField


def optional_int(text: str) -> int | None:
    """An integer, or ``all``/``none`` for ``None``."""
    return None if text.lower() in ("all", "none") else int(text)


def add_option_arguments(parser: argparse.ArgumentParser, fields: Iterable[OptionField]) -> None:
    """One flag per option. A flag not given sets nothing (``argparse.SUPPRESS``), so the dataclass default applies:
    read the given ones with :func:`given_options`."""
    for option in fields:
        common: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{option.help} (default {option.default})"}
        if option.kind == "bool":
            parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, **common)
        elif option.kind == "choice":
            parser.add_argument(option.flag, choices=option.choices, **common)
        elif option.kind == "floats":
            parser.add_argument(option.flag, type=float, nargs="+", **common)
        else:
            kinds = {"int": int, "optional int": optional_int, "float": float, "str": str}
            parser.add_argument(option.flag, type=kinds[option.kind], **common)


def given_options(args: argparse.Namespace, fields: Iterable[OptionField]) -> dict[str, Any]:
    """The options among ``fields`` given on the command line parsed into ``args``."""
    return {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
