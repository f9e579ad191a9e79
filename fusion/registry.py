"""One entry point for every fusion method: ``fuse(models, method, **options) -> FusionResult``.

``models`` are any ``nn.Module`` of one architecture (widths may differ for ``ot``); ``data`` (a
:class:`fusion.data.Dataset`) or ``inputs`` (a tensor of training inputs) supply the samples that activation features,
BatchNorm recomputation and REPAIR need. Without either, a fusion that reads only the weights (weights-mode ``ot`` and
``matching``, ``average``, networks without BatchNorm or with ``recompute_bn=False``) runs on the weights alone: the
networks are traced, and hard alignments verified, on seeded random inputs; an option that needs data is refused by
name (:func:`options_needing_data`). Each method lives in :mod:`fusion.methods` and is registered in :data:`REGISTRY`
with its options dataclass.
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
from fusion.methods.transplant import NT_FINETUNE, TransplantOptions, run_transplant
from fusion.progress import Progress, no_progress
from fusion.records import Record
from fusion.repair import repair
from fusion.transport import Transport, load_solvers

REGISTRY: dict[str, MethodSpec] = {
    "average": MethodSpec(
        FusionOptions, run_average, 2, None, "vanilla weight averaging, no alignment", parents="identical"
    ),
    "ensemble": MethodSpec(
        FusionOptions, run_ensemble, 2, None, "prediction ensemble: the mean of the members' logits", output="ensemble"
    ),
    "ot": MethodSpec(
        OTOptions,
        run_ot,
        2,
        None,
        "OT fusion (Singh & Jaggi 2020): align neurons by optimal transport, then average",
        solvers=True,
    ),
    "matching": MethodSpec(
        MatchingOptions, run_matching, 2, None, "permutation matching (Git Re-Basin), then average", solvers=True
    ),
    "cla": MethodSpec(
        CLAOptions,
        run_cla,
        2,
        2,
        "CLAFusion (Nguyen et al. 2023): align layers across depths, balance depths, then OT fusion",
        parents="other depths",
        output="network",
        solvers=True,
    ),
    "intra": MethodSpec(
        IntraOptions,
        run_intra,
        1,
        1,
        "Intra-Fusion: prune one model by merging removed neurons into kept ones with OT",
        output="pruned",
        solvers=True,
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
        finetune=NT_FINETUNE,
    ),
}
BATCHNORM_SAMPLES = 5000
RANDOM_INPUTS = 16
"""How many seeded random inputs trace the networks and probe hard alignments when a fusion is given no data."""


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


def options_needing_data(config: Any, models: Sequence[nn.Module]) -> list[str]:
    """The options of ``config`` (a method's options dataclass) that read training data when fusing ``models``, each
    as ``"NAME needs data: WHY"``; empty when the fusion reads the weights alone.

    Activation features (``mode``/``alignment`` ``activations``, CLAFusion's ``layer_cost`` other than ``widths`` and
    ``balance="merge"``), Taylor importance (``importance="taylor"``, labelled data), ``recompute_bn`` on networks
    with BatchNorm and ``repair`` measure the networks on training inputs; every other option reads only weights.
    """
    needs = []
    for name in ("mode", "alignment"):
        if getattr(config, name, None) == "activations":
            needs.append(f"{name}=activations needs data: neurons are compared by their activations on training inputs")
    if getattr(config, "layer_cost", "widths") != "widths":
        needs.append(f"layer_cost={config.layer_cost} needs data: layers are compared by their activations")
    if getattr(config, "balance", None) == "merge":
        needs.append("balance=merge needs data: merged layers take their ReLU patterns from training inputs")
    if getattr(config, "importance", None) == "taylor":
        needs.append("importance=taylor needs data: it scores neurons by loss gradients on labelled training data")
    if getattr(config, "recompute_bn", False) and any(has_batchnorm(m) for m in models):
        needs.append(
            "recompute_bn needs data: the parents have BatchNorm, whose running statistics are recomputed on "
            "training inputs after fusion (recompute_bn=False keeps the averaged statistics)"
        )
    if getattr(config, "repair", False):
        needs.append("repair needs data: REPAIR measures every neuron's mean and std on training inputs")
    return needs


def random_inputs(model: nn.Module, input_shape: Sequence[int] | None = None) -> torch.Tensor:
    """:data:`RANDOM_INPUTS` standard normal inputs ``(N, *input_shape)`` (seed 0), which trace a network and probe its
    hard alignments when a fusion is given no data: tracing reads only shapes, and a permutation that keeps a
    network's function keeps it on any input.

    Without ``input_shape`` it is read off the first layer a network registers when that is a ``Linear``
    (``(in_features,)``: flattened inputs); a first ``Conv2d`` or other layer does not tell the input's height and
    width, so :class:`ConfigError` asks for ``input_shape``.
    """
    if input_shape is None:
        first = next((m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)), None)
        if not isinstance(first, nn.Linear):
            kind = type(first).__name__ if first is not None else "no layer with weights"
            raise ConfigError(
                f"without data, the networks are traced on random inputs, whose shape cannot be read off the first "
                f"layer ({kind}): give input_shape=(C, H, W), or data= or inputs="
            )
        input_shape = (first.in_features,)
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ConfigError(f"input_shape must be positive sizes such as (C, H, W), got {tuple(input_shape)}")
    return torch.randn(RANDOM_INPUTS, *shape, generator=torch.Generator().manual_seed(0))


def repaired(output: MethodOutput, config: Any, context: Context) -> str:
    """Apply REPAIR (:mod:`fusion.repair`) to ``output.model`` against its aligned parents; the report's note."""
    if not output.aligned:
        raise ConfigError("repair applies to the methods that average models: average, ot and matching")
    groups = output.groups or neuron_groups(output.model.cpu(), context.example())
    subset = context.sample(BATCHNORM_SAMPLES, seed=0)
    return repair(output.model, output.aligned, groups, subset, config.weights, context.device).note()


def fuse(
    models: Sequence[nn.Module],
    method: str,
    *,
    data: Dataset | None = None,
    inputs: torch.Tensor | None = None,
    input_shape: Sequence[int] | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    **options: Any,
) -> FusionResult:
    """Fuse ``models`` with ``method`` (see :data:`REGISTRY`); each options class documents its options and
    defaults. The input models are never modified.

    ``data`` or ``inputs`` supply training inputs. Without them the fusion runs on the weights alone, tracing the
    networks on random inputs of ``input_shape`` (the shape of one input, e.g. ``(C, H, W)``; read off a first
    ``Linear`` layer when not given, :func:`random_inputs`), and an option that needs data raises
    :class:`ConfigError` naming it (:func:`options_needing_data`) before any work.

    >>> from fusion.models import ModelSpec, build_model
    >>> spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,))
    >>> result = fuse([build_model(spec, seed=0), build_model(spec, seed=1)], "ot")  # weights mode: no data needed
    >>> result.report.verified[1] < 1e-4
    True
    """
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
    shapes = None
    if pool is None:
        needs = options_needing_data(config, models)
        if needs:
            raise ConfigError(f"{method} was given no data (data= or inputs=), and {'; '.join(needs)}")
        shapes = None if spec.output == "ensemble" else random_inputs(models[reference], input_shape)
    probe = data.x_test[:256] if data is not None else (pool[:256] if pool is not None else shapes)
    labels = data.y_train if data is not None and inputs is None else None
    context = Context(pool, probe, device or default_device(), progress, labels, shapes)
    if spec.solvers:
        load_solvers()  # their first import is the process's start-up, not the fusion: kept out of report.seconds
    started = time.perf_counter()
    inputs_given = {id(m) for m in models}
    if spec.output != "ensemble":
        models = [split_attention_layers(m) for m in models]
    output = spec.run(models, config, context)
    notes: list[str] = []
    if shapes is not None:
        notes.append(f"fused on the weights alone (no data): traced and verified on {len(shapes)} random inputs")
    if spec.output == "ensemble":
        notes.append("the ensemble's members keep their own BatchNorm statistics")
    elif getattr(config, "recompute_bn", False) and has_batchnorm(output.model):
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
