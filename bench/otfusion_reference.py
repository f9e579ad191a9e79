"""Run the reference OT fusion (Singh & Jaggi 2020, github.com/sidak/otfusion) next to ours, on VGG11.

Nothing of the reference is shipped here: it is imported at run time from a checkout named by the environment
variable ``OTFUSION_REF`` (a plain work tree of sidak/otfusion with its ``cifar.zip`` unzipped in place, so that
``$OTFUSION_REF/cifar/models/vgg.py`` exists). Without it every function here still imports;
:func:`reference_available` returns False and :func:`reference_unavailable_reason` says why, so a benchmark can
report our numbers alone.

Getting a checkout (once)::

    git clone https://github.com/sidak/otfusion /tmp/otfusion-ref     # or `git archive` from a mirror
    cd /tmp/otfusion-ref && unzip -q cifar.zip                         # creates cifar/{train.py,models,...}
    export OTFUSION_REF=/tmp/otfusion-ref

Measure (3 fresh subprocesses, median time, peak RSS)::

    OTFUSION_REF=/tmp/otfusion-ref .venv/bin/python bench/otfusion_reference.py --repeat 3 [--ground-metric-eff]

What is called
--------------
Their weights-mode fusion function, ``wasserstein_ensemble.get_wassersteinized_layers_modularized(args,
[model_a, model_b])``, directly (not ``main.py``: no data loaders, no accuracy checks, nothing written to disk).
It returns one tensor per parameter, in parameter order; :func:`reference_fuse_weights` names them with model
B's parameter names (the reference writes the list back into a fresh model positionally, the same thing).
Model A (``networks[0]``) is the one transported onto model B (``networks[1]``).

``args`` is an ``argparse.Namespace`` produced by the reference's own ``parameters.get_parser()`` from the
command-line flags below, so every field it reads has the reference's default. The flags:

==================================  ==========================================================================
flag                                meaning for this run
==================================  ==========================================================================
``--gpu-id -1``                     CPU (their default is GPU 3)
``--model-name vgg11_nobias``       VGG11, CIFAR width, no bias, no BN (only used to build models)
``--dataset Cifar10``               10 classes
``--geom-ensemble-type wts``        weights mode, no activations
``--exact``                         ``ot.emd`` (network simplex) instead of Sinkhorn
``--correction``                    T <- T diag(1 / (1/n + 1e-7)) (``--proper-marginals`` off: uniform 1/n)
``--past-correction``               model A's rows are input-aligned before being transported
``--ground-metric euclidean``       cost = Euclidean distance between flattened weight rows
``--not-squared``                   the distance, not its square
``--ground-metric-normalize none``  cost not rescaled (their parser default is ``log``: cost -> log1p(cost))
``--ensemble-step 0.5``             W_F = (T^T A + B) / 2
``--prelu-acts``                    only sets ReLU(inplace=False) in their model; no effect on weights
(no) ``--normalize-wts``            rows are not unit-normalised before the cost
(no) ``--activation-histograms``    uniform marginals
(no) ``--skip-last-layer``          the class layer gets its own transport map (see ``skip_last_layer``)
``--ground-metric-eff`` (option)    cost by sqrt(max(0, |x|^2+|y|^2-2x.y)) (~0.5 s, ~0.15 GiB on 2 idle cores);
                                    without it (parser default) by an explicit (n_A, n_B, fan_in) difference
                                    tensor (~20 s, ~9.1 GiB)
==================================  ==========================================================================

The published CIFAR-10 VGG11 commands (README of the reference) use ``--correction --past-correction
--not-squared --exact --ground-metric euclidean --ground-metric-normalize none --geom-ensemble-type wts
--ground-metric-eff --prelu-acts`` with ``--normalize-wts`` (85.98 %) or without it (86.51 %); this module runs the
one without ``--normalize-wts``. ``ground_metric_eff`` chooses between the published cost routine (True) and the
parser default (False); both give the same transport maps on random VGG11s (checked: identical fused weights).

Numerical facts to expect when comparing with ours
--------------------------------------------------
* The correction uses ``1 / (1/n + 1e-7)`` instead of ``n``: a "permutation" of width n carries the factor
  ``1 / (1 + n * 1e-7)`` (0.99995 at n = 512), and it compounds: a layer's transported rows carry the factor of
  its own map and of the previous layer's. Use :func:`reference_correction_scale` to mimic it, or compare with a
  relative tolerance of ~2e-4 of the weight scale.
* Without ``skip_last_layer`` the 10 class neurons are matched by OT too, so the class outputs of model A can be
  permuted (they are, for random initialisations). With ``skip_last_layer=True`` (``--skip-last-layer``) the class
  layer is ``(W_A T_prev + W_B) / 2``, i.e. the identity on the class side, as ours does.
* With ``--proper-marginals`` off the correction multiplies T (n_A x n_B) by an n_A x n_A diagonal, so it only
  runs for equal widths.
* The cost is computed in float32 by torch, cast to float64 by POT for ``ot.emd`` (default numItermax=100000,
  uniform float64 marginals); the plan is cast back to float32 before the correction.

Parameter mapping
-----------------
The reference VGG11 and ours (``build_model(ModelSpec("vgg11", (3, 32, 32), 10, bias=False))``) have the same
parameter names: :data:`VGG11_LAYER_NAMES` (eight 3x3 convs at ``features.{0,3,6,8,11,13,16,18}``, then
``classifier`` 512 -> 10). Their features end with a parameter-free ``AvgPool2d(1)`` at index 21. Both consume the
torch RNG in the same order, so ``torch.manual_seed(s)`` before building gives identical weights
(``reference_vgg11(s)`` equals ``build_model(spec, seed=s)``). :func:`layer_weights` / :func:`load_layer_weights`
work on either class by module order (conv weights, then the linear weight), so a benchmark never relies on names.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

ENV_VAR = "OTFUSION_REF"

VGG11_LAYER_NAMES: tuple[str, ...] = (
    "features.0.weight",
    "features.3.weight",
    "features.6.weight",
    "features.8.weight",
    "features.11.weight",
    "features.13.weight",
    "features.16.weight",
    "features.18.weight",
    "classifier.weight",
)
# Reference name -> our name (identical for VGG11; kept explicit so a benchmark can assert it).
REFERENCE_TO_OURS: dict[str, str] = {name: name for name in VGG11_LAYER_NAMES}

# The eps the reference adds to the uniform marginal 1/n before inverting it in ``--correction``.
REFERENCE_CORRECTION_EPS = 1e-7

# Top-level module names the reference defines; a stale module of the same name elsewhere would shadow it.
_REFERENCE_MODULES = (
    "wasserstein_ensemble",
    "parameters",
    "ground_metric",
    "routines",
    "model",
    "utils",
    "data",
    "partition",
    "baseline",
    "compute_activations",
    "train",
    "models",
    "vgg",
    "cifar_utils",
    "hyperparameters",
)

_ref: dict[str, Any] = {}
_unavailable: list[str] = []


def _base_flags(model_name: str = "vgg11_nobias", dataset: str = "Cifar10") -> list[str]:
    return [
        "--gpu-id",
        "-1",
        "--model-name",
        model_name,
        "--dataset",
        dataset,
        "--geom-ensemble-type",
        "wts",
        "--exact",
        "--correction",
        "--past-correction",
        "--ground-metric",
        "euclidean",
        "--not-squared",
        "--ground-metric-normalize",
        "none",
        "--ensemble-step",
        "0.5",
        "--prelu-acts",
    ]


@contextlib.contextmanager
def _quiet():
    """Send the reference's (very chatty) prints to /dev/null."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _root() -> str | None:
    path = os.environ.get(ENV_VAR, "").strip()
    return os.path.abspath(os.path.expanduser(path)) if path else None


