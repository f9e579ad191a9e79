"""Describe an options dataclass field by field, so one dataclass drives the command line, the app's widgets and the
workspace metadata."""

from __future__ import annotations

import dataclasses
import typing
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
