"""Which fusion method to pick: every method on six digits architectures, K = 2 and 3, over seeds (not run in CI).

For each architecture (MLP 128-64, CNN 16-32, the same CNN with BatchNorm, VGG11 with BatchNorm at width 1/4, ResNet-18
at width 1/4, the zoo's ViT at width 1; ``--architectures`` picks some) and each of ``--groups`` groups of three parents
trained from their own seeds, the first two (K = 2) and all three (K = 3) parents are fused by every method that fuses K
models: vanilla averaging, OT fusion by weights and by activations, weight matching (Git Re-Basin) and Neuron
Transplantation; the averaging ones also with REPAIR. Every fused model is then fine-tuned with the same short recipe.
Intra-Fusion and magnitude pruning (50 %) are run on every parent (K = 1); a method that refuses an architecture (a
typed ``FusionError``) leaves its cells empty and is listed under the table with its reason. The table gives test
accuracy (%) as mean ± standard deviation over the groups, beside the parents' mean, the best parent, the best parent
given the same fine-tune (the control: how much of a fused model's gain is only more training) and the prediction
ensemble, and the fusion's wall seconds. ``--json`` also writes every number. The whole run takes about 10 minutes on 2
CPU cores.

    .venv/bin/python bench/fusion_quality.py [--groups 3] [--finetune-epochs 5] [--architectures "ViT x1"]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusion.data import Dataset, load_dataset
from fusion.errors import FusionError
from fusion.models import ModelSpec, build_model, default_spec
from fusion.registry import fuse
from fusion.train import TrainConfig, evaluate, train

CPU = torch.device("cpu")
SHAPE = (1, 8, 8)
ARCHITECTURES: dict[str, tuple[ModelSpec, TrainConfig]] = {
    "MLP 128-64": (default_spec("mlp", SHAPE, 10), TrainConfig(epochs=30, lr=1e-3)),
    "CNN 16-32": (default_spec("cnn", SHAPE, 10), TrainConfig(epochs=20, lr=2e-3)),
    "CNN 16-32 BN": (default_spec("cnn", SHAPE, 10, batch_norm=True), TrainConfig(epochs=20, lr=2e-3)),
    "VGG11-BN x0.25": (default_spec("vgg11", SHAPE, 10, batch_norm=True), TrainConfig(epochs=20, lr=1e-3)),
    "ResNet-18 x0.25": (default_spec("resnet18", SHAPE, 10), TrainConfig(epochs=15, lr=1e-3)),
    "ViT x1": (default_spec("vit", SHAPE, 10), TrainConfig(epochs=30, lr=2e-3)),
}
FUSIONS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("average", "average", {}, True),
    ("OT, weights", "ot", {}, True),
    ("OT, activations", "ot", {"mode": "activations"}, True),
    ("OT, weights, Sinkhorn", "ot", {"solver": "sinkhorn", "reg": 0.05}, True),
    ("OT, activations, Sinkhorn", "ot", {"mode": "activations", "solver": "sinkhorn", "reg": 0.05}, True),
    ("matching", "matching", {}, True),
    ("transplant", "transplant", {}, False),
]
PRUNINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("intra 50 %", "intra", {"sparsity": 0.5}),
    ("prune 50 %", "prune", {"sparsity": 0.5}),
]


@dataclass
class Cell:
    """One table row's numbers, a list per column (one entry per group)."""

    parents: list[float] = field(default_factory=list)
    best_parent: list[float] = field(default_factory=list)
    best_parent_tuned: list[float] = field(default_factory=list)
    ensemble: list[float] = field(default_factory=list)
    fused: list[float] = field(default_factory=list)
    tuned: list[float] = field(default_factory=list)
    repaired: list[float] = field(default_factory=list)
    repaired_tuned: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def accuracy(model: torch.nn.Module, data: Dataset) -> float:
    return 100 * evaluate(model, data.x_test, data.y_test, device=CPU).accuracy


def fine_tuned(model: torch.nn.Module, data: Dataset, epochs: int) -> float:
    tuned = copy.deepcopy(model)
    train(tuned, data, TrainConfig(epochs=epochs, lr=1e-3, seed=0), device=CPU)
    return accuracy(tuned, data)


