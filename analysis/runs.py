"""Analyses of workspace models, stored with them: the calls behind the Hessian and Loss-landscape pages and the
command line. Each loads the models and their dataset (with the normalisation they were trained with), computes,
and saves the result as JSON beside the first model, so revisiting a page shows it without recomputing."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import reduce
from operator import add

import torch

from analysis.cost import CostEstimate
from analysis.hessian import HessianReport, check_hessian_limits, check_products, estimate_hessian_cost, hessian_report
from analysis.hessian_config import HessianConfig
from analysis.landscape import (
    InterpolationResult,
    LandscapeConfig,
    PlaneResult,
    RandomDirectionsResult,
    check_limits,
    check_points,
    estimate_cost,
    linear_interpolation,
    plane,
    random_directions,
    repair_passes,
)
from analysis.maps import stored_maps
from analysis.overlap import EigenvectorOverlap, check_mapped, eigenvector_overlaps
from fusion.attention_layouts import split_attention_layers
from fusion.data import load_dataset
from fusion.distributed import is_writer
from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import neuron_groups
from fusion.pipeline import parent_role
from fusion.progress import Progress, no_progress
from fusion.registry import REGISTRY, fuse, method_spec
from fusion.transport import Transport
from fusion.workspace import LoadOnce, ModelRecord, Workspace

HESSIAN = "hessian"
OVERLAP = "overlap"
LANDSCAPE_MODELS = {"interpolation": 2, "plane": 3, "random": 1}
LandscapeResult = InterpolationResult | PlaneResult | RandomDirectionsResult


def model_role(record: ModelRecord, index: int) -> str:
    """The colour role of a model: trained or imported models are parents by position, derived ones by provenance."""
    if record.method in ("train", "import"):
        return parent_role(index)
    if record.method == "finetune":
        return "fine-tuned"
    if record.method in REGISTRY and method_spec(record.method).output == "pruned":
        return "pruned"
    return "fused"


def hessian_of(
    workspace: Workspace,
    model_id: str,
    config: HessianConfig = HessianConfig(),
    split: str = "test",
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> HessianReport:
    """Top-k eigenvalues, trace, density and perturbation curves of a workspace model on its dataset's ``split``;
    stored as the model's ``hessian`` result."""
    model, record = workspace.load(model_id)
    data = load_dataset(record.dataset)
    splits = {name: data.split(name) for name in ("train", "test")}
    others = parent_states(workspace, record, model, device) if config.lines_to_parents else {}
    report = hessian_report(
        model, data.split(split), config, device, progress, evaluation=splits, split=split, others=others
    )
    if is_writer():
        workspace.save_result(
            model_id, HESSIAN, {"model": model_id, "dataset": record.dataset, "split": split, **report.to_dict()}
        )
    return report


