"""One entry point for every fusion method: ``fuse(models, method, **options) -> FusionResult``.

``models`` are any ``nn.Module`` of one architecture (widths may differ for ``ot``); ``data`` (a
:class:`fusion.data.Dataset`) or ``inputs`` (a tensor of training inputs) supply the samples that activation features,
BatchNorm recomputation and REPAIR need. Without either, a fusion that reads only the weights (weights-mode ``ot`` and
``matching``, ``average``, networks without BatchNorm or with ``recompute_bn=False``) runs on the weights alone: the
networks are traced, and hard alignments verified, on seeded random inputs; an option that needs data is refused by
name (:func:`options_needing_data`). Each method lives in :mod:`fusion.methods` and is registered in :data:`REGISTRY`
with its options dataclass and its details record; :func:`resolve` looks a method up by name and builds its options,
the one lookup every front end goes through.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time
from collections.abc import Mapping, Sequence
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
from fusion.methods.base import Context, Details, GroupReport, LazyModels, MethodOutput, MethodSpec, Survival
from fusion.methods.cla import CLADetails, CLAOptions, run_cla
from fusion.methods.intra import IntraDetails, IntraOptions, PruneDetails, PruneOptions, run_intra, run_prune
from fusion.methods.ot import FusionOptions, MatchingOptions, OTOptions, run_matching, run_ot
from fusion.methods.sparsify import SparsifyDetails, SparsifyOptions, run_sparsify
from fusion.methods.transplant import NT_FINETUNE, TransplantDetails, TransplantOptions, run_transplant
from fusion.progress import Progress, no_progress
from fusion.records import Record, RecordError, from_json
from fusion.repair import repair
from fusion.transport import Transport, load_solvers

REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "average", FusionOptions, run_average, 2, None, "vanilla weight averaging, no alignment", "identical"
        ),
        MethodSpec(
            "ensemble",
            FusionOptions,
            run_ensemble,
            2,
            None,
            "prediction ensemble: the mean of the members' logits",
            output="ensemble",
        ),
        MethodSpec(
            "ot",
            OTOptions,
            run_ot,
            2,
            None,
            "OT fusion (Singh & Jaggi 2020): align neurons by optimal transport, then average",
            solvers=True,
        ),
        MethodSpec(
            "matching",
            MatchingOptions,
            run_matching,
            2,
            None,
            "permutation matching (Git Re-Basin), then average",
            solvers=True,
        ),
        MethodSpec(
            "cla",
            CLAOptions,
            run_cla,
            2,
            2,
            "CLAFusion (Nguyen et al. 2023): align layers across depths, balance depths, then OT fusion",
            parents="other depths",
            output="network",
            solvers=True,
            details=CLADetails,
        ),
        MethodSpec(
            "intra",
            IntraOptions,
            run_intra,
            1,
            1,
            "Intra-Fusion: prune one model by merging removed neurons into kept ones with OT",
            output="pruned",
            solvers=True,
            details=IntraDetails,
        ),
        MethodSpec(
            "prune",
            PruneOptions,
            run_prune,
            1,
            1,
            "magnitude pruning: keep the largest neurons, drop the rest",
            output="pruned",
            details=PruneDetails,
        ),
        MethodSpec(
            "sparsify",
            SparsifyOptions,
            run_sparsify,
            1,
            1,
            "unstructured pruning: zero the smallest weights (L1), keep the architecture",
            output="pruned",
            details=SparsifyDetails,
        ),
        MethodSpec(
            "transplant",
            TransplantOptions,
            run_transplant,
            2,
            None,
            "Neuron Transplantation: concatenate, keep the largest neurons, fine-tune",
            output="network",
            finetune=NT_FINETUNE,
            details=TransplantDetails,
        ),
    )
}
"""Every method by name, in the order the app and the command line list them."""

BATCHNORM_SAMPLES = 5000
RANDOM_INPUTS = 16
"""How many seeded random inputs trace the networks and probe hard alignments when a fusion is given no data."""


def methods() -> tuple[str, ...]:
    return tuple(REGISTRY)


@dataclass(frozen=True)
class FusionReport(Record):
    """What a fusion did: method, the full options, wall time, per-group reports, sweeps used per model, the max
    logit difference of each verified hard alignment (``None`` where not applicable), notes, and the method's
    ``details``, the record its :class:`MethodSpec` names (:class:`Details` for the methods with none)."""

    method: str
    options: dict[str, Any]
    seconds: float
    groups: list[GroupReport] = field(default_factory=list)
    sweeps: list[int] = field(default_factory=list)
    verified: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: Details = field(default_factory=Details)

    @classmethod
    def from_dict(cls, data: Any) -> FusionReport:
        """The codec's reading (:func:`fusion.records.from_json`), with ``details`` read as the record of the
        report's method; a method no longer registered keeps none (:class:`Details`)."""
        if not isinstance(data, Mapping):
            raise RecordError(f"FusionReport: expected an object, got {type(data).__name__}")
        report = from_json(cls, {k: v for k, v in data.items() if k != "details"})
        kind = REGISTRY[report.method].details if report.method in REGISTRY else Details
        return dataclasses.replace(report, details=from_json(kind, data.get("details") or {}))

    def survival(self) -> list[Survival]:
        """Which neurons the method kept (:meth:`Details.survival`), in network order: the order of ``groups``
        (stored JSON keeps the details' groups sorted by name, which puts ``classifier.1`` before ``features.0``)."""
        position = {group.name: index for index, group in enumerate(self.groups)}
        return sorted(self.details.survival(), key=lambda table: position.get(table.group, len(position)))

    def worst_verified(self) -> float | None:
        """The largest max |logit difference| of the verified hard alignments, ``None`` when none was verified."""
        return max((error for error in self.verified if error is not None), default=None)


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