def fused(
    models: list[torch.nn.Module], method: str, options: dict[str, Any], data: Dataset, refusals: dict[str, str]
) -> tuple[torch.nn.Module | None, float]:
    """The fused model and its seconds; ``None`` when the method refuses the models (the reason kept in
    ``refusals``)."""
    started = time.perf_counter()
    try:
        model = fuse(models, method, data=data, device=CPU, **options).model
    except FusionError as exc:
        refusals[f"{method} {options}"] = str(exc)
        return None, 0.0
    return model, time.perf_counter() - started


def spread(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run(
    groups: int, epochs: int, architectures: list[str], refusals: dict[str, str]
) -> dict[tuple[str, int, str], Cell]:
    data = load_dataset("digits")
    cells: dict[tuple[str, int, str], Cell] = {}
    for arch in architectures:
        spec, recipe = ARCHITECTURES[arch]
        started = time.perf_counter()
        for group in range(groups):
            parents = []
            for seed in range(3 * group, 3 * group + 3):
                model = build_model(spec, seed=seed)
                train(model, data, TrainConfig(**{**recipe.to_dict(), "seed": seed}), device=CPU)
                parents.append(model.eval())
            scores = [accuracy(p, data) for p in parents]
            for k in (2, 3):
                chosen = parents[:k]
                ensemble = accuracy(fuse(chosen, "ensemble", data=data).model, data)
                best = max(range(k), key=lambda i: scores[i])
                best_tuned = fine_tuned(chosen[best], data, epochs)
                for label, method, options, repairable in FUSIONS:
                    cell = cells.setdefault((arch, k, label), Cell())
                    cell.parents.append(statistics.mean(scores[:k]))
                    cell.best_parent.append(scores[best])
                    cell.best_parent_tuned.append(best_tuned)
                    cell.ensemble.append(ensemble)
                    model, seconds = fused(chosen, method, options, data, refusals)
                    if model is None:
                        continue
                    cell.fused.append(accuracy(model, data))
                    cell.tuned.append(fine_tuned(model, data, epochs))
                    cell.seconds.append(seconds)
                    if repairable:
                        model, _ = fused(chosen, method, {**options, "repair": True}, data, refusals)
                        if model is not None:
                            cell.repaired.append(accuracy(model, data))
                            cell.repaired_tuned.append(fine_tuned(model, data, epochs))
            for label, method, options in PRUNINGS:
                cell = cells.setdefault((arch, 1, label), Cell())
                for parent, score in zip(parents, scores):
                    cell.parents.append(score)
                    model, seconds = fused([parent], method, options, data, refusals)
                    if model is None:
                        continue
                    cell.fused.append(accuracy(model, data))
                    cell.tuned.append(fine_tuned(model, data, epochs))
                    cell.seconds.append(seconds)
        print(f"{arch}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return cells


def table(cells: dict[tuple[str, int, str], Cell], epochs: int) -> str:
    lines = [
        f"| architecture | K | parents | best parent | best parent + fine-tune | ensemble | method | fused | "
        f"+ REPAIR | fine-tuned ({epochs} ep) | REPAIR + fine-tuned | fusion s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, k, label), c in cells.items():
        lines.append(
            f"| {arch} | {k} | {spread(c.parents)} | {spread(c.best_parent)} | {spread(c.best_parent_tuned)} | "
            f"{spread(c.ensemble)} | {label} | {spread(c.fused)} | "
            f"{spread(c.repaired)} | {spread(c.tuned)} | {spread(c.repaired_tuned)} | {spread(c.seconds, 2)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=3, help="groups of three parents (the spread is over groups)")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--architectures", nargs="+", choices=list(ARCHITECTURES), default=list(ARCHITECTURES))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    refusals: dict[str, str] = {}
    cells = run(args.groups, args.finetune_epochs, args.architectures, refusals)
    print(table(cells, args.finetune_epochs))
    for what, reason in refusals.items():
        print(f"refused: {what}: {reason}")
    print(f"\n{args.groups} groups, {time.perf_counter() - started:.0f} s in all, {torch.get_num_threads()} threads")
    if args.json:
        payload = [{"architecture": a, "K": k, "method": m, **vars(c)} for (a, k, m), c in cells.items()]
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
    own, children = (
        resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    print(f"peak resident memory: {own:.0f} MiB (this process), {children:.0f} MiB (its largest subprocess)")
