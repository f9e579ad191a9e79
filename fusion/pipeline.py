"""Library calls that string the steps together: train-and-save, the offline demo ensemble.

The command line, the app and scripts all go through these, so each produces the same workspace entries.
"""

from __future__ import annotations

import copy
import dataclasses
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusion.data import load_dataset
from fusion.device import default_device
from fusion.errors import ArchitectureError
from fusion.methods.base import parents_mismatch
from fusion.models import ModelSpec, build_model, check_fits_in_memory, conform, default_spec
from fusion.pretrained import initialise, pretrained_weights
from fusion.progress import Progress, no_progress
from fusion.registry import FusionResult, fuse, method_options, method_spec
from fusion.run_key import run_key
from fusion.train import TrainConfig, evaluate, train
from fusion.transport import Transport
from fusion.workspace import ModelRecord, Workspace


@dataclass(frozen=True)
class Stored:
    """The model a run saved or, when ``reused``, the stored model of an earlier run with the same inputs
    (:mod:`fusion.run_key`), returned instead of a copy."""

    record: ModelRecord
    reused: bool = False


def train_key(spec: ModelSpec, dataset: str, config: TrainConfig, pretrained: str | None = None) -> str:
    extra = {} if pretrained is None else {"pretrained": pretrained}
    return run_key("train", spec=spec.to_dict(), dataset=dataset, config=config.to_dict(), **extra)


def train_and_save(
    workspace: Workspace,
    spec: ModelSpec,
    dataset: str,
    config: TrainConfig,
    name: str | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    download: bool = False,
    reuse: bool = True,
    pretrained: str | None = None,
) -> Stored:
    """Build ``spec`` with initialisation seed ``config.seed``, train it on ``dataset`` and save it with its metrics;
    with ``reuse``, a model stored by a run of the same spec, dataset and recipe is returned untrained instead.

    ``pretrained`` starts a ``torchvision:``/``timm:`` network from its published weights of that tag (``"default"``:
    the library's default weights) found in the local cache, or downloaded when ``download``
    (:mod:`fusion.pretrained`); a head for another number of classes keeps its seeded initialisation.

    The spec must match the dataset's input shape and class count, and its parameters must fit in the device's free
    memory (:func:`fusion.models.check_fits_in_memory`). Nothing is written when training fails.
    """
    data = load_dataset(dataset, download=download)
    if spec.input_shape != data.input_shape or spec.num_classes != data.num_classes:
        raise ArchitectureError(
            f"the spec expects inputs {spec.input_shape} and {spec.num_classes} classes; {dataset} has "
            f"{data.input_shape} and {data.num_classes}"
        )
    published = None
    if pretrained is not None:
        published = pretrained_weights(spec.arch, None if pretrained == "default" else pretrained, download)
    key = train_key(spec, data.name, config, None if published is None else published[0].tag)
    found = workspace.find_run(key) if reuse else None
    if found is not None:
        return Stored(found, reused=True)
    device = device or default_device()
    check_fits_in_memory(spec, device)
    model = build_model(spec, seed=config.seed)
    start = None if published is None else initialise(model, *published)
    result = train(model, data, config, device=device, progress=progress)
    assert result.test is not None
    record = workspace.save(
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
        provenance={"method": "train", "options": config.to_dict(), "run": key}
        | ({} if start is None else {"pretrained": start.to_dict()}),
        seed=config.seed,
        name=name,
    )
    return Stored(record)


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


def vit_demo_members(count: int = 2) -> list[DemoMember]:
    """The demo's ViT pair: ``count`` zoo ViTs (``vit``, width 1) on digits, seeds 0, 1, ..., trained with Adam at
    2e-3 for 30 epochs (93 to 95 % test accuracy, about a minute each on 2 CPU cores)."""
    vit = default_spec("vit", (1, 8, 8), 10)
    return [DemoMember(vit, TrainConfig(epochs=30, lr=2e-3, batch_size=64, seed=s)) for s in range(count)]


