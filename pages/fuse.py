"""Fuse: pick models and a method, run it as a job, and compare the fused model with its parents and baselines."""

import streamlit as st

from analysis.units import percent
from fusion.command_lines import fusion_command_lines
from fusion.errors import DamagedResultError
from fusion.registry import REGISTRY, resolve
from fusion.train import OPTIMIZERS, TrainConfig
from fusion.workspace import ModelRecord
from studies.comparison import COMPARISON, FusionComparison, compare_fusion, stored_comparison
from studies.figures import comparison_figure
from ui.charts import show_chart, show_command, show_table
from ui.errors import report_errors
from ui.job_view import computing_message, restore_inputs, show_job, start_job
from ui.options import kept, option_labels, option_widgets, parse_options
from ui.state import device, job_runner, models_or_stop, select_models, selected_model_ids
from ui.tables import dashed_table, labelled_accuracy
from ui.validation import FormCheck

FUSE_KIND = "fuse"
RESULT_KEY = "fuse.shown"
DEFAULT_METHOD = "ot"  # the page opens on the method the app is about (OT fusion, Singh & Jaggi 2020)
FINETUNE_LABELS = {
    "epochs": "Fine-tune epochs after fusion (0: none)",
    "lr": "Fine-tune learning rate",
    "optimizer": "Fine-tune optimizer",
}

st.title("Fuse")
st.caption(
    "Fuse two or more models (one for Intra-Fusion and pruning) with the method of your choice. Defaults follow the "
    "papers. The table compares the result with its parents, the prediction ensemble and vanilla averaging."
)
ws, records, by_id = models_or_stop()
records = list(reversed(records))
restore_inputs(FUSE_KIND)

kept("fuse.method", DEFAULT_METHOD, tuple(REGISTRY))
summaries = {name: spec.summary for name, spec in REGISTRY.items()}
method = st.selectbox("Method", list(summaries), format_func=lambda m: f"{m} — {summaries[m]}", key="fuse.method")
spec = resolve(method).spec
models_key = f"fuse.models.{method}"
if models_key not in st.session_state:
    st.session_state[models_key] = [i for i in selected_model_ids() if i in by_id][: spec.max_models or None]
st.session_state[models_key] = [i for i in st.session_state[models_key] if i in by_id]
chosen = st.multiselect(
    "Models" + (" (exactly one)" if spec.max_models == 1 else f" (at least {spec.min_models})"),
    list(by_id),
    format_func=lambda i: labelled_accuracy(by_id[i]),
    max_selections=spec.max_models,
    key=models_key,
)

with st.form("fuse.form"):
    st.markdown(f"**{method} options**")
    values = option_widgets(spec.options, f"fuse.{method}")
    recipe = spec.finetune or TrainConfig()
    if spec.finetune is not None:
        st.caption(
            f"{method} fine-tunes after fusing, as its paper does: {recipe.epochs} epochs of "
            f"{recipe.optimizer.upper()} at learning rate {recipe.lr:g}"
            + (f" (momentum {recipe.momentum:g})" if recipe.optimizer == "sgd" else "")
            + ". Set the epochs to 0 to see the fused model alone."
        )
    left, middle, right = st.columns(3)
    finetune_key = f"fuse.{method}.finetune"
    kept(f"{finetune_key}.epochs", recipe.epochs if spec.finetune is not None else 0)
    kept(f"{finetune_key}.lr", recipe.lr)
    kept(f"{finetune_key}.optimizer", recipe.optimizer, OPTIMIZERS)
    epochs = left.number_input(FINETUNE_LABELS["epochs"], step=1, key=f"{finetune_key}.epochs")
    lr = middle.number_input(FINETUNE_LABELS["lr"], format="%.0e", key=f"{finetune_key}.lr")
    optimizer = right.selectbox(FINETUNE_LABELS["optimizer"], OPTIMIZERS, key=f"{finetune_key}.optimizer")
    submitted = st.form_submit_button("Fuse", type="primary")

