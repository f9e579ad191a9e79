"""Uploads and downloads of checkpoints.

An upload is written to a temporary file whose name is chosen here, never the browser's, and read with the
workspace's safe reader (safetensors, or ``torch.load(weights_only=True)``): a pickle that carries code is refused.
The imported model is evaluated on its dataset's test split; if anything fails after the import, the model is
removed again, so a bad upload leaves the workspace as it was.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fusion.data import load_dataset
from fusion.errors import ArchitectureError, CheckpointError, ConfigError
from fusion.train import evaluate
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
    """Import uploaded checkpoint bytes into ``workspace``, evaluate the model, store its test metrics.

    ``options`` and ``dataset`` describe a plain state_dict; a FusionLab export carries both in its metadata (a given
    ``dataset`` then overrides the exported one). ``filename`` is only recorded in the provenance.

    Raises :class:`fusion.errors.FusionError` (nothing is left in the workspace) when the bytes are not a checkpoint,
    carry code, hold NaNs, do not fit the architecture, or the dataset is unavailable.
    """
    if not content:
        raise CheckpointError(f"{filename or 'the upload'} is empty, not a checkpoint")
    spec = None
    if options is not None:
        if dataset is None:
            raise ConfigError("a plain state_dict needs a dataset: choose the one the model was trained on")
        data = load_dataset(dataset)
        spec = options.build(data.input_shape, data.num_classes)
    with tempfile.TemporaryDirectory(prefix="fusionlab-upload-") as folder:
        path = Path(folder) / UPLOAD_NAME
        path.write_bytes(content)
        try:
            model, record = workspace.import_checkpoint(path, spec=spec, dataset=dataset, name=name or None)
        except CheckpointError as exc:
            shown = Path(filename).name[:MAX_SOURCE_NAME] or "the upload"
            raise CheckpointError(str(exc).replace(UPLOAD_NAME, shown)) from exc
    try:
        data = load_dataset(record.dataset)
        if (record.spec.input_shape, record.spec.num_classes) != (data.input_shape, data.num_classes):
            raise ArchitectureError(
                f"the model takes inputs {record.spec.input_shape} with {record.spec.num_classes} classes; "
                f"{data.name} has {data.input_shape} and {data.num_classes}"
            )
        metrics = evaluate(model, *data.split("test"), device=device)
        source = record.provenance.get("source")
        if source == UPLOAD_NAME:
            source = f"upload: {Path(filename).name[:MAX_SOURCE_NAME]}"
        return workspace.update(
            record.id,
            metrics={**record.metrics, "test_accuracy": metrics.accuracy, "test_loss": metrics.loss},
            provenance={**record.provenance, "source": source},
        )
    except BaseException:
        workspace.delete(record.id)
        raise


def export_bytes(workspace: Workspace, model_id: str) -> bytes:
    """The model as one safetensors file (weights plus its metadata in the header), as bytes for a download."""
    with tempfile.TemporaryDirectory(prefix="fusionlab-export-") as folder:
        return workspace.export(model_id, Path(folder) / "model.safetensors").read_bytes()
