"""What every page shares: the workspace, the device, the job runner and the model selection.

Server-wide objects live in ``st.cache_resource``: the workspace is keyed on its root path (so a different
``FUSIONLAB_WORKSPACE`` gets its own), the job runner is one per server. Per-browser-session state lives in
``st.session_state`` under plain keys that no widget owns, because Streamlit drops a widget's key when a page without
that widget runs, and the selection must survive page switches.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import streamlit as st
import torch

from fusion.device import default_device
from fusion.workspace import ModelRecord, Workspace, default_root
from ui.jobs import JobRunner
from ui.tables import escape_markdown

SELECTED_MODELS_KEY = "fusionlab.selected_model_ids"
"""``st.session_state[SELECTED_MODELS_KEY]``: the ids of the models the user is working with, in the order chosen."""


def workspace_root() -> Path:
    """The workspace root: ``FUSIONLAB_WORKSPACE`` or ``~/.fusionlab/workspace``, as an absolute path."""
    return default_root().expanduser().resolve()


@st.cache_resource(show_spinner=False)
def open_workspace(root: str) -> Workspace:
    """The workspace at ``root``, opened once per server and root."""
    return Workspace(root)


def workspace() -> Workspace:
    return open_workspace(str(workspace_root()))


def device() -> torch.device:
    """The device every job runs on (``FUSIONLAB_DEVICE`` overrides the automatic choice)."""
    return default_device()


def release_job_runner(runner: JobRunner) -> None:
    runner.shutdown()


@st.cache_resource(show_spinner=False, on_release=release_job_runner)
def job_runner() -> JobRunner:
    """The server's single job runner (one worker thread, so two jobs never overlap on the device)."""
    return JobRunner()


def selected_model_ids() -> list[str]:
    """The shared model selection of this browser session (ids, possibly of models deleted since)."""
    return list(st.session_state.get(SELECTED_MODELS_KEY, []))


def select_models(model_ids: Iterable[str]) -> None:
    """Replace the shared model selection (duplicates dropped, order kept)."""
    st.session_state[SELECTED_MODELS_KEY] = list(dict.fromkeys(model_ids))


def workspace_models(ws: Workspace) -> list[ModelRecord]:
    """The loadable models of ``ws``, oldest first, after one warning that names each broken entry and its reason
    (every page that lists models calls this, so a broken entry is never hidden and never stops a page)."""
    scan = ws.scan()
    if scan.broken:
        entries = "\n".join(f"- **{escape_markdown(b.id)}**: {escape_markdown(b.reason)}" for b in scan.broken)
        plural = "y" if len(scan.broken) == 1 else "ies"
        st.warning(
            f"{len(scan.broken)} workspace entr{plural} cannot be loaded and are left out:\n{entries}",
            icon=":material/warning:",
        )
    return list(scan.records)


def models_or_stop() -> tuple[Workspace, list[ModelRecord], dict[str, ModelRecord]]:
    """The workspace, its models newest first (after the warning of :func:`workspace_models`), and the same by id;
    a page with no models to show stops here with a hint on how to get some."""
    ws = workspace()
    records = list(reversed(workspace_models(ws)))
    if not records:
        st.info("The workspace has no models yet: build the demo ensemble on the Home page, or train some on Models.")
        st.stop()
    return ws, records, {r.id: r for r in records}
