"""Loss landscapes: interpolation barriers (flat to itself, a barrier to a permuted copy that alignment removes),
planes through three models, filter-normalised directions, chunked evaluation, cost limits and bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis import AnalysisError
from analysis.landscape import (
    GridTooLarge,
    InterpolationResult,
    LandscapeConfig,
    PlaneResult,
    RandomDirectionsResult,
    SlowLandscapeWarning,
    auto_points_per_call,
    estimate_cost,
    evaluate_combinations,
    filter_normalized_direction,
    linear_interpolation,
    loss_barrier,
    plane,
    plane_basis,
    random_directions,
)
from analysis.states import float_state
from fusion.alignment import align
from fusion.data import Dataset
from fusion.errors import ArchitectureError, ConfigError, DatasetError
from fusion.groups import NORMS, neuron_groups
from fusion.models import ModelSpec, build_model, default_spec
from fusion.surgery import permuted
from fusion.train import TrainConfig, evaluate
from fusion.workspace import Workspace
from studies.pipeline import fuse_and_save, train_and_save
from studies.runs import fusion_landscape, stored_fusion_landscape
from tests.fusion_helpers import max_logit_difference, randomised

CPU = torch.device("cpu")
SMALL = LandscapeConfig(resolution=5, samples=300)


@pytest.fixture(scope="module")
def permuted_mlp(trained_mlp) -> tuple[nn.Module, nn.Module, list]:
    """The trained MLP, a neuron-permuted copy of it (the same function) and its neuron groups."""
    model = trained_mlp.model
    groups = neuron_groups(model, trained_mlp.data.x_train[:2])
    return model, permuted(model, groups, seed=1), groups


@pytest.fixture(scope="module")
def bn_cnn(digits: Dataset) -> nn.Module:
    return randomised(
        ModelSpec("cnn", digits.input_shape, digits.num_classes, channels=(4,), hidden=(8,), batch_norm=True), seed=2
    )


def test_interpolating_a_model_with_itself_is_flat(trained_mlp) -> None:
    model, data = trained_mlp.model, trained_mlp.data
    result = linear_interpolation(model, model, data, LandscapeConfig(resolution=5), CPU)
    np.testing.assert_allclose(result.ts, np.linspace(0, 1, 5))
    assert abs(result.train_barrier) < 1e-6 and abs(result.test_barrier) < 1e-6
    assert result.metrics.test_loss == pytest.approx(
        np.full(5, evaluate(model, *data.split("test"), CPU).loss), rel=1e-5
    )


def test_a_permuted_copy_shows_a_barrier_that_alignment_removes(trained_mlp, permuted_mlp) -> None:
    model, copy_, groups = permuted_mlp
    data = trained_mlp.data
    assert max_logit_difference(model, copy_, data.x_test) < 1e-4
    before = linear_interpolation(model, copy_, data, SMALL, CPU)
    aligned = align(copy_, model, groups).model
    after = linear_interpolation(model, aligned, data, SMALL, CPU)
    assert before.test_barrier > 0.2 and before.train_barrier > 0.2
    assert abs(after.test_barrier) < 1e-4 and abs(after.train_barrier) < 1e-4


def test_interpolation_can_reestimate_batchnorm_statistics_at_every_point(digits: Dataset, bn_cnn) -> None:
    config = LandscapeConfig(resolution=3, samples=200, recompute_batchnorm=True)
    result = linear_interpolation(bn_cnn, bn_cnn, digits, config, CPU)
    assert result.recompute_batchnorm and abs(result.test_barrier) < 1e-5
    plain = linear_interpolation(bn_cnn, bn_cnn, digits, LandscapeConfig(resolution=3, samples=200), CPU)
    assert not np.allclose(result.metrics.test_loss, plain.metrics.test_loss), "statistics were re-estimated"


def test_recomputing_batchnorm_leaves_the_model_untouched(digits: Dataset, bn_cnn) -> None:
    before = {k: v.clone() for k, v in bn_cnn.state_dict().items()}
    linear_interpolation(
        bn_cnn, bn_cnn, digits, LandscapeConfig(resolution=2, samples=100, recompute_batchnorm=True), CPU
    )
    assert all(torch.equal(before[k], v) for k, v in bn_cnn.state_dict().items())


def test_loss_barrier_is_the_largest_gap_above_the_chord() -> None:
    ts = np.linspace(0, 1, 5)
    assert loss_barrier(ts, np.array([1.0, 2.0, 3.5, 2.5, 2.0])) == pytest.approx(3.5 - 1.5)
    assert loss_barrier(ts, np.array([1.0, 1.25, 1.5, 1.75, 2.0])) == pytest.approx(0.0)


def test_plane_coordinates_reproduce_the_three_models(trained_mlp, permuted_mlp, digits: Dataset) -> None:
    model, copy_, _ = permuted_mlp
    third = build_model(trained_mlp.spec, seed=5)
    models = [model, copy_, third]
    basis = plane_basis(models)
    assert basis.coordinates[0] == (0.0, 0.0) and basis.coordinates[1][1] == 0.0
    assert math.sqrt(sum(float((v.double() ** 2).sum()) for v in basis.u.values())) == pytest.approx(1.0)
    assert math.sqrt(sum(float((v.double() ** 2).sum()) for v in basis.w.values())) == pytest.approx(1.0)
    assert abs(sum(float((basis.u[k] * basis.w[k]).sum()) for k in basis.u)) < 1e-9
    for target, (x, y) in zip(models, basis.coordinates):
        point = basis.point(x, y)
        for name, value in target.named_parameters():
            torch.testing.assert_close(point[name].float(), value.detach(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(basis.affine(*np.array(basis.coordinates).T), np.eye(3), atol=1e-9)
    x_test, y_test = digits.x_test[:100], digits.y_test[:100]
    coefficients = torch.tensor(basis.affine(*np.array(basis.coordinates).T))
    losses, _ = evaluate_combinations(model, [float_state(m) for m in models], coefficients, x_test, y_test, 64, 1, CPU)
    np.testing.assert_allclose(losses, [evaluate(m, x_test, y_test, CPU).loss for m in models], rtol=1e-5)


def test_plane_grid_covers_the_models_and_round_trips_through_json(trained_mlp, permuted_mlp) -> None:
    model, copy_, _ = permuted_mlp
    third = build_model(trained_mlp.spec, seed=5)
    result = plane([model, copy_, third], trained_mlp.data, SMALL, CPU, labels=("parent A", "parent B", "fused"))
    assert result.metrics.test_loss.shape == (5, 5)
    for x, y in result.coordinates:
        assert result.x.min() <= x <= result.x.max() and result.y.min() <= y <= result.y.max()
    again = PlaneResult.from_dict(json.loads(json.dumps(result.to_dict())))
    np.testing.assert_allclose(again.metrics.test_loss, result.metrics.test_loss)
    assert again.labels == ("parent A", "parent B", "fused")


def test_collinear_models_span_no_plane(trained_mlp, permuted_mlp) -> None:
    model, copy_, _ = permuted_mlp
    middle = copy.deepcopy(model)
    with torch.no_grad():
        for p, a, b in zip(middle.parameters(), model.parameters(), copy_.parameters()):
            p.copy_((a + b) / 2)
    with pytest.raises(AnalysisError, match="collinear"):
        plane_basis([model, copy_, middle])
    with pytest.raises(AnalysisError, match="identical"):
        plane_basis([model, model, copy_])


def test_filter_normalised_directions_match_the_filter_norms(bn_cnn) -> None:
    direction = filter_normalized_direction(bn_cnn, torch.Generator().manual_seed(0))
    state = bn_cnn.state_dict()
    assert set(direction) == set(float_state(bn_cnn))
    norms = {name for name, module in bn_cnn.named_modules() if isinstance(module, NORMS)}
    for key, value in direction.items():
        module = key.rpartition(".")[0]
        if value.dim() >= 2:
            torch.testing.assert_close(
                value.flatten(1).norm(dim=1), state[key].flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6
            )
            assert module not in norms
        else:
            assert torch.count_nonzero(value) == 0, f"{key}: bias, BatchNorm and buffer directions are zero"


def test_random_directions_pass_through_the_model_at_the_origin(trained_mlp) -> None:
    model, data = trained_mlp.model, trained_mlp.data
    one = random_directions(model, data, 1, LandscapeConfig(resolution=5), CPU)
    assert one.metrics.test_loss.shape == (5,)
    assert one.metrics.test_loss[2] == pytest.approx(evaluate(model, *data.split("test"), CPU).loss, rel=1e-5)
    two = random_directions(model, data, 2, SMALL, CPU)
    assert two.metrics.train_accuracy.shape == (5, 5)
    again = random_directions(model, data, 2, SMALL, CPU)
    np.testing.assert_array_equal(two.metrics.test_loss, again.metrics.test_loss)
    stored = RandomDirectionsResult.from_dict(json.loads(json.dumps(two.to_dict())))
    np.testing.assert_allclose(stored.metrics.test_loss, two.metrics.test_loss)


@pytest.mark.parametrize("fixture", ["permuted_mlp", "bn_cnn"])
def test_vmapped_chunks_give_the_same_metrics_as_one_point_per_call(fixture, request, digits: Dataset) -> None:
    model = request.getfixturevalue(fixture)
    model = model[0] if isinstance(model, tuple) else model
    bases = [float_state(model), filter_normalized_direction(model, torch.Generator().manual_seed(3))]
    coefficients = torch.stack([torch.ones(7), torch.linspace(-1, 1, 7)], 1)
    x, y = digits.x_test[:90], digits.y_test[:90]
    single = evaluate_combinations(model, bases, coefficients, x, y, 40, 1, CPU)
    chunked = evaluate_combinations(model, bases, coefficients, x, y, 40, 3, CPU)
    np.testing.assert_allclose(chunked[0], single[0], rtol=1e-5)
    np.testing.assert_array_equal(chunked[1], single[1])


def test_automatic_chunks_are_one_point_on_the_cpu_and_bounded_by_the_budget_on_cuda(trained_mlp) -> None:
    model = trained_mlp.model
    assert auto_points_per_call(model, CPU) == 1
    assert auto_points_per_call(model, CPU, requested=3) == 3
    assert auto_points_per_call(model, torch.device("cuda")) == 32
    assert auto_points_per_call(nn.Linear(1000, 1000), torch.device("cuda")) == 24
    assert auto_points_per_call(nn.Linear(5000, 10_000), torch.device("cuda")) == 1


def test_cost_estimate_counts_forward_passes(trained_mlp) -> None:
    model, data = trained_mlp.model, trained_mlp.data
    estimate = estimate_cost(model, data, 10, LandscapeConfig(batch_size=500), CPU)
    assert estimate.units == 10
    assert estimate.forward_passes == 10 * (math.ceil(1347 / 500) + 1)
    assert estimate.examples == 10 * 1797 and estimate.seconds > 0


def test_absurd_grids_are_refused_and_slow_ones_warned(trained_mlp) -> None:
    model, data = trained_mlp.model, trained_mlp.data
    with pytest.raises(GridTooLarge, match="10,201 grid points, above the limit of 10,000"):
        random_directions(model, data, 2, LandscapeConfig(resolution=101), CPU)
    with pytest.raises(GridTooLarge, match="would take about"):
        linear_interpolation(model, model, data, LandscapeConfig(resolution=3, max_seconds=1e-9), CPU)
    with pytest.warns(SlowLandscapeWarning):
        linear_interpolation(model, model, data, LandscapeConfig(resolution=2, samples=20, warn_seconds=1e-9), CPU)


def test_bad_inputs_are_refused(trained_mlp, digits: Dataset) -> None:
    model, data = trained_mlp.model, trained_mlp.data
    other = build_model(ModelSpec("mlp", digits.input_shape, digits.num_classes, hidden=(8,)), seed=0)
    with pytest.raises(ArchitectureError, match="does not share"):
        linear_interpolation(model, other, data, SMALL, CPU)
    with pytest.raises(AnalysisError, match="no trainable parameters"):
        random_directions(nn.Sequential(nn.Flatten()), data, 1, SMALL, CPU)
    empty = Dataset(
        "digits", digits.x_train[:0], digits.y_train[:0], digits.x_test, digits.y_test, 10, digits.normalization
    )
    with pytest.raises(DatasetError, match="empty"):
        linear_interpolation(model, model, empty, SMALL, CPU)
    with pytest.raises(ConfigError, match="dims"):
        random_directions(model, data, 3, SMALL, CPU)
    with pytest.raises(ConfigError, match="three models"):
        plane([model, model], data, SMALL, CPU)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resolution": 1}, "resolution"),
        ({"span": 0.0}, "span"),
        ({"samples": 0}, "samples"),
        ({"max_points": 0}, "max_points"),
    ],
)
def test_invalid_landscape_configs_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LandscapeConfig(**options)


def test_interpolation_result_writes_diverged_points_as_null() -> None:
    from analysis.landscape import GridMetrics

    metrics = GridMetrics(np.array([0.1, np.nan]), np.array([1.0, 0.0]), np.array([0.2, np.inf]), np.array([1.0, 0.0]))
    result = InterpolationResult(np.array([0.0, 1.0]), metrics, 0.0, 0.0, False)
    text = json.dumps(result.to_dict(), allow_nan=False)
    again = InterpolationResult.from_dict(json.loads(text))
    assert np.isnan(again.metrics.train_loss[1]) and again.labels == ("parent A", "parent B")


def stored_ot_fusion(workspace: Workspace) -> tuple[list[str], str]:
    """Two one-epoch digits MLPs saved in ``workspace`` and their OT fusion: the parents' ids and the fused id."""
    spec = default_spec("mlp", (1, 8, 8), 10, hidden=(16,))
    ids = [train_and_save(workspace, spec, "digits", TrainConfig(epochs=1, seed=s)).record.id for s in range(2)]
    run = fuse_and_save(workspace, ids, "ot")
    assert run.record is not None
    return ids, run.record.id