started = False
if submitted:
    form = FormCheck()
    form.build(lambda: spec.check_models(len(chosen)), {})
    options = form.build(lambda: parse_options(spec.options, values), option_labels(spec.options))
    finetune = form.build(
        lambda: TrainConfig(epochs=int(epochs), lr=float(lr), optimizer=str(optimizer)) if epochs else None,
        FINETUNE_LABELS,
    )
    if not form.passed():
        st.stop()  # every refused value is listed above, in place of the results
    with report_errors():
        select_models(chosen)
        st.session_state[RESULT_KEY] = None
        start_job(
            f"{method} fusion of {len(chosen)} model(s)",
            compare_fusion,
            ws,
            chosen,
            method,
            options,
            finetune,
            device=device(),
            kind=FUSE_KIND,
            inputs={
                "fuse.method": method,
                models_key: chosen,
                **{f"fuse.{method}.{k}": v for k, v in values.items()},
                f"{finetune_key}.epochs": epochs,
                f"{finetune_key}.lr": lr,
                f"{finetune_key}.optimizer": optimizer,
            },
        )
        started = True
    if not started:
        st.stop()  # the error above replaces the results: nothing below belongs to what was just asked for

job = job_runner().latest(FUSE_KIND)
if (
    job is not None
    and not job.active
    and (job.inputs.get("fuse.method"), job.inputs.get(models_key)) != (method, chosen)
):
    job = None  # how a fusion of other inputs ended says nothing about the method and models chosen now
show_job(job)
if job is not None and job.status == "failed":
    st.stop()  # a failed fusion's error is what this page shows until the next run

fused = [r for r in reversed(records) if r.parents and ws.has_result(r.id, COMPARISON)]
if not fused:
    st.stop()
if job is not None and job.status == "done" and isinstance(job.result, FusionComparison) and job.result.fused in by_id:
    st.session_state.setdefault(RESULT_KEY, None)
    if st.session_state[RESULT_KEY] is None:
        st.session_state[RESULT_KEY] = job.result.fused


def label(record: ModelRecord) -> str:
    return f"{record.name} ({record.id})"


st.subheader("Results")
ids = [r.id for r in fused]
same = [i for i in ids if by_id[i].method == method and by_id[i].parents == list(chosen)]
shown = st.session_state.get(RESULT_KEY)
if shown not in ids:
    shown = max(same or ids, key=lambda i: by_id[i].created)
if shown not in same:
    pending = (
        job is not None
        and job.active
        and job.inputs.get(models_key) == chosen
        and job.inputs.get("fuse.method") == method
    )
    st.info(
        (computing_message(job) if pending else f"No {method} fusion of the chosen models is stored yet: press Fuse.")
        + " The result below is from other settings (its method, models and options are in its name and command line)."
    )
shown_id = st.selectbox(
    "Fused model" if shown in same else "Fused model (other settings)",
    ids,
    index=ids.index(shown),
    format_func=lambda i: label(by_id[i]),
)
try:
    comparison = stored_comparison(ws, shown_id)
except DamagedResultError as exc:
    st.warning(str(exc))
    st.stop()
assert comparison is not None
table, column_config = dashed_table(
    [
        {
            "role": row.role,
            "model": row.model,
            "id": row.id,
            "test accuracy (%)": percent(row.test_accuracy),
            "test loss": row.test_loss,
            "parameters": row.parameters,
            "time (s)": row.seconds,
        }
        for row in comparison.rows
    ],
    {"test accuracy (%)": "%.2f", "test loss": "%.4f", "parameters": "localized", "time (s)": "%.2f"},
)
show_table(table, f"fusion-scores-{shown_id}", column_config=column_config)
show_chart(comparison_figure(comparison.rows), f"comparison-{shown_id}")
report = comparison.report
for line in report.details.lines():
    st.markdown(line)
worst = report.worst_verified()
if worst is not None:
    st.caption(f"Every hard alignment was verified on a probe batch: max |logit difference| {worst:.2e}.")
for note in report.notes:
    st.caption(note)
record = by_id[shown_id]
tuned = next((by_id.get(r.id) for r in comparison.rows if r.role == "fine-tuned" and r.id is not None), None)
recipe = tuned.provenance.get("options") if tuned is not None else None
options = record.provenance.get("options", {})
lines = fusion_command_lines(comparison.method, comparison.parents, options, recipe, shown_id)
st.caption("The same fusion from the command line:")
show_command("\n".join(lines))
