import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.errors import ConfigError
from fusion.transport import (
    Transport,
    TransportError,
    ground_cost,
    marginal,
    normalize_cost,
    solve_transport,
    transport_plan,
)


def features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_euclidean_cost_matches_pairwise_distances():
    a, b = features(5, 7, 0), features(4, 7, 1)
    expected = torch.cdist(a.double(), b.double())
    assert torch.allclose(ground_cost(a, b, "euclidean").double(), expected, atol=1e-4)
    assert torch.allclose(ground_cost(a, b, "sqeuclidean").double(), expected**2, atol=1e-3)


def test_cosine_cost_ignores_scale_and_row_normalisation_makes_euclidean_scale_free():
    a = features(4, 6, 0)
    assert torch.allclose(ground_cost(a, 3 * a, "cosine").diagonal(), torch.zeros(4), atol=1e-6)
    assert torch.allclose(ground_cost(a, 3 * a, "euclidean", normalize_rows=True).diagonal(), torch.zeros(4), atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12), m=st.integers(1, 12), seed=st.integers(0, 1000), solver=st.sampled_from(["exact", "sinkhorn"])
)
def test_plans_respect_their_marginals(n, m, seed, solver):
    cost = normalize_cost(ground_cost(features(n, 3, seed), features(m, 3, seed + 1)), "max")
    rng = np.random.default_rng(seed)
    mu = marginal(n, torch.from_numpy(rng.random(n) + 0.1))
    nu = marginal(m)
    plan = transport_plan(cost, mu, nu, solver=solver, reg=0.05)
    tolerance = 1e-7 if solver == "exact" else 1e-4
    assert np.allclose(plan.sum(1), mu, atol=tolerance)
    assert np.allclose(plan.sum(0), nu, atol=tolerance)
    assert (plan >= -1e-12).all()


def test_exact_plan_for_equal_widths_is_the_optimal_permutation():
    a = features(6, 4, 0)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    transport = solve_transport(a[order], a)
    assert transport.permutation is not None
    assert torch.equal(torch.as_tensor(order[transport.permutation]), torch.arange(6))
    assert transport.cost == pytest.approx(0.0, abs=1e-3)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 1000), levels=st.sampled_from([0, 3]))
def test_the_assignment_shortcut_is_as_cheap_as_exact_emd(n, seed, levels):
    """Jonker-Volgenant's permutation costs what the network simplex's plan costs, with ties too (``levels``
    distinct cost values; 0: continuous costs)."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, levels, (n, n)).astype(float) if levels else rng.random((n, n))
    assignment = transport_plan(torch.from_numpy(c))
    emd = transport_plan(torch.from_numpy(c), marginal(n) * 1.0, marginal(n) * 1.0 + 0.0)  # explicit: ot.emd
    assert sorted(np.flatnonzero(assignment) % n) == list(range(n))
    assert np.allclose(assignment.sum(0), 1.0 / n) and np.allclose(assignment.sum(1), 1.0 / n)
    assert (assignment * c).sum() == pytest.approx((emd * c).sum(), rel=1e-9, abs=1e-12)


def test_producer_columns_and_consumer_rows_sum_to_one_for_unequal_widths():
    transport = solve_transport(features(9, 4, 0), features(5, 4, 1))
    assert transport.shape == (9, 5)
    assert torch.allclose(transport.producer.sum(0), torch.ones(5), atol=1e-6)
    assert torch.allclose(transport.consumer.sum(1), torch.ones(9), atol=1e-6)
    assert transport.permutation is None


def test_reference_correction_uses_the_producer_map_on_both_sides():
    plan = transport_plan(ground_cost(features(6, 3, 0), features(3, 3, 1)))
    reference = Transport.from_plan(plan, correction="reference")
    ours = Transport.from_plan(plan)
    assert torch.equal(reference.consumer, reference.producer)
    # for a 2:1 merge otfusion's T diag(1/beta) halves what the next layer receives; ours sums it
    assert torch.allclose(reference.consumer.sum(1), torch.full((6,), 0.5), atol=1e-6)
    assert torch.allclose(ours.consumer.sum(1), torch.ones(6), atol=1e-6)


def test_nan_costs_are_refused():
    a = features(3, 2, 0)
    a[1, 0] = float("nan")
    with pytest.raises(TransportError, match="NaN"):
        solve_transport(a, features(3, 2, 1))


@pytest.mark.parametrize(
    "call",
    [
        lambda: ground_cost(features(2, 3, 0), features(2, 3, 1), "manhattan"),
        lambda: normalize_cost(torch.ones(2, 2), "z-score"),
        lambda: transport_plan(torch.ones(2, 2), solver="greedy"),
        lambda: transport_plan(torch.ones(2, 2), solver="sinkhorn", reg=0.0),
        lambda: Transport.from_plan(np.eye(2) / 2, correction="none"),
    ],
)
def test_unknown_options_raise_config_errors(call):
    with pytest.raises(ConfigError):
        call()


def test_mismatched_feature_sizes_are_refused():
    with pytest.raises(TransportError, match="same d"):
        ground_cost(features(2, 3, 0), features(2, 4, 1))
