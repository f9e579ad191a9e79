"""CLAFusion: cross-layer alignment (the dynamic programme), depth balancing by identity layers or merging, and the
fusion of networks of different depth end to end (library, workspace pipeline, command line)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cli.main import main
from fusion.alignment import activation_features
from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import neuron_groups
from fusion.methods.cla import CLAOptions, align_layers, layer_cost, linear_cka
from fusion.methods.depth_balance import insert_identity_layers, merge_layers
from fusion.models import build_model, default_spec, spec_of
from fusion.registry import fuse
from fusion.train import TrainConfig, evaluate, train
from studies.pipeline import fuse_and_save, train_and_save
from tests.fusion_helpers import max_logit_difference, randomised

X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
SHAPE = (1, 8, 8)


def mlp(hidden: tuple[int, ...], seed: int, batch_norm: bool = False) -> torch.nn.Module:
    return randomised(default_spec("mlp", SHAPE, 10, hidden=hidden, batch_norm=batch_norm), seed)


def balanced(shallow: torch.nn.Module, deep: torch.nn.Module, layer_map: list[int]):
    return insert_identity_layers(
        shallow, spec_of(shallow, SHAPE), neuron_groups(shallow, X), spec_of(deep, SHAPE), layer_map, X
    )


@pytest.mark.parametrize("layer_map", [[0, 3], [0, 1], [0, 2]])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_identity_layers_keep_the_shallow_mlps_function(batch_norm, layer_map):
    shallow, deep = mlp((32, 16), 0, batch_norm), mlp((32, 24, 16, 16), 1, batch_norm)
    result = balanced(shallow, deep, layer_map)
    assert len(result.spec.hidden) == 4 and result.inserted == [p for p in range(4) if p not in layer_map]
    assert max_logit_difference(result.model, shallow, X) < 1e-5
    assert set(result.model.state_dict()) == set(deep.state_dict())


@pytest.mark.parametrize("shallow_arch,deep_arch", [("vgg11", "vgg13"), ("vgg13", "vgg16"), ("vgg11", "vgg16")])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_identity_convs_turn_a_shallow_vgg_into_the_deep_layout_with_the_same_function(
    shallow_arch, deep_arch, batch_norm
):
    shallow = randomised(default_spec(shallow_arch, SHAPE, 10, width=0.125, batch_norm=batch_norm), 0)
    deep = randomised(default_spec(deep_arch, SHAPE, 10, width=0.25, batch_norm=batch_norm), 1)
    result = fuse([shallow, deep], "cla", inputs=X, recompute_bn=False, onto="deep")
    details = result.report.details
    assert details.balance_error < 1e-5
    assert details.balanced_spec.arch == deep_arch and details.balanced_spec.width == 0.125
    rebuilt = balanced(shallow, deep, details.layer_map)
    assert max_logit_difference(rebuilt.model, shallow, X) < 1e-5
    fused = result.model.state_dict()
    assert {k: v.shape for k, v in fused.items()} == {k: v.shape for k, v in deep.state_dict().items()}
    assert details.spec_from == details.onto == details.deep == 1


def test_vgg11_maps_onto_vgg13_stage_by_stage():
    shallow = randomised(default_spec("vgg11", SHAPE, 10, width=0.125), 0)
    deep = randomised(default_spec("vgg13", SHAPE, 10, width=0.125), 1)
    details = fuse([deep, shallow], "cla", inputs=X).report.details
    assert details.layer_map == [0, 2, 4, 5, 6, 7, 8, 9]
    assert details.inserted == [1, 3]
    assert details.cost_matrix[0][0] is not None and details.cost_matrix[0][1] is None


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_zero_branch_blocks_turn_a_resnet18_into_a_resnet34_with_the_same_function(batch_norm):
    shallow = randomised(default_spec("resnet18", SHAPE, 10, width=0.125, batch_norm=batch_norm), 0)
    deep = randomised(default_spec("resnet34", SHAPE, 10, width=0.125, batch_norm=batch_norm), 1)
    result = fuse([shallow, deep], "cla", inputs=X, recompute_bn=False, onto="deep")
    details = result.report.details
    assert details.layer_map == [0, 2, 3, 6, 7, 12, 13, 15]
    assert details.balance_error < 1e-5
    assert max_logit_difference(balanced(shallow, deep, details.layer_map).model, shallow, X) < 1e-5
    fused = result.model.state_dict()
    assert {k: v.shape for k, v in fused.items()} == {k: v.shape for k, v in deep.state_dict().items()}


def brute_force(cost: np.ndarray, match_last: bool) -> float:
    m, n = cost.shape
    best = np.inf
    for middle in itertools.combinations(range(1, m), n - 1):
        layer_map = (0, *middle)
        if match_last and n > 1 and layer_map[-1] != m - 1:
            continue
        best = min(best, sum(cost[deep_index, k] for k, deep_index in enumerate(layer_map)))
    return best


@st.composite
def cost_matrices(draw) -> np.ndarray:
    m = draw(st.integers(1, 7))
    n = draw(st.integers(1, m))
    values = draw(st.lists(st.floats(0, 10, allow_nan=False), min_size=m * n, max_size=m * n))
    return np.array(values).reshape(m, n)


@given(cost=cost_matrices(), match_last=st.booleans())
def test_layer_alignment_is_strictly_increasing_fixes_the_ends_and_is_optimal(cost, match_last):
    m, n = cost.shape
    layer_map = align_layers(cost, match_last)
    assert len(layer_map) == n and layer_map[0] == 0
    assert all(b > a for a, b in itertools.pairwise(layer_map)) and layer_map[-1] < m
    if match_last and n > 1:
        assert layer_map[-1] == m - 1
    assert sum(cost[deep_index, k] for k, deep_index in enumerate(layer_map)) == pytest.approx(
        brute_force(cost, match_last)
    )


def test_layer_alignment_follows_the_cheap_layers():
    cost = np.array([[0, 9, 9], [9, 9, 9], [9, 0, 9], [9, 9, 9], [9, 9, 0]], dtype=float)
    assert align_layers(cost) == [0, 2, 4]
    assert align_layers(cost[:4, :2], match_last=False) == [0, 2]
    with pytest.raises(ConfigError):
        align_layers(cost.T)


def test_linear_cka_is_one_under_rotation_and_scaling_and_the_wasserstein_cost_ignores_neuron_order():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator))
    assert linear_cka(x, 3.0 * x @ rotation) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(50, 4, generator=generator)) < 0.5
    neurons, other = torch.randn(8, 50, generator=generator), torch.randn(5, 50, generator=generator)
    shuffled = layer_cost(neurons, neurons[torch.randperm(8, generator=generator)], "activations", 50)
    assert shuffled < 1e-3 * layer_cost(neurons, other, "activations", 50)  # float32 distances: not exactly 0


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_merging_identity_layers_back_recovers_the_shallow_mlp(batch_norm):
    """Merging is exact where the merged layers' ReLUs are the identity on the data, as for inserted identity layers."""
    shallow, deep = mlp((32, 16), 0, batch_norm), mlp((32, 24, 16, 16), 1, batch_norm)
    padded = balanced(shallow, deep, [0, 2])
    groups = neuron_groups(padded.model, X)
    preactivations = activation_features(padded.model, groups, X, torch.device("cpu"))
    merged = merge_layers(padded.model, padded.spec, groups, [0, 2], preactivations, "sum", X)
    assert merged.spec.hidden == (32, 16) and merged.merged == [1, 3]
    assert max_logit_difference(merged.model, shallow, X) < 1e-4


