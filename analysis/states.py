"""A network's state as the analyses handle it: its floating-point entries, and eval mode for a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

State = dict[str, torch.Tensor]
"""Floating-point state_dict entries (parameters and running statistics) by name."""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, its previous mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def float_state(model: nn.Module) -> State:
    """The floating-point entries of ``model``'s state_dict (parameters and running statistics), detached."""
    return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}
