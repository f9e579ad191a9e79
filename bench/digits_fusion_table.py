"""Accuracy of every fusion method on the offline digits ensemble, before and after a short fine-tune.

    python bench/digits_fusion_table.py [--finetune-epochs 10] [--seeds 0 1 2]

Trains the demo MLPs and CNNs (fusion.pipeline.demo_members) in memory, fuses them with each method for K = 2 and 3,
fine-tunes every fused model with the same short recipe, and prints a Markdown table of test accuracies (%).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from fusion.data import load_dataset
from fusion.fuse import fuse
from fusion.models import build_model
from fusion.pipeline import demo_members
from fusion.train import TrainConfig, evaluate, train

METHODS = [
    ("average", {}),
    ("ot", {}),
    ("ot", {"mode": "activations"}),
    ("matching", {}),
    ("transplant", {}),
]


def accuracy(model: torch.nn.Module, data) -> float:
    return 100 * evaluate(model, *data.split("test"), device=torch.device("cpu")).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    data = load_dataset("digits")
    members = {m.spec.arch: m for m in demo_members(mlps=1, cnns=1)}
    print("| arch | K | parents | best parent | ensemble | method | fused | fine-tuned | fusion s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, member in members.items():
        parents = []
        for seed in args.seeds:
            model = build_model(member.spec, seed=seed)
            train(model, data, TrainConfig(**{**member.config.to_dict(), "seed": seed}), device=device)
            parents.append(model.eval())
        for k in (2, 3):
            chosen = parents[:k]
            scores = [accuracy(m, data) for m in chosen]
            ensemble = accuracy(fuse(chosen, "ensemble", data=data).model, data)
            for method, options in METHODS:
                started = time.perf_counter()
                fused = fuse(chosen, method, data=data, device=device, **options).model
                seconds = time.perf_counter() - started
                before = accuracy(fused, data)
                tuned = copy.deepcopy(fused)
                train(tuned, data, TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=0), device=device)
                label = method + "".join(f" {k}={v}" for k, v in options.items())
                print(
                    f"| {arch} | {k} | {', '.join(f'{s:.2f}' for s in scores)} | {max(scores):.2f} | {ensemble:.2f} | "
                    f"{label} | {before:.2f} | {accuracy(tuned, data):.2f} | {seconds:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
