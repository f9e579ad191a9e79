"""Describe an options dataclass field by field, so one dataclass drives the command line, the app's widgets and the
workspace metadata; :class:`Options`, the base of every method's options, refuses a ``Literal`` field's value outside
its hint.

>>> @dataclass(frozen=True)
... class Example(Options):
...     scope: typing.Literal["layer", "global"] = "layer"
>>> choices(Example, "scope")
('layer', 'global')
>>> Example(scope="row")
Traceback (most recent call last):
...
fusion.errors.ConfigError: scope must be one of layer, global, got 'row'
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any

from fusion.problems import Checked, Checks
from fusion.records import Record


@functools.cache
def choices(cls: type, name: str) -> tuple[str, ...]:
    """The values the ``Literal`` type hint of field ``name`` of the dataclass ``cls`` allows; ``()`` for a field of
    another type. The hints are resolved once per class and field, so an options class never lists them again."""
    hint = typing.get_type_hints(cls)[name]
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else ()


class Options(Record, Checked):
    """Mixin for a frozen options dataclass: stored as JSON (:class:`fusion.records.Record`), and checked on
    construction, every ``Literal`` field against its hint's values (:func:`choices`) before the class's own
    :meth:`check` (:class:`fusion.problems.Checked`), all problems refused at once."""

    def __post_init__(self) -> None:
        checks = Checks()
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            allowed = choices(type(self), f.name)
            if allowed:
                checks.choice(f.name, getattr(self, f.name), allowed)
        self.check(checks)
        checks.done()


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
        hint, allowed = hints[f.name], choices(cls, f.name)
        if allowed:
            kind = "choice"
        elif hint is bool:
            kind = "bool"
        elif hint is int:
            kind = "int"
        elif hint is float:
            kind = "float"
        elif hint is str:
            kind = "str"
        elif set(typing.get_args(hint)) == {int, type(None)}:
            kind = "optional int"
        else:
            kind = "floats"
        help_text = f.metadata.get("help", "")
        fields.append(OptionField(f.name, kind, f.default, help_text, tuple(str(a) for a in allowed)))
    return fields
