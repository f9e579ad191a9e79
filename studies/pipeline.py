"""Library calls that string the steps together: train-and-save, import, evaluate, fuse-and-save, the offline demo
ensemble.

The command line, the app and scripts all go through these, so each produces the same workspace entries. A model
whose dataset is not on this machine is still imported or fused (by a method that reads only weights) and stored
"not evaluated": without ``test_accuracy`` in its metrics, until :func:`evaluate_and_save` evaluates it.
"""

from __future__ import annotations

import copy
import dataclasses
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusion.data import Dataset, Normalization, check_dataset_name, dataset_signature, load_dataset
from fusion.device import default_device
from fusion.errors import ArchitectureError, DatasetError
from fusion.methods.base import parents_mismatch
from fusion.models import ModelSpec, build_model, check_fits_in_memory, conform, default_spec
from fusion.names import finetune_name, fusion_name
from fusion.pretrained import initialise, pretrained_weights
from fusion.progress import Progress, no_progress
from fusion.registry import FusionReport, FusionResult, fuse, options_needing_data, resolve
from fusion.run_key import run_key
from fusion.train import TrainConfig, evaluate, train
from fusion.transport import Transport
from fusion.workspace import ModelRecord, Workspace

NOT_EVALUATED = "not evaluated"
"""How a model stored without test metrics (its dataset was not on disk) is shown in lists and tables."""


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
    check_fits_dataset(spec, data.name)
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


def check_fits_dataset(spec: ModelSpec, dataset: str) -> None:
    """Refuse a spec whose input shape or class count is not the dataset's, naming both; the shape of a torchvision
    dataset is known without its files (:func:`fusion.data.dataset_signature`), an image folder is read for it."""
    input_shape, num_classes = dataset_signature(dataset)
    if (spec.input_shape, spec.num_classes) != (input_shape, num_classes):
        raise ArchitectureError(
            f"the spec expects inputs {spec.input_shape} and {spec.num_classes} classes; {dataset} has "
            f"{input_shape} and {num_classes}"
        )


def available_dataset(name: str, download: bool = False) -> tuple[Dataset | None, str | None]:
    """The dataset ``name`` loaded, or ``None`` and why it cannot be (not on disk and not downloaded, or damaged:
    the :class:`DatasetError`'s message)."""
    try:
        return load_dataset(name, download=download), None
    except DatasetError as exc:
        return None, str(exc)


def is_evaluated(record: ModelRecord) -> bool:
    """Whether the model has test metrics: a model whose dataset was not on disk is stored without them."""
    return "test_accuracy" in record.metrics


def dataset_metric(metric: str, dataset: str) -> str:
    """The metrics key of ``metric`` (``test_accuracy``...) measured on a dataset other than the model's own:
    ``"test_accuracy on fashion-mnist"``."""
    return f"{metric} on {dataset}"


@dataclass(frozen=True)
class Imported:
    """A model an import stored and, when it was stored without test metrics, why (``not_evaluated``)."""

    record: ModelRecord
    not_evaluated: str | None = None


def import_and_evaluate(
    workspace: Workspace,
    path: str | Path,
    spec: ModelSpec | None = None,
    dataset: str | None = None,
    name: str | None = None,
    download: bool = False,
    device: torch.device | None = None,
) -> Imported:
    """Import a checkpoint (:meth:`Workspace.import_checkpoint`: the weights must be finite and fit the spec exactly)
    and store its test accuracy and loss on its dataset.

    A ``spec`` given with a ``dataset`` must take the dataset's input shape and classes, checked before anything is
    stored; a FusionLab export given another ``dataset`` is checked once read and removed again if it does not fit.
    When the dataset cannot be loaded (not on disk, and ``download`` not asked for), the model is stored without test
    metrics and :attr:`Imported.not_evaluated` says why; :func:`evaluate_and_save` evaluates it later. If anything
    else fails after the import, the model is removed again.
    """
    if spec is not None and dataset is not None:
        check_fits_dataset(spec, dataset)
    model, record = workspace.import_checkpoint(path, spec=spec, dataset=dataset, name=name)
    try:
        if spec is None and dataset is not None:
            check_fits_dataset(record.spec, record.dataset)
        data, missing = available_dataset(record.dataset, download)
        if data is None:
            return Imported(record, missing)
        metrics = evaluate(model, *data.split("test"), device=device)
        scores = {"test_accuracy": metrics.accuracy, "test_loss": metrics.loss}
        return Imported(workspace.update(record.id, metrics={**record.metrics, **scores}))
    except BaseException:
        workspace.delete(record.id)
        raise


@dataclass(frozen=True)
class Evaluation:
    """A stored model's accuracy and loss on both splits of ``dataset`` (``scores``: ``train_accuracy``,
    ``train_loss``, ``test_accuracy``, ``test_loss``) and the model's record holding them: under those keys for its
    own dataset, under :func:`dataset_metric` keys (``stored``) for another."""

    record: ModelRecord
    dataset: str
    scores: dict[str, float]
    stored: tuple[str, ...]


def restandardised(x: torch.Tensor, source: Normalization, target: Normalization) -> torch.Tensor:
    """Inputs standardised with ``source`` restandardised with ``target``, per channel:
    ``x' = (x * std_s + mean_s - mean_t) / std_t`` (the same pixels as ``target`` would standardise them)."""
    if source == target:
        return x
    view = (1, -1) + (1,) * (x.ndim - 2)
    mean_s, std_s, mean_t, std_t = (
        torch.tensor(v, dtype=x.dtype).view(view) for v in (source.mean, source.std, target.mean, target.std)
    )
    return (x * std_s + mean_s - mean_t) / std_t


