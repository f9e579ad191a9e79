"""Neuron norms: the distribution of neuron norms per layer for parents and their fused or pruned model, and what
Neuron Transplantation and Intra-Fusion kept."""

import pandas as pd
import streamlit as st

from analysis.fusion_figures import head_norms_figure, neuron_norms_figure, survival_figure
from analysis.norms import neuron_norms
from fusion.data import load_dataset
from fusion.registry import FusionReport
from fusion.workspace import ModelRecord
from studies.pipeline import parent_role
from studies.runs import model_role
from ui.charts import show_chart, show_table
from ui.errors import report_errors
from ui.state import models_or_stop, selected_model_ids

st.title("Neuron norms")
st.caption(
    "Incoming norm: the L2 norm of a neuron's incoming weights; outgoing: of the next layers' weights that read it. "
    "Neuron Transplantation keeps the largest neurons of the concatenated ensemble and sacrifices the small ones."
)
ws, records, by_id = models_or_stop()
derived = [r.id for r in records if r.parents]
selected = [i for i in selected_model_ids() if i in by_id]
start = next((i for i in selected if i in derived), derived[0] if derived else records[0].id)
model_id = st.selectbox(
    "Model (its parents are shown beside it)",
    list(by_id),
    index=list(by_id).index(start),
    format_func=lambda i: f"{by_id[i].name} ({i})",
    key="norms.model",
)
record = by_id[model_id]
parents = [by_id.get(p) for p in record.parents]
# a fused model's inputs are its parents A, B...; a fine-tuned model's source keeps its own role (fused, pruned...)
parent_roles = [
    model_role(p, k) if record.method == "finetune" and p is not None else parent_role(k) for k, p in enumerate(parents)
]
family: dict[str, ModelRecord] = {}
for role, member in [*zip(parent_roles, parents), (model_role(record, 0), record)]:
    if member is not None:
        family[role if role not in family else f"{role} · {member.name}"] = member
side = st.radio("Norm", ["incoming", "outgoing"], horizontal=True, key="norms.side")

with report_errors():
    example = load_dataset(record.dataset).x_test[:2]
    norms = {label: neuron_norms(ws.load(r.id)[0], example) for label, r in family.items()}
    show_chart(neuron_norms_figure(norms, side), f"norms-{side}-{model_id}")
    if any((g.heads or 1) > 1 for groups in norms.values() for g in groups):
        st.subheader("Attention heads")
        st.caption(
            "A head's norm pools its dimensions (query and key rows for the query/key group, value rows and the output "
            "projection's columns for the value group). Heads move, merge and are pruned whole."
        )
        show_chart(head_norms_figure(norms, side), f"head-norms-{side}-{model_id}")

with report_errors():
    stored = record.provenance.get("report")
    report = FusionReport.from_dict(stored) if stored is not None else None
    tables = report.survival() if report is not None else []
    if report is not None and tables:
        st.subheader(report.details.survival_heading)
        if len(parents) > 1:
            kept = [
                {"group": t.group, **{parent_roles[p]: n for p, n in sorted(t.kept_per_parent().items())}}
                for t in tables
            ]
            show_table(pd.DataFrame(kept), f"kept-neurons-{model_id}")
        group = st.selectbox("Neuron group", [t.group for t in tables], key="norms.survival.group")
        table = next(t for t in tables if t.group == group)
        show_chart(survival_figure(table, parent_roles), f"survival-{model_id}-{group}")
