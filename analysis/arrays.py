"""Arrays in stored results: JSON lists with ``null`` where a value is not finite, read back as float arrays."""

from __future__ import annotations

from typing import Any

import numpy as np


def json_array(values: np.ndarray) -> list[Any]:
    """``values.tolist()`` with NaN and infinities (a diverged point far out in a landscape) written as ``None``."""
    array = np.asarray(values, dtype=float)
    cleaned = array.astype(object)
    cleaned[~np.isfinite(array)] = None
    return cleaned.tolist()


def numpy_array(values: Any) -> np.ndarray:
    """A stored list back as a float array, ``None`` as NaN."""
    return np.array(values, dtype=float)
