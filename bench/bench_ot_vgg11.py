"""OT fusion of two CIFAR-width VGG11s (9.2M parameters, no bias, no BatchNorm), ours beside the reference.

    OTFUSION_REF=/path/to/otfusion .venv/bin/python bench/bench_ot_vgg11.py [--repeat 3] [--threads 2]

Both run in this one process on the same two seeded networks (the reference's VGG11 and ours consume the RNG the
same way, so equal seeds give equal weights), with exact weights-mode OT: Euclidean cost, not squared, no
normalisation, uniform marginals, ensemble step 0.5 (the reference's published CIFAR-10 VGG11 configuration; see
bench/otfusion_reference.py). Reported: the median wall time of each (the reference with its default cost routine,
which builds an (n, m, fan_in) difference tensor, and with the ``--ground-metric-eff`` routine its published commands
use), the ratios, the peak resident memory each adds, and how far our fused weights are from the reference's when
ours runs its configuration exactly (``correction="reference"``, the reference with ``--skip-last-layer`` so that
neither permutes the class outputs). Without ``OTFUSION_REF`` only ours is measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import otfusion_reference as reference  # noqa: E402
from memory import measured  # noqa: E402

from fusion.models import ModelSpec, build_model  # noqa: E402
from fusion.registry import fuse  # noqa: E402

SPEC = ModelSpec("vgg11", (3, 32, 32), 10, bias=False)
OURS = {"reference": 1, "verify": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    a, b = build_model(SPEC, seed=0).eval(), build_model(SPEC, seed=1).eval()
    probe = torch.randn(8, *SPEC.input_shape, generator=torch.Generator().manual_seed(0))
    device = torch.device("cpu")
    ours_s, ours_mib, result = measured(lambda: fuse([a, b], "ot", inputs=probe, device=device, **OURS), args.repeat)
    print(
        f"ours      : {ours_s:6.2f} s (median of {args.repeat}), peak +{ours_mib:.0f} MiB, "
        f"{sum(p.numel() for p in a.parameters()) / 1e6:.2f}M parameters, {args.threads} threads"
    )
    if not reference.reference_available():
        print(f"reference : not measured ({reference.reference_unavailable_reason()})")
        return
    ref_a, ref_b = reference.reference_vgg11(0), reference.reference_vgg11(1)
    assert all(torch.equal(x, y) for x, y in zip(reference.layer_weights(ref_a), reference.layer_weights(a)))
    for label, efficient in (("default cost routine", False), ("--ground-metric-eff", True)):
        theirs_s, theirs_mib, _ = measured(
            lambda efficient=efficient: reference.reference_fuse_weights(ref_a, ref_b, ground_metric_eff=efficient),
            args.repeat,
        )
        print(
            f"reference ({label}): {theirs_s:6.2f} s (median of {args.repeat}), peak +{theirs_mib:.0f} MiB; "
            f"ours is {theirs_s / ours_s:.1f}x faster with {theirs_mib / max(ours_mib, 1):.1f}x less peak memory"
        )

    exact = fuse([a, b], "ot", inputs=probe, device=device, correction="reference", **OURS).model
    theirs_state, _ = reference.reference_fuse_weights(ref_a, ref_b, skip_last_layer=True)
    theirs_layers = reference.layer_weights(theirs_state)
    ours_layers = reference.layer_weights(exact)
    for index, row in enumerate(reference.compare_layers(ours_layers, theirs_layers)):
        print(f"  layer {index}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))


if __name__ == "__main__":
    main()
