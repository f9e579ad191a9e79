"""A factory module that fails while it is imported (``python:tests.factory_broken_import:net``), after printing."""

from torch import nn

print("loading my networks")
raise RuntimeError("the weights folder is not mounted")


def net(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return nn.Linear(1, num_classes)
