"""Intra-Fusion beside its reference code (alexandertheus/Intra-Fusion, ICLR 2024) on the same trained models.

Models: the digits CNN with BatchNorm, channels 16-32-64 (conv-BN-ReLU-pool, then the classifier), trained 10 epochs
per seed. Each is pruned without fine-tuning, L1 and Taylor importance, at 30 / 50 / 70 % sparsity, with every group
pruned ("all") and one group at a time (the reference README's protocol; groups named as the reference counts them,
last conv first: g0 = conv 64, g1 = conv 32, g2 = conv 16). Ours: ``fuse(..., "intra")`` with its defaults and
``"prune"``; the reference: its ``prune()`` with ``OptimalTransport(gpu_id=-1)`` and without it (magnitude pruning),
run in a subprocess with the reference checkout first on ``sys.path`` (its vendored torch_pruning shadows ours).
Nothing of the reference is copied here; without ``--reference`` only our numbers are printed.

The reference keeps ``floor(n (1 - s))`` neurons, ours ``round(n (1 - s))``: equal at 50 %, at 30 % the 64-channel
conv keeps 44 there and 45 here, at 70 % the 16- and 32-channel convs keep 4 / 9 there and 5 / 10 here.

    git --git-dir=<mirror of alexandertheus/Intra-Fusion> archive HEAD -- ':!models.zip' | tar -x -C /tmp/intra-ref
    PYTHONPATH=. .venv/bin/python bench/intra_reference.py --reference /tmp/intra-ref --seeds 3

Measured (every group pruned, seeds 0 / 1 / 2, test accuracy without fine-tuning; parents 0.991 / 0.987 / 0.987;
about 80 s on 2 cores):

==== ======== ===================== ===================== ===================== =====================
imp. sparsity ours intra (rescaled) reference Intra-Fusion ours prune            reference prune
==== ======== ===================== ===================== ===================== =====================
L1   30 %     0.940 0.844 0.853     0.829 0.707 0.796     0.344 0.549 0.202     0.249 0.402 0.151
L1   50 %     0.620 0.693 0.496     0.436 0.302 0.356     0.149 0.193 0.120     0.118 0.171 0.102
L1   70 %     0.189 0.220 0.242     0.193 0.127 0.116     0.220 0.102 0.096     0.200 0.122 0.096
Tay. 30 %     0.862 0.822 0.876     0.569 0.829 0.784     0.349 0.138 0.340     0.333 0.353 0.327
Tay. 50 %     0.600 0.553 0.473     0.413 0.458 0.409     0.173 0.100 0.151     0.227 0.120 0.267
Tay. 70 %     0.309 0.518 0.204     0.167 0.296 0.182     0.096 0.100 0.100     0.171 0.100 0.133
==== ======== ===================== ===================== ===================== =====================

One group at a time, L1, 50 % (ours / reference): g0 0.964 0.956 0.973 / 0.978 0.973 0.973; g1 0.913 0.951 0.858 /
0.884 0.898 0.833; g2 0.927 0.902 0.876 / 0.804 0.562 0.849. The previous default (``rows="barycentre"``) reached
0.22 / 0.11 / 0.24 with every group pruned at 50 % (L1).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from fusion.data import load_digits
from fusion.methods.base import Context
from fusion.methods.intra import IntraOptions, intra_fuse, prepare
from fusion.models import build_model, default_spec
from fusion.registry import fuse
from fusion.surgery import apply_transports, group_sizes, with_state
from fusion.train import TrainConfig, evaluate, train
from fusion.transport import Transport

SPEC = default_spec("cnn", (1, 8, 8), 10, channels=(16, 32, 64), hidden=(), batch_norm=True)
CPU = torch.device("cpu")
PROTOCOLS = {"all": None, "g0": [0], "g1": [1], "g2": [2]}


def accuracy(model: torch.nn.Module) -> float:
    return evaluate(model.eval(), *load_digits().split("test"), device=CPU).accuracy


def ours(model: torch.nn.Module, importance: str, sparsity: float, protocol: str) -> dict[str, float]:
    data = load_digits()
    if protocol == "all":
        return {
            method: accuracy(
                fuse([model], method, data=data, device=CPU, sparsity=sparsity, importance=importance).model
            )
            for method in ("intra", "prune")
        }
    options = IntraOptions(sparsity=sparsity, importance=importance)
    folded, groups, kept, scores = prepare(model, options, Context(data.x_train, None, CPU, labels=data.y_train))
    group = [list(reversed(groups))[PROTOCOLS[protocol][0]]]
    pruned, _ = intra_fuse(folded, group, kept, options, scores)
    selected = {g.name: kept[g.name] for g in group}
    state = {k: v.detach() for k, v in folded.state_dict().items()}
    sizes = group_sizes(state, group)
    selections = {name: Transport.selection(sizes[name], index) for name, index in selected.items()}
    plain = with_state(folded, apply_transports(state, group, selections))
    return {"intra": accuracy(pruned), "prune": accuracy(plain)}


def worker(jobs_path: str, out_path: str, reference: str) -> None:
    """Runs inside the subprocess: the reference's prune() on every job."""
    sys.path.insert(0, reference)
    for name in [m for m in sys.modules if m.split(".")[0] == "torch_pruning"]:
        del sys.modules[name]  # fusion imported the installed torch_pruning; the reference needs its own fork
    from prune import prune  # the reference's module
    from torch_pruning.optimal_transport import OptimalTransport

    data = load_digits()
    x, y = data.split("train")
    loaders = {"train": [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]}
    results = []
    for job in torch.load(jobs_path, weights_only=True):
        model = build_model(SPEC)
        model.load_state_dict(job["state"])
        for method in ("intra", "prune"):
            pruned = copy.deepcopy(model).eval()
            transport = OptimalTransport(gpu_id=-1) if method == "intra" else None
            prune(
                pruned,
                loaders,
                x[:1],
                10,
                job["importance"],
                -1,
                sparsity=job["sparsity"],
                optimal_transport=transport,
                backward_pruning=True,
                group_idxs=PROTOCOLS[job["protocol"]],
            )
            results.append(
                {
                    **{k: job[k] for k in ("seed", "importance", "sparsity", "protocol")},
                    "method": method,
                    "accuracy": accuracy(pruned),
                }
            )
    Path(out_path).write_text(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="a work tree of alexandertheus/Intra-Fusion (skipped when absent)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--importances", nargs="+", default=["l1", "taylor"])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.worker:
        worker(*args.worker, args.reference)
        return
    data = load_digits()
    rows, jobs = [], []
    for seed in range(args.seeds):
        model = build_model(SPEC, seed=seed)
        parent = train(model, data, TrainConfig(epochs=args.epochs, seed=seed), device=CPU).test.accuracy
        print(f"seed {seed}: parent {parent:.3f}", flush=True)
        for importance in args.importances:
            for sparsity in args.sparsities:
                for protocol in args.protocols:
                    for method, acc in ours(model, importance, sparsity, protocol).items():
                        rows.append(
                            dict(
                                seed=seed,
                                importance=importance,
                                sparsity=sparsity,
                                protocol=protocol,
                                method=method,
                                side="ours",
                                accuracy=acc,
                            )
                        )
                    jobs.append(
                        dict(
                            seed=seed,
                            importance=importance,
                            sparsity=sparsity,
                            protocol=protocol,
                            state=model.state_dict(),
                        )
                    )
    if args.reference and Path(args.reference, "torch_pruning").is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(jobs, f"{tmp}/jobs.pt")
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--reference",
                    args.reference,
                    "--worker",
                    f"{tmp}/jobs.pt",
                    f"{tmp}/out.json",
                ],
                check=True,
            )
            rows += [dict(r, side="reference") for r in json.loads(Path(f"{tmp}/out.json").read_text())]
    else:
        print("reference not given or not found: our numbers only")
    key = lambda r: (r["importance"], r["protocol"], r["sparsity"], r["side"], r["method"])  # noqa: E731
    table: dict[tuple, list[float]] = {}
    for r in sorted(rows, key=lambda r: (key(r), r["seed"])):
        table.setdefault(key(r), []).append(r["accuracy"])
    for (importance, protocol, sparsity, side, method), accs in table.items():
        values = " ".join(f"{a:.3f}" for a in accs)
        print(f"{importance:7s} {protocol:4s} {sparsity:.1f} {side:9s} {method:6s} {values}")


if __name__ == "__main__":
    main()
    own, children = (
        resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    print(f"peak resident memory: {own:.0f} MiB (this process), {children:.0f} MiB (its largest subprocess)")