def _load() -> dict[str, Any] | None:
    if _ref:
        return _ref
    _unavailable.clear()  # re-checked on every call until the reference has loaded
    root = _root()
    if root is None:
        _unavailable.append(f"{ENV_VAR} is not set")
        return None
    if not os.path.isfile(os.path.join(root, "wasserstein_ensemble.py")):
        _unavailable.append(f"{ENV_VAR}={root} is not a checkout of sidak/otfusion (no wasserstein_ensemble.py)")
        return None
    if not os.path.isfile(os.path.join(root, "cifar", "models", "vgg.py")):
        _unavailable.append(f"{root}/cifar is missing: run `cd {root} && unzip -q cifar.zip` first")
        return None
    paths = [root, os.path.join(root, "cifar"), os.path.join(root, "cifar", "models")]
    clash = [
        m
        for m in _REFERENCE_MODULES
        if m in sys.modules
        and not os.path.abspath(getattr(sys.modules[m], "__file__", None) or "/").startswith(root + os.sep)
    ]
    if clash:
        _unavailable.append(f"modules already imported from elsewhere would shadow the reference: {clash}")
        return None
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        with _quiet():
            parameters = importlib.import_module("parameters")
            wasserstein_ensemble = importlib.import_module("wasserstein_ensemble")
            cifar_train = importlib.import_module("train")
    except Exception as exc:  # noqa: BLE001 - any import failure means: report ours only
        _unavailable.append(f"importing the reference failed: {type(exc).__name__}: {exc}")
        return None
    for mod in (parameters, wasserstein_ensemble, cifar_train):
        if not os.path.abspath(mod.__file__).startswith(root + os.sep):
            _unavailable.append(f"module {mod.__name__} came from {mod.__file__}, not from {root}")
            return None
    _ref.update(root=root, parameters=parameters, we=wasserstein_ensemble, train=cifar_train)
    return _ref


