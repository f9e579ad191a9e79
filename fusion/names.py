"""Default model names that say what sets a model apart from its siblings: the method, the options that differ from
its defaults (REPAIR by name), the fine-tune recipe. :meth:`fusion.workspace.Workspace.save` then makes every name
unique within its workspace with a short suffix from the id where all else ties.

>>> fusion_name("mlp 32", "ot", {"repair": True, "mode": "weights"}, 2)
'mlp 32 · ot + REPAIR of 2'
>>> fusion_name("mlp 32", "ot", {"mode": "activations", "samples": 100}, 2)
'mlp 32 · ot (mode activations, samples 100) of 2'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fusion.command_lines import non_default
from fusion.registry import REGISTRY, resolve
from fusion.train import TrainConfig


def option_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(option_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def fusion_name(architecture: str, method: str, options: Mapping[str, Any], parents: int) -> str:
    """``ARCH · METHOD [+ REPAIR] [(changed options)] of K`` for a fusion of ``parents`` models."""
    changed = non_default(resolve(method).spec.options, dict(options)) if method in REGISTRY else {}
    repair = " + REPAIR" if changed.pop("repair", False) else ""
    details = ", ".join(f"{k} {option_text(v)}" for k, v in changed.items())
    return f"{architecture} · {method}{repair}{f' ({details})' if details else ''} of {parents}"


def finetune_name(parent: str, config: TrainConfig) -> str:
    """``PARENT · fine-tuned N ep`` with the recipe's other settings that differ from the command line's."""
    changed = non_default(TrainConfig, {k: v for k, v in config.to_dict().items() if k != "epochs"})
    details = "".join(f", {k} {option_text(v)}" for k, v in changed.items())
    return f"{parent} · fine-tuned {config.epochs} ep{details}"
