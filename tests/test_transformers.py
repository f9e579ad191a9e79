"""Vision Transformers: the zoo's ViT as neuron groups (residual stream, MLP units, attention heads with their
query/key and value dimensions), aligned back exactly from every permutation at once, and refused clearly where a
method cannot keep heads whole."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from analysis.maps import GroupMap, head_map, stored_heads
from analysis.norms import neuron_norms
from fusion.errors import ConfigError
from fusion.groups import UnsupportedArchitecture, neuron_groups
from fusion.heads import head_transports
from fusion.methods.base import Context
from fusion.methods.transplant import TransplantOptions, concatenate, stream_aligned
from fusion.models import build_model, default_spec, parameter_count, parameter_estimate
from fusion.registry import fuse
from fusion.surgery import permuted
from fusion.transport import Gram, TransportOptions
from studies.support import randomize_norms
from tests.fusion_helpers import max_logit_difference

X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
SPEC = default_spec("vit", (1, 8, 8), 10)


def vit(seed: int) -> nn.Module:
    """A zoo ViT with random LayerNorm parameters, so that a LayerNorm left out of the residual group would show."""
    return randomize_norms(build_model(SPEC, seed=seed), seed + 1)


@pytest.fixture(scope="module")
def model_and_groups():
    model = vit(0)
    return model, neuron_groups(model, X)


def test_the_zoo_vit_is_sized_for_digits_and_its_spec_counts_its_parameters():
    model = build_model(SPEC, seed=0)
    assert model(X).shape == (32, 10)
    assert parameter_estimate(SPEC) == parameter_count(model) == 136_138
    assert (model.patch.kernel_size, model.blocks[0].attn.num_heads, model.blocks[0].fc1.out_features) == (
        (2, 2),
        4,
        128,
    )


def test_the_residual_stream_is_one_group_from_the_patch_embedding_to_the_head(model_and_groups):
    _, groups = model_and_groups
    stream = groups[0]
    producers = {m.key for m in stream.producers}
    assert {"patch.weight", "cls", "pos", "norm.weight", "norm.bias"} <= producers
    for block in range(4):
        assert {f"blocks.{block}.attn.proj.weight", f"blocks.{block}.fc2.weight", f"blocks.{block}.norm1.weight"} <= (
            producers
        )
    consumers = {m.key for m in stream.consumers}
    assert {"head.weight", "blocks.3.attn.q.weight", "blocks.3.attn.v.weight", "blocks.3.fc1.weight"} <= consumers
    assert stream.heads == 1 and len(stream.normalized) == 9


def test_each_attention_is_a_query_key_group_and_a_value_group_in_heads(model_and_groups):
    _, groups = model_and_groups
    by_name = {g.name: g for g in groups}
    qk, v = by_name["blocks.1.attn.q"], by_name["blocks.1.attn.v"]
    assert {m.key for m in qk.producers} == {f"blocks.1.attn.{p}.{t}" for p in "qk" for t in ("weight", "bias")}
    assert qk.consumers == ()
    assert {m.key for m in v.producers} == {"blocks.1.attn.v.weight", "blocks.1.attn.v.bias"}
    assert [m.key for m in v.consumers] == ["blocks.1.attn.proj.weight"]
    assert (qk.heads, v.heads, qk.attention, v.attention) == (4, 4, "blocks.1.attn", "blocks.1.attn")
    assert by_name["blocks.1.fc1"].heads == 1


def test_the_master_permutation_moves_every_kind_of_neuron_and_keeps_the_function(model_and_groups):
    model, groups = model_and_groups
    shuffled = permuted(model, groups, seed=3)
    assert max_logit_difference(model, shuffled, X) < 1e-5
    norms, shuffled_norms = (m.blocks[0].attn.q.weight.detach().norm(dim=1).view(4, 16) for m in (model, shuffled))
    heads_found = [
        next(b for b in range(4) if torch.allclose(norms[a].sort().values, shuffled_norms[b].sort().values))
        for a in range(4)
    ]
    assert heads_found != [0, 1, 2, 3], "the heads were not reordered"
    for key in ("patch.weight", "blocks.0.attn.q.weight", "blocks.0.attn.v.weight", "blocks.0.fc1.weight"):
        assert not torch.equal(model.state_dict()[key], shuffled.state_dict()[key]), key


@pytest.mark.parametrize(
    "method,options",
    [("ot", {}), ("ot", {"mode": "activations"}), ("matching", {})],
    ids=["ot-weights", "ot-activations", "matching"],
)
def test_a_vit_permuted_in_every_way_at_once_fuses_back_to_its_function(model_and_groups, method, options):
    model, groups = model_and_groups
    shuffled = permuted(model, groups, seed=3)
    result = fuse([model, shuffled], method, inputs=X, recompute_bn=False, **options)
    assert max_logit_difference(result.model, model, X) < 1e-4
    for key, value in model.state_dict().items():
        assert torch.allclose(result.model.state_dict()[key], value, atol=1e-6), key


@pytest.mark.parametrize("method", ["ot", "matching"])
def test_every_hard_alignment_of_two_independent_vits_is_verified(method):
    result = fuse([vit(0), vit(1)], method, inputs=X, recompute_bn=False)
    verified = [error for error in result.report.verified if error is not None]
    assert len(verified) == 1 and verified[0] < 1e-4


def test_soft_maps_couple_dimensions_only_inside_heads_matched_one_to_one():
    result = fuse(
        [vit(1), vit(0)],
        "ot",
        inputs=X,
        recompute_bn=False,
        solver="sinkhorn",
        cost_normalization="max",
        orthogonal=False,
    )
    for name in ("blocks.0.attn.q", "blocks.2.attn.v"):
        plan = result.transports[1][name].plan.reshape(4, 16, 4, 16).sum(axis=(1, 3))
        assert (np.count_nonzero(plan > 1e-12, axis=1) == 1).all(), "each head sends its mass to one head"
        assert np.allclose(plan.sum(0), 0.25) and np.allclose(plan.sum(1), 0.25)
        assert np.count_nonzero(result.transports[1][name].plan > 1e-9) > 64, "inside the heads the plan is soft"
    shared = [result.transports[1][f"blocks.1.attn.{p}"].plan.reshape(4, 16, 4, 16).sum(axis=(1, 3)) for p in "qv"]
    assert np.array_equal(shared[0] > 1e-12, shared[1] > 1e-12), "query/key and value groups share the heads' order"


def test_importance_marginals_of_attention_are_refused_by_name():
    with pytest.raises(ConfigError, match="blocks.0.attn: attention heads are aligned with uniform marginals"):
        fuse([vit(0), vit(1)], "ot", inputs=X, recompute_bn=False, marginals="importance")


def test_intra_fusion_refuses_attention_by_name():
    with pytest.raises(UnsupportedArchitecture, match="blocks.0.attn: Intra-Fusion would merge dimensions across"):
        fuse([vit(0)], "intra", inputs=X)


def test_magnitude_pruning_keeps_whole_heads():
    model = vit(0)
    pruned = fuse([model], "prune", inputs=X, sparsity=0.5).model
    for block, original in zip(pruned.blocks, model.blocks):
        assert block.attn.num_heads == 2 and block.attn.q.out_features == 32 and block.fc1.out_features == 64
        kept = {}
        for part in ("q", "k", "v"):
            chunks = getattr(block.attn, part).bias.detach().reshape(2, 16)
            whole = getattr(original.attn, part).bias.detach().reshape(4, 16)
            kept[part] = [next(h for h in range(4) if torch.equal(chunk, whole[h])) for chunk in chunks]
        assert kept["q"] == kept["k"] == kept["v"], "every projection keeps the same whole heads"
    assert torch.isfinite(pruned(X)).all()


def sublayer_mean(models: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The network that shares one residual stream (every stream parameter the models' mean) and adds, at every
    sub-layer, the mean of the models' attention or MLP outputs: what the transplanted ViT must compute."""
    mean = build_model(SPEC, seed=0)
    mean.load_state_dict({k: sum(m.state_dict()[k] for m in models) / len(models) for k in mean.state_dict()})
    tokens = mean.patch(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([mean.cls.expand(len(x), -1, -1), tokens], dim=1) + mean.pos
    for index, block in enumerate(mean.blocks):
        parts = [m.blocks[index] for m in models]
        tokens = tokens + sum(p.attn(block.norm1(tokens)) for p in parts) / len(parts)
        tokens = tokens + sum(p.fc2(p.act(p.fc1(block.norm2(tokens)))) for p in parts) / len(parts)
    return mean.head(mean.norm(tokens)[:, 0])


def test_the_concatenated_vit_shares_its_stream_and_averages_every_sublayer(model_and_groups):
    _, groups = model_and_groups
    models = [vit(0), vit(1), vit(2)]
    shared = frozenset(g.name for g in groups if g.normalized)
    assert shared == {"patch"}
    wide = concatenate(models, groups, shared)
    assert wide.blocks[0].attn.num_heads == 12 and wide.blocks[0].fc1.out_features == 3 * 128
    with torch.no_grad():
        assert float((wide(X) - sublayer_mean(models, X)).abs().max()) < 1e-5


def test_a_vit_transplanted_with_its_shuffled_copy_concatenates_back_to_itself(model_and_groups):
    model, groups = model_and_groups
    context = Context(pool=X, probe=X, device=torch.device("cpu"))
    aligned, maps = stream_aligned([model, permuted(model, groups, seed=5)], groups, TransplantOptions(), context)
    assert maps[0] is None and all(t.permutation is not None for t in maps[1].values())
    wide = concatenate(aligned, groups, frozenset({"patch"}))
    with torch.no_grad():
        assert max_logit_difference(wide, model, X) < 1e-5


def test_transplant_prunes_two_vits_back_to_whole_heads_and_tracks_every_neuron():
    a, b = vit(0), vit(1)
    result = fuse([a, b], "transplant", inputs=X)
    fused, details = result.model, result.report.details
    assert details.shared == ["patch"]
    assert fused.blocks[0].attn.num_heads == 4 and fused.blocks[0].attn.q.out_features == 64
    assert fused.blocks[0].fc1.out_features == 128
    parents = (a, b)
    for block in range(4):
        origin = details.kept_from[f"blocks.{block}.fc1"]
        expected = [parents[p].blocks[block].fc1.bias[i] for p, i in zip(origin.parent, origin.neuron)]
        assert torch.equal(fused.blocks[block].fc1.bias.detach(), torch.stack(expected).detach())
        heads = details.kept_from[f"blocks.{block}.attn.q"]
        pairs = list(zip(heads.parent, heads.neuron))
        for head in range(4):
            chunk = pairs[16 * head : 16 * head + 16]
            assert len({p for p, _ in chunk}) == 1 and len({i // 16 for _, i in chunk}) == 1, "heads move whole"
    assert torch.isfinite(fused(X)).all()


class FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        return self.head(self.attn(tokens, tokens, tokens)[0].mean(1))


def test_fused_query_key_value_projections_are_refused_by_name():
    with pytest.raises(UnsupportedArchitecture, match="attn: attention of type MultiheadAttention"):
        neuron_groups(FusedAttention(), torch.randn(2, 5, 4))


def test_neuron_groups_trace_under_no_grad():
    with torch.no_grad():
        assert len(neuron_groups(vit(0), X)) == 13


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), heads=st.integers(1, 3), width=st.integers(1, 3))
def test_head_maps_are_the_cheapest_head_respecting_permutations(seed, heads, width):
    """Brute force over every head order and every within-head order of both groups."""
    size = heads * width
    rng = np.random.default_rng(seed)
    features = [(torch.from_numpy(rng.normal(size=(size, 3))), torch.from_numpy(rng.normal(size=(size, 3))))]
    features.append((torch.from_numpy(rng.normal(size=(size, 2))), torch.from_numpy(rng.normal(size=(size, 2)))))
    grams = [Gram.of(a, b) for a, b in features]
    options = TransportOptions(metric="sqeuclidean", normalize_rows=False, cost_normalization="none")
    found = head_transports(grams, heads, options)
    costs = [t.cost_matrix.double().numpy() for t in found]
    best = np.inf
    for order in itertools.permutations(range(heads)):
        total = 0.0
        for cost in costs:
            for a, b in enumerate(order):
                block = cost[a * width : (a + 1) * width, b * width : (b + 1) * width]
                total += min(block[range(width), list(p)].sum() for p in itertools.permutations(range(width)))
        best = min(best, total)
    assert sum(t.cost for t in found) * size == pytest.approx(best, rel=1e-6, abs=1e-9)
    for transport in found:
        assert transport.permutation is not None
        head_of = transport.permutation // width
        assert all(len(set(head_of[b * width : (b + 1) * width])) == 1 for b in range(heads))


def test_head_maps_and_head_norms_pool_whole_heads():
    a = vit(0)
    result = fuse([a, vit(1)], "ot", inputs=X, recompute_bn=False)
    heads = stored_heads(result.report.to_dict())
    assert heads == {f"blocks.{b}.attn.{p}": 4 for b in range(4) for p in "qv"}
    plan = result.transports[1]["blocks.2.attn.v"].plan
    pooled = head_map(GroupMap(1, "blocks.2.attn.v", plan, None), 4).plan
    assert pooled.shape == (4, 4) and np.isclose(pooled.sum(), plan.sum())
    assert ((pooled > 0).sum(1) == 1).all() and ((pooled > 0).sum(0) == 1).all(), "heads are matched whole"
    norms = {g.group: g for g in neuron_norms(a, X[:2])}
    value = norms["blocks.2.attn.v"]
    assert value.heads == 4 and norms["blocks.2.fc1"].heads == 1
    expected = np.sqrt(np.square(value.outgoing).reshape(4, 16).sum(1))
    assert np.allclose(value.per_head().outgoing, expected)
