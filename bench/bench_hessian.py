"""Our Hessian analyses next to PyHessian 0.1 (Yao et al. 2020), in one process (not run in CI).

Workloads: the digits CNN (16-32 channels, 64 hidden; digits test examples) and a CIFAR-size ResNet-18 with BatchNorm
(random initialisation, N(0, 1) inputs of 3x32x32, random labels), each over ``--batches`` batches of
``--batch-size`` examples, model in eval mode, cross-entropy loss. For each:

1. Hessian-vector product methods on one batch, median seconds per vector over interleaved rounds, relative to one
   forward+backward pass: double backward (graph rebuilt per product; graph built once and kept, as PyHessian does
   for a single batch and ours does for every batch) for 1 and ``block`` vectors, forward-over-reverse
   (``torch.func.jvp`` of ``torch.func.grad``) and its linearised form (``torch.func.linearize``, primal computed once).
2. Top-1 eigenvalue + trace, with the same limits for both: ``maxIter = iterations``, ``tol = tolerance`` for the
   eigenvalue, exactly ``probes`` Hutchinson probes for the trace (PyHessian ``trace(maxIter=probes, tol=0)``, which
   then never stops early), in ``trials`` alternating runs. Reports seconds, Hessian-vector products, peak resident
   memory above the start (sampled every 5 ms, with glibc's mmap threshold fixed so that freed tensors leave the
   resident set; CUDA: peak allocated), the values, and the median time ratio PyHessian / ours (target: at least 3).
   Trials alternate which goes first. With more than one batch PyHessian takes its ``dataloader`` path.
3. Eigenvalue density: ours (SLQ, ``runs`` runs of ``steps`` steps) against PyHessian's ``density()``, whose exception
   (it calls ``torch.eig``, removed from PyTorch) is caught and reported.

PyHessian is used unmodified; the bench counts its Hessian-vector products by wrapping the functions it calls, and
passes ``cuda=True`` only on a CUDA device (it knows no other device names).

    .venv/bin/python bench/bench_hessian.py [--threads 2] [--batches 2] [--batch-size 64] [--probes 10] [--only resnet]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, linearize, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.hessian import HessianConfig, HessianOperator, hessian_eigenvalue_density, hutchinson_trace, top_eigenvalues
from fusion.data import load_dataset
from fusion.models import build_model, default_spec


class PeakMemory:
    """Peak resident memory (bytes) above the level at entry, sampled every 5 ms; on CUDA the peak allocated."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.running = False

    @staticmethod
    def resident() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.resident() - self.base)
            time.sleep(0.005)

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = self.resident()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
            return
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.resident() - self.base)


@dataclass
class Workload:
    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor


