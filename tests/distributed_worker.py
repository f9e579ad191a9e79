"""The analyses run by each rank of the distributed test (:mod:`tests.test_distributed`); module level, so
``torch.multiprocessing.spawn`` can import it."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from analysis.hessian_config import HessianConfig
from analysis.hessian_spectrum import Hessian
from analysis.landscape import LandscapeConfig, linear_interpolation
from fusion.batchnorm import recompute_batchnorm
from fusion.data import load_dataset
from fusion.groups import neuron_groups
from fusion.models import build_model, default_spec
from fusion.registry import fuse
from fusion.repair import chain_ends
from fusion.repair import statistics as repair_statistics

CONFIG = HessianConfig(samples=300, batch_size=64, top_k=3, iterations=60, tolerance=1e-6, probes=20, deflation=0)


def analyses() -> dict[str, list[float]]:
    """Top-3 eigenvalues, the trace's probes and a 5-point interpolation line of two seeded MLPs on digits."""
    torch.manual_seed(0)
    data = load_dataset("digits")
    spec = default_spec("mlp", data.input_shape, data.num_classes, hidden=(16,))
    a, b = build_model(spec, seed=0).eval(), build_model(spec, seed=1).eval()
    sample = data.split("test")
    device = torch.device("cpu")
    hessian = Hessian(a, sample, device=device, config=CONFIG)
    top = hessian.top_eigenvalues(3)
    trace = hessian.trace()
    line = linear_interpolation(a, b, data, LandscapeConfig(resolution=5), device)
    return {
        "eigenvalues": top.eigenvalues.tolist(),
        "trace": trace.values.tolist(),
        "line": line.metrics.test_loss.tolist() + line.metrics.train_loss.tolist(),
    }


def statistics() -> dict[str, list[float]]:
    """What fusion measures on training inputs, on 600 digits (3 batches of 256 split over the ranks, a 600-example
    activation sample): a BN network's recomputed running statistics, the neuron statistics REPAIR measures at its
    chain ends, the optimal cost of every group's map of OT by activations (the plans themselves can differ where
    two assignments tie to float precision, as in the deep layers of a random VGG), and every tensor of an MLP fused
    by OT on activations with REPAIR."""
    data = load_dataset("digits")
    inputs = data.x_train[:600]
    device = torch.device("cpu")
    spec = default_spec("vgg11", data.input_shape, data.num_classes, batch_norm=True, width=0.125)
    a, b = build_model(spec, seed=0).eval(), build_model(spec, seed=1).eval()
    recomputed = recompute_batchnorm(copy.deepcopy(a), inputs, device)
    ends = chain_ends(a, neuron_groups(a, inputs[:1]), inputs[:1])
    measured = repair_statistics(a, ends, inputs, device)
    maps = fuse([a, b], "ot", inputs=inputs, device=device, mode="activations", samples=600).transports[1]
    mlp = default_spec("mlp", data.input_shape, data.num_classes, hidden=(32,))
    pair = [build_model(mlp, seed=0), build_model(mlp, seed=1)]
    fused = fuse(pair, "ot", inputs=inputs, device=device, mode="activations", samples=600, repair=True).model
    return {
        "batchnorm": flat(recomputed.state_dict().values()),
        "repair": flat([s for name in ends for s in (measured[name].mean, measured[name].std)]),
        "costs": [maps[name].cost for name in sorted(maps)],
        "fused": flat(fused.state_dict().values()),
    }


def flat(tensors) -> list[float]:
    return torch.cat([t.double().flatten() for t in tensors]).tolist()


def run(rank: int, world: int, rendezvous: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        result = analyses() | statistics()
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
