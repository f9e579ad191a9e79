"""One-shot fusion of two digits ViTs: which alignment of a transformer reaches a working model before fine-tuning (not
run in CI; issue 33).

Three pairs of the zoo's ``vit`` (4 blocks, 4 heads, width 1; the demo's recipe, Adam at 2e-3 for 30 epochs, seeds
``2p`` and ``2p + 1``) are trained on the digits training split minus a held-out validation split of 300 examples,
and cached under ``--cache``. Each pair is fused by every setting below, and the table gives, as mean ± sd over the
pairs: the fused model's validation and test accuracy before any fine-tuning, and the test-loss barrier (nats,
:func:`analysis.landscape.loss_barrier`, 11 points) along the aligned line (reference parent to the other parent
aligned to it) and along the unaligned line (the parents as trained). Settings are chosen on the validation column;
the test split is only reported. About 5 minutes on 2 idle CPU cores for the training, 5 for the table.

    .venv/bin/python bench/vit_oneshot.py [--pairs 3] [--cache /tmp/vit_oneshot_cache]
        [--settings average "ot, orthogonal + REPAIR"]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.landscape import LandscapeConfig, linear_interpolation
from fusion.data import Dataset, load_dataset
from fusion.models import build_model, default_spec
from fusion.registry import fuse
from fusion.train import TrainConfig, evaluate, train

VALIDATION = 300
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "average": ("average", {}),
    "ot, permutations (the default before issue 33)": ("ot", {"orthogonal": False}),
    "ot, permutations, sinkhorn 0.05 + REPAIR": (
        "ot",
        {"orthogonal": False, "solver": "sinkhorn", "reg": 0.05, "repair": True},
    ),
    "ot (default: orthogonal stream and heads, weights)": ("ot", {}),
    "ot, orthogonal, activations": ("ot", {"mode": "activations"}),
    "ot, orthogonal + REPAIR": ("ot", {"repair": True}),
    "ot, orthogonal, activations + REPAIR": ("ot", {"mode": "activations", "repair": True}),
    "ot, orthogonal, sinkhorn 0.05 in the MLPs + REPAIR": ("ot", {"solver": "sinkhorn", "reg": 0.05, "repair": True}),
}


def split_validation(data: Dataset) -> tuple[Dataset, torch.Tensor, torch.Tensor]:
    """The training data less :data:`VALIDATION` held-out examples (seed 0), and those examples."""
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
    held, kept = order[:VALIDATION], order[VALIDATION:]
    trained = dataclasses.replace(data, x_train=data.x_train[kept], y_train=data.y_train[kept])
    return trained, data.x_train[held], data.y_train[held]


def parents(data: Dataset, pairs: int, cache: Path) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """``pairs`` pairs of digits ViTs trained with the demo's recipe, read from ``cache`` when stored there."""
    spec = default_spec("vit", data.input_shape, data.num_classes)
    cache.mkdir(parents=True, exist_ok=True)
    models = []
    for seed in range(2 * pairs):
        model = build_model(spec, seed=seed)
        path = cache / f"vit_seed{seed}.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            started = time.perf_counter()
            train(model, data, TrainConfig(epochs=30, lr=2e-3, batch_size=64, seed=seed), torch.device("cpu"))
            torch.save(model.state_dict(), path)
            print(f"trained seed {seed} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        models.append(model.eval())
    return [(models[2 * p], models[2 * p + 1]) for p in range(pairs)]


def barrier(model_a: torch.nn.Module, model_b: torch.nn.Module, data: Dataset) -> float:
    config = LandscapeConfig(resolution=11)
    return linear_interpolation(model_a, model_b, data, config, torch.device("cpu")).test_barrier


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * sd:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vit_oneshot_cache"))
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    full = load_dataset("digits")
    data, x_val, y_val = split_validation(full)
    pairs = parents(data, args.pairs, args.cache)
    device = torch.device("cpu")
    accuracy = [evaluate(m, full.x_test, full.y_test, device).accuracy for pair in pairs for m in pair]
    unaligned = [barrier(a, b, data) for a, b in pairs]
    print(f"parents: test accuracy {mean_sd(accuracy, 100)} %; unaligned test barrier {mean_sd(unaligned, digits=2)}")
    print("| setting | validation acc. (%) | test acc. (%) | test barrier, aligned | test barrier, unaligned |")
    print("| --- | --- | --- | --- | --- |")
    for label in args.settings:
        method, options = SETTINGS[label]
        rows: dict[str, list[float]] = {"val": [], "test": [], "aligned": []}
        for a, b in pairs:
            result = fuse([a, b], method, data=data, device=device, **options)
            rows["val"].append(evaluate(result.model, x_val, y_val, device).accuracy)
            rows["test"].append(evaluate(result.model, full.x_test, full.y_test, device).accuracy)
            ends = result.aligned if len(result.aligned) == 2 else (a, b)
            rows["aligned"].append(barrier(ends[0], ends[1], data))
        print(
            f"| {label} | {mean_sd(rows['val'], 100)} | {mean_sd(rows['test'], 100)} | "
            f"{mean_sd(rows['aligned'], digits=2)} | {mean_sd(unaligned, digits=2)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
