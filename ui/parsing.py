"""Reading numbers typed into text fields ("128,64", "0,1,2"); bad text raises a ConfigError that says what to type,
as a problem of the field (:mod:`fusion.problems`), so that a form names the field by its label."""

from __future__ import annotations

import re

from fusion.problems import Checks, given

WHOLE_NUMBER = re.compile(r"\d{1,9}")


def parse_int_list(
    text: str, field: str, *, minimum: int = 1, example: str = "128,64", allow_empty: bool = False, most: int = 64
) -> tuple[int, ...]:
    """Parse ``"128, 64"`` into ``(128, 64)``.

    Raises :class:`ConfigError` with a problem of ``field`` when an entry is not a whole number (``"12,,x"``), is
    below ``minimum``, when there are more than ``most`` entries, or when the text is blank and ``allow_empty`` is
    false.
    """
    checks = Checks()
    stripped = text.strip()
    parts = [part.strip() for part in stripped.split(",")] if stripped else []
    if not parts and not allow_empty:
        checks.add(field, f"{{{field}}}: enter at least one number, e.g. {example}")
    elif not all(WHOLE_NUMBER.fullmatch(part) for part in parts):
        checks.add(
            field, f"{{{field}}}: {given(text)} is not a comma-separated list of whole numbers; expected e.g. {example}"
        )
    elif len(parts) > most:
        checks.add(field, f"{{{field}}}: at most {most} entries, got {len(parts)}")
    elif too_small := [int(part) for part in parts if int(part) < minimum]:
        checks.add(field, f"{{{field}}}: every entry must be at least {minimum}, got {too_small[0]}")
    checks.done()
    return tuple(int(part) for part in parts)


def parse_seeds(text: str, most: int = 32) -> tuple[int, ...]:
    """Seeds like ``"0,1,2"``: whole numbers from 0, duplicates dropped, at most ``most`` of them (a problem of the
    field ``seeds``)."""
    return tuple(dict.fromkeys(parse_int_list(text, "seeds", minimum=0, example="0,1,2", most=most)))
