"""Library calls that string the steps together: train-and-save, the offline demo ensemble.

The command line, the app and scripts all go through these, so each produces the same workspace entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from fusion.data import load_dataset
from fusion.device import default_device
from fusion.errors import ArchitectureError, ConfigError
from fusion.fuse import FusionResult, fuse
from fusion.models import ModelSpec, build_model, conform, default_spec
from fusion.train import Progress, TrainConfig, evaluate, no_progress, train
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



@dataclass(frozen=True, eq=False)
class FusionRun:
    """A fusion done from workspace models: the saved record (``None`` for the ensemble, which is not a single
    network), the library's result and the fused model's test metrics."""

    record: ModelRecord | None
    result: FusionResult
    metrics: dict[str, float]


def check_compatible(records: Sequence[ModelRecord], method: str) -> None:
    """Refuse parents that a method cannot fuse: other datasets, other architectures or depths, and for vanilla
    averaging other widths. Raises :class:`ArchitectureError` naming the first mismatch."""
    first = records[0]
    for record in records[1:]:
        if record.dataset != first.dataset:
            raise ArchitectureError(f"{record.id} was trained on {record.dataset}, {first.id} on {first.dataset}")
        a, b = first.spec, record.spec
        if method == "average" and a != b:
            raise ArchitectureError(
                f"vanilla averaging needs identical architectures: {first.id} is {a.describe()}, {record.id} is "
                f"{b.describe()}; OT fusion can fuse different widths"
            )
        if method == "cla":
            if (a.arch.rstrip("0123456789"), a.input_shape, a.num_classes, a.batch_norm, a.bias) != (
                b.arch.rstrip("0123456789"), b.input_shape, b.num_classes, b.batch_norm, b.bias):
                raise ArchitectureError(
                    f"mismatched architectures: {first.id} is {a.describe()}, {record.id} is {b.describe()}; cla needs "
                    "one family (mlp, vgg or resnet) with the same inputs, classes, BatchNorm and biases"
                )
            continue
        same_family = (a.arch, a.input_shape, a.num_classes, a.batch_norm, a.bias, len(a.hidden), len(a.channels)) == (
            b.arch, b.input_shape, b.num_classes, b.batch_norm, b.bias, len(b.hidden), len(b.channels))
        if not same_family:
            raise ArchitectureError(
                f"mismatched architectures: {first.id} is {a.describe()}, {record.id} is {b.describe()}; "
                f"{method} needs the same architecture and depth (widths may differ)"
            )


def fuse_and_save(
    workspace: Workspace,
    model_ids: Sequence[str],
    method: str,
    options: dict[str, Any] | None = None,
    name: str | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> FusionRun:
    """Fuse workspace models and save the result with full provenance (parents, method, options, report) and, for
    methods with maps, the transport plans as the ``transport`` attachment (keys ``model{k}/{group}``)."""
    options = dict(options or {})
    loaded = [workspace.load(i) for i in model_ids]
    models, records = [m for m, _ in loaded], [r for _, r in loaded]
    if records:
        check_compatible(records, method)
    data = load_dataset(records[0].dataset)
    device = device or default_device()
    result = fuse(models, method, data=data, device=device, progress=progress, **options)
    metrics = evaluate(result.model, *data.split("test"), device=device)
    scores = {"test_accuracy": metrics.accuracy, "test_loss": metrics.loss, "fusion_seconds": result.report.seconds}
    if method == "ensemble":
        return FusionRun(None, result, scores)
    like = records[result.report.details.get("spec_from", result.report.options.get("reference", 0))].spec
    spec, model = conform(result.model, like)
    plans = {
        f"model{k}/{group}": torch.from_numpy(t.plan).float()
        for k, transports in enumerate(result.transports)
        if transports
        for group, t in transports.items()
    }
    record = workspace.save(
        model,
        spec=spec,
        dataset=records[0].dataset,
        normalization=records[0].normalization,
        metrics=scores,
        provenance={"method": method, "parents": list(model_ids), "options": result.report.options, "report": result.report.to_dict()},
        name=name or f"{spec.describe()} · {method} of {len(model_ids)}",
        attachments={"transport": plans} if plans else None,
    )
    return FusionRun(record, result, scores)


def finetune_and_save(
    workspace: Workspace,
    model_id: str,
    config: TrainConfig,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> ModelRecord:
    """Fine-tune a workspace model on its dataset and save it as a new model whose parent is the original."""
    model, record = workspace.load(model_id)
    data = load_dataset(record.dataset)
    result = train(model, data, config, device=device or default_device(), progress=progress)
    assert result.test is not None
    return workspace.save(
        model,
        spec=record.spec,
        dataset=record.dataset,
        normalization=record.normalization,
        metrics={"test_accuracy": result.test.accuracy, "test_loss": result.test.loss, "train_seconds": result.seconds},
        provenance={"method": "finetune", "parents": [model_id], "options": config.to_dict()},
        name=f"{record.name} · fine-tuned {config.epochs} ep",
    )
