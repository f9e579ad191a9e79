"""Models and results on disk.

Layout under the workspace root::

    models/<id>/model.safetensors   the state_dict (safetensors: loading never executes code)
    models/<id>/meta.json           a :class:`ModelRecord`: spec, dataset, normalisation, seed, metrics, provenance
    models/<id>/results/<kind>.json analyses computed for the model (Hessian spectra, ...)

Writes are atomic: a model is written into ``.staging/`` and moved into place with one ``rename``, a JSON file is
written beside its target and ``os.replace``-d over it, so an interrupted save leaves either the old state or the new
one, never half a model. The root is ``--workspace`` / ``FUSIONLAB_WORKSPACE`` / ``~/.fusionlab/workspace``.

Integrity: ``meta.json`` holds the sha256 of every ``.safetensors`` file of the model, written at save time and checked
by every read of the weights (:meth:`Workspace.load`, :meth:`Workspace.load_tensors`, :meth:`Workspace.export`);
:meth:`Workspace.scan` checks them too (each file hashed once per workspace object while its size and mtime stay the
same) and reports each entry it cannot load as a :class:`BrokenEntry` instead of hiding it. Models saved before
checksums existed have none: they load unverified, after a check that their safetensors header covers the file.

A save killed mid-way leaves its folder in ``.staging/``; opening the workspace removes such leftovers, and the
``.tmp-*`` files of a killed JSON write, unless some writer is at work: every writer holds a shared ``flock`` on
``<root>/.lock`` while it writes, and the cleaner takes that lock exclusively without waiting, so it never touches
the folder of a live writer (a writer killed by SIGKILL drops its lock with its process).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from fusion.data import Normalization, check_dataset_name, dataset_normalization
from fusion.errors import (
    ArchitectureError,
    CheckpointError,
    DamagedModelError,
    DamagedResultError,
    OutputFileError,
    WorkspaceError,
)
from fusion.image_folder import is_image_folder, parse_image_folder_name
from fusion.models import ModelSpec, build_model, parameter_count, state_mismatch
from fusion.records import Record, RecordError, from_json
from fusion.results import ResultRecord
from fusion.user_files import check_user_target, write_user_file

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}$")
METADATA_KEY = "fusionlab"
WEIGHTS_FILE = "model.safetensors"
WRITERS_LOCK = ".lock"
JSON_TEMPORARY = ".tmp-*.json"
CHANGED_FILE = "{name} does not match the sha256 stored when it was saved: the file was truncated or changed"


@dataclass(frozen=True)
class ModelRecord(Record):
    """What the workspace knows about one model: its ``meta.json``.

    Attributes
    ----------
    id : str
        ``ARCH-DATASET-LABEL-RANDOM``, unique in the workspace.
    name : str
        A name for people, unique in the workspace.
    spec : ModelSpec
        The architecture: :func:`fusion.models.build_model` of it holds the stored weights.
    dataset : str
        The dataset's canonical name (:func:`fusion.data.load_dataset`).
    normalization : Normalization
        The input standardisation the model was trained with.
    seed : int or None
        The training seed, if one made it.
    metrics : dict[str, float]
        At least ``test_accuracy`` (a fraction) and ``test_loss`` once evaluated.
    provenance : dict
        Where the model came from: ``{"method": "train", "options": {...}}`` for a trained model,
        ``{"method": "ot", "parents": [ids], "options": {...}}`` for a fused one, ``{"method": "import", ...}``.
    created : str
        ISO 8601 time of the save.
    parameters : int
        The number of parameters.
    checksums : dict[str, str]
        The sha256 of each of the model's files, checked by every read.

    Examples
    --------
    >>> import tempfile
    >>> from fusion import ModelRecord, Workspace, build_model, default_spec, load_dataset
    >>> data = load_dataset("digits")
    >>> spec = default_spec("mlp", data.input_shape, data.num_classes)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     record = Workspace(folder).save(
    ...         build_model(spec, seed=0), spec=spec, dataset="digits", normalization=data.normalization, seed=0
    ...     )
    >>> record.method, record.parents, record.seed, record.parameters, sorted(record.checksums)
    ('train', [], 0, 17226, ['model.safetensors'])
    >>> ModelRecord.from_dict(record.to_dict()) == record
    True
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
    checksums: dict[str, str] = field(default_factory=dict)
    """sha256 (hex) of each of the model's files by name (``model.safetensors``, attachments); empty for a model saved
    before checksums existed, whose files are then read unverified."""

    @classmethod
    def from_dict(cls, data: Any) -> ModelRecord:
        """Also reads metadata written without a ``name`` (the id names the model then) or a ``seed``."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"invalid model metadata: a JSON object was expected, not {type(data).__name__}")
        try:
            return from_json(cls, {"name": data.get("id"), "seed": None, **data})
        except (RecordError, ArchitectureError) as exc:
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
    return datetime.now(UTC).isoformat(timespec="seconds")


def slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:length].strip("-") or "model"


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
    except (SafetensorError, ValueError, OSError):
        state, header = read_torch_file(path), {}
    if METADATA_KEY in header:
        # A damaged FusionLab header means the file changed after its export: importing it as a plain state_dict
        # would silently drop the architecture and dataset it names, so it is refused.
        try:
            metadata = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path.name} carries FusionLab metadata that is not valid JSON ({exc})") from exc
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path.name} carries FusionLab metadata that is not a JSON object")
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
        raise CheckpointError(
            f"{path.name} is not a safetensors or PyTorch checkpoint: it is damaged or in another format"
        ) from exc
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path.name} is not a state_dict (a mapping of parameter names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` after checking that every name and shape fits (:func:`state_mismatch`); nothing
    is changed otherwise."""
    mismatch = state_mismatch(model, state)
    if mismatch:
        raise CheckpointError(f"the checkpoint does not fit the chosen architecture: {mismatch}")
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