def test_a_fusion_landscape_over_a_limit_is_refused_before_its_lines_are_computed(workspace, monkeypatch) -> None:
    _, fused = stored_ot_fusion(workspace)
    batches: list[int] = []
    load = Workspace.load

    def counting_load(self: Workspace, model_id: str):
        model, record = load(self, model_id)
        model.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
        return model, record

    monkeypatch.setattr(Workspace, "load", counting_load)
    with pytest.raises(GridTooLarge, match="10,201 grid points, above the limit of 10,000"):
        fusion_landscape(workspace, fused, LandscapeConfig(resolution=101), CPU)
    assert batches == [], "the plane's grid is checked before the three lines are computed"
    with pytest.raises(GridTooLarge, match="would take about"):
        fusion_landscape(workspace, fused, LandscapeConfig(resolution=3, max_seconds=1e-9), CPU)
    measured = len(batches)
    assert stored_fusion_landscape(workspace, fused) == {}, "only the cost estimate's timed points ran"
    fusion_landscape(workspace, fused, LandscapeConfig(resolution=3, samples=64), CPU)
    assert len(batches) > measured + 4, "the counter sees the landscape's own forward passes"


def test_a_fusion_landscape_loads_each_of_its_models_once(workspace, monkeypatch) -> None:
    ids, fused = stored_ot_fusion(workspace)
    loads: list[str] = []
    load = Workspace.load
    monkeypatch.setattr(Workspace, "load", lambda self, i: loads.append(i) or load(self, i))
    results = fusion_landscape(workspace, fused, LandscapeConfig(resolution=3, samples=64), CPU)
    assert set(results) == {"A-B", "A-fused", "B-fused", "A-B aligned", "A-B aligned + REPAIR", "plane"}
    assert sorted(loads) == sorted([*ids, fused]), loads