def reference_available() -> bool:
    """True when ``$OTFUSION_REF`` points at an importable reference checkout."""
    return _load() is not None


def reference_unavailable_reason() -> str | None:
    """Why :func:`reference_available` is False (None when it is True)."""
    return None if _load() is not None else _unavailable[0]


def _require() -> dict[str, Any]:
    ref = _load()
    if ref is None:
        raise RuntimeError(f"reference OT fusion unavailable: {_unavailable[0]}")
    return ref


def reference_flags(
    *,
    ground_metric_eff: bool = False,
    skip_last_layer: bool = False,
    model_name: str = "vgg11_nobias",
    dataset: str = "Cifar10",
) -> list[str]:
    """The reference command-line flags this module runs with (``--model-name mlpnet --dataset mnist`` for its MNIST
    MLPs)."""
    flags = _base_flags(model_name, dataset)
    if ground_metric_eff:
        flags.append("--ground-metric-eff")
    if skip_last_layer:
        flags.append("--skip-last-layer")
    return flags


def reference_args(**flags: Any) -> argparse.Namespace:
    """A fresh ``Namespace`` from the reference's own parser (it adds attributes to it while fusing); ``flags`` are
    :func:`reference_flags`' keywords."""
    parser = _require()["parameters"].get_parser()
    return parser.parse_args(reference_flags(**flags))


def reference_vgg11(seed: int) -> nn.Module:
    """Their VGG11 (no bias, no BN, 10 classes) initialised under ``torch.manual_seed(seed)``; global RNG kept."""
    ref = _require()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _quiet():
            model = ref["train"].get_model({"model": "vgg11_nobias", "dataset": "Cifar10"}, -1, relu_inplace=False)
    return model.eval()


def reference_fuse_weights(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    ground_metric_eff: bool = False,
    skip_last_layer: bool = False,
    model_name: str = "vgg11_nobias",
    dataset: str = "Cifar10",
) -> tuple[OrderedDict[str, torch.Tensor], float]:
    """Fuse ``model_a`` onto ``model_b`` with the reference; returns (fused state_dict, seconds of the fusion call).

    Both models must be the reference's VGG class (or anything whose ``named_parameters()`` are exactly the
    conv/linear weights in layer order). Only ``get_wassersteinized_layers_modularized`` is timed; its prints go
    to /dev/null (their formatting of tensors for printing is still inside the timed call).
    """
    ref = _require()
    args = reference_args(
        ground_metric_eff=ground_metric_eff, skip_last_layer=skip_last_layer, model_name=model_name, dataset=dataset
    )
    names = [name for name, _ in model_b.named_parameters()]
    with _quiet():
        start = time.perf_counter()
        fused = ref["we"].get_wassersteinized_layers_modularized(args, [model_a, model_b])
        seconds = time.perf_counter() - start
    if len(fused) != len(names):
        raise RuntimeError(f"reference returned {len(fused)} tensors for {len(names)} parameters")
    state = OrderedDict()
    for name, tensor, param in zip(names, fused, model_b.parameters()):
        state[name] = tensor.detach().reshape(param.shape).clone()  # --skip-last-layer returns a grad-tracking tensor
    return state, seconds


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Conv and linear modules in registration (= forward, for VGG) order."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_weights(model_or_state: nn.Module | dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The weights in layer order (convs, then the classifier) of either VGG class, or of a fused state_dict."""
    if isinstance(model_or_state, nn.Module):
        return [m.weight.detach() for m in weight_layers(model_or_state)]
    return [t for name, t in model_or_state.items() if name.endswith("weight") and t.dim() in (2, 4)]


@torch.no_grad()
def load_layer_weights(model: nn.Module, weights: list[torch.Tensor]) -> nn.Module:
    """Copy ``weights`` (layer order) into ``model`` (either VGG class); shapes must match exactly."""
    layers = weight_layers(model)
    if len(layers) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(layers)} layers")
    for layer, w in zip(layers, weights):
        if layer.weight.shape != w.shape:
            raise ValueError(f"shape {tuple(w.shape)} does not fit {layer}")
        layer.weight.copy_(w)
    return model


