"""Figures on a page: drawn with plotly and offered as a self-contained interactive HTML download."""

from __future__ import annotations

import re

import plotly.graph_objects as go
import streamlit as st


def figure_html(figure: go.Figure) -> bytes:
    """The figure as a standalone HTML page that embeds plotly.js, so it opens offline."""
    return figure.to_html(include_plotlyjs=True, full_html=True).encode()


def show_chart(figure: go.Figure, name: str) -> None:
    """Draw ``figure`` full width with a download button for its interactive HTML, named after ``name``."""
    st.plotly_chart(figure, width="stretch")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "figure"
    st.download_button(
        "Download figure (HTML)",
        data=lambda: figure_html(figure),
        file_name=f"{slug}.html",
        mime="text/html",
        key=f"chart.download.{slug}",
        on_click="ignore",
        icon=":material/download:",
    )
