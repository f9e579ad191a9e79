"""Figure builders return plotly figures with the expected traces, axis titles and role colours."""

from __future__ import annotations

import doctest

import numpy as np
import plotly.graph_objects as go
import pytest

import analysis.units
from analysis.curvature.hessian import ParameterSpace
from analysis.curvature.slq import EigenvalueDensity
from analysis.figures import (
    eigenvalue_density_figure,
    interpolation_figure,
    layer_hessian_figure,
    model_colour,
    perturbation_figure,
    plane_figure,
    random_directions_figure,
    top_eigenvalues_figure,
)
from analysis.hessian_spectrum import LayerHessian, TopEigenvalues
from analysis.landscape import GridMetrics, InterpolationResult, PlaneResult, RandomDirectionsResult
from analysis.perturbation import PerturbationCurve
from fusion.errors import ConfigError
from fusion.models import default_spec
from fusion.workspace import ModelRecord
from studies.runs import model_roles
from studies.sharpness import Sharpness

ROLES = ["parent A", "parent B", "parent C", "fused", "ensemble", "pruned", "fine-tuned"]


def grid_metrics(*shape: int) -> GridMetrics:
    rng = np.random.default_rng(0)
    return GridMetrics(rng.random(shape), rng.random(shape), rng.random(shape), rng.random(shape))


def density() -> EigenvalueDensity:
    grid = np.linspace(-1, 10, 200)
    values = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    return EigenvalueDensity(grid, values, 0.1 * values, 0.1, (np.array([0.0, 9.0]),), (np.array([0.9, 0.1]),), 1.0)


def top() -> TopEigenvalues:
    return TopEigenvalues(
        np.array([9.0, 4.0, 1.0]), np.array([1e-4, 1e-4, 1e-3]), None, ParameterSpace(("w",), ((3,),)), 12, True, 0.5
    )


def shared_x_title(figure: go.Figure) -> str:
    """The x axis title of plots side by side, centred below both (the one annotation below the plots)."""
    (title,) = [a.text for a in figure.layout.annotations if a.y == 0 and a.yanchor == "top"]
    return title


def test_every_role_has_its_own_stable_colour() -> None:
    colours = [model_colour(role) for role in ROLES]
    assert len(set(colours)) == len(colours)
    assert model_colour("Parent A ") == model_colour("parent A")
    assert model_colour("my model") == model_colour("my model")
    assert all(c.startswith("#") and len(c) == 7 for c in colours + [model_colour("parent Z"), model_colour("other")])


def test_density_figure_uses_a_log_axis_and_marks_the_top_eigenvalues() -> None:
    figure = eigenvalue_density_figure({"parent A": density(), "fused": density()}, {"fused": top()})
    assert isinstance(figure, go.Figure)
    assert figure.layout.yaxis.type == "log"
    assert "eigenvalue" in figure.layout.xaxis.title.text and "nats" in figure.layout.xaxis.title.text
    lines = [t for t in figure.data if t.mode == "lines"]
    assert [t.name for t in lines] == ["parent A", "fused"]
    assert lines[1].line.color == model_colour("fused")
    (markers,) = [t for t in figure.data if t.mode == "markers"]
    np.testing.assert_allclose(markers.x, [9.0, 4.0, 1.0])
    assert np.all(np.asarray(markers.y) > 0) and np.all(np.asarray(lines[0].y) > 0)


def test_density_axis_spans_seven_decades_below_the_highest_density() -> None:
    figure = eigenvalue_density_figure({"parent A": density()})
    peak = float(np.max(density().density + density().spread))
    low, high = figure.layout.yaxis.range
    assert low == pytest.approx(np.log10(peak) - 7) and high > np.log10(peak)
    line = next(t for t in figure.data if t.mode == "lines")
    assert min(line.y) == pytest.approx(peak * 1e-7), "values far below the peak sit on the axis floor"


def test_interpolation_figure_lists_every_end_model_once() -> None:
    ts = np.linspace(0, 1, 5)
    figure = interpolation_figure(
        {
            "A → B": InterpolationResult(ts, grid_metrics(5), 0.3, 0.4, False, ("parent A", "parent B")),
            "A → fused": InterpolationResult(ts, grid_metrics(5), 0.0, 0.1, False, ("parent A", "fused")),
        }
    )
    shown = [t.name for t in figure.data if t.mode == "markers" and t.showlegend is not False]
    assert shown == ["parent A", "parent B", "fused"]


