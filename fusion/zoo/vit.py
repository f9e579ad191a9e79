"""The zoo's Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021), sized for digits,
MNIST and CIFAR.

An image ``(C, H, W)`` is cut into a 4 x 4 grid of square patches (``H / 4`` pixels a side), each embedded by one
convolution ``patch`` into ``d`` channels; a class token ``cls`` is prepended and position embeddings ``pos`` added.
``depth`` pre-norm blocks follow, each ``x + attn(norm1(x))`` then ``x + fc2(gelu(fc1(norm2(x))))``, and the class
token's final LayerNorm'd state goes to the linear ``head``. Attention has ``heads`` heads of ``d / heads`` dimensions
with separate query, key and value projections ``q``, ``k``, ``v`` and the output projection ``proj``:

.. math::

    \\mathrm{attn}(x) = \\mathrm{proj}\\big(\\big[\\mathrm{softmax}(q_h(x) k_h(x)^\\top / \\sqrt{d / heads})\\,
    v_h(x)\\big]_{h=1}^{heads}\\big),

written out (no fused kernel) so that its second derivatives exist for the Hessian analyses. The neurons of this
network: the residual stream (``d`` channels shared by the patch embedding, class token, position embeddings, every
LayerNorm, ``proj`` and ``fc2`` rows and the readers' columns), each block's MLP hidden units, and per attention the
query/key dimensions and the value dimensions, both in ``heads`` blocks (:mod:`fusion.groups`). Its widths are fixed
by the spec (fusions keep every width), so a fused ViT rebuilds from its parents' spec.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fusion.errors import ArchitectureError
from fusion.zoo.layers import check_square, width_label
from fusion.zoo.spec import Architecture, ModelSpec

VIT_DEPTH = 4
VIT_HEADS = 4
VIT_WIDTH = 64
VIT_MLP_RATIO = 2
VIT_GRID = 4


def vit_sizes(input_shape: tuple[int, int, int], width: float) -> tuple[int, int, int]:
    """``(d, mlp, patch)``: the embedding width ``64 * width`` rounded to a multiple of the heads, the MLP width
    ``2 d`` and the patch side ``H / 4``."""
    d = max(VIT_HEADS, round(VIT_WIDTH * width / VIT_HEADS) * VIT_HEADS)
    return d, VIT_MLP_RATIO * d, input_shape[1] // VIT_GRID


class Attention(nn.Module):
    """Multi-head self-attention over ``(B, N, d)`` tokens with separate ``q``, ``k``, ``v`` and ``proj`` layers."""

    def __init__(self, d: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = heads
        self.q = nn.Linear(d, d, bias=bias)
        self.k = nn.Linear(d, d, bias=bias)
        self.v = nn.Linear(d, d, bias=bias)
        self.proj = nn.Linear(d, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(batch, tokens, self.num_heads, -1).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, -1))


class Block(nn.Module):
    """A pre-norm transformer block: attention, then a GELU MLP, each added to the residual stream."""

    def __init__(self, d: int, heads: int, mlp: int, bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads, bias)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding, class token, position embeddings, :data:`VIT_DEPTH` blocks, final LayerNorm, linear head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: float, bias: bool) -> None:
        super().__init__()
        d, mlp, patch = vit_sizes(input_shape, width)
        self.patch = nn.Conv2d(input_shape[0], d, patch, stride=patch, bias=bias)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, VIT_GRID * VIT_GRID + 1, d) * 0.02)
        self.blocks = nn.Sequential(*(Block(d, VIT_HEADS, mlp, bias) for _ in range(VIT_DEPTH)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def check_vit(spec: ModelSpec) -> None:
    """Square inputs whose side is a multiple of :data:`VIT_GRID`; LayerNorm, never BatchNorm."""
    check_square(spec)
    if spec.input_shape[1] % VIT_GRID:
        raise ArchitectureError(
            f"vit cuts an image into {VIT_GRID}x{VIT_GRID} patches: its side must be a multiple of {VIT_GRID}, "
            f"got {spec.input_shape[1]}"
        )
    if spec.batch_norm:
        raise ArchitectureError("vit normalises with LayerNorm: batch_norm does not apply")


def build_vit(spec: ModelSpec) -> ViT:
    """The :class:`ViT` of ``spec``'s inputs, classes, width and bias."""
    return ViT(spec.input_shape, spec.num_classes, spec.width, spec.bias)


ARCHITECTURES = (Architecture("vit", "vit", build_vit, knobs=("width", "bias"), check=check_vit, label=width_label),)
"""The ViT (its parameters counted on a meta-device build; no stages; widths fixed by the spec)."""
