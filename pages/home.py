"""Home: what FusionLab does, the device and workspace, and the demo ensemble in one click."""

import streamlit as st

from fusion.device import describe_device
from fusion.pipeline import build_demo_ensemble, demo_members, vit_demo_members
from ui.job_view import inputs_disabled, show_job, start_job
from ui.state import device, job_runner, workspace, workspace_models
from ui.tables import show_models_table

DEMO_KIND = "demo-ensemble"
VIT_KIND = "demo-vits"

st.title("FusionLab")
st.markdown(
    "FusionLab fuses trained neural networks into one: **OT fusion** aligns neurons with optimal transport before "
    "averaging, **Neuron Transplantation** keeps the largest neurons of an ensemble, **CLAFusion** fuses networks of "
    "different depths, and **Intra-Fusion** merges neurons inside one network. Then it shows why a fusion works: "
    "transport maps, neuron norms, loss landscapes and Hessian spectra."
)

ws = workspace()
records = workspace_models(ws)
with st.container(border=True):
    st.markdown(
        f"**Device:** {describe_device(device())}  \n"
        f"**Workspace:** `{ws.root}` · {len(records)} model{'' if len(records) == 1 else 's'}"
    )

st.subheader("Demo ensemble")
members = demo_members()
with st.form("demo-ensemble", border=True):
    mlps = sum(m.spec.arch == "mlp" for m in members)
    st.markdown(
        f"Trains {mlps} MLPs ({members[0].spec.describe()}) and {len(members) - mlps} small CNNs "
        f"({members[-1].spec.describe()}) with different seeds on the offline 8x8 digits dataset: about six seconds "
        "of training on a 2-core CPU, and everything the other pages need. Models already built are reused."
    )
    build = st.form_submit_button("Build the demo ensemble", type="primary", disabled=inputs_disabled())
if build:
    start_job("Build the demo ensemble", build_demo_ensemble, ws, device=device(), kind=DEMO_KIND)
show_job(job_runner().latest(DEMO_KIND))

vits = vit_demo_members()
with st.form("demo-vits", border=True):
    st.markdown(
        f"Trains {len(vits)} Vision Transformers ({vits[0].spec.describe()}: 4 blocks of 4-head attention, 136k "
        "parameters) with different seeds on the same digits: about a minute each on a 2-core CPU. Fuse and compare "
        "them like the CNNs: their attention heads are aligned whole."
    )
    build_vits = st.form_submit_button("Build the ViT pair", disabled=inputs_disabled())
if build_vits:
    start_job("Build the ViT pair", build_demo_ensemble, ws, members=vits, device=device(), kind=VIT_KIND)
show_job(job_runner().latest(VIT_KIND))

st.subheader("Models")
show_models_table(records)
