"""Analyses of workspace models, stored with them: the calls behind the Hessian and Loss-landscape pages and the
command line. Each loads the models and their dataset (with the normalisation they were trained with), computes,
and stores the result beside the first model as a record keyed by its settings (:mod:`fusion.results`): a run with
the settings of a stored record returns that record's result, a run with other settings adds a record and replaces
none, and each record carries the command line that recomputes it."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from functools import reduce
from operator import add

import torch

from analysis.cost import SPREAD, CostEstimate, training_cost
from analysis.hessian import (
    HESSIAN_PRODUCTS,
    HessianReport,
    check_hessian_limits,
    check_products,
    estimate_hessian_cost,
    hessian_report,
)
from analysis.hessian_config import HessianConfig
from analysis.hessian_spectrum import sample_data
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
    split_sample,
)
from analysis.overlap import EigenvectorOverlap, check_mapped, eigenvector_overlaps
from fusion.attention_layouts import split_attention_layers
from fusion.command_lines import command_line, non_default
from fusion.data import load_dataset
from fusion.device import default_device
from fusion.distributed import is_writer
from fusion.errors import ArchitectureError, ConfigError, FusionError
from fusion.groups import neuron_groups
from fusion.models import build_model
from fusion.progress import Progress, no_progress
from fusion.registry import REGISTRY, fuse, resolve
from fusion.repair import repair as renormalise_to_parents
from fusion.results import ResultRecord, result_key
from fusion.transport import Transport
from fusion.workspace import LoadOnce, ModelRecord, Workspace
from studies.pipeline import DemoMember, demo_members, parent_role, train_key
from studies.stored_maps import stored_maps
from studies.story import BASELINES as STORY_BASELINES
from studies.story import Story

HESSIAN = "hessian"
OVERLAP = "overlap"
LANDSCAPE = "landscape-{kind}"
LANDSCAPE_MODELS = {"interpolation": 2, "plane": 3, "random": 1}
LandscapeResult = InterpolationResult | PlaneResult | RandomDirectionsResult


def model_role(record: ModelRecord, index: int) -> str:
    """The colour role of a model: trained or imported models are parents by position, derived ones by provenance."""
    if record.method in ("train", "import"):
        return parent_role(index)
    if record.method == "finetune":
        return "fine-tuned"
    output = resolve(record.method).spec.output if record.method in REGISTRY else None
    if output in ("pruned", "ensemble"):
        return output
    return "fused"


def model_roles(records: Sequence[ModelRecord]) -> list[str]:
    """The colour roles of models shown together: the trained or imported ones are parents A, B, ... in their order
    among themselves (a fused model between them takes no letter), the others by provenance (:func:`model_role`):
    [trained, ot, trained, ensemble] are parent A, fused, parent B and ensemble."""
    parents = [record.method in ("train", "import") for record in records]
    return [model_role(record, sum(parents[:index])) for index, record in enumerate(records)]


def hessian_of(
    workspace: Workspace,
    model_id: str,
    config: HessianConfig = HessianConfig(),
    split: str = "test",
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> HessianReport:
    """Top-k eigenvalues, trace, density and perturbation curves of a workspace model on its dataset's ``split``,
    stored as a ``hessian`` record of the model keyed by ``config`` and ``split``; the result of a stored record of
    these settings is returned without computing."""
    settings = hessian_settings(workspace.record(model_id), config, split)
    stored = workspace.find_result(model_id, HESSIAN, result_key(HESSIAN, [model_id], settings))
    if stored is not None:
        return HessianReport.from_dict(stored.payload)
    model, record = workspace.load(model_id)
    data = load_dataset(record.dataset)
    splits = {name: data.split(name) for name in ("train", "test")}
    others = parent_states(workspace, record, model, device) if config.lines_to_parents else {}
    report = hessian_report(
        model, data.split(split), config, device, progress, evaluation=splits, split=split, others=others
    )
    if is_writer():
        payload = {"model": model_id, "dataset": record.dataset, "split": split, **report.to_dict()}
        command = hessian_command(model_id, config, split)
        workspace.save_result(
            model_id, ResultRecord.make(HESSIAN, [model_id], settings, payload, report.seconds, command)
        )
    return report


def hessian_settings(record: ModelRecord, config: HessianConfig, split: str) -> dict:
    """What a Hessian result depends on besides the model: the resolved options, the split and the dataset."""
    return {"config": config.to_dict(), "split": split, "dataset": record.dataset}


def hessian_command(model_id: str, config: HessianConfig, split: str) -> str:
    """The command line that computes this Hessian result."""
    return command_line(["hessian", model_id], {**non_default(HessianConfig, config.to_dict()), "split": split})


def hessian_record(
    workspace: Workspace, model_id: str, config: HessianConfig | None = None, split: str = "test"
) -> ResultRecord | None:
    """The stored Hessian record of ``model_id`` with ``config`` on ``split`` (a result stored before records existed
    matches by the config and split it names); with no ``config``, its newest."""
    stored = workspace.results(model_id, HESSIAN)
    if config is None:
        return next(iter(stored), None)
    key = result_key(HESSIAN, [model_id], hessian_settings(workspace.record(model_id), config, split))
    return next((r for r in stored if r.key == key or legacy_match(r, config, split)), None)


def legacy_match(stored: ResultRecord, config: HessianConfig, split: str) -> bool:
    """Whether a Hessian result stored before records existed was made with ``config`` on ``split``."""
    if not stored.legacy_result or stored.settings.get("split", "test") != split:
        return False
    try:
        return HessianConfig.from_dict(stored.settings.get("config", {})) == config
    except FusionError:
        return False


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


def stored_hessian(
    workspace: Workspace, model_id: str, config: HessianConfig | None = None, split: str = "test"
) -> HessianReport | None:
    """The report of :func:`hessian_record`, or ``None``."""
    found = hessian_record(workspace, model_id, config, split)
    return HessianReport.from_dict(found.payload) if found is not None else None


def landscape_settings(kind: str, config: LandscapeConfig, dims: int, dataset: str) -> dict:
    """What a landscape of ``kind`` depends on besides its models (``dims`` only for random directions)."""
    return {"config": config.to_dict(), "dataset": dataset, **({"dims": dims} if kind == "random" else {})}


def landscape_command(model_ids: Sequence[str], kind: str, config: LandscapeConfig, dims: int = 2) -> str | None:
    """The ``landscape`` command line that computes this landscape, or ``None`` where ``config`` sets an option that
    the command line does not take."""
    flags = {"resolution": config.resolution, "samples": config.samples, "seed": config.seed}
    if kind == "random":
        flags.update(dims=dims, range=config.span)
    cli = {"resolution", "samples", "seed", "span", "recompute_batchnorm"}
    if non_default(LandscapeConfig, {k: v for k, v in config.to_dict().items() if k not in cli}):
        return None
    defaults = LandscapeConfig()
    shown = {k: v for k, v in flags.items() if v is not None and v != getattr(defaults, k, None)}
    line = command_line(["landscape", "--models", *model_ids, "--kind", kind], shown)
    return line + (" --recompute-batchnorm" if config.recompute_batchnorm else "")


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
    normalised directions (one model, ``dims`` 1 or 2); stored beside the first model as a ``landscape-<kind>``
    record (:func:`save_landscape`), whose result is returned without computing when these settings have one."""
    models, records = landscape_models(workspace, model_ids, kind)
    stored = stored_landscape(workspace, model_ids, kind, config, dims)
    if stored is not None:
        return stored
    data = load_dataset(records[0].dataset)
    roles = model_roles(records)
    result: LandscapeResult
    if kind == "interpolation":
        result = linear_interpolation(models[0], models[1], data, config, device, progress, labels=(roles[0], roles[1]))
    elif kind == "plane":
        result = plane(models, data, config, device, progress, labels=(roles[0], roles[1], roles[2]))
    else:
        result = random_directions(models[0], data, dims, config, device, progress, label=roles[0])
    command = landscape_command(model_ids, kind, config, dims)
    save_landscape(workspace, kind, model_ids, records[0].dataset, config, result, dims, command)
    return result


