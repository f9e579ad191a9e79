"""otfusion's own MNIST models (``mnist_models.zip`` of github.com/sidak/otfusion), imported as ``otfusion:mlpnet``
and fused by weights with ours beside the reference's own fusion function, in one process.

    OTFUSION_REF=/path/to/otfusion .venv/bin/python bench/otfusion_mnist.py [--threads 2]

``$OTFUSION_REF`` is a work tree of the reference with ``cifar.zip`` and ``mnist_models.zip`` unzipped in place (see
bench/otfusion_reference.py). The two checkpoints (``model_{0,1}/final.checkpoint``, old torch format) are imported
through FusionLab's own path: ``Workspace.import_checkpoint`` with ``weights_only=True`` into a temporary workspace.
Both fusions run the reference's weights-mode configuration (exact OT, Euclidean cost not squared, no normalisation,
uniform marginals, ``--correction --past-correction``, ensemble step 0.5, model A transported onto model B); the
reference with ``--skip-last-layer`` and ours with ``correction="reference"``, so that neither permutes the class
outputs. Reported: each one's wall time and, per layer, how far our fused weights are from the reference's. The
reference's correction factor ``1/(1 + n 1e-7)`` (bench/otfusion_reference.py) bounds the agreement at about 1e-4
relative. MNIST itself is not needed: nothing is evaluated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import otfusion_reference as reference  # noqa: E402
from memory import measured  # noqa: E402

from fusion.models import ModelSpec  # noqa: E402
from fusion.registry import fuse  # noqa: E402
from fusion.workspace import Workspace  # noqa: E402

SPEC = ModelSpec("otfusion:mlpnet", (1, 28, 28), 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not reference.reference_available():
        print(f"not measured: {reference.reference_unavailable_reason()}")
        return
    root = Path(reference._root()) / "mnist_models"
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(Path(folder))
        a, b = (
            workspace.import_checkpoint(root / f"model_{k}" / "final.checkpoint", spec=SPEC, dataset="mnist")[0]
            for k in (0, 1)
        )
    probe = torch.randn(64, *SPEC.input_shape, generator=torch.Generator().manual_seed(0))
    ours_seconds, ours_mib, result = measured(
        lambda: fuse([a, b], "ot", inputs=probe, reference=1, correction="reference"), 3
    )
    ours = result.model
    _, theirs_mib, (theirs, theirs_seconds) = measured(
        lambda: reference.reference_fuse_weights(a, b, skip_last_layer=True, model_name="mlpnet", dataset="mnist"), 3
    )
    print(
        f"ours {ours_seconds:.3f} s, peak +{ours_mib:.0f} MiB; reference {theirs_seconds:.3f} s, peak "
        f"+{theirs_mib:.0f} MiB ({theirs_seconds / ours_seconds:.1f}x the time)"
    )
    for name, row in zip(theirs, reference.compare_layers(reference.layer_weights(ours), list(theirs.values()))):
        print(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))


if __name__ == "__main__":
    main()