@dataclass(frozen=True)
class BrokenEntry:
    """An entry of ``models/`` that cannot be loaded, and why; listed beside the models, never hidden."""

    id: str
    reason: str


@dataclass(frozen=True)
class WorkspaceScan:
    """Every entry of ``models/``: the loadable models (oldest first) and the broken entries (by name)."""

    records: tuple[ModelRecord, ...]
    broken: tuple[BrokenEntry, ...]


def sha256_of(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def parse_record(data: bytes, model_id: str) -> ModelRecord:
    """The record held by the bytes of ``models/<model_id>/meta.json``.

    Raises :class:`DamagedModelError` when they are not UTF-8 JSON, not a valid record, or describe another id.
    """
    try:
        payload = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DamagedModelError(model_id, f"meta.json is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DamagedModelError(model_id, f"meta.json is not valid JSON ({exc})") from exc
    try:
        record = ModelRecord.from_dict(payload)
    except CheckpointError as exc:
        raise DamagedModelError(model_id, f"meta.json: {exc}") from exc
    if record.id != model_id:
        raise DamagedModelError(model_id, f"meta.json describes another model, {record.id!r}")
    return record


class Workspace:
    """A folder of models and their results; see the module docstring for the layout, atomicity and integrity.

    Every model is stored under its id as safetensors weights with a :class:`ModelRecord` (spec, dataset,
    normalisation, seed, metrics, provenance, sha256 of each file); every read of the weights checks them.

    Parameters
    ----------
    root : str or Path, optional
        The workspace folder, created when missing (``FUSIONLAB_WORKSPACE``, else ``~/.fusionlab/workspace``).

    Raises
    ------
    WorkspaceError
        When the folder cannot be created.

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from fusion import Workspace, WorkspaceError, build_model, default_spec, load_dataset
    >>> data = load_dataset("digits")
    >>> spec = default_spec("mlp", data.input_shape, data.num_classes)
    >>> model = build_model(spec, seed=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     workspace = Workspace(folder)
    ...     record = workspace.save(model, spec=spec, dataset="digits", normalization=data.normalization, seed=0)
    ...     loaded, stored = workspace.load(record.id)
    ...     same = all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    ...     listed = [r.id for r in workspace.records()] == [record.id]
    ...     try:
    ...         workspace.load("mlp-digits-s0-000000")
    ...     except WorkspaceError:
    ...         missing = "refused"
    >>> record.name, stored == record, same, listed, missing
    ('mlp 128-64 · train · seed 0', True, True, True, 'refused')
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_root()
        try:
            (self.root / "models").mkdir(parents=True, exist_ok=True)
            (self.root / ".staging").mkdir(exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create the workspace at {self.root}: {exc}") from exc
        self.verified: dict[tuple[Path, str], tuple[int, int, int]] = {}
        """(file, sha256) -> (inode, size, mtime) of the file when it last matched, so a scan hashes it once."""
        self.remove_stale_temporaries()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writers' shared lock on ``<root>/.lock`` for the body, so no cleaner removes what it writes."""
        with open(self.root / WRITERS_LOCK, "ab") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH)
            except OSError as exc:
                # Some shared filesystems (Lustre without -o flock) have no flock: writing goes on, and the cleaner,
                # which cannot lock either, then never removes anything.
                if exc.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
            yield

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove what killed writers left behind: every entry of ``.staging/`` and the ``.tmp-*.json`` files beside
        metadata and results; return them.

        Runs only when it gets the writers' lock exclusively without waiting: while any writer is at work, its files
        are not stale and nothing is removed (a later open cleans up). A workspace that cannot be written, or whose
        filesystem has no ``flock``, is left alone.
        """
        try:
            lock = open(self.root / WRITERS_LOCK, "ab")
        except OSError:
            return []
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a writer holds it, or the filesystem has no flock: nothing is known to be stale
                return []
            stale = [
                *(self.root / ".staging").iterdir(),
                *self.root.glob(f"models/*/{JSON_TEMPORARY}"),
                *self.root.glob(f"models/*/results/{JSON_TEMPORARY}"),
            ]
            for path in stale:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        return stale

    def model_dir(self, model_id: str) -> Path:
        if not ID_PATTERN.fullmatch(model_id):
            raise WorkspaceError(f"{model_id!r} is not a model id")
        return self.root / "models" / model_id

    def new_id(self, spec: ModelSpec, dataset: str, label: str) -> str:
        """``ARCH-DATASET-LABEL-RANDOM`` within the 81 characters of an id: an image folder by its folder's name."""
        short = parse_image_folder_name(dataset).path.name if is_image_folder(dataset) else dataset
        return f"{slug(spec.arch, 32)}-{slug(short, 24)}-{slug(label, 16)}-{uuid.uuid4().hex[:6]}"

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
        """Save ``model`` with its metadata and the sha256 of its files atomically, and return its record.

        ``attachments`` are named tensor collections stored beside the model in the same atomic write (a fused
        model's transport maps, say); read them back with :meth:`load_tensors`.

        A ``name`` another model of the workspace already has gets the random end of the new id (`` · 3f9a1c``), so
        that no two models show the same name.

        Raises :class:`CheckpointError` if the model has NaN/inf weights or does not fit ``spec`` (nothing is written).
        """
        dataset = check_dataset_name(dataset)
        if not isinstance(normalization, Normalization):
            raise CheckpointError(f"a model needs its input normalization, got {type(normalization).__name__}")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        check_finite(state, "the model")
        load_state_into(build_model(spec), state)
        provenance = dict(provenance or {"method": "train"})
        label = (
            f"s{seed}" if provenance.get("method") == "train" and seed is not None else provenance.get("method", "m")
        )
        record = ModelRecord(
            id=self.new_id(spec, dataset, str(label)),
            name=name
            or f"{spec.describe()} · {provenance.get('method', 'train')}"
            + (f" · seed {seed}" if seed is not None else ""),
            spec=spec,
            dataset=dataset,
            normalization=normalization,
            seed=seed,
            metrics=dict(metrics or {}),
            provenance=provenance,
            created=now_iso(),
            parameters=parameter_count(model),
        )
        with self.writing():
            if any(other.name == record.name for other in self.records()):
                record = replace(record, name=f"{record.name} · {record.id.rsplit('-', 1)[-1]}")
            staging = self.root / ".staging" / uuid.uuid4().hex
            staging.mkdir(parents=True)
            try:
                # The header's copy of the record has no checksums: a file cannot hold its own hash.
                save_file(state, str(staging / WEIGHTS_FILE), metadata={METADATA_KEY: json.dumps(record.to_dict())})
                for kind, tensors in (attachments or {}).items():
                    if not ID_PATTERN.fullmatch(kind) or kind == "model":  # "model" would overwrite the weights
                        raise WorkspaceError(f"{kind!r} is not an attachment name")
                    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
                    save_file(tensors, str(staging / f"{kind}.safetensors"))
                checksums = {path.name: sha256_of(path) for path in sorted(staging.glob("*.safetensors"))}
                record = replace(record, checksums=checksums)
                write_json_atomic(staging / "meta.json", record.to_dict())
                os.rename(staging, self.model_dir(record.id))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return record

    def scan(self) -> WorkspaceScan:
        """Every entry of ``models/``, each either a loadable model or a :class:`BrokenEntry` with its reason.

        A model is listed when its ``meta.json`` is a valid record of its own id and each of its files exists and
        matches its stored sha256 (a file is hashed again only when its inode, size or mtime changed since it last
        matched); a model saved without checksums needs safetensors headers that cover their files exactly, which
        catches truncation but not an edit. Hidden names (``.DS_Store``) are not entries.
        """
        records, broken = [], []
        for folder in sorted((self.root / "models").iterdir()):
            if folder.name.startswith("."):
                continue
            if not ID_PATTERN.fullmatch(folder.name):
                broken.append(BrokenEntry(folder.name, "the name is not a model id"))
            elif not (folder / "meta.json").is_file():
                broken.append(BrokenEntry(folder.name, "no meta.json: not a model saved by FusionLab"))
            else:
                try:
                    record = self.record(folder.name)
                    for name in sorted({WEIGHTS_FILE, *record.checksums}):
                        self.check_file(record, name)
                except DamagedModelError as exc:
                    broken.append(BrokenEntry(exc.model_id, exc.reason))
                else:
                    records.append(record)
        return WorkspaceScan(tuple(sorted(records, key=lambda r: (r.created, r.id))), tuple(broken))

    def records(self) -> list[ModelRecord]:
        """Every loadable model in the workspace, oldest first (:meth:`scan` also names the broken entries)."""
        return list(self.scan().records)

    def find_run(self, key: str) -> ModelRecord | None:
        """The oldest loadable model stored by a run with key ``key`` (:mod:`fusion.run_key`), or ``None``."""
        return next((r for r in self.records() if r.provenance.get("run") == key), None)

    def has(self, model_id: str) -> bool:
        """Whether the workspace has a model ``model_id`` (loadable or not)."""
        return (self.model_dir(model_id) / "meta.json").is_file()

    def record(self, model_id: str) -> ModelRecord:
        """The metadata of ``model_id``; raises :class:`WorkspaceError` if there is none, :class:`DamagedModelError`
        if it is unreadable."""
        meta = self.model_dir(model_id) / "meta.json"
        if not meta.is_file():
            raise WorkspaceError(f"no model {model_id!r} in the workspace at {self.root}")
        try:
            data = meta.read_bytes()
        except OSError as exc:
            raise DamagedModelError(model_id, f"cannot read meta.json ({exc.strerror})") from exc
        return parse_record(data, model_id)

    def check_file(self, record: ModelRecord, name: str) -> None:
        """Raise :class:`DamagedModelError` unless the model's file ``name`` matches its checksum (or, without one,
        has a safetensors header that covers it)."""
        path = self.model_dir(record.id) / name
        expected = record.checksums.get(name)
        try:
            info = path.stat()
            if expected is None:
                with safe_open(str(path), framework="pt"):
                    return
            key = (info.st_ino, info.st_size, info.st_mtime_ns)
            if self.verified.get((path, expected)) == key:
                return
            if sha256_of(path) != expected:
                raise DamagedModelError(record.id, CHANGED_FILE.format(name=name))
        except FileNotFoundError as exc:
            raise DamagedModelError(record.id, f"{name} is missing") from exc
        except OSError as exc:
            raise DamagedModelError(record.id, f"cannot read {name} ({exc.strerror})") from exc
        except (SafetensorError, ValueError) as exc:
            raise DamagedModelError(record.id, f"{name} is not a readable safetensors file ({exc})") from exc
        self.verified[(path, expected)] = key

    def read_tensors(self, record: ModelRecord, name: str) -> dict[str, torch.Tensor]:
        """The tensors of the model's file ``name``, after checking its sha256 when the record has one.

        Raises :class:`DamagedModelError` when the file is missing, unreadable, changed since it was saved, or not
        safetensors.
        """
        path = self.model_dir(record.id) / name
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise DamagedModelError(record.id, f"{name} is missing") from exc
        except OSError as exc:
            raise DamagedModelError(record.id, f"cannot read {name} ({exc.strerror})") from exc
        expected = record.checksums.get(name)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise DamagedModelError(record.id, CHANGED_FILE.format(name=name))
        try:
            return safetensors.torch.load(data)
        except (SafetensorError, ValueError) as exc:
            raise DamagedModelError(record.id, f"{name} is not a readable safetensors file ({exc})") from exc

    def load(self, model_id: str) -> tuple[nn.Module, ModelRecord]:
        """Rebuild the model from its spec and load its verified weights (eval mode, on the CPU).

        Raises :class:`DamagedModelError` when the weights are missing, changed since the save, or do not fit the
        spec; a model saved without checksums loads unverified. A workspace is data: a ``python:`` factory its spec
        names runs only when trusted on this machine (:class:`~fusion.errors.UntrustedFactoryError` otherwise).
        """
        record = self.record(model_id)
        model = build_model(record.spec)
        try:
            load_state_into(model, self.read_tensors(record, WEIGHTS_FILE))
        except DamagedModelError:
            raise
        except CheckpointError as exc:
            raise DamagedModelError(model_id, str(exc)) from exc
        return model.eval(), record

    def update(self, model_id: str, **changes: Any) -> ModelRecord:
        """Replace fields of a model's record (``metrics``, ``name``...) atomically."""
        with self.writing():
            record = replace(self.record(model_id), **changes)
            write_json_atomic(self.model_dir(model_id) / "meta.json", record.to_dict())
        return record

    def delete(self, model_id: str) -> None:
        """Remove a model: moved aside with one rename first, so a crash never leaves half of it listed."""
        source = self.model_dir(model_id)
        if not source.is_dir():
            raise WorkspaceError(f"no model {model_id!r} in the workspace at {self.root}")
        with self.writing():
            trash = self.root / ".staging" / f"deleted-{uuid.uuid4().hex}"
            os.rename(source, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def export(self, model_id: str, destination: str | Path, *, overwrite: bool = False) -> Path:
        """Copy a model's verified weights to one safetensors file whose header carries its metadata (``fusionlab``
        key); a folder ``destination`` means ``<folder>/<id>.safetensors``. Returns the file written.

        Written by :func:`fusion.user_files.write_user_file`, so the target is whole or untouched; raises
        :class:`OutputFileError`, naming the target, when ``destination`` is empty, its folder is missing or inside
        this workspace, or the target is a link, not a regular file, or exists at all unless ``overwrite``.
        """
        if not str(destination).strip():
            raise OutputFileError("the export destination is empty: give a file or folder path")
        record = self.record(model_id)
        target = Path(destination).expanduser()
        if target.is_dir() and not target.is_symlink():
            target = target / f"{model_id}.safetensors"
        check_user_target(target, overwrite=overwrite, protected=[self.root])
        state = self.read_tensors(record, WEIGHTS_FILE)
        header = json.dumps(replace(record, checksums={}).to_dict())  # the workspace files' hashes do not describe it
        payload = safetensors.torch.save(state, metadata={METADATA_KEY: header})
        return write_user_file(target, payload, overwrite=overwrite, protected=[self.root])

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
        """An attachment saved with the model (verified like the weights), or ``None`` when it has none of that
        name."""
        if not ID_PATTERN.fullmatch(kind):
            raise WorkspaceError(f"{kind!r} is not an attachment name")
        record = self.record(model_id)
        name = f"{kind}.safetensors"
        if name not in record.checksums and not (self.model_dir(model_id) / name).is_file():
            return None
        return self.read_tensors(record, name)

    def results_dir(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "results"

    def save_result(self, owner: str, result: ResultRecord) -> ResultRecord:
        """Store ``result`` with model ``owner`` (atomically) as ``results/<kind>/<key>.json``: a record of the same
        key is the same run's and is replaced; every other record is kept (:mod:`fusion.results`)."""
        self.record(owner)
        for name in (result.kind, result.key):
            if not ID_PATTERN.fullmatch(name):
                raise WorkspaceError(f"{name!r} is not a result kind or key")
        with self.writing():
            write_json_atomic(self.results_dir(owner) / result.kind / f"{result.key}.json", result.to_dict())
        return result

    def find_result(self, owner: str, kind: str, key: str) -> ResultRecord | None:
        """The record of ``kind`` with ``key`` stored with ``owner``, or ``None``."""
        return next((r for r in self.results(owner, kind) if r.key == key), None)

    def results(self, owner: str, kind: str | None = None) -> list[ResultRecord]:
        """Every result stored with ``owner`` (of ``kind`` only, when given), the newest first; a result stored
        before records existed reads as one record (:meth:`ResultRecord.legacy`). :class:`DamagedResultError`
        names a file that cannot be read."""
        folder = self.results_dir(owner)
        found = []
        for path in sorted(folder.glob("*/*.json")) if folder.is_dir() else []:
            if path.parent.name.startswith(".") or path.name.startswith(".") or kind not in (None, path.parent.name):
                continue
            payload = read_json_object(path, f"the stored {path.parent.name} result {path.stem} of {owner}")
            try:
                found.append(ResultRecord.from_dict(payload))
            except RecordError as exc:
                raise DamagedResultError(f"the stored result {path} cannot be read ({exc}); delete it") from exc
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            legacy_kind = legacy_result_kind(path.stem)
            if kind in (None, legacy_kind) and not path.name.startswith("."):
                payload = read_json_object(path, f"the stored {path.stem} result of {owner}")
                created = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
                found.append(ResultRecord.legacy(legacy_kind, path.stem, owner, payload or {}, created))
        return sorted(found, key=lambda r: r.created, reverse=True)

    def has_result(self, owner: str, kind: str) -> bool:
        """Whether a result of ``kind`` is stored with ``owner`` (its files are not read)."""
        folder = self.results_dir(owner)
        return (folder / f"{kind}.json").is_file() or any((folder / kind).glob("[!.]*.json"))

    def delete_result(self, owner: str, key: str) -> ResultRecord:
        """Remove the result ``key`` stored with ``owner``; :class:`WorkspaceError` naming the keys there when there
        is none of that key."""
        stored = self.results(owner)
        match = [r for r in stored if r.key == key]
        if not match:
            known = ", ".join(r.key for r in stored) or "none"
            raise WorkspaceError(f"model {owner!r} has no stored result {key!r} (stored: {known})")
        (result,) = match
        folder = self.results_dir(owner)
        path = folder / f"{result.legacy_name}.json" if result.legacy_result else folder / result.kind / f"{key}.json"
        with self.writing():
            path.unlink()
        return result


LEGACY_LANDSCAPE = re.compile(r"^(landscape-[a-z-]+)-[0-9a-f]{10}$")


def legacy_result_kind(stem: str) -> str:
    """The kind of a result file stored before records existed: its name, less a landscape's digest of model ids."""
    match = LEGACY_LANDSCAPE.fullmatch(stem)
    return match.group(1) if match else stem


def read_json_object(path: Path, what: str, remedy: str = "compute it again") -> dict[str, Any] | None:
    """The JSON object stored at ``path``, ``None`` when there is no file; :class:`DamagedResultError` naming
    ``what`` (and saying ``remedy``) when the file is not UTF-8 JSON holding an object."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedResultError(f"{what} is damaged ({exc}); {remedy}") from exc
    if not isinstance(payload, dict):
        raise DamagedResultError(f"{what} is damaged (not a JSON object); {remedy}")
    return payload


class LoadOnce:
    """A workspace seen by one job that reads the same models several times: :meth:`load` loads each model once and
    returns that same network afterwards (callers treat it as read-only); everything else is the workspace's."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.loaded: dict[str, tuple[nn.Module, ModelRecord]] = {}

    def load(self, model_id: str) -> tuple[nn.Module, ModelRecord]:
        if model_id not in self.loaded:
            self.loaded[model_id] = self.workspace.load(model_id)
        return self.loaded[model_id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.workspace, name)