def test_merge_fuses_into_the_shallow_architecture():
    shallow, deep = mlp((32, 16), 0), mlp((48, 24, 16, 16), 1)
    result = fuse([deep, shallow], "cla", inputs=X, balance="merge", layer_cost="widths")
    assert result.report.details.spec_from == 1
    assert [m.out_features for m in result.model.layers if isinstance(m, torch.nn.Linear)] == [32, 16, 10]
    assert result.report.details.merged == [1, 2]


@pytest.mark.parametrize("onto", ["shallow", "deep"])
@pytest.mark.parametrize("correction", ["reference", "marginals"])
def test_fusing_a_network_with_its_identity_deepened_copy_gives_back_its_function(onto, correction):
    shallow = mlp((32, 16), 0)
    copy = balanced(shallow, mlp((32, 24, 16, 16), 1), [0, 3]).model
    result = fuse([copy, shallow], "cla", inputs=X, onto=onto, correction=correction)
    assert result.report.details.layer_map == [0, 3]
    assert max_logit_difference(result.model, shallow, X) < 1e-4


@pytest.mark.parametrize("balance", ["identity", "merge"])
@pytest.mark.parametrize("onto", ["shallow", "deep"])
def test_the_fused_network_has_the_widths_of_the_network_it_was_aligned_onto(onto, balance):
    shallow, deep = mlp((32, 16), 0), mlp((48, 24, 16, 16), 1)
    result = fuse([deep, shallow], "cla", inputs=X, onto=onto, balance=balance, layer_cost="widths")
    details = result.report.details
    assert details.layer_map == [0, 3] and details.onto == (1 if onto == "shallow" else 0)
    widths = {
        ("shallow", "identity"): [32, 32, 32, 16],
        ("deep", "identity"): [48, 24, 16, 16],
        ("shallow", "merge"): [32, 16],
        ("deep", "merge"): [48, 16],
    }[onto, balance]
    assert [m.out_features for m in result.model.layers if isinstance(m, torch.nn.Linear)] == [*widths, 10]
    assert details.spec_from == (0 if balance == "identity" else 1)


