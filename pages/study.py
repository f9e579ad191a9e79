"""Generalization study: the pipeline of "Unveiling Generalization Prospects in OT Fused Neural Networks" in one job:
prune both parents, fuse them, fine-tune, and compare the Hessian of every stage (:mod:`studies.seed_study`)."""

import pandas as pd
import streamlit as st

from fusion.command_lines import non_default
from fusion.results import ResultRecord
from studies.figures import study_figure
from studies.seed_study import STUDY, SeedStudy, StudyConfig, seed_study, study_command, study_rows
from ui.charts import show_chart, show_command, show_table
from ui.errors import report_errors
from ui.job_view import restore_inputs, show_job, start_job
from ui.options import option_labels, option_widgets, parse_options
from ui.state import SELECTED_MODELS_KEY, device, job_runner, models_or_stop, select_models, selected_model_ids
from ui.validation import FormCheck

STUDY_KIND = "study"


def describe(record: ResultRecord) -> str:
    changed = non_default(StudyConfig, record.settings)
    return ", ".join(f"{k} {v}" for k, v in changed.items()) or "defaults"


st.title("Generalization study")
st.caption(
    "Prune both parents (structured: whole neurons; unstructured: single weights set to zero), fuse the pruned "
    "parents, fine-tune the fused network, then compare the sharpness of every stage: top Hessian eigenvalues with "
    "their error estimates, trace, and the ratios to each model's parents. Every model and Hessian is stored in the "
    "workspace, so the Hessian, Loss landscape and Compare pages show them too."
)
ws, records, by_id = models_or_stop()
restore_inputs(STUDY_KIND)
label = lambda i: f"{by_id[i].name} ({i})"  # noqa: E731
selected = [i for i in selected_model_ids() if i in by_id]
ids = list(by_id)
with st.form("study.form"):
    left, right = st.columns(2)
    first = left.selectbox(
        "Parent A",
        ids,
        index=ids.index(selected[0]) if selected else 0,
        format_func=label,
        key="study.a",
    )
    second = right.selectbox(
        "Parent B",
        ids,
        index=ids.index(selected[1]) if len(selected) > 1 else min(1, len(ids) - 1),
        format_func=label,
        key="study.b",
    )
    values = option_widgets(StudyConfig, "study", columns=4)
    submitted = st.form_submit_button("Run the study", type="primary")
if submitted:
    form = FormCheck()
    config = form.build(lambda: StudyConfig(**parse_options(StudyConfig, values)), option_labels(StudyConfig))
    if form.passed():
        with report_errors():
            select_models([first, second])
            start_job(
                f"generalization study of {first} and {second}",
                seed_study,
                ws,
                [first, second],
                config,
                device=device(),
                kind=STUDY_KIND,
                inputs={SELECTED_MODELS_KEY: [first, second], **{f"study.{k}": v for k, v in values.items()}},
            )
job = job_runner().latest(STUDY_KIND)
show_job(job)
stored = [r for r in ws.results(first, STUDY) if r.models == [first, second]]
if job is not None and job.status == "done":
    study = job.result
elif stored:
    chosen = st.selectbox(
        "Stored studies of these parents",
        stored,
        format_func=lambda r: f"{r.created[:16]} · {describe(r)} · result {r.key}",
        key="study.stored",
    )
    study = SeedStudy.from_dict(chosen.payload)
else:
    st.stop()
st.subheader("Every stage")
show_table(pd.DataFrame(study_rows(study)), "generalization-study")
show_chart(study_figure(study), "generalization-study")
st.caption("The same study from the command line:")
parents = [s.model for s in study.stages[:2]]
show_command(study_command(parents, study.config) + " --json")