def save_landscape(
    workspace: Workspace,
    kind: str,
    model_ids: Sequence[str],
    dataset: str,
    config: LandscapeConfig,
    result: LandscapeResult,
    dims: int = 2,
    command: str | None = None,
) -> None:
    """Store ``result`` as a ``landscape-<kind>`` record of the first of ``model_ids``, keyed by its settings
    (rank 0 only in a distributed run)."""
    payload = {"kind": kind, "model_ids": list(model_ids), "dataset": dataset, "config": config.to_dict()}
    if is_writer():
        settings = landscape_settings(kind, config, dims, dataset)
        seconds = getattr(result, "seconds", None)
        record = ResultRecord.make(
            LANDSCAPE.format(kind=kind), model_ids, settings, {**payload, **result.to_dict()}, seconds, command
        )
        workspace.save_result(model_ids[0], record)


def landscape_records(workspace: Workspace, model_ids: Sequence[str], kind: str) -> list[ResultRecord]:
    """The stored ``kind`` landscapes over exactly ``model_ids`` (kept with the first), the
    newest first."""
    stored = workspace.results(model_ids[0], LANDSCAPE.format(kind=kind))
    return [r for r in stored if r.models == list(model_ids)]


def landscape_result(record: ResultRecord) -> LandscapeResult:
    """The result a landscape record holds."""
    kind = record.kind.removeprefix("landscape-")
    factory = {"plane": PlaneResult, "random": RandomDirectionsResult}.get(kind, InterpolationResult)
    return factory.from_dict(record.payload)


