"""LayerNorm gains folded into the layers that read them, and the groups that then admit orthogonal maps.

A LayerNorm over ``d`` channels computes ``y = g * n(x) + b`` with ``n(x) = (x - mean(x) 1) / std(x)``. A linear
layer that reads it, ``z = W y + c``, computes the same ``z = (W diag(g)) n(x) + (W b + c)``, so the gain and bias
can move into every reader (:func:`fold_layernorms`), leaving the LayerNorm with ``g = 1``, ``b = 0``. Then
``n(R x) = R n(x)`` for every orthogonal ``R`` with ``R 1 = 1`` (:mod:`fusion.procrustes`), and a residual stream
whose only nonlinearities are such LayerNorms admits these maps: its writers ``W -> R W``, its readers
``V -> V R^T`` (Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting Rows and Columns", ICLR 2024,
Sec. 3; Theus et al., "Generalized Linear Mode Connectivity for Transformers", NeurIPS 2025). Which groups do is
measured, not assumed from layer types (:func:`orthogonal_groups`): a random such map is applied to the group alone
and the network's outputs compared, so a group that a depthwise convolution, a layer scale or an activation also
touches keeps permutations.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from fusion.groups import NeuronGroup
from fusion.procrustes import orthogonal_transport, random_orthogonal
from fusion.surgery import apply_transports, with_state

TOLERANCE = 1e-4
"""Largest logit change, relative to the largest logit (at least 1), that still counts as the same function."""


def same_function(model: nn.Module, other: nn.Module, inputs: torch.Tensor) -> bool:
    """Whether two networks' logits on ``inputs`` agree to :data:`TOLERANCE` (eval mode, on ``inputs``' device)."""
    with torch.no_grad():
        expected, found = model.eval()(inputs), other.eval()(inputs)
    return float((found - expected).abs().max()) <= TOLERANCE * max(1.0, float(expected.abs().max()))


def layernorm_readers(model: nn.Module, inputs: torch.Tensor) -> dict[str, list[nn.Linear]]:
    """For every LayerNorm of ``model``, the linear layers whose input is its output or a view of it (one traced
    forward pass; the outputs are held until the pass ends, so no other tensor can take their memory)."""
    names = {module: name for name, module in model.named_modules()}
    outputs: dict[int, str] = {}
    held: list[torch.Tensor] = []
    readers: dict[str, list[nn.Linear]] = {name: [] for m, name in names.items() if isinstance(m, nn.LayerNorm)}

    def normalised(module: nn.Module, args: object, output: torch.Tensor) -> None:
        held.append(output)
        outputs[output.untyped_storage().data_ptr()] = names[module]

    def reads(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        source = outputs.get(args[0].untyped_storage().data_ptr())
        if source is not None:
            readers[source].append(module)

    hooks = [m.register_forward_hook(normalised) for m in names if isinstance(m, nn.LayerNorm)]
    hooks += [m.register_forward_pre_hook(reads) for m in names if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return readers


@torch.no_grad()
def fold_layernorms(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every LayerNorm's gain folded into the linear layers that read it (``W -> W diag(g)``,
    ``g -> 1``) and its bias too where all of them have biases (``c -> c + W b``, ``b -> 0``); the function is
    unchanged. When a LayerNorm's output reaches anything but linear layers (a post-norm residual addition, an
    activation) the copy would compute another function, and ``model`` itself is returned, as it is for a model
    without LayerNorms. The model is traced on ``inputs`` (a few examples).

    Examples
    --------
    >>> import torch
    >>> from fusion.models import build_model, default_spec
    >>> model = build_model(default_spec("vit", (1, 8, 8), 10), seed=0)
    >>> with torch.no_grad():
    ...     _ = model.norm.weight.uniform_(0.5, 2.0)
    >>> folded = fold_layernorms(model, torch.randn(2, 1, 8, 8))
    >>> bool((folded.norm.weight == 1).all()), bool((folded.norm.bias == 0).all())
    (True, True)
    >>> x = torch.randn(4, 1, 8, 8)
    >>> torch.allclose(folded(x), model.eval()(x), atol=1e-5)
    True
    """
    if not any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        return model
    folded = copy.deepcopy(model).eval()
    readers = layernorm_readers(folded, inputs)
    modules = dict(folded.named_modules())
    for name, linears in readers.items():
        norm = modules[name]
        if not linears or norm.weight is None or len(norm.normalized_shape) != 1:
            continue
        for linear in set(linears):
            if norm.bias is not None and all(r.bias is not None for r in linears):
                linear.bias.add_(linear.weight @ norm.bias)
            linear.weight.mul_(norm.weight)
        norm.weight.fill_(1.0)
        if norm.bias is not None and all(r.bias is not None for r in linears):
            norm.bias.zero_()
    return folded if same_function(model, folded, inputs) else model


