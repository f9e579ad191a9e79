"""Hessian: how sharp is each model's minimum? Top eigenvalues, trace, eigenvalue density and the loss along the top
eigenvector, for parents and fused models side by side."""

from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from analysis.figures import (
    eigen_plane_figure,
    eigenvalue_density_figure,
    layer_hessian_figure,
    perturbation_figure,
    top_eigenvalues_figure,
)
from analysis.fusion_figures import overlap_figure
from analysis.hessian import HessianReport
from analysis.hessian_config import HessianConfig
from analysis.overlap import MAPPED_METHODS
from analysis.perturbation import curve_kind, disagreement
from analysis.units import number_format
from fusion.command_lines import non_default
from fusion.errors import FusionError
from fusion.results import ResultRecord
from studies.figures import sharpness_gap_figure
from studies.runs import (
    HESSIAN,
    eigenvector_overlaps_of,
    hessian_command,
    hessian_cost_of,
    hessian_record,
    hessians_of,
    model_role,
    model_roles,
    stored_overlaps,
)
from studies.sharpness import Sharpness, sharpness_rows, sharpness_table
from ui.charts import show_chart, show_command, show_table
from ui.errors import report_errors
from ui.job_view import computing_message, job_kind, restore_inputs, show_job, start_job
from ui.options import kept, option_labels, option_widgets, parse_options
from ui.results import pick_settings, show_stored_results
from ui.state import device, job_runner, models_or_stop, select_models, selected_model_ids
from ui.validation import FormCheck

HESSIAN_KIND = "hessian"
OVERLAP_KIND = "hessian.overlap"


def number_formats(summaries: list[Sharpness]) -> dict:
    """Four significant digits for every number column of the sharpness table; residuals, spreads and errors in
    scientific notation (:func:`analysis.units.number_format`)."""
    columns = [c for row in sharpness_rows(summaries[:1]) for c, v in row.items() if not isinstance(v, str)]
    return {c: st.column_config.NumberColumn(format=number_format(c)) for c in columns}


ESTIMATES = "hessian.estimates"
# the options a first run needs (how much data, how many eigenvalues, what to compute); the rest are folded
FIRST_RUN_OPTIONS = ("samples", "top_k", "layers", "random_directions", "plane_points", "lines_to_parents")


def hessian_identity(record: ResultRecord) -> dict:
    """A stored Hessian's settings as the form states them: the full config and the split."""
    config = HessianConfig.from_dict(record.settings.get("config") or {})
    return {"config": config.to_dict(), "split": record.settings.get("split", "test")}


def describe_settings(settings: Mapping[str, Any]) -> str:
    changed = non_default(HessianConfig, dict(settings["config"]))
    return f"{settings['split']} split, " + (", ".join(f"{k} {v}" for k, v in changed.items()) or "defaults")


st.title("Hessian")
st.caption(
    "Sharpness of the minimum (Yao et al., PyHessian 2020; the otfusion generalization study): the largest "
    "eigenvalues of the loss Hessian by Lanczos, its trace by Hutchinson's estimator with Rademacher probes outside "
    "the Lanczos vectors (± the standard error over probes, which stop at the relative error set below), its "
    "eigenvalue density by stochastic Lanczos quadrature, and the train and test loss along every top eigenvector "
    "beside a band of random filter-normalised directions, on a range and step scale set below (and optionally on "
    "the plane of the top two eigenvectors). Results are stored with each model."
)
ws, records, by_id = models_or_stop()
restore_inputs(HESSIAN_KIND)
if "hessian.models" not in st.session_state:
    st.session_state["hessian.models"] = [i for i in selected_model_ids() if i in by_id][:4] or [records[0].id]
st.session_state["hessian.models"] = [i for i in st.session_state["hessian.models"] if i in by_id]
chosen = st.multiselect(
    "Models (parents and fused side by side)",
    list(by_id),
    format_func=lambda i: f"{by_id[i].name} ({i})",
    key="hessian.models",
)
with st.form("hessian.form"):
    kept("hessian.split", "test", ("test", "train"))
    split = st.radio("Data", ["test", "train"], horizontal=True, key="hessian.split")
    values = option_widgets(HessianConfig, "hessian", columns=4, first=FIRST_RUN_OPTIONS)
    submitted = st.form_submit_button("Compute", type="primary")
