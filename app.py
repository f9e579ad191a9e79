"""FusionLab's entry point: ``streamlit run app.py``. Builds the navigation and the sidebar every page shares."""

import streamlit as st

from ui.sidebar import draw_sidebar

st.set_page_config(page_title="FusionLab", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/models.py", title="Models", icon=":material/view_list:"),
]

page = st.navigation(PAGES)
draw_sidebar()
page.run()