def landscape_record(
    workspace: Workspace,
    model_ids: Sequence[str],
    kind: str,
    config: LandscapeConfig | None = None,
    dims: int = 2,
) -> ResultRecord | None:
    """The stored ``kind`` landscape record over ``model_ids`` made with ``config`` (and ``dims``); with no
    ``config``, the newest; ``None`` when there is none."""
    stored = landscape_records(workspace, model_ids, kind)
    if config is not None:
        dataset = workspace.record(model_ids[0]).dataset
        key = result_key(LANDSCAPE.format(kind=kind), model_ids, landscape_settings(kind, config, dims, dataset))
        stored = [r for r in stored if r.key == key]
    return stored[0] if stored else None


def stored_landscape(
    workspace: Workspace,
    model_ids: Sequence[str],
    kind: str,
    config: LandscapeConfig | None = None,
    dims: int = 2,
) -> LandscapeResult | None:
    """The result of :func:`landscape_record`, or ``None``."""
    found = landscape_record(workspace, model_ids, kind, config, dims)
    return landscape_result(found) if found is not None else None


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
    """What :func:`hessians_of` would cost, summed over the models it computes (a model with a stored result for these
    settings costs nothing), with the time of this estimate, which the run makes first. Raises :class:`CostLimitError`
    above ``config.max_products`` products in all, counted from the parameter shapes before anything is measured."""
    if not model_ids:
        raise ConfigError("choose at least one model")
    started = time.perf_counter()
    loaded = [workspace.load(model_id) for model_id in model_ids]
    check_products([model for model, _ in loaded], config)
    estimates = [hessian_cost_of_one(workspace, model, record, config, split, device) for model, record in loaded]
    return reduce(add, estimates).plus_seconds(time.perf_counter() - started)  # hessians_of checks this estimate first


