"""The residual stream of a ViT as an orthogonal group: LayerNorm gains folded, orthogonal maps keeping the all-ones
direction, found by orthogonal Procrustes (issue 33)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fusion.alignment import AlignOptions, align
from fusion.groups import NeuronGroup, neuron_groups
from fusion.layernorm import fold_layernorms, orthogonal_groups, random_rotation, restore_layernorms
from fusion.models import build_model, default_spec
from fusion.procrustes import orthogonal_procrustes, orthogonal_transport
from fusion.registry import fuse
from fusion.surgery import apply_transports, permuted, with_state
from fusion.transport import Gram
from studies.support import randomize_norms
from tests.fusion_helpers import max_logit_difference

X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
SPEC = default_spec("vit", (1, 8, 8), 10)


def vit(seed: int) -> nn.Module:
    return randomize_norms(build_model(SPEC, seed=seed), seed + 1)


@pytest.fixture(scope="module")
def folded() -> tuple[nn.Module, list[NeuronGroup]]:
    model = fold_layernorms(vit(0), X[:2])
    return model, orthogonal_groups(model, neuron_groups(model, X[:2]), X[:2])


def rotated(model: nn.Module, groups: list[NeuronGroup], seed: int, heads: bool = False) -> nn.Module:
    """``model`` with its residual stream rotated by a random orthogonal map keeping ``1``, and with ``heads`` every
    attention head's query/key and value/output pairs by random orthogonal maps."""
    turned = [g for g in groups if g.maps == "orthogonal" and (heads or g.heads == 1)]
    rotations = {g.name: orthogonal_transport(random_rotation(g, seed + i)) for i, g in enumerate(turned)}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return with_state(model, apply_transports(state, groups, rotations)).eval()


def largest_difference(model: nn.Module, other: nn.Module) -> float:
    return max(float((other.state_dict()[k] - v).abs().max()) for k, v in model.state_dict().items())


def test_folding_layernorm_gains_and_biases_into_their_readers_keeps_the_function():
    model = vit(0)
    folded = fold_layernorms(model, X[:2])
    norms = [m for m in folded.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 9
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)
    assert max_logit_difference(folded, model, X) < 1e-5
    assert not bool((model.norm.weight == 1).all())  # the source is not modified


def test_restoring_the_gains_keeps_the_function_and_gives_back_the_parameters():
    model = vit(0)
    restored = restore_layernorms(fold_layernorms(model, X[:2]), model, X[:2])
    assert max_logit_difference(restored, model, X) < 1e-5
    assert largest_difference(model, restored) < 1e-5


def test_the_folded_residual_stream_and_the_attention_heads_admit_orthogonal_maps_and_the_mlp_does_not(folded):
    _, groups = folded
    assert [g.name for g in groups if g.maps == "orthogonal" and g.heads == 1] == ["patch"]
    assert {g.name for g in groups if g.heads > 1} == {g.name for g in groups if g.maps == "orthogonal"} - {"patch"}
    assert all(g.maps == "permutation" for g in groups if g.name.endswith("fc1"))
    unfolded = vit(0)
    marked = orthogonal_groups(unfolded, neuron_groups(unfolded, X[:2]), X[:2])
    assert all(g.maps == "permutation" for g in marked if g.heads == 1)


@pytest.mark.parametrize("heads", [False, True], ids=["stream", "stream-and-heads"])
def test_a_vit_with_its_stream_rotated_keeps_its_function(folded, heads):
    model, groups = folded
    turned = rotated(model, groups, seed=4, heads=heads)
    assert largest_difference(model, turned) > 0.1
    assert max_logit_difference(turned, model, X) < 1e-5


@pytest.mark.parametrize("mode", ["weights", "activations"])
def test_the_orthogonal_map_kind_aligns_a_rotated_vit_back_to_its_source(folded, mode):
    model, groups = folded
    alignment = align(rotated(model, groups, seed=4), model, groups, AlignOptions(mode=mode, orthogonal=True), X)
    assert alignment.transports["patch"].orthogonal
    assert largest_difference(model, alignment.model) < 1e-4
    assert max_logit_difference(alignment.model, model, X) < 1e-4


@pytest.mark.parametrize("heads", [False, True], ids=["shuffled-heads", "shuffled-and-rotated-heads"])
def test_shuffled_heads_shuffled_mlp_units_and_a_rotated_stream_come_back_together(folded, heads):
    model, groups = folded
    scrambled = rotated(permuted(model, groups, seed=3), groups, seed=5, heads=heads)
    alignment = align(scrambled, model, groups, AlignOptions(mode="activations", orthogonal=True), X)
    assert largest_difference(model, alignment.model) < 1e-3  # float32 products of the activations
    assert max_logit_difference(alignment.model, model, X) < 1e-4


def test_the_procrustes_map_is_orthogonal_and_keeps_the_ones_direction():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 50, generator=generator), torch.randn(12, 50, generator=generator)
    transport = orthogonal_procrustes(Gram.of(a, b))
    matrix = transport.rows.double().numpy()
    assert transport.orthogonal and transport.exact and transport.permutation is None
    assert np.abs(matrix @ matrix.T - np.eye(12)).max() < 1e-6
    assert np.abs(matrix @ np.ones(12) - 1).max() < 1e-6
    assert np.abs(matrix.T @ np.ones(12) - 1).max() < 1e-6


def test_default_ot_fusion_of_two_independent_vits_is_orthogonal_verified_and_keeps_the_reference_norms():
    parents = [vit(0), vit(1)]
    result = fuse(parents, "ot", inputs=X, recompute_bn=False)
    assert result.transports[1]["patch"].orthogonal
    heads = result.transports[1]["blocks.1.attn.q"]
    assert heads.orthogonal
    mass = np.abs(heads.rows.numpy()).reshape(4, 16, 4, 16).sum(axis=(1, 3))
    assert (np.count_nonzero(mass > 1e-9, axis=1) == 1).all(), "each head is rotated onto one head"
    assert result.report.verified[1] < 1e-4
    assert torch.allclose(result.model.norm.weight, parents[0].norm.weight)