@torch.no_grad()
def restore_layernorms(model: nn.Module, like: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """``model`` with the gains ``g'`` and biases ``b'`` of ``like``'s LayerNorms, in place, its function unchanged:
    each reader ``V y + c`` of a LayerNorm whose output is ``y = g n + b`` becomes ``V' = V diag(g / g')`` and
    ``c' = c + V b - V' b'``, so that ``V' (g' n + b') + c' = V y + c``. A reader without bias keeps the bias
    ``b' = g' b / g`` instead; a LayerNorm whose gain or ``like``'s has a zero is left as it is. Fusion folds the
    parents' gains (:func:`fold_layernorms`, ``g = 1``) and gives the fused model the reference's LayerNorm parameters
    back, so that it reads like its parents."""
    readers = layernorm_readers(model, inputs.to(next(model.parameters()).device))
    modules, targets = dict(model.named_modules()), dict(like.named_modules())
    for name, linears in readers.items():
        norm, target = modules[name], targets[name]
        if not linears or norm.weight is None or not bool(norm.weight.all()) or not bool(target.weight.all()):
            continue
        gain = target.weight.to(norm.weight)
        scale = norm.weight / gain
        bias = norm.bias if norm.bias is not None else torch.zeros_like(gain)
        biased = all(r.bias is not None for r in linears) and target.bias is not None
        restored = target.bias.to(bias) if biased else bias / scale
        for linear in set(linears):
            if biased:
                linear.bias.add_(linear.weight @ (bias - scale * restored))
            linear.weight.mul_(scale)
        norm.weight.copy_(gain)
        if norm.bias is not None:
            norm.bias.copy_(restored)
    return model


def random_rotation(group: NeuronGroup, seed: int) -> np.ndarray:
    """A random orthogonal map of the kind ``group`` would get: keeping ``1`` on a LayerNorm'd group, one per head
    (block-diagonal) on an attention group."""
    if group.heads == 1:
        return random_orthogonal(group.size, seed)
    width = group.size // group.heads
    import scipy.linalg  # imported on first use: 0.2-0.4 s that `from fusion import fuse` need not pay

    return scipy.linalg.block_diag(*(random_orthogonal(width, seed + h, keep_ones=False) for h in range(group.heads)))


def orthogonal_groups(model: nn.Module, groups: list[NeuronGroup], inputs: torch.Tensor) -> list[NeuronGroup]:
    """``groups`` with ``maps="orthogonal"`` on every LayerNorm'd group and every attention group that a random
    orthogonal map (:func:`random_rotation`, seed 0), applied to it alone, leaves computing ``model``'s function on
    ``inputs``: a residual stream whose LayerNorm gains are folded (:func:`fold_layernorms`), and an attention's
    query/key and value/output pairs, whose heads each admit an orthogonal map."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    marked = []
    for group in groups:
        if group.maps == "permutation" and ((group.normalized and group.blocks == 1) or group.heads > 1):
            rotation = orthogonal_transport(random_rotation(group, seed=0))
            rotated = with_state(model, apply_transports(state, groups, {group.name: rotation}))
            if same_function(model.cpu(), rotated, inputs.cpu()):
                group = dataclasses.replace(group, maps="orthogonal")
        marked.append(group)
    return marked
