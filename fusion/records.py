"""Dataclasses to and from JSON: the one codec behind every stored record, option set and result.

A :class:`Record` is a dataclass whose fields are JSON values, NumPy arrays, tuples, lists and dicts of them, optional
values, ``Literal`` choices or other records. :func:`to_json` writes its fields by name (tuples and arrays as lists,
a non-finite array entry as ``null``); :func:`from_json` reads them back by the fields' type hints, so a stored payload
rebuilds the same object. Reading is lenient where stored formats grew (keys the class does not know are ignored, a
missing field takes its default) and strict where it matters (a value of the wrong type raises :class:`RecordError`
naming the field). A field with ``metadata={"stored": False}`` (a tensor too large to keep, say) is not written and
reads back as its default or ``None``. A class whose stored layout predates this codec overrides ``to_dict`` or
``from_dict`` and says what it adds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

import numpy as np

from fusion.errors import FusionError

T = TypeVar("T")


class RecordError(FusionError, ValueError):
    """A JSON payload does not hold the fields and types its record class needs; the message names the field.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from fusion import Record, RecordError
    >>> @dataclass(frozen=True)
    ... class Point(Record):
    ...     label: str
    ...     xy: tuple[float, float]
    >>> try:
    ...     Point.from_dict({"label": 3, "xy": [1, 2]})
    ... except RecordError as refused:
    ...     print(refused)
    Point.label: expected a string, got 3
    """


class Record:
    """Mixin for dataclasses stored as JSON: ``to_dict`` by :func:`to_json`, ``from_dict`` by :func:`from_json`.

    ``from_dict(to_dict(r)) == r`` for every record ``r`` whose fields are JSON values, tuples, NumPy arrays (a
    non-finite entry stored as ``null`` and read back as NaN), optional values, ``Literal`` choices or other records.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> import numpy as np
    >>> from fusion import Record
    >>> @dataclass(frozen=True)
    ... class Point(Record):
    ...     label: str
    ...     xy: tuple[float, float]
    ...     values: np.ndarray | None = None
    >>> stored = Point("a", (1.0, 2.0), np.array([0.5, np.nan])).to_dict()
    >>> stored
    {'label': 'a', 'xy': [1.0, 2.0], 'values': [0.5, None]}
    >>> point = Point.from_dict(stored)
    >>> point.xy, point.values
    ((1.0, 2.0), array([0.5, nan]))
    >>> Point.from_dict({"label": "b", "xy": [3, 4], "unknown": 1})  # unknown keys ignored, defaults filled in
    Point(label='b', xy=(3.0, 4.0), values=None)
    """

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        return from_json(cls, data)


def json_array(values: Any) -> list[Any]:
    """``values.tolist()`` with NaN and infinities (a diverged point far out in a landscape) written as ``None``."""
    array = np.asarray(values, dtype=float)
    cleaned = array.astype(object)
    cleaned[~np.isfinite(array)] = None
    return cleaned.tolist()


def numpy_array(values: Any) -> np.ndarray:
    """A stored list back as a float array, ``None`` as NaN."""
    return np.array(values, dtype=float)


def stored_fields(kind: type) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(kind) if f.metadata.get("stored", True))


def to_json(value: Any) -> Any:
    """``value`` as JSON values: a dataclass as an object of its stored fields (a nested :class:`Record` through its
    own ``to_dict``), tuples and lists as lists, NumPy arrays through :func:`json_array`, NumPy scalars as Python
    numbers, mappings as objects with string keys; ``TypeError`` for anything else."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in stored_fields(type(value))}
    return encode(value)


def encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    if isinstance(value, np.ndarray):
        return json_array(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


def from_json(kind: type[T], data: Any) -> T:
    """An instance of the dataclass ``kind`` from ``data``, each field read by its type hint (see the module)."""
    return decode_dataclass(kind, data, kind.__name__)


@functools.cache
def field_hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def decode(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if options == [float]:
            number = decode(float, value, where)
            return number if math.isfinite(number) else None
        errors = []
        for option in options:
            try:
                return decode(option, value, where)
            except RecordError as exc:
                errors.append(str(exc))
        raise RecordError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise RecordError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if issubclass(hint, Record) and hint.from_dict.__func__ is not Record.from_dict.__func__:
            return hint.from_dict(value)
        return decode_dataclass(hint, value, where)
    if hint is np.ndarray:
        return decode_array(value, where)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise RecordError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        key, item = args if args else (Any, Any)
        return {decode(key, k, where): decode(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise RecordError(f"{where}: expected {'true or false' if hint is bool else 'a string'}, got {value!r}")
        return value
    raise RecordError(f"{where}: cannot read a stored {hint!r}")


def decode_array(value: Any, where: str) -> np.ndarray:
    try:
        return numpy_array(value)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{where}: expected a list of numbers ({exc})") from exc


def decode_dataclass(kind: type[T], value: Any, where: str) -> T:
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
    hints = field_hints(kind)
    given = {}
    for f in dataclasses.fields(kind):
        if not f.init:
            continue
        if f.name in value and f.metadata.get("stored", True):
            given[f.name] = decode(hints[f.name], value[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if f.metadata.get("stored", True):
                raise RecordError(f"{where}: missing field {f.name!r}")
            given[f.name] = None
    try:
        return kind(**given)
    except FusionError:
        raise
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{where}: {exc}") from exc