kind = job_kind(HESSIAN_KIND, sorted(chosen))
if submitted:
    form = FormCheck()
    if not chosen:
        form.refuse("Choose at least one model")
    config = form.build(lambda: HessianConfig(**parse_options(HessianConfig, values)), option_labels(HessianConfig))
    if not form.passed():
        st.stop()  # every refused value is listed above, in place of the results
    assert config is not None
    with report_errors():
        select_models(chosen)
        cost = hessian_cost_of(ws, chosen, config, split, device())
        st.session_state.setdefault(ESTIMATES, {})[kind] = (
            cost.describe(),
            cost.seconds > config.warn_seconds,
            config.warn_seconds,
        )
        start_job(
            f"Hessian of {len(chosen)} model(s)",
            hessians_of,
            ws,
            chosen,
            config,
            split,
            device=device(),
            kind=kind,
            inputs={"hessian.models": chosen, "hessian.split": split, **{f"hessian.{k}": v for k, v in values.items()}},
        )
job = job_runner().latest(kind)
show_job(job)
if job is not None and kind in st.session_state.get(ESTIMATES, {}):
    described, slow, warn_seconds = st.session_state[ESTIMATES][kind]
    if slow:
        st.warning(
            f"Estimated before the start: up to {described}, above the warning threshold of {warn_seconds:.0f} s."
        )
    else:
        st.caption(f"Estimated before the start: up to {described}.")

try:
    form_config: HessianConfig | None = HessianConfig(**parse_options(HessianConfig, values))
except FusionError:
    form_config = None
form = {"config": form_config.to_dict(), "split": split} if form_config is not None else None
stored: dict[str, list] = {}
with report_errors():
    stored = {i: ws.results(i, HESSIAN) for i in chosen}
newest_first = sorted((r for rs in stored.values() for r in rs), key=lambda r: r.created, reverse=True)
shown = pick_settings("hessian.shown", form, newest_first, hessian_identity, describe_settings)
shown_config = HessianConfig.from_dict(shown["config"]) if shown is not None else None
shown_split = shown["split"] if shown is not None else split
found = {i: hessian_record(ws, i, shown_config, shown_split) for i in chosen} if shown_config is not None else {}
records_shown = {i: r for i, r in found.items() if r is not None}
done = {i: HessianReport.from_dict(r.payload) for i, r in records_shown.items()}
if job is not None and job.active and not done:
    st.info(computing_message(job))
    st.stop()
if not done:
    st.info(
        "No Hessian stored for these models with the settings shown: press Compute (its time is estimated on this "
        "machine before it starts), or pick stored settings above."
    )
    show_stored_results(stored, lambda r: describe_settings(hessian_identity(r)), "hessian-stored")
    st.stop()
roles = dict(zip(chosen, model_roles([by_id[i] for i in chosen]), strict=True))
labels = {i: f"{roles[i]} · {by_id[i].name}" for i in done}
rows = [
    {
        "model": labels[i],
        "top eigenvalues": ", ".join(f"{v:.4g}" for v in r.top.eigenvalues),
        "trace": r.trace.mean,
        "trace ± (std. error)": r.trace.error,
        "probes": len(r.trace.values),
        "trace status": r.trace.status,
        "top-k converged": r.top.converged,
        "samples": r.samples,
        "seconds": r.seconds,
        "result": records_shown[i].key,
    }
    for i, r in done.items()
]
show_table(
    pd.DataFrame(rows),
    "hessian-runs",
    column_config={
        "trace": st.column_config.NumberColumn(format="%.4g"),
        "trace ± (std. error)": st.column_config.NumberColumn(format=number_format("trace ± (std. error)")),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
    },
)
st.subheader("Sharpness")
st.caption(
    "λ residual: the Ritz bound ‖Hv − λv‖; λ spread: the standard error of vᵀH_p v over equal parts of the sample; "
    "fitted curvature: 2c of the parabola fitted to the loss along the eigenvector on its central points, the "
    "largest window of at least 5 on which a parabola models the loss to 1 % (in the units of t; for unit steps it "
    "should equal λ, and a warning below names every eigenvector where the two differ by more than 10 %); ratios: "
    "to the mean of the model's parents that have a Hessian too."
)
summaries = sharpness_table(ws, list(done), shown_config, shown_split)
show_table(pd.DataFrame(sharpness_rows(summaries)), "hessian-sharpness", column_config=number_formats(summaries))
disagreements = [
    f"- **{labels[i]}**, {said}"
    for i, r in done.items()
    for c in r.curves
    if curve_kind(c) == "eigenvector" and c.split in (r.split, None) and (said := disagreement(c))
]
if disagreements:
    st.warning(
        "The fitted curvature and dᵀHd (λ for a unit eigenvector) disagree by more than 10 %: the loss bends away "
        "from the Hessian's quadratic within the points fitted.\n\n" + "\n".join(disagreements)
    )
