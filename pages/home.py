"""Home: what FusionLab does, the device and workspace, and the demo ensemble in one click."""

import streamlit as st
import torch

from fusion.device import describe_device
from studies.pipeline import build_demo_ensemble, demo_members, vit_demo_members
from studies.runs import demo_build_cost
from ui.job_view import show_job, start_job
from ui.state import device, job_runner, workspace, workspace_models
from ui.tables import show_models_table

DEMO_KIND = "demo-ensemble"
VIT_KIND = "demo-vits"


@st.cache_data(show_spinner="Timing a few training steps…", max_entries=4, ttl=600)
def demo_training_time(device_name: str) -> str:
    """The training time of the whole demo ensemble on ``device_name``, estimated from a few timed steps
    (:func:`studies.runs.demo_build_cost`) at most every ten minutes, as the machine's load changes:
    ``"about 20 s (14-30 s)"``."""
    return demo_build_cost(device=torch.device(device_name)).describe_seconds()


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
        f"({members[-1].spec.describe()}) with different seeds on the offline 8x8 digits dataset: "
        f"{demo_training_time(str(device()))} of training on this machine (a few steps timed here), and everything the "
        "other pages need. Models already built are reused."
    )
    build = st.form_submit_button("Build the demo ensemble", type="primary")
if build:
    start_job("Build the demo ensemble", build_demo_ensemble, ws, device=device(), kind=DEMO_KIND)
show_job(job_runner().latest(DEMO_KIND))

vits = vit_demo_members()
with st.form("demo-vits", border=True):
    st.markdown(
        f"Trains {len(vits)} Vision Transformers ({vits[0].spec.describe()}: 4 blocks of 4-head attention, 136k "
        f"parameters) with different seeds on the same digits, {vits[0].config.epochs} epochs each. Fuse and compare "
        "them like the CNNs: their attention heads are aligned whole."
    )
    build_vits = st.form_submit_button("Build the ViT pair")
if build_vits:
    start_job("Build the ViT pair", build_demo_ensemble, ws, members=vits, device=device(), kind=VIT_KIND)
show_job(job_runner().latest(VIT_KIND))

st.subheader("Models")
show_models_table(records)
