"""Plotly figure builders: pure functions from analysis results to ``go.Figure`` (tested without a browser).

Every page draws models in the colour of their *role* (:func:`model_colour`), so parent A is the same blue on every
figure of the app. Losses are mean cross-entropies in nats, accuracies in percent, Hessian eigenvalues in nats per
squared parameter unit.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.curvature.slq import EigenvalueDensity
from analysis.hessian_spectrum import LayerHessian, TopEigenvalues
from analysis.landscape import GridMetrics, InterpolationResult, PlaneResult, RandomDirectionsResult
from analysis.perturbation import STEP_UNITS, EigenPlane, PerturbationCurve, curve_kind
from fusion.errors import ConfigError

PARENT_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#8C6D31", "#332288", "#44AA99")
"""Parents A, B, C... (Okabe & Ito's colour-blind-safe palette first); the cycle repeats after H."""

ROLE_COLOURS = {
    "fused": "#D55E00",
    "ensemble": "#6A3D9A",
    "pruned": "#7F7F7F",
    "fine-tuned": "#882255",
}
OTHER_COLOURS = ("#117733", "#999933", "#AA4499", "#661100", "#6699CC", "#888888")
SPLIT_DASH = {"train": "solid", "test": "dash"}
LOSS_TITLE = "cross-entropy (nats)"
ACCURACY_TITLE = "accuracy (%)"
EIGENVALUE_TITLE = "eigenvalue λ (nats / parameter²)"


def model_colour(role: str) -> str:
    """The colour of a model role, the same on every page.

    ``"parent A"``, ``"parent B"``, ... (any letter) take the parent palette in order; ``"fused"``, ``"ensemble"``,
    ``"pruned"`` and ``"fine-tuned"`` have fixed colours; any other role gets a stable colour from its name. A label
    ``"role · name"`` (a role with the model's name) takes its role's colour.
    """
    key = role.split(" · ")[0].strip().lower()
    if key.startswith("parent ") and len(key) == 8 and key[-1] in string.ascii_lowercase:
        return PARENT_COLOURS[string.ascii_lowercase.index(key[-1]) % len(PARENT_COLOURS)]
    if key in ROLE_COLOURS:
        return ROLE_COLOURS[key]
    return OTHER_COLOURS[zlib.crc32(key.encode()) % len(OTHER_COLOURS)]


PLOT_HEIGHT = 380
"""Height (px) of a chart's plot area: the figure's height is this plus its margins, so a legend never takes it."""
TOP_MARGIN = 90
"""Room (px) above the plot area for the title and the subplot titles."""
AXIS_MARGIN = 70
"""Room (px) below the plot area for the x tick labels and the x axis title, above the legend."""
CHART_WIDTH = 560
"""Width (px) of the narrowest chart of the app (a 1,000 px window less the sidebar), for which legends are laid out."""
SIDE_MARGINS = {"l": 80, "r": 40}
"""Left room for the y axis title and tick labels; right room for the last tick label (legends are not beside)."""
LEGEND_ROW = 22
CHARACTER_WIDTH = 7
SYMBOL_WIDTH = 40
ENTRY_GAP = 5
"""A legend entry's width: about ``CHARACTER_WIDTH`` px per character of its name (plotly's 12 px font),
``SYMBOL_WIDTH`` px for its symbol, and ``ENTRY_GAP`` px to the next entry."""


def legend_names(figure: go.Figure) -> list[str]:
    """The names of the entries ``figure``'s legend shows (heatmaps and contours have none unless asked)."""
    shown = []
    for trace in figure.data:
        default = trace.type not in ("heatmap", "contour", "surface")
        if trace.showlegend if trace.showlegend is not None else default:
            shown.append(trace.name or "")
    return shown


def legend_rows(names: Sequence[str], width: int = CHART_WIDTH - sum(SIDE_MARGINS.values())) -> int:
    """How many rows a horizontal legend of ``names`` fills in ``width`` px (the plot area's), as plotly lays it
    out: one row if every entry fits; otherwise columns as wide as the widest entry, as many as fit in a row."""
    if not names:
        return 1
    entries = [SYMBOL_WIDTH + CHARACTER_WIDTH * len(name) + ENTRY_GAP for name in names]
    if sum(entries) < width:
        return 1
    columns = max(1, width // max(entries))
    return -(-len(names) // columns)


def legend_below(figure: go.Figure, plot_height: int = PLOT_HEIGHT) -> go.Figure:
    """Put ``figure``'s legend below the plot area, horizontal and wrapping, with the bottom margin and the height
    grown by its rows, so every entry shows at any width from 1,000 px (plotly cuts or scrolls a legend that is
    taller than its plot area, the place of a vertical legend). ``figure`` is changed and returned."""
    title = figure.layout.legend.title.text
    legend = LEGEND_ROW * legend_rows(([title] if title else []) + legend_names(figure)) + 10
    figure.update_layout(
        height=TOP_MARGIN + plot_height + AXIS_MARGIN + legend,
        margin={"t": TOP_MARGIN, "b": AXIS_MARGIN + legend, **SIDE_MARGINS},
        legend={
            "orientation": "h",
            "traceorder": "normal",
            "x": 0,
            "xanchor": "left",
            "y": -AXIS_MARGIN / plot_height,
            "yanchor": "top",
            "maxheight": 1,
        },
    )
    return figure


PAIR_SPACING = 0.16
"""Gap between two plots side by side, as a fraction of the width: the right plot's tick labels and y axis title."""


def pair_figure(x_title: str, titles: tuple[str, str] = ("loss", "accuracy")) -> go.Figure:
    """Two plots side by side (loss and accuracy by default) under one x axis title centred below both: a title under
    each plot runs into its neighbour's in a 1,000 px window."""
    return make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=PAIR_SPACING, x_title=x_title)


MAP_HEIGHT = 500
"""Height (px) of the plot area of a contour map: taller than a line chart, and the map spans the page's width."""


def full_width_map(figure: go.Figure) -> go.Figure:
    """Size a contour map to ``MAP_HEIGHT`` and leave its width to the page. Maps keep their axes free (no
    ``scaleanchor``): axes locked to equal scale shrink a map to a square of its height in a wide column."""
    figure.update_layout(height=TOP_MARGIN + MAP_HEIGHT + AXIS_MARGIN, margin={"t": TOP_MARGIN, "b": AXIS_MARGIN})
    return figure


DENSITY_DECADES = 7
"""Decades below the highest density that the log axis of the eigenvalue density shows."""


def positive_floor(values: np.ndarray, peak: float) -> np.ndarray:
    """``values`` raised to ``10^-DENSITY_DECADES`` of ``peak``, the bottom of the density's log axis."""
    return np.maximum(np.asarray(values, dtype=float), max(peak, 1e-300) * 10.0**-DENSITY_DECADES)


def eigenvalue_density_figure(
    densities: Mapping[str, EigenvalueDensity], tops: Mapping[str, TopEigenvalues] | None = None
) -> go.Figure:
    """The SLQ eigenvalue density of each model (by role) on a log density axis, with ±1 spread over runs shaded
    and the top eigenvalues marked as diamonds on the curve. The axis spans ``DENSITY_DECADES`` decades below the
    highest density; lower values (the gaps between separated eigenvalues) sit on its floor."""
    figure = go.Figure()
    peak = max((float(np.nanmax(d.density + d.spread)) for d in densities.values()), default=1.0)
    for role, density in densities.items():
        colour = model_colour(role)
        upper = positive_floor(density.density + density.spread, peak)
        lower = positive_floor(np.maximum(density.density - density.spread, 0), peak)
        figure.add_trace(
            go.Scatter(
                x=np.concatenate([density.grid, density.grid[::-1]]),
                y=np.concatenate([upper, lower[::-1]]),
                fill="toself",
                fillcolor=colour,
                opacity=0.2,
                line={"width": 0},
                hoverinfo="skip",
                name=f"{role} spread over runs",
                showlegend=False,
            )
        )
        figure.add_trace(
            go.Scatter(
                x=density.grid,
                y=positive_floor(density.density, peak),
                mode="lines",
                line={"color": colour},
                name=role,
                hovertemplate="λ = %{x:.4g}<br>density = %{y:.3g}<extra>" + role + "</extra>",
            )
        )
        if tops and role in tops:
            values = tops[role].eigenvalues
            figure.add_trace(
                go.Scatter(
                    x=values,
                    y=np.interp(values, density.grid, positive_floor(density.density, peak)),
                    mode="markers",
                    marker={"symbol": "diamond", "size": 10, "color": colour, "line": {"width": 1, "color": "black"}},
                    name=f"{role} top eigenvalues",
                    text=[f"λ{i + 1}" for i in range(len(values))],
                    hovertemplate="%{text} = %{x:.5g}<extra>" + role + "</extra>",
                )
            )
    figure.update_layout(title="Hessian eigenvalue density (stochastic Lanczos quadrature)", hovermode="closest")
    figure.update_xaxes(title_text=EIGENVALUE_TITLE)
    figure.update_yaxes(
        title_text="density (1 / λ), log scale",
        type="log",
        range=[np.log10(max(peak, 1e-300)) - DENSITY_DECADES, np.log10(max(peak, 1e-300)) + 0.3],
    )
    return legend_below(figure)


def top_eigenvalues_figure(tops: Mapping[str, TopEigenvalues]) -> go.Figure:
    """Grouped bars of the top-k Hessian eigenvalues per model, hover showing value and residual."""
    figure = go.Figure()
    for role, top in tops.items():
        labels = [f"λ{i + 1}" for i in range(len(top.eigenvalues))]
        figure.add_trace(
            go.Bar(
                x=labels,
                y=top.eigenvalues,
                name=role,
                marker_color=model_colour(role),
                customdata=np.stack([top.residuals], axis=1),
                hovertemplate="%{x} = %{y:.5g}<br>residual ‖Hv − λv‖ ≈ %{customdata[0]:.2g}<extra>" + role + "</extra>",
            )
        )
    figure.update_layout(title="Top Hessian eigenvalues", barmode="group")
    figure.update_xaxes(title_text="eigenvalue rank")
    figure.update_yaxes(title_text=EIGENVALUE_TITLE)
    return legend_below(figure)


def layer_hessian_figure(layers: Mapping[str, Sequence[LayerHessian]]) -> go.Figure:
    """Per layer (in model order) the top eigenvalue and the trace (± its error bar) of the layer's diagonal Hessian
    block, grouped bars per model (by role)."""
    figure = pair_figure("layer", ("λ1 of the block", "trace of the block"))
    for role, blocks in layers.items():
        names = [block.layer for block in blocks]
        colour = model_colour(role)
        figure.add_trace(
            go.Bar(
                x=names,
                y=[block.top_eigenvalue for block in blocks],
                name=role,
                legendgroup=role,
                marker_color=colour,
                hovertemplate="%{x}<br>λ1 = %{y:.5g}<extra>" + role + "</extra>",
            ),
            row=1,
            col=1,
        )
        figure.add_trace(
            go.Bar(
                x=names,
                y=[block.trace for block in blocks],
                name=role,
                legendgroup=role,
                showlegend=False,
                marker_color=colour,
                error_y={"type": "data", "array": [block.trace_error for block in blocks]},
                hovertemplate="%{x}<br>trace = %{y:.5g}<extra>" + role + "</extra>",
            ),
            row=1,
            col=2,
        )
    figure.update_layout(title="Per-layer Hessian blocks (other layers held fixed)", barmode="group")
    figure.update_yaxes(title_text=EIGENVALUE_TITLE, row=1, col=1)
    figure.update_yaxes(title_text="trace (nats / parameter²)", row=1, col=2)
    return legend_below(figure)


def perturbation_figure(curves: Mapping[str, Sequence[PerturbationCurve]], split: str | None = None) -> go.Figure:
    """Loss and accuracy along ``θ + t d`` per model (colour = role) on ``split`` (every split when ``None``; curves
    stored without one always): each eigenvector's curve (dash by index), the band between the lowest and highest
    random filter-normalised curve with their mean dotted, and lines to other models long-dashed. The axis names the
    step scale (:data:`analysis.perturbation.STEP_UNITS`)."""
    shown = {
        role: [c for c in role_curves if split is None or c.split in (split, None)]
        for role, role_curves in curves.items()
    }
    scales = {c.scale for chosen in shown.values() for c in chosen}
    unit = STEP_UNITS.get(next(iter(scales)) or "", "t") if len(scales) == 1 else "t (mixed step scales)"
    figure = pair_figure(unit)
    dashes = ("solid", "dash", "dot", "dashdot", "longdashdot")
    for role, chosen in shown.items():
        colour = model_colour(role)
        random = [c for c in chosen if curve_kind(c) == "random"]
        for curve in (c for c in chosen if curve_kind(c) != "random"):
            line = curve_kind(curve) == "line"
            style = {"color": colour, "dash": "longdash" if line else dashes[(curve.index or 0) % len(dashes)]}
            suffix = f" ({curve.split})" if split is None and curve.split else ""
            add_metric_lines(figure, curve.ts, curve.loss, curve.accuracy, f"{role} · {curve.label}{suffix}", style)
        if random:
            add_random_band(figure, role, colour, random)
    figure.update_layout(title="Loss along θ + t·d" + (f" · {split} data" if split else ""))
    figure.update_yaxes(title_text=LOSS_TITLE, row=1, col=1)
    figure.update_yaxes(title_text=ACCURACY_TITLE, row=1, col=2)
    return legend_below(figure)


def eigen_plane_figure(plane: EigenPlane, split: str, metric: str = "loss", label: str = "model") -> go.Figure:
    """A contour of the loss (or accuracy, %) on ``split`` over the plane of the top two eigenvectors, the model at
    the origin; the axes name the step scale."""
    values = plane.loss[split] if metric == "loss" else 100 * plane.accuracy[split]
    title = LOSS_TITLE if metric == "loss" else ACCURACY_TITLE
    figure = go.Figure(
        go.Contour(
            x=plane.ts,
            y=plane.ts,
            z=values,
            colorscale="Viridis",
            colorbar={"title": {"text": title, "side": "right"}},
            hovertemplate="α = %{x:.4g}<br>β = %{y:.4g}<br>%{z:.4f}<extra></extra>",
            name=f"{label} · {split} {metric}",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[0.0],
            y=[0.0],
            mode="markers+text",
            text=[label],
            textposition="top center",
            name=label,
            showlegend=False,
            marker={"size": 13, "color": model_colour(label), "line": {"width": 1.5, "color": "white"}},
        )
    )
    unit = STEP_UNITS.get(plane.scale, "t")
    figure.update_layout(title=f"{split} {metric} around {label} in the plane of the top two Hessian eigenvectors")
    figure.update_xaxes(title_text=f"α along eigenvector 1 · {unit}")
    figure.update_yaxes(title_text=f"β along eigenvector 2 · {unit}")
    return full_width_map(figure)


def add_metric_lines(
    figure: go.Figure,
    x: np.ndarray,
    loss: np.ndarray,
    accuracy: np.ndarray,
    name: str,
    style: dict,
    x_label: str = "t = %{x:.4g}",
) -> None:
    """One curve's loss in column 1 and accuracy (%) in column 2 of a 1x2 subplot figure, one legend entry."""
    for col, values, label in (
        (1, loss, "loss = %{y:.4f} nats"),
        (2, 100 * np.asarray(accuracy), "accuracy = %{y:.2f}%"),
    ):
        figure.add_trace(
            go.Scatter(
                x=x,
                y=values,
                mode="lines+markers",
                line=style,
                name=name,
                legendgroup=name,
                showlegend=col == 1,
                hovertemplate=x_label + "<br>" + label + "<extra>" + name + "</extra>",
            ),
            row=1,
            col=col,
        )


def add_random_band(figure: go.Figure, role: str, colour: str, curves: Sequence[PerturbationCurve]) -> None:
    """The band from the lowest to the highest of ``curves`` at each ``t``, and their mean dotted."""
    name = f"{role} · random directions ({len(curves)})"
    ts = curves[0].ts
    for col, values in ((1, np.stack([c.loss for c in curves])), (2, 100 * np.stack([c.accuracy for c in curves]))):
        low, high = values.min(0), values.max(0)
        figure.add_trace(
            go.Scatter(
                x=np.concatenate([ts, ts[::-1]]),
                y=np.concatenate([high, low[::-1]]),
                fill="toself",
                fillcolor=colour,
                opacity=0.2,
                line={"width": 0},
                name=name,
                legendgroup=name,
                showlegend=col == 1,
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        figure.add_trace(
            go.Scatter(
                x=ts,
                y=values.mean(0),
                mode="lines",
                line={"color": colour, "dash": "dot", "width": 1},
                name=name,
                legendgroup=name,
                showlegend=False,
                hovertemplate="t = %{x:.4g}<br>mean %{y:.4f}<extra>" + name + "</extra>",
            ),
            row=1,
            col=col,
        )


def split_lines(figure: go.Figure, x: np.ndarray, metrics: GridMetrics, colour: str, name: str, x_label: str) -> None:
    """Train (solid) and test (dashed) loss in column 1 and accuracy in column 2 of a 1x2 subplot figure."""
    for split in ("train", "test"):
        loss, accuracy = getattr(metrics, f"{split}_loss"), getattr(metrics, f"{split}_accuracy")
        style = {"color": colour, "dash": SPLIT_DASH[split]}
        add_metric_lines(figure, x, loss, accuracy, f"{name} · {split}", style, x_label + " = %{x:.3f}")


def interpolation_figure(results: Mapping[str, InterpolationResult]) -> go.Figure:
    """Train and test loss and accuracy along ``(1 - t) θ_A + t θ_B`` for each named interpolation (e.g. "A → B" and
    "A → B aligned"), the endpoints marked in their roles' colours and the barriers in the legend."""
    figure = pair_figure("interpolation weight t (0 = first model, 1 = second)")
    marked: set[str] = set()
    for index, (name, result) in enumerate(results.items()):
        colour = OTHER_COLOURS[index % len(OTHER_COLOURS)] if len(results) > 1 else "#444444"
        label = f"{name} (barrier {result.test_barrier:.3f} test, {result.train_barrier:.3f} train)"
        split_lines(figure, result.ts, result.metrics, colour, label, "t")
        for end, role in ((0, result.labels[0]), (-1, result.labels[1])):
            figure.add_trace(
                go.Scatter(
                    x=[result.ts[end]],
                    y=[result.metrics.test_loss[end]],
                    mode="markers",
                    name=role,
                    legendgroup=role,
                    showlegend=role not in marked,
                    marker={"size": 12, "color": model_colour(role), "symbol": "circle"},
                    hovertemplate=role + "<br>test loss = %{y:.4f} nats<extra></extra>",
                ),
                row=1,
                col=1,
            )
            marked.add(role)
    figure.update_layout(title="Linear interpolation between two models")
    figure.update_yaxes(title_text=LOSS_TITLE, row=1, col=1)
    figure.update_yaxes(title_text=ACCURACY_TITLE, row=1, col=2)
    return legend_below(figure)


def metric_values(metrics: GridMetrics, metric: str) -> tuple[np.ndarray, str]:
    if metric not in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        raise ConfigError(f"metric must be train_loss, train_accuracy, test_loss or test_accuracy, got {metric!r}")
    values = getattr(metrics, metric)
    if metric.endswith("accuracy"):
        return 100 * values, f"{metric.split('_')[0]} {ACCURACY_TITLE}"
    return values, f"{metric.split('_')[0]} {LOSS_TITLE}"


def plane_figure(result: PlaneResult, metric: str = "test_loss") -> go.Figure:
    """A contour map of ``metric`` over the plane through three models, each marked in its role's colour, as wide as
    the page (so x and y are drawn to different scales; the hover gives the coordinates)."""
    values, title = metric_values(result.metrics, metric)
    figure = go.Figure(
        go.Contour(
            x=result.x,
            y=result.y,
            z=values,
            colorscale="Viridis",
            colorbar={"title": {"text": title, "side": "right"}},
            hovertemplate="x = %{x:.3f}<br>y = %{y:.3f}<br>" + title + " = %{z:.4f}<extra></extra>",
            name=title,
        )
    )
    for (x, y), role in zip(result.coordinates, result.labels):
        figure.add_trace(
            go.Scatter(
                x=[x],
                y=[y],
                mode="markers+text",
                text=[role],
                textposition="top center",
                name=role,
                showlegend=False,
                marker={"size": 13, "color": model_colour(role), "line": {"width": 1.5, "color": "white"}},
                hovertemplate=role + "<br>x = %{x:.3f}, y = %{y:.3f}<extra></extra>",
            )
        )
    figure.update_layout(title=f"Plane through three models: {title}")
    figure.update_xaxes(title_text="x along θ_B − θ_A (parameter distance)")
    figure.update_yaxes(title_text="y ⟂ x, towards θ_C (parameter distance)")
    return full_width_map(figure)


def random_directions_figure(
    result: RandomDirectionsResult, metric: str = "test_loss", name: str | None = None
) -> go.Figure:
    """One direction: train/test loss and accuracy against ``α``; two directions: a contour of ``metric`` over
    ``(α, β)`` with the model at the origin. The model is called ``name`` (its name in the workspace; the stored
    label by default) and drawn in the colour of the stored label, its role."""
    name = name or result.label
    colour = model_colour(result.label)
    axis = "α along filter-normalised direction 1"
    title = f"Loss around {name}<br><sup>random filter-normalised directions (Li et al. 2018)</sup>"
    if result.dims == 1:
        figure = pair_figure(axis)
        split_lines(figure, result.alphas, result.metrics, colour, name, "α")
        figure.update_yaxes(title_text=LOSS_TITLE, row=1, col=1)
        figure.update_yaxes(title_text=ACCURACY_TITLE, row=1, col=2)
        figure.update_layout(title=title)
        return legend_below(figure)
    values, metric_title = metric_values(result.metrics, metric)
    figure = go.Figure(
        go.Contour(
            x=result.alphas,
            y=result.alphas,
            z=values,
            colorscale="Viridis",
            colorbar={"title": {"text": metric_title, "side": "right"}},
            hovertemplate="α = %{x:.3f}<br>β = %{y:.3f}<br>" + metric_title + " = %{z:.4f}<extra></extra>",
            name=metric_title,
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[0.0],
            y=[0.0],
            mode="markers+text",
            text=[name],
            textposition="top center",
            name=name,
            showlegend=False,
            marker={"size": 13, "color": colour, "line": {"width": 1.5, "color": "white"}},
            hovertemplate=name + "<extra></extra>",
        )
    )
    figure.update_layout(title=title)
    figure.update_xaxes(title_text=axis)
    figure.update_yaxes(title_text="β along filter-normalised direction 2")
    return full_width_map(figure)


def figure_rows(figure: go.Figure) -> list[dict[str, Any]]:
    """The data a figure shows, one row per point: the trace's number, name and type, its y axis (title, or id), ``x``,
    ``y`` (and ``z`` for heatmaps and surfaces, one row per cell). Fill-only traces (a band's outline) are given as
    their points too. NaN becomes ``None``. This is what the CSV and JSON downloads of a chart hold."""
    rows = []
    for index, trace in enumerate(figure.data):
        name = trace.name or f"trace {index + 1}"
        axis = getattr(trace, "yaxis", None) or "y"
        title = figure.layout[f"yaxis{axis[1:]}"].title.text if hasattr(figure.layout, f"yaxis{axis[1:]}") else None
        base = {"series": index + 1, "trace": name, "type": trace.type, "axis": title or axis}
        z = getattr(trace, "z", None)
        if z is not None:
            grid = np.asarray(z, dtype=float)
            xs = trace.x if trace.x is not None else range(grid.shape[-1])
            ys = trace.y if trace.y is not None else range(grid.shape[0])
            for i, y in enumerate(ys):
                for j, x in enumerate(xs):
                    rows.append({**base, "x": plain(x), "y": plain(y), "z": plain(grid[i, j])})
            continue
        xs = list(trace.x) if trace.x is not None else []
        ys = list(trace.y) if trace.y is not None else []
        for x, y in zip(xs, ys):
            rows.append({**base, "x": plain(x), "y": plain(y)})
    return rows


def plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy numbers as Python numbers, NaN and infinities as ``None``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
