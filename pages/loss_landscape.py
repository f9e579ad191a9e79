"""Loss landscape: where does a fused model sit relative to its parents? Interpolation curves with their loss
barriers, the plane through parent A, parent B and the fused model, and random filter-normalised directions."""

from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from analysis.cost import CostEstimate
from analysis.figures import interpolation_figure, plane_figure, random_directions_figure
from analysis.landscape import LandscapeConfig
from fusion.errors import FusionError
from fusion.results import ResultRecord
from studies.runs import (
    ALIGNED_LINES,
    fusion_landscape,
    fusion_landscape_cost,
    landscape_command,
    landscape_cost,
    landscape_of,
    landscape_record,
    landscape_records,
    landscape_result,
    stored_fusion_landscape,
)
from ui.charts import show_chart, show_command, show_table
from ui.errors import report_errors
from ui.job_view import computing_message, job_kind, restore_inputs, show_job, start_job
from ui.results import pick_settings, show_stored_results
from ui.state import SELECTED_MODELS_KEY, device, job_runner, models_or_stop, selected_model_ids, workspace
from ui.tables import relative_change
from ui.validation import FormCheck

LANDSCAPE_KIND = "landscape"
FORM_LABELS = {
    "resolution": "Points per axis",
    "samples": "Examples per split (0: all)",
    "span": "Range of the directions",
}


def landscape_identity(record: ResultRecord) -> dict:
    """A stored landscape's settings as the form states them: the full config and the directions."""
    config = LandscapeConfig.from_dict(record.settings.get("config") or {})
    return {"config": config.to_dict(), "dims": record.settings.get("dims", 1)}


def describe_settings(settings: Mapping[str, Any]) -> str:
    config = settings["config"]
    changed = {k: config[k] for k in ("resolution", "samples", "span", "recompute_batchnorm")}
    return ", ".join(f"{k} {v}" for k, v in changed.items())


FUSION, RANDOM, PAIR = "a fused model and its two parents", "random directions around one model", "any two models"


@st.cache_data(show_spinner="Estimating the time…", max_entries=32)
def estimate(
    root: str, ids: tuple[str, ...], kind: str, fused: bool, resolution: int, samples: int, dims: int
) -> CostEstimate:
    """The cost of the landscape the page would compute: a fusion's three lines and plane, or one landscape."""
    config = LandscapeConfig(resolution=resolution, samples=samples or None)
    if fused:
        return fusion_landscape_cost(workspace(), ids[-1], config, device())
    return landscape_cost(workspace(), ids, kind, config, dims, device())


st.title("Loss landscape")
st.caption(
    "Train and test loss and accuracy along straight lines between models (with the loss barrier: the largest excess "
    "over the straight line between the end points), on the plane through three models, and along random "
    "filter-normalised directions (Li et al. 2018). Results are stored with the first model."
)
ws, records, by_id = models_or_stop()
restore_inputs(LANDSCAPE_KIND)
fused = [
    r.id for r in records if len(r.parents) == 2 and all(p in by_id and by_id[p].spec == r.spec for p in r.parents)
]
view = st.radio(
    "Landscape",
    [FUSION, RANDOM, PAIR] if fused else [RANDOM, PAIR],
    horizontal=True,
    key="landscape.view",
)
label = lambda i: f"{by_id[i].name} ({i})"  # noqa: E731
selected = [i for i in selected_model_ids() if i in by_id]

if view == FUSION:
    start = next((i for i in selected if i in fused), fused[0])
    fused_id = st.selectbox("Fused model", fused, index=fused.index(start), format_func=label, key="landscape.fused")
    ids, kind, dims = (*by_id[fused_id].parents, fused_id), "plane", 2
elif view == RANDOM:
    model_id = st.selectbox(
        "Model",
        list(by_id),
        index=list(by_id).index(selected[0]) if selected else 0,
        format_func=label,
        key="landscape.model",
    )
    dims = st.radio("Directions", [1, 2], index=1, horizontal=True, key="landscape.dims")
    ids, kind = (model_id,), "random"
else:
    left, right = st.columns(2)
    a = left.selectbox("Model A", list(by_id), format_func=label, key="landscape.a")
    b = right.selectbox("Model B", list(by_id), index=min(1, len(by_id) - 1), format_func=label, key="landscape.b")
    ids, kind, dims = (a, b), "interpolation", 1

left, middle, right = st.columns(3)
resolution = left.number_input(
    FORM_LABELS["resolution"], value=11 if kind != "interpolation" else 21, step=1, key=f"landscape.resolution.{kind}"
)
samples = middle.number_input(FORM_LABELS["samples"], value=0, step=100, key="landscape.samples")
span = 1.0
if kind == "random":
    span = right.number_input(
        FORM_LABELS["span"], value=1.0, key="landscape.span", help="coefficients in [-range, range]"
    )
recompute = st.checkbox("Recompute BatchNorm statistics at every point", key="landscape.bn")
checked = FormCheck()
checked.build(
    lambda: LandscapeConfig(resolution=int(resolution), samples=int(samples) or None, span=float(span)), FORM_LABELS
)
if not checked.passed():
    st.stop()  # every refused value is listed above: nothing to estimate or compute until they are corrected
