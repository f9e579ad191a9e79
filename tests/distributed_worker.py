"""The analyses run by each rank of the distributed test (:mod:`tests.test_distributed`); module level, so
``torch.multiprocessing.spawn`` can import it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from analysis.hessian_config import HessianConfig
from analysis.hessian_estimators import hessian_top_eigenvalues, hessian_trace
from analysis.landscape import LandscapeConfig, linear_interpolation
from fusion.data import load_dataset
from fusion.models import build_model, default_spec

CONFIG = HessianConfig(samples=300, batch_size=64, top_k=3, iterations=60, tolerance=1e-6, probes=20, deflation=0)


def analyses() -> dict[str, list[float]]:
    """Top-3 eigenvalues, the trace's probes and a 5-point interpolation line of two seeded MLPs on digits."""
    torch.manual_seed(0)
    data = load_dataset("digits")
    spec = default_spec("mlp", data.input_shape, data.num_classes, hidden=(16,))
    a, b = build_model(spec, seed=0).eval(), build_model(spec, seed=1).eval()
    sample = data.split("test")
    device = torch.device("cpu")
    top = hessian_top_eigenvalues(a, sample, 3, CONFIG, device)
    trace = hessian_trace(a, sample, CONFIG, device)
    line = linear_interpolation(a, b, data, LandscapeConfig(resolution=5), device)
    return {
        "eigenvalues": top.eigenvalues.tolist(),
        "trace": trace.values.tolist(),
        "line": line.metrics.test_loss.tolist() + line.metrics.train_loss.tolist(),
    }


def run(rank: int, world: int, rendezvous: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        result = analyses()
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