def test_layer_figure_has_eigenvalue_and_trace_bars_per_model_with_error_bars() -> None:
    blocks = [
        LayerHessian("layers.1", ("layers.1.weight",), 3.0, 10.0, 0.5),
        LayerHessian("layers.3", ("layers.3.weight",), 1.0, 4.0, 0.2),
    ]
    figure = layer_hessian_figure({"parent A": blocks, "fused": blocks[:1]})
    assert [t.type for t in figure.data] == ["bar"] * 4
    assert list(figure.data[0].x) == ["layers.1", "layers.3"] and list(figure.data[1].error_y.array) == [0.5, 0.2]
    assert figure.data[2].marker.color == model_colour("fused")


def test_top_eigenvalue_figure_has_one_bar_trace_per_model() -> None:
    figure = top_eigenvalues_figure({"parent A": top(), "parent B": top()})
    assert [t.type for t in figure.data] == ["bar", "bar"]
    assert list(figure.data[0].x) == ["λ1", "λ2", "λ3"]
    assert figure.data[1].marker.color == model_colour("parent B")
    assert "eigenvalue" in figure.layout.yaxis.title.text


def test_perturbation_figure_overlays_models_and_directions() -> None:
    ts = np.linspace(-0.5, 0.5, 21)
    curves = [
        PerturbationCurve(ts, ts**2, 1 - ts**2, "eigenvector 1", "test", "eigenvector", 0, "relative"),
        PerturbationCurve(ts, 2 * ts**2, 1 - ts**2, "eigenvector 2", "test", "eigenvector", 1, "relative"),
        PerturbationCurve(ts, ts**4, 1 - ts**4, "random 1", "test", "random", 0, "relative"),
        PerturbationCurve(ts, 3 * ts**4, 1 - ts**4, "random 2", "test", "random", 1, "relative"),
        PerturbationCurve(ts, ts**2, 1 - ts**2, "eigenvector 1", "train", "eigenvector", 0, "relative"),
    ]
    figure = perturbation_figure({"parent A": curves, "fused": curves[:1]}, split="test")
    names = [t.name for t in figure.data]
    assert names.count("parent A · eigenvector 1") == 2 and "parent A · random directions (2)" in names
    assert len(figure.data) == 2 * 2 + 4 + 2, "two eigenvector curves, a band with its mean, the fused curve"
    band = next(t for t in figure.data if t.fill == "toself")
    assert list(band.y[:21]) == pytest.approx(list(3 * ts**4)) and list(band.y[21:]) == pytest.approx(
        list(ts[::-1] ** 4)
    )
    assert figure.data[2].line.dash == "dash" and figure.data[-1].line.color == model_colour("fused")
    assert "‖Δθ‖ / ‖θ‖" in shared_x_title(figure)
    assert (
        figure.layout.yaxis.title.text == "cross-entropy (nats)" and figure.layout.yaxis2.title.text == "accuracy (%)"
    )
    old = [PerturbationCurve(ts, ts**2, 1 - ts**2, "top eigenvector"), PerturbationCurve(ts, ts, ts, "random filter")]
    assert [t.fill for t in perturbation_figure({"fused": old}, split="test").data].count("toself") == 2


def test_interpolation_figure_shows_train_and_test_and_the_endpoints() -> None:
    ts = np.linspace(0, 1, 5)
    result = InterpolationResult(ts, grid_metrics(5), 0.3, 0.4, False, ("parent A", "parent B"))
    figure = interpolation_figure({"A → B": result, "A → B aligned": result})
    names = [t.name for t in figure.data]
    assert any("train" in n for n in names) and any("test" in n for n in names)
    assert any("barrier 0.400" in n for n in names)
    endpoint = next(t for t in figure.data if t.name == "parent B")
    assert endpoint.marker.color == model_colour("parent B")
    assert "interpolation weight t" in shared_x_title(figure)


def test_plane_figure_is_a_contour_with_the_three_models() -> None:
    result = PlaneResult(
        np.linspace(-1, 2, 4),
        np.linspace(-1, 2, 3),
        grid_metrics(3, 4),
        ((0, 0), (1, 0), (0.5, 1)),
        ("parent A", "parent B", "fused"),
        False,
    )
    figure = plane_figure(result, "test_accuracy")
    assert figure.data[0].type == "contour"
    np.testing.assert_allclose(figure.data[0].z, 100 * result.metrics.test_accuracy)
    assert [t.text[0] for t in figure.data[1:]] == ["parent A", "parent B", "fused"]
    assert figure.data[3].marker.color == model_colour("fused") and figure.data[3].showlegend is False
    assert "θ_B − θ_A" in figure.layout.xaxis.title.text
    with pytest.raises(ConfigError, match="metric"):
        plane_figure(result, "loss")


