"""Command lines that recompute what they stand beside: ``python -m fusion WORDS --flag value ...``, built from the
same option dataclasses as the command line's flags (:func:`fusion.options.option_fields`).

>>> command_line(["hessian", "m-1"], {"samples": 200, "split": "train", "lines_to_parents": False})
'python -m fusion hessian m-1 --samples 200 --split train --no-lines-to-parents'
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from fusion.models import ModelSpec
from fusion.options import option_fields
from fusion.registry import resolve
from fusion.train import TrainConfig
from fusion.zoo import architecture


def non_default(options_class: type, options: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from the dataclass defaults (lists compared as tuples)."""
    defaults = {f.name: f.default for f in option_fields(options_class)}
    return {
        k: v for k, v in options.items() if k in defaults and (tuple(v) if isinstance(v, list) else v) != defaults[k]
    }


def command_line(words: Sequence[str], options: dict[str, Any]) -> str:
    """``python -m fusion ...`` with the options as flags, for reproducing a run headless."""
    parts = ["python", "-m", "fusion", *words]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (tuple, list)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def fusion_command_lines(
    method: str,
    parents: Sequence[str],
    options: dict[str, Any],
    finetune: dict[str, Any] | None = None,
    fused_id: str = "FUSED_ID",
) -> list[str]:
    """The command line(s) that repeat a fusion: ``fuse`` with every option that differs from the method's default,
    and its fine-tune recipe (a :class:`fusion.train.TrainConfig` as a dict) as ``--finetune-epochs/--finetune-lr``
    when it is the command line's own (Adam, batches of 64, seed 0), else as a second ``finetune`` command of the
    fused model (``fused_id``, where known; else ``FUSED_ID``, the id the first command prints)."""
    fuse = ["fuse", "--method", method, "--models", *parents]
    flags = non_default(resolve(method).spec.options, options)
    if finetune is None:
        return [command_line(fuse, flags)]
    if finetune == TrainConfig(epochs=int(finetune.get("epochs", 1)), lr=float(finetune.get("lr", 1e-3))).to_dict():
        return [command_line(fuse, {**flags, "finetune_epochs": finetune["epochs"], "finetune_lr": finetune["lr"]})]
    recipe = {k: finetune[k] for k in ("epochs", "lr", "batch_size", "optimizer", "seed") if k in finetune}
    return [command_line(fuse, flags), command_line(["finetune", fused_id], recipe)]


def train_command(spec: ModelSpec, dataset: str, config: TrainConfig, seeds: Sequence[int] | None = None) -> str | None:
    """The ``train`` command line that trains ``spec`` on ``dataset`` with ``config`` (with each of ``seeds`` instead
    of its seed, when given; every knob of a zoo spec spelled out, so the command line builds this very spec), or
    ``None`` for a recipe the command line cannot state (an SGD momentum other than its default)."""
    if config.momentum != TrainConfig().momentum:
        return None
    knobs: dict[str, Any] = {}
    if architecture(spec.arch).knobs:
        knobs = {"hidden": spec.hidden, "channels": spec.channels, "width": spec.width}
        knobs = {k: v for k, v in knobs.items() if v != ()}
        knobs.update(batch_norm=spec.batch_norm, bias=spec.bias)
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("momentum", "augment")}
    if seeds is not None:
        recipe["seed"] = list(seeds)
    line = command_line(["train", "--arch", spec.arch, "--dataset", dataset], {**knobs, **recipe})
    return line + (" --augment" if config.augment else "")