def reference_correction_scale(width: int, eps: float = REFERENCE_CORRECTION_EPS) -> float:
    """The factor the reference's ``--correction`` puts on a width-``width`` permutation: ``1/(1 + width*eps)``."""
    return (1.0 / (1.0 / width + eps)) / width


def compare_layers(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> list[dict[str, float]]:
    """Per layer: max |difference| and that max relative to max |theirs|."""
    rows = []
    for a, b in zip(ours, theirs, strict=True):
        diff = float((a.double() - b.double()).abs().max())
        rows.append({"max_abs": diff, "max_rel": diff / max(float(b.abs().max()), 1e-30)})
    return rows


# ---------------------------------------------------------------------------------------------- measurement


def _read_status(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on this machine have been busy (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _child(seed_a: int, seed_b: int, threads: int, ground_metric_eff: bool, skip_last_layer: bool) -> dict[str, Any]:
    import gc
    import resource

    torch.set_num_threads(threads)
    if not reference_available():
        return {"error": reference_unavailable_reason()}
    model_a, model_b = reference_vgg11(seed_a), reference_vgg11(seed_b)
    gc.collect()
    rss_before = _read_status("VmRSS")
    reset = _reset_peak()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    busy_start = _busy_cpu_seconds()
    cpu_start = time.process_time()
    _, seconds = reference_fuse_weights(
        model_a, model_b, ground_metric_eff=ground_metric_eff, skip_last_layer=skip_last_layer
    )
    cpu_seconds = time.process_time() - cpu_start
    busy_end = _busy_cpu_seconds()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_after = _read_status("VmHWM")
    out: dict[str, Any] = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # all threads; includes the (untimed) state_dict copy, a few ms
        "rss_before_mib": None if rss_before is None else rss_before / 1024,
        "maxrss_delta_mib": (maxrss_after - maxrss_before) / 1024,
        "peak_method": "ru_maxrss delta (getrusage) in a fresh process",
    }
    if reset and rss_before is not None and hwm_after is not None:
        out["peak_above_start_mib"] = (hwm_after - rss_before) / 1024
        out["peak_method"] = "VmHWM after fusion - VmRSS before (high-water mark reset via /proc/self/clear_refs)"
    out["parameters"] = sum(p.numel() for p in model_a.parameters())
    if busy_start is not None and busy_end is not None:
        # CPU time other processes used meanwhile: more than a few % of the wall time means the cores were shared
        out["other_cpu_seconds"] = max(0.0, busy_end - busy_start - cpu_seconds)
        out["contended"] = out["other_cpu_seconds"] > 0.05 * threads * seconds
    return out


def measure(
    repeat: int = 3,
    *,
    seed_a: int = 0,
    seed_b: int = 1,
    threads: int = 2,
    ground_metric_eff: bool = False,
    skip_last_layer: bool = False,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Time the reference fusion ``repeat`` times, each in a fresh subprocess; medians of seconds and peak memory."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--seed-a",
        str(seed_a),
        "--seed-b",
        str(seed_b),
        "--threads",
        str(threads),
    ]
    if ground_metric_eff:
        cmd.append("--ground-metric-eff")
    if skip_last_layer:
        cmd.append("--skip-last-layer")
    runs = []
    for _ in range(repeat):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"reference run failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        run = json.loads(lines[-1])
        if "error" in run:
            return {"available": False, "reason": run["error"]}
        runs.append(run)
    peak_key = "peak_above_start_mib" if all("peak_above_start_mib" in r for r in runs) else "maxrss_delta_mib"
    return {
        "available": True,
        "flags": reference_flags(ground_metric_eff=ground_metric_eff, skip_last_layer=skip_last_layer),
        "threads": threads,
        "seeds": [seed_a, seed_b],
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "peak_mib_median": statistics.median(r[peak_key] for r in runs),
        "peak_method": runs[0]["peak_method"],
        "contended_runs": sum(bool(r.get("contended")) for r in runs),  # shared cores: rerun when the box is idle
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed-a", type=int, default=0)
    parser.add_argument("--seed-b", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ground-metric-eff", action="store_true", help="the published, fast cost routine")
    parser.add_argument("--skip-last-layer", action="store_true", help="identity map on the class outputs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        print(json.dumps(_child(opts.seed_a, opts.seed_b, opts.threads, opts.ground_metric_eff, opts.skip_last_layer)))
        return 0
    if not reference_available():
        print(json.dumps({"available": False, "reason": reference_unavailable_reason()}))
        return 0
    result = measure(
        opts.repeat,
        seed_a=opts.seed_a,
        seed_b=opts.seed_b,
        threads=opts.threads,
        ground_metric_eff=opts.ground_metric_eff,
        skip_last_layer=opts.skip_last_layer,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
