"""One entry point for every fusion method: ``fuse(models, method, **options) -> FusionResult``.

``models`` are any ``nn.Module`` of one architecture (widths may differ for ``ot``); ``data`` (a
:class:`fusion.data.Dataset`) or ``inputs`` (a tensor of training inputs) supply the samples that activation features,
BatchNorm recomputation and the verification of hard alignments need. Each method lives in :mod:`fusion.methods` and
is registered in :data:`REGISTRY` with its options dataclass.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fusion.attention_layouts import join_attention_layers, split_attention_layers
from fusion.batchnorm import has_batchnorm, recompute_batchnorm
from fusion.data import Dataset
from fusion.device import default_device
from fusion.errors import ConfigError, DatasetError
from fusion.groups import NeuronGroup, neuron_groups
from fusion.methods.average import run_average, run_ensemble
from fusion.methods.base import Context, GroupReport, LazyModels, MethodOutput, MethodSpec
from fusion.methods.cla import CLAOptions, run_cla
from fusion.methods.intra import IntraOptions, PruneOptions, run_intra, run_prune
from fusion.methods.ot import FusionOptions, MatchingOptions, OTOptions, run_matching, run_ot
from fusion.methods.sparsify import SparsifyOptions, run_sparsify
from fusion.methods.transplant import TransplantOptions, run_transplant
from fusion.progress import Progress, no_progress
from fusion.records import Record
from fusion.repair import repair
from fusion.transport import Transport

REGISTRY: dict[str, MethodSpec] = {
    "average": MethodSpec(
        FusionOptions, run_average, 2, None, "vanilla weight averaging, no alignment", parents="identical"
    ),
    "ensemble": MethodSpec(
        FusionOptions, run_ensemble, 2, None, "prediction ensemble: the mean of the members' logits", output="ensemble"
    ),
    "ot": MethodSpec(
        OTOptions, run_ot, 2, None, "OT fusion (Singh & Jaggi 2020): align neurons by optimal transport, then average"
    ),
    "matching": MethodSpec(MatchingOptions, run_matching, 2, None, "permutation matching (Git Re-Basin), then average"),
    "cla": MethodSpec(
        CLAOptions,
        run_cla,
        2,
        2,
        "CLAFusion (Nguyen et al. 2023): align layers across depths, balance depths, then OT fusion",
        parents="other depths",
        output="network",
    ),
    "intra": MethodSpec(
        IntraOptions,
        run_intra,
        1,
        1,
        "Intra-Fusion: prune one model by merging removed neurons into kept ones with OT",
        output="pruned",
    ),
    "prune": MethodSpec(
        PruneOptions, run_prune, 1, 1, "magnitude pruning: keep the largest neurons, drop the rest", output="pruned"
    ),
    "sparsify": MethodSpec(
        SparsifyOptions,
        run_sparsify,
        1,
        1,
        "unstructured pruning: zero the smallest weights (L1), keep the architecture",
        output="pruned",
    ),
    "transplant": MethodSpec(
        TransplantOptions,
        run_transplant,
        2,
        None,
        "Neuron Transplantation: concatenate, keep the largest neurons, fine-tune",
        output="network",
    ),
}
BATCHNORM_SAMPLES = 5000


def methods() -> tuple[str, ...]:
    return tuple(REGISTRY)


@dataclass(frozen=True)
class FusionReport(Record):
    """What a fusion did: method, the full options, wall time, per-group reports, sweeps used per model, the max
    logit difference of each verified hard alignment (``None`` where not applicable), notes and method details."""

    method: str
    options: dict[str, Any]
    seconds: float
    groups: list[GroupReport] = field(default_factory=list)
    sweeps: list[int] = field(default_factory=list)
    verified: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FusionResult:
    """The fused model (an ensemble wrapper for ``method="ensemble"``), the maps that aligned each model to the
    reference (``None`` for the reference and for methods without maps), the neuron groups, the report, and for the
    methods that average (average, ot, matching) the input models in the fused model's neuron order."""

    model: nn.Module
    transports: list[dict[str, Transport] | None]
    groups: list[NeuronGroup]
    report: FusionReport
    aligned: Sequence[nn.Module] = field(default_factory=list)


