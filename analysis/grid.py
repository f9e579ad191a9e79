"""The grids of step sizes that the landscape and perturbation analyses evaluate the loss on.

>>> step_grid(-0.5, 0.5, 5, "perturb_low..perturb_high").tolist()
[-0.5, -0.25, 0.0, 0.25, 0.5]
>>> step_grid(-1e308, 1e308, 21, "span")
Traceback (most recent call last):
...
fusion.errors.ConfigError: span: the grid from -1e+308 to 1e+308 in 21 points is not finite; choose a smaller range
"""

from __future__ import annotations

import numpy as np

from fusion.errors import ConfigError


def step_grid(low: float, high: float, points: int, what: str) -> np.ndarray:
    """``linspace(low, high, points)`` in float64, refused with a :class:`ConfigError` naming ``what`` unless every
    point is finite and the points are distinct once cast to float32, the precision of the weights ``θ + t d`` they
    step along (a range of ``±1e308`` overflows; ``1 ± 1e-9`` collapses to one point)."""
    with np.errstate(over="ignore", invalid="ignore"):
        grid = np.linspace(low, high, points)
        single = grid.astype(np.float32)
    if not np.isfinite(grid).all():
        raise ConfigError(
            f"{what}: the grid from {low:g} to {high:g} in {points} points is not finite; choose a smaller range"
        )
    if not (np.isfinite(single).all() and (np.diff(single) > 0).all()):
        raise ConfigError(
            f"{what}: the grid from {low:g} to {high:g} in {points} points does not have {points} distinct finite "
            "steps in float32; choose a wider range, fewer points or a range within ±3e38"
        )
    return grid
