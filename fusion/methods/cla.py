"""CLAFusion: fuse two networks of different depth (Nguyen et al., "On Cross-Layer Alignment for Model Fusion of
Heterogeneous Neural Networks", ICASSP 2023; reference code hsgser/clafusion).

1. **Layer cost.** ``C: (m, n)`` between the ``m`` hidden layers of the deeper network and the ``n`` of the shallower
   one (the neuron groups in execution order for MLPs and VGGs, the residual blocks for ResNets). With
   ``X_l: (N, p_l)`` the activations of layer ``l`` on ``N`` training samples (pre-ReLU after BatchNorm, as the
   reference's ``--prelu-acts``; a ResNet block's output; conv maps flattened to ``C*H*W`` per sample) and ``a_i``
   the activation vector of neuron ``i`` over the samples (and positions):

   - ``cka`` (default; the layer measure of the reference's VGG and ResNet experiments, ``--layer-measure activation
     --layer-metric cka``): ``C_lk = 1 - CKA(X_l, Y_k)``, linear CKA (Kornblith et al., ICML 2019)
     ``CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with column-centred ``X_c, Y_c``; any
     two widths compare.
   - ``activations`` (``--layer-metric wd``): the Wasserstein distance between the layers' neurons as point clouds,
     ``C_lk = min_T <T, D>`` over couplings of the uniform measures on the ``p_l`` and ``q_k`` neurons,
     ``D_ij = ||a_i - b_j||`` (exact OT, so different widths compare); defined for layers with the same number of
     positions, i.e. within one VGG or ResNet stage.
   - ``widths`` (``--layer-measure neuron``, the reference's argparse default, data free):
     ``C_lk = (p_l - q_k)^2``. A weight-based cost has no counterpart in the paper: layers at different depths read
     different, unaligned inputs, so their incoming weights cannot be compared.

2. **Layer map** (:func:`align_layers`): the strictly increasing ``A: {0..n-1} -> {0..m-1}`` minimising
   ``sum_k C[A(k), k]`` with the first hidden layers matched (``A(0) = 0``, ``--start-layer-idx 2``) and, with
   ``match_last`` (``--free-end-layers 1``), the last ones too (``A(n-1) = m-1``); the output layers always match.
   Dynamic programme ``F[k, l] = min(F[k, l-1], F[k-1, l-1] + C[l, k])`` over the free layers, O(mn). VGGs and
   ResNets are aligned stage by stage (convs between max-pools; blocks of one stage), as in the reference, so that
   balancing keeps the deep layout.

3. **Balancing** (:mod:`fusion.methods.depth_balance`): ``identity`` inserts identity layers into the shallower
   network where ``A`` leaves deep layers unmatched (identity matrices, centre-1 kernels, residual blocks with a zero
   branch: exactly function preserving); ``merge`` (MLPs only) merges the unmatched layers of the deeper network
   into their successors (approximate: their ReLUs become diagonal matrices).

4. **OT fusion** with unequal widths (:func:`fusion.methods.ot.run_aligned_average`). ``onto`` picks the network
   the other one is aligned onto, whose widths the fused model keeps: ``shallow`` (default, as the reference code:
   the deep net is aligned onto the balanced shallow one, so after ``identity`` the fused model has the deep layout at
   the shallow widths, e.g. 400-200-200-200-100) or ``deep``. ``correction`` (default ``reference``, otfusion's
   ``T diag(1/beta)`` on both sides, as the reference code) or ``marginals`` (the exact maps of
   :mod:`fusion.transport`). Both defaults were chosen by measurement beside the reference code
   (``bench/cla_reference.py``): on its MLP ablation pair (400-200-100-50-25 and 400-200-100, no bias, CKA layer
   cost, 200 samples) trained on digits padded to 28x28, five seed pairs, fused test accuracy before fine-tuning (%),
   reference code / shallow+reference / shallow+marginals / deep+reference / deep+marginals:
   84.2/84.2/75.6/84.2/65.8, 92.7/92.7/90.4/92.4/85.1, 90.7/90.7/87.3/89.8/80.9, 92.9/92.9/91.8/91.3/86.2,
   88.0/88.0/87.6/86.4/76.4.
   The defaults reproduce the reference's accuracy on every pair (same layer map, same maps); the former defaults
   (deep, marginals) were the worst of the four on every pair. ``marginals`` hands each merged neuron the sum of its
   sources' outgoing weights, which is exact for duplicates but, averaged with the other net, over-weights the
   aligned side when a 400-wide layer is merged into 100 neurons; the maps stay exact for a hard (one-to-one)
   alignment under either correction. Other defaults follow the reference's published runs: activation-based OT on
   200 samples, exact, Euclidean, no cost normalisation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from fusion.alignment import AlignOptions, activation_features
from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import neuron_groups
from fusion.methods.base import Context, Details, MethodOutput
from fusion.methods.depth_balance import (
    HiddenLayer,
    ReluApproximation,
    hidden_layers,
    insert_identity_layers,
    merge_layers,
)
from fusion.methods.ot import AverageOptions, run_aligned_average
from fusion.models import ModelSpec, family, spec_of, stage_sizes
from fusion.problems import Checks
from fusion.train import predict_logits
from fusion.transport import Correction, ground_cost, transport_plan

LayerCost = Literal["cka", "activations", "widths"]
Balance = Literal["identity", "merge"]
Onto = Literal["shallow", "deep"]


@dataclass(frozen=True)
class CLAOptions(AlignOptions, AverageOptions):
    """CLAFusion: how layers are compared and balanced, then :class:`AlignOptions` for the OT fusion of the balanced
    pair (activation-based by default, as in the reference's runs) and :class:`AverageOptions` for the average of the
    two."""

    mode: Literal["weights", "activations"] = field(
        default="activations",
        metadata={"help": "compare neurons by incoming weights or by activations on training samples"},
    )
    layer_cost: LayerCost = field(
        default="cka",
        metadata={
            "help": "layer cost: 1 - linear CKA, Wasserstein distance between activations, or squared width difference"
        },
    )
    balance: Balance = field(
        default="identity",
        metadata={"help": "add identity layers to the shallower net, or merge layers of the deeper MLP"},
    )
    onto: Onto = field(
        default="shallow",
        metadata={
            "help": (
                "align the deep net onto the balanced shallow one (the reference code; fused widths are the shallow "
                "net's) or the shallow onto the deep one"
            )
        },
    )
    correction: Correction = field(
        default="reference",
        metadata={
            "help": (
                "maps from the plan: exact for unequal widths (marginals), or otfusion's T/beta on both sides "
                "(reference, more accurate here)"
            )
        },
    )
    match_last: bool = field(default=True, metadata={"help": "match the last hidden layers as well as the first ones"})
    relu_approximation: ReluApproximation = field(
        default="sum",
        metadata={
            "help": (
                "merge: ReLU of a merged layer as a 0/1 diagonal (sum, majority), the firing rate (average), "
                "or dropped (none)"
            )
        },
    )
    weight_count: ClassVar[int | None] = 2

    def check(self, checks: Checks) -> None:
        AlignOptions.check(self, checks)
        AverageOptions.check(self, checks)


@dataclass(frozen=True)
class CLADetails(Details):
    """What CLAFusion did: the ``deep`` and ``shallow`` model indices, the ``layer_map`` (the deep hidden layer of
    each shallow one), the ``layer_cost`` used and its ``cost_matrix`` (``(deep, shallow)``, ``None`` where not
    needed), the ``balance``, the deep positions that got identity layers (``inserted``) or were merged away
    (``merged``), the ``balanced_spec``, the ``balance_error`` (max |logit difference| of the balanced network against
    its source on the probe batch: ~0 for identity layers), the model the other was aligned onto (``onto``: the fused
    widths are its balanced widths; ``None`` in reports stored before it was an option) and the model whose layout,
    i.e. depth and architecture, the fused network has (``spec_from``: the deep one after ``identity``, the shallow one
    after ``merge``)."""

    deep: int
    shallow: int
    layer_map: list[int]
    layer_cost: LayerCost
    cost_matrix: list[list[float | None]]
    balance: Balance
    inserted: list[int]
    merged: list[int]
    balanced_spec: ModelSpec
    balance_error: float
    spec_from: int
    onto: int | None = None

    def layout_parent(self, reference: int) -> int:
        return self.spec_from

    def lines(self) -> list[str]:
        return [f"CLAFusion layer map (shallow hidden layer → deep hidden layer): {self.layer_map}"]


def align_layers(cost: np.ndarray | Sequence[Sequence[float]], match_last: bool = True) -> list[int]:
    """The cross-layer alignment: for each of the ``n`` shallow hidden layers, the deep hidden layer it maps to.

    Solves ``min_A sum_k C[A(k), k]`` over strictly increasing ``A`` with ``A(0) = 0`` and, if ``match_last``,
    ``A(n-1) = m-1`` (a single shallow layer maps to the first deep one), by the dynamic programme of the module
    docstring. Ties go to the earlier deep layer.

    Parameters
    ----------
    cost : ``(m, n)`` finite costs, ``m >= n >= 1`` (deep layers in rows, shallow layers in columns).
    match_last : fix the last hidden layers to each other (the reference's ``--free-end-layers 1``).

    Returns
    -------
    ``A`` as a list of ``n`` deep layer indices.
    """
    matrix = np.asarray(cost, dtype=np.float64)
    if matrix.ndim != 2 or not matrix.shape[0] >= matrix.shape[1] >= 1:
        raise ConfigError(f"the layer cost must be (deep, shallow) with deep >= shallow >= 1, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ConfigError("the layer cost matrix has NaN or infinite entries")
    m, n = matrix.shape
    if n == 1:
        return [0]
    fixed_end = int(match_last)
    free, last = n - 1 - fixed_end, m - 1 - fixed_end
    table = np.full((free + 1, last + 1), np.inf)
    table[0, :] = 0.0
    for k in range(1, free + 1):
        for deep_index in range(k, last + 1):
            table[k, deep_index] = min(table[k, deep_index - 1], table[k - 1, deep_index - 1] + matrix[deep_index, k])
    result = [0] * n
    if match_last:
        result[-1] = m - 1
    deep_index = last
    for k in range(free, 0, -1):
        while deep_index > k and table[k, deep_index] == table[k, deep_index - 1]:
            deep_index -= 1
        result[k] = deep_index
        deep_index -= 1
    return result


def stagewise_layer_map(
    cost: np.ndarray, deep_stages: list[int], shallow_stages: list[int], match_last: bool
) -> list[int]:
    """:func:`align_layers` on each stage's block of ``cost`` (one stage for MLPs), in global layer indices."""
    if len(deep_stages) != len(shallow_stages) or any(n > m for m, n in zip(deep_stages, shallow_stages)):
        raise ArchitectureError(f"stages of {shallow_stages} layers do not fit into stages of {deep_stages} layers")
    result, row, column = [], 0, 0
    for m, n in zip(deep_stages, shallow_stages):
        result += [row + a for a in align_layers(cost[row : row + m, column : column + n], match_last)]
        row, column = row + m, column + n
    return result


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between ``x: (N, p)`` and ``y: (N, q)`` (Kornblith et al. 2019), through the centred Gram matrices
    ``K = X_c X_c^T``: ``<K, L>_F / (||K||_F ||L||_F)``; 0 when a layer is constant."""
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    gram_x, gram_y = x @ x.T, y @ y.T
    norm = float(gram_x.norm() * gram_y.norm())
    return float((gram_x * gram_y).sum()) / norm if norm > 0 else 0.0


def per_sample(features: torch.Tensor, samples: int) -> torch.Tensor:
    """``(neurons, samples * positions)`` activations as ``(samples, neurons * positions)``."""
    neurons = features.shape[0]
    return features.reshape(neurons, samples, -1).movedim(1, 0).reshape(samples, -1)


def layer_cost(a: torch.Tensor, b: torch.Tensor, how: Literal["cka", "activations"], samples: int) -> float | None:
    """The activation-based cost between two layers given their activations ``(neurons, samples * positions)`` (see
    the module docstring); ``None`` for ``activations`` when the layers have different numbers of positions."""
    if how == "cka":
        return 1.0 - linear_cka(per_sample(a, samples), per_sample(b, samples))
    if a.shape[1] != b.shape[1]:
        return None
    distances = ground_cost(a, b, "euclidean")
    return float((torch.from_numpy(transport_plan(distances)) * distances.double().cpu()).sum())


def layer_cost_matrix(
    deep: Sequence[HiddenLayer],
    shallow: Sequence[HiddenLayer],
    deep_features: dict[str, torch.Tensor],
    shallow_features: dict[str, torch.Tensor],
    deep_stages: list[int],
    shallow_stages: list[int],
    how: LayerCost,
    samples: int,
) -> np.ndarray:
    """``C: (deep, shallow)`` between the layers of matching stages (NaN elsewhere: the map never pairs them), from
    the layers' widths or their activations ``(neurons, samples * positions)`` keyed by layer name."""
    cost = np.full((len(deep), len(shallow)), np.nan)
    row, column = 0, 0
    for m, n in zip(deep_stages, shallow_stages):
        for deep_index, k in itertools.product(range(row, row + m), range(column, column + n)):
            if how == "widths":
                cost[deep_index, k] = float((deep[deep_index].size - shallow[k].size) ** 2)
                continue
            value = layer_cost(deep_features[deep[deep_index].name], shallow_features[shallow[k].name], how, samples)
            cost[deep_index, k] = np.nan if value is None else value
        row, column = row + m, column + n
    return cost


def run_cla(models: Sequence[nn.Module], options: CLAOptions, context: Context) -> MethodOutput:
    """Align the layers of two networks of different depth, balance their depths, and fuse them by OT.

    ``details``: a :class:`CLADetails`.
    """
    if len(models) != 2:
        raise ConfigError(f"CLAFusion fuses exactly two models, got {len(models)}")
    example = context.example()
    specs = [spec_of(model, tuple(example.shape[1:])) for model in models]
    a, b = specs
    if (family(a), a.num_classes, a.batch_norm, a.bias) != (family(b), b.num_classes, b.batch_norm, b.bias):
        raise ArchitectureError(
            f"CLAFusion needs two networks of one family with the same classes, BatchNorm and biases: got "
            f"{a.describe()} and {b.describe()}"
        )
    depths = [sum(stage_sizes(s)) for s in specs]
    if depths[0] == depths[1]:
        raise ConfigError(
            f"both networks have {depths[0]} hidden layers: CLAFusion is for different depths; fuse networks of equal "
            "depth with OT fusion (method 'ot'), which handles different widths"
        )
    deep = int(depths[1] > depths[0])
    shallow = 1 - deep
    groups = [neuron_groups(model.cpu(), example) for model in models]
    layers = [hidden_layers(m, s, g) for m, s, g in zip(models, specs, groups)]
    if [len(found) for found in layers] != depths:
        raise ArchitectureError(f"found {[len(found) for found in layers]} hidden layers, expected {depths}")
    needs_activations = options.layer_cost != "widths" or options.balance == "merge"
    sample = context.sample(options.samples, options.seed) if needs_activations else example
    features = [
        activation_features(m, found, sample, context.device) if needs_activations else {}
        for m, found in zip(models, layers)
    ]
    deep_stages, shallow_stages = stage_sizes(specs[deep]), stage_sizes(specs[shallow])
    cost = layer_cost_matrix(
        layers[deep],
        layers[shallow],
        features[deep],
        features[shallow],
        deep_stages,
        shallow_stages,
        options.layer_cost,
        len(sample),
    )
    layer_map = stagewise_layer_map(cost, deep_stages, shallow_stages, options.match_last)

    pair = list(models)
    if options.balance == "identity":
        balanced = insert_identity_layers(
            models[shallow], specs[shallow], groups[shallow], specs[deep], layer_map, example
        )
        source, layout = shallow, deep
    else:
        balanced = merge_layers(
            models[deep], specs[deep], groups[deep], layer_map, features[deep], options.relu_approximation, example
        )
        source, layout = deep, shallow
    pair[source] = balanced.model
    reference = shallow if options.onto == "shallow" else deep
    probe = context.probe if context.probe is not None else example
    difference = predict_logits(balanced.model, probe, context.device) - predict_logits(
        models[source], probe, context.device
    )
    output = run_aligned_average(pair, options, options, context, reference)
    details = CLADetails(
        deep=deep,
        shallow=shallow,
        layer_map=layer_map,
        layer_cost=options.layer_cost,
        cost_matrix=[[None if np.isnan(v) else float(v) for v in cost_row] for cost_row in cost],
        balance=options.balance,
        inserted=balanced.inserted,
        merged=balanced.merged,
        balanced_spec=balanced.spec,
        balance_error=float(difference.abs().max()),
        spec_from=layout,
        onto=reference,
    )
    return replace(output, details=details)