def hessian_cost_of_one(
    workspace: Workspace,
    model: torch.nn.Module,
    record: ModelRecord,
    config: HessianConfig,
    split: str,
    device: torch.device | None,
) -> CostEstimate:
    """The cost of :func:`hessian_of` for one loaded model: none when stored, else :func:`estimate_hessian_cost` with
    the sampled train and test splits its curves are evaluated on, a line to each parent of its shapes
    (:func:`parent_states`), and for a fusion by averaging the alignment run again (its stored ``fusion_seconds``)."""
    if hessian_record(workspace, record.id, config, split) is not None:
        return CostEstimate(0, HESSIAN_PRODUCTS, 0, 0, 0, 0.0, 0, 0.0, 0.0)
    data = load_dataset(record.dataset)
    estimate = estimate_hessian_cost(
        model,
        data.split(split),
        config,
        device,
        evaluated=sum(len(sample_data(data.split(name), config)[0]) for name in ("train", "test")),
        lines=len(parent_shapes(workspace, record)) if config.lines_to_parents else 0,
    )
    if config.lines_to_parents and averages_aligned(record) and len(record.parents) > 1:
        estimate = estimate + stored_seconds(record, estimate.unit)
    return estimate


def parent_shapes(workspace: Workspace, record: ModelRecord) -> list[str]:
    """The parents of ``record`` that :func:`parent_states` draws lines to: stored, with the model's architecture."""
    if not record.parents or not all(workspace.has(p) for p in record.parents):
        return []
    return [p for p in record.parents if workspace.record(p).spec == record.spec]


def stored_seconds(record: ModelRecord, unit: str) -> CostEstimate:
    """Running ``record``'s fusion again, at the seconds it took (``fusion_seconds``, measured when it was made)."""
    seconds = float(record.metrics.get("fusion_seconds", 0.0))
    return CostEstimate(0, unit, 0, 0, 0, seconds, 0, seconds / SPREAD, seconds * SPREAD)


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
    return record.method in REGISTRY and resolve(record.method).spec.output == "aligned average"


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
        save_landscape(workspace, aligned_kind(repair), [fused_id], record.dataset, config, result)
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
    """The cost of :func:`fusion_landscape`: its three lines, its aligned lines and its plane, summed, with the time of
    this estimate, which the run makes first. Raises :class:`GridTooLarge` when one grid has more than
    ``config.max_points`` points, before anything is measured."""
    started = time.perf_counter()
    record = workspace.record(fused_id)
    runs = [(pair, "interpolation", config.resolution) for pair in fusion_pairs(record)]
    runs.append(([*record.parents, fused_id], "plane", config.resolution**2))
    for _, _, points in runs:
        check_points(points, config)
    costs = [landscape_cost(workspace, ids, kind, config, device=device) for ids, kind, _ in runs]
    if averages_aligned(record):
        costs += aligned_lines_cost(workspace, record, config, device)
    return reduce(add, costs).plus_seconds(time.perf_counter() - started)  # fusion_landscape checks this first


def aligned_lines_cost(
    workspace: Workspace, record: ModelRecord, config: LandscapeConfig, device: torch.device | None
) -> list[CostEstimate]:
    """The cost of :func:`aligned_lines`: the alignment run again (the fusion's stored ``fusion_seconds``) and the
    two lines, the REPAIRed one timed with REPAIR at each point (toward the stored parents, which cost the same as the
    aligned ones: REPAIR's work depends on the shapes alone) after finding the neuron groups (timed here)."""
    model, _ = workspace.load(record.id)
    parents = [workspace.load(parent)[0] for parent in record.parents]
    data = load_dataset(record.dataset)
    started = time.perf_counter()
    groups = neuron_groups(copy.deepcopy(model).cpu(), data.x_train[:2])
    grouping = time.perf_counter() - started
    sample = split_sample(data, "train", config.samples, config.seed)[0]

    def renormalise(network: torch.nn.Module, weights: list[float]) -> None:
        renormalise_to_parents(network, parents, groups, sample, weights, device, config.batch_size)

    repaired = estimate_cost(model, data, config.resolution, config, device, 2, renormalise).plus_seconds(grouping)
    plain = estimate_cost(model, data, config.resolution, config, device, bases=2)
    return [stored_seconds(record, plain.unit), plain, repaired]


