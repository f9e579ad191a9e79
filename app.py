"""FusionLab's entry point: ``streamlit run app.py``. Builds the navigation and the sidebar every page shares."""

import os

import streamlit as st
import torch

from ui.sidebar import draw_sidebar

st.set_page_config(page_title="FusionLab", layout="wide")
if not torch.cuda.is_available():
    # One core stays with the Streamlit server, so the page keeps answering while a CPU job computes.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/transplant_demo.py", title="Neuron Transplantation demo", icon=":material/school:"),
    st.Page("pages/models.py", title="Models", icon=":material/view_list:"),
    st.Page("pages/fuse.py", title="Fuse", icon=":material/merge:"),
    st.Page("pages/transport_maps.py", title="Transport maps", icon=":material/grid_on:"),
    st.Page("pages/neuron_norms.py", title="Neuron norms", icon=":material/bar_chart:"),
    st.Page("pages/loss_landscape.py", title="Loss landscape", icon=":material/landscape:"),
    st.Page("pages/hessian.py", title="Hessian", icon=":material/functions:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/table_chart:"),
    st.Page("pages/study.py", title="Generalization study", icon=":material/science:"),
    st.Page("pages/sweeps.py", title="Sweeps", icon=":material/dynamic_feed:"),
]

page = st.navigation(PAGES)
draw_sidebar()
page.run()
