"""Training: validated configs, bit-for-bit reproducibility, real learning, refusals of broken inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusion.data import Dataset, Normalization
from fusion.errors import ConfigError, DatasetError, FusionError
from fusion.models import ModelSpec, build_model
from fusion.train import (
    TrainConfig,
    TrainingDiverged,
    augment_batch,
    evaluate,
    predict_logits,
    train,
)

INVALID_CONFIGS = {
    "zero-epochs": {"epochs": 0},
    "negative-epochs": {"epochs": -3},
    "fractional-epochs": {"epochs": 2.5},
    "zero-lr": {"lr": 0.0},
    "negative-lr": {"lr": -1e-3},
    "nan-lr": {"lr": math.nan},
    "infinite-lr": {"lr": math.inf},
    "string-lr": {"lr": "0.1"},
    "zero-batch-size": {"batch_size": 0},
    "unknown-optimizer": {"optimizer": "rmsprop"},
    "momentum-one": {"momentum": 1.0},
    "negative-weight-decay": {"weight_decay": -0.1},
    "nan-weight-decay": {"weight_decay": math.nan},
}


@pytest.mark.parametrize("options", list(INVALID_CONFIGS.values()), ids=list(INVALID_CONFIGS))
def test_train_config_rejects_out_of_range_options(options: dict) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(**options)
    assert isinstance(error.value, FusionError) and isinstance(error.value, ValueError)
    assert str(next(iter(options.values()))) in str(error.value), "the message shows the value given"


def test_train_config_round_trips_through_its_dict() -> None:
    config = TrainConfig(epochs=3, lr=0.05, batch_size=32, optimizer="sgd", weight_decay=1e-4, seed=9, augment=True)
    assert TrainConfig(**config.to_dict()) == config


def tiny_spec(arch: str = "mlp") -> ModelSpec:
    if arch == "cnn":
        return ModelSpec("cnn", (1, 8, 8), 10, channels=(4,), hidden=(8,), batch_norm=True)
    return ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,))


def train_weights(digits: Dataset, arch: str, config: TrainConfig) -> dict[str, torch.Tensor]:
    model = build_model(tiny_spec(arch), seed=config.seed)
    train(model, digits, config)
    return model.state_dict()


RECIPES = {
    "mlp-adam": ("mlp", {"epochs": 2, "lr": 1e-2}),
    "cnn-bn-sgd-augment": ("cnn", {"epochs": 1, "lr": 0.05, "optimizer": "sgd", "augment": True, "weight_decay": 1e-4}),
}


@pytest.mark.parametrize(("arch", "options"), list(RECIPES.values()), ids=list(RECIPES))
def test_training_twice_with_the_same_seed_gives_bit_identical_weights(
    digits: Dataset, arch: str, options: dict
) -> None:
    first = train_weights(digits, arch, TrainConfig(seed=5, **options))
    second = train_weights(digits, arch, TrainConfig(seed=5, **options))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(("arch", "options"), list(RECIPES.values()), ids=list(RECIPES))
def test_training_with_different_seeds_gives_different_weights(digits: Dataset, arch: str, options: dict) -> None:
    first = train_weights(digits, arch, TrainConfig(seed=5, **options))
    second = train_weights(digits, arch, TrainConfig(seed=6, **options))
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_short_training_on_digits_beats_chance_by_far(trained_mlp) -> None:
    result = trained_mlp.result
    assert result.test is not None
    assert result.test.accuracy > 0.85  # chance is 0.10
    assert len(result.train_loss) == len(result.train_accuracy) == trained_mlp.config.epochs
    assert result.train_loss[-1] < result.train_loss[0]
    assert result.seconds > 0


def test_train_result_test_metrics_match_a_fresh_evaluation(trained_mlp, digits: Dataset) -> None:
    metrics = evaluate(trained_mlp.model, *digits.split("test"))
    assert trained_mlp.result.test is not None
    assert metrics.accuracy == pytest.approx(trained_mlp.result.test.accuracy)
    assert metrics.loss == pytest.approx(trained_mlp.result.test.loss, rel=1e-5)


def dataset_from(x_train: torch.Tensor, y_train: torch.Tensor) -> Dataset:
    return Dataset("synthetic", x_train, y_train, x_train, y_train, 10, Normalization((0.0,), (1.0,)))


def test_inputs_containing_nan_raise_training_diverged(digits: Dataset) -> None:
    x = digits.x_train[:128].clone()
    x[17, 0, 3, 3] = float("nan")
    model = build_model(tiny_spec(), seed=0)
    with pytest.raises(TrainingDiverged, match="NaN") as error:
        train(model, dataset_from(x, digits.y_train[:128]), TrainConfig(epochs=1, batch_size=256))
    assert isinstance(error.value, FusionError)


def test_evaluate_on_an_empty_set_raises_dataset_error() -> None:
    model = build_model(tiny_spec(), seed=0)
    with pytest.raises(DatasetError):
        evaluate(model, torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long))


def test_training_on_an_empty_split_raises_dataset_error() -> None:
    empty = dataset_from(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long))
    with pytest.raises(DatasetError):
        train(build_model(tiny_spec(), seed=0), empty, TrainConfig(epochs=1))


def test_evaluate_reports_accuracy_and_cross_entropy_of_the_predictions(digits: Dataset) -> None:
    # A model that ignores its input and always prefers class 3: its accuracy is the share of 3s.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.copy_(torch.linspace(-1, 1, 10).roll(4))
    x, y = digits.split("test")
    metrics = evaluate(model, x, y, batch_size=7)
    assert metrics.accuracy == pytest.approx(float((y == 3).float().mean()))
    expected_loss = -F.log_softmax(model[1].bias.detach(), dim=0)[y].mean()
    assert metrics.loss == pytest.approx(float(expected_loss), rel=1e-6)


def test_progress_is_reported_once_per_epoch(digits: Dataset) -> None:
    calls: list[tuple[int, int, str]] = []
    config = TrainConfig(epochs=3, lr=1e-2, batch_size=256)
    train(build_model(tiny_spec(), seed=0), digits, config, progress=lambda *call: calls.append(call))
    assert [(done, total) for done, total, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(message, str) and f"epoch {done}/3" in message for done, _, message in calls)


def test_batch_norm_model_trains_when_the_last_batch_has_one_example(digits: Dataset) -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,), batch_norm=True)
    data = dataset_from(digits.x_train[:9], digits.y_train[:9])
    result = train(build_model(spec, seed=0), data, TrainConfig(epochs=2, batch_size=4))
    assert all(math.isfinite(loss) for loss in result.train_loss)


def test_predict_logits_restores_the_training_mode(digits: Dataset) -> None:
    model = build_model(ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,), batch_norm=True), seed=0)
    x = digits.x_test[:20]
    logits = predict_logits(model.train(), x, batch_size=3)
    assert model.training
    assert logits.shape == (20, 10)
    assert torch.allclose(logits, model.eval()(x), atol=1e-6), "logits are computed in eval mode"
    predict_logits(model.eval(), x)
    assert not model.training


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=["digits", "cifar"])
def test_augment_batch_keeps_the_shape_and_is_seeded(shape: tuple) -> None:
    x = torch.randn(16, *shape)
    first = augment_batch(x, torch.Generator().manual_seed(0))
    again = augment_batch(x, torch.Generator().manual_seed(0))
    other = augment_batch(x, torch.Generator().manual_seed(1))
    assert first.shape == x.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_augment_batch_returns_shifted_and_possibly_flipped_crops_of_each_image() -> None:
    x = torch.randn(8, 2, 6, 6)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (4, 4, 4, 4))
    for image, result in zip(padded, out):
        crops = [image[:, dy : dy + 6, dx : dx + 6] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(result, crop) or torch.equal(result, crop.flip(2)) for crop in crops)


def test_batchnorm_models_refuse_single_example_batches():
    from fusion.data import load_dataset
    from fusion.errors import ConfigError
    from fusion.models import build_model, default_spec

    model = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(8,), batch_norm=True), seed=0)
    with pytest.raises(ConfigError, match="batch"):
        train(model, load_dataset("digits"), TrainConfig(epochs=1, batch_size=1))
