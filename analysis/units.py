"""One unit per quantity, wherever a person reads it: accuracy as a percentage in [0, 100] in every table, chart, CSV
and JSON output, under a name that says so (``test_accuracy_pct``, ``parent A accuracy (%)``), and residuals, spreads
and errors in scientific notation with three significant digits.

The workspace stores an accuracy as a fraction in [0, 1] (``record.metrics["test_accuracy"]``,
:class:`fusion.workspace.ModelRecord`); it becomes a percentage only here, at the presentation boundary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SCIENTIFIC = "%.3e"
"""The printf format of a small-magnitude figure: three significant digits in scientific notation (``1.23e-17``)."""
SMALL_FIGURE = re.compile(r"residual|spread|error", re.IGNORECASE)


def percent(fraction: float | None) -> float | None:
    """A fraction in [0, 1] as a percentage, ``100 * fraction``; ``None`` (not measured) stays ``None``.

    >>> percent(0.5), percent(None)
    (50.0, None)
    """
    return None if fraction is None else 100 * fraction


def is_accuracy(name: str) -> bool:
    """Whether a stored metric or row field named ``name`` holds an accuracy (a fraction): ``test_accuracy``,
    ``finetuned_accuracy``, ``parent A accuracy``, ``accuracy``."""
    return name.endswith("accuracy")


def percent_name(name: str) -> str:
    """The name of the field that holds accuracy ``name`` as a percentage: ``_pct`` after a snake_case name, `` (%)``
    after a name with spaces.

    >>> percent_name("test_accuracy"), percent_name("parent A accuracy")
    ('test_accuracy_pct', 'parent A accuracy (%)')
    """
    return f"{name} (%)" if " " in name else f"{name}_pct"


def in_percent(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with every accuracy (:func:`is_accuracy`) as a percentage under its :func:`percent_name`, in place;
    the other fields as they are.

    >>> in_percent({"method": "ot", "test_accuracy": 0.25, "test_loss": 1.5})
    {'method': 'ot', 'test_accuracy_pct': 25.0, 'test_loss': 1.5}
    """
    return {(percent_name(k) if is_accuracy(k) else k): (percent(v) if is_accuracy(k) else v) for k, v in row.items()}


def is_small_figure(name: str) -> bool:
    """Whether a column named ``name`` holds a residual, a spread or an error: a figure near zero, which a fixed
    number of decimals shows as 0.00000000000000001 or 0."""
    return SMALL_FIGURE.search(name) is not None


def number_format(name: str, default: str = "%.4g") -> str:
    """The printf format of a number column named ``name``: :data:`SCIENTIFIC` for a small figure
    (:func:`is_small_figure`), ``default`` otherwise.

    >>> number_format("λ1 residual") % 1.234567e-17, number_format("λ1") % 12.3456
    ('1.235e-17', '12.35')
    """
    return SCIENTIFIC if is_small_figure(name) else default
