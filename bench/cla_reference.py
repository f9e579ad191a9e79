"""CLAFusion beside its reference code (hsgser/clafusion) on the reference's MLP ablation pair.

    python bench/cla_reference.py [--reference /tmp/clafusion-ref] [--seeds 0 1 2 3 4] [--epochs 15]

The pair of sh/train_mlp_ablation_studies.sh: hidden 400-200-100-50-25 against 400-200-100, no bias, trained here
with FusionLab's trainer (Adam, ``--epochs``) on the digits padded with zeros (in standardised units) to 28x28
(784 inputs: the reference's MLP takes MNIST-sized inputs only). Seed pair ``s`` trains the deep net with seed ``s``
and the shallow one with ``s + 100``. Both codes then fuse the SAME two models, with the activation/CKA layer cost,
identity balancing (``--balance-method add``), exact OT on activations of the SAME 200 training samples
(FusionLab's sample of seed 0, given to the reference as its activation loader), before any fine-tuning. Printed
per seed pair: parents, prediction ensemble (mean of softmax), the layer map and test accuracy of the reference and
of FusionLab's ``cla`` in its four orientation x correction combinations (``onto`` shallow/deep, ``correction``
reference/marginals).

The reference is imported at run time from ``--reference`` (a plain work tree, e.g.
``git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/clafusion-ref``) and skipped when absent. Nothing of it is
copied here; its ``tqdm`` import is stubbed, its MNIST loader is replaced by the shared sample, it runs on CPU
(``--gpu-id -1``) in a temporary folder (it writes logs into the working directory).

Measured (digits, 15 epochs, test accuracy %, before fine-tuning):

=====  ===========  ========  =========  ====================  ====================
seed   deep/shallow  ensemble  reference  ours onto shallow       ours onto deep
                                          (reference/marginals)  (reference/marginals)
=====  ===========  ========  =========  ====================  ====================
0      93.3/97.1     96.2      84.2       **84.2**/75.6          84.2/65.8
1      95.8/97.1     96.9      92.7       **92.7**/90.4          92.4/85.1
2      92.2/97.3     96.2      90.7       **90.7**/87.3          89.8/80.9
3      96.4/96.4     96.4      92.9       **92.9**/91.8          91.3/86.2
4      94.7/96.7     96.0      88.0       **88.0**/87.6          86.4/76.4
=====  ===========  ========  =========  ====================  ====================

Bold: FusionLab's default (``onto="shallow"``, ``correction="reference"``), equal to the reference on every pair.
Layer map [0, 1, 4] for both codes on every pair. Command:
``PYTHONPATH=. nice -n 10 python bench/cla_reference.py --reference /tmp/clafusion-ref`` (about 90 s on 2 shared cores).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import os
import resource
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from fusion.data import Dataset, load_dataset
from fusion.models import build_model, default_spec
from fusion.registry import fuse
from fusion.train import TrainConfig, evaluate, predict_logits, train

DEEP, SHALLOW = (400, 200, 100, 50, 25), (400, 200, 100)
FLAGS = (
    "--gpu-id -1 --model-name mlpnet --exact --correction --ground-metric euclidean --activation-histograms "
    "--activation-mode raw --geom-ensemble-type acts --act-num-samples 200 --ground-metric-normalize none "
    "--prelu-acts --past-correction --not-squared --dist-normalize --ground-metric-eff "
    "--layer-measure activation --layer-metric cka --num-models 2"
).split()
COMBINATIONS = [(onto, correction) for onto in ("shallow", "deep") for correction in ("reference", "marginals")]


def padded_digits() -> Dataset:
    data = load_dataset("digits")
    pad = lambda x: F.pad(x, (10, 10, 10, 10))  # noqa: E731
    return Dataset("digits28", pad(data.x_train), data.y_train, pad(data.x_test), data.y_test, 10, data.normalization)


def accuracy(model: torch.nn.Module, data: Dataset) -> float:
    return 100 * evaluate(model, *data.split("test"), device=torch.device("cpu")).accuracy


@contextlib.contextmanager
def reference_code(path: Path):
    """Import the reference from ``path`` in a temporary working directory, ``tqdm`` stubbed."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        sys.path[:0] = [str(path), str(path / "cifar"), str(path / "cifar" / "models")]
        stub = types.ModuleType("tqdm")
        stub.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
        stub.tqdm = lambda iterable, *args, **kwargs: iterable
        sys.modules.setdefault("tqdm", stub)
        try:
            import align_layers
            import data as reference_data
            import parameters
            import wasserstein_ensemble
            from model import get_model_from_name

            yield types.SimpleNamespace(
                align_layers=align_layers,
                data=reference_data,
                parameters=parameters,
                wasserstein=wasserstein_ensemble,
                model=get_model_from_name,
            )
        finally:
            os.chdir(here)


