"""Model factories for the ``python:`` architecture source's tests (``python:tests.factories:NAME``)."""

from __future__ import annotations

import math
import sys

from torch import nn


def small_net(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A user's own network: flatten, 24 hidden units, ReLU, the classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 24), nn.ReLU(), nn.Linear(24, num_classes))


def raising(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    raise ValueError("this factory needs a config file")


def not_a_module(input_shape: tuple[int, int, int], num_classes: int) -> object:
    return {"weights": []}


built: list[tuple[int, int, int]] = []
"""The input shapes :func:`counted_net` was called with: a test reads it to tell whether the factory ran."""


def counted_net(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """:func:`small_net`, recording each call in :data:`built`."""
    built.append(tuple(input_shape))
    return small_net(input_shape, num_classes)


def printing(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A factory that talks on stdout, as a user's debugging prints do."""
    print("building my network", input_shape, num_classes)
    return small_net(input_shape, num_classes)


def exiting(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A factory written as a script: it ends the process instead of raising."""
    sys.exit(3)
