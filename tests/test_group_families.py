"""Neuron groups beyond plain convs: depthwise convolutions and gates, concatenations, LayerNorm and layer scales."""

import pytest
import torch

from fusion.alignment import AlignOptions, align
from fusion.groups import neuron_groups
from fusion.methods.transplant import concatenate, prune_to
from fusion.registry import fuse
from fusion.surgery import group_sizes, permuted
from tests.families import FAMILIES, TinyGrouped, TinyMobile, family_model
from tests.fusion_helpers import max_logit_difference

X = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
MATCHING = AlignOptions(features="both", metric="sqeuclidean", sweeps=20)


def groups_of(name: str):
    model = family_model(name, 0)
    return model, neuron_groups(model, X)


def test_a_depthwise_conv_and_its_gate_belong_to_the_group_of_their_input():
    _, groups = groups_of("mobile")
    hidden = next(g for g in groups if g.name == "block.expand.0")
    assert {"block.expand.0", "block.depthwise.0", "block.gate.fc2"} == set(hidden.layers)
    assert ("block.depthwise.0.weight", 0) in {(m.key, m.dim) for m in hidden.producers}
    assert "block.depthwise.0" not in {m.module for m in hidden.consumers}
    assert {"block.gate.fc1", "block.project.0"} == {m.module for m in hidden.consumers}


def test_a_concatenation_splits_the_readers_into_the_slices_of_their_producers():
    _, groups = groups_of("dense")
    by_name = {g.name: g for g in groups}
    last_norm = [m for g in groups for m in g.producers if m.key == "norm.weight"]
    assert [(m.group, m.span(group_sizes_of(groups))) for m in sorted(last_norm, key=lambda m: len(m.before))] == [
        ("stem", (0, 8)),
        ("layers.0.conv", (8, 4)),
        ("layers.1.conv", (12, 4)),
        ("layers.2.conv", (16, 4)),
    ]
    assert [m.key for m in by_name["layers.0.conv"].consumers] == [
        "layers.1.conv.weight",
        "layers.2.conv.weight",
        "head.weight",
    ]


def group_sizes_of(groups):
    return {g.name: g.size for g in groups}


def test_layer_norm_and_layer_scale_are_producers_of_the_residual_group():
    _, groups = groups_of("next")
    stream = next(g for g in groups if g.name == "stem")
    keys = {m.key for m in stream.producers}
    assert {"block.norm.weight", "block.norm.bias", "block.layer_scale", "norm.weight", "block.down.weight"} <= keys
    assert set(stream.normalized) == {"block.norm", "norm"}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("options", [AlignOptions(), MATCHING], ids=["ot", "matching"])
def test_a_permuted_copy_aligns_back_to_the_same_function(name, options):
    model, groups = groups_of(name)
    shuffled = permuted(model, groups, seed=3)
    assert max_logit_difference(model, shuffled, X) < 1e-5
    assert max(float((shuffled.state_dict()[k] - v).abs().max()) for k, v in model.state_dict().items()) > 0.01
    aligned = align(shuffled, model, groups, options).model
    for key, value in model.state_dict().items():
        assert torch.allclose(aligned.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["mobile", "dense"])
def test_transplant_concatenation_is_the_ensemble_and_pruning_restores_the_widths(name):
    a, groups = groups_of(name)
    b = family_model(name, 1)
    wide = concatenate([a, b], groups)
    with torch.no_grad():
        assert torch.allclose(wide(X), (a(X) + b(X)) / 2, atol=1e-5)
    widths = group_sizes(a.state_dict(), groups)
    assert group_sizes(wide.state_dict(), groups) == {k: 2 * v for k, v in widths.items()}
    pruned, _, _ = prune_to(wide, groups, widths, "l2sq", None)
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}
    assert torch.isfinite(pruned(X)).all()


def test_a_concatenated_depthwise_conv_stays_depthwise():
    a, groups = groups_of("mobile")
    wide = concatenate([a, family_model("mobile", 1)], groups)
    conv = wide.block.depthwise[0]
    assert conv.groups == conv.in_channels == conv.out_channels == 48


def test_transplant_shares_a_layer_normalised_group_instead_of_concatenating_it():
    """A LayerNorm over both models' channels would not compute the ensemble: the group is shared (averaged), and a
    model transplanted with itself is itself; sharing groups of different widths is refused."""
    a, groups = groups_of("next")
    shared = frozenset(g.name for g in groups if g.normalized)
    assert shared
    with torch.no_grad():
        assert max_logit_difference(concatenate([a, a], groups, shared), a, X) < 1e-5
    result = fuse([a, family_model("next", 1)], "transplant", inputs=X)
    assert set(result.report.details.shared) == shared
    assert group_sizes(result.model.state_dict(), groups) == group_sizes(a.state_dict(), groups)


@pytest.mark.parametrize("name", FAMILIES)
def test_intra_fusion_and_pruning_halve_every_group(name):
    model, groups = groups_of(name)
    for method in ("intra", "prune"):
        result = fuse([model], method, inputs=X, sparsity=0.5)
        widths = group_sizes(result.model.state_dict(), groups)
        assert widths == {g.name: round(g.size / 2) for g in groups}
        assert torch.isfinite(result.model(X)).all()


def test_ot_fusion_of_two_independent_models_verifies_every_hard_alignment():
    a, b = TinyMobile(), family_model("mobile", 1)
    result = fuse([b, a.eval()], "ot", inputs=X, recompute_bn=False)
    verified = [error for error in result.report.verified if error is not None]
    assert len(verified) == 1 and verified[0] < 1e-4
    assert result.model(X).shape == (16, 10)


@pytest.mark.parametrize("options", [AlignOptions(), MATCHING], ids=["ot", "matching"])
def test_a_grouped_convolution_that_is_not_depthwise_moves_whole_groups_and_aligns_back(options):
    model = TinyGrouped().eval()
    groups = {g.name: g for g in neuron_groups(model, X)}
    assert {name: (g.blocks, g.tie) for name, g in groups.items()} == {
        "stem": (2, "grouped"),
        "grouped": (2, "grouped"),
    }
    shuffled = permuted(model, list(groups.values()), seed=3)
    assert max_logit_difference(model, shuffled, X) < 1e-5
    aligned = align(shuffled, model, list(groups.values()), options).model
    for key, value in model.state_dict().items():
        assert torch.allclose(aligned.state_dict()[key], value), key
