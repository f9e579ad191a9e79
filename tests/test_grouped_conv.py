"""Grouped convolutions (ResNeXt, RegNet) as neuron groups in blocks: a shuffle of whole convolution groups composed
with shuffles inside them fuses back exactly, soft maps stay block-diagonal, Neuron Transplantation's concatenation is
the ensemble and its pruning keeps whole convolution groups, and what cannot be sound is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fusion_helpers import randomise_norms
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fusion.alignment import AlignOptions, align
from fusion.blocks import block_order, block_transports
from fusion.errors import ArchitectureError
from fusion.groups import UnsupportedArchitecture, neuron_groups
from fusion.methods.transplant import concatenate, prune_to
from fusion.registry import fuse
from fusion.surgery import apply_transports, group_sizes, permuted, with_state
from fusion.transport import Gram, Transport, TransportOptions
from tests.fusion_helpers import max_logit_difference

X = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(0))
MATCHING = AlignOptions(features="both", metric="sqeuclidean", sweeps=20)


class Bottleneck(nn.Module):
    """ResNeXt's block (1x1, grouped 3x3, 1x1, residual add), with RegNet's squeeze-excitation gate on request."""

    def __init__(self, channels: int, width: int, groups: int, gate: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.gate = nn.Sequential(nn.Conv2d(width, 4, 1), nn.ReLU(), nn.Conv2d(4, width, 1)) if gate else None
        self.conv3, self.bn3 = nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        if self.gate is not None:
            h = h * torch.sigmoid(self.gate(h.mean((2, 3), keepdim=True)))
        return torch.relu(x + self.bn3(self.conv3(h)))


class TinyResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.block1 = Bottleneck(8, 16, 4)
        self.block2 = Bottleneck(8, 12, 3, gate=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        return self.head(self.block2(self.block1(x)).mean((2, 3)))


def tiny(seed: int) -> nn.Module:
    """A seeded model with random BatchNorm parameters and statistics, so that a member left out changes the
    function."""
    torch.manual_seed(seed)
    return randomise_norms(TinyResNeXt(), seed)


def test_a_grouped_convolution_gives_its_input_and_output_groups_blocks_and_one_tie():
    groups = {g.name: g for g in neuron_groups(tiny(0), X)}
    assert {name: (g.blocks, g.tie) for name, g in groups.items()} == {
        "stem": (1, ""),
        "block1.conv1": (4, "block1.conv2"),
        "block1.conv2": (4, "block1.conv2"),
        "block2.conv1": (3, "block2.conv2"),
        "block2.conv2": (3, "block2.conv2"),
        "block2.gate.0": (1, ""),
    }
    (columns,) = [m for m in groups["block1.conv1"].consumers if m.key == "block1.conv2.weight"]
    assert (columns.dim, columns.block_width, columns.grouped_input) == (1, 4, True)
    rows = next(m for m in groups["block1.conv2"].producers if m.key == "block1.conv2.weight")
    assert (rows.dim, rows.block_width, rows.grouped_input) == (0, 4, False)
    assert {"block2.conv2", "block2.gate.2"} == set(groups["block2.conv2"].layers), "the gate joins the grouped output"
    assert groups["block1.conv2"].heads == 1, "convolution groups are not attention heads"


def test_a_shuffle_moves_whole_convolution_groups_and_keeps_the_function():
    model = tiny(0)
    groups = neuron_groups(model, X)
    shuffled = permuted(model, groups, seed=3)
    assert max_logit_difference(model, shuffled, X) < 1e-5
    before, after = model.block1.conv2.weight, shuffled.block1.conv2.weight
    assert not torch.equal(before, after)
    blocks = [before[4 * a : 4 * a + 4].flatten().sort().values for a in range(4)]
    moved = [
        next(b for b in range(4) if torch.equal(after[4 * b : 4 * b + 4].flatten().sort().values, blocks[a]))
        for a in range(4)
    ]
    assert sorted(moved) == [0, 1, 2, 3] and moved != [0, 1, 2, 3], "whole convolution groups moved"


@pytest.mark.parametrize(
    "options",
    [AlignOptions(), MATCHING, AlignOptions(mode="activations")],
    ids=["ot", "matching", "ot-activations"],
)
def test_a_shuffled_copy_aligns_back_to_the_source(options):
    model = tiny(0)
    groups = neuron_groups(model, X)
    shuffled = permuted(model, groups, seed=3)
    aligned = align(shuffled, model, groups, options, inputs=X).model
    for key, value in model.state_dict().items():
        assert torch.allclose(aligned.state_dict()[key], value, atol=1e-6), key


@pytest.mark.parametrize("method", ["ot", "matching"])
def test_fusing_a_model_with_its_shuffled_copy_gives_back_its_function(method):
    model = tiny(0)
    shuffled = permuted(model, neuron_groups(model, X), seed=5)
    result = fuse([model, shuffled], method, inputs=X, recompute_bn=False)
    assert max_logit_difference(result.model, model, X) < 1e-5


def test_a_soft_map_is_block_diagonal_after_the_block_assignment():
    """Sinkhorn couples channels softly, but only inside the blocks matched one to one (those the exact alignment
    matches), so the aligned grouped convolutions stay grouped: every convolution group reads only its own inputs."""
    model = tiny(0)
    groups = neuron_groups(model, X)
    shuffled = permuted(model, groups, seed=3)
    soft = align(shuffled, model, groups, AlignOptions(solver="sinkhorn", reg=0.2, cost_normalization="max"))
    hard = align(shuffled, model, groups)
    for group in groups:
        if group.blocks > 1:
            width = group.size // group.blocks
            transport = soft.transports[group.name]
            assert transport.permutation is None
            plan = transport.plan.reshape(group.blocks, width, group.blocks, width)
            order = block_order(hard.transports[group.name], width)
            assert np.array_equal(block_order(transport, width), order)
            inside = plan[np.arange(group.blocks), :, order].sum()
            assert inside == pytest.approx(1.0) and plan.sum() == pytest.approx(1.0), "no mass outside matched blocks"
    assert soft.model.block1.conv2.weight.shape == model.block1.conv2.weight.shape
    assert torch.isfinite(soft.model(X)).all()


def test_transplant_concatenation_is_the_ensemble_and_pruning_keeps_whole_convolution_groups():
    a, b = tiny(0), tiny(1)
    groups = neuron_groups(a, X)
    wide = concatenate([a, b], groups)
    assert (wide.block1.conv2.groups, wide.block1.conv2.in_channels, wide.block2.conv2.groups) == (8, 32, 6)
    with torch.no_grad():
        assert torch.allclose(wide(X), (a(X) + b(X)) / 2, atol=1e-5)
    widths = group_sizes(a.state_dict(), groups)
    pruned, kept, _ = prune_to(wide, groups, widths, "l2sq", None)
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}
    assert (pruned.block1.conv2.groups, pruned.block2.conv2.groups) == (4, 3)
    for block in ("block1", "block2"):
        kept_in, kept_out = kept[f"{block}.conv1"], kept[f"{block}.conv2"]
        assert kept_in == kept_out, "the convolution's input and output keep the same groups"
        runs = [kept_in[i : i + 4] for i in range(0, len(kept_in), 4)]
        assert all(run == list(range(run[0], run[0] + 4)) and run[0] % 4 == 0 for run in runs), "whole groups of 4"
    assert torch.isfinite(pruned(X)).all()


def test_neuron_transplantation_fuses_grouped_convolutions_to_the_reference_architecture():
    a = tiny(0)
    result = fuse([a, tiny(1)], "transplant", inputs=X)
    assert {k: v.shape for k, v in result.model.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}
    assert result.model.block1.conv2.groups == 4


def test_maps_that_move_the_convolution_groups_of_one_side_alone_are_refused():
    model = tiny(0)
    groups = neuron_groups(model, X)
    swap = np.r_[4:8, 0:4, 8:16]
    state = {k: v.detach() for k, v in model.state_dict().items()}
    with pytest.raises(ArchitectureError, match="block1.conv2: the maps of its input and output channels move"):
        apply_transports(state, groups, {"block1.conv1": Transport.selection(16, swap)})
    both = {name: Transport.selection(16, swap) for name in ("block1.conv1", "block1.conv2")}
    moved = with_state(model, apply_transports(state, groups, both))
    assert max_logit_difference(moved, model, X) < 1e-5


def test_intra_fusion_refuses_to_merge_across_convolution_groups_but_pruning_keeps_them_whole():
    model = tiny(0)
    with pytest.raises(UnsupportedArchitecture, match="block1.conv2: Intra-Fusion would merge channels across"):
        fuse([model], "intra", inputs=X, sparsity=0.5)
    pruned = fuse([model], "prune", inputs=X, sparsity=0.5).model
    assert (pruned.block1.conv2.groups, pruned.block1.conv2.in_channels) == (2, 8)
    assert torch.isfinite(pruned(X)).all()


def test_grouped_convolutions_are_aligned_between_models_of_one_width():
    model = tiny(0)
    groups = neuron_groups(model, X)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    keep = list(range(8))
    narrow = with_state(
        model,
        apply_transports(state, groups, {n: Transport.selection(16, keep) for n in ("block1.conv1", "block1.conv2")}),
    )
    with pytest.raises(ArchitectureError, match="block1.conv2: group block1.conv1 has 8 channels"):
        align(narrow, model, groups)


def test_grouped_convolutions_whose_groups_cannot_move_are_refused_by_name():
    writes_logits = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 10, 4, groups=2))
    with pytest.raises(UnsupportedArchitecture, match="2: a grouped convolution that writes the network's output"):
        neuron_groups(writes_logits, X)
    two_cuts = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 1, groups=4),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1, groups=2),
        nn.Flatten(),
        nn.Linear(8 * 36, 10),
    )
    with pytest.raises(UnsupportedArchitecture, match="4: its 2 convolution groups cut group 2"):
        neuron_groups(two_cuts, X)


@given(seed=st.integers(0, 10_000), blocks=st.integers(1, 4), width=st.integers(1, 4))
def test_block_transports_find_a_shuffle_of_blocks_and_of_neurons_inside_them(seed, blocks, width):
    rng = np.random.default_rng(seed)
    size = blocks * width
    reference = torch.from_numpy(rng.normal(size=(size, 6)))
    order = rng.permutation(blocks)
    targets = np.concatenate([order[a] * width + rng.permutation(width) for a in range(blocks)])
    shuffled = reference[targets]
    (found,) = block_transports([Gram.of(shuffled, reference)], blocks, TransportOptions())
    assert np.array_equal(found.permutation[targets], np.arange(size))
    (kept,) = block_transports([Gram.of(shuffled, reference)], blocks, TransportOptions(), order=order)
    assert np.array_equal(kept.permutation, found.permutation)
