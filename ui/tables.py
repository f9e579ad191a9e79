"""Tables of workspace models, the same columns and number formats on every page."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd
import streamlit as st

from analysis.units import percent
from fusion.workspace import ModelRecord
from studies.pipeline import NOT_EVALUATED

SUMMARY_COLUMNS = ("name", "id", "architecture", "test accuracy (%)", "parameters")
DETAILED_COLUMNS = (
    "id",
    "name",
    "architecture",
    "dataset",
    "method",
    "parameters",
    "test accuracy (%)",
    "test loss",
    "created",
)

MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def escape_markdown(text: str) -> str:
    """``text`` shown literally by ``st.markdown`` (model names come from users and uploaded files)."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def model_rows(records: Sequence[ModelRecord]) -> pd.DataFrame:
    """One row per model with every column a table may show; accuracy in percent, missing metrics as NaN."""
    rows = [
        {
            "id": r.id,
            "name": r.name,
            "architecture": r.spec.describe(),
            "dataset": r.dataset,
            "method": r.method,
            "parameters": r.parameters,
            "test accuracy (%)": percent(r.metrics.get("test_accuracy", float("nan"))),
            "test loss": r.metrics.get("test_loss", float("nan")),
            "created": r.created.replace("T", " ").removesuffix("+00:00"),
        }
        for r in records
    ]
    return pd.DataFrame(rows, columns=list(DETAILED_COLUMNS))


SCORE_FORMATS = {"test accuracy (%)": "%.1f", "test loss": "%.4f"}


def marked_not_evaluated(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (:func:`model_rows`) whose scores read "not evaluated" for a model stored without test metrics (its
    dataset was not on disk); such a column becomes text, its numbers formatted as the numeric column shows them."""
    rows = rows.copy()
    for column, text in SCORE_FORMATS.items():
        if column in rows and rows[column].isna().any():
            rows[column] = [NOT_EVALUATED if pd.isna(v) else text % v for v in rows[column]]
    return rows


def show_models_table(records: Sequence[ModelRecord], detailed: bool = False) -> None:
    """The models as a read-only table: name, architecture, accuracy, parameters (plus id, dataset, method, loss and
    creation time when ``detailed``); a model stored without test metrics reads "not evaluated". An empty workspace
    shows a hint instead.
    """
    if not records:
        st.info("The workspace has no models yet. Build the demo ensemble on the Home page or train some on Models.")
        return
    columns = DETAILED_COLUMNS if detailed else SUMMARY_COLUMNS
    rows = marked_not_evaluated(model_rows(records)[list(columns)])
    config = {
        "parameters": st.column_config.NumberColumn("parameters", format="localized"),
        "created": st.column_config.TextColumn("created (UTC)"),
    }
    for column, text in SCORE_FORMATS.items():
        if column in rows and pd.api.types.is_numeric_dtype(rows[column]):
            config[column] = st.column_config.NumberColumn(column, format=text)
    st.dataframe(rows, hide_index=True, width="stretch", column_config=config)


def dashed_table(records: Sequence[dict], formats: dict[str, str]) -> tuple[pd.DataFrame, dict]:
    """A table of ``records`` whose missing values read "–" (Streamlit writes "None"), and its column config.

    A column without missing values stays numeric, shown with its ``formats`` entry (a printf format, or
    ``localized``); a column with one becomes text, its numbers formatted the same way."""
    frame = pd.DataFrame(list(records))
    config = {}
    for column in frame.columns:
        missing = frame[column].isna()
        spec = formats.get(column)
        if missing.any():
            text = "{:,}" if spec == "localized" else "{}" if spec is None else "{:" + spec.lstrip("%") + "}"
            frame[column] = ["–" if gap else text.format(v) for v, gap in zip(frame[column], missing)]
        elif spec is not None:
            config[column] = st.column_config.NumberColumn(format=spec)
    return frame, config


def dashed_numbers(records: Sequence[dict]) -> tuple[pd.DataFrame, dict]:
    """:func:`dashed_table` with every number column at four significant digits (a table whose columns are not
    known in advance, such as a sweep's)."""
    numbers = {key for row in records for key, value in row.items() if isinstance(value, float)}
    return dashed_table(records, {key: "%.4g" for key in numbers})


def relative_change(before: float, after: float) -> str:
    """``"(53 % lower)"`` or ``"(12 % higher)"``: how far ``after`` is from a positive ``before``; ``"(no baseline)"``
    otherwise."""
    if not before > 0:
        return "(no baseline)"
    change = 100 * (after - before) / before
    return f"({abs(change):.0f} % {'higher' if change > 0 else 'lower'})"


def labelled_accuracy(record: ModelRecord) -> str:
    """``NAME · 93.4% (ID)`` for a model picker, ``NAME · not evaluated (ID)`` for a model without test metrics."""
    accuracy = percent(record.metrics.get("test_accuracy"))
    shown = f"{accuracy:.1f}%" if accuracy is not None else "not evaluated"
    return f"{record.name} · {shown} ({record.id})"
