"""Training several seeds of one architecture as a single job (what the Models page's "Train" button runs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fusion.data import load_dataset
from fusion.models import ModelSpec, default_spec
from fusion.progress import Progress, no_progress
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.pipeline import Stored, train_and_save


@dataclass(frozen=True)
class SpecOptions:
    """The architecture fields a form collects; ``None`` keeps the default of :func:`fusion.models.default_spec`."""

    arch: str
    hidden: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None
    width: float | None = None
    batch_norm: bool | None = None
    bias: bool | None = None

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
        """The spec for a dataset of this input shape and class count; raises ArchitectureError if inconsistent."""
        return default_spec(
            self.arch,
            input_shape,
            num_classes,
            hidden=self.hidden,
            channels=self.channels,
            width=self.width,
            batch_norm=self.batch_norm,
            bias=self.bias,
        )


def train_models(
    workspace: Workspace,
    options: SpecOptions,
    dataset: str,
    configs: Sequence[TrainConfig],
    *,
    download: bool = False,
    pretrained: str | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[Stored]:
    """Train one model per config (one per seed) with :func:`studies.pipeline.train_and_save` and save each (or reuse
    the stored model of an identical earlier run).

    ``pretrained`` starts every model from published weights (:func:`studies.pipeline.train_and_save`). Progress
    counts epochs over all configs. Models finished before a failure or a cancel stay in the workspace.
    """
    data = load_dataset(dataset, download=download)
    spec = options.build(data.input_shape, data.num_classes)
    total = sum(config.epochs for config in configs)
    done = 0
    records = []
    for config in configs:

        def seed_progress(epoch: int, epochs: int, message: str, offset: int = done, seed: int = config.seed) -> None:
            progress(offset + epoch, total, f"seed {seed}: {message}")

        records.append(
            train_and_save(
                workspace,
                spec,
                data.name,
                config,
                device=device,
                progress=seed_progress,
                download=download,
                pretrained=pretrained,
            )
        )
        done += config.epochs
    return records
