"""Transport maps: per neuron group, the map that aligned a parent to the reference, beside its ground cost."""

import streamlit as st

from analysis.fusion_figures import transport_map_figure
from analysis.maps import head_map, stored_heads, summarise
from studies.stored_maps import stored_maps
from ui.charts import show_chart, show_table
from ui.state import selected_model_ids, workspace, workspace_models
from ui.tables import dashed_table

MAPPED_METHODS = ("ot", "matching", "cla", "intra")

st.title("Transport maps")
st.caption(
    "Rows are the aligned model's neurons, sorted by the reference neuron they are sent to, so a permutation reads "
    "as a diagonal. Soft maps (Sinkhorn, unequal widths, Intra-Fusion's merges) spread mass over several targets."
)
ws = workspace()
fused = [r for r in reversed(workspace_models(ws)) if r.method in MAPPED_METHODS]
if not fused:
    st.info(
        "No model fused with transport maps yet: run OT fusion, matching, CLAFusion or Intra-Fusion on the Fuse page."
    )
    st.stop()
by_id = {r.id: r for r in fused}
selected = [i for i in selected_model_ids() if i in by_id]
model_id = st.selectbox(
    "Fused model",
    list(by_id),
    index=list(by_id).index(selected[0]) if selected else 0,
    format_func=lambda i: f"{by_id[i].name} ({i})",
    key="maps.model",
)
maps = stored_maps(ws, model_id)
if not maps:
    st.warning("This model was saved without transport maps.")
    st.stop()
names = {
    "model": "parent",
    "permutation_distance": "distance from a permutation",
    "moved": "neurons moved",
    "total_cost": "total cost <T, C>",
}
summary, column_config = dashed_table(
    [{names.get(k, k): v for k, v in summarise(m).to_dict().items()} for m in maps],
    {"distance from a permutation": "%.4f", "total cost <T, C>": "%.4g"},
)
show_table(summary, f"transport-summary-{model_id}", column_config=column_config)
st.caption(
    "Rows in network order. n·T: the plan times the number of the aligned model's neurons, so each entry of a "
    "permutation is 1; neurons moved: – where the widths differ (no identity to compare with)."
)
parents = sorted({m.model for m in maps})
left, right = st.columns(2)
parent = left.selectbox(
    "Aligned parent",
    parents,
    format_func=lambda k: f"parent {k} ({by_id[model_id].parents[k] if k < len(by_id[model_id].parents) else 'self'})",
    key="maps.parent",
)
groups = [m for m in maps if m.model == parent]
group = right.selectbox("Neuron group", [m.group for m in groups], key="maps.group")
chosen = next(m for m in groups if m.group == group)
heads = stored_heads(by_id[model_id].provenance.get("report", {})).get(group, 1)
if heads > 1 and st.radio("Show", ["whole heads", "dimensions"], horizontal=True, key="maps.heads") == "whole heads":
    st.caption(
        f"{group} has {heads} attention heads: heads are matched whole, so each source head sends all its mass to one "
        "reference head; the dimensions view shows the map inside each matched pair."
    )
    chosen = head_map(chosen, heads)
show_chart(transport_map_figure(chosen), f"transport-{model_id}-{parent}-{chosen.group}")
