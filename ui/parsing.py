"""Reading numbers typed into text fields ("128,64", "0,1,2"); bad text raises a ConfigError that says what to type."""

from __future__ import annotations

import re

from fusion.errors import ConfigError

WHOLE_NUMBER = re.compile(r"\d{1,9}")


def parse_int_list(
    text: str, what: str, *, minimum: int = 1, example: str = "128,64", allow_empty: bool = False, most: int = 64
) -> tuple[int, ...]:
    """Parse ``"128, 64"`` into ``(128, 64)``.

    Raises :class:`ConfigError` naming ``what`` when an entry is not a whole number (``"12,,x"``), is below
    ``minimum``, when there are more than ``most`` entries, or when the text is blank and ``allow_empty`` is false.
    """
    stripped = text.strip()
    if not stripped:
        if allow_empty:
            return ()
        raise ConfigError(f"{what}: enter at least one number, e.g. {example}")
    parts = [part.strip() for part in stripped.split(",")]
    if not all(WHOLE_NUMBER.fullmatch(part) for part in parts):
        raise ConfigError(f"{what}: {text!r} is not a comma-separated list of whole numbers; expected e.g. {example}")
    values = tuple(int(part) for part in parts)
    if len(values) > most:
        raise ConfigError(f"{what}: at most {most} entries, got {len(values)}")
    too_small = [v for v in values if v < minimum]
    if too_small:
        raise ConfigError(f"{what}: every entry must be at least {minimum}, got {too_small[0]}")
    return values


def parse_seeds(text: str, most: int = 32) -> tuple[int, ...]:
    """Seeds like ``"0,1,2"``: whole numbers from 0, duplicates dropped, at most ``most`` of them."""
    return tuple(dict.fromkeys(parse_int_list(text, "seeds", minimum=0, example="0,1,2", most=most)))
