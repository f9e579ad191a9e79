"""Uploads and downloads of checkpoints.

An upload is written to a temporary file whose name is chosen here, never the browser's, and read with the
workspace's safe reader (safetensors, or ``torch.load(weights_only=True)``): a pickle that carries code is refused.
The imported model is evaluated on its dataset's test split (stored "not evaluated" when the dataset is not on this
machine, :func:`fusion.pipeline.import_and_evaluate`); if anything fails after the import, the model is removed again,
so a bad upload leaves the workspace as it was.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fusion.data import dataset_signature
from fusion.errors import CheckpointError, ConfigError
from fusion.pipeline import import_and_evaluate
from fusion.workspace import ModelRecord, Workspace
from ui.training import SpecOptions

UPLOAD_NAME = "uploaded-checkpoint"
MAX_SOURCE_NAME = 120


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
