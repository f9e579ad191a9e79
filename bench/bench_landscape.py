"""Throughput of a 2-D loss landscape against plain forward passes over the same data (not run in CI).

For each model, a ``resolution x resolution`` grid of filter-normalised random directions (Li et al. 2018) is evaluated
on the whole digits train and test splits with :func:`analysis.landscape.random_directions`, and the same points are
evaluated the plain way: load each point's weights into the model and call :func:`fusion.train.evaluate` on both
splits. Throughput is examples per second; the ratio ours / plain should be at least 0.5. Chunked evaluation
(``points_per_call`` > 1, ``vmap``) is timed too.

    .venv/bin/python bench/bench_landscape.py [--resolution 11] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import measured  # noqa: E402

from analysis.landscape import LandscapeConfig, filter_normalized_direction, random_directions
from analysis.states import float_state
from fusion.data import Dataset, load_dataset
from fusion.models import build_model, default_spec
from fusion.train import evaluate


def plain_grid(model: torch.nn.Module, data: Dataset, resolution: int, span: float, seed: int) -> float:
    """Seconds to evaluate the same grid by loading every point into the model and calling ``evaluate``."""
    generator = torch.Generator().manual_seed(seed)
    origin = float_state(model)
    first, second = filter_normalized_direction(model, generator), filter_normalized_direction(model, generator)
    alphas = torch.linspace(-span, span, resolution)
    work = copy.deepcopy(model).eval()
    started = time.perf_counter()
    for alpha in alphas:
        for beta in alphas:
            work.load_state_dict({k: origin[k] + alpha * first[k] + beta * second[k] for k in origin}, strict=False)
            evaluate(work, *data.split("train"), device=torch.device("cpu"))
            evaluate(work, *data.split("test"), device=torch.device("cpu"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    examples = len(data.x_train) + len(data.x_test)
    print(f"digits, {examples} examples per point, {args.resolution}x{args.resolution} grid, {args.threads} threads")
    for arch in ("mlp", "cnn", "resnet18"):
        model = build_model(default_spec(arch, data.input_shape, data.num_classes), seed=0).eval()
        resolution = args.resolution if arch != "resnet18" else max(3, args.resolution // 2)
        points = resolution**2
        plain, plain_mib, _ = measured(
            lambda model=model, resolution=resolution: plain_grid(model, data, resolution, 1.0, 0), 1, warmup=0
        )
        line = f"{arch:9s} plain {points * examples / plain:10.0f} ex/s, peak +{plain_mib:.0f} MiB"
        for per_call in (1, 8):
            config = LandscapeConfig(resolution=resolution, points_per_call=per_call, warn_seconds=1e9)
            ours, ours_mib, _ = measured(
                lambda config=config, model=model: random_directions(model, data, 2, config, torch.device("cpu")),
                1,
                warmup=0,
            )
            line += (
                f" | ours ({per_call} point{'s' if per_call > 1 else ''}/call) "
                f"{points * examples / ours:10.0f} ex/s, ratio {plain / ours:.2f}, peak +{ours_mib:.0f} MiB"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
