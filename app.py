"""FusionLab's entry point: ``streamlit run app.py``. Builds the navigation and the sidebar every page shares."""

import streamlit as st

from ui.sidebar import draw_sidebar

st.set_page_config(page_title="FusionLab", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/models.py", title="Models", icon=":material/view_list:"),
    st.Page("pages/fuse.py", title="Fuse", icon=":material/merge:"),
    st.Page("pages/transport_maps.py", title="Transport maps", icon=":material/grid_on:"),
    st.Page("pages/neuron_norms.py", title="Neuron norms", icon=":material/bar_chart:"),
    st.Page("pages/loss_landscape.py", title="Loss landscape", icon=":material/landscape:"),
    st.Page("pages/hessian.py", title="Hessian", icon=":material/functions:"),
]

page = st.navigation(PAGES)
draw_sidebar()
page.run()