def test_random_direction_figures_in_one_and_two_dimensions() -> None:
    alphas = np.linspace(-1, 1, 5)
    one = random_directions_figure(RandomDirectionsResult(alphas, 1, grid_metrics(5), 0, "fused"))
    assert len(one.data) == 4 and one.layout.yaxis.title.text == "cross-entropy (nats)"
    assert "filter-normalised" in shared_x_title(one)
    two = random_directions_figure(RandomDirectionsResult(alphas, 2, grid_metrics(5, 5), 0, "fused"))
    assert two.data[0].type == "contour" and two.data[1].x == (0.0,)
    assert "β" in two.layout.yaxis.title.text


def test_accuracy_bars_start_at_zero_so_their_height_is_the_accuracy():
    from analysis.fusion_figures import finetune_comparison_figure
    from studies.figures import comparison_figure
    from studies.scores import Score

    rows = [Score("a", "parent A", "a", 0.98, 0.1, 100), Score("v", "average", None, 0.52, 1.5, 100)]
    grouped = [{"method": "average", "test_accuracy": 0.52, "finetuned_accuracy": 0.97}]
    for figure in (comparison_figure(rows), finetune_comparison_figure(grouped, [("best parent", "parent A", 0.98)])):
        low, high = figure.layout.yaxis.range
        assert low == 0 and high >= 100


def test_transport_plan_colour_bar_sits_in_the_gap_clear_of_the_cost_matrix() -> None:
    from analysis.fusion_figures import transport_map_figure
    from analysis.maps import GroupMap

    rng = np.random.default_rng(0)
    figure = transport_map_figure(GroupMap(1, "fc1", np.eye(6) / 6, rng.random((6, 6))))
    plan, cost = figure.data
    plan_end = figure.layout.xaxis.domain[1]
    cost_start = figure.layout.xaxis2.domain[0]
    colour_bar_room = 0.1
    assert plan_end <= plan.colorbar.x and plan.colorbar.x + colour_bar_room <= cost_start
    assert figure.layout.yaxis2.title.text is None and figure.layout.yaxis2.showticklabels is False


def test_compare_reference_lines_are_labelled_in_the_legend_not_over_the_bars() -> None:
    from analysis.fusion_figures import finetune_comparison_figure

    rows = [{"method": "ot", "test_accuracy": 0.8, "finetuned_accuracy": 0.93}]
    figure = finetune_comparison_figure(rows, [("best parent", "parent B", 0.93), ("ensemble", "ensemble", 0.95)])
    assert not figure.layout.annotations
    legend = [trace.name for trace in figure.data if isinstance(trace, go.Scatter)]
    assert legend == ["ensemble 95.00%", "best parent 93.00%"]
    assert [shape.y0 for shape in figure.layout.shapes] == pytest.approx([95.0, 93.0])


def test_figure_data_as_csv_and_json_parses_back_to_what_the_figure_shows() -> None:
    import io
    import json

    import pandas as pd

    from analysis.figures import figure_rows
    from analysis.rows import csv_bytes as rows_csv
    from ui.charts import rows_json

    ts = np.linspace(-0.5, 0.5, 5)
    curves = [
        PerturbationCurve(ts, ts**2, 1 - ts**2, "eigenvector 1", "test", "eigenvector", 0),
        PerturbationCurve(ts, np.array([0.1, np.nan, 0.2, 0.3, 0.4]), ts, "random 1", "test", "random", 0),
    ]
    figure = perturbation_figure({"parent A": curves}, split="test")
    heat = go.Figure(go.Heatmap(z=[[1.0, 2.0], [3.0, np.nan]], x=["a", "b"], y=[0, 1], name="plan"))
    for shown in (figure, heat):
        rows = figure_rows(shown)
        parsed = pd.read_csv(io.BytesIO(rows_csv(rows)))
        loaded = json.loads(rows_json(rows))
        assert (
            len(parsed) == len(loaded) == sum(len(t.x) * (len(t.y) if t.type == "heatmap" else 1) for t in shown.data)
        )
        for series, trace in enumerate(shown.data, start=1):
            mine = parsed[parsed["series"] == series]
            assert (mine["trace"] == trace.name).all()
            if trace.type == "heatmap":
                assert mine["z"].tolist()[:3] == [1.0, 2.0, 3.0] and pd.isna(mine["z"].tolist()[3])
                assert [r["z"] for r in loaded][3] is None
                continue
            np.testing.assert_allclose(mine["x"].to_numpy(float), np.asarray(trace.x, float))
            np.testing.assert_allclose(mine["y"].to_numpy(float), np.asarray(trace.y, float), equal_nan=True)


