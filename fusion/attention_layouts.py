"""Fused attention projections, split for alignment and joined back.

Neuron groups (:mod:`fusion.groups`, :mod:`fusion.heads`) see attention as four linear layers ``q``, ``k``, ``v`` and
``proj``. torchvision's ``VisionTransformer`` uses ``nn.MultiheadAttention`` (one ``in_proj_weight`` of shape
``(3d, d)`` holding the query, key and value rows, and ``out_proj``) and timm's ViTs an ``Attention`` with one linear
``qkv`` of ``3d`` outputs and ``proj``. Both compute, per head ``h`` of width ``d / H``,
``softmax(q_h k_h^T / sqrt(d / H)) v_h`` from the three row blocks of the fused projection, then the output projection,
so cutting ``in_proj_weight`` (or ``qkv.weight``) and its bias into three row blocks gives :class:`SplitAttention`,
which computes the same function (up to float rounding: the fused modules call ``scaled_dot_product_attention``).

:func:`split_attention_layers` makes that copy of a model; the methods fuse it, and :func:`join_attention_layers`
writes the fused projections back into the original module type, so a fused torchvision or timm ViT has its own
architecture's parameters again. Only self-attention is split (query, key and value the same tensor, no masks, no
``bias_k``/``bias_v``, no zero attention); timm's query/key normalisation, scale normalisation and gate are refused
by name: a map inside a head would have to move a per-head-dimension parameter shared by every head.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fusion.groups import UnsupportedArchitecture
from fusion.zoo.vit import Attention


class SplitAttention(Attention):
    """Self-attention with separate ``q``, ``k``, ``v`` and ``proj`` that stands in for a fused module: ``layout``
    ``"mha"`` answers ``nn.MultiheadAttention``'s call ``(query, key, value, ...) -> (output, None)``, ``"timm"``
    timm's ``(x) -> output``. ``template`` is the fused module on the meta device, for :func:`join_attention_layers`."""

    def __init__(self, parts: tuple[nn.Linear, ...], heads: int, layout: str, template: nn.Module) -> None:
        nn.Module.__init__(self)
        self.num_heads = heads
        self.q, self.k, self.v, self.proj = parts
        self.layout = layout
        self.batch_first = getattr(template, "batch_first", True)
        self.template = [template]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.layout == "timm":
            if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
                raise UnsupportedArchitecture("attention masks are not supported on split attention")
            return super().forward(args[0])
        query, key, value = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args) :])[:3]
        if not (query is key is value) or any(kwargs.get(n) is not None for n in ("key_padding_mask", "attn_mask")):
            raise UnsupportedArchitecture("only unmasked self-attention (query = key = value) is supported")
        x = query if self.batch_first else query.transpose(0, 1)
        out = super().forward(x)
        return (out if self.batch_first else out.transpose(0, 1)), None


def linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach().clone())
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone())
    return layer


def split_module(name: str, module: nn.Module) -> SplitAttention | None:
    """The :class:`SplitAttention` of a fused attention module, ``None`` for any other module."""
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise UnsupportedArchitecture(
                f"{name}: MultiheadAttention with separate key/value widths, bias_k/bias_v or zero attention is not "
                "supported"
            )
        bias = module.in_proj_bias
        rows = module.in_proj_weight.chunk(3)
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        out = module.out_proj
        parts = (*(linear(w, b) for w, b in zip(rows, biases)), linear(out.weight, out.bias))
        return SplitAttention(parts, module.num_heads, "mha", copy.deepcopy(module).to("meta"))
    if type(module).__name__ == "Attention" and isinstance(getattr(module, "qkv", None), nn.Linear):
        extras = [
            part
            for part in ("q_norm", "k_norm", "norm")
            if not isinstance(getattr(module, part, nn.Identity()), nn.Identity)
        ]
        if getattr(module, "gate", None) is not None:
            extras.append("gate")
        if extras or module.qkv.out_features != 3 * module.proj.in_features:
            raise UnsupportedArchitecture(
                f"{name}: timm attention with {', '.join(extras) or 'an attention width other than its input'} is "
                "not supported"
            )
        qkv = module.qkv
        biases = qkv.bias.chunk(3) if qkv.bias is not None else (None, None, None)
        parts = (
            *(linear(w, b) for w, b in zip(qkv.weight.chunk(3), biases)),
            linear(module.proj.weight, module.proj.bias),
        )
        return SplitAttention(parts, module.num_heads, "timm", copy.deepcopy(module).to("meta"))
    return None