by_role = {roles[i]: r for i, r in done.items()}
show_chart(
    eigenvalue_density_figure({k: r.density for k, r in by_role.items()}, {k: r.top for k, r in by_role.items()}),
    "hessian-density",
)
splits = sorted({c.split for r in done.values() for c in r.curves if c.split}) or ["test"]
first = next(iter(done.values())).split
curve_split = st.radio(
    "Perturbation curves on",
    splits,
    index=splits.index(first) if first in splits else 0,
    horizontal=True,
    key="hessian.curve_split",
)
show_chart(perturbation_figure({k: r.curves for k, r in by_role.items()}, curve_split), "hessian-perturbation")
planes = {k: r.plane for k, r in by_role.items() if r.plane is not None and curve_split in r.plane.loss}
if planes:
    left, right = st.columns(2)
    role = left.selectbox("Eigenvector plane of", list(planes), key="hessian.plane_model")
    metric = right.radio("Show", ["loss", "accuracy"], horizontal=True, key="hessian.plane_metric")
    show_chart(eigen_plane_figure(planes[role], curve_split, metric, role), f"hessian-plane-{role}")
show_chart(top_eigenvalues_figure({k: r.top for k, r in by_role.items()}), "hessian-top-eigenvalues")
with_layers = {k: r.layers for k, r in by_role.items() if r.layers}
if with_layers:
    show_chart(layer_hessian_figure(with_layers), "hessian-layers")
everywhere = [s for s in sharpness_table(ws) if s.gap is not None]
if len(everywhere) >= 2:
    st.subheader("Sharpness and generalisation across the workspace")
    measure = st.radio("Sharpness", ["λ1", "trace"], horizontal=True, key="hessian.scatter_measure")
    show_chart(sharpness_gap_figure(everywhere, measure, roles), "hessian-sharpness-gap")
mapped = [i for i in done if by_id[i].method in MAPPED_METHODS and all(p in by_id for p in by_id[i].parents)]
if mapped:
    st.subheader("Eigenvector overlap with the parents")
    st.caption(
        "Do the fused model and its parents curve in the same directions? |u_i · P v_j|: the fused model's top "
        "eigenvectors against each parent's, moved into the fused model's neuron order by the fusion's maps "
        "(1: the same direction)."
    )
    fused_id = st.selectbox("Fused model", mapped, format_func=lambda i: labels[i], key="hessian.overlap_model")
    overlaps = stored_overlaps(ws, fused_id, shown_config, shown_split)
    overlap_kind = job_kind(OVERLAP_KIND, [fused_id])
    show_job(job_runner().latest(overlap_kind))
    if st.button("Compute the overlaps", key="hessian.overlap_compute"):
        start_job(
            f"eigenvector overlaps of {fused_id}",
            eigenvector_overlaps_of,
            ws,
            fused_id,
            shown_config,
            shown_split,
            device=device(),
            kind=overlap_kind,
        )
    if overlaps:
        names = [model_role(by_id[p], k) for k, p in enumerate(by_id[fused_id].parents)]
        show_chart(overlap_figure(overlaps, names), f"hessian-overlap-{fused_id}")
st.caption("The same analysis from the command line, for each model (the settings of the results shown):")
lines = [f"{records_shown[i].command or hessian_command(i, r.config, shown_split)} --json" for i, r in done.items()]
show_command("\n".join(lines))
show_stored_results(stored, lambda r: describe_settings(hessian_identity(r)), "hessian-stored")
