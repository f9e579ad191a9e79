"""Describe an options dataclass field by field, so one dataclass drives the command line, the app's widgets and the
workspace metadata."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OptionField:
    """One option: its name, kind (``bool``, ``int``, ``optional int`` (``None`` for "all"), ``float``, ``choice``,
    ``floats``), allowed choices, default and help text."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def option_fields(cls: type) -> list[OptionField]:
    """The fields of an options dataclass, with their kinds read from the type hints."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Literal:
            kind, choices = "choice", tuple(str(a) for a in args)
        elif hint is bool:
            kind, choices = "bool", ()
        elif hint is int:
            kind, choices = "int", ()
        elif hint is float:
            kind, choices = "float", ()
        elif hint is str:
            kind, choices = "str", ()
        elif set(args) == {int, type(None)}:
            kind, choices = "optional int", ()
        else:
            kind, choices = "floats", ()
        fields.append(OptionField(f.name, kind, f.default, f.metadata.get("help", ""), choices))
    return fields


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
