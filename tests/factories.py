"""Model factories for the ``python:`` architecture source's tests (``python:tests.factories:NAME``)."""

from __future__ import annotations

import math

from torch import nn


def small_net(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A user's own network: flatten, 24 hidden units, ReLU, the classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 24), nn.ReLU(), nn.Linear(24, num_classes))


def raising(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    raise ValueError("this factory needs a config file")


def not_a_module(input_shape: tuple[int, int, int], num_classes: int) -> object:
    return {"weights": []}
