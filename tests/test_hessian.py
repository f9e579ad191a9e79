"""Hessian analyses checked against the dense Hessian of tiny networks, against PyHessian, and on bad input."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis import AnalysisError, NonFiniteLoss
from analysis.curvature.hessian import HessianOperator
from analysis.curvature.hutchinson import MIN_TRACE_PROBES
from analysis.curvature.slq import EigenvalueDensity
from analysis.hessian import HessianReport, hessian_report
from analysis.hessian_config import HessianConfig
from analysis.hessian_spectrum import Hessian, layer_parameters
from analysis.landscape import filter_normalized_direction
from analysis.perturbation import perturbation_curve
from fusion.data import Dataset
from fusion.errors import ConfigError, DatasetError
from fusion.models import ModelSpec
from fusion.train import evaluate
from tests.fusion_helpers import randomised
from tests.hessian_helpers import EXACT, dense_hessian

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def spectrum(tiny) -> tuple[torch.Tensor, np.ndarray]:
    model, x, y = tiny
    hessian = dense_hessian(model, x, y)
    return hessian, torch.linalg.eigvalsh(hessian).numpy()


def test_top_eigenvalues_match_the_dense_hessian(tiny, spectrum) -> None:
    model, x, y = tiny
    _, eigenvalues = spectrum
    top = Hessian(model, (x, y), device=CPU, config=EXACT).top_eigenvalues(3)
    assert top.converged
    np.testing.assert_allclose(top.eigenvalues, eigenvalues[::-1][:3], rtol=1e-4)
    assert top.eigenvectors is not None and top.eigenvectors.shape == (3, 310)


def test_the_default_tolerance_bounds_the_eigenvalue_error_not_the_residual(tiny, spectrum) -> None:
    model, x, y = tiny
    _, eigenvalues = spectrum
    default = HessianConfig(samples=None, batch_size=64, deflation=0)  # no trace to deflate: no floor on the steps
    top = Hessian(model, (x, y), device=CPU, config=default).top_eigenvalues(3)
    strict = Hessian(model, (x, y), device=CPU, config=dataclasses.replace(default, tolerance=1e-7)).top_eigenvalues(3)
    assert top.converged and top.iterations < strict.iterations
    np.testing.assert_allclose(top.eigenvalues, eigenvalues[::-1][:3], atol=1e-3 * eigenvalues.max())
    assert top.residuals.max() > 1e-3 * eigenvalues.max(), "a residual criterion would have needed more steps"


def test_eigenvectors_satisfy_the_eigen_equation(tiny, spectrum) -> None:
    model, x, y = tiny
    hessian, eigenvalues = spectrum
    top = Hessian(model, (x, y), device=CPU, config=EXACT).top_eigenvalues(3)
    vectors = top.eigenvectors.double()
    residuals = (vectors @ hessian - torch.as_tensor(top.eigenvalues.copy())[:, None] * vectors).norm(dim=1)
    assert float(residuals.max()) < 1e-4 * eigenvalues.max()
    np.testing.assert_allclose(vectors.norm(dim=1), 1.0, atol=1e-6)
    assert np.all(top.residuals < 1e-4 * eigenvalues.max())


@pytest.mark.parametrize("deflation", [0, 20])
def test_hutchinson_trace_is_within_three_error_bars_of_the_dense_trace(tiny, spectrum, deflation: int) -> None:
    model, x, y = tiny
    _, eigenvalues = spectrum
    config = dataclasses.replace(EXACT, deflation=deflation, trace_tolerance=0.0)
    trace = Hessian(model, (x, y), device=CPU, config=config).trace()
    assert len(trace.values) == EXACT.probes and trace.deflation == deflation
    assert trace.error == pytest.approx(trace.values.std(ddof=1) / math.sqrt(EXACT.probes))
    assert abs(trace.mean - eigenvalues.sum()) <= 3 * trace.error


def test_krylov_deflation_shrinks_the_error_bar_and_a_full_basis_makes_the_trace_exact(tiny, spectrum) -> None:
    model, x, y = tiny
    _, eigenvalues = spectrum
    plain = Hessian(
        model, (x, y), device=CPU, config=dataclasses.replace(EXACT, deflation=0, trace_tolerance=0.0)
    ).trace()
    deflated = Hessian(
        model, (x, y), device=CPU, config=dataclasses.replace(EXACT, deflation=20, trace_tolerance=0.0)
    ).trace()
    assert deflated.error < plain.error / 3, "the outlying eigenvalues dominate the plain probes' variance"
    ordered = np.sort(eigenvalues)
    assert ordered[:20].sum() - 1e-4 <= deflated.deflated <= ordered[-20:].sum() + 1e-4, (
        "Ky Fan: tr QᵀHQ over 20 orthonormal vectors"
    )
    # the Krylov space stops growing at an invariant subspace (168 of the 310 eigenvalues are 0): tr T_m is then tr H
    full = Hessian(
        model, (x, y), device=CPU, config=dataclasses.replace(EXACT, deflation=310, probes=12, trace_tolerance=0.0)
    ).trace()
    assert full.deflation < 310 and full.deflated == pytest.approx(eigenvalues.sum(), rel=1e-4)
    assert full.mean == pytest.approx(eigenvalues.sum(), rel=1e-4) and full.error < 1e-4 * abs(eigenvalues.sum())


def test_trace_stops_at_its_relative_error_bar_but_not_before_ten_probes(tiny) -> None:
    model, x, y = tiny
    loose = Hessian(
        model, (x, y), device=CPU, config=dataclasses.replace(EXACT, deflation=20, trace_tolerance=0.5)
    ).trace()
    assert len(loose.values) == MIN_TRACE_PROBES
    tight = Hessian(
        model, (x, y), device=CPU, config=dataclasses.replace(EXACT, deflation=0, probes=400, trace_tolerance=0.02)
    ).trace()
    assert MIN_TRACE_PROBES < len(tight.values) < 400
    assert tight.error <= 0.02 * abs(tight.mean)
    shorter = tight.values[:-1]
    assert shorter.std(ddof=1) / math.sqrt(len(shorter)) > 0.02 * abs(shorter.mean()), (
        "it stopped at the first probe that met the target"
    )


def test_slq_density_integrates_to_one_and_sits_on_the_spectrum(tiny, spectrum) -> None:
    model, x, y = tiny
    _, eigenvalues = spectrum
    density = Hessian(model, (x, y), device=CPU, config=EXACT).density()
    assert np.trapezoid(density.density, density.grid) == pytest.approx(1.0, abs=1e-3)
    inside = (density.grid >= eigenvalues.min() - 3 * density.sigma) & (
        density.grid <= eigenvalues.max() + 3 * density.sigma
    )
    assert np.trapezoid(np.where(inside, density.density, 0.0), density.grid) >= 0.99
    per_run_means = np.array([(w * n).sum() for n, w in zip(density.nodes, density.weights)])
    standard_error = per_run_means.std(ddof=1) / math.sqrt(len(per_run_means))
    assert (
        abs(np.trapezoid(density.grid * density.density, density.grid) - eigenvalues.mean())
        <= 4 * standard_error + 1e-6
    )
    assert all(w.sum() == pytest.approx(1.0) for w in density.weights)
    assert density.spread.shape == density.grid.shape and np.all(density.spread >= 0)


def test_block_hessian_vector_products_equal_the_dense_products_over_uneven_batches(tiny, spectrum) -> None:
    model, x, y = tiny
    hessian, _ = spectrum
    vectors = torch.randn(5, 310, generator=torch.Generator().manual_seed(1))
    for cache_graph in (True, False):
        operator = HessianOperator(model, (x, y), device=CPU, batch_size=64, block_size=2, cache_graph=cache_graph)
        np.testing.assert_allclose(operator.matmul(vectors.T).T.double(), vectors.double() @ hessian, atol=2e-5)
        assert operator.products == 5


def test_hessian_vector_products_use_batchnorm_running_statistics(digits: Dataset) -> None:
    spec = ModelSpec("cnn", digits.input_shape, digits.num_classes, channels=(2,), hidden=(4,), batch_norm=True)
    model = randomised(spec, seed=3)
    x, y = digits.x_test[:50], digits.y_test[:50]
    hessian = dense_hessian(model, x, y)
    operator = HessianOperator(model, (x, y), device=CPU, batch_size=32, block_size=3)
    vectors = torch.randn(3, operator.size, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(operator.matmul(vectors.T).T.double(), vectors.double() @ hessian, atol=1e-4, rtol=1e-4)
    assert not model.training


def test_layerwise_hessian_matches_the_dense_diagonal_blocks(tiny) -> None:
    model, x, y = tiny
    layers = Hessian(model, (x, y), device=CPU, config=EXACT).layers()
    assert [layer.layer for layer in layers] == list(layer_parameters(model))
    for layer in layers:
        block = torch.linalg.eigvalsh(dense_hessian(model, x, y, list(layer.parameters))).numpy()
        assert layer.top_eigenvalue == pytest.approx(block.max(), rel=1e-4)
        assert abs(layer.trace - block.sum()) <= 3 * layer.trace_error + 1e-9


def test_same_seed_gives_the_same_results(tiny) -> None:
    model, x, y = tiny
    config = HessianConfig(samples=150, batch_size=64, probes=10, steps=15, runs=2, seed=7)
    first = [
        Hessian(model, (x, y), device=CPU, config=config).top_eigenvalues(2),
        Hessian(model, (x, y), device=CPU, config=config).trace(),
    ]
    second = [
        Hessian(model, (x, y), device=CPU, config=config).top_eigenvalues(2),
        Hessian(model, (x, y), device=CPU, config=config).trace(),
    ]
    np.testing.assert_array_equal(first[0].eigenvalues, second[0].eigenvalues)
    assert torch.equal(first[0].eigenvectors, second[0].eigenvectors)
    np.testing.assert_array_equal(first[1].values, second[1].values)
    densities = [Hessian(model, (x, y), device=CPU, config=config).density() for _ in range(2)]
    np.testing.assert_array_equal(densities[0].density, densities[1].density)
    other = Hessian(
        model, (x, y), device=CPU, config=HessianConfig(samples=150, batch_size=64, probes=10, seed=8)
    ).trace()
    assert not np.array_equal(other.values, first[1].values)


def test_perturbation_curve_passes_through_the_model_at_t_zero(tiny) -> None:
    model, x, y = tiny
    top = Hessian(model, (x, y), device=CPU, config=EXACT).top_eigenvalues(1)
    curve = perturbation_curve(model, top.direction(0), (x, y), device=CPU)
    np.testing.assert_allclose(curve.ts, np.linspace(-0.5, 0.5, 21))
    metrics = evaluate(model, x, y, CPU)
    assert curve.loss[10] == pytest.approx(metrics.loss, rel=1e-5)
    assert curve.accuracy[10] == pytest.approx(metrics.accuracy)
    curvature = (curve.loss[0] + curve.loss[-1] - 2 * curve.loss[10]) / 0.25
    assert curvature == pytest.approx(top.eigenvalues[0], rel=0.2), "second difference along v_1 ≈ λ_1"
    random = perturbation_curve(
        model, filter_normalized_direction(model, torch.Generator().manual_seed(0)), (x, y), device=CPU
    )
    assert random.loss[10] == pytest.approx(metrics.loss, rel=1e-5)


def test_report_round_trips_through_json(tiny) -> None:
    model, x, y = tiny
    config = HessianConfig(
        samples=100, batch_size=50, top_k=2, iterations=30, probes=6, steps=10, runs=2, bins=200, layers=True
    )
    progress: list[tuple[int, int]] = []
    report = hessian_report(model, (x, y), config, CPU, lambda done, total, message: progress.append((done, total)))
    stored = json.loads(json.dumps(report.to_dict()))
    again = HessianReport.from_dict(stored)
    assert again.layers == report.layers and [layer.layer for layer in report.layers] == list(layer_parameters(model))
    assert report.layers == tuple(Hessian(model, (x, y), device=CPU, config=config).layers()), "on the report's sample"
    np.testing.assert_allclose(again.top.eigenvalues, report.top.eigenvalues)
    assert again.trace.mean == report.trace.mean and again.config == config and again.samples == 100
    assert isinstance(again.density, EigenvalueDensity) and len(again.curves) == 5
    assert [c.label for c in again.curves] == ["eigenvector 1", "eigenvector 2", "random 1", "random 2", "random 3"]
    assert again.curves[0].curvature == report.curves[0].curvature and again.spread.shape == (2,)
    assert progress and progress[-1][0] == progress[-1][1]
    with pytest.raises(AnalysisError, match="without its eigenvectors"):
        again.top.direction(0)


def test_a_model_without_trainable_parameters_is_refused(tiny) -> None:
    model, x, y = tiny
    frozen = copy.deepcopy(model).requires_grad_(False)
    with pytest.raises(AnalysisError, match="no trainable parameters"):
        Hessian(frozen, (x, y), device=CPU, config=EXACT).trace()
    with pytest.raises(AnalysisError, match="no trainable parameters"):
        Hessian(nn.Flatten(), (x, y), device=CPU, config=EXACT).top_eigenvalues(1)


def test_empty_data_is_refused(tiny) -> None:
    model, x, y = tiny
    with pytest.raises(DatasetError, match="empty"):
        Hessian(model, (x[:0], y[:0]), device=CPU, config=EXACT).top_eigenvalues(1)
    with pytest.raises(DatasetError, match="differ in length"):
        Hessian(model, (x, y[:5]), device=CPU, config=EXACT).trace()


def test_k_larger_than_the_parameter_count_is_refused(tiny) -> None:
    model, x, y = tiny
    with pytest.raises(AnalysisError, match="at most the number of parameters analysed \\(310\\), got k=311"):
        Hessian(model, (x, y), device=CPU, config=HessianConfig(iterations=400)).top_eigenvalues(311)
    with pytest.raises(AnalysisError, match="\\(10\\), got k=11"):
        Hessian(model, (x, y), device=CPU, config=EXACT, parameters=["layers.3.bias"]).top_eigenvalues(11)


def test_nan_loss_is_refused(tiny) -> None:
    model, x, y = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.layers[1].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="nan"):
        Hessian(broken, (x, y), device=CPU, config=EXACT).top_eigenvalues(1)
    with pytest.raises(NonFiniteLoss):
        Hessian(model, (torch.full_like(x, float("inf")), y), device=CPU, config=EXACT).trace()


def test_unknown_parameter_names_are_refused(tiny) -> None:
    model, x, y = tiny
    with pytest.raises(AnalysisError, match="names of trainable parameters"):
        Hessian(model, (x, y), device=CPU, config=EXACT, parameters=["layers.9.weight"]).trace()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"top_k": 0}, "top_k"),
        ({"iterations": 2, "top_k": 3}, "at least top_k"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"samples": 0}, "samples"),
        ({"bins": 3}, "bins"),
        ({"kernel_width": -1.0}, "kernel_width"),
        ({"trace_tolerance": 1.0}, "trace_tolerance"),
        ({"deflation": -1}, "deflation"),
    ],
)
def test_invalid_configs_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HessianConfig(**options)


def test_top_eigenvalue_and_trace_agree_with_pyhessian(tiny) -> None:
    pyhessian = pytest.importorskip("pyhessian", reason="PyHessian is not installed (pip install pyhessian)")
    model, x, y = tiny
    reference = pyhessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    torch.manual_seed(0)
    (their_top,), _ = reference.eigenvalues(maxIter=1000, tol=1e-6, top_n=1)
    their_trace = np.array(reference.trace(maxIter=200, tol=0.0))
    ours = Hessian(model, (x, y), device=CPU, config=HessianConfig(samples=None, tolerance=1e-6)).top_eigenvalues(1)
    trace = Hessian(model, (x, y), device=CPU, config=HessianConfig(samples=None, probes=200)).trace()
    assert ours.eigenvalues[0] == pytest.approx(their_top, rel=1e-3)
    their_error = their_trace.std(ddof=1) / math.sqrt(len(their_trace))
    assert abs(trace.mean - their_trace.mean()) <= 3 * math.hypot(trace.error, their_error)