def test_the_units_examples_run() -> None:
    results = doctest.testmod(analysis.units)
    assert results.attempted > 0 and results.failed == 0


def sharpness(model: str, role: str, method: str, gap: float) -> Sharpness:
    return Sharpness(model, model, role, method, [5.0], [1e-4], [], 20.0, 0.5, 0.25, [None], 0.1, 0.1 + gap, gap)


def role_of(name: str) -> str | None:
    """The role a trace is drawn for: its name is the role, or starts with it (``"parent A · eigenvector 1"``)."""
    return next((r for r in sorted(ROLES, key=len, reverse=True) if name == r or name.startswith(r + " ")), None)


def drawn_colours(figure: go.Figure) -> set[tuple[str, str]]:
    """``(role, colour)`` of every trace (and of every bar of a bar trace coloured per bar) drawn for a role."""
    found = set()
    for trace in figure.data:
        marker = getattr(trace, "marker", None)
        colour = marker.color if marker is not None else None
        if isinstance(colour, tuple):
            found |= {(role, c) for role, c in zip(trace.x, colour) if role in ROLES}
            continue
        line = getattr(trace, "line", None)
        colour = colour or (line.color if line is not None else None) or getattr(trace, "fillcolor", None)
        role = role_of(trace.name or "")
        if role is not None and colour is not None:
            found.add((role, colour))
    return found


def every_role_figure() -> dict[str, go.Figure]:
    """Every figure that draws models by role, built from small fake results with the roles of :data:`ROLES`."""
    from analysis.fusion_figures import finetune_comparison_figure, neuron_norms_figure, survival_figure
    from analysis.norms import GroupNorms
    from fusion.methods.base import Survival
    from studies.figures import comparison_figure, sharpness_gap_figure
    from studies.scores import Score

    ts = np.linspace(-0.5, 0.5, 5)
    curve = PerturbationCurve(ts, ts**2, 1 - ts**2, "eigenvector 1", "test", "eigenvector", 0, "relative")
    norms = [GroupNorms("fc1", [1.0, 2.0], [0.5, 0.7])]
    bars = [Score(role, role, None, 0.9, 0.3, 100) for role in ROLES]
    plane = PlaneResult(
        np.arange(3.0), np.arange(3.0), grid_metrics(3, 3), ((0, 0), (1, 0), (0, 1)), tuple(ROLES[:3]), 0
    )
    survival = Survival("fc1", [0, 1, 2, 0], [0, 0, 0, 1], [4.0, 3.0, 2.0, 1.0], [True, True, False, False])
    ends = InterpolationResult(ts, grid_metrics(5), 0.1, 0.2, False, ("parent B", "fused"))
    on_page = {f"m{k}": role for k, role in enumerate(ROLES)}
    return {
        "density": eigenvalue_density_figure({r: density() for r in ROLES}, {r: top() for r in ROLES}),
        "top eigenvalues": top_eigenvalues_figure({r: top() for r in ROLES}),
        "layers": layer_hessian_figure({r: [LayerHessian("fc1", ("fc1.weight",), 1.0, 2.0, 0.1)] for r in ROLES}),
        "perturbation": perturbation_figure({r: [curve] for r in ROLES}, split="test"),
        "interpolation": interpolation_figure({"B → fused": ends}),
        "plane": plane_figure(plane),
        "neuron norms": neuron_norms_figure({r: norms for r in ROLES}),
        "survival": survival_figure(survival, ROLES[:3]),
        "comparison": comparison_figure(bars),
        "fine-tuning": finetune_comparison_figure(
            [{"method": "ot", "test_accuracy": 0.8, "finetuned_accuracy": 0.9}], [("ensemble", "ensemble", 0.95)]
        ),
        "sharpness": sharpness_gap_figure(
            [sharpness(m, f"parent {chr(65 + k)}", "train", 0.1 * k) for k, m in enumerate(on_page)], "λ1", on_page
        ),
    }


