"""Training, fine-tuning and evaluation with fixed seeds on the chosen device.

Training minimises the cross-entropy with SGD (momentum) or Adam and a cosine learning-rate schedule. The same seed
gives the same weights: the model's initialisation is seeded by :func:`fusion.models.build_model`, the order of the
mini-batches (and the augmentation) by ``TrainConfig.seed``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from fusion.data import Dataset, batches
from fusion.device import default_device
from fusion.errors import ConfigError, DatasetError, FusionError, NonFiniteLoss
from fusion.problems import Checked, Checks
from fusion.progress import Progress, no_progress
from fusion.records import Record


class TrainingDiverged(FusionError):
    """The loss became NaN or infinite: the learning rate is too high, or the inputs are broken."""


Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


@dataclass(frozen=True)
class TrainConfig(Record, Checked):
    """Hyper-parameters of one training or fine-tuning run (:func:`train`).

    The learning rate follows a cosine schedule from ``lr`` to 0 over ``epochs * ceil(N / batch_size)`` steps,
    ``lr_s = lr (1 + cos(pi s / S)) / 2`` (Loshchilov & Hutter, "SGDR", ICLR 2017). Every field is checked on
    construction; a refused value raises :class:`~fusion.errors.ConfigError` naming each problem.

    Attributes
    ----------
    epochs : int
        Passes over the training split, 1 to 10,000.
    lr : float
        Initial learning rate, in (0, 10].
    batch_size : int
        Examples per step.
    optimizer : {"adam", "sgd"}
        Adam, or SGD with ``momentum``.
    momentum : float
        SGD momentum, in [0, 1).
    weight_decay : float
        L2 weight decay, in [0, 1).
    seed : int
        Seed of the batch order and the augmentation (the initialisation is seeded by
        :func:`fusion.models.build_model`).
    augment : bool
        Random crops (padding 4) and horizontal flips, the usual CIFAR augmentation; meant for 32x32 colour images.

    Examples
    --------
    >>> from fusion import ConfigError, TrainConfig
    >>> config = TrainConfig(epochs=5, lr=0.01)
    >>> config.optimizer, config.batch_size, config.seed
    ('adam', 64, 0)
    >>> config.to_dict()["lr"], TrainConfig.from_dict(config.to_dict()) == config  # stored as JSON with every model
    (0.01, True)
    >>> try:
    ...     TrainConfig(epochs=0, lr=-1)
    ... except ConfigError as refused:
    ...     print(refused)
    epochs must be a whole number from 1 to 10000, got 0; lr must be a number above 0 and at most 10, got -1
    """

    epochs: int = field(default=30, metadata={"help": "passes over the training split"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (cosine schedule to 0)"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    optimizer: Optimizer = field(default="adam", metadata={"help": "Adam, or SGD with momentum"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation and the batch order"})
    augment: bool = field(default=False, metadata={"help": "random crops and flips (CIFAR)"})

    def check(self, checks: Checks) -> None:
        checks.whole("epochs", self.epochs, 1, 10_000)
        checks.number("lr", self.lr, 0, 10, above=True)
        checks.whole("batch_size", self.batch_size, 1, 65_536)
        checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        checks.number("momentum", self.momentum, 0, 1, below=True)
        checks.number("weight_decay", self.weight_decay, 0, 1, below=True)
        checks.seed("seed", self.seed)


@dataclass(frozen=True)
class Metrics:
    """Mean cross-entropy loss and top-1 accuracy (a fraction in [0, 1]) over a split."""

    loss: float
    accuracy: float


@dataclass(frozen=True)
class TrainResult:
    """Per-epoch mean training loss and accuracy, the final test metrics and the wall time in seconds."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test: Metrics | None = None
    seconds: float = 0.0


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding of 4 pixels, and a horizontal flip with probability 1/2, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> TrainResult:
    """Train ``model`` in place on ``data``'s training split and evaluate it on the test split.

    Minimises the mean cross-entropy ``L(θ) = -(1/B) sum_b log softmax(f(x_b; θ))_{y_b}`` over mini-batches in the
    seeded order of ``config.seed`` with Adam (Kingma & Ba, ICLR 2015) or SGD with momentum, under a cosine schedule
    (:class:`TrainConfig`). The epoch's loss and accuracy are summed on the device and read once per epoch, so that no
    mini-batch waits for the host. Nothing is written to disk.

    Parameters
    ----------
    model : nn.Module
        A classifier ``(N, C, H, W) -> (N, num_classes)``; trained in place and moved to ``device``.
    data : Dataset
        The training and test splits.
    config : TrainConfig
        Epochs, learning rate, batch size, optimiser, seed, augmentation.
    device : torch.device, optional
        Where to train (:func:`fusion.device.default_device` when ``None``).
    progress : Progress
        Called after every epoch with ``(epoch, epochs, message)``.

    Returns
    -------
    TrainResult
        Per-epoch mean training loss and accuracy (lists of ``epochs`` floats), the test :class:`Metrics`, and the
        wall time in seconds.

    Raises
    ------
    TrainingDiverged
        At the end of an epoch whose loss is not finite.
    DatasetError
        For an empty training split.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import TrainConfig, load_dataset, train
    >>> data = load_dataset("digits")
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> result = train(model, data, TrainConfig(epochs=3, lr=0.01))
    >>> len(result.train_loss), result.train_loss[-1] < result.train_loss[0], result.test.accuracy > 0.85
    (3, True, True)
    """
    device = device or default_device()
    x_train, y_train = data.split("train")
    if len(x_train) == 0:
        raise DatasetError(f"{data.name}: the training split is empty")
    model.to(device)
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    accuracies: list[float] = []
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_batch_norm and config.batch_size < 2:
        raise ConfigError("a model with BatchNorm needs batches of at least 2 examples; raise the batch size")
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        total_loss, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0
        for x, y in batches(x_train, y_train, config.batch_size, generator):
            if has_batch_norm and len(y) == 1 and seen > 0:
                continue  # BatchNorm cannot normalise a single example in training mode: drop the trailing one
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if config.augment:
                x = augment_batch(x, generator)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        epoch_loss = float(total_loss) / seen
        if not math.isfinite(epoch_loss):
            raise TrainingDiverged(
                f"the training loss became {epoch_loss} in epoch {epoch + 1}; lower the learning rate "
                f"(now {config.lr}) or check the inputs for NaNs"
            )
        losses.append(epoch_loss)
        accuracies.append(int(correct) / seen)
        progress(epoch + 1, config.epochs, f"epoch {epoch + 1}/{config.epochs}: loss {epoch_loss:.4f}")
    test = evaluate(model, *data.split("test"), device=device)
    return TrainResult(losses, accuracies, test, time.perf_counter() - started)


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, device: torch.device | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """Logits ``(N, classes)`` of ``model`` in eval mode, computed in batches on ``device``, returned on the CPU."""
    device = device or default_device()
    was_training = model.training
    model.eval().to(device)
    try:
        return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | None = None, batch_size: int = 1024
) -> Metrics:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``(x, y)``, in eval mode.

    ``loss = -(1/N) sum_n log softmax(f(x_n))_{y_n}`` and ``accuracy = (1/N) #{n : argmax f(x_n) = y_n}``.

    Parameters
    ----------
    model : nn.Module
        A classifier; evaluated in eval mode on ``device`` and returned to its former mode.
    x : torch.Tensor
        ``(N, ...)`` inputs, finite, ``N >= 1``.
    y : torch.Tensor
        ``(N,)`` int64 labels.
    device : torch.device, optional
        Where to evaluate (:func:`fusion.device.default_device` when ``None``).
    batch_size : int
        Inputs per forward pass.

    Returns
    -------
    Metrics
        ``loss`` (nats) and ``accuracy`` (a fraction in [0, 1]).

    Raises
    ------
    DatasetError
        For empty inputs or inputs with NaN or infinite entries.
    NonFiniteLoss
        When the model's outputs are not finite.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import evaluate
    >>> model = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
    >>> x, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]]), torch.tensor([0, 1, 0])
    >>> metrics = evaluate(model, x, y)
    >>> round(metrics.loss, 4), round(metrics.accuracy, 4)
    (0.8557, 0.6667)
    """
    if len(x) == 0:
        raise DatasetError("cannot evaluate on an empty dataset")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise DatasetError(f"{bad} of the {len(x)} inputs contain NaN or infinite values")
    logits = predict_logits(model, x, device, batch_size)
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(1).sum())
        raise NonFiniteLoss(
            f"the model's outputs are NaN or infinite on {bad} of {len(x)} inputs: its weights diverged"
        )
    return Metrics(
        loss=float(F.cross_entropy(logits, y.cpu())), accuracy=float((logits.argmax(1) == y.cpu()).float().mean())
    )