def test_networks_of_equal_depth_are_sent_to_ot_fusion():
    with pytest.raises(ConfigError, match="'ot'"):
        fuse([mlp((32, 16), 0), mlp((48, 8), 1)], "cla", inputs=X)


@pytest.mark.parametrize("count", [1, 3])
def test_cla_takes_exactly_two_models(count):
    with pytest.raises(ConfigError, match="2 models"):
        fuse([mlp((16,) * (s + 1), s) for s in range(count)], "cla", inputs=X)


def test_networks_of_different_families_are_refused():
    cnn = randomised(default_spec("cnn", SHAPE, 10), 0)
    with pytest.raises(ArchitectureError):
        fuse([mlp((32, 16), 0), cnn], "cla", inputs=X)
    vgg = randomised(default_spec("vgg11", SHAPE, 10, width=0.125), 0)
    with pytest.raises(ArchitectureError):
        fuse([mlp((32, 16), 0), vgg], "cla", inputs=X)


@pytest.mark.parametrize(
    "options",
    [
        {"layer_cost": "weights"},
        {"balance": "stack"},
        {"onto": "middle"},
        {"relu_approximation": "tanh"},
        {"weights": (1.0,)},
    ],
)
def test_absurd_cla_options_are_refused(options):
    with pytest.raises(ConfigError):
        CLAOptions(**options)


def test_merging_vggs_is_refused():
    shallow = randomised(default_spec("vgg11", SHAPE, 10, width=0.125), 0)
    deep = randomised(default_spec("vgg13", SHAPE, 10, width=0.125), 1)
    with pytest.raises(ConfigError, match="MLPs only"):
        fuse([shallow, deep], "cla", inputs=X, balance="merge")


@pytest.fixture(scope="module")
def digits_mlps(digits):
    """Digits MLPs of depth 3 and 5, twice: unequal widths (128-64 and 128-96-64-64) and equal widths (64-64 and
    64-64-64-64, so that the balanced pair can be averaged without alignment). Adam, 20 epochs, about 4 s."""
    models = {}
    for name, hidden, seed in [
        ("shallow", (128, 64), 0),
        ("deep", (128, 96, 64, 64), 1),
        ("shallow64", (64, 64), 0),
        ("deep64", (64,) * 4, 1),
    ]:
        model = build_model(default_spec("mlp", digits.input_shape, digits.num_classes, hidden=hidden), seed=seed)
        train(model, digits, TrainConfig(epochs=20, lr=1e-3, seed=seed), device=torch.device("cpu"))
        models[name] = model.eval()
    return models


