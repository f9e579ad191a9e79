"""Plotly figures of what a fusion did: transport maps, neuron norms, Neuron Transplantation's survivors, and the
comparison of fused models. Pure functions of library results; colours per model role are shared by every page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.figures import AXIS_MARGIN, OTHER_COLOURS, TOP_MARGIN, legend_below, model_colour
from analysis.maps import GroupMap, sorted_map, summarise
from analysis.norms import GroupNorms
from analysis.overlap import EigenvectorOverlap
from fusion.methods.base import Survival

ACCURACY_RANGE = [0, 105]
"""Accuracy axes start at 0, so a bar's height is its accuracy (a cut axis makes 52 % look empty)."""

PLAN_SPACING = 0.24
"""Gap between the plan and the cost matrix, as a fraction of the width: room for the plan's colour bar, which sits in
it, clear of the cost matrix (whose rows are the plan's, so it shares the plan's row axis and has no title of its
own)."""


def role_colour(role: str) -> str:
    """The colour of a model role, the same on every page (see :func:`analysis.figures.model_colour`)."""
    return model_colour(role)


def transport_map_figure(group_map: GroupMap) -> go.Figure:
    """The plan (scaled by the number of source neurons, so a permutation shows ones) with rows sorted so that a
    permutation reads as a diagonal, and the ground cost beside it in the same row order."""
    plan, cost, order = sorted_map(group_map)
    summary = summarise(group_map)
    columns = 2 if cost is not None else 1
    figure = make_subplots(
        rows=1,
        cols=columns,
        subplot_titles=("transport plan n·T (1: a whole neuron's mass)", "ground cost C")[:columns],
        horizontal_spacing=PLAN_SPACING,
        shared_yaxes=True,
    )
    rows = [str(i) for i in order]
    figure.add_trace(
        go.Heatmap(
            z=plan * plan.shape[0],
            y=rows,
            colorscale="Blues",
            zmin=0,
            colorbar={"x": (1 - PLAN_SPACING) / 2 + 0.01 if columns == 2 else 1.0, "title": "n·T", "thickness": 14},
            hovertemplate="source %{y} → target %{x}<br>n·T = %{z:.3f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    if cost is not None:
        figure.add_trace(
            go.Heatmap(
                z=cost,
                y=rows,
                colorscale="Viridis",
                colorbar={"title": "C"},
                hovertemplate="source %{y} → target %{x}<br>C = %{z:.4g}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    for col in range(1, columns + 1):
        figure.update_xaxes(title_text="reference neuron (target)", row=1, col=col)
        figure.update_yaxes(
            title_text="aligned model's neuron (source, sorted)" if col == 1 else None,
            autorange="reversed",
            type="category",
            showticklabels=col == 1 and plan.shape[0] <= 64,
            row=1,
            col=col,
        )
    moved = "" if summary.moved is None else f" · {summary.moved} moved"
    figure.update_layout(
        title=f"{group_map.group} · model {group_map.model} → reference · {summary.sources}×{summary.targets} · "
        f"distance from a permutation {summary.permutation_distance:.3f}{moved}",
        height=460,
        margin={"t": 80},
    )
    return figure


def neuron_norms_figure(norms: dict[str, list[GroupNorms]], side: str = "incoming") -> go.Figure:
    """Violins of the neuron norms of every group (x) for each model (colour by role), ``incoming`` or ``outgoing``."""
    figure = go.Figure()
    for role, groups in norms.items():
        x = [g.group for g in groups for _ in getattr(g, side)]
        y = [v for g in groups for v in getattr(g, side)]
        figure.add_trace(
            go.Violin(
                x=x,
                y=y,
                name=role,
                legendgroup=role,
                line_color=role_colour(role),
                box_visible=True,
                meanline_visible=True,
                points=False,
                spanmode="hard",
            )
        )
    figure.update_layout(
        violinmode="group",
        title=f"{side} neuron norms per layer",
        xaxis_title="neuron group (its first layer)",
        yaxis_title=f"{side} L2 norm of a neuron's weights",
    )
    return legend_below(figure)


OVERLAP_HEIGHT = 300
"""Height (px) of one eigenvector-overlap heatmap."""
OVERLAP_GAP = 110
"""Room (px) between two stacked overlap heatmaps: the upper one's x tick labels and axis title, the lower one's
subplot title."""


def overlap_figure(overlaps: Sequence[EigenvectorOverlap], parents: Sequence[str]) -> go.Figure:
    """One heatmap per parent, stacked so that none draws over another at any width: ``|u_i . P v_j|`` between the
    fused model's eigenvector ``i`` (rows) and the parent's eigenvector ``j`` mapped into the fused model's order
    (columns), 0 to 1."""
    count = len(overlaps)
    plot = count * OVERLAP_HEIGHT + (count - 1) * OVERLAP_GAP
    figure = make_subplots(
        rows=count,
        cols=1,
        subplot_titles=[f"fused vs {p}" for p in parents],
        vertical_spacing=OVERLAP_GAP / plot if count > 1 else 0,
    )
    for row, overlap in enumerate(overlaps, start=1):
        k, m = overlap.overlap.shape
        parent = parents[row - 1]
        figure.add_trace(
            go.Heatmap(
                z=overlap.overlap,
                x=[f"v{j + 1} (λ {overlap.parent_eigenvalues[j]:.3g})" for j in range(m)],
                y=[f"u{i + 1} (λ {overlap.fused_eigenvalues[i]:.3g})" for i in range(k)],
                zmin=0,
                zmax=1,
                colorscale="Blues",
                showscale=row == 1,
                colorbar={"title": "overlap", "len": OVERLAP_HEIGHT / plot, "y": 1, "yanchor": "top"},
                texttemplate="%{z:.2f}",
                name=f"fused vs {parent}",
                hovertemplate="fused %{y} · " + parent + " %{x}<br>overlap %{z:.3f}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        figure.update_xaxes(title_text=f"{parent}'s eigenvector v_j, mapped", row=row, col=1)
        figure.update_yaxes(title_text="fused eigenvector u_i", autorange="reversed", row=row, col=1)
    figure.update_layout(
        title="Overlap of the top Hessian eigenvectors<br><sup>parents' eigenvectors mapped by the fusion's maps</sup>",
        height=TOP_MARGIN + plot + AXIS_MARGIN,
        margin={"t": TOP_MARGIN, "b": AXIS_MARGIN},
    )
    return figure


def head_norms_figure(norms: dict[str, list[GroupNorms]], side: str = "incoming") -> go.Figure:
    """Bars of every attention head's norm (:meth:`GroupNorms.per_head`), per attention group and head (x), one bar
    per model (colour by role)."""
    figure = go.Figure()
    for role, groups in norms.items():
        heads = [g.per_head() for g in groups if (g.heads or 1) > 1]
        figure.add_trace(
            go.Bar(
                x=[f"{g.group.removesuffix(' (heads)')} · head {h}" for g in heads for h in range(g.heads)],
                y=[v for g in heads for v in getattr(g, side)],
                name=role,
                marker_color=role_colour(role),
            )
        )
    figure.update_layout(
        barmode="group",
        title=f"{side} norms of whole attention heads",
        xaxis_title="attention group (query/key or value) and head",
        yaxis_title="L2 norm of the head's weights",
    )
    return legend_below(figure)


def survival_figure(survival: Survival, parents: Sequence[str]) -> go.Figure:
    """Neuron Transplantation's cut: every neuron of the concatenated layer ranked by importance, coloured by parent,
    kept (filled) or dropped (open), with the threshold the pruning drew."""
    order = np.argsort(survival.importance)[::-1]
    figure = go.Figure()
    for parent, label in enumerate(parents):
        for kept in (True, False):
            rank = [r for r, i in enumerate(order) if survival.parent[i] == parent and survival.kept[i] == kept]
            if not rank:
                continue
            figure.add_trace(
                go.Scatter(
                    x=rank,
                    y=[survival.importance[order[r]] for r in rank],
                    mode="markers",
                    name=f"{label} · {'kept' if kept else 'dropped'}",
                    marker={"color": role_colour(label), "symbol": "circle" if kept else "circle-open", "size": 7},
                    customdata=[survival.neuron[order[r]] for r in rank],
                    hovertemplate="rank %{x}<br>importance %{y:.4g}<br>neuron %{customdata} of "
                    + label
                    + "<extra></extra>",
                )
            )
    kept_count = sum(survival.kept)
    figure.add_vline(x=kept_count - 0.5, line_dash="dash", annotation_text=f"keep {kept_count}")
    figure.update_layout(
        title=f"{survival.group}: {len(survival.kept)} concatenated neurons, the {kept_count} largest survive",
        xaxis_title="rank by importance (largest first)",
        yaxis_title="importance (squared L2 over the group's weights)",
        yaxis_type="log",
    )
    return legend_below(figure)


def finetune_comparison_figure(rows: Sequence[dict], references: Sequence[tuple[str, str, float]] = ()) -> go.Figure:
    """Test accuracy (%) of every fused model before and after fine-tuning, grouped per row's ``method``.

    ``rows`` carry ``method``, ``test_accuracy`` and ``finetuned_accuracy`` (``None`` where not fine-tuned), both as
    fractions; ``references`` are ``(label, role, accuracy)`` drawn as dashed lines in the role's colour (the best
    parent, the ensemble), labelled in the legend, where no label can cover a bar's value."""
    figure = go.Figure()
    methods = [r["method"] for r in rows]
    for label, key, role in (
        ("fused", "test_accuracy", "fused"),
        ("after fine-tuning", "finetuned_accuracy", "fine-tuned"),
    ):
        values = [None if r.get(key) is None else 100 * r[key] for r in rows]
        figure.add_trace(
            go.Bar(
                x=methods,
                y=values,
                name=label,
                marker_color=role_colour(role),
                text=["" if v is None else f"{v:.2f}" for v in values],
                textposition="outside",
                hovertemplate="%{x} · " + label + "<br>test accuracy %{y:.2f}%<extra></extra>",
            )
        )
    for label, role, accuracy in sorted(references, key=lambda r: -r[2]):
        figure.add_hline(y=100 * accuracy, line_dash="dash", line_color=role_colour(role))
        figure.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                line={"dash": "dash", "color": role_colour(role)},
                name=f"{label} {100 * accuracy:.2f}%",
            )
        )
    figure.update_layout(
        barmode="group",
        title="test accuracy before and after fine-tuning",
        xaxis_title="fusion method",
        yaxis_title="test accuracy (%)",
        yaxis_range=ACCURACY_RANGE,
    )
    return legend_below(figure)


SEED_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross", "hexagon")
"""One marker per seed of a sweep (with its own colour), so two seeds read apart where their points meet."""


def sweep_figure(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """A sweep's finished fusion jobs (:func:`studies.sweeps.table.job_rows`): test accuracy (%) per method and
    option set, one point per seed (the k-th seed in the k-th of :data:`OTHER_COLOURS` and :data:`SEED_SYMBOLS`, no
    role's colour), and, when the sweep fine-tuned, the fine-tuned accuracy beside it."""
    done = [r for r in rows if r["state"] == "done" and r.get("test_accuracy_pct") is not None]
    tuned = any(r.get("finetuned_accuracy_pct") is not None for r in done)
    titles = ("fused", "fine-tuned") if tuned else ("fused",)
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True)
    label = lambda r: r["method"] + (f" ({r['options']})" if r["options"] else "")  # noqa: E731
    for col, column in enumerate(("test_accuracy_pct", "finetuned_accuracy_pct")[: len(titles)], start=1):
        for index, seed in enumerate(sorted({r["seed"] for r in done})):
            points = [r for r in done if r["seed"] == seed and r.get(column) is not None]
            figure.add_trace(
                go.Scatter(
                    x=[label(r) for r in points],
                    y=[r[column] for r in points],
                    mode="markers",
                    marker={
                        "size": 11,
                        "color": OTHER_COLOURS[index % len(OTHER_COLOURS)],
                        "symbol": SEED_SYMBOLS[index % len(SEED_SYMBOLS)],
                    },
                    name=f"seed {seed}",
                    legendgroup=f"seed {seed}",
                    showlegend=col == 1,
                    customdata=[r["job"] for r in points],
                    hovertemplate="%{x}<br>%{y:.2f} %<br>job %{customdata}<extra>seed " + str(seed) + "</extra>",
                ),
                row=1,
                col=col,
            )
    figure.update_layout(title=f"{len(done)} finished fusion job(s)", legend_title_text="seed")
    figure.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    return legend_below(figure)