def stored_fusion_landscape(
    workspace: Workspace, fused_id: str, config: LandscapeConfig | None = None
) -> dict[str, LandscapeResult]:
    """What :func:`fusion_landscape` stored for this model with ``config`` (the parts computed so far; with no
    ``config``, the newest of each part)."""
    record = workspace.record(fused_id)
    found: dict[str, LandscapeResult | None] = {}
    for name, pair in zip(["A-B", "A-fused", "B-fused"], fusion_pairs(record)):
        found[name] = stored_landscape(workspace, pair, "interpolation", config)
    for name, repair in ALIGNED_LINES.items():
        found[name] = stored_landscape(workspace, [fused_id], aligned_kind(repair), config)
    found["plane"] = stored_landscape(workspace, [*record.parents, fused_id], "plane", config)
    return {name: result for name, result in found.items() if result is not None}


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
    started = time.time()
    overlaps = eigenvector_overlaps(fused, parents, maps, groups, data.split(split), config, device)
    settings = {"config": config.to_dict(), "split": split}
    payload = {**settings, "overlaps": [o.to_dict() for o in overlaps]}
    workspace.save_result(fused_id, ResultRecord.make(OVERLAP, [fused_id], settings, payload, time.time() - started))
    progress(1, 1, "done")
    return overlaps


def stored_overlaps(
    workspace: Workspace, fused_id: str, config: HessianConfig | None = None, split: str = "test"
) -> list[EigenvectorOverlap] | None:
    """The overlaps stored for ``fused_id`` with ``config`` on ``split`` (with no ``config``, the newest)."""
    stored = workspace.results(fused_id, OVERLAP)
    if config is not None:
        key = result_key(OVERLAP, [fused_id], {"config": config.to_dict(), "split": split})
        stored = [r for r in stored if r.key == key]
    return [EigenvectorOverlap.from_dict(o) for o in stored[0].payload["overlaps"]] if stored else None


def demo_build_cost(
    workspace: Workspace | None = None,
    members: Sequence[DemoMember] | None = None,
    device: torch.device | None = None,
) -> CostEstimate:
    """The cost of :func:`studies.pipeline.build_demo_ensemble`: the training (:func:`analysis.cost.training_cost`) of
    each member ``workspace`` lacks (every member without one), timed once per architecture and recipe (seeds cost
    the same); no work when every member is stored."""
    members = demo_members() if members is None else members
    data = load_dataset("digits")
    device = device or default_device()
    missing = [
        m for m in members if workspace is None or workspace.find_run(train_key(m.spec, data.name, m.config)) is None
    ]
    timed: dict[str, CostEstimate] = {}

    def recipe(member: DemoMember) -> str:
        return json.dumps([member.spec.to_dict(), {**member.config.to_dict(), "seed": 0}], sort_keys=True)

    for member in missing:
        if recipe(member) not in timed:
            timed[recipe(member)] = training_cost(build_model(member.spec, seed=0), data, member.config, device)
    costs = [timed[recipe(member)] for member in missing]
    return reduce(add, costs, CostEstimate(0, "optimizer steps", 0, 0, 0, 0.0, 0, 0.0, 0.0))


def story_step_cost(workspace: Workspace, story: Story, device: torch.device | None = None) -> CostEstimate | None:
    """The cost of the story's next step (:func:`studies.story.advance_story`) where training dominates it: the
    parents the workspace lacks (:func:`demo_build_cost`), the fine-tune of the transplanted model, and the two
    baselines' fine-tunes (each of a parent's shape); ``None`` for the concatenation and the pruning (no training)
    and once the story is finished."""
    device = device or default_device()
    config = story.options.finetune_config()
    data = load_dataset("digits")
    if story.parents is None:
        return demo_build_cost(workspace, story.options.members(), device)
    if story.pruning is not None and story.finetune is None and story.pruning.transplanted.id is not None:
        return training_cost(workspace.load(story.pruning.transplanted.id)[0], data, config, device)
    if story.finetune is not None and story.baselines is None:
        parent, _ = workspace.load(story.parents.ids[0])
        fine_tune = training_cost(parent, data, config, device)
        return reduce(add, [fine_tune] * len(STORY_BASELINES))
    return None
