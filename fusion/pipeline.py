"""Library calls that string the steps together: train-and-save, the offline demo ensemble.

The command line, the app and scripts all go through these, so each produces the same workspace entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusion.data import load_dataset
from fusion.device import default_device
from fusion.errors import ArchitectureError
from fusion.models import ModelSpec, build_model, default_spec
from fusion.train import Progress, TrainConfig, no_progress, train
from fusion.workspace import ModelRecord, Workspace


def train_and_save(
    workspace: Workspace,
    spec: ModelSpec,
    dataset: str,
    config: TrainConfig,
    name: str | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    download: bool = False,
) -> ModelRecord:
    """Build ``spec`` with initialisation seed ``config.seed``, train it on ``dataset`` and save it with its metrics.

    The spec must match the dataset's input shape and class count. Nothing is written when training fails.
    """
    data = load_dataset(dataset, download=download)
    if spec.input_shape != data.input_shape or spec.num_classes != data.num_classes:
        raise ArchitectureError(
            f"the spec expects inputs {spec.input_shape} and {spec.num_classes} classes; {dataset} has "
            f"{data.input_shape} and {data.num_classes}"
        )
    model = build_model(spec, seed=config.seed)
    result = train(model, data, config, device=device or default_device(), progress=progress)
    assert result.test is not None
    return workspace.save(
        model,
        spec=spec,
        dataset=data.name,
        normalization=data.normalization,
        metrics={
            "test_accuracy": result.test.accuracy,
            "test_loss": result.test.loss,
            "train_accuracy": result.train_accuracy[-1],
            "train_loss": result.train_loss[-1],
            "train_seconds": result.seconds,
        },
        provenance={"method": "train", "options": config.to_dict()},
        seed=config.seed,
        name=name,
    )


@dataclass(frozen=True)
class DemoMember:
    """One model of the demo ensemble: an architecture on digits and its training recipe."""

    spec: ModelSpec
    config: TrainConfig


def demo_members(mlps: int = 4, cnns: int = 3) -> list[DemoMember]:
    """The offline demo ensemble: ``mlps`` MLPs 64-128-64-10 and ``cnns`` CNNs (16-32 channels, 64 hidden) on digits,
    each with its own seed (0, 1, ...), trained with Adam and a cosine schedule.
    """
    mlp = default_spec("mlp", (1, 8, 8), 10)
    cnn = default_spec("cnn", (1, 8, 8), 10)
    return [DemoMember(mlp, TrainConfig(epochs=30, lr=1e-3, batch_size=64, seed=s)) for s in range(mlps)] + [
        DemoMember(cnn, TrainConfig(epochs=20, lr=2e-3, batch_size=64, seed=s)) for s in range(cnns)
    ]


def build_demo_ensemble(
    workspace: Workspace,
    members: list[DemoMember] | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[ModelRecord]:
    """Train and save every demo member on the offline digits dataset; progress counts epochs over all members."""
    members = members if members is not None else demo_members()
    total = sum(m.config.epochs for m in members)
    done = 0
    records = []
    for member in members:
        label = f"demo {member.spec.arch} · seed {member.config.seed}"

        def member_progress(epoch: int, epochs: int, message: str, offset: int = done, label: str = label) -> None:
            progress(offset + epoch, total, f"{label}: {message}")

        records.append(
            train_and_save(workspace, member.spec, "digits", member.config, name=label, device=device, progress=member_progress)
        )
        done += member.config.epochs
    return records

