"""Compare: every fusion method on one set of parents in one table, with a chart, CSV and Markdown exports and the
command lines that reproduce each row (:mod:`studies.comparison`)."""

import pandas as pd
import streamlit as st

from analysis.fusion_figures import finetune_comparison_figure
from analysis.hessian_config import HessianConfig
from fusion.registry import REGISTRY
from fusion.train import TrainConfig
from studies.comparison import (
    MethodComparison,
    applicable_methods,
    check_comparison,
    compare_methods,
    comparison_from_workspace,
    fill_hessians,
    table_records,
    to_csv,
    to_markdown,
)
from studies.pipeline import parent_role
from studies.sharpness import sharpness_rows, sharpness_table
from ui.charts import show_chart, show_command, show_table
from ui.errors import report_errors
from ui.job_view import restore_inputs, show_job, start_job
from ui.options import kept
from ui.state import (
    SELECTED_MODELS_KEY,
    device,
    job_runner,
    models_or_stop,
    select_models,
    selected_model_ids,
)
from ui.tables import dashed_table, labelled_accuracy
from ui.validation import FormCheck

COMPARE_KIND = "compare"
HESSIANS_KIND = "compare.hessians"
HESSIAN_SAMPLES = 500
FORM_LABELS = {
    "epochs": "Fine-tune epochs for every fused model (0: none)",
    "lr": "Fine-tune learning rate (Adam)",
    "samples": "Hessian samples (test examples)",
}

st.title("Compare")
st.caption(
    "Fuse one set of parents with every method and compare the results: test accuracy and loss before and after "
    "fine-tuning, size, fusion time, and the Hessian's top eigenvalue and trace where they have been computed. "
    "Intra-Fusion and magnitude pruning work on one model and take the first parent."
)
ws, records, by_id = models_or_stop()
restore_inputs(COMPARE_KIND)

PARENTS_KEY, METHODS_KEY = "compare.parents", "compare.methods"


def applicable_to_chosen() -> None:
    """Reset the methods to all that apply whenever the parents change."""
    st.session_state[METHODS_KEY] = applicable_methods([by_id[i] for i in st.session_state[PARENTS_KEY] if i in by_id])


chosen = st.multiselect(
    "Parents",
    list(by_id),
    default=[i for i in selected_model_ids() if i in by_id],
    format_func=lambda i: labelled_accuracy(by_id[i]),
    key=PARENTS_KEY,
    on_change=applicable_to_chosen,
)
parents = [by_id[i] for i in chosen]
st.session_state.setdefault(METHODS_KEY, applicable_methods(parents))
methods = st.multiselect(
    "Methods (all that apply to these parents by default)",
    list(REGISTRY),
    format_func=lambda m: f"{m} — {REGISTRY[m].summary}",
    key=METHODS_KEY,
)

with st.form("compare.form"):
    left, right = st.columns(2)
    kept("compare.finetune.epochs", 5)
    kept("compare.finetune.lr", 1e-3)
    epochs = left.number_input(FORM_LABELS["epochs"], step=1, key="compare.finetune.epochs")
    lr = right.number_input(FORM_LABELS["lr"], format="%.0e", key="compare.finetune.lr")
    kept("compare.hessian", False)
    kept("compare.hessian.samples", HESSIAN_SAMPLES)
    with_hessian = left.checkbox(
        "Then the Hessian of every model (parents, fused, fine-tuned)",
        key="compare.hessian",
        help="Top eigenvalues, trace, density and perturbation curves on the test split with the Hessian page's "
        "default settings and the number of examples beside, stored with each model and reused when one was "
        "computed with the same settings.",
    )
    samples = right.number_input(FORM_LABELS["samples"], step=1, key="compare.hessian.samples")
    submitted = st.form_submit_button("Compare", type="primary")

form = FormCheck()
if submitted:
    skipped = form.build(lambda: check_comparison(parents, methods), FORM_LABELS)
    finetune = form.build(lambda: TrainConfig(epochs=int(epochs), lr=float(lr)) if epochs else None, FORM_LABELS)
    hessian = form.build(lambda: HessianConfig(samples=int(samples)) if with_hessian else None, FORM_LABELS)