def build_demo_ensemble(
    workspace: Workspace,
    members: list[DemoMember] | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[Stored]:
    """Train and save every demo member on the offline digits dataset, reusing members already stored (see
    :func:`train_and_save`); progress counts epochs over all members."""
    members = members if members is not None else demo_members()
    total = sum(m.config.epochs for m in members)
    done = 0
    records = []
    for member in members:
        label = f"demo {member.spec.arch} · seed {member.config.seed}"

        def member_progress(epoch: int, epochs: int, message: str, offset: int = done, label: str = label) -> None:
            progress(offset + epoch, total, f"{label}: {message}")

        records.append(
            train_and_save(
                workspace, member.spec, "digits", member.config, name=label, device=device, progress=member_progress
            )
        )
        done += member.config.epochs
    return records


@dataclass(frozen=True, eq=False)
class FusionRun:
    """A fusion done from workspace models: the saved record (``None`` for the ensemble, which is not a single
    network), the library's result (``None`` when ``reused``: an earlier run with the same inputs stored ``record``)
    and the fused model's test metrics."""

    record: ModelRecord | None
    result: FusionResult | None
    metrics: dict[str, float]
    reused: bool = False
    model: nn.Module | None = None
    """The network saved as ``record`` when this run made it, so that fine-tuning it needs no reload."""

    @property
    def report(self) -> dict[str, Any]:
        """The fusion's report (:class:`fusion.registry.FusionReport` as a dict), stored with the model when reused."""
        if self.result is not None:
            return self.result.report.to_dict()
        assert self.record is not None
        return dict(self.record.provenance.get("report", {}))


def check_compatible(records: Sequence[ModelRecord], method: str) -> None:
    """Refuse parents that a method cannot fuse: other datasets, or architectures its registry entry's rule
    (:data:`fusion.methods.base.ParentRule`) does not allow. Raises :class:`ArchitectureError` naming the first
    mismatch."""
    rule = method_spec(method).parents
    first = records[0]
    for record in records[1:]:
        if record.dataset != first.dataset:
            raise ArchitectureError(f"{record.id} was trained on {record.dataset}, {first.id} on {first.dataset}")
        needed = parents_mismatch(first.spec, record.spec, rule)
        if needed is not None:
            raise ArchitectureError(
                f"mismatched architectures: {first.id} is {first.spec.describe()}, {record.id} is "
                f"{record.spec.describe()}; {method} needs {needed}"
            )


def fuse_and_save(
    workspace: Workspace,
    model_ids: Sequence[str],
    method: str,
    options: dict[str, Any] | None = None,
    name: str | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    reuse: bool = True,
) -> FusionRun:
    """Fuse workspace models and save the result with full provenance (parents, method, options, report) and, for
    methods with maps, the transport plans as the ``transport`` attachment (keys ``model{k}/{group}``).

    With ``reuse``, a model stored by a fusion of the same parents (in order) with the same method and full options
    is returned instead of fusing again; the prediction ensemble is not stored, so it always runs."""
    options = dict(options or {})
    key = run_key(
        "fuse", method=method, parents=list(model_ids), options=dataclasses.asdict(method_options(method, options))
    )
    storable = method_spec(method).output != "ensemble"
    found = workspace.find_run(key) if reuse and storable else None
    if found is not None:
        scores = {k: found.metrics[k] for k in ("test_accuracy", "test_loss", "fusion_seconds") if k in found.metrics}
        return FusionRun(found, None, scores, reused=True)
    loaded = [workspace.load(i) for i in model_ids]
    models, records = [m for m, _ in loaded], [r for _, r in loaded]
    if records:
        check_compatible(records, method)
    data = load_dataset(records[0].dataset)
    device = device or default_device()
    result = fuse(models, method, data=data, device=device, progress=progress, **options)
    metrics = evaluate(result.model, *data.split("test"), device=device)
    scores = {"test_accuracy": metrics.accuracy, "test_loss": metrics.loss, "fusion_seconds": result.report.seconds}
    if not storable:
        return FusionRun(None, result, scores)
    like = records[result.report.details.get("spec_from", result.report.options.get("reference", 0))].spec
    spec, model = conform(result.model, like)
    maps = map_tensors(result.transports)
    record = workspace.save(
        model,
        spec=spec,
        dataset=records[0].dataset,
        normalization=records[0].normalization,
        metrics=scores,
        provenance={
            "method": method,
            "parents": list(model_ids),
            "options": result.report.options,
            "report": result.report.to_dict(),
            "run": key,
        },
        name=name or f"{spec.describe()} · {method} of {len(model_ids)}",
        attachments={"transport": maps} if maps else None,
    )
    return FusionRun(record, result, scores, model=model)


def map_tensors(transports: Sequence[dict[str, Transport] | None]) -> dict[str, torch.Tensor]:
    """Every map of a fusion as tensors: ``model{k}/{group}/plan`` and, when solved on one, ``.../cost``."""
    tensors = {}
    for k, maps in enumerate(transports):
        for group, transport in (maps or {}).items():
            tensors[f"model{k}/{group}/plan"] = torch.from_numpy(transport.plan).float()
            if transport.cost_matrix is not None:
                tensors[f"model{k}/{group}/cost"] = transport.cost_matrix.float()
    return tensors


def finetune_and_save(
    workspace: Workspace,
    model_id: str,
    config: TrainConfig,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    reuse: bool = True,
    model: nn.Module | None = None,
) -> Stored:
    """Fine-tune a workspace model on its dataset and save it as a new model whose parent is the original; with
    ``reuse``, a model stored by a fine-tune of the same model with the same recipe is returned instead. ``model``,
    when given, is the network stored as ``model_id`` already in memory (:attr:`FusionRun.model`): a copy of it is
    trained instead of reading the file again."""
    key = run_key("finetune", parent=model_id, config=config.to_dict())
    found = workspace.find_run(key) if reuse else None
    if found is not None:
        return Stored(found, reused=True)
    if model is None:
        model, record = workspace.load(model_id)
    else:
        model, record = copy.deepcopy(model), workspace.record(model_id)
    data = load_dataset(record.dataset)
    result = train(model, data, config, device=device or default_device(), progress=progress)
    assert result.test is not None
    tuned = workspace.save(
        model,
        spec=record.spec,
        dataset=record.dataset,
        normalization=record.normalization,
        metrics={"test_accuracy": result.test.accuracy, "test_loss": result.test.loss, "train_seconds": result.seconds},
        provenance={"method": "finetune", "parents": [model_id], "options": config.to_dict(), "run": key},
        name=f"{record.name} · fine-tuned {config.epochs} ep",
    )
    return Stored(tuned)


def parent_role(index: int) -> str:
    """The role of the ``index``-th parent in tables, figures and colours: ``parent A``, ``parent B``, ..."""
    return f"parent {string.ascii_uppercase[index % 26]}"
