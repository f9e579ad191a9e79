"""The model zoo: every architecture builds from a spec, forwards on every dataset shape, and rebuilds exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fusion.errors import ArchitectureError, FusionError
from fusion.models import ARCHITECTURES, ModelSpec, build_model, default_spec, parameter_count
from fusion.zoo.layers import scaled
from fusion.zoo.resnet import RESNET_BLOCKS
from fusion.zoo.vgg import VGG_LAYERS

INPUT_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
CONV_ARCHS = [a for a in ARCHITECTURES if a != "mlp"]


def small_spec(arch: str, **overrides: object) -> ModelSpec:
    """A cheap spec of ``arch`` on 8x8 digits: defaults, with VGG/ResNet at width 1/8."""
    if arch in VGG_LAYERS or arch in RESNET_BLOCKS:
        overrides.setdefault("width", 0.125)
    return default_spec(arch, (1, 8, 8), 10, **overrides)


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("input_shape", INPUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_spec_forwards_to_batch_by_classes_logits(arch: str, input_shape: tuple, num_classes: int) -> None:
    model = build_model(default_spec(arch, input_shape, num_classes), seed=0).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *input_shape))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["mlp", "resnet18"])
def test_non_square_inputs_forward_where_the_architecture_allows_them(arch: str) -> None:
    spec = default_spec(arch, (3, 8, 12), 10, width=0.125 if arch == "resnet18" else None)
    model = build_model(spec, seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 12)).shape == (2, 10)


@pytest.mark.parametrize(
    "arch,overrides", [("mlp", {"channels": (8,)}), ("mlp", {"width": 0.5}), ("cnn", {"width": 2.0})]
)
def test_a_spec_refuses_fields_its_architecture_does_not_have(arch: str, overrides: dict) -> None:
    with pytest.raises(ArchitectureError, match="takes hidden/channels lists|has no conv layers"):
        default_spec(arch, (1, 8, 8), 10, **overrides)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_norm_and_bias_flags_add_or_remove_exactly_those_parameters(
    arch: str, batch_norm: bool, bias: bool
) -> None:
    if arch == "vit" and batch_norm:
        with pytest.raises(ArchitectureError, match="vit normalises with LayerNorm"):
            small_spec(arch, batch_norm=batch_norm, bias=bias)
        return
    model = build_model(small_spec(arch, batch_norm=batch_norm, bias=bias), seed=0)
    assert bool(batch_norm_layers(model)) == batch_norm
    if batch_norm:
        hidden_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
        # every hidden conv/linear layer is normalised (ResNet shortcuts are convs too: one BN each)
        assert len(batch_norm_layers(model)) == len(hidden_layers)
    # ResNet convs feed a BatchNorm, which makes a conv bias redundant, so they never carry one with BN on.
    conv_bias = bias and not (arch in RESNET_BLOCKS and batch_norm)
    assert all((conv.bias is not None) == conv_bias for conv in conv_layers(model))
    assert all((linear.bias is not None) == bias for linear in linear_layers(model))
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("width", [0.125, 0.25, 0.5])
@pytest.mark.parametrize("arch", [*VGG_LAYERS, *RESNET_BLOCKS])
def test_width_multiplier_scales_every_conv_layer(arch: str, width: float) -> None:
    base = build_model(ModelSpec(arch, (3, 32, 32), 10, width=1.0))
    narrow = build_model(ModelSpec(arch, (3, 32, 32), 10, width=width))
    base_convs, narrow_convs = conv_layers(base), conv_layers(narrow)
    assert len(base_convs) == len(narrow_convs)
    assert [c.out_channels for c in narrow_convs] == [scaled(c.out_channels, width) for c in base_convs]
    assert linear_layers(narrow)[-1].in_features < linear_layers(base)[-1].in_features
    assert parameter_count(narrow) < parameter_count(base)


def test_width_multiplier_never_drops_a_layer_below_one_channel() -> None:
    model = build_model(ModelSpec("vgg11", (1, 8, 8), 10, width=1e-3))
    assert all(c.out_channels == 1 for c in conv_layers(model))


ROUND_TRIP_SPECS = [
    ModelSpec("mlp", (1, 8, 8), 10, hidden=(128, 64)),
    ModelSpec("mlp", (1, 28, 28), 10, batch_norm=True, bias=False),
    ModelSpec("cnn", (3, 32, 32), 100, hidden=(64,), channels=(16, 32), batch_norm=True),
    ModelSpec("vgg11", (3, 32, 32), 10, width=0.5),
    ModelSpec("vgg16", (1, 28, 28), 10, batch_norm=True, bias=False, width=2.0),
    ModelSpec("resnet18", (3, 32, 32), 100, batch_norm=True, bias=False, width=0.25),
    ModelSpec("resnet34", (1, 8, 8), 10),
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=ModelSpec.describe)
def test_spec_round_trips_through_dict_and_json(spec: ModelSpec) -> None:
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    rebuilt = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert rebuilt == spec
    assert hash(rebuilt) == hash(spec)
    assert isinstance(rebuilt.input_shape, tuple) and isinstance(rebuilt.hidden, tuple)


INVALID_SPECS = {
    "unknown-arch": {"arch": "transformer", "input_shape": (1, 8, 8), "num_classes": 10},
    "zero-hidden-width": {"arch": "mlp", "input_shape": (1, 8, 8), "num_classes": 10, "hidden": (0,)},
    "negative-hidden-width": {"arch": "mlp", "input_shape": (1, 8, 8), "num_classes": 10, "hidden": (32, -1)},
    "input-shape-two-dims": {"arch": "mlp", "input_shape": (8, 8), "num_classes": 10},
    "input-shape-four-dims": {"arch": "mlp", "input_shape": (1, 1, 8, 8), "num_classes": 10},
    "input-shape-zero-size": {"arch": "mlp", "input_shape": (1, 0, 8), "num_classes": 10},
    "one-class": {"arch": "mlp", "input_shape": (1, 8, 8), "num_classes": 1},
    "cnn-without-channels": {"arch": "cnn", "input_shape": (1, 8, 8), "num_classes": 10, "hidden": (64,)},
    "vgg-with-hidden": {"arch": "vgg11", "input_shape": (3, 32, 32), "num_classes": 10, "hidden": (64,)},
    "resnet-with-channels": {"arch": "resnet18", "input_shape": (3, 32, 32), "num_classes": 10, "channels": (16,)},
    "zero-width": {"arch": "vgg11", "input_shape": (3, 32, 32), "num_classes": 10, "width": 0.0},
    "huge-width": {"arch": "resnet18", "input_shape": (3, 32, 32), "num_classes": 10, "width": 17.0},
    "nan-width": {"arch": "resnet18", "input_shape": (3, 32, 32), "num_classes": 10, "width": math.nan},
    "huge-layer": {"arch": "mlp", "input_shape": (1, 8, 8), "num_classes": 10, "hidden": (10**6,)},
    "non-square-cnn": {"arch": "cnn", "input_shape": (1, 8, 16), "num_classes": 10, "channels": (8,)},
    "non-square-vgg": {"arch": "vgg11", "input_shape": (3, 32, 16), "num_classes": 10},
}


@pytest.mark.parametrize("fields", list(INVALID_SPECS.values()), ids=list(INVALID_SPECS))
def test_invalid_spec_raises_architecture_error(fields: dict) -> None:
    with pytest.raises(ArchitectureError):
        ModelSpec(**fields)
    with pytest.raises(ArchitectureError):
        ModelSpec.from_dict(fields)


INVALID_SPEC_DICTS = {
    "unknown-field": {"arch": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "depth": 3},
    "missing-num-classes": {"arch": "mlp", "input_shape": [1, 8, 8]},
    "non-numeric-hidden": {"arch": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "hidden": ["wide"]},
    "input-shape-not-a-list": {"arch": "mlp", "input_shape": 8, "num_classes": 10},
}


@pytest.mark.parametrize("data", list(INVALID_SPEC_DICTS.values()), ids=list(INVALID_SPEC_DICTS))
def test_spec_from_malformed_dict_raises_architecture_error(data: dict) -> None:
    with pytest.raises(ArchitectureError):
        ModelSpec.from_dict(data)


def test_architecture_error_is_a_fusion_error_and_a_value_error() -> None:
    with pytest.raises(FusionError):
        ModelSpec("nope", (1, 8, 8), 10)
    assert issubclass(ArchitectureError, ValueError)


def test_default_spec_overrides_single_fields_and_ignores_none() -> None:
    spec = default_spec("mlp", (1, 8, 8), 10, hidden=(7,), batch_norm=None)
    assert spec.hidden == (7,)
    assert spec.batch_norm == default_spec("mlp", (1, 8, 8), 10).batch_norm


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_build_with_same_seed_gives_identical_weights(arch: str) -> None:
    first = build_model(small_spec(arch), seed=7).state_dict()
    second = build_model(small_spec(arch), seed=7).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_build_with_different_seeds_gives_different_weights(arch: str) -> None:
    first = build_model(small_spec(arch), seed=7).state_dict()
    second = build_model(small_spec(arch), seed=8).state_dict()
    weights = [k for k in first if k.endswith("weight") and first[k].dim() > 1]
    assert weights
    assert all(not torch.equal(first[k], second[k]) for k in weights)


def test_seeded_build_leaves_the_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    expected_next = torch.rand(5)
    torch.set_rng_state(state)
    build_model(small_spec("resnet18"), seed=3)
    build_model(small_spec("mlp"), seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected_next)


def mlp_parameter_count(spec: ModelSpec) -> int:
    fan_in, total = math.prod(spec.input_shape), 0
    for width in (*spec.hidden, spec.num_classes):
        total += fan_in * width + (width if spec.bias else 0)
        fan_in = width
    return total + (2 * sum(spec.hidden) if spec.batch_norm else 0)


@given(
    hidden=st.lists(st.integers(1, 64), min_size=1, max_size=3),
    input_shape=st.sampled_from(INPUT_SHAPES),
    num_classes=st.integers(2, 20),
    batch_norm=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_mlp_builds_forwards_and_rebuilds_identically_from_its_dict(
    hidden: list[int], input_shape: tuple, num_classes: int, batch_norm: bool, bias: bool, seed: int
) -> None:
    spec = ModelSpec("mlp", input_shape, num_classes, hidden=tuple(hidden), batch_norm=batch_norm, bias=bias)
    model = build_model(spec, seed=seed).eval()
    assert parameter_count(model) == mlp_parameter_count(spec)
    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3, num_classes)
        assert torch.isfinite(logits).all()
        rebuilt_spec = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert rebuilt_spec == spec
        assert torch.equal(build_model(rebuilt_spec, seed=seed).eval()(x), logits)


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        (ModelSpec("mlp", (1, 8, 8), 10, hidden=(128, 64)), "mlp 128-64"),
        (ModelSpec("mlp", (1, 8, 8), 10), "mlp linear"),
        (ModelSpec("cnn", (1, 8, 8), 10, channels=(16, 32), hidden=(64,), batch_norm=True), "cnn-bn c16-32-h64"),
        (ModelSpec("vgg11", (1, 8, 8), 10, batch_norm=True, width=0.25), "vgg11-bn x0.25"),
    ],
)
def test_describe_names_arch_batch_norm_and_widths(spec: ModelSpec, label: str) -> None:
    assert spec.describe() == label
