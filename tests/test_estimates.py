"""Time estimates count exactly the work their run does, and carry a range around the estimate. Nothing here asserts
a measured duration: the timings themselves vary with the machine's load."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from app_helpers import open_app, train_quick_models
from torch.optim.optimizer import register_optimizer_step_post_hook

import analysis.hessian as hessian_module
import analysis.landscape as landscape_module
from analysis.cost import SPREAD, CostEstimate, seconds_range, time_step, training_cost
from analysis.curvature.hessian import HessianOperator
from analysis.hessian import fewest_hessian_products, hessian_products, hessian_report
from analysis.hessian_config import HessianConfig
from analysis.landscape import LandscapeConfig, estimate_cost, random_directions
from fusion.data import Dataset
from fusion.models import ModelSpec
from fusion.train import TrainConfig, train
from fusion.workspace import Workspace
from studies.pipeline import DemoMember, train_and_save
from studies.runs import demo_build_cost

CPU = torch.device("cpu")


def test_a_timed_step_is_called_once_more_than_timed_to_warm_up() -> None:
    calls = []
    timed = time_step(lambda: calls.append(1), repeats=3, min_seconds=0)
    assert len(calls) == 4 and timed.repeats == 3
    assert timed.fastest <= timed.median <= timed.slowest
    assert time_step(lambda: calls.append(1), repeats=3, min_seconds=0, warm_up=False).repeats == len(calls) - 4


def test_the_range_reaches_at_least_the_spread_around_the_estimate_and_the_measured_extremes() -> None:
    assert seconds_range(20.0, 19.0, 21.0) == pytest.approx((20 / SPREAD, 20 * SPREAD))
    assert seconds_range(20.0, 5.0, 60.0) == (5.0, 60.0)


def test_an_estimate_is_described_with_its_range() -> None:
    estimate = CostEstimate(10, "grid points", 10, 0, 100, 20.0, 2**20, 20 / SPREAD, 30.0)
    assert estimate.describe_seconds() == "about 20 s (13-30 s)"
    assert CostEstimate(1, "grid points", 1, 0, 1, 2.5, 0, 1.7, 3.75).describe_seconds() == "about 2.5 s (1.7-3.8 s)"
    assert (estimate + estimate).describe_seconds() == "about 40 s (27-60 s)"
    assert estimate.plus_seconds(1.0).describe_seconds() == "about 21 s (14-31 s)"


def count_forward_calls(model: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("dims", [1, 2])
def test_a_landscape_estimate_counts_the_forward_passes_its_run_makes(
    trained_mlp, monkeypatch: pytest.MonkeyPatch, dims: int
) -> None:
    model, data = copy.deepcopy(trained_mlp.model), trained_mlp.data
    config = LandscapeConfig(resolution=3, samples=300, batch_size=128)
    estimate = estimate_cost(model, data, 3**dims, config, CPU, bases=1 + dims)
    monkeypatch.setattr(landscape_module, "check_cost", lambda *args, **kwargs: None)  # count the grid alone
    calls = count_forward_calls(model)
    random_directions(model, data, dims, config, CPU)
    assert len(calls) == estimate.forward_passes == 3**dims * 2 * math.ceil(300 / 128)
    assert estimate.low_seconds < estimate.seconds < estimate.high_seconds


def test_a_hessian_estimate_brackets_the_products_its_run_makes(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = tiny
    config = HessianConfig(samples=None, batch_size=64, top_k=2, random_directions=1, perturb_points=3)
    estimate = hessian_module.estimate_hessian_cost(model, (x, y), config, CPU)
    products: list[int] = []
    matmul = HessianOperator.matmul

    def counted(self: HessianOperator, vectors: torch.Tensor) -> torch.Tensor:
        products.append(vectors.shape[1])
        return matmul(self, vectors)

    monkeypatch.setattr(HessianOperator, "matmul", counted)
    monkeypatch.setattr(hessian_module, "check_hessian_cost", lambda *args, **kwargs: None)  # count the run alone
    hessian_report(model, (x, y), config, CPU)
    fewest, most = (
        sum(count.values()) for count in (fewest_hessian_products(model, config), hessian_products(model, config))
    )
    assert fewest <= sum(products) <= most == estimate.units
    assert estimate.low_seconds < estimate.seconds < estimate.high_seconds


def test_a_training_estimate_counts_the_optimizer_steps_train_takes(trained_mlp) -> None:
    model, data = copy.deepcopy(trained_mlp.model), trained_mlp.data
    config = TrainConfig(epochs=2, batch_size=256, seed=0)
    estimate = training_cost(model, data, config, CPU)
    steps: list[int] = []
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        train(model, data, config, CPU)
    finally:
        handle.remove()
    assert len(steps) == estimate.units == estimate.backward_passes == 2 * math.ceil(1347 / 256)
    assert estimate.low_seconds < estimate.seconds < estimate.high_seconds


def test_the_demo_build_costs_only_the_members_the_workspace_lacks(digits: Dataset, tmp_path) -> None:
    spec = ModelSpec("mlp", digits.input_shape, digits.num_classes, hidden=(16,))
    members = [DemoMember(spec, TrainConfig(epochs=1, batch_size=512, seed=seed)) for seed in (0, 1)]
    workspace = Workspace(tmp_path)
    assert demo_build_cost(workspace, members, CPU).units == 2 * math.ceil(1347 / 512)
    train_and_save(workspace, spec, "digits", members[0].config, device=CPU)
    assert demo_build_cost(workspace, members, CPU).units == math.ceil(1347 / 512)
    train_and_save(workspace, spec, "digits", members[1].config, device=CPU)
    assert demo_build_cost(workspace, members, CPU).seconds == 0.0


RANGE = re.compile(r"about [\d.,]+ s \([\d.,]+-[\d.,]+ s\)")


def test_home_states_the_demo_training_time_measured_here_with_its_range(app_workspace) -> None:
    demo = next(m.value for m in open_app().markdown if "Trains 4 MLPs" in m.value)
    assert RANGE.search(demo) and "on this machine" in demo and "six seconds" not in demo


def test_the_landscape_page_shows_its_estimate_with_a_range(app_workspace) -> None:
    train_quick_models(app_workspace, seeds=(0,), hidden=(8,))
    at = open_app("pages/loss_landscape.py")
    at.number_input(key="landscape.samples").set_value(100).run()
    assert any("grid points" in c.value and RANGE.search(c.value) for c in at.caption)