if submitted and form.passed():
    assert skipped is not None
    with report_errors():
        select_models(chosen)
        start_job(
            f"comparison of {len(methods) - len(skipped)} method(s) on {len(chosen)} parent(s)",
            compare_methods,
            ws,
            chosen,
            methods,
            finetune,
            device=device(),
            hessian=hessian,
            kind=COMPARE_KIND,
            inputs={
                SELECTED_MODELS_KEY: chosen,
                METHODS_KEY: methods,
                "compare.finetune.epochs": epochs,
                "compare.finetune.lr": lr,
                "compare.hessian": with_hessian,
                "compare.hessian.samples": samples,
            },
        )

TABLE_FORMATS = {
    "test accuracy (%)": "%.2f",
    "fine-tuned accuracy (%)": "%.2f",
    "test loss": "%.4f",
    "fine-tuned loss": "%.4f",
    "parameters": "localized",
    "fusion time (s)": "%.2f",
    "top Hessian eigenvalue": "%.4g",
    "Hessian trace": "%.4g",
    "fine-tuned top eigenvalue": "%.4g",
    "fine-tuned Hessian trace": "%.4g",
}

job = job_runner().latest(COMPARE_KIND)
show_job(job)

comparison: MethodComparison | None = None
if job is not None and job.status == "done" and list(job.result.parents) == chosen:
    comparison = job.result
    st.subheader("Results")
elif chosen:
    comparison = comparison_from_workspace(ws, chosen)
    if comparison.rows:
        st.subheader("Results already in the workspace")
        st.caption("Models fused earlier from exactly these parents, read from the workspace; nothing was recomputed.")
if comparison is None or not comparison.rows:
    st.stop()

for method, reason in comparison.skipped.items():
    st.info(f"{method} skipped: {reason}")
rows = comparison.rows
table, column_config = dashed_table(table_records(rows), TABLE_FORMATS)
show_table(table, "fusion-comparison-table", column_config=column_config)
references = [
    (f"{parent_role(k)}: {by_id[i].name}", parent_role(k), by_id[i].metrics["test_accuracy"])
    for k, i in enumerate(comparison.parents)
    if i in by_id and "test_accuracy" in by_id[i].metrics
]
unique = len({r.method for r in rows}) == len(rows)
bars = [{**r.to_dict(), "method": r.method if unique else f"{r.method} · {r.id or 'ensemble'}"} for r in rows]
show_chart(finetune_comparison_figure(bars, references), "fusion-comparison")
analysed = [*comparison.parents, *(i for r in rows for i in (r.id, r.finetuned_id) if i is not None)]
summaries = sharpness_table(ws, [i for i in analysed if i in by_id])
if summaries:
    st.subheader("Sharpness")
    st.caption("From each model's stored Hessian; ratios are to the mean of the model's parents that have one.")
    show_table(pd.DataFrame(sharpness_rows(summaries)), "comparison-sharpness")
missing = [i for i in analysed if i in by_id and i not in {s.model for s in summaries}]
if missing:
    show_job(job_runner().latest(HESSIANS_KIND))
    hessian_samples = int(st.session_state.get("compare.hessian.samples", HESSIAN_SAMPLES))
    if st.button(
        f"Compute the Hessians of the {len(missing)} model(s) without one ({hessian_samples} test examples)",
        key="compare.fill_hessians",
    ):
        start_job(
            f"Hessians of {len(missing)} model(s)",
            fill_hessians,
            ws,
            missing,
            HessianConfig(samples=hessian_samples),
            device=device(),
            kind=HESSIANS_KIND,
        )
left, right = st.columns(2)
left.download_button(
    "Download CSV", to_csv(rows), file_name="fusion-comparison.csv", mime="text/csv", key="compare.csv"
)
right.download_button(
    "Download Markdown",
    to_markdown(rows),
    file_name="fusion-comparison.md",
    mime="text/markdown",
    key="compare.markdown",
)


st.caption("Each row from the command line (FUSED_ID: the id the fuse command prints):")
show_command("\n".join(line for row in rows for line in row.commands))