def test_each_role_has_one_colour_in_every_figure_that_draws_it() -> None:
    drawn = {name: drawn_colours(figure) for name, figure in every_role_figure().items()}
    for name, pairs in drawn.items():
        assert pairs, f"{name} draws no model by role"
        wrong = {(role, colour) for role, colour in pairs if colour != model_colour(role)}
        assert not wrong, f"{name} draws roles in other colours: {wrong}"
    roles = {role for pairs in drawn.values() for role, _ in pairs}
    assert roles == set(ROLES)


def test_the_workspace_sharpness_chart_marks_other_models_by_kind_not_by_method() -> None:
    from studies.figures import OTHER_MODELS_COLOUR, sharpness_gap_figure

    summaries = [
        sharpness("a", "parent A", "train", 0.1),
        sharpness("f", "fused", "ot", 0.2),
        sharpness("x", "parent C", "train", 0.3),
        sharpness("y", "fused", "average", 0.4),
    ]
    figure = sharpness_gap_figure(summaries, "λ1", {"a": "parent A", "f": "fused"})
    colours = {t.name: t.marker.color for t in figure.data}
    assert colours == {
        "parent A": model_colour("parent A"),
        "fused": model_colour("fused"),
        "other trained models": OTHER_MODELS_COLOUR,
        "other fused models": model_colour("fused"),
    }
    assert {t.name: t.marker.symbol for t in figure.data}["other fused models"] == "circle-open"


def test_two_seeds_of_a_sweep_differ_in_marker_and_colour() -> None:
    from analysis.fusion_figures import sweep_figure

    rows = [
        {"job": f"{m}-{s}", "state": "done", "method": m, "options": "", "seed": s, "test_accuracy_pct": 90.0 + s}
        for m in ("ot", "average")
        for s in (0, 1)
    ]
    first, second = sweep_figure(rows).data
    assert first.marker.symbol != second.marker.symbol and first.marker.color != second.marker.color
    assert {first.name, second.name} == {"seed 0", "seed 1"}


def test_a_long_legend_sits_below_the_plot_with_a_row_of_room_for_every_row_it_wraps_to() -> None:
    from analysis.figures import AXIS_MARGIN, LEGEND_ROW, PLOT_HEIGHT, legend_names, legend_rows

    ts = np.linspace(-0.5, 0.5, 5)
    kinds = [("eigenvector", k) for k in range(5)] + [("random", k) for k in range(2)]
    curves = [PerturbationCurve(ts, ts**2, 1 - ts**2, f"{kind} {k + 1}", "test", kind, k) for kind, k in kinds]
    figure = perturbation_figure({"parent A": curves, "parent B": curves[:4], "fused": curves}, split="test")
    names = legend_names(figure)
    assert len(names) == 5 + 1 + 4 + 5 + 1 == 16
    rows = legend_rows(names)
    assert rows >= 4, "16 entries of 20-odd characters wrap to several rows in a 560 px chart"
    legend, layout = figure.layout.legend, figure.layout
    assert legend.orientation == "h" and legend.yanchor == "top" and legend.traceorder == "normal"
    assert legend.y == pytest.approx(-AXIS_MARGIN / PLOT_HEIGHT), "the legend starts below the x axis title"
    assert layout.margin.b >= AXIS_MARGIN + rows * LEGEND_ROW
    assert layout.height - layout.margin.t - layout.margin.b == PLOT_HEIGHT, "the legend's room adds to the height"