def reference_fuse(ref, models: list[torch.nn.Module], sample: torch.Tensor, data: Dataset) -> tuple[list[int], float]:
    """The reference's CLAFusion of ``[deep, shallow]``: its layer map (0-based) and the fused test accuracy."""
    args = ref.parameters.get_parser().parse_args(FLAGS)
    args.parse_config, args.config = True, None
    args.model_name_list, args.fused_model_name = ["mlpnet", "mlpnet"], "mlpnet"
    args.model0_config, args.model1_config = list(DEEP), list(SHALLOW)
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data.split("test")), batch_size=500)
    unit = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(sample, torch.zeros(len(sample)).long()), 1)
    loaders = lambda args, unit_batch=False, **_: (unit, test) if unit_batch else (test, test)  # noqa: E731
    for module in (ref.data, ref.align_layers):
        module.get_dataloader = loaders
    networks = []
    for index, model in enumerate(models):
        network = ref.model(args, idx=index)
        weights = [m.weight.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Linear)]
        network.load_state_dict(dict(zip(network.state_dict(), weights)))
        networks.append(network)
    depths = [ref.align_layers.utils.get_number_of_layers(n) for n in networks]
    pair, _, args, config = ref.align_layers.align_two_models(args, networks, [0, 0], depths, [0, 0])
    layer_map = [int(a) - 1 for a in args.optimal_layer_alignment]
    activations = ref.align_layers.utils.get_model_activations(args, pair)
    _, fused = ref.wasserstein.geometric_ensembling_modularized(args, pair, test, test, activations, config)
    x, y = data.split("test")
    with torch.no_grad():
        return layer_map, 100 * float((fused.eval()(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=Path("/tmp/clafusion-ref"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = padded_digits()
    available = (args.reference / "align_layers.py").exists()
    if not available:
        print(f"reference code not found at {args.reference}: FusionLab only")
    stack = contextlib.ExitStack()
    ref = stack.enter_context(reference_code(args.reference)) if available else None
    head = " | ".join(f"onto {o}, {c}" for o, c in COMBINATIONS)
    print(f"| seed | deep | shallow | ensemble | reference map | reference | ours map | {head} |")
    print("|---" * (7 + len(COMBINATIONS)) + "|")
    for seed in args.seeds:
        models = []
        for hidden, model_seed in ((DEEP, seed), (SHALLOW, seed + 100)):
            model = build_model(default_spec("mlp", data.input_shape, 10, hidden=hidden, bias=False), seed=model_seed)
            train(model, data, TrainConfig(epochs=args.epochs, seed=model_seed), device=torch.device("cpu"))
            models.append(model.eval())
        x_test = data.split("test")[0]
        probabilities = sum(predict_logits(m, x_test, torch.device("cpu")).softmax(1) for m in models)
        ensemble = 100 * float((probabilities.argmax(1) == data.y_test).float().mean())
        ours, ours_map = [], None
        for onto, correction in COMBINATIONS:
            result = fuse(models, "cla", data=data, onto=onto, correction=correction, layer_cost="cka")
            ours.append(accuracy(result.model, data))
            ours_map = result.report.details.layer_map
        sample = data.x_train[torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))[:200]]
        reference_map, reference = reference_fuse(ref, models, sample, data) if ref else (None, float("nan"))
        cells = " | ".join(f"{a:.1f}" for a in ours)
        print(
            f"| {seed} | {accuracy(models[0], data):.1f} | {accuracy(models[1], data):.1f} | {ensemble:.1f} | "
            f"{reference_map} | {reference:.1f} | {ours_map} | {cells} |",
            flush=True,
        )
    stack.close()


if __name__ == "__main__":
    main()
    own, children = (
        resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    print(f"peak resident memory: {own:.0f} MiB (this process), {children:.0f} MiB (its largest subprocess)")