job_key = job_kind(LANDSCAPE_KIND, [view, kind, *ids])
estimated = False
with report_errors():
    cost = estimate(str(ws.root), tuple(ids), kind, view == FUSION, int(resolution), int(samples), dims)
    estimated = True
    st.caption(f"{cost.units:,} grid points: {cost.describe_seconds()} on {device().type.upper()}, timed here.")
    if cost.seconds > LandscapeConfig().warn_seconds:
        st.warning(f"This landscape will take {cost.describe_seconds()}: fewer points or examples make it faster.")
    with st.form("landscape.form", border=False):
        submitted = st.form_submit_button("Compute", type="primary")
    if submitted:
        config = LandscapeConfig(
            resolution=int(resolution), samples=int(samples) or None, span=float(span), recompute_batchnorm=recompute
        )
        inputs = {"landscape.view": view, SELECTED_MODELS_KEY: list(ids)}
        if view == PAIR:
            inputs |= {"landscape.a": a, "landscape.b": b}
        if view == FUSION:
            start_job(
                f"Landscape of {fused_id}",
                fusion_landscape,
                ws,
                fused_id,
                config,
                device=device(),
                kind=job_key,
                inputs=inputs,
            )
        else:
            start_job(
                f"{kind} landscape",
                landscape_of,
                ws,
                list(ids),
                kind,
                config,
                dims,
                device=device(),
                kind=job_key,
                inputs=inputs,
            )
if not estimated:
    st.stop()  # the error above says why these models have no landscape: no Compute button, nothing to show
job = job_runner().latest(job_key)
show_job(job)
running = job is not None and job.active
try:
    form_config: LandscapeConfig | None = LandscapeConfig(
        resolution=int(resolution), samples=int(samples) or None, span=float(span), recompute_batchnorm=recompute
    )
except FusionError:
    form_config = None
form = {"config": form_config.to_dict(), "dims": dims} if form_config is not None else None
stored_kind, stored_ids = ("plane", [*by_id[fused_id].parents, fused_id]) if view == FUSION else (kind, list(ids))
stored = landscape_records(ws, stored_ids, stored_kind)
shown = pick_settings("landscape.shown", form, stored, landscape_identity, describe_settings)
config = LandscapeConfig.from_dict(shown["config"]) if shown is not None else None

if view == FUSION:
    found = stored_fusion_landscape(ws, fused_id, config) if config is not None else {}
    lines = {name: found[name] for name in ("A-B", "A-fused", "B-fused") if name in found}
    if lines:
        show_table(
            pd.DataFrame(
                [
                    {"line": n, "train barrier": r.train_barrier, "test barrier": r.test_barrier}
                    for n, r in lines.items()
                ]
            ),
            f"barriers-{fused_id}",
        )
        show_chart(interpolation_figure(lines), f"interpolation-{fused_id}")
    aligned = {name: found[name] for name in ALIGNED_LINES if name in found}
    if len(aligned) == len(ALIGNED_LINES):
        st.markdown("**Parents aligned as the fusion aligned them, with and without REPAIR at every point**")
        plain, repaired = (aligned[name].test_barrier for name in ALIGNED_LINES)
        change = relative_change(plain, repaired)
        st.caption(
            f"Test loss barrier {plain:.4g} nats aligned, {repaired:.4g} with REPAIR {change}: "
            "REPAIR renormalises each point's neurons to the interpolation of the parents' statistics (Jordan et al. "
            "2023). Where a curve passes t = 0.5 with weights (0.5, 0.5) is the fused model, or its REPAIRed form."
        )
        show_chart(interpolation_figure(aligned), f"interpolation-aligned-{fused_id}")
    if "plane" in found:
        metric = st.radio(
            "Plane metric",
            ["test_loss", "train_loss", "test_accuracy", "train_accuracy"],
            horizontal=True,
            key="landscape.metric",
        )
        show_chart(plane_figure(found["plane"], metric), f"plane-{fused_id}-{metric}")
    if not found:
        st.info(computing_message(job) if running else "Not computed with these settings yet: press Compute.")
    elif config is not None and (line := landscape_command(list(ids), "plane", config)) is not None:
        st.caption("The plane of these settings from the command line (the lines are computed on this page):")
        show_command(line + " --json")
else:
    record = landscape_record(ws, list(ids), kind, config, dims) if config is not None else None
    result = landscape_result(record) if record is not None else None
    if result is None:
        st.info(computing_message(job) if running else "Not computed with these settings yet: press Compute.")
    elif kind == "random":
        show_chart(random_directions_figure(result, name=by_id[ids[0]].name), f"random-{ids[0]}")
    else:
        st.caption(f"Loss barrier: train {result.train_barrier:.4g}, test {result.test_barrier:.4g} nats.")
        show_chart(interpolation_figure({"A-B": result}), f"interpolation-{ids[0]}-{ids[1]}")
    if record is not None and record.command:
        st.caption(f"Result {record.key}, from the command line:")
        show_command(record.command + " --json")
show_stored_results({stored_ids[0]: stored}, lambda r: describe_settings(landscape_identity(r)), "landscape-stored")
