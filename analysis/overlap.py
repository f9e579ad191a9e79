"""Do a fused model and its parents curve in the same directions? The overlap of their top Hessian eigenvectors.

A parent's eigenvectors live in the parent's neuron order. Fusion aligned the parent onto the reference by the maps
of every neuron group (:mod:`fusion.alignment`); the aligned parent's Hessian is ``P H P^T`` for a permutation ``P``,
so its eigenvectors are the parent's moved by the same maps (:func:`fusion.surgery.apply_transports`, applied to an
eigenvector as to parameters). The overlap of fused eigenvector ``u_i`` and mapped parent eigenvector ``P v_j`` is
``|u_i . P v_j| / ||P v_j||``: 1 when they are the same direction up to sign, 0 when orthogonal. For soft maps
(Sinkhorn, unequal widths) ``P v_j`` is the map's image of the direction, an approximation, and is renormalised.
Vanilla averaging keeps every model's own order (no maps); methods whose neurons do not come from the parents under a
map (transplant, CLAFusion, pruning) are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from analysis import AnalysisError
from analysis.hessian_config import HessianConfig
from analysis.hessian_spectrum import Hessian
from fusion.attention_layouts import differentiable_twin
from fusion.groups import NeuronGroup
from fusion.records import Record
from fusion.surgery import apply_transports
from fusion.transport import Transport

MAPPED_METHODS = ("average", "ot", "matching")


@dataclass(frozen=True, eq=False)
class EigenvectorOverlap(Record):
    """``overlap[i, j]`` between the fused model's eigenvector ``i`` and parent ``parent``'s eigenvector ``j``
    mapped into the fused model's order, with both sets of eigenvalues."""

    parent: int
    overlap: np.ndarray
    fused_eigenvalues: np.ndarray
    parent_eigenvalues: np.ndarray


def mapped_direction(
    direction: Mapping[str, torch.Tensor],
    model: nn.Module,
    groups: list[NeuronGroup],
    transports: dict[str, Transport] | None,
) -> dict[str, torch.Tensor]:
    """``direction`` (parameter names of ``model``) in the split-attention names of the groups, moved by
    ``transports`` (``None``: unmoved); entries that are not parameters are zero."""
    _, rename = differentiable_twin(model)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state.update({k: v.reshape(state[k].shape).to(state[k]) for k, v in direction.items()})
    state = rename(state)
    return apply_transports(state, groups, transports) if transports else state


def flat(state: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[n].reshape(-1).double().cpu() for n in names])


def eigenvector_overlaps(
    fused: nn.Module,
    parents: Sequence[nn.Module],
    transports: Sequence[dict[str, Transport] | None],
    groups: list[NeuronGroup],
    data: tuple[torch.Tensor, torch.Tensor],
    config: HessianConfig = HessianConfig(),
    device: torch.device | None = None,
) -> list[EigenvectorOverlap]:
    """The ``k x k`` overlap (``k = config.top_k``) of ``fused``'s top eigenvectors with each parent's, the parents'
    mapped by ``transports[p]`` (the fusion's maps of parent ``p`` onto the fused order; ``None`` for the reference
    and for averaging) over ``groups`` (the fused model's, attention split)."""
    if len(transports) != len(parents):
        raise AnalysisError(f"{len(parents)} parents but {len(transports)} sets of maps")
    top = Hessian(fused, data, device=device, config=config).top_eigenvalues()
    names = [k for k, v in mapped_direction({}, fused, groups, None).items() if v.is_floating_point()]
    fused_vectors = torch.stack(
        [flat(mapped_direction(top.direction(i), fused, groups, None), names) for i in range(len(top.eigenvalues))]
    )
    result = []
    for index, (parent, maps) in enumerate(zip(parents, transports)):
        own = Hessian(parent, data, device=device, config=config).top_eigenvalues()
        moved = torch.stack(
            [flat(mapped_direction(own.direction(j), parent, groups, maps), names) for j in range(len(own.eigenvalues))]
        )
        moved = moved / moved.norm(dim=1, keepdim=True).clamp_min(1e-12)
        overlap = (fused_vectors @ moved.T).abs().numpy()
        result.append(EigenvectorOverlap(index, overlap, top.eigenvalues, own.eigenvalues))
    return result


def check_mapped(method: str) -> None:
    if method not in MAPPED_METHODS:
        raise AnalysisError(
            f"a {method} model's neurons are not its parents' neurons under a map; eigenvector overlaps are defined "
            f"for {', '.join(MAPPED_METHODS)}"
        )
