"""Transport maps of a fused model (as saved with it: :func:`maps_from_tensors`), summarised per group.

For a plan ``T: (n, m)`` with total mass ``|T| = sum_ij T_ij``:

- ``permutation_distance = 1 - (sum_i max_j T_ij) / |T|``: the share of mass off each source neuron's main target;
  0 for a hard assignment, approaching ``1 - 1/m`` for a uniform (uninformative) plan;
- ``moved``: for square plans, how many neurons ``i`` are sent mainly to a target ``j != i`` (changed place);
- ``total_cost = <T, C>``.

Display order: source neurons sorted by their main target (ties by mass), so a permutation reads as a diagonal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from analysis.norms import network_order
from fusion.records import Record


@dataclass(frozen=True)
class GroupMap:
    """The map that aligned parent ``model`` to the reference on one neuron group, with its ground cost."""

    model: int
    group: str
    plan: np.ndarray
    cost: np.ndarray | None


@dataclass(frozen=True)
class MapSummary(Record):
    """Per group: shape ``(n, m)``, distance from a permutation, neurons that changed place, total cost."""

    model: int
    group: str
    sources: int
    targets: int
    permutation_distance: float
    moved: int | None
    total_cost: float | None


def maps_from_tensors(tensors: Mapping[str, torch.Tensor], report: Mapping) -> list[GroupMap]:
    """The maps of a fusion as saved with its model (``model<i>/<group>/plan`` and ``.../cost`` tensors), by parent and
    then in network order (the order of the groups in the fusion's ``report``; a safetensors file keeps its keys
    sorted by name, which puts ``classifier.1`` before ``features.0``); empty if none.

    >>> import torch
    >>> tensors = {"model1/fc2/plan": torch.eye(2), "model1/fc1/plan": torch.eye(3)}
    >>> [(m.group, m.plan.shape) for m in maps_from_tensors(tensors, {"groups": [{"name": "fc1"}, {"name": "fc2"}]})]
    [('fc1', (3, 3)), ('fc2', (2, 2))]
    """
    position = network_order(report)
    maps = []
    for key, plan in tensors.items():
        prefix, _, kind = key.rpartition("/")
        if kind != "plan":
            continue
        model, _, group = prefix.partition("/")
        cost = tensors.get(f"{prefix}/cost")
        maps.append(
            GroupMap(
                int(model.removeprefix("model")),
                group,
                plan.double().numpy(),
                None if cost is None else cost.double().numpy(),
            )
        )
    return sorted(maps, key=lambda m: (m.model, position.get(m.group, len(position))))


def stored_heads(report: dict) -> dict[str, int]:
    """The attention groups of a fusion's report (``FusionReport.to_dict()``) with their head counts."""
    return {g["name"]: int(g["heads"]) for g in report.get("groups", []) if int(g.get("heads") or 1) > 1}


def head_map(group_map: GroupMap, heads: int) -> GroupMap:
    """The map between whole attention heads: ``T_heads[a, b]`` is the mass that source head ``a``'s dimensions send
    to target head ``b``'s (the sum of the plan's ``(a, b)`` block). Heads are matched whole (:mod:`fusion.heads`),
    so every row has one non-zero entry, and its within-head plan is the block itself."""
    n, m = group_map.plan.shape
    blocks = group_map.plan.reshape(heads, n // heads, heads, m // heads)
    return GroupMap(group_map.model, f"{group_map.group} (heads)", blocks.sum(axis=(1, 3)), None)


def display_order(plan: np.ndarray) -> np.ndarray:
    """Source rows sorted by their main target, then by decreasing mass on it."""
    target = plan.argmax(1)
    mass = plan.max(1)
    return np.lexsort((-mass, target))


def summarise(group_map: GroupMap) -> MapSummary:
    plan = group_map.plan
    n, m = plan.shape
    total = float(plan.sum())
    distance = 1.0 - float(plan.max(1).sum()) / total if total > 0 else 0.0
    moved = int((plan.argmax(1) != np.arange(n)).sum()) if n == m else None
    cost = float((plan * group_map.cost).sum()) if group_map.cost is not None else None
    return MapSummary(group_map.model, group_map.group, n, m, max(distance, 0.0), moved, cost)


def sorted_map(group_map: GroupMap) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Plan and cost with rows in :func:`display_order`, and that order (the source neuron of each row)."""
    order = display_order(group_map.plan)
    cost = None if group_map.cost is None else group_map.cost[order]
    return group_map.plan[order], cost, order
