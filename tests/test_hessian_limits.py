"""Hessian runs are costed before they start (issue 10, item 9): the product count bounds the real one, runs above
``max_products`` are refused before any Hessian-vector product, and a trace that stopped at its probe cap says so."""

import json

import pytest
import torch

import analysis.hessian as hessian_module
from analysis.curvature.hessian import HessianOperator
from analysis.curvature.hutchinson import hutchinson_trace
from analysis.hessian import check_products, hessian_products, hessian_report
from analysis.hessian_config import HessianConfig
from fusion.errors import CostLimitError
from fusion.models import build_model, default_spec

SPEC = default_spec("mlp", (1, 8, 8), 10, hidden=(160,))  # 12,010 parameters: more than a 9,999-step Lanczos


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 10, (64,), generator=generator)


def test_the_product_count_bounds_the_products_a_report_uses(monkeypatch):
    model = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(8,)), seed=0)
    config = HessianConfig(samples=64, top_k=2, iterations=12, probes=6, steps=8, runs=2, layers=True)
    used = []
    original = HessianOperator.matmul

    def counting(self, vectors):
        used.append(vectors.shape[1])
        return original(self, vectors)

    monkeypatch.setattr(HessianOperator, "matmul", counting)
    monkeypatch.setattr(hessian_module, "check_hessian_cost", lambda *args: None)  # the estimate times products too
    hessian_report(model, data(), config)
    expected = hessian_products(model, config)
    assert 0 < sum(used) <= sum(expected.values())
    assert set(expected) == {"top eigenvalues", "trace", "density", "perturbation", "spread", "layers"}


def test_a_run_above_the_product_limit_is_refused_before_any_product(monkeypatch):
    model = build_model(SPEC, seed=0)
    monkeypatch.setattr(HessianOperator, "matmul", lambda self, v: pytest.fail("computed a product"))
    config = HessianConfig(samples=64, top_k=9999, iterations=10000)
    with pytest.raises(CostLimitError, match=r"Hessian-vector products.*above the limit of 10,000"):
        hessian_report(model, data(), config)
    with pytest.raises(CostLimitError, match="iterations"):
        check_products([model, model], HessianConfig(iterations=6000))


def test_a_trace_stopped_at_its_probe_cap_is_reported_as_not_converged():
    model = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(8,)), seed=0)
    operator = HessianOperator(model, data())
    capped = hutchinson_trace(operator, probes=3, tolerance=1e-9)
    assert not capped.converged
    assert capped.status.startswith("not converged: error bar") and "after 3 probes" in capped.status
    single = hutchinson_trace(operator, probes=1)
    assert single.error is None and not single.converged
    stored = json.loads(json.dumps(single.to_dict(), allow_nan=False))
    assert stored["error"] is None and "single probe" in stored["status"]
