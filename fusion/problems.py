"""Every problem of a config at once, named so that each front end can say it in its own words.

A config checks all of its fields before it refuses (:class:`Checks`) and raises one :class:`ConfigError` whose
``problems`` list each :class:`Problem`. A problem's message names the fields it mentions in braces (``"{epochs}
must be a whole number from 1 to 10000, got 0"``): the library and the command line read it with the field names
(``str(error)``), a form with the labels beside its widgets (:meth:`Problem.text`), so a person never reads an
internal name.

>>> checks = Checks()
>>> checks.whole("epochs", 0, 1, 10_000)
False
>>> checks.number("lr", 1e9, 0, 10, above=True)
False
>>> try:
...     checks.done()
... except ConfigError as refused:
...     error = refused
>>> str(error)
'epochs must be a whole number from 1 to 10000, got 0; lr must be a number above 0 and at most 10, got 1000000000.0'
>>> error.problems[1].text({"lr": "Learning rate"})
'Learning rate must be a number above 0 and at most 10, got 1000000000.0'
"""

from __future__ import annotations

import math
import numbers
import string
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fusion.errors import ConfigError
from fusion.seeds import SEED_LIMIT


def literal(text: str) -> str:
    """``text`` escaped for a problem's message: its braces are shown as they are, never read as a field."""
    return text.replace("{", "{{").replace("}", "}}")


def given(value: Any) -> str:
    """The value a person gave, as a message shows it after "got"."""
    return literal(repr(value))


def named_fields(message: str) -> set[str]:
    """The fields a message names in braces."""
    return {name for _, name, _, _ in string.Formatter().parse(message) if name}


@dataclass(frozen=True)
class Problem:
    """One refused value: the ``field`` it belongs to, and a ``message`` naming every field it mentions in braces.

    ``aliases`` renames the fields of a nested config into the outer config's (a study's fine-tune checks its
    ``epochs``, which the study calls ``finetune_epochs``), pairs of (name in the message, name outside).
    """

    field: str
    message: str
    aliases: tuple[tuple[str, str], ...] = ()

    def text(self, names: Mapping[str, str] | None = None) -> str:
        """The message with every field under its entry of ``names`` (its own name where ``names`` has none)."""
        aliases, names = dict(self.aliases), names or {}
        outer = {name: aliases.get(name, name) for name in named_fields(self.message)}
        return self.message.format_map({name: names.get(used, used) for name, used in outer.items()})

    def renamed(self, aliases: Mapping[str, str]) -> Problem:
        """The same problem as the outer config names it: each field ``name`` becomes ``aliases.get(name, name)``."""
        inner = dict(self.aliases)
        composed = {
            name: aliases.get(inner.get(name, name), inner.get(name, name)) for name in named_fields(self.message)
        }
        return Problem(
            aliases.get(self.field, self.field),
            self.message,
            tuple(sorted((name, outer) for name, outer in composed.items() if name != outer)),
        )


def refusal(problems: Iterable[Problem]) -> ConfigError:
    """One :class:`ConfigError` for every problem of a config: its message joins them, ``problems`` lists them."""
    listed = tuple(problems)
    error = ConfigError("; ".join(problem.text() for problem in listed))
    error.problems = listed
    return error


def span(low: float | None, high: float | None, above: bool, below: bool) -> str:
    """A range in words: ``from 0 to 500``, ``above 0 and at most 10``, ``of at least 1``."""
    if low is not None and high is not None and not above and not below:
        return f"from {low} to {high}"
    parts = []
    if low is not None:
        parts.append(f"{'above' if above else 'of at least'} {low}")
    if high is not None:
        parts.append(f"{'below' if below else 'at most' if parts else 'of at most'} {high}")
    return " and ".join(parts)


class Checks:
    """The problems of one config, collected field by field; :meth:`done` raises them all at once.

    Each check returns whether the value passed, so that a rule between two fields runs only on valid ones.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, field: str, message: str) -> bool:
        """Refuse ``field`` with ``message`` (fields in braces, other braces doubled: :func:`literal`)."""
        self.problems.append(Problem(field, message))
        return False

    def whole(self, field: str, value: Any, low: int, high: int | None = None, note: str = "") -> bool:
        """``value`` must be an ``int`` (not a bool) in ``[low, high]``; ``note`` follows the range in the message."""
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            if value >= low and (high is None or value <= high):
                return True
        return self.add(
            field, f"{{{field}}} must be a whole number {span(low, high, False, False)}{note}, got {given(value)}"
        )

    def number(
        self,
        field: str,
        value: Any,
        low: float | None = None,
        high: float | None = None,
        *,
        above: bool = False,
        below: bool = False,
    ) -> bool:
        """``value`` must be a finite real number in the range from ``low`` to ``high``, open at ``low`` when
        ``above`` and at ``high`` when ``below``."""
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            if (low is None or (value > low if above else value >= low)) and (
                high is None or (value < high if below else value <= high)
            ):
                return True
        return self.add(field, f"{{{field}}} must be a number {span(low, high, above, below)}, got {given(value)}")

    def choice(self, field: str, value: Any, allowed: Collection[str]) -> bool:
        if value in allowed:
            return True
        return self.add(field, f"{{{field}}} must be one of {literal(', '.join(allowed))}, got {given(value)}")

    def seed(self, field: str, value: Any) -> bool:
        """A seed: an integer in ``[0, 2**32)``, the range torch's generator keeps (:func:`fusion.seeds.check_seed`)."""
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value < SEED_LIMIT:
            return True
        return self.add(
            field, f"{{{field}}} must be a whole number from 0 to 2**32 - 1 = {SEED_LIMIT - 1}, got {given(value)}"
        )

    def nested(self, make: Callable[[], Any], aliases: Mapping[str, str] | None = None) -> bool:
        """Build a nested config with ``make`` and take over its problems, its fields renamed by ``aliases``."""
        try:
            make()
        except ConfigError as exc:
            if not exc.problems:
                raise
            self.problems.extend(problem.renamed(aliases or {}) for problem in exc.problems)
            return False
        return True

    @contextmanager
    def refused(self, field: str) -> Iterator[None]:
        """A :class:`ConfigError` raised in the ``with`` body becomes a problem of ``field``, its message after the
        field's name."""
        try:
            yield
        except ConfigError as exc:
            if exc.problems:
                self.problems.extend(exc.problems)
            else:
                self.add(field, f"{{{field}}}: {literal(str(exc))}")

    def done(self) -> None:
        """Raise one :class:`ConfigError` with every problem found, if any (:func:`refusal`)."""
        if self.problems:
            raise refusal(self.problems)


class Checked:
    """Mixin for a frozen config dataclass: ``__post_init__`` runs :meth:`check` and raises every problem it found.
    A subclass extends :meth:`check`, calling its bases' first."""

    def __post_init__(self) -> None:
        checks = Checks()
        self.check(checks)
        checks.done()

    def check(self, checks: Checks) -> None:
        """Add a problem to ``checks`` for every refused field."""
