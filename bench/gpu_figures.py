"""The GPU figures of issue 16 in one call of a few minutes on one CUDA GPU (not run in CI).

    .venv/bin/python bench/gpu_figures.py --out gpu-figures.json          # on the GPU machine
    .venv/bin/python bench/gpu_figures.py --quick                         # a tiny run of the same code, any device

Jobs, each on the device the library chooses (CUDA when present), with the peak GPU memory it allocated and the memory
still allocated after it (a job that leaks shows here):

1. **OT fusion of two CIFAR ResNet-18s with BatchNorm** (11.2M parameters each, seeds 0 and 1, exact weights-mode OT,
   BatchNorm statistics recomputed on the training inputs): median seconds of 3 after a warm-up, and the same fusion
   on the CPU for the ratio.
2. **A 21x21 landscape plane on 10,000 CIFAR-size inputs** (5,000 train and 5,000 test at every point) through the
   two parents and their fusion. The vmapped chunk (``points_per_call``) is chosen by measurement first: each
   candidate evaluates the same 16 points on 2,000 inputs, and the fastest (examples per second) runs the plane,
   beside the chunk the automatic rule would pick.
3. **Hessian top-1 eigenvalue and trace of a ResNet-18 on 1,000 inputs.** The Hessian-vector ``block_size`` is chosen
   by measurement first (seconds per vector of ``block_size`` products at once), then top-1 (Lanczos, tolerance 1e-3)
   and the trace (Hutchinson deflated by the Lanczos basis, 1 % error bar) run with it.

CIFAR-10 is used when it is in the data folder (``FUSIONLAB_DATA``); otherwise (the GPU machine is offline) seeded
Gaussian CIFAR-size inputs with random labels stand in: the costs measured here depend on shapes, not on pixel values.
The networks are at their seeded initialisation for the same reason. Everything is written as one JSON object (and
printed as a table).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.curvature.hessian import HessianOperator  # noqa: E402
from analysis.hessian_config import HessianConfig  # noqa: E402
from analysis.hessian_spectrum import Hessian  # noqa: E402
from analysis.landscape import LandscapeConfig, auto_points_per_call, plane  # noqa: E402
from fusion.data import Dataset, Normalization, load_dataset  # noqa: E402
from fusion.device import default_device  # noqa: E402
from fusion.errors import DatasetError  # noqa: E402
from fusion.models import ModelSpec, build_model  # noqa: E402
from fusion.registry import fuse  # noqa: E402

SPEC = ModelSpec("resnet18", (3, 32, 32), 10, batch_norm=True, bias=False)
CHUNKS = (1, 2, 4, 8, 16, 32, 64)
BLOCKS = (1, 2, 4, 8, 16, 32)


def cifar(train: int, test: int) -> Dataset:
    """CIFAR-10 from the data folder, cut to ``train`` and ``test`` examples, or seeded Gaussian stand-ins."""
    try:
        data = load_dataset("cifar10")
        return Dataset(
            "cifar10",
            data.x_train[:train],
            data.y_train[:train],
            data.x_test[:test],
            data.y_test[:test],
            10,
            data.normalization,
        )
    except DatasetError:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(train + test, *SPEC.input_shape, generator=generator)
        y = torch.randint(0, 10, (train + test,), generator=generator)
        return Dataset(
            "gaussian-cifar-size", x[:train], y[:train], x[train:], y[train:], 10, Normalization((0.0,) * 3, (1.0,) * 3)
        )


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def job(device: torch.device, call: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``call``; its seconds, the peak GPU memory it allocated above the start, and what is still allocated
    above the start once its result is dropped (MiB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    result = call()
    synchronise(device)
    figures = {"seconds": time.perf_counter() - started}
    if device.type == "cuda":
        figures["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return result, figures


def freed(device: torch.device, baseline: int) -> float:
    """MiB still allocated above ``baseline`` after collecting garbage and emptying the cache."""
    gc.collect()
    if device.type != "cuda":
        return 0.0
    torch.cuda.empty_cache()
    return (torch.cuda.memory_allocated(device) - baseline) / 2**20


def median_seconds(device: torch.device, call: Callable[[], Any], repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        synchronise(device)
        started = time.perf_counter()
        call()
        synchronise(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fusion_figures(data: Dataset, device: torch.device, repeat: int) -> dict[str, Any]:
    a, b = build_model(SPEC, seed=0), build_model(SPEC, seed=1)
    inputs = data.x_train

    def run(on: torch.device) -> Any:
        return fuse([a, b], "ot", inputs=inputs, device=on, recompute_bn=True)

    result, figures = job(device, lambda: run(device))
    figures["median_seconds"] = median_seconds(device, lambda: run(device), repeat)
    if device.type == "cuda":
        figures["cpu_seconds"] = median_seconds(torch.device("cpu"), lambda: run(torch.device("cpu")), 1)
        figures["speedup_over_cpu"] = figures["cpu_seconds"] / figures["median_seconds"]
    figures["verified_max_logit_difference"] = max(v for v in result.report.verified if v is not None)
    figures["parameters_millions"] = sum(p.numel() for p in a.parameters()) / 1e6
    return figures | {"models": [a, b, result.model]}


def chunk_figures(models: list[torch.nn.Module], data: Dataset, device: torch.device, quick: bool) -> dict[str, Any]:
    """Examples per second of the same 16 plane points on 2,000 inputs (``quick``: 4 points on 200) per chunk."""
    probe = cifar(200 if quick else 1000, 200 if quick else 1000) if data.name != "cifar10" else data
    resolution = 2 if quick else 4
    rates = {}
    for chunk in CHUNKS[:3] if quick else CHUNKS:
        config = LandscapeConfig(resolution=resolution, points_per_call=chunk, max_memory_gb=1e6)
        try:
            seconds = median_seconds(device, lambda config=config: plane(models, probe, config, device), 1)
        except torch.OutOfMemoryError:
            break
        finally:
            freed(device, 0)
        examples = resolution**2 * (len(probe.x_train) + len(probe.x_test))
        rates[chunk] = examples / seconds
    best = max(rates, key=rates.get)
    return {"examples_per_second": rates, "chosen": best, "automatic": auto_points_per_call(models[0], device)}


def landscape_figures(models: list[torch.nn.Module], data: Dataset, device: torch.device, quick: bool) -> dict:
    chunks = chunk_figures(models, data, device, quick)
    config = LandscapeConfig(
        resolution=3 if quick else 21,
        samples=len(data.x_test),
        points_per_call=chunks["chosen"],
        max_memory_gb=1e6,
        max_seconds=1e9,
        warn_seconds=1e9,
    )
    result, figures = job(device, lambda: plane(models, data, config, device))
    points = config.resolution**2
    examples = points * (len(data.x_train[: config.samples]) + len(data.x_test[: config.samples]))
    figures |= {
        "points": points,
        "inputs_per_point": examples // points,
        "examples_per_second": examples / figures["seconds"],
        "points_per_call": chunks,
        "lowest_test_loss": float(min(result.metrics.test_loss.ravel())),
    }
    return figures


def block_figures(operator: HessianOperator, device: torch.device, quick: bool) -> dict[str, Any]:
    """Seconds per vector of ``operator.matmul`` on ``block_size`` vectors at once, per block size."""
    per_vector = {}
    generator = torch.Generator().manual_seed(0)
    for block in BLOCKS[:3] if quick else BLOCKS:
        vectors = torch.randn(operator.size, block, generator=generator).to(device)
        try:
            per_vector[block] = median_seconds(device, lambda vectors=vectors: operator.matmul(vectors), 2) / block
        except torch.OutOfMemoryError:
            break
        finally:
            del vectors
            freed(device, 0)
    best = min(per_vector, key=per_vector.get)
    return {"seconds_per_vector": per_vector, "chosen": best}


def hessian_figures(data: Dataset, device: torch.device, quick: bool) -> dict[str, Any]:
    model = build_model(SPEC, seed=0).eval()
    samples = 64 if quick else 1000
    sample = (data.x_test[:samples], data.y_test[:samples])
    probe_config = HessianConfig(samples=samples, batch_size=samples if quick else 250)
    blocks = block_figures(Hessian(model, sample, device=device, config=probe_config).operator, device, quick)
    freed(device, 0)
    config = HessianConfig(
        samples=samples,
        batch_size=probe_config.batch_size,
        top_k=1,
        iterations=20 if quick else 100,
        probes=8 if quick else 100,
        block_size=blocks["chosen"],
        trace_tolerance=0.01,
        max_products=10**9,
        max_seconds=1e9,
    )

    def top_and_trace() -> tuple[Any, Any, int]:
        hessian = Hessian(model, sample, device=device, config=config)
        top = hessian.top_eigenvalues(1)
        trace = hessian.trace()
        return top, trace, hessian.operator.products

    (top, trace, products), figures = job(device, top_and_trace)
    return figures | {
        "inputs": samples,
        "block_size": blocks,
        "top_eigenvalue": float(top.eigenvalues[0]),
        "lanczos_steps": top.iterations,
        "converged": top.converged,
        "trace": trace.mean,
        "trace_error": trace.error,
        "products": products,
    }


def table(figures: dict[str, Any]) -> str:
    rows = ["| job | seconds | peak GPU MiB | left allocated MiB | figures |", "| --- | --- | --- | --- | --- |"]
    for name, values in figures["jobs"].items():
        shown = {k: v for k, v in values.items() if k not in ("seconds", "peak_mib", "left_mib")}
        rows.append(
            f"| {name} | {values['seconds']:.2f} | {values.get('peak_mib', float('nan')):.0f} | "
            f"{values['left_mib']:.1f} | {json.dumps(shown, default=str)[:300]} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script on any device")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = default_device()
    torch.manual_seed(0)
    data = cifar(100 if args.quick else 5000, 100 if args.quick else 5000)
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "data": data.name,
        "jobs": {},
    }
    fusion = fusion_figures(data, device, 1 if args.quick else args.repeat)
    models = fusion.pop("models")
    figures["jobs"]["OT fusion, 2 ResNet-18 BN"] = fusion | {"left_mib": freed(device, baseline)}
    landscape = landscape_figures(models, data, device, args.quick)
    del models
    figures["jobs"]["landscape plane"] = landscape | {"left_mib": freed(device, baseline)}
    hessian = hessian_figures(data, device, args.quick)
    figures["jobs"]["Hessian top-1 + trace"] = hessian | {"left_mib": freed(device, baseline)}
    print(table(figures))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
