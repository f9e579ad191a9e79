"""Fusing library networks at their real size: torchvision ResNet-50 and VGG-11-BN, two randomly initialised models.

    .venv/bin/python bench/bench_own_models.py [--repeat 1] [--threads 2] [--cases resnet50-ot vgg11_bn-ot ...]

Each case builds two models of one torchvision architecture with 1,000 classes (ResNet-50: 25.6M parameters,
VGG-11-BN: 132.9M) and fuses them through the library's ``fuse(models, method, inputs=probe)`` on 8 probe images,
BatchNorm statistics kept (``recompute_bn=False``), every hard alignment verified on the probe. Reported per case:
the tracing (``neuron_groups``: torch-pruning's dependency graph and the trace order, which ``fuse`` runs once
inside), the whole fusion (median wall time over ``--repeat``), the fusion without its tracing, and the peak resident
memory the fusion adds above the process with both models built. The issue's targets stand beside each figure.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import measured  # noqa: E402

from fusion.groups import neuron_groups  # noqa: E402
from fusion.models import build_model, default_spec, parameter_count  # noqa: E402
from fusion.registry import fuse  # noqa: E402


@dataclass(frozen=True)
class Case:
    arch: str
    size: int
    method: str
    target_seconds: float
    target_mib: float | None = None


CASES = {
    "resnet50-ot": Case("torchvision:resnet50", 64, "ot", 30.0, 2048.0),
    "vgg11_bn-ot": Case("torchvision:vgg11_bn", 64, "ot", 15.0),
    "vgg11_bn-matching": Case("torchvision:vgg11_bn", 64, "matching", 60.0),
}


def run(name: str, case: Case, repeat: int) -> None:
    spec = default_spec(case.arch, (3, case.size, case.size), 1000)
    a, b = build_model(spec, seed=0).eval(), build_model(spec, seed=1).eval()
    probe = torch.randn(8, 3, case.size, case.size, generator=torch.Generator().manual_seed(0))
    trace_s, _, groups = measured(lambda: neuron_groups(a, probe[:1]), repeat)
    fuse_s, fuse_mib, result = measured(lambda: fuse([a, b], case.method, inputs=probe, recompute_bn=False), repeat)
    verified = max(error for error in result.report.verified if error is not None)
    memory = f"+{fuse_mib:,.0f} MiB" + (f" (target < {case.target_mib:,.0f})" if case.target_mib else "")
    print(
        f"{name:18s} {parameter_count(a) / 1e6:6.1f}M params, {len(groups):3d} groups, {case.size}x{case.size}: "
        f"tracing {trace_s:5.1f} s, fusion {fuse_s:6.1f} s (target < {case.target_seconds:.0f}), "
        f"without tracing {fuse_s - trace_s:6.1f} s, peak {memory}, sweeps {result.report.sweeps}, "
        f"verified max logit difference {verified:.1g}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.cases:
        run(name, CASES[name], args.repeat)


if __name__ == "__main__":
    main()
