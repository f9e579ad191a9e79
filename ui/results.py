"""Stored results on a page: which settings' results a page shows (those of its form by default, or any other stored
settings the person picks), and the table of every stored result of the chosen models with its key, settings, time
and command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from fusion.results import ResultRecord
from ui.charts import show_table

FORM = "the settings in the form"


def settings_id(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def pick_settings(
    key: str,
    form: Mapping[str, Any] | None,
    stored: Sequence[ResultRecord],
    identity: Callable[[ResultRecord], dict[str, Any]],
    describe: Callable[[Mapping[str, Any]], str],
) -> dict[str, Any] | None:
    """A choice between the form's settings and every other settings of the ``stored`` records (the newest first);
    ``identity`` gives a record's settings in the form's terms, ``describe`` says them in words. Returns the chosen
    settings (``None``: the form's, when they do not parse)."""
    choices: dict[str, tuple[dict[str, Any] | None, str]] = {}
    if form is not None:
        choices[settings_id(form)] = (dict(form), f"{FORM} ({describe(form)})")
    for record in stored:
        settings = identity(record)
        choices.setdefault(settings_id(settings), (settings, f"{describe(settings)} · stored {record.created[:16]}"))
    if len(choices) <= 1:
        return next(iter(choices.values()))[0] if choices else None
    names = list(choices)
    if st.session_state.get(key) not in names:
        st.session_state.pop(key, None)
    chosen = st.selectbox(
        "Show the results of",
        names,
        format_func=lambda name: choices[name][1],
        key=key,
        help="Every run is stored under the hash of its models and settings; another setting adds a result and "
        "replaces none. Pick any stored settings to show their results.",
    )
    return choices[chosen][0]


def show_stored_results(
    stored: Mapping[str, Sequence[ResultRecord]], describe: Callable[[ResultRecord], str], slug: str
) -> None:
    """A table of every stored result of the models in ``stored`` (model id → its records, the newest first)."""
    rows = [
        {
            "model": model_id,
            "result": record.key,
            "settings": describe(record),
            "created (UTC)": record.created[:19].replace("T", " "),
            "seconds": record.seconds,
            "code": record.code,
            "command": record.command or "",
        }
        for model_id, records in stored.items()
        for record in records
    ]
    if rows:
        with st.expander(f"Stored results ({len(rows)})"):
            show_table(
                pd.DataFrame(rows), slug, column_config={"seconds": st.column_config.NumberColumn(format="%.1f")}
            )