def test_cla_fuses_mlps_of_depth_3_and_5_far_above_chance_and_above_averaging_the_balanced_pair(digits, digits_mlps):
    def accuracy(model: torch.nn.Module) -> float:
        return evaluate(model, *digits.split("test")).accuracy

    fused = fuse([digits_mlps["shallow"], digits_mlps["deep"]], "cla", data=digits)
    assert fused.report.details.layer_map == [0, 3]
    assert accuracy(fused.model) >= 0.5

    shallow, deep = digits_mlps["shallow64"], digits_mlps["deep64"]
    result = fuse([shallow, deep], "cla", data=digits)
    padded = balanced(shallow, deep, result.report.details.layer_map)
    vanilla = fuse([padded.model, deep], "average", data=digits).model
    assert accuracy(result.model) >= max(0.5, accuracy(vanilla) + 0.1)


def test_fuse_and_save_keeps_the_deep_layout_at_the_shallow_widths(workspace):
    specs = [default_spec("mlp", SHAPE, 10, hidden=(24,)), default_spec("mlp", SHAPE, 10, hidden=(32, 16, 16))]
    ids = [
        train_and_save(workspace, spec, "digits", TrainConfig(epochs=2, seed=s)).record.id
        for s, spec in enumerate(specs)
    ]
    run = fuse_and_save(workspace, ids, "cla")
    record = workspace.record(run.record.id)
    assert record.spec == default_spec("mlp", SHAPE, 10, hidden=(24, 24, 24))
    assert record.parents == ids and record.method == "cla"
    assert record.provenance["report"]["details"]["layer_map"] == [0]
    assert set(workspace.load_tensors(record.id, "transport")) == {
        f"model1/layers.{i}/{kind}" for i in (1, 3, 5) for kind in ("plan", "cost")
    }
    model, _ = workspace.load(record.id)
    assert max_logit_difference(model, run.result.model, X) < 1e-5


def test_fuse_and_save_refuses_cla_across_families(workspace):
    a = train_and_save(
        workspace, default_spec("mlp", SHAPE, 10, hidden=(16,)), "digits", TrainConfig(epochs=1)
    ).record.id
    cnn = default_spec("cnn", SHAPE, 10, channels=(4,), hidden=(8,))
    b = train_and_save(workspace, cnn, "digits", TrainConfig(epochs=1)).record.id
    before = len(workspace.records())
    with pytest.raises(ArchitectureError, match="cla"):
        fuse_and_save(workspace, [a, b], "cla")
    assert len(workspace.records()) == before


def test_cli_fuses_networks_of_different_depth(workspace, capsys):
    specs = [default_spec("mlp", SHAPE, 10, hidden=(32, 16, 16, 8)), default_spec("mlp", SHAPE, 10, hidden=(32, 8))]
    ids = [
        train_and_save(workspace, spec, "digits", TrainConfig(epochs=2, seed=s)).record.id
        for s, spec in enumerate(specs)
    ]
    code = main(
        [
            "fuse",
            "--method",
            "cla",
            "--models",
            *ids,
            "--workspace",
            str(workspace.root),
            "--json",
            "--quiet",
            "--layer-cost",
            "activations",
            "--no-match-last",
        ]
    )
    output = json.loads(capsys.readouterr().out)
    assert code == 0
    details = output["report"]["details"]
    assert details["deep"] == 0 and details["layer_cost"] == "activations" and len(details["layer_map"]) == 2
    assert output["models"][0]["arch"] == "mlp 32-32-32-8"  # the deep layout at the shallow widths
    assert 0 < output["test_accuracy_pct"] <= 100