def test_legend_rows_are_one_row_if_all_fit_else_columns_of_the_widest_entry() -> None:
    from analysis.figures import CHARACTER_WIDTH, ENTRY_GAP, SYMBOL_WIDTH, legend_rows

    def name(width: int) -> str:
        return "x" * ((width - SYMBOL_WIDTH - ENTRY_GAP) // CHARACTER_WIDTH)

    assert legend_rows([name(100)] * 4, width=420) == 1
    assert legend_rows([name(100)] * 5, width=420) == 2, "five entries of 100 px: four columns"
    assert legend_rows([name(200), name(60), name(60), name(120)], width=420) == 2, "columns as wide as the widest"
    assert legend_rows([name(500)] * 3, width=420) == 3
    assert legend_rows([], width=420) == 1


def test_stacked_overlap_heatmaps_leave_room_for_each_others_labels() -> None:
    from analysis.figures import CHARACTER_WIDTH, CHART_WIDTH
    from analysis.fusion_figures import overlap_figure
    from analysis.overlap import EigenvectorOverlap

    rng = np.random.default_rng(0)
    values = np.array([123.4, 45.6, 7.89])
    overlaps = [EigenvectorOverlap(k, rng.random((3, 3)), values, values) for k in range(2)]
    figure = overlap_figure(overlaps, ["parent A", "parent B"])
    layout = figure.layout
    plot_height = layout.height - layout.margin.t - layout.margin.b
    plot_width = CHART_WIDTH - (layout.margin.l or 80) - (layout.margin.r or 80)
    boxes = []
    for index, trace in enumerate(figure.data, start=1):
        suffix = "" if index == 1 else str(index)
        x, y = layout[f"xaxis{suffix}"].domain, layout[f"yaxis{suffix}"].domain
        label = CHARACTER_WIDTH * max(len(v) for v in trace.y)
        boxes.append((np.multiply(x, plot_width), np.multiply(y, plot_height), label))
    for (x1, y1, _), (x2, y2, label2) in [(boxes[0], boxes[1]), (boxes[1], boxes[0])]:
        side_by_side = min(y1[1], y2[1]) > max(y1[0], y2[0])
        if side_by_side and x2[0] >= x1[1]:
            assert x2[0] - x1[1] >= label2 + 20, "the right heatmap's row labels and title fit in the gap"
        if not side_by_side and y1[0] >= y2[1]:
            assert y1[0] - y2[1] >= 60, "tick labels, axis title and the next subplot title fit between the rows"


def test_maps_span_the_width_and_their_axis_titles_fit_beside_them() -> None:
    from analysis.figures import CHARACTER_WIDTH

    plane = PlaneResult(
        np.linspace(-1, 2, 4), np.linspace(-1, 2, 3), grid_metrics(3, 4), ((0, 0), (1, 0), (0.5, 1)), ROLES[:3], 0
    )
    alphas = np.linspace(-1, 1, 5)
    maps = [
        plane_figure(plane),
        random_directions_figure(RandomDirectionsResult(alphas, 2, grid_metrics(5, 5), 0, "parent A"), name="m"),
    ]
    for figure in maps:
        layout = figure.layout
        assert layout.yaxis.scaleanchor is None, "axes locked to equal scale shrink the map to a square"
        assert layout.height is not None and layout.margin.t is not None
        plot_height = layout.height - layout.margin.t - layout.margin.b
        assert CHARACTER_WIDTH * len(layout.yaxis.title.text) <= plot_height, "the y title runs into the chart title"


def test_a_random_direction_landscape_calls_its_model_by_name_in_its_roles_colour() -> None:
    alphas = np.linspace(-1, 1, 5)
    for dims, metrics in ((1, grid_metrics(5)), (2, grid_metrics(5, 5))):
        result = RandomDirectionsResult(alphas, dims, metrics, 0, "parent A")
        figure = random_directions_figure(result, name="mlp-digits-seed0")
        texts = [figure.layout.title.text] + [t.name for t in figure.data] + [str(t.text) for t in figure.data]
        assert not any("parent A" in text for text in texts)
        assert "mlp-digits-seed0" in figure.layout.title.text
        lines = [t for t in figure.data if t.type == "scatter"]
        colours = {t.line.color if t.mode == "lines+markers" else t.marker.color for t in lines}
        assert colours == {model_colour("parent A")}


def test_a_role_with_the_models_name_takes_the_roles_colour() -> None:
    assert model_colour("fused · mlp-ot") == model_colour("fused")
    assert model_colour("parent B · mlp-seed1") == model_colour("parent B")


def test_models_shown_together_take_parent_letters_among_the_parents_only():
    """Picking [parent, fused, parent] on the Hessian page made the second parent "parent C"; an ensemble was
    "fused"."""
    spec = default_spec("mlp", (1, 8, 8), 10, hidden=(8,))

    def made(method: str) -> ModelRecord:
        return ModelRecord(
            id=method,
            name=method,
            spec=spec,
            dataset="digits",
            normalization=None,
            seed=0,
            provenance={"method": method},
        )

    roles = model_roles([made("train"), made("ot"), made("import"), made("ensemble"), made("finetune")])
    assert roles == ["parent A", "fused", "parent B", "ensemble", "fine-tuned"]
