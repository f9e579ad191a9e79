"""The Hessian perturbation study against the dense Hessian of a tiny network: curvature fitted along every
eigenvector equals its eigenvalue, the step scales are what they say, ``d^T H d`` and the eigenvalues' spread over
data parts are what the dense Hessians give; the curvature is fitted where the loss is quadratic, and a curve whose
fit and ``d^T H d`` disagree says so and names a range on which they agree."""

from __future__ import annotations

import copy
import dataclasses
import doctest
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import analysis.perturbation
from analysis import AnalysisError
from analysis.curvature.hessian import cross_entropy_loss
from analysis.hessian import HessianReport, eigenvalue_spread, hessian_report
from analysis.hessian_config import HessianConfig
from analysis.hessian_spectrum import Hessian, sample_data
from analysis.overlap import eigenvector_overlaps
from analysis.perturbation import (
    Direction,
    PerturbationCurve,
    disagreement,
    eigen_plane,
    fit_curvature,
    fitted_curvature,
    perturbation_study,
    scaled_direction,
    study_directions,
)
from cli.main import main
from fusion.data import load_dataset
from fusion.errors import ConfigError
from fusion.groups import neuron_groups
from fusion.models import ModelSpec, build_model
from fusion.registry import fuse
from fusion.surgery import permuted
from fusion.train import TrainConfig, evaluate
from studies.pipeline import fuse_and_save, train_and_save
from studies.runs import aligned_parents, eigenvector_overlaps_of, hessian_of, stored_hessian
from tests.hessian_helpers import EXACT, dense_hessian

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def eigen(tiny) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dense Hessian (float64) and its eigenvalues and eigenvectors, largest first."""
    model, x, y = tiny
    hessian = dense_hessian(model, x, y)
    values, vectors = torch.linalg.eigh(hessian)
    return hessian, values.flip(0), vectors.flip(1).T


def unflatten(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    pieces, start = {}, 0
    for name, parameter in model.named_parameters():
        pieces[name] = flat[start : start + parameter.numel()].reshape(parameter.shape)
        start += parameter.numel()
    return pieces


def test_the_curvature_fitted_along_every_eigenvector_is_its_eigenvalue(tiny, eigen) -> None:
    """On ±1e-3 in float64: the parabola of a small symmetric range, inside the ReLUs' linear pieces (at ±1e-2 the
    kinks add up to 50 % to the fit)."""
    model, x, y = tiny
    _, values, vectors = eigen
    exact = copy.deepcopy(model).double()
    k = 4
    directions = [Direction(f"eigenvector {i + 1}", "eigenvector", i, unflatten(exact, vectors[i])) for i in range(k)]
    config = HessianConfig(perturb_low=-1e-3, perturb_high=1e-3, perturb_points=21, step_scale="absolute")
    curves = perturbation_study(exact, None, directions, config, {"test": (x.double(), y)}, CPU)
    fitted = np.array([c.curvature for c in curves])
    np.testing.assert_allclose(fitted, values[:k].numpy(), rtol=1e-3)
    assert all(c.expected is None and c.split == "test" and c.scale == "absolute" for c in curves)


def test_the_report_fits_the_lanczos_eigenvectors_and_multiplies_each_direction(tiny, eigen) -> None:
    model, x, y = tiny
    hessian, values, _ = eigen
    config = dataclasses.replace(EXACT, top_k=3, random_directions=2, batch_parts=4, probes=10, runs=1, steps=20)
    report = hessian_report(model, (x, y), config, CPU, evaluation={"test": (x, y)}, split="test")
    eigen_curves = [c for c in report.curves if c.kind == "eigenvector"]
    assert [c.label for c in eigen_curves] == ["eigenvector 1", "eigenvector 2", "eigenvector 3"]
    np.testing.assert_allclose([c.expected for c in eigen_curves], values[:3].numpy(), rtol=1e-3)
    for curve in (c for c in report.curves if c.kind == "random"):
        direction = study_directions(model, report.top, config)[3 + curve.index].entries
        flat = torch.cat([direction[n].reshape(-1).double() for n, _ in model.named_parameters()])
        assert curve.expected == pytest.approx(float(flat @ hessian @ flat), rel=1e-4)
    assert report.curve("eigenvector 1").split == "test"
    assert report.metrics["test"].loss == pytest.approx(float(report.curve("eigenvector 1").loss[10]), rel=1e-5)


def test_step_scales_match_their_definitions(tiny) -> None:
    model, _, _ = tiny
    generator = torch.Generator().manual_seed(0)
    raw = {n: torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()}
    params = dict(model.named_parameters())

    def norm(tensors) -> float:
        return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))

    assert norm(scaled_direction(model, raw, "absolute").values()) == pytest.approx(1.0, rel=1e-6)
    relative = scaled_direction(model, raw, "relative")
    assert norm(relative.values()) == pytest.approx(norm(p.detach() for p in params.values()), rel=1e-6)
    filtered = scaled_direction(model, raw, "filter")
    for name, tensor in filtered.items():
        weight = params[name].detach()
        rows = (tensor.reshape(tensor.shape[0], -1), weight.reshape(weight.shape[0], -1))
        if weight.dim() == 1:
            rows = (tensor.reshape(1, -1), weight.reshape(1, -1))
        torch.testing.assert_close(rows[0].norm(dim=1), rows[1].norm(dim=1), rtol=1e-5, atol=1e-7)
        cosine = torch.nn.functional.cosine_similarity(rows[0], raw[name].reshape(rows[0].shape), dim=1)
        assert bool((cosine > 1 - 1e-5).all()), "each filter keeps its direction"
    with pytest.raises(AnalysisError, match="zero on every trainable parameter"):
        scaled_direction(model, {n: torch.zeros_like(t) for n, t in raw.items()}, "absolute")


def test_a_relative_step_scales_the_curvature_by_the_squared_model_norm(tiny, eigen) -> None:
    model, x, y = tiny
    hessian, values, vectors = eigen
    size = math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))
    direction = scaled_direction(model, unflatten(model, vectors[0].float()), "relative")
    flat = torch.cat([direction[n].reshape(-1).double() for n, _ in model.named_parameters()])
    assert float(flat @ hessian @ flat) == pytest.approx(float(values[0]) * size**2, rel=1e-4)


def test_the_spread_over_parts_is_the_standard_error_of_the_parts_rayleigh_quotients(tiny) -> None:
    model, x, y = tiny
    config = dataclasses.replace(EXACT, top_k=2, batch_parts=4, samples=None)
    top = Hessian(model, (x, y), device=CPU, config=config).top_eigenvalues(2)
    spread = eigenvalue_spread(model, (x, y), top, config, CPU, cross_entropy_loss)
    vectors = top.eigenvectors.double()
    quotients = []
    for rows in torch.arange(len(x)).tensor_split(4):
        hessian = dense_hessian(model, x[rows], y[rows])
        quotients.append([float(v @ hessian @ v) for v in vectors])
    expected = np.std(np.array(quotients), axis=0, ddof=1) / 2
    np.testing.assert_allclose(spread, expected, rtol=1e-3)
    assert np.allclose(np.mean(quotients, axis=0), top.eigenvalues, rtol=1e-3), "the parts average to λ"
    assert (
        eigenvalue_spread(model, (x, y), top, dataclasses.replace(config, batch_parts=1), CPU, cross_entropy_loss).size
        == 0
    )


def test_the_line_to_another_model_reaches_it(tiny) -> None:
    model, x, y = tiny
    other = build_model(ModelSpec("mlp", (1, 8, 8), 10, hidden=(4,)), seed=5).eval()
    config = HessianConfig(top_k=1, random_directions=0, step_scale="absolute")
    top = Hessian(model, (x, y), device=CPU, config=EXACT).top_eigenvalues(1)
    line = study_directions(model, top, config, {"B": other.state_dict()})[-1]
    distance = math.sqrt(
        sum(float((o - p).double().square().sum()) for o, p in zip(other.parameters(), model.parameters()))
    )
    reached = {n: p.detach() + distance * line.entries[n] for n, p in model.named_parameters()}
    assert line.label == "line to B"
    assert all(torch.allclose(reached[n], p.detach(), atol=1e-5) for n, p in other.named_parameters())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"perturb_low": 0.5, "perturb_high": -0.5}, "perturb_low"),
        ({"perturb_points": 2}, "perturb_points"),
        ({"step_scale": "log"}, "step_scale"),
        ({"random_directions": -1}, "random_directions"),
        ({"perturb_high": float("nan")}, "must be numbers"),
    ],
)
def test_bad_perturbation_settings_are_refused(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        HessianConfig(**options)


def test_the_operator_of_the_report_is_reused_for_expected_curvatures(tiny) -> None:
    model, x, y = tiny
    config = HessianConfig(samples=100, batch_size=100, top_k=1, random_directions=1, iterations=20)
    operator = Hessian(model, (x, y), device=CPU, config=config).operator
    top = Hessian(model, (x, y), device=CPU, config=config).top_eigenvalues(1)
    before = operator.products
    perturbation_study(model, operator, study_directions(model, top, config), config, {"test": (x, y)}, CPU)
    assert operator.products - before == 2, "one Hessian-vector product per direction, not per split or point"


def test_the_eigenvector_plane_is_the_quadratic_form_of_the_top_two_eigenvalues_near_the_model(tiny, eigen) -> None:
    """On a small range in float64 the surface is ``L(θ) + (λ1 α² + λ2 β²) / 2`` (the gradient term aside, fitted
    out by symmetry: ``L(α, β) + L(-α, -β) - 2 L(0)``)."""
    model, x, y = tiny
    _, values, vectors = eigen
    exact = copy.deepcopy(model).double()
    directions = [Direction(f"eigenvector {i + 1}", "eigenvector", i, unflatten(exact, vectors[i])) for i in range(2)]
    config = HessianConfig(perturb_low=-1e-4, perturb_high=1e-4, plane_points=5, step_scale="absolute")
    plane = eigen_plane(exact, directions, config, {"test": (x.double(), y)}, CPU)
    surface = plane.loss["test"]
    assert surface.shape == (5, 5) and plane.ts[2] == 0
    a, b = np.meshgrid(plane.ts, plane.ts, indexing="xy")
    second = surface + surface[::-1, ::-1] - 2 * surface[2, 2]
    expected = values[0].item() * a**2 + values[1].item() * b**2
    mask = expected != 0
    np.testing.assert_allclose(second[mask], expected[mask], rtol=1e-3)


def test_the_report_holds_the_plane_and_it_round_trips(tiny) -> None:

    model, x, y = tiny
    config = HessianConfig(
        samples=100, batch_size=100, top_k=2, iterations=20, probes=4, runs=1, steps=8, plane_points=3
    )
    report = hessian_report(model, (x, y), config, CPU, evaluation={"train": (x, y), "test": (x, y)}, split="test")
    again = HessianReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert set(again.plane.loss) == {"train", "test"} and again.plane.loss["test"].shape == (3, 3)
    np.testing.assert_allclose(again.plane.loss["test"], report.plane.loss["test"])
    assert again.plane.loss["test"][1, 1] == pytest.approx(report.metrics["test"].loss, rel=1e-5)
    with pytest.raises(ConfigError, match="plane_points"):
        HessianConfig(plane_points=5, top_k=1)


def test_a_shuffled_copy_s_eigenvectors_map_back_onto_the_fused_model_s(tiny) -> None:
    """``ot`` of a model and its shuffled copy is the model; the copy's eigenvectors, moved by the fusion's maps,
    are the model's own: the overlap is the identity (up to sign). Unmapped, the copy's are not."""

    model, x, y = tiny
    groups = neuron_groups(model, x[:2])
    copy_ = permuted(model, groups, seed=4)
    result = fuse([model, copy_], "ot", inputs=x)
    config = dataclasses.replace(EXACT, top_k=3)
    overlaps = eigenvector_overlaps(result.model, [model, copy_], result.transports, result.groups, (x, y), config, CPU)
    for overlap in overlaps:
        np.testing.assert_allclose(overlap.overlap, np.eye(3), atol=1e-3)
        np.testing.assert_allclose(overlap.parent_eigenvalues, overlap.fused_eigenvalues, rtol=1e-4)
    unmapped = eigenvector_overlaps(result.model, [copy_], [None], result.groups, (x, y), config, CPU)[0]
    assert np.abs(np.diag(unmapped.overlap)).max() < 0.9


def test_overlaps_are_refused_for_models_not_mapped_from_their_parents(workspace) -> None:

    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(8,))
    ids = [train_and_save(workspace, spec, "digits", TrainConfig(epochs=1, seed=s)).record.id for s in (0, 1)]
    transplanted = fuse_and_save(workspace, ids, "transplant").record.id
    with pytest.raises(AnalysisError, match="not its parents' neurons under a map"):
        eigenvector_overlaps_of(workspace, transplanted, HessianConfig(top_k=2, samples=50, iterations=20))
    fused = fuse_and_save(workspace, ids, "matching").record.id
    overlaps = eigenvector_overlaps_of(workspace, fused, HessianConfig(top_k=2, samples=50, iterations=20))
    assert [o.overlap.shape for o in overlaps] == [(2, 2), (2, 2)]
    assert all(((o.overlap >= 0) & (o.overlap <= 1 + 1e-6)).all() for o in overlaps)


def test_a_fused_model_s_curves_follow_the_lines_to_its_aligned_parents(workspace) -> None:

    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(8,))
    ids = [train_and_save(workspace, spec, "digits", TrainConfig(epochs=1, seed=s)).record.id for s in (0, 1)]
    fused = fuse_and_save(workspace, ids, "ot").record.id
    config = HessianConfig(samples=60, top_k=1, iterations=10, probes=4, runs=1, steps=8, random_directions=0)
    config = dataclasses.replace(config, perturb_low=0.0, perturb_high=1.0, perturb_points=3)
    report = hessian_of(workspace, fused, config)
    lines = [c for c in report.curves if c.kind == "line" and c.split == "test"]
    assert [c.label for c in lines] == ["line to aligned parent A", "line to aligned parent B"]
    model, _ = workspace.load(fused)
    parent_b = aligned_parents(workspace, fused)[1]
    distance = math.sqrt(
        sum(float((p - q).double().square().sum()) for p, q in zip(parent_b.parameters(), model.parameters()))
    )
    far = dataclasses.replace(config, perturb_high=distance, perturb_points=3)
    reached = hessian_of(workspace, fused, far).curve("line to aligned parent B", "test")

    loss_b = evaluate(parent_b, *workspace_test_sample(workspace, fused, far)).loss
    assert float(reached.loss[-1]) == pytest.approx(loss_b, rel=1e-4), "t = ‖θ_B − θ‖ reaches the aligned parent"
    plain = hessian_of(workspace, ids[0], config)
    assert not [c for c in plain.curves if c.kind == "line"], "a trained parent has no parents"


def workspace_test_sample(workspace, model_id, config):

    return sample_data(load_dataset(workspace.record(model_id).dataset).split("test"), config)


@pytest.mark.parametrize("quartic", [1.0, 4.0])
def test_the_curvature_is_fitted_on_the_central_points_where_the_loss_is_quadratic(quartic) -> None:
    """``L(t) = 0.1 + 0.3 t + t^3 + λ t^2 / 2 + κ t^4`` on the default grid: the parabola through all 21 points takes
    ``κ`` into ``2 c`` (by ``2 κ · 0.234`` here), the central window stays where that bias is under 1 %."""
    ts = np.linspace(-0.5, 0.5, 21)
    curvature = 10.0
    loss = 0.1 + 0.3 * ts + ts**3 + curvature / 2 * ts**2 + quartic * ts**4
    curve = fit_curvature(PerturbationCurve(ts, loss, np.ones_like(ts), "eigenvector 1"), expected=curvature)
    assert curve.curvature == pytest.approx(curvature, rel=0.01)
    assert abs(fitted_curvature(ts, loss) - curvature) > 0.04 * curvature, "the whole range does not"
    assert 0.1 <= curve.fit_range < 0.5, "at least the 5 central points, not all"
    assert curve.agrees is True and curve.agreeing_range is None and disagreement(curve) is None


def test_a_parabola_is_fitted_on_every_point() -> None:
    ts = np.linspace(-2.0, 1.0, 13)
    curve = fit_curvature(PerturbationCurve(ts, 3 * ts**2 - ts, np.ones_like(ts), "random 1"))
    assert curve.fit_range == 2.0 and curve.curvature == pytest.approx(6.0)
    assert curve.agrees is None and curve.agreeing_range is None, "nothing to agree with without d^T H d"


def softplus_model() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Direction]:
    """Logits ``b`` (the bias; the inputs are zero) with target 0: along the unit ``d = (-1, 1) / √2`` of the bias the
    loss is ``softplus(√2 t)``, curvature ``λ = 1/2`` at ``t = 0`` (the Hessian's top eigenvalue, ``d`` its
    eigenvector) and flattening within ``|t| ≈ 1``."""
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    data = (torch.zeros(8, 1), torch.zeros(8, dtype=torch.long))
    entries = {"weight": torch.zeros(2, 1), "bias": torch.tensor([-1.0, 1.0]) / math.sqrt(2)}
    return model.eval(), data, Direction("eigenvector 1", "eigenvector", 0, entries)


def test_a_fit_that_disagrees_with_d_h_d_is_flagged_with_a_range_on_which_it_agrees() -> None:
    model, data, direction = softplus_model()

    def curve_on(low: float, high: float, points: int) -> PerturbationCurve:
        config = HessianConfig(samples=None, perturb_low=low, perturb_high=high, perturb_points=points)
        operator = Hessian(model, data, device=CPU, config=config).operator
        (curve,) = perturbation_study(model, operator, [direction], config, {"test": data}, CPU)
        return curve

    wide = curve_on(-5.0, 5.0, 11)
    assert wide.expected == pytest.approx(0.5, rel=1e-5)
    assert wide.agrees is False and abs(wide.curvature - 0.5) > 0.1 * 0.5
    assert wide.fit_range == 2.0 and wide.agreeing_range == 1.0
    said = disagreement(wide)
    assert said.startswith("eigenvector 1 (test)") and "0.5 " in said and f"{wide.curvature:.4g}" in said
    assert "e.g. ±1." in said
    narrow = curve_on(-wide.agreeing_range, wide.agreeing_range, 21)
    assert narrow.agrees is True and narrow.curvature == pytest.approx(0.5, rel=0.1)
    assert disagreement(narrow) is None


def test_a_curve_with_no_agreeing_window_asks_for_a_smaller_range() -> None:
    ts = np.linspace(-0.5, 0.5, 21)
    loss = 5 * ts**2 + 200 * ts**4
    curve = fit_curvature(PerturbationCurve(ts, loss, np.ones_like(ts), "eigenvector 2", split="train"), 10.0)
    assert curve.agrees is False and curve.agreeing_range is None
    assert disagreement(curve).endswith(
        "No window of 3 or more of its points agrees: use a smaller perturb range than ±0.05."
    )


def test_reports_stored_before_the_fit_range_load_with_the_new_fields_unknown() -> None:
    model, data, _ = softplus_model()
    config = HessianConfig(samples=None, top_k=1, random_directions=0, batch_parts=1, iterations=4, probes=2, steps=4)
    report = hessian_report(model, data, dataclasses.replace(config, runs=1, bins=50), CPU, split="test")
    stored = json.loads(json.dumps(report.to_dict()))
    again = HessianReport.from_dict(stored)
    (curve,) = again.curves
    assert (curve.fit_range, curve.agrees, curve.agreeing_range) == (0.35, True, None)
    for entry in stored["curves"]:
        for name in ("fit_range", "agrees", "agreeing_range"):
            del entry[name]
    (old,) = HessianReport.from_dict(stored).curves
    assert (old.fit_range, old.agrees, old.agreeing_range) == (None, None, None)
    assert old.curvature == curve.curvature and disagreement(old) is None


def test_the_hessian_command_tells_where_each_curve_was_fitted_and_whether_it_agrees(workspace, capsys) -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(4,))
    digits = load_dataset("digits")
    record = workspace.save(
        build_model(spec, seed=0), spec=spec, dataset="digits", normalization=digits.normalization, seed=0
    )
    options = ["--samples", "60", "--top-k", "1", "--iterations", "10", "--probes", "2", "--runs", "1"]
    options += ["--steps", "4", "--random-directions", "1", "--batch-parts", "1"]
    status = main(["hessian", record.id, "--workspace", str(workspace.root), "--json", "--quiet", *options])
    assert status == 0
    curves = json.loads(capsys.readouterr().out)["curves"]
    assert {c["direction"] for c in curves} == {"eigenvector 1", "random 1"}
    stored = {(c.label, c.split): c for c in stored_hessian(workspace, record.id).curves}
    for entry in curves:
        curve = stored[entry["direction"], entry["split"]]
        assert entry["fit_range"] == curve.fit_range and 0.1 <= entry["fit_range"] <= 0.5
        assert (entry["agrees"], entry["agreeing_range"]) == (curve.agrees, curve.agreeing_range)
        assert entry["fitted_curvature"] == curve.curvature and entry["d_H_d"] == curve.expected


def test_the_perturbation_examples_run() -> None:
    assert doctest.testmod(analysis.perturbation).failed == 0