@dataclass(frozen=True)
class Resolved:
    """A method looked up by name (its registry entry, ``spec``) with its options built and checked (``options``, an
    instance of ``spec.options``)."""

    spec: MethodSpec
    options: Any

    @property
    def reference(self) -> int:
        """The input model whose widths and neuron order the result keeps: the ``reference`` option where the method
        has one, else the first model."""
        return getattr(self.options, "reference", 0)


def resolve(method: str, options: Mapping[str, Any] | Any = None) -> Resolved:
    """``method``'s registry entry with its options: the defaults for ``None``, built from a mapping of option names
    to values (lists read as tuples), or an instance of the method's options class taken as it is. An unknown
    method, an option the method does not have, options of another class and refused values raise
    :class:`ConfigError` saying what was expected.

    >>> resolved = resolve("ot", {"mode": "activations"})
    >>> type(resolved.options).__name__, resolved.options.mode, resolved.spec.max_models
    ('OTOptions', 'activations', None)
    >>> resolve("intra", {"sparsity": 0.5, "rows": "mean"})
    Traceback (most recent call last):
    ...
    fusion.errors.ConfigError: rows must be one of rescaled, barycentre, sum, got 'mean'
    """
    if method not in REGISTRY:
        raise ConfigError(f"unknown fusion method {method!r}; expected one of {', '.join(REGISTRY)}")
    spec = REGISTRY[method]
    if type(options) is spec.options:
        return Resolved(spec, options)
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(
            f"{method} takes its options as a {spec.options.__name__} or a mapping of option names to values, got a "
            f"{type(options).__name__}"
        )
    given = dict(options or {})
    known = {f.name for f in dataclasses.fields(spec.options)}
    unknown = set(given) - known
    if unknown:
        raise ConfigError(
            f"{method} has no option {', '.join(sorted(unknown))}; its options are {', '.join(sorted(known))}"
        )
    try:
        return Resolved(spec, spec.options(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}))
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
    method: str | Resolved,
    *,
    data: Dataset | None = None,
    inputs: torch.Tensor | None = None,
    input_shape: Sequence[int] | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    **options: Any,
) -> FusionResult:
    """Fuse ``models`` with ``method``, one of the methods listed below, its ``options`` the fields of the method's
    options class (each with the papers' default and a one-line help; :func:`resolve` builds and checks them), or
    with a :class:`Resolved` method whose options are built already. The input models are never modified.

    ``data`` or ``inputs`` supply training inputs. Without them the fusion runs on the weights alone, tracing the
    networks on random inputs of ``input_shape`` (the shape of one input, e.g. ``(C, H, W)``; read off a first
    ``Linear`` layer when not given, :func:`random_inputs`), and an option that needs data raises
    :class:`ConfigError` naming it (:func:`options_needing_data`) before any work. The result's report
    (:class:`FusionReport`) carries the method's details record.

    >>> from fusion.models import ModelSpec, build_model
    >>> spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,))
    >>> parents = [build_model(spec, seed=0), build_model(spec, seed=1)]
    >>> result = fuse(parents, "ot")  # weights mode: no data needed
    >>> type(result.model).__name__, sum(p.numel() for p in result.model.parameters())
    ('MLP', 1210)
    >>> result.report.verified[1] < 1e-4
    True
    >>> pruned = fuse(parents[:1], "prune", sparsity=0.25)
    >>> [table.kept.count(True) for table in pruned.report.survival()]
    [12]
    """
    if isinstance(method, Resolved):
        if options:
            raise ConfigError("a resolved method carries its options: give them to resolve(), not to fuse()")
        resolved = method
    else:
        resolved = resolve(method, options)
    spec, config = resolved.spec, resolved.options
    spec.check_models(len(models))
    reference = resolved.reference
    if not 0 <= reference < len(models):
        raise ConfigError(f"reference must index one of the {len(models)} models, got {reference}")
    pool = inputs if inputs is not None else (data.x_train if data is not None else None)
    if pool is not None and len(pool) == 0:
        raise DatasetError("the training inputs are empty")
    shapes = None
    if pool is None:
        needs = options_needing_data(config, models)
        if needs:
            raise ConfigError(f"{spec.name} was given no data (data= or inputs=), and {'; '.join(needs)}")
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
        spec.name,
        dataclasses.asdict(config),
        time.perf_counter() - started,
        [dataclasses.replace(r, heads=heads.get(r.name, 1)) for r in output.group_reports],
        output.sweeps,
        output.verified,
        notes,
        output.details,
    )
    return FusionResult(model.eval(), output.transports, output.groups, report, aligned)


def method_list() -> str:
    """Every registered method, one line each: its name, options class, details class and summary."""
    return "\n".join(
        f"- ``{name}`` (options :class:`{spec.options.__name__}`, details :class:`{spec.details.__name__}`): "
        f"{spec.summary}"
        for name, spec in REGISTRY.items()
    )


if fuse.__doc__:
    fuse.__doc__ += "\n    Methods:\n\n" + textwrap.indent(method_list(), "    ") + "\n"
