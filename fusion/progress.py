"""How every long computation reports how far it got: ``progress(done, total, message)``.

The library calls the callback it is given; front ends decide what it does (a progress bar and a cancel check in the
app, a line on stderr on the command line). A callback that raises stops the computation: that is how a job is
cancelled.

>>> import torch
>>> from torch import nn
>>> from fusion import TrainConfig, load_dataset, train
>>> def report(done: int, total: int, message: str) -> None:
...     print(f"{done}/{total}: {message}")
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
>>> _ = train(model, load_dataset("digits"), TrainConfig(epochs=2), progress=report)  # doctest: +ELLIPSIS
1/2: epoch 1/2: loss ...
2/2: epoch 2/2: loss ...
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message) -> None``: ``done`` of ``total`` steps finished (``0 <= done <= total``),
``message`` says what is running; see the module docstring for an example."""


def no_progress(done: int, total: int, message: str) -> None:
    """The progress callback that reports nothing."""
