"""Inputs that used to crash or give silent wrong results: seeds outside torch's range, specs too large for memory,
non-finite fusion weights, NaN data and diverged models."""

import math

import numpy as np
import pytest
import torch

from analysis.hessian_config import HessianConfig
from analysis.landscape import LandscapeConfig, linear_interpolation
from fusion.alignment import AlignOptions
from fusion.data import Dataset
from fusion.errors import ConfigError, DatasetError, MemoryLimitError, NonFiniteLoss
from fusion.models import build_model, check_fits_in_memory, default_spec, parameter_count, parameter_estimate
from fusion.registry import fuse
from fusion.train import TrainConfig, evaluate
from studies.pipeline import train_and_save

X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 2**70, 1.5, True])
@pytest.mark.parametrize(
    "make",
    [
        lambda s: TrainConfig(seed=s),
        lambda s: AlignOptions(seed=s),
        lambda s: LandscapeConfig(seed=s),
        lambda s: HessianConfig(seed=s),
        lambda s: build_model(default_spec("mlp", (1, 8, 8), 10), seed=s),
    ],
    ids=["train", "align", "landscape", "hessian", "build"],
)
def test_seeds_outside_the_stated_range_are_refused(make, seed):
    with pytest.raises(ConfigError, match=r"from 0 to 2\*\*32 - 1"):
        make(seed)


def test_the_largest_seed_is_accepted_and_differs_from_seed_zero():
    spec = default_spec("mlp", (1, 8, 8), 10, hidden=(4,))
    top, zero = build_model(spec, seed=2**32 - 1), build_model(spec, seed=0)
    assert not torch.equal(next(top.parameters()), next(zero.parameters()))


@pytest.mark.parametrize(
    "arch,shape,overrides",
    [
        ("mlp", (1, 8, 8), {"hidden": (32, 16)}),
        ("mlp", (1, 8, 8), {"hidden": (32,), "bias": False}),
        ("cnn", (1, 8, 8), {"channels": (8, 12), "hidden": (16,), "batch_norm": True}),
        ("vgg11", (3, 32, 32), {"width": 0.125, "batch_norm": True}),
        ("resnet18", (3, 32, 32), {"width": 0.125}),
        ("resnet34", (1, 8, 8), {"width": 0.25, "bias": True}),
    ],
)
def test_the_parameter_estimate_equals_the_built_models_count(arch, shape, overrides):
    spec = default_spec(arch, shape, 10, **overrides)
    assert parameter_estimate(spec) == parameter_count(build_model(spec, seed=0))


@pytest.mark.parametrize(
    "spec",
    [
        default_spec("mlp", (1, 8, 8), 10, hidden=(65536, 65536)),
        default_spec("resnet34", (1, 8, 8), 10, width=16.0),
    ],
    ids=["mlp-65536", "resnet34-x16"],
)
def test_a_spec_too_large_for_memory_is_refused_with_the_figures_before_building(spec, workspace, monkeypatch, digits):
    monkeypatch.setattr("fusion.models.available_memory", lambda device=None: 22 * 2**30)
    with pytest.raises(MemoryLimitError, match=r"about [\d,]+ parameters; training it needs at least [\d.]+ GiB"):
        check_fits_in_memory(spec, torch.device("cpu"))
    monkeypatch.setattr("studies.pipeline.build_model", lambda *a, **k: pytest.fail("built a model that cannot fit"))
    with pytest.raises(MemoryLimitError):
        train_and_save(workspace, spec, "digits", TrainConfig(epochs=1))
    assert not workspace.scan().records


@pytest.mark.parametrize("weights", [(math.nan, math.nan), (math.inf, 1.0), (-1.0, 2.0), (0.0, 0.0)])
def test_non_finite_or_negative_fusion_weights_are_refused_up_front(weights):
    models = [build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(8,)), seed=s) for s in (0, 1)]
    with pytest.raises(ConfigError, match="weights"):
        fuse(models, "ot", inputs=X, weights=weights)


def nan_digits(digits: Dataset) -> Dataset:
    x = digits.x_test.clone()
    x[3, 0, 2, 2] = math.nan
    return Dataset("digits", digits.x_train, digits.y_train, x, digits.y_test, 10, digits.normalization)


def test_evaluate_refuses_nan_inputs_and_a_diverged_model(trained_mlp, digits):
    with pytest.raises(DatasetError, match="1 of the .* inputs contain NaN"):
        evaluate(trained_mlp.model, nan_digits(digits).x_test, digits.y_test)
    broken = build_model(trained_mlp.spec, seed=0)
    with torch.no_grad():
        next(broken.parameters())[0, 0] = math.nan
    with pytest.raises(NonFiniteLoss, match="outputs are NaN or infinite"):
        evaluate(broken, digits.x_test, digits.y_test)


def test_interpolation_towards_a_diverged_model_raises_instead_of_a_nan_barrier(trained_mlp, digits):
    broken = build_model(trained_mlp.spec, seed=0)
    with torch.no_grad():
        next(broken.parameters()).fill_(math.inf)
    config = LandscapeConfig(resolution=3, samples=64)
    with pytest.raises(NonFiniteLoss, match="no barrier"):
        linear_interpolation(trained_mlp.model, broken, digits, config)
    healthy = linear_interpolation(trained_mlp.model, trained_mlp.model, digits, config)
    assert np.isfinite(healthy.test_barrier)