def evaluate_and_save(
    workspace: Workspace,
    model_id: str,
    dataset: str | None = None,
    download: bool = False,
    device: torch.device | None = None,
) -> Evaluation:
    """Evaluate a stored model on both splits of its own dataset or of ``dataset`` and store the scores with it.

    Its own dataset's scores replace ``train_/test_accuracy`` and ``_loss`` in its metrics (a model stored "not
    evaluated" becomes evaluated). Another dataset must have the model's input shape and class count, else
    :class:`ArchitectureError` names both; its inputs are restandardised with the model's own normalisation (the
    pixels as the model saw them in training) and the scores are stored under :func:`dataset_metric` keys, leaving
    the own-dataset metrics as they were. Raises :class:`DatasetError` when the dataset cannot be loaded.
    """
    model, record = workspace.load(model_id)
    name = record.dataset if dataset is None else check_dataset_name(dataset)
    own = name == record.dataset
    if not own:
        input_shape, num_classes = dataset_signature(name)
        if (input_shape, num_classes) != (record.spec.input_shape, record.spec.num_classes):
            raise ArchitectureError(
                f"{model_id} takes inputs {record.spec.input_shape} with {record.spec.num_classes} classes; {name} "
                f"has {input_shape} and {num_classes}"
            )
    data = load_dataset(name, download=download)
    scores = {}
    for split in ("train", "test"):
        x, y = data.split(split)
        if not own:
            x = restandardised(x, data.normalization, record.normalization)
        metrics = evaluate(model, x, y, device=device)
        scores[f"{split}_accuracy"], scores[f"{split}_loss"] = metrics.accuracy, metrics.loss
    keyed = scores if own else {dataset_metric(k, name): v for k, v in scores.items()}
    record = workspace.update(model_id, metrics={**record.metrics, **keyed})
    return Evaluation(record, name, scores, tuple(keyed))


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
    and the fused model's test metrics (only ``fusion_seconds`` when ``not_evaluated`` says why there are none)."""

    record: ModelRecord | None
    result: FusionResult | None
    metrics: dict[str, float]
    reused: bool = False
    model: nn.Module | None = None
    """The network saved as ``record`` when this run made it, so that fine-tuning it needs no reload."""
    not_evaluated: str | None = None
    """Why the fused model has no test metrics (its dataset could not be loaded), ``None`` when it has them."""

    @property
    def report(self) -> FusionReport:
        """The fusion's report, read back from the stored model when reused."""
        if self.result is not None:
            return self.result.report
        assert self.record is not None
        return FusionReport.from_dict(self.record.provenance["report"])


def check_compatible(records: Sequence[ModelRecord], method: str) -> None:
    """Refuse parents that a method cannot fuse: other datasets, or architectures its registry entry's rule
    (:data:`fusion.methods.base.ParentRule`) does not allow. Raises :class:`ArchitectureError` naming the first
    mismatch."""
    rule = resolve(method).spec.parents
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
    is returned instead of fusing again; the prediction ensemble is not stored, so it always runs.

    When the parents' dataset cannot be loaded (not on disk) and the method with these options reads only weights
    (:func:`fusion.registry.options_needing_data`), the model is fused on the weights alone and stored without test
    metrics, :attr:`FusionRun.not_evaluated` saying why; otherwise :class:`DatasetError` says why and names each
    option that needs the data, before any work."""
    resolved = resolve(method, options)
    key = run_key("fuse", method=method, parents=list(model_ids), options=dataclasses.asdict(resolved.options))
    storable = resolved.spec.output != "ensemble"
    found = workspace.find_run(key) if reuse and storable else None
    if found is not None:
        scores = {k: found.metrics[k] for k in ("test_accuracy", "test_loss", "fusion_seconds") if k in found.metrics}
        unevaluated = None if is_evaluated(found) else "stored by an earlier run without evaluation"
        return FusionRun(found, None, scores, reused=True, not_evaluated=unevaluated)
    loaded = [workspace.load(i) for i in model_ids]
    models, records = [m for m, _ in loaded], [r for _, r in loaded]
    if records:
        check_compatible(records, method)
    data, missing = available_dataset(records[0].dataset)
    if data is None:
        needs = options_needing_data(resolved.options, models)
        if not storable:
            needs.append(f"{method} is not stored, so its test scores are all it gives")
        if needs:
            raise DatasetError(f"{missing}; without it {'; '.join(needs)}")
    device = device or default_device()
    result = fuse(
        models, resolved, data=data, input_shape=records[0].spec.input_shape, device=device, progress=progress
    )
    scores = {"fusion_seconds": result.report.seconds}
    if data is not None:
        metrics = evaluate(result.model, *data.split("test"), device=device)
        scores = {"test_accuracy": metrics.accuracy, "test_loss": metrics.loss, **scores}
    if not storable:
        return FusionRun(None, result, scores)
    like = records[result.report.details.layout_parent(resolved.reference)].spec
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
        name=name or fusion_name(spec.describe(), method, result.report.options, len(model_ids)),
        attachments={"transport": maps} if maps else None,
    )
    return FusionRun(record, result, scores, model=model, not_evaluated=missing)


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
        name=finetune_name(record.name, config),
    )
    return Stored(tuned)


def parent_role(index: int) -> str:
    """The role of the ``index``-th parent in tables, figures and colours: ``parent A``, ``parent B``, ..."""
    return f"parent {string.ascii_uppercase[index % 26]}"