def parent_states(
    workspace: Workspace, record: ModelRecord, model: torch.nn.Module, device: torch.device | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """The states to draw lines to from ``model``: its parents in its own neuron order (aligned again for a fusion by
    averaging, :func:`aligned_parents`), those of its shapes only (a pruned parent has others), by role."""
    if not record.parents or not all(workspace.has(p) for p in record.parents):
        return {}
    if averages_aligned(record) and len(record.parents) > 1:
        parents = aligned_parents(workspace, record.id, device)
        prefix = "aligned "
    else:
        parents, prefix = [workspace.load(p)[0] for p in record.parents], ""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return {
        f"{prefix}{parent_role(index)}": {k: v.detach() for k, v in parent.state_dict().items()}
        for index, parent in enumerate(parents)
        if {k: v.shape for k, v in parent.state_dict().items()} == shapes
    }


def stored_hessian(workspace: Workspace, model_id: str) -> HessianReport | None:
    payload = workspace.load_result(model_id, HESSIAN)
    return HessianReport.from_dict(payload) if payload else None


def landscape_key(kind: str, model_ids: Sequence[str]) -> str:
    """The result name of a landscape of ``kind`` over these models (in this order)."""
    digest = hashlib.sha1("|".join(model_ids).encode()).hexdigest()[:10]
    return f"landscape-{kind}-{digest}"


def landscape_models(
    workspace: Workspace, model_ids: Sequence[str], kind: str
) -> tuple[list[torch.nn.Module], list[ModelRecord]]:
    if kind not in LANDSCAPE_MODELS:
        raise ConfigError(f"landscape kind must be one of {', '.join(LANDSCAPE_MODELS)}, got {kind!r}")
    needed = LANDSCAPE_MODELS[kind]
    if len(model_ids) != needed:
        raise ConfigError(f"a {kind} landscape needs {needed} model(s), got {len(model_ids)}")
    loaded = [workspace.load(model_id) for model_id in model_ids]
    records = [record for _, record in loaded]
    for record in records[1:]:
        if record.dataset != records[0].dataset or record.spec != records[0].spec:
            raise ArchitectureError(
                f"{record.id} ({record.spec.describe()}, {record.dataset}) does not share the architecture and "
                f"dataset of {records[0].id} ({records[0].spec.describe()}, {records[0].dataset}); landscapes need "
                "one parameter space"
            )
    return [model for model, _ in loaded], records


def landscape_cost(
    workspace: Workspace,
    model_ids: Sequence[str],
    kind: str,
    config: LandscapeConfig,
    dims: int = 2,
    device: torch.device | None = None,
) -> CostEstimate:
    """What a landscape would cost (points, forward passes, estimated seconds and memory), measured on one batch."""
    models, records = landscape_models(workspace, model_ids, kind)
    points = config.resolution ** (2 if kind == "plane" or (kind == "random" and dims == 2) else 1)
    bases = 1 + dims if kind == "random" else len(models)
    return estimate_cost(models[0], load_dataset(records[0].dataset), points, config, device, bases)


def landscape_of(
    workspace: Workspace,
    model_ids: Sequence[str],
    kind: str,
    config: LandscapeConfig = LandscapeConfig(),
    dims: int = 2,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> LandscapeResult:
    """A landscape of workspace models: ``interpolation`` (two models), ``plane`` (three) or ``random`` filter-
    normalised directions (one model, ``dims`` 1 or 2); stored beside the first model under :func:`landscape_key`."""
    models, records = landscape_models(workspace, model_ids, kind)
    data = load_dataset(records[0].dataset)
    roles = [model_role(record, index) for index, record in enumerate(records)]
    result: LandscapeResult
    if kind == "interpolation":
        result = linear_interpolation(models[0], models[1], data, config, device, progress, labels=(roles[0], roles[1]))
    elif kind == "plane":
        result = plane(models, data, config, device, progress, labels=(roles[0], roles[1], roles[2]))
    else:
        result = random_directions(models[0], data, dims, config, device, progress, label=roles[0])
    save_landscape(
        workspace, model_ids[0], landscape_key(kind, model_ids), kind, model_ids, records[0].dataset, config, result
    )
    return result


def save_landscape(
    workspace: Workspace,
    owner: str,
    key: str,
    kind: str,
    model_ids: Sequence[str],
    dataset: str,
    config: LandscapeConfig,
    result: LandscapeResult,
) -> None:
    """Store ``result`` as the ``key`` result of model ``owner``, with the models, dataset and config it was made
    from (rank 0 only in a distributed run)."""
    payload = {"kind": kind, "model_ids": list(model_ids), "dataset": dataset, "config": config.to_dict()}
    if is_writer():
        workspace.save_result(owner, key, {**payload, **result.to_dict()})


def stored_landscape(workspace: Workspace, model_ids: Sequence[str], kind: str) -> LandscapeResult | None:
    payload = workspace.load_result(model_ids[0], landscape_key(kind, model_ids))
    if payload is None:
        return None
    factory = {"interpolation": InterpolationResult, "plane": PlaneResult, "random": RandomDirectionsResult}[kind]
    return factory.from_dict(payload)


def scaled(progress: Progress, part: int, parts: int, label: str) -> Progress:
    """Report one of ``parts`` sub-tasks on a common scale of ``parts * 1000`` steps."""
    return lambda done, total, message: progress(
        part * 1000 + 1000 * done // max(total, 1), parts * 1000, f"{label}: {message}"
    )


def hessian_cost_of(
    workspace: Workspace,
    model_ids: Sequence[str],
    config: HessianConfig = HessianConfig(),
    split: str = "test",
    device: torch.device | None = None,
) -> CostEstimate:
    """What :func:`hessians_of` would cost, summed over the models. Raises :class:`CostLimitError` above
    ``config.max_products`` products in all, counted from the parameter shapes before anything is measured."""
    if not model_ids:
        raise ConfigError("choose at least one model")
    loaded = [workspace.load(model_id) for model_id in model_ids]
    check_products([model for model, _ in loaded], config)
    estimates = (
        estimate_hessian_cost(model, load_dataset(record.dataset).split(split), config, device)
        for model, record in loaded
    )
    return reduce(add, estimates)


def hessians_of(
    workspace: Workspace,
    model_ids: Sequence[str],
    config: HessianConfig = HessianConfig(),
    split: str = "test",
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> dict[str, HessianReport]:
    """:func:`hessian_of` for several models, one after the other, as one task, once the limits of ``config`` hold
    for all of them together (:func:`hessian_cost_of`)."""
    check_hessian_limits(hessian_cost_of(workspace, model_ids, config, split, device), config)
    return {
        model_id: hessian_of(
            workspace, model_id, config, split, device, scaled(progress, index, len(model_ids), model_id)
        )
        for index, model_id in enumerate(model_ids)
    }


def fusion_pairs(record: ModelRecord) -> list[tuple[str, str]]:
    """The interpolations that tell a two-parent fusion's story: A-B, A-fused, B-fused."""
    if len(record.parents) != 2:
        raise ConfigError(f"{record.id} has {len(record.parents)} parents; the fusion landscape needs exactly two")
    a, b = record.parents
    return [(a, b), (a, record.id), (b, record.id)]


def averages_aligned(record: ModelRecord) -> bool:
    """Whether a model was made by a method that averages aligned parents (:attr:`MethodSpec.output`)."""
    return record.method in REGISTRY and method_spec(record.method).output == "aligned average"


ALIGNED_LINES = {"A-B aligned": False, "A-B aligned + REPAIR": True}
"""The interpolations between the parents in the fused model's neuron order, plain and REPAIRed at every point."""


def aligned_parents(workspace: Workspace, fused_id: str, device: torch.device | None = None) -> list[torch.nn.Module]:
    """The two parents of a fusion by averaging (``average``, ``ot``, ``matching``) in the fused model's neuron
    order: its alignment run again with its stored options, which is deterministic, so it gives the maps it used."""
    record = workspace.record(fused_id)
    if not averages_aligned(record):
        raise ConfigError(f"{fused_id} was fused by {record.method}, which does not align its parents by averaging")
    parents = [workspace.load(parent)[0] for parent in record.parents]
    options = {**record.provenance.get("options", {}), "repair": False, "recompute_bn": False}
    result = fuse(parents, record.method, data=load_dataset(record.dataset), device=device, **options)
    return result.aligned


def aligned_lines(
    workspace: Workspace,
    fused_id: str,
    config: LandscapeConfig = LandscapeConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> dict[str, InterpolationResult]:
    """The lines of :data:`ALIGNED_LINES` for a fusion by averaging, stored with the fused model."""
    record = workspace.record(fused_id)
    a, b = aligned_parents(workspace, fused_id, device)
    data = load_dataset(record.dataset)
    results = {}
    for index, (name, repair) in enumerate(ALIGNED_LINES.items()):
        report = scaled(progress, index, len(ALIGNED_LINES), name)
        labels = (parent_role(0), parent_role(1))
        result = linear_interpolation(a, b, data, config, device, report, labels, repair=repair)
        key = landscape_key(aligned_kind(repair), [fused_id])
        save_landscape(workspace, fused_id, key, "interpolation", record.parents, record.dataset, config, result)
        results[name] = result
    return results


def aligned_kind(repair: bool) -> str:
    return "aligned-repaired" if repair else "aligned"


def fusion_landscape(
    workspace: Workspace,
    fused_id: str,
    config: LandscapeConfig = LandscapeConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> dict[str, LandscapeResult]:
    """For a model fused from two parents: the three interpolations of :func:`fusion_pairs`, for a fusion by
    averaging the two of :func:`aligned_lines`, and the plane through (parent A, parent B, fused); each is stored and
    returned under ``"A-B"``, ``"A-fused"``, ``"B-fused"``, the names of :data:`ALIGNED_LINES` and ``"plane"``."""
    workspace = LoadOnce(workspace)  # the lines, the plane and the cost estimate share the loaded models
    record = workspace.record(fused_id)
    pairs = fusion_pairs(record)
    check_limits(fusion_landscape_cost(workspace, fused_id, config, device), config)
    names = ["A-B", "A-fused", "B-fused"]
    parts = 5 if averages_aligned(record) else 4
    results: dict[str, LandscapeResult] = {}
    for index, (name, pair) in enumerate(zip(names, pairs)):
        results[name] = landscape_of(
            workspace, pair, "interpolation", config, device=device, progress=scaled(progress, index, parts, name)
        )
    if averages_aligned(record):
        results.update(aligned_lines(workspace, fused_id, config, device, scaled(progress, 3, parts, "aligned")))
    results["plane"] = landscape_of(
        workspace,
        [*record.parents, fused_id],
        "plane",
        config,
        device=device,
        progress=scaled(progress, parts - 1, parts, "plane"),
    )
    return results


def fusion_landscape_cost(
    workspace: Workspace, fused_id: str, config: LandscapeConfig = LandscapeConfig(), device: torch.device | None = None
) -> CostEstimate:
    """The cost of :func:`fusion_landscape`: its three lines and its plane, summed. Raises :class:`GridTooLarge` when
    one grid has more than ``config.max_points`` points, before anything is measured."""
    record = workspace.record(fused_id)
    runs = [(pair, "interpolation", config.resolution) for pair in fusion_pairs(record)]
    runs.append(([*record.parents, fused_id], "plane", config.resolution**2))
    for _, _, points in runs:
        check_points(points, config)
    costs = [landscape_cost(workspace, ids, kind, config, device=device) for ids, kind, _ in runs]
    if averages_aligned(record):
        model, _ = workspace.load(fused_id)
        data = load_dataset(record.dataset)
        costs += [estimate_cost(model, data, config.resolution * (1 + repair_passes(model)), config, device, bases=2)]
    return reduce(add, costs)


def stored_fusion_landscape(workspace: Workspace, fused_id: str) -> dict[str, LandscapeResult]:
    """What :func:`fusion_landscape` stored for this model (the parts computed so far)."""
    record = workspace.record(fused_id)
    found: dict[str, LandscapeResult] = {}
    for name, pair in zip(["A-B", "A-fused", "B-fused"], fusion_pairs(record)):
        result = stored_landscape(workspace, pair, "interpolation")
        if result is not None:
            found[name] = result
    for name, repair in ALIGNED_LINES.items():
        payload = workspace.load_result(fused_id, landscape_key(aligned_kind(repair), [fused_id]))
        if payload is not None:
            found[name] = InterpolationResult.from_dict(payload)
    surface = stored_landscape(workspace, [*record.parents, fused_id], "plane")
    if surface is not None:
        found["plane"] = surface
    return found


def eigenvector_overlaps_of(
    workspace: Workspace,
    fused_id: str,
    config: HessianConfig = HessianConfig(),
    split: str = "test",
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[EigenvectorOverlap]:
    """The overlap of a stored fusion's top Hessian eigenvectors with each parent's (:mod:`analysis.overlap`), the
    parents' mapped by the fusion's stored maps; stored with the fused model as its ``overlap`` result."""
    record = workspace.record(fused_id)
    check_mapped(record.method)
    fused, _ = workspace.load(fused_id)
    parents = [workspace.load(parent_id)[0] for parent_id in record.parents]
    data = load_dataset(record.dataset)
    groups = neuron_groups(split_attention_layers(fused).cpu(), data.x_train[:2])
    maps: list[dict[str, Transport] | None] = [None] * len(parents)
    for stored in stored_maps(workspace, fused_id):
        if maps[stored.model] is None:
            maps[stored.model] = {}
        maps[stored.model][stored.group] = Transport.from_plan(stored.plan)
    progress(0, 1, f"top {config.top_k} eigenvectors of {len(parents) + 1} models")
    overlaps = eigenvector_overlaps(fused, parents, maps, groups, data.split(split), config, device)
    workspace.save_result(
        fused_id, OVERLAP, {"split": split, "overlaps": [o.to_dict() for o in overlaps], "config": config.to_dict()}
    )
    progress(1, 1, "done")
    return overlaps


def stored_overlaps(workspace: Workspace, fused_id: str) -> list[EigenvectorOverlap] | None:
    payload = workspace.load_result(fused_id, OVERLAP)
    return [EigenvectorOverlap.from_dict(o) for o in payload["overlaps"]] if payload else None