def method_spec(method: str) -> MethodSpec:
    """The registry entry of ``method``; an unknown name raises ConfigError listing the known ones."""
    if method not in REGISTRY:
        raise ConfigError(f"unknown fusion method {method!r}; expected one of {', '.join(REGISTRY)}")
    return REGISTRY[method]


def method_options(method: str, options: dict[str, Any]) -> Any:
    """The options dataclass of ``method`` built from keyword options; unknown names or values raise ConfigError."""
    cls = method_spec(method).options
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - known
    if unknown:
        raise ConfigError(
            f"{method} has no option {', '.join(sorted(unknown))}; its options are {', '.join(sorted(known))}"
        )
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"invalid {method} options: {exc}") from exc


def repaired(output: MethodOutput, config: Any, context: Context) -> str:
    """Apply REPAIR (:mod:`fusion.repair`) to ``output.model`` against its aligned parents; the report's note."""
    if not output.aligned:
        raise ConfigError("repair applies to the methods that average models: average, ot and matching")
    if context.pool is None:
        raise ConfigError("REPAIR measures neuron statistics on training inputs (data= or inputs=)")
    groups = output.groups or neuron_groups(output.model.cpu(), context.example())
    subset = context.sample(BATCHNORM_SAMPLES, seed=0)
    return repair(output.model, output.aligned, groups, subset, config.weights, context.device).note()


def fuse(
    models: Sequence[nn.Module],
    method: str,
    *,
    data: Dataset | None = None,
    inputs: torch.Tensor | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    **options: Any,
) -> FusionResult:
    """Fuse ``models`` with ``method`` (see :data:`REGISTRY`); each options class documents its options and
    defaults. The input models are never modified."""
    config = method_options(method, options)
    spec = REGISTRY[method]
    if len(models) < spec.min_models or (spec.max_models is not None and len(models) > spec.max_models):
        wanted = f"{spec.min_models}" + (
            "" if spec.max_models == spec.min_models else f" to {spec.max_models or 'any number of'}"
        )
        raise ConfigError(f"{method} takes {wanted} models, got {len(models)}")
    reference = getattr(config, "reference", 0)
    if not 0 <= reference < len(models):
        raise ConfigError(f"reference must index one of the {len(models)} models, got {reference}")
    pool = inputs if inputs is not None else (data.x_train if data is not None else None)
    if pool is not None and len(pool) == 0:
        raise DatasetError("the training inputs are empty")
    probe = data.x_test[:256] if data is not None else (pool[:256] if pool is not None else None)
    labels = data.y_train if data is not None and inputs is None else None
    context = Context(pool, probe, device or default_device(), progress, labels)
    started = time.perf_counter()
    inputs_given = {id(m) for m in models}
    if spec.output != "ensemble":
        models = [split_attention_layers(m) for m in models]
    output = spec.run(models, config, context)
    notes: list[str] = []
    if spec.output == "ensemble":
        notes.append("the ensemble's members keep their own BatchNorm statistics")
    elif getattr(config, "recompute_bn", False) and has_batchnorm(output.model):
        if pool is None:
            raise ConfigError("recomputing BatchNorm statistics needs training inputs (data= or inputs=)")
        subset = context.sample(BATCHNORM_SAMPLES, seed=0)
        recompute_batchnorm(output.model, subset, context.device)
        notes.append(f"BatchNorm statistics recomputed on {len(subset)} training inputs")
    if getattr(config, "repair", False):
        notes.append(repaired(output, config, context))
    model = join_attention_layers(output.model)
    aligned = LazyModels.of(output.aligned).map(lambda m: m if id(m) in inputs_given else join_attention_layers(m))
    heads = {g.name: g.heads for g in output.groups}
    report = FusionReport(
        method,
        dataclasses.asdict(config),
        time.perf_counter() - started,
        [dataclasses.replace(r, heads=heads.get(r.name, 1)) for r in output.group_reports],
        output.sweeps,
        output.verified,
        notes,
        output.details,
    )
    return FusionResult(model.eval(), output.transports, output.groups, report, aligned)