def has_fused_attention(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.MultiheadAttention) or (type(m).__name__ == "Attention" and hasattr(m, "qkv"))
        for m in model.modules()
    )


def split_attention_layers(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no fused attention; otherwise a copy with every fused attention module replaced
    by its :class:`SplitAttention` (same function, same device and dtype)."""
    if not has_fused_attention(model):
        return model
    result = copy.deepcopy(model)
    for name, module in list(result.named_modules()):
        split = split_module(name, module)
        if split is not None:
            parent, _, child = name.rpartition(".")
            setattr(result.get_submodule(parent) if parent else result, child, split)
    return result.train(model.training)


def join_attention_layers(model: nn.Module) -> nn.Module:
    """``model`` with every :class:`SplitAttention` written back into its original module type (in place; the model
    is returned). Widths must be the original ones."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, SplitAttention):
            continue
        q, k, v, proj = module.q, module.k, module.v, module.proj
        weight = torch.cat([q.weight, k.weight, v.weight]).detach()
        bias = torch.cat([q.bias, k.bias, v.bias]).detach() if q.bias is not None else None
        fused = copy.deepcopy(module.template[0]).to_empty(device=weight.device)
        fused.to(weight.dtype)
        state = {"in_proj_weight": weight, "out_proj.weight": proj.weight.detach()}
        prefix = "out_proj" if module.layout == "mha" else "proj"
        if module.layout == "timm":
            state = {"qkv.weight": weight, "proj.weight": proj.weight.detach()}
            if bias is not None:
                state["qkv.bias"] = bias
        elif bias is not None:
            state["in_proj_bias"] = bias
        if proj.bias is not None:
            state[f"{prefix}.bias"] = proj.bias.detach()
        expected = fused.state_dict()
        if set(state) != set(expected) or any(state[key].shape != expected[key].shape for key in state):
            raise UnsupportedArchitecture(f"{name}: the fused attention's widths changed, so it cannot be joined back")
        fused.load_state_dict(state)
        fused.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, fused)
    return model


FUSED_NAMES = {
    "mha": {
        "in_proj_weight": ("q.weight", "k.weight", "v.weight"),
        "in_proj_bias": ("q.bias", "k.bias", "v.bias"),
        "out_proj.weight": ("proj.weight",),
        "out_proj.bias": ("proj.bias",),
    },
    "timm": {
        "qkv.weight": ("q.weight", "k.weight", "v.weight"),
        "qkv.bias": ("q.bias", "k.bias", "v.bias"),
        "proj.weight": ("proj.weight",),
        "proj.bias": ("proj.bias",),
    },
}


def differentiable_twin(
    model: nn.Module,
) -> tuple[nn.Module, Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]]:
    """A module that computes ``model``'s function with attention written out (:class:`SplitAttention`, whose
    second derivatives exist, unlike those of the fused ``scaled_dot_product_attention`` kernels), and the map from
    ``model``'s state names to the twin's: each fused projection cut into its row blocks, differentiably, so a
    :func:`torch.func.functional_call` of the twin on the mapped parameters has ``model``'s derivatives with respect
    to ``model``'s own parameters. ``model`` itself and the identity when it has no fused attention."""
    twin = split_attention_layers(model)
    if twin is model:
        return model, dict
    layouts = {name: m.layout for name, m in twin.named_modules() if isinstance(m, SplitAttention)}

    def rename(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result = dict(state)
        for name, layout in layouts.items():
            for fused, parts in FUSED_NAMES[layout].items():
                tensor = result.pop(f"{name}.{fused}", None)
                if tensor is not None:
                    pieces = tensor.chunk(len(parts))
                    result.update({f"{name}.{part}": piece for part, piece in zip(parts, pieces)})
        return result

    return twin, rename
