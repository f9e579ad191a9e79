"""The curvature estimators on operators with known spectra (dense matrices ``Q diag(λ) Qᵀ`` of size 120), apart from
any model, and the :class:`Hessian` object against the dense Hessian of a tiny network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from analysis import AnalysisError, Hessian
from analysis.curvature.hessian import ParameterSpace
from analysis.curvature.hutchinson import hutchinson_trace
from analysis.curvature.lanczos import lanczos, lanczos_start, lanczos_top_eigenvalues
from analysis.curvature.operator import MatrixOperator
from analysis.curvature.slq import slq_density
from analysis.hessian_config import HessianConfig

SIZE = 120


def rotated(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    """``Q diag(eigenvalues) Qᵀ`` in float64 with ``Q`` a seeded random orthogonal matrix."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigenvalues)) @ q.T


def outlying_spectrum() -> np.ndarray:
    """A Hessian-like spectrum: five large outliers above a bulk of small eigenvalues of both signs."""
    bulk = np.random.default_rng(0).normal(0.1, 0.3, SIZE - 5)
    return np.concatenate([[100.0, 60.0, 40.0, 25.0, 15.0], bulk])


@pytest.fixture(scope="module")
def matrix() -> torch.Tensor:
    return rotated(outlying_spectrum())


def test_lanczos_top_k_equals_the_dense_top_k_and_reports_its_ritz_residuals(matrix) -> None:
    expected = np.linalg.eigvalsh(matrix.numpy())[::-1][:5]
    top = lanczos_top_eigenvalues(MatrixOperator(matrix), 5, steps=SIZE, tolerance=1e-12)
    assert top.converged
    np.testing.assert_allclose(top.eigenvalues, expected, rtol=0, atol=1e-6)
    vectors = top.eigenvectors
    assert vectors.shape == (SIZE, 5) and vectors.dtype == torch.float64
    residual = matrix @ vectors - vectors * torch.as_tensor(top.eigenvalues.copy())
    np.testing.assert_allclose(residual.norm(dim=0).numpy(), top.residuals, rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose((vectors.T @ vectors).numpy(), np.eye(5), atol=1e-8)


def test_lanczos_stops_once_the_top_k_errors_meet_the_tolerance(matrix) -> None:
    """Well separated outliers converge long before the Krylov space is full."""
    expected = np.linalg.eigvalsh(matrix.numpy())[::-1][:3]
    top = lanczos_top_eigenvalues(MatrixOperator(matrix), 3, steps=SIZE, tolerance=1e-8)
    assert top.converged and top.steps < SIZE // 2
    np.testing.assert_allclose(top.eigenvalues, expected, rtol=1e-8)
    longer = lanczos_top_eigenvalues(MatrixOperator(matrix), 3, steps=SIZE, tolerance=1e-8, min_steps=80)
    assert longer.steps == 80 and len(longer.run.alphas[0]) == 80


def test_lanczos_refuses_k_above_the_size() -> None:
    with pytest.raises(AnalysisError, match=r"at most the number of parameters analysed \(4\), got k=5"):
        lanczos_top_eigenvalues(MatrixOperator(torch.eye(4)), 5)


def test_hutchinson_is_exact_on_a_diagonal_with_rademacher_probes() -> None:
    diagonal = torch.linspace(-3.0, 7.0, SIZE, dtype=torch.float64)
    trace = hutchinson_trace(MatrixOperator(torch.diag(diagonal)), probes=5, block_size=2)
    np.testing.assert_allclose(trace.values, float(diagonal.sum()), rtol=1e-12)
    assert trace.error == pytest.approx(0.0, abs=1e-9)


def test_hutchinson_is_within_four_error_bars_and_its_error_bar_is_the_rademacher_variance(matrix) -> None:
    """``Var[zᵀ A z] = 2 Σ_{i≠j} a_ij²`` for Rademacher ``z``: 400 probes estimate its square root to about 4%."""
    exact = float(torch.trace(matrix))
    trace = hutchinson_trace(MatrixOperator(matrix), probes=400, seed=3, block_size=50)
    assert len(trace.values) == 400 and abs(trace.mean - exact) <= 4 * trace.error
    off_diagonal = matrix - torch.diag(torch.diag(matrix))
    standard_deviation = math.sqrt(2 * float(off_diagonal.square().sum()))
    assert trace.error * math.sqrt(400) == pytest.approx(standard_deviation, rel=0.2)


def test_hutchinson_stops_at_its_tolerance(matrix) -> None:
    trace = hutchinson_trace(MatrixOperator(matrix), probes=1000, tolerance=0.05, seed=1)
    assert 10 <= len(trace.values) < 1000 and trace.converged and trace.error <= 0.05 * abs(trace.mean)


def test_deflated_hutchinson_has_a_lower_variance_than_plain_across_seeds(matrix) -> None:
    """The Krylov basis captures the outliers, which carry most of ``Σ_{i≠j} a_ij²``; the deflated estimates vary far
    less from seed to seed, and each stays unbiased."""
    exact = float(torch.trace(matrix))
    operator = MatrixOperator(matrix)
    plain = [hutchinson_trace(operator, probes=10, seed=seed).mean for seed in range(30)]
    deflated = [hutchinson_trace(operator, probes=10, seed=seed, deflation=10) for seed in range(30)]
    assert all(d.deflation == 10 for d in deflated)
    means = np.array([d.mean for d in deflated])
    assert means.var() < np.var(plain) / 100
    assert abs(means.mean() - exact) <= 4 * means.std(ddof=1) / math.sqrt(len(means))
    krylov = lanczos(operator, lanczos_start(SIZE, 0), 10, True)
    reused = hutchinson_trace(operator, probes=10, seed=0, krylov=krylov)
    np.testing.assert_allclose(reused.values, deflated[0].values, rtol=1e-10)


@pytest.mark.parametrize("diagonal", [True, False], ids=["diagonal", "rotated"])
def test_slq_density_integrates_to_one_and_its_moments_match_the_spectrum(diagonal: bool) -> None:
    """Per run ``Σ w θ = vᵀ A v`` and ``Σ w θ² = vᵀ A² v`` (exact for ``m ≥ 2``), whose means over Rademacher ``v``
    are ``tr A / n`` and ``tr A² / n``; on a diagonal every run is exact. The density's own moments add the kernel:
    ``∫ t φ = Σ w θ``, ``∫ t² φ = Σ w θ² + σ²``."""
    spectrum = outlying_spectrum() / 10
    matrix = torch.diag(torch.as_tensor(spectrum)) if diagonal else rotated(spectrum, seed=1)
    density = slq_density(MatrixOperator(matrix), steps=30, runs=40, bins=4000, seed=2)
    first = np.array([(w * n).sum() for n, w in zip(density.nodes, density.weights)])
    second = np.array([(w * n**2).sum() for n, w in zip(density.nodes, density.weights)])
    mean, square = spectrum.mean(), (spectrum**2).mean()
    if diagonal:
        np.testing.assert_allclose(first, mean, rtol=1e-10)
        np.testing.assert_allclose(second, square, rtol=1e-10)
    else:
        assert abs(first.mean() - mean) <= 4 * first.std(ddof=1) / math.sqrt(len(first))
        assert abs(second.mean() - square) <= 4 * second.std(ddof=1) / math.sqrt(len(second))
    assert np.trapezoid(density.density, density.grid) == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(density.grid * density.density, density.grid) == pytest.approx(first.mean(), rel=1e-6)
    second_moment = np.trapezoid(density.grid**2 * density.density, density.grid)
    assert second_moment == pytest.approx(second.mean() + density.sigma**2, rel=1e-6)


def test_a_matrix_operator_refuses_a_block_of_the_wrong_shape() -> None:
    with pytest.raises(AnalysisError, match=r"block of vectors \(3, k\), got a tensor of shape \(2, 3\)"):
        MatrixOperator(torch.eye(3)).matmul(torch.ones(2, 3))
    with pytest.raises(AnalysisError, match="square floating-point"):
        MatrixOperator(torch.ones(2, 3))


def test_the_hessian_objects_top_eigenvalue_is_the_dense_hessians() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    inputs, targets = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    params = {name: p.detach() for name, p in model.named_parameters()}
    space = ParameterSpace(tuple(params), tuple(tuple(p.shape) for p in params.values()))

    def loss(flat: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, space.unflatten(flat), (inputs,)), targets)

    dense = torch.autograd.functional.hessian(loss, space.flatten(params))
    expected = torch.linalg.eigvalsh(dense)
    config = HessianConfig(samples=None, tolerance=1e-6)
    top = Hessian(model.float(), (inputs.float(), targets), device=torch.device("cpu"), config=config).top_eigenvalues(
        2
    )
    np.testing.assert_allclose(top.eigenvalues, expected.flip(0)[:2].numpy(), rtol=1e-4)
