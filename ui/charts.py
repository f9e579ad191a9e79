"""Figures and tables on a page, each with its downloads: a figure as interactive HTML and its data as CSV and JSON
(:func:`analysis.figures.figure_rows`), a table as CSV and JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.figures import figure_rows, plain
from analysis.rows import csv_bytes
from analysis.units import SCIENTIFIC, is_small_figure

MIMES = {"html": "text/html", "csv": "text/csv", "json": "application/json"}


def figure_html(figure: go.Figure) -> bytes:
    """The figure as a standalone HTML page that embeds plotly.js, so it opens offline."""
    return figure.to_html(include_plotlyjs=True, full_html=True).encode()


def slug_of(name: str, fallback: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or fallback


def rows_json(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps([{k: plain(v) for k, v in row.items()} for row in rows], indent=1, ensure_ascii=False).encode()


def download(column: Any, label: str, data: Callable[[], bytes], slug: str, kind: str, key: str) -> None:
    """A download button in ``column`` for ``data()`` (made on click) as ``slug.kind``."""
    column.download_button(
        label,
        data=data,
        file_name=f"{slug}.{kind}",
        mime=MIMES[kind],
        key=key,
        on_click="ignore",
        icon=":material/download:",
    )


def show_chart(figure: go.Figure, name: str) -> None:
    """Draw ``figure`` full width with downloads of its interactive HTML and of its data (CSV, JSON), named after
    ``name``."""
    st.plotly_chart(figure, width="stretch")
    slug = slug_of(name, "figure")
    html, csv, data = st.columns(3)
    download(html, "Figure (HTML)", lambda: figure_html(figure), slug, "html", f"chart.download.{slug}")
    download(csv, "Data (CSV)", lambda: csv_bytes(figure_rows(figure)), slug, "csv", f"chart.csv.{slug}")
    download(data, "Data (JSON)", lambda: rows_json(figure_rows(figure)), slug, "json", f"chart.json.{slug}")


def show_table(frame: pd.DataFrame, name: str, **options: Any) -> None:
    """``st.dataframe(frame, **options)`` (no index, full width unless given) with CSV and JSON downloads of the
    rows as they are, named after ``name``. A number column of residuals, spreads or errors shows in scientific
    notation (:data:`analysis.units.SCIENTIFIC`) unless ``column_config`` formats it."""
    small = {
        column: st.column_config.NumberColumn(format=SCIENTIFIC)
        for column in frame.columns
        if is_small_figure(str(column)) and pd.api.types.is_numeric_dtype(frame[column])
    }
    options["column_config"] = small | (options.get("column_config") or {})
    st.dataframe(frame, **{"hide_index": True, "width": "stretch", **options})
    slug = slug_of(name, "table")
    rows = frame.to_dict(orient="records")
    csv, data = st.columns(2)
    download(csv, "Table (CSV)", lambda: csv_bytes(rows), slug, "csv", f"table.csv.{slug}")
    download(data, "Table (JSON)", lambda: rows_json(rows), slug, "json", f"table.json.{slug}")


def show_command(text: str) -> None:
    """Command lines (``text``, one a line) in a box with a copy button, their lines wrapped so that a long command
    reads whole inside the box at any width."""
    st.code(text, language="bash", wrap_lines=True)
