"""Uploads and downloads of checkpoints.

An upload is written to a temporary file whose name is chosen here, never the browser's, and read with the
workspace's safe reader (safetensors, or ``torch.load(weights_only=True)``): a pickle that carries code is refused.
The imported model is evaluated on its dataset's test split (stored "not evaluated" when the dataset is not on this
machine, :func:`studies.pipeline.import_and_evaluate`); if anything fails after the import, the model is removed again,
so a bad upload leaves the workspace as it was.

The page holds an upload in the session (:func:`checkpoint_upload`) from the moment it arrives until it is imported or
removed: Streamlit's uploader forgets its file whenever the widget is re-created or not drawn for one run.
"""

from __future__ import annotations

import tempfile
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from fusion.data import dataset_signature
from fusion.errors import CheckpointError, ConfigError
from fusion.workspace import ModelRecord, Workspace
from studies.pipeline import import_and_evaluate
from ui.tables import escape_markdown
from ui.training import SpecOptions

UPLOAD_NAME = "uploaded-checkpoint"
MAX_SOURCE_NAME = 120
SIZE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


@dataclass(frozen=True)
class HeldUpload:
    """A checkpoint as the browser sent it: its file name (shown and recorded, never used as a path) and its bytes."""

    name: str
    content: bytes

    def describe(self) -> str:
        """``name (size)``, e.g. ``resnet.pt (44.8 MB)``."""
        return f"{self.name} ({file_size(len(self.content))})"


def file_size(size: int) -> str:
    """A byte count in decimal units with one decimal, as file browsers show it: ``44.8 MB``, ``512 bytes``."""
    for unit_size, unit in SIZE_UNITS:
        if size >= unit_size:
            return f"{size / unit_size:.1f} {unit}"
    return f"{size} bytes"


def hold_upload(state: MutableMapping[str, Any], widget_key: str, held_key: str) -> None:
    """Move the file of the uploader ``widget_key`` into ``state[held_key]`` once, when it arrives; the bytes are
    shared with the uploader's copy, not duplicated. An emptied uploader leaves what is held alone: only
    :func:`checkpoint_upload`'s Remove drops it."""
    uploaded = state.get(widget_key)
    if uploaded is not None:
        state[held_key] = HeldUpload(Path(uploaded.name).name[:MAX_SOURCE_NAME], uploaded.getvalue())


def checkpoint_upload(key: str, types: Sequence[str]) -> HeldUpload | None:
    """The held upload as one line, "Uploaded: name (size)" with a Remove button, or an uploader while none is held.

    The file is held under ``{key}.held`` from the uploader's change until Remove or :func:`forget_upload`, so it
    survives every change of the form around it, a page switch, and a running job (uploading needs no compute, so
    neither control is disabled then)."""
    held_key = f"{key}.held"
    held = st.session_state.get(held_key)
    if held is None:
        st.file_uploader(
            "Checkpoint", type=list(types), key=key, on_change=hold_upload, args=(st.session_state, key, held_key)
        )
        return None
    text_column, button_column = st.columns([4, 1], vertical_alignment="center")
    text_column.markdown(f"Uploaded: **{escape_markdown(held.describe())}**")
    button_column.button("Remove", key=f"{key}.remove", on_click=forget_upload, args=(key,), icon=":material/close:")
    return held


def forget_upload(key: str) -> None:
    """Drop the upload held by :func:`checkpoint_upload` under ``key`` (after it is imported, or on Remove)."""
    st.session_state.pop(f"{key}.held", None)


def import_upload(
    workspace: Workspace,
    content: bytes,
    filename: str,
    options: SpecOptions | None = None,
    dataset: str | None = None,
    name: str | None = None,
    device: torch.device | None = None,
) -> ModelRecord:
    """Import uploaded checkpoint bytes into ``workspace``, evaluate the model, store its test metrics (none when its
    dataset is not on this machine: the model is then stored "not evaluated").

    ``options`` and ``dataset`` describe a plain state_dict; a FusionLab export carries both in its metadata (a given
    ``dataset`` then overrides the exported one). ``filename`` is only recorded in the provenance.

    Raises :class:`fusion.errors.FusionError` (nothing is left in the workspace) when the bytes are not a checkpoint,
    carry code, hold NaNs, or do not fit the architecture or the dataset's input shape and classes.
    """
    if not content:
        raise CheckpointError(f"{filename or 'the upload'} is empty, not a checkpoint")
    spec = None
    if options is not None:
        if dataset is None:
            raise ConfigError("a plain state_dict needs a dataset: choose the one the model was trained on")
        spec = options.build(*dataset_signature(dataset))
    with tempfile.TemporaryDirectory(prefix="fusionlab-upload-") as folder:
        path = Path(folder) / UPLOAD_NAME
        path.write_bytes(content)
        try:
            record = import_and_evaluate(workspace, path, spec, dataset, name or None, device=device).record
        except CheckpointError as exc:
            shown = Path(filename).name[:MAX_SOURCE_NAME] or "the upload"
            raise CheckpointError(str(exc).replace(UPLOAD_NAME, shown)) from exc
    try:
        source = record.provenance.get("source")
        if source == UPLOAD_NAME:
            source = f"upload: {Path(filename).name[:MAX_SOURCE_NAME]}"
        return workspace.update(record.id, provenance={**record.provenance, "source": source})
    except BaseException:
        workspace.delete(record.id)
        raise


def export_bytes(workspace: Workspace, model_id: str) -> bytes:
    """The model as one safetensors file (weights plus its metadata in the header), as bytes for a download."""
    with tempfile.TemporaryDirectory(prefix="fusionlab-export-") as folder:
        return workspace.export(model_id, Path(folder) / "model.safetensors").read_bytes()
