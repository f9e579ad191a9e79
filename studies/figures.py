"""Plotly figures of the studies' results: the test accuracy of a comparison's models, the sharpness of every stored
model against its generalisation gap, and a generalization study's stages. Colours per model role are the ones every
page shares (:func:`analysis.fusion_figures.role_colour`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.figures import legend_below
from analysis.fusion_figures import ACCURACY_RANGE, role_colour
from studies.scores import Score
from studies.seed_study import SeedStudy
from studies.sharpness import Sharpness

OTHER_MODELS_COLOUR = "#A6A6A6"
"""Trained models of the workspace that a page does not show: no parent role there, so none of the parents' colours."""


def workspace_role(summary: Sharpness, roles: Mapping[str, str]) -> str:
    """The role a model takes in a workspace-wide chart: its role on the page (``roles``, by model id), or, for a
    model the page does not show, ``other trained models`` (trained or imported) or ``other <role> models``."""
    if summary.model in roles:
        return roles[summary.model]
    return "other trained models" if summary.role.startswith("parent") else f"other {summary.role} models"


def sharpness_gap_figure(
    summaries: Sequence[Sharpness], measure: str = "λ1", roles: Mapping[str, str] | None = None
) -> go.Figure:
    """Sharpness (``λ1`` or ``trace``) against the generalisation gap (test minus train loss) of every model with a
    stored Hessian; models without both losses are left out. The page's models (``roles``: model id to role) are
    filled markers in their roles' colours; the rest of the workspace open markers in the colour of their kind
    (:func:`workspace_role`)."""
    roles = dict(roles or {})
    figure = go.Figure()
    shown = [s for s in summaries if s.gap is not None]
    by_role: dict[str, list[Sharpness]] = {}
    for summary in sorted(shown, key=lambda s: s.model not in roles):
        by_role.setdefault(workspace_role(summary, roles), []).append(summary)
    for role, points in by_role.items():
        on_page = points[0].model in roles
        kind = role.removeprefix("other ").removesuffix(" models")
        colour = role_colour(role) if on_page else OTHER_MODELS_COLOUR if kind == "trained" else role_colour(kind)
        figure.add_trace(
            go.Scatter(
                x=[s.gap for s in points],
                y=[s.eigenvalues[0] if measure == "λ1" else s.trace for s in points],
                mode="markers",
                name=role,
                marker={
                    "size": 12 if on_page else 9,
                    "color": colour,
                    "symbol": "circle" if on_page else "circle-open",
                    "line": {"width": 0 if on_page else 2},
                },
                text=[f"{s.name} ({s.model}, {s.method})" for s in points],
                hovertemplate="%{text}<br>gap %{x:.4f} nats<br>" + measure + " %{y:.4g}<extra>" + role + "</extra>",
            )
        )
    figure.update_layout(
        title=f"Sharpness against the generalisation gap ({len(shown)} models)",
        xaxis_title="generalisation gap: test loss − train loss (nats)",
        yaxis_title=f"{measure} of the loss Hessian",
        yaxis_type="log" if all((s.eigenvalues[0] if measure == "λ1" else s.trace) > 0 for s in shown) else "linear",
    )
    return legend_below(figure)


def study_figure(study: SeedStudy) -> go.Figure:
    """Per stage of a generalization study: ``λ1`` with its error bar (the larger of the Ritz residual and the
    spread over data parts), the trace ± its standard error, and the test accuracy."""
    figure = make_subplots(rows=1, cols=3, subplot_titles=("top eigenvalue λ1", "trace", "test accuracy (%)"))
    stages = [s.stage for s in study.stages]
    colours = [role_colour(s.stage) for s in study.stages]
    errors = [
        max([s.sharpness.residuals[0]] + s.sharpness.spread[:1]) if s.sharpness.residuals else 0.0 for s in study.stages
    ]
    columns = (
        ([s.sharpness.eigenvalues[0] for s in study.stages], errors),
        ([s.sharpness.trace for s in study.stages], [s.sharpness.trace_error for s in study.stages]),
        ([100 * s.test_accuracy for s in study.stages], None),
    )
    for col, (values, error) in enumerate(columns, start=1):
        figure.add_trace(
            go.Bar(
                x=stages,
                y=values,
                marker_color=colours,
                error_y={"type": "data", "array": error} if error is not None else None,
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    config = study.config
    figure.update_layout(
        title=f"{config.pruning} pruning at {config.sparsity:.0%}, {config.method} fusion, "
        f"{config.finetune_epochs}-epoch fine-tune",
        height=420,
    )
    return figure


def comparison_figure(rows: Sequence[Score]) -> go.Figure:
    """Test accuracy (%) of every model in a comparison, one bar each, coloured by role."""
    figure = go.Figure(
        go.Bar(
            x=[r.model for r in rows],
            y=[100 * r.test_accuracy for r in rows],
            marker_color=[role_colour(r.role) for r in rows],
            text=[f"{100 * r.test_accuracy:.2f}" for r in rows],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}<br>test accuracy %{y:.2f}%<extra></extra>",
        )
    )
    figure.update_layout(title="test accuracy", yaxis_title="test accuracy (%)", yaxis_range=ACCURACY_RANGE, height=400)
    return figure
