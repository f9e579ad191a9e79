"""Models and results on disk.

Layout under the workspace root::

    models/<id>/model.safetensors   the state_dict (safetensors: loading never executes code)
    models/<id>/meta.json           a :class:`ModelRecord`: spec, dataset, normalisation, seed, metrics, provenance
    models/<id>/results/<kind>.json analyses computed for the model (Hessian spectra, ...)

Writes are atomic: a model is written into ``.staging/`` and moved into place with one ``rename``, a JSON file is
written beside its target and ``os.replace``-d over it, so an interrupted save leaves either the old state or the new
one, never half a model. The root is ``--workspace`` / ``FUSIONLAB_WORKSPACE`` / ``~/.fusionlab/workspace``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from fusion.data import DATASETS, Normalization, dataset_normalization
from fusion.errors import ArchitectureError, CheckpointError, DatasetError, WorkspaceError
from fusion.models import ModelSpec, build_model, parameter_count

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}$")
METADATA_KEY = "fusionlab"


@dataclass(frozen=True)
class ModelRecord:
    """What the workspace knows about one model.

    ``provenance`` says where it came from: ``{"method": "train", "options": {...}}`` for a trained model,
    ``{"method": "ot", "parents": [ids], "options": {...}}`` for a fused one, ``{"method": "import", ...}``.
    ``metrics`` holds at least ``test_accuracy`` (a fraction) and ``test_loss`` once evaluated.
    """

    id: str
    name: str
    spec: ModelSpec
    dataset: str
    normalization: Normalization
    seed: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    parameters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "spec": self.spec.to_dict(),
            "dataset": self.dataset,
            "normalization": self.normalization.to_dict(),
            "seed": self.seed,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "created": self.created,
            "parameters": self.parameters,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelRecord":
        try:
            return cls(
                id=str(data["id"]),
                name=str(data.get("name", data["id"])),
                spec=ModelSpec.from_dict(dict(data["spec"])),
                dataset=str(data["dataset"]),
                normalization=Normalization(tuple(data["normalization"]["mean"]), tuple(data["normalization"]["std"])),
                seed=data.get("seed"),
                metrics={k: float(v) for k, v in dict(data.get("metrics", {})).items()},
                provenance=dict(data.get("provenance", {})),
                created=str(data.get("created", "")),
                parameters=int(data.get("parameters", 0)),
            )
        except (KeyError, TypeError, ValueError, ArchitectureError) as exc:
            raise CheckpointError(f"invalid model metadata: {exc}") from exc

    @property
    def method(self) -> str:
        return str(self.provenance.get("method", "train"))

    @property
    def parents(self) -> list[str]:
        return list(self.provenance.get("parents", []))


def default_root() -> Path:
    return Path(os.environ.get("FUSIONLAB_WORKSPACE", Path.home() / ".fusionlab" / "workspace")).expanduser()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "model"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` so that readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source} has NaN or infinite values in: {', '.join(bad[:5])}")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a state_dict from a safetensors file or a PyTorch file, without executing any code.

    PyTorch files are read with ``torch.load(weights_only=True)``, which refuses pickles that reference code. A
    ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped and a ``module.`` prefix (DataParallel) dropped.
    Returns the tensors and, for a file exported by FusionLab, its model metadata.

    Raises :class:`CheckpointError` when the file is neither, carries code, holds non-tensors or NaNs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    with open(path, "rb") as stream:
        head = stream.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{path.name} is empty or truncated, not a checkpoint")
    metadata: dict[str, Any] | None = None
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        if METADATA_KEY in header:
            metadata = json.loads(header[METADATA_KEY])
    except (SafetensorError, json.JSONDecodeError, ValueError, OSError):
        state = read_torch_file(path)
    if not state:
        raise CheckpointError(f"{path.name} holds no tensors")
    check_finite(state, path.name)
    return state, metadata


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name} contains pickled code or objects other than tensors; FusionLab never executes code from a "
            "checkpoint. Save a plain state_dict (torch.save(model.state_dict(), ...)) or safetensors instead."
        ) from exc
    except Exception as exc:  # a corrupt pickle stream can fail in the unpickler with any error (IndexError...)
        raise CheckpointError(f"{path.name} is not a safetensors or PyTorch checkpoint ({type(exc).__name__})") from exc
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path.name} is not a state_dict (a mapping of parameter names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` after checking that every name and shape fits; nothing is changed otherwise."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} ({', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''})")
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:3])}{'...' if len(wrong) > 3 else ''}")
        raise CheckpointError("the checkpoint does not fit the chosen architecture: " + ", ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


class Workspace:
    """A folder of models and their results; see the module docstring for the layout and atomicity."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_root()
        try:
            (self.root / "models").mkdir(parents=True, exist_ok=True)
            (self.root / ".staging").mkdir(exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create the workspace at {self.root}: {exc}") from exc

    def model_dir(self, model_id: str) -> Path:
        if not ID_PATTERN.fullmatch(model_id):
            raise WorkspaceError(f"{model_id!r} is not a model id")
        return self.root / "models" / model_id

    def new_id(self, spec: ModelSpec, dataset: str, label: str) -> str:
        return f"{spec.arch}-{slug(dataset)}-{slug(label)[:16]}-{uuid.uuid4().hex[:6]}"

    def save(
        self,
        model: nn.Module,
        *,
        spec: ModelSpec,
        dataset: str,
        normalization: Normalization,
        metrics: Mapping[str, float] | None = None,
        provenance: Mapping[str, Any] | None = None,
        seed: int | None = None,
        name: str | None = None,
        attachments: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> ModelRecord:
        """Save ``model`` with its metadata atomically and return its record.

        ``attachments`` are named tensor collections stored beside the model in the same atomic write (a fused
        model's transport maps, say); read them back with :meth:`load_tensors`.

        Raises :class:`CheckpointError` if the model has NaN/inf weights or does not fit ``spec`` (nothing is written).
        """
        if dataset not in DATASETS:
            raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        check_finite(state, "the model")
        load_state_into(build_model(spec), state)
        provenance = dict(provenance or {"method": "train"})
        label = f"s{seed}" if provenance.get("method") == "train" and seed is not None else provenance.get("method", "m")
        record = ModelRecord(
            id=self.new_id(spec, dataset, str(label)),
            name=name or f"{spec.describe()} · {provenance.get('method', 'train')}" + (f" · seed {seed}" if seed is not None else ""),
            spec=spec,
            dataset=dataset,
            normalization=normalization,
            seed=seed,
            metrics=dict(metrics or {}),
            provenance=provenance,
            created=now_iso(),
            parameters=parameter_count(model),
        )
        staging = self.root / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            save_file(state, str(staging / "model.safetensors"), metadata={METADATA_KEY: json.dumps(record.to_dict())})
            for kind, tensors in (attachments or {}).items():
                if not ID_PATTERN.fullmatch(kind) or kind == "model":  # "model" would overwrite the weights
                    raise WorkspaceError(f"{kind!r} is not an attachment name")
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(staging / f"{kind}.safetensors"))
            write_json_atomic(staging / "meta.json", record.to_dict())
            os.rename(staging, self.model_dir(record.id))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record

    def records(self) -> list[ModelRecord]:
        """Every complete model in the workspace, oldest first; unreadable entries are skipped."""
        found = []
        for meta in sorted((self.root / "models").glob("*/meta.json")):
            try:
                found.append(ModelRecord.from_dict(json.loads(meta.read_text())))
            except (OSError, json.JSONDecodeError, CheckpointError):
                continue
        return sorted(found, key=lambda r: (r.created, r.id))

    def record(self, model_id: str) -> ModelRecord:
        meta = self.model_dir(model_id) / "meta.json"
        if not meta.is_file():
            raise WorkspaceError(f"no model {model_id!r} in the workspace at {self.root}")
        try:
            return ModelRecord.from_dict(json.loads(meta.read_text()))
        except json.JSONDecodeError as exc:
            raise WorkspaceError(f"the metadata of {model_id!r} is unreadable: {exc}") from exc

    def load(self, model_id: str) -> tuple[nn.Module, ModelRecord]:
        """Rebuild the model from its spec and load its weights (eval mode, on the CPU)."""
        record = self.record(model_id)
        model = build_model(record.spec)
        load_state_into(model, load_file(str(self.model_dir(model_id) / "model.safetensors")))
        return model.eval(), record

    def update(self, model_id: str, **changes: Any) -> ModelRecord:
        """Replace fields of a model's record (``metrics``, ``name``...) atomically."""
        record = replace(self.record(model_id), **changes)
        write_json_atomic(self.model_dir(model_id) / "meta.json", record.to_dict())
        return record

    def delete(self, model_id: str) -> None:
        """Remove a model: moved aside with one rename first, so a crash never leaves half of it listed."""
        source = self.model_dir(model_id)
        if not source.is_dir():
            raise WorkspaceError(f"no model {model_id!r} in the workspace at {self.root}")
        trash = self.root / ".staging" / f"deleted-{uuid.uuid4().hex}"
        os.rename(source, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def export(self, model_id: str, destination: str | Path) -> Path:
        """Copy a model to one safetensors file whose header carries its metadata (``fusionlab`` key)."""
        record = self.record(model_id)
        destination = Path(destination)
        if destination.is_dir():
            destination = destination / f"{model_id}.safetensors"
        state = load_file(str(self.model_dir(model_id) / "model.safetensors"))
        handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(handle)
        try:
            save_file(state, temporary, metadata={METADATA_KEY: json.dumps(record.to_dict())})
            os.replace(temporary, destination)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return destination

    def import_checkpoint(
        self,
        path: str | Path,
        spec: ModelSpec | None = None,
        dataset: str | None = None,
        normalization: Normalization | None = None,
        name: str | None = None,
    ) -> tuple[nn.Module, ModelRecord]:
        """Import a checkpoint: a FusionLab export (its metadata supplies spec and dataset) or a plain state_dict
        (then ``spec`` and ``dataset`` are required). The weights must fit the spec exactly.
        """
        state, metadata = read_checkpoint(path)
        if metadata is not None and spec is None:
            exported = ModelRecord.from_dict(metadata)
            spec, dataset = exported.spec, dataset or exported.dataset
            normalization = normalization or exported.normalization
            name = name or exported.name
        if spec is None or dataset is None:
            raise CheckpointError("a plain state_dict needs an architecture spec and a dataset to be imported")
        normalization = normalization or dataset_normalization(dataset)
        model = build_model(spec)
        load_state_into(model, state)
        record = self.save(
            model,
            spec=spec,
            dataset=dataset,
            normalization=normalization,
            provenance={"method": "import", "source": Path(path).name if metadata is None else "fusionlab export"},
            name=name,
        )
        return model.eval(), record

    def load_tensors(self, model_id: str, kind: str) -> dict[str, torch.Tensor] | None:
        """An attachment saved with the model, or ``None`` when it has none of that name."""
        if not ID_PATTERN.fullmatch(kind):
            raise WorkspaceError(f"{kind!r} is not an attachment name")
        path = self.model_dir(model_id) / f"{kind}.safetensors"
        return load_file(str(path)) if path.is_file() else None

    def result_path(self, model_id: str, kind: str) -> Path:
        if not ID_PATTERN.fullmatch(kind):
            raise WorkspaceError(f"{kind!r} is not a result kind")
        return self.model_dir(model_id) / "results" / f"{kind}.json"

    def save_result(self, model_id: str, kind: str, payload: Mapping[str, Any]) -> None:
        """Store an analysis result with the model (atomically), replacing an earlier one of the same kind."""
        self.record(model_id)
        write_json_atomic(self.result_path(model_id, kind), dict(payload))

    def load_result(self, model_id: str, kind: str) -> dict[str, Any] | None:
        path = self.result_path(model_id, kind)
        return json.loads(path.read_text()) if path.is_file() else None
