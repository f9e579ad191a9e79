"""One entry point for every fusion method: ``fuse(models, method, **options) -> FusionResult``.

``models`` are any ``nn.Module`` of one architecture (widths may differ for ``ot``); ``data`` (a
:class:`fusion.data.Dataset`) or ``inputs`` (a tensor of training inputs) supply the samples that activation features,
BatchNorm recomputation and the verification of hard alignments need.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from fusion.alignment import with_state
from fusion.batchnorm import has_batchnorm, recompute_batchnorm
from fusion.data import Dataset
from fusion.device import default_device
from fusion.errors import ConfigError, DatasetError
from fusion.groups import NeuronGroup, neuron_groups
from fusion.methods.average import Ensemble, average_states
from fusion.methods.ot import FusionOptions, MatchingOptions, OTOptions, aligned_average
from fusion.train import Progress, no_progress
from fusion.transport import Transport

OPTIONS: dict[str, type] = {"average": FusionOptions, "ensemble": FusionOptions, "ot": OTOptions, "matching": MatchingOptions}
METHODS = tuple(OPTIONS)
BATCHNORM_SAMPLES = 5000


@dataclass(frozen=True)
class GroupReport:
    """One neuron group: its name, width in each model, transport cost and seconds for each aligned model."""

    name: str
    widths: list[int]
    costs: list[float | None]
    seconds: list[float | None]


@dataclass(frozen=True)
class FusionReport:
    """What a fusion did: method, the full options, wall time, per-group reports, sweeps used per model, and the max
    logit difference of each verified hard alignment (``None`` where not applicable)."""

    method: str
    options: dict[str, Any]
    seconds: float
    groups: list[GroupReport] = field(default_factory=list)
    sweeps: list[int] = field(default_factory=list)
    verified: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class FusionResult:
    """The fused model (an :class:`Ensemble` for ``method="ensemble"``), the maps that aligned each model to the
    reference (``None`` for the reference and for methods without maps), the neuron groups, and the report."""

    model: nn.Module
    transports: list[dict[str, Transport] | None]
    groups: list[NeuronGroup]
    report: FusionReport


def method_options(method: str, options: dict[str, Any]) -> Any:
    """The options dataclass of ``method`` built from keyword options; unknown names or values raise ConfigError."""
    if method not in OPTIONS:
        raise ConfigError(f"unknown fusion method {method!r}; expected one of {', '.join(METHODS)}")
    cls = OPTIONS[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - known
    if unknown:
        raise ConfigError(f"{method} has no option {', '.join(sorted(unknown))}; its options are {', '.join(sorted(known))}")
    if isinstance(options.get("weights"), list):
        options = {**options, "weights": tuple(options["weights"])}
    return cls(**options)


def training_inputs(data: Dataset | None, inputs: torch.Tensor | None) -> torch.Tensor | None:
    if inputs is not None:
        return inputs
    return data.x_train if data is not None else None


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
    """Fuse ``models`` with ``method`` (``average``, ``ensemble``, ``ot``, ``matching``); see each options class for the
    options and their defaults. The input models are never modified."""
    config = method_options(method, options)
    if len(models) < 2:
        raise ConfigError(f"fusion needs at least two models, got {len(models)}")
    device = device or default_device()
    pool = training_inputs(data, inputs)
    if pool is not None and len(pool) == 0:
        raise DatasetError("the training inputs are empty")
    started = time.perf_counter()
    notes: list[str] = []
    if method == "ensemble":
        return FusionResult(Ensemble(models).eval(), [None] * len(models), [], FusionReport(method, config.to_dict(), time.perf_counter() - started))
    if not 0 <= config.reference < len(models):
        raise ConfigError(f"reference must index one of the {len(models)} models, got {config.reference}")
    reference = models[config.reference]
    example = pool[:2] if pool is not None else None
    if method == "average":
        fused = with_state(reference, average_states([m.state_dict() for m in models], config.weights))
        groups: list[NeuronGroup] = []
        transports: list[dict[str, Transport] | None] = [None] * len(models)
        sweeps: list[int] = []
        verified: list[float | None] = []
        group_reports: list[GroupReport] = []
    else:
        if example is None:
            raise ConfigError(f"{method} fusion needs training inputs (data= or inputs=) to trace the network")
        align_options = config.align_options() if isinstance(config, MatchingOptions) else config
        groups = neuron_groups(reference.cpu(), example.cpu())
        sample = None
        if align_options.mode == "activations":
            generator = torch.Generator().manual_seed(align_options.seed)
            sample = pool[torch.randperm(len(pool), generator=generator)[: align_options.samples]]
        probe = data.x_test[:256] if data is not None else pool[:256]
        result = aligned_average(models, groups, align_options, config, sample, probe, device, progress)
        fused, transports, sweeps, verified = result.model, result.transports, result.sweeps, result.verified
        group_reports = [
            GroupReport(
                name=g.name,
                widths=[t[g.name].shape[0] if t else group_width(m, g) for t, m in zip(transports, models)],
                costs=[c.get(g.name) if c else None for c in result.costs],
                seconds=[s.get(g.name) if s else None for s in result.seconds],
            )
            for g in groups
        ]
    if config.recompute_bn and has_batchnorm(fused):
        if pool is None:
            raise ConfigError("recomputing BatchNorm statistics needs training inputs (data= or inputs=)")
        generator = torch.Generator().manual_seed(0)
        subset = pool[torch.randperm(len(pool), generator=generator)[:BATCHNORM_SAMPLES]]
        recompute_batchnorm(fused, subset, device)
        notes.append(f"BatchNorm statistics recomputed on {len(subset)} training inputs")
    report = FusionReport(method, config.to_dict(), time.perf_counter() - started, group_reports, sweeps, verified, notes)
    return FusionResult(fused.eval(), transports, groups, report)


def group_width(model: nn.Module, group: NeuronGroup) -> int:
    layer = dict(model.named_modules())[group.layers[0]]
    return int(layer.weight.shape[0])