def workloads(batches: int, batch_size: int) -> list[Workload]:
    digits = load_dataset("digits")
    count = batches * batch_size
    cnn = build_model(default_spec("cnn", digits.input_shape, digits.num_classes), seed=0).eval()
    resnet = build_model(default_spec("resnet18", (3, 32, 32), 10), seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    cifar_inputs = torch.randn(count, 3, 32, 32, generator=generator)
    cifar_targets = torch.randint(0, 10, (count,), generator=generator)
    return [
        Workload("digits CNN 16-32", cnn, digits.x_test[:count], digits.y_test[:count]),
        Workload("ResNet-18 32x32", resnet, cifar_inputs, cifar_targets),
    ]


def hvp_methods(work: Workload, batch_size: int, block: int, rounds: int) -> dict[str, float]:
    """Median seconds per vector of each Hessian-vector product method on one batch, the methods interleaved in
    ``rounds`` rounds (after one warm-up round) so that a shared machine's load changes hit all of them alike."""
    model, x, y = work.model, work.inputs[:batch_size], work.targets[:batch_size]
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, {**p, **buffers}, (x,)), y)

    gradient = grad(loss)
    one = {n: torch.randn_like(p) for n, p in params.items()}
    many = {n: torch.randn(block, *p.shape) for n, p in params.items()}

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    def double_backward() -> None:
        leaves = [p.detach().requires_grad_() for p in params.values()]
        first = torch.autograd.grad(loss(dict(zip(names, leaves))), leaves, create_graph=True)
        torch.autograd.grad(first, leaves, grad_outputs=[one[n] for n in names])

    leaves = [p.detach().requires_grad_() for p in params.values()]
    cached = torch.autograd.grad(loss(dict(zip(names, leaves))), leaves, create_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, linear = linearize(gradient, params)
    methods: dict[str, tuple[Callable[[], Any], int]] = {
        "forward+backward": (forward_backward, 1),
        "double backward, graph rebuilt, 1 vector": (double_backward, 1),
        "double backward, cached graph, 1 vector (PyHessian, ours)": (
            lambda: torch.autograd.grad(cached, leaves, grad_outputs=[one[n] for n in names], retain_graph=True), 1
        ),
        f"double backward, cached graph, {block} vectors": (
            lambda: torch.autograd.grad(cached, leaves, grad_outputs=[many[n] for n in names], retain_graph=True, is_grads_batched=True),
            block,
        ),
        "forward-over-reverse, 1 vector": (lambda: jvp(gradient, (params,), (one,)), 1),
        f"forward-over-reverse, {block} vectors": (lambda: vmap(lambda v: jvp(gradient, (params,), (v,)))(many), block),
        "linearised forward-over-reverse, 1 vector": (lambda: linear(one), 1),
        f"linearised forward-over-reverse, {block} vectors": (lambda: vmap(linear)(many), block),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(rounds + 1):
        for name, (function, vectors) in methods.items():
            started = time.perf_counter()
            function()
            if round_:
                times[name].append((time.perf_counter() - started) / vectors)
    return {name: statistics.median(values) for name, values in times.items()}


def counting(function: Callable[..., Any], counter: list[int], vectors: Callable[..., int]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        counter[0] += vectors(*args, **kwargs)
        return function(*args, **kwargs)

    return wrapped


def run_pyhessian(work: Workload, batch_size: int, device: torch.device, iterations: int, tolerance: float, probes: int) -> dict[str, Any]:
    import pyhessian

    module = sys.modules["pyhessian.hessian"]  # the package's ``hessian`` attribute is the class, not the module

    model = copy.deepcopy(work.model).to(device)
    batches = [(work.inputs[i : i + batch_size], work.targets[i : i + batch_size]) for i in range(0, len(work.inputs), batch_size)]
    products = [0]
    original = module.hessian_vector_product
    module.hessian_vector_product = counting(original, products, lambda *a, **k: 1)
    try:
        with PeakMemory(device) as memory:
            started = time.perf_counter()
            if len(batches) == 1:
                reference = pyhessian.hessian(model, nn.CrossEntropyLoss(), data=batches[0], cuda=device.type == "cuda")
            else:
                reference = pyhessian.hessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
                reference.dataloader_hv_product = counting(reference.dataloader_hv_product, products, lambda *a, **k: 1)
            torch.manual_seed(0)
            (top,), _ = reference.eigenvalues(maxIter=iterations, tol=tolerance, top_n=1)
            eigen_products = products[0]
            values = reference.trace(maxIter=probes, tol=0.0)
            seconds = time.perf_counter() - started
    finally:
        module.hessian_vector_product = original
    return {
        "seconds": seconds, "products": products[0], "eigen_products": eigen_products, "memory": memory.peak,
        "top": top, "trace": sum(values) / len(values), "reference": reference,
    }


def run_ours(work: Workload, batch_size: int, device: torch.device, iterations: int, tolerance: float, probes: int) -> dict[str, Any]:
    config = HessianConfig(samples=None, batch_size=batch_size, iterations=iterations, tolerance=tolerance, probes=probes)
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        operator = HessianOperator(work.model, (work.inputs, work.targets), config, device)
        top = top_eigenvalues(operator, 1, config)
        trace = hutchinson_trace(operator, config)
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "products": top.iterations + probes, "eigen_products": top.iterations, "memory": memory.peak,
        "top": float(top.eigenvalues[0]), "trace": trace.mean, "trace_error": trace.error,
    }


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # a fixed mmap threshold makes glibc return freed tensors to the system, so resident memory measures each phase
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--trials", type=int, default=2, help="alternating runs of ours and PyHessian (median)")
    parser.add_argument("--block", type=int, default=4, help="vectors per call in the method comparison")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds of the HVP methods")
    parser.add_argument("--steps", type=int, default=10, help="SLQ steps per run for the density")
    parser.add_argument("--runs", type=int, default=2, help="SLQ runs for the density")
    parser.add_argument("--skip-methods", action="store_true", help="skip the HVP method comparison")
    parser.add_argument("--only", choices=("cnn", "resnet"), help="one workload only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, {args.threads} threads, {args.batches} batch(es) of {args.batch_size}, torch {torch.__version__}")
    for work in workloads(args.batches, args.batch_size):
        if args.only and args.only not in work.name.lower():
            continue
        print(f"\n== {work.name}: {sum(p.numel() for p in work.model.parameters()):,} parameters", flush=True)
        if not args.skip_methods:
            methods = hvp_methods(work, args.batch_size, args.block, args.rounds)
            base = methods["forward+backward"]
            for name, seconds in methods.items():
                print(f"  {name:60s} {1000 * seconds:10.1f} ms/vector  {seconds / base:6.2f}x fwd+bwd", flush=True)
        trials = []
        for trial in range(args.trials):
            if trial % 2:
                theirs = run_pyhessian(work, args.batch_size, device, args.iterations, args.tolerance, args.probes)
                ours = run_ours(work, args.batch_size, device, args.iterations, args.tolerance, args.probes)
            else:
                ours = run_ours(work, args.batch_size, device, args.iterations, args.tolerance, args.probes)
                theirs = run_pyhessian(work, args.batch_size, device, args.iterations, args.tolerance, args.probes)
            trials.append((ours, theirs))
            for name, result in (("ours", ours), ("PyHessian", theirs)):
                print(
                    f"  trial {trial + 1} {name:10s} top-1 + trace: {result['seconds']:8.2f} s, {result['products']:4d} HVPs "
                    f"({result['eigen_products']} for the eigenvalue), peak memory {result['memory'] / 2**20:8.1f} MiB, "
                    f"λ1 {result['top']:.6g}, trace {result['trace']:.6g}",
                    flush=True,
                )
        ratio = statistics.median(theirs["seconds"] / ours["seconds"] for ours, theirs in trials)
        ours, theirs = trials[-1]
        print(f"  time ratio PyHessian / ours (median over trials): {ratio:.2f}x (target >= 3); "
              f"λ1 relative difference {abs(ours['top'] - theirs['top']) / abs(theirs['top']):.2e}; "
              f"trace difference {abs(ours['trace'] - theirs['trace']) / max(ours['trace_error'], 1e-30):.2f} of our error bars")
        config = HessianConfig(samples=None, batch_size=args.batch_size, steps=args.steps, runs=args.runs)
        started = time.perf_counter()
        density = hessian_eigenvalue_density(work.model, (work.inputs, work.targets), config, device)
        print(f"  ours density: {args.runs} runs x {len(density.nodes[0])} steps in {time.perf_counter() - started:.2f} s, "
              f"nodes in [{min(n.min() for n in density.nodes):.4g}, {max(n.max() for n in density.nodes):.4g}]")
        try:
            theirs["reference"].density(iter=args.steps, n_v=args.runs)
            print("  PyHessian density(): ran")
        except Exception as exc:  # noqa: BLE001 -- the point is to report whichever exception PyHessian raises
            print(f"  PyHessian density() crashed: {type(exc).__name__}: {str(exc).splitlines()[0]}")


if __name__ == "__main__":
    main()
