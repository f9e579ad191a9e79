"""torchvision's and timm's Vision Transformers: their fused query/key/value projections split into FusionLab's
layout and joined back exactly, fused with every method in their own architecture, their Hessian through the split
twin equal to the native model's, and the layouts that cannot be split refused by name."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torchvision.models import VisionTransformer

from analysis.curvature.hessian import HessianOperator
from fusion.attention_layouts import SplitAttention, join_attention_layers, split_attention_layers
from fusion.errors import FusionError
from fusion.groups import UnsupportedArchitecture, neuron_groups
from fusion.registry import fuse
from fusion.surgery import permuted
from tests.fusion_helpers import max_logit_difference

X = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def jittered(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter moved off its initialisation (torchvision zeroes the head, timm LayerNorms start at 1, 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def torchvision_vit(seed: int, heads: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return jittered(VisionTransformer(16, 8, 2, heads, 16, 32, num_classes=5), seed)


def timm_vit(seed: int, **options) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=8, depth=2, embed_dim=24, num_heads=3, num_classes=5, **options
    )
    return jittered(model, seed)


BUILDERS = {"torchvision": torchvision_vit, "timm": timm_vit}


@pytest.mark.parametrize("source", BUILDERS)
def test_split_attention_computes_the_same_function_and_joins_back_to_the_same_parameters(source):
    model = BUILDERS[source](0)
    split = split_attention_layers(model)
    assert sum(isinstance(m, SplitAttention) for m in split.modules()) == 2
    assert max_logit_difference(split, model, X) < 1e-5
    joined = join_attention_layers(split)
    assert joined.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(joined.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, SplitAttention) for m in joined.modules())
    assert max_logit_difference(joined, model, X) == 0


@pytest.mark.parametrize("source", BUILDERS)
@pytest.mark.parametrize("method", ["ot", "matching"])
def test_a_shuffled_copy_fuses_back_in_the_native_layout(source, method):
    model = BUILDERS[source](0)
    split = split_attention_layers(model)
    groups = neuron_groups(split, X[:2])
    assert sum(g.heads > 1 for g in groups) == 4, "query/key and value groups of both attentions"
    shuffled = join_attention_layers(permuted(split, groups, seed=3))
    assert max_logit_difference(shuffled, model, X) < 1e-5
    assert not torch.equal(shuffled.state_dict()[first_fused_key(model)], model.state_dict()[first_fused_key(model)])
    result = fuse([model, shuffled], method, inputs=X)
    assert result.model.state_dict().keys() == model.state_dict().keys()
    assert max_logit_difference(result.model, model, X) < 1e-4
    assert all(v is not None and v < 1e-4 for v in result.report.verified[1:])


def first_fused_key(model: nn.Module) -> str:
    return next(k for k in model.state_dict() if k.endswith(("in_proj_weight", "qkv.weight")))


@pytest.mark.parametrize("source", BUILDERS)
def test_transplant_and_averaging_of_two_vits_keep_their_architecture(source):
    a, b = BUILDERS[source](0), BUILDERS[source](1)
    for method in ("transplant", "average"):
        fused = fuse([a, b], method, inputs=X).model
        assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}
        assert torch.isfinite(fused(X)).all()
        native = [m for m in fused.modules() if isinstance(m, nn.MultiheadAttention) or hasattr(m, "qkv")]
        assert len(native) == 2 and all(m.num_heads == (2 if source == "torchvision" else 3) for m in native)


def test_the_inputs_are_not_modified():
    a, b = torchvision_vit(0), torchvision_vit(1)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    fuse([a, b], "ot", inputs=X)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in before.items())
    assert isinstance(a.encoder.layers[0].self_attention, nn.MultiheadAttention)


def test_the_hessian_of_a_native_vit_is_taken_through_its_split_twin():
    """``H v`` from the operator (second derivatives through the written-out attention) against central differences
    of the native model's gradients (first derivatives of the fused kernel exist)."""
    model = torchvision_vit(0)
    labels = torch.arange(8) % 5
    operator = HessianOperator(model, (X, labels), device=torch.device("cpu"), batch_size=8)
    vector = torch.randn(1, operator.size, generator=torch.Generator().manual_seed(1))
    product = operator.matmul(vector.T)[:, 0]

    def gradient(shift: float) -> torch.Tensor:
        params = {n: p.detach() + shift * d for (n, p), d in zip(model.named_parameters(), directions(model, vector))}
        for p in params.values():
            p.requires_grad_()
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, params, (X,)), labels)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    step = 1e-3
    expected = (gradient(step) - gradient(-step)) / (2 * step)
    assert torch.allclose(product, expected, rtol=5e-2, atol=5e-3 * float(expected.abs().max()))


def directions(model: nn.Module, vector: torch.Tensor) -> list[torch.Tensor]:
    pieces, start = [], 0
    for parameter in model.parameters():
        pieces.append(vector[0, start : start + parameter.numel()].reshape(parameter.shape))
        start += parameter.numel()
    return pieces


def test_different_head_counts_are_refused_by_name():
    with pytest.raises(FusionError, match="encoder.layers.encoder_layer_0.self_attention: 4 heads of 4 dimensions"):
        fuse([torchvision_vit(0), torchvision_vit(1, heads=4)], "ot", inputs=X)


def test_query_key_normalisation_is_refused_by_name():
    with pytest.raises(UnsupportedArchitecture, match="blocks.0.attn: timm attention with q_norm, k_norm"):
        fuse([timm_vit(0, qk_norm=True), timm_vit(1, qk_norm=True)], "ot", inputs=X)


def test_cross_attention_through_a_split_module_is_refused():
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    holder = nn.Sequential()
    holder.add_module("attn", attention)
    split = split_attention_layers(holder).attn
    query, memory = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    with pytest.raises(UnsupportedArchitecture, match="self-attention"):
        split(query, memory, memory)
    x = torch.randn(3, 2, 8)
    unbatched = nn.MultiheadAttention(8, 2).eval()
    holder = nn.Sequential()
    holder.add_module("attn", unbatched)
    twin = split_attention_layers(holder).attn.eval()
    assert torch.allclose(twin(x, x, x)[0], unbatched(x, x, x, need_weights=False)[0], atol=1e-6)
