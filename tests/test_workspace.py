"""The workspace: exact save/load, atomic writes, and refusal of every checkpoint it cannot load safely."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fusion.workspace
from fusion.data import dataset_normalization
from fusion.errors import CheckpointError, DatasetError, FusionError, WorkspaceError
from fusion.models import ModelSpec, build_model
from fusion.results import ResultRecord
from fusion.train import predict_logits
from fusion.workspace import ModelRecord, Workspace, read_checkpoint


def snapshot(workspace: Workspace) -> dict[str, object]:
    """Everything an interrupted or refused write must leave as it was."""
    return {
        "ids": [r.id for r in workspace.records()],
        "model_dirs": sorted(p.name for p in (workspace.root / "models").iterdir()),
        "files": sorted(str(p.relative_to(workspace.root)) for p in workspace.root.rglob("*") if p.is_file()),
        "staging": sorted((workspace.root / ".staging").iterdir()),
    }


def assert_same_function(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    assert torch.equal(predict_logits(a, x), predict_logits(b, x))


# --- save, load, list ---------------------------------------------------------------------------------------------


def test_saved_model_reloads_bit_identical(trained_mlp, workspace: Workspace, saved_mlp: ModelRecord) -> None:
    model, record = workspace.load(saved_mlp.id)
    assert not model.training
    assert_same_function(model, trained_mlp.model, trained_mlp.data.x_test)
    original = trained_mlp.model.state_dict()
    assert all(torch.equal(t, original[k]) for k, t in model.state_dict().items())
    assert record == saved_mlp


def test_model_rebuilt_from_its_metadata_alone_matches(
    trained_mlp, workspace: Workspace, saved_mlp: ModelRecord
) -> None:
    meta = json.loads((workspace.model_dir(saved_mlp.id) / "meta.json").read_text())
    record = ModelRecord.from_dict(meta)
    assert record.spec == trained_mlp.spec
    assert record.dataset == "digits"
    assert record.normalization == trained_mlp.data.normalization
    assert record.seed == trained_mlp.config.seed
    rebuilt = build_model(record.spec)
    rebuilt.load_state_dict(load_file(str(workspace.model_dir(saved_mlp.id) / "model.safetensors")))
    assert_same_function(rebuilt, trained_mlp.model, trained_mlp.data.x_test)


def test_records_list_the_saved_model_with_metrics_and_provenance(trained_mlp, workspace: Workspace, saved_mlp) -> None:
    (record,) = workspace.records()
    assert record.id == saved_mlp.id
    assert record.metrics == pytest.approx(trained_mlp.metrics())
    assert record.provenance == {"method": "train", "options": trained_mlp.config.to_dict()}
    assert record.method == "train" and record.parents == []
    assert record.parameters == sum(p.numel() for p in trained_mlp.model.parameters())
    assert record.created


def test_each_save_gets_a_new_valid_id(trained_mlp, workspace: Workspace) -> None:
    ids = {trained_mlp.save_to(workspace).id for _ in range(3)}
    assert len(ids) == 3
    assert {r.id for r in workspace.records()} == ids
    assert all(fusion.workspace.ID_PATTERN.fullmatch(i) for i in ids)


def test_records_skip_incomplete_or_unreadable_entries(workspace: Workspace, saved_mlp: ModelRecord) -> None:
    (workspace.root / "models" / "half-written").mkdir()
    corrupt = workspace.root / "models" / "corrupt"
    corrupt.mkdir()
    (corrupt / "meta.json").write_text("{not json")
    wrong = workspace.root / "models" / "wrong-schema"
    wrong.mkdir()
    (wrong / "meta.json").write_text(json.dumps({"id": "wrong-schema"}))
    assert [r.id for r in workspace.records()] == [saved_mlp.id]


def test_default_workspace_root_comes_from_the_environment(isolated_fusionlab_home: Path) -> None:
    assert Workspace().root == isolated_fusionlab_home / "workspace"
    assert (isolated_fusionlab_home / "workspace" / "models").is_dir()


def test_save_rejects_an_unknown_dataset(trained_mlp, workspace: Workspace) -> None:
    before = snapshot(workspace)
    with pytest.raises(DatasetError):
        trained_mlp.save_to(workspace, dataset="imagenet")
    assert snapshot(workspace) == before


# --- export / import --------------------------------------------------------------------------------------------


def test_export_then_import_round_trip_is_bit_identical(trained_mlp, workspace: Workspace, saved_mlp, tmp_path) -> None:
    exported = workspace.export(saved_mlp.id, tmp_path)
    assert exported.parent == tmp_path and exported.suffix == ".safetensors"
    other = Workspace(tmp_path / "other")
    model, record = other.import_checkpoint(exported)  # no spec: the export carries it
    assert record.spec == saved_mlp.spec
    assert record.dataset == saved_mlp.dataset
    assert record.normalization == saved_mlp.normalization
    assert record.name == saved_mlp.name
    assert record.method == "import"
    assert_same_function(model, trained_mlp.model, trained_mlp.data.x_test)
    reloaded, _ = other.load(record.id)
    assert_same_function(reloaded, trained_mlp.model, trained_mlp.data.x_test)


def test_export_to_a_file_path_writes_that_file(workspace: Workspace, saved_mlp, tmp_path) -> None:
    target = tmp_path / "mine.safetensors"
    assert workspace.export(saved_mlp.id, target) == target
    state, metadata = read_checkpoint(target)
    assert metadata is not None and metadata["id"] == saved_mlp.id
    assert state.keys() == load_file(str(workspace.model_dir(saved_mlp.id) / "model.safetensors")).keys()


WRAPPERS = {
    "plain": lambda state: state,
    "state_dict-key": lambda state: {"state_dict": state, "epoch": 3},
    "model_state_dict-key": lambda state: {"model_state_dict": state},
    "model-key": lambda state: {"model": state},
    "module-prefix": lambda state: {f"module.{k}": v for k, v in state.items()},
}


@pytest.mark.parametrize("wrap", list(WRAPPERS.values()), ids=list(WRAPPERS))
def test_plain_torch_state_dict_imports_with_a_spec(trained_mlp, workspace: Workspace, tmp_path, wrap) -> None:
    path = tmp_path / "weights.pt"
    torch.save(wrap(trained_mlp.model.state_dict()), path)
    model, record = workspace.import_checkpoint(path, spec=trained_mlp.spec, dataset="digits")
    assert_same_function(model, trained_mlp.model, trained_mlp.data.x_test)
    assert record.normalization == dataset_normalization("digits")
    assert record.provenance == {"method": "import", "source": "weights.pt"}
    assert [r.id for r in workspace.records()] == [record.id]


def test_safetensors_without_metadata_imports_with_a_spec(trained_mlp, workspace: Workspace, tmp_path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in trained_mlp.model.state_dict().items()}, str(path))
    model, _ = workspace.import_checkpoint(path, spec=trained_mlp.spec, dataset="digits")
    assert_same_function(model, trained_mlp.model, trained_mlp.data.x_test)


def test_plain_state_dict_without_a_spec_is_refused(trained_mlp, workspace: Workspace, tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(trained_mlp.model.state_dict(), path)
    before = snapshot(workspace)
    with pytest.raises(CheckpointError, match="spec"):
        workspace.import_checkpoint(path)
    assert snapshot(workspace) == before


# --- atomicity ----------------------------------------------------------------------------------------------------


def failing_save_file(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"half a safetensors file")
    raise OSError("disk full (simulated)")


def failing_rename(source, destination):
    raise OSError("disk full (simulated)")


def failing_write_json(path, payload):
    Path(path).write_text('{"half": ')
    raise OSError("disk full (simulated)")


@pytest.mark.parametrize(
    ("target", "replacement"),
    [("save_file", failing_save_file), ("write_json_atomic", failing_write_json), ("os.rename", failing_rename)],
    ids=["safetensors-write", "meta-write", "rename"],
)
def test_interrupted_save_leaves_the_workspace_unchanged(
    trained_mlp, workspace: Workspace, saved_mlp, monkeypatch: pytest.MonkeyPatch, target: str, replacement
) -> None:
    before = snapshot(workspace)
    with monkeypatch.context() as patch, pytest.raises(OSError, match="simulated"):
        patch.setattr(*((os, "rename") if target == "os.rename" else (fusion.workspace, target)), replacement)
        trained_mlp.save_to(workspace)
    assert snapshot(workspace) == before
    assert list((workspace.root / ".staging").iterdir()) == []
    assert [r.id for r in Workspace(workspace.root).records()] == [saved_mlp.id]


def test_interrupted_import_leaves_the_workspace_unchanged(
    workspace: Workspace, saved_mlp, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = workspace.export(saved_mlp.id, tmp_path)
    before = snapshot(workspace)
    with monkeypatch.context() as patch, pytest.raises(OSError, match="simulated"):
        patch.setattr(os, "rename", failing_rename)
        workspace.import_checkpoint(exported)
    assert snapshot(workspace) == before


def test_failed_metadata_write_leaves_the_old_meta_intact(
    workspace: Workspace, saved_mlp, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = workspace.model_dir(saved_mlp.id) / "meta.json"
    old = meta.read_bytes()

    def half_dump(payload, stream, **options) -> None:
        stream.write('{"id": ')
        raise TypeError("simulated failure halfway through the JSON")

    with monkeypatch.context() as patch, pytest.raises(TypeError, match="halfway"):
        # json.dump fails after writing part of the file: the half-written temporary must not replace meta.json
        patch.setattr(json, "dump", half_dump)
        workspace.update(saved_mlp.id, metrics={"test_accuracy": 0.5})
    assert meta.read_bytes() == old
    assert sorted(p.name for p in meta.parent.iterdir()) == ["meta.json", "model.safetensors"]
    assert workspace.record(saved_mlp.id) == saved_mlp


def test_failed_replace_leaves_the_old_meta_intact(
    workspace: Workspace, saved_mlp, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = workspace.model_dir(saved_mlp.id) / "meta.json"
    old = meta.read_bytes()

    def failing_replace(source, destination):
        raise OSError("simulated crash before the replace")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="simulated"):
        patch.setattr(os, "replace", failing_replace)
        workspace.update(saved_mlp.id, metrics={"test_accuracy": 0.5})
    assert meta.read_bytes() == old
    assert sorted(p.name for p in meta.parent.iterdir()) == ["meta.json", "model.safetensors"]


def test_update_replaces_metrics_and_keeps_everything_else(workspace: Workspace, saved_mlp) -> None:
    new_metrics = {"test_accuracy": 0.25, "train_accuracy": 0.5}
    updated = workspace.update(saved_mlp.id, metrics=new_metrics, name="renamed")
    assert updated.metrics == new_metrics and updated.name == "renamed"
    stored = workspace.record(saved_mlp.id)
    assert stored == updated
    assert stored.spec == saved_mlp.spec and stored.created == saved_mlp.created and stored.seed == saved_mlp.seed


# --- bad input ----------------------------------------------------------------------------------------------------


def write_random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def write_truncated_export(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "random-bytes": lambda path, export: write_random_bytes(path),
    "empty": lambda path, export: path.write_bytes(b""),
    "seven-bytes": lambda path, export: path.write_bytes(b"PK\x03\x04abc"),
    "truncated-export": lambda path, export: write_truncated_export(path, export),
    "json-text": lambda path, export: path.write_text(json.dumps({"weight": [1.0, 2.0]})),
    "no-tensors-safetensors": lambda path, export: save_file({}, str(path)),
    "list-not-tensor": lambda path, export: torch.save({"layers.1.weight": [1.0, 2.0]}, path),
    "bare-tensor": lambda path, export: torch.save(torch.zeros(3), path),
    "empty-dict": lambda path, export: torch.save({}, path),
}


@pytest.mark.parametrize("make", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_unloadable_file_raises_checkpoint_error_and_changes_nothing(
    trained_mlp, workspace: Workspace, saved_mlp, tmp_path, make
) -> None:
    path = tmp_path / "bad.ckpt"
    make(path, workspace.export(saved_mlp.id, tmp_path))
    before = snapshot(workspace)
    with pytest.raises(CheckpointError) as error:
        workspace.import_checkpoint(path, spec=trained_mlp.spec, dataset="digits")
    assert isinstance(error.value, FusionError)
    assert snapshot(workspace) == before


def test_missing_file_raises_checkpoint_error(workspace: Workspace, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        workspace.import_checkpoint(tmp_path / "nowhere.pt")


class CreateFileOnLoad:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


class RunShellOnLoad:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch '{self.sentinel}'",))


def save_zip(payload, path: Path) -> None:
    torch.save(payload, path)


def save_legacy(payload, path: Path) -> None:
    torch.save(payload, path, _use_new_zipfile_serialization=False)


def save_raw_pickle(payload, path: Path) -> None:
    with open(path, "wb") as stream:
        pickle.dump(payload, stream)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(
    "save", [save_zip, save_legacy, save_raw_pickle], ids=["torch-zip", "torch-legacy", "raw-pickle"]
)
@pytest.mark.parametrize("gadget", [CreateFileOnLoad, RunShellOnLoad], ids=["open", "os-system"])
def test_pickle_carrying_code_is_refused_without_running_it(
    trained_mlp, workspace: Workspace, tmp_path, gadget, save
) -> None:
    sentinel = tmp_path / "pwned"
    state = dict(trained_mlp.model.state_dict())
    state["layers.1.weight"] = gadget(sentinel)  # type: ignore[assignment]
    path = tmp_path / "evil.pt"
    save({"state_dict": state}, path)
    assert not sentinel.exists()
    before = snapshot(workspace)
    with pytest.raises(CheckpointError, match="code"):
        workspace.import_checkpoint(path, spec=trained_mlp.spec, dataset="digits")
    assert not sentinel.exists(), "loading the checkpoint executed code"
    assert snapshot(workspace) == before
    # The payload is live: an unsafe load would have run it.
    with open(path, "rb") as stream:
        if save is save_raw_pickle:
            pickle.load(stream)
        else:
            torch.load(stream, weights_only=False)
    assert sentinel.exists()


def remove_key(state: dict, spec: ModelSpec) -> dict:
    return {k: v for k, v in state.items() if k != "layers.3.bias"}


def add_key(state: dict, spec: ModelSpec) -> dict:
    return {**state, "layers.9.weight": torch.zeros(3, 3)}


def transpose_weight(state: dict, spec: ModelSpec) -> dict:
    return {**state, "layers.1.weight": state["layers.1.weight"].T.contiguous()}


def other_architecture(state: dict, spec: ModelSpec) -> dict:
    return build_model(ModelSpec("mlp", (1, 8, 8), 10, hidden=(33,)), seed=0).state_dict()


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (remove_key, "missing.*layers.3.bias"),
        (add_key, "unexpected.*layers.9.weight"),
        (transpose_weight, "wrong shapes.*layers.1.weight"),
        (other_architecture, "wrong shapes"),
    ],
    ids=["missing-key", "extra-key", "wrong-shape", "other-width"],
)
def test_state_dict_that_does_not_fit_the_spec_is_refused_naming_the_problem(
    trained_mlp, workspace: Workspace, saved_mlp, tmp_path, mutate, problem: str
) -> None:
    path = tmp_path / "weights.pt"
    torch.save(mutate(trained_mlp.model.state_dict(), trained_mlp.spec), path)
    before = snapshot(workspace)
    with pytest.raises(CheckpointError, match=problem):
        workspace.import_checkpoint(path, spec=trained_mlp.spec, dataset="digits")
    assert snapshot(workspace) == before


def test_saving_a_model_that_does_not_fit_its_spec_is_refused(trained_mlp, workspace: Workspace) -> None:
    with pytest.raises(CheckpointError, match="does not fit"):
        trained_mlp.save_to(workspace, spec=ModelSpec("mlp", (1, 8, 8), 10, hidden=(64,)))
    assert workspace.records() == [] and list((workspace.root / "models").iterdir()) == []


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_and_nothing_is_saved(
    trained_mlp, workspace: Workspace, tmp_path, bad_value
) -> None:
    model = build_model(trained_mlp.spec)
    model.load_state_dict(trained_mlp.model.state_dict())
    with torch.no_grad():
        model.layers[1].weight[0, 0] = bad_value
    with pytest.raises(CheckpointError, match="layers.1.weight"):
        workspace.save(model, spec=trained_mlp.spec, dataset="digits", normalization=trained_mlp.data.normalization)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        workspace.import_checkpoint(path, spec=trained_mlp.spec, dataset="digits")
    assert workspace.records() == [] and list((workspace.root / "models").iterdir()) == []
    assert list((workspace.root / ".staging").iterdir()) == []


BAD_IDS = ["../outside", "a/b", "/etc", "..", "", "UPPER", "has space", "trailing-newline\n", "-leading-dash"]


@pytest.mark.parametrize("model_id", BAD_IDS, ids=repr)
def test_malformed_model_ids_are_refused_everywhere(workspace: Workspace, saved_mlp, model_id: str) -> None:
    outside = workspace.root.parent / "outside"
    outside.mkdir(exist_ok=True)
    for action in (
        workspace.model_dir,
        workspace.record,
        workspace.load,
        workspace.delete,
        lambda i: workspace.update(i, name="x"),
        lambda i: workspace.save_result(i, ResultRecord.make("hessian", [i], {}, {})),
    ):
        with pytest.raises(WorkspaceError):
            action(model_id)
    assert outside.is_dir()
    assert [r.id for r in workspace.records()] == [saved_mlp.id]


@pytest.mark.parametrize("kind", ["../meta", "a/b", "", "Hessian"])
def test_malformed_result_kinds_are_refused(workspace: Workspace, saved_mlp, kind: str) -> None:
    with pytest.raises(WorkspaceError):
        workspace.save_result(saved_mlp.id, ResultRecord.make(kind, [saved_mlp.id], {}, {"x": 1}))


def test_unknown_model_id_raises_workspace_error(workspace: Workspace) -> None:
    for action in (workspace.record, workspace.load, workspace.delete, lambda i: workspace.update(i, name="x")):
        with pytest.raises(WorkspaceError, match="no model 'mlp-digits-s0-000000'") as error:
            action("mlp-digits-s0-000000")
        assert isinstance(error.value, FusionError) and isinstance(error.value, KeyError)
        assert str(error.value).startswith("no model"), "a readable message, not a quoted KeyError"


def test_delete_removes_the_model(workspace: Workspace, saved_mlp) -> None:
    workspace.save_result(saved_mlp.id, ResultRecord.make("hessian", [saved_mlp.id], {}, {"eigenvalues": [3.0]}))
    workspace.delete(saved_mlp.id)
    assert workspace.records() == []
    assert not workspace.model_dir(saved_mlp.id).exists()
    assert list((workspace.root / ".staging").iterdir()) == []
    with pytest.raises(WorkspaceError):
        workspace.load(saved_mlp.id)


def test_delete_leaves_other_models_alone(trained_mlp, workspace: Workspace, saved_mlp) -> None:
    other = trained_mlp.save_to(workspace)
    workspace.delete(saved_mlp.id)
    assert [r.id for r in workspace.records()] == [other.id]
    workspace.load(other.id)


def test_results_of_other_settings_are_kept_beside_each_other(workspace: Workspace, saved_mlp) -> None:
    assert workspace.results(saved_mlp.id) == []
    first = ResultRecord.make("hessian", [saved_mlp.id], {"samples": 200}, {"eigenvalues": [3.5, 1.25]}, 1.5, "cmd")
    workspace.save_result(saved_mlp.id, first)
    second = ResultRecord.make("hessian", [saved_mlp.id], {"samples": 300}, {"eigenvalues": [1.0]})
    workspace.save_result(saved_mlp.id, second)
    assert first.key != second.key
    assert workspace.results(saved_mlp.id, "hessian") == [second, first], "both kept, the newest first"
    assert workspace.find_result(saved_mlp.id, "hessian", first.key) == first
    again = ResultRecord.make("hessian", [saved_mlp.id], {"samples": 200}, {"eigenvalues": [3.5, 1.25]})
    assert again.key == first.key, "the same settings make the same key"
    assert workspace.results(saved_mlp.id, "landscape-random") == []
    assert workspace.delete_result(saved_mlp.id, first.key) == first
    assert workspace.results(saved_mlp.id) == [second]
    assert [r.id for r in workspace.records()] == [saved_mlp.id]


def test_a_result_stored_before_records_reads_back_as_one_record(workspace: Workspace, saved_mlp) -> None:
    folder = workspace.results_dir(saved_mlp.id)
    folder.mkdir()
    (folder / "hessian.json").write_text(json.dumps({"split": "test", "config": {"samples": 1000}, "seconds": 2.0}))
    (folder / "landscape-random-0123456789.json").write_text(json.dumps({"model_ids": [saved_mlp.id], "kind": "r"}))
    hessian, landscape = sorted(workspace.results(saved_mlp.id), key=lambda r: r.kind)
    assert (hessian.kind, hessian.key, hessian.settings) == (
        "hessian",
        "legacy-hessian",
        {"split": "test", "config": {"samples": 1000}},
    )
    assert hessian.seconds == 2.0 and hessian.payload["config"] == {"samples": 1000}
    assert (landscape.kind, landscape.models) == ("landscape-random", [saved_mlp.id])
    workspace.delete_result(saved_mlp.id, "legacy-hessian")
    assert not (folder / "hessian.json").exists() and [r.kind for r in workspace.results(saved_mlp.id)] == [
        "landscape-random"
    ]


def test_saving_a_result_for_an_unknown_model_is_refused(workspace: Workspace) -> None:
    with pytest.raises(WorkspaceError):
        workspace.save_result("mlp-digits-s0-000000", ResultRecord.make("hessian", ["x"], {}, {"x": 1}))
    assert list((workspace.root / "models").iterdir()) == []


def corrupted_checkpoints(count: int) -> list[bytes]:
    """Random byte strings and valid PyTorch files (zip and legacy formats) with a few bytes overwritten."""
    rng = random.Random(0)
    state = {"layers.1.weight": torch.randn(4, 4), "layers.1.bias": torch.randn(4)}
    originals = []
    for zip_format in (True, False):
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=zip_format)
        originals.append(buffer.getvalue())
    blobs = [rng.randbytes(rng.randint(8, 2048)) for _ in range(count)]
    for original in originals:
        for _ in range(count):
            data = bytearray(original)
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            blobs.append(bytes(data))
    return blobs


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_files_raise_checkpoint_error_or_load_never_anything_else(tmp_path: Path) -> None:
    path = tmp_path / "fuzzed.pt"
    for data in corrupted_checkpoints(150):
        path.write_bytes(data)
        try:
            state, _ = read_checkpoint(path)
        except CheckpointError:
            continue
        assert state and all(isinstance(t, torch.Tensor) and torch.isfinite(t).all() for t in state.values())


def test_attachments_are_saved_with_the_model_and_read_back(trained_mlp, workspace: Workspace) -> None:
    plans = {"model0/layers.1": torch.rand(32, 32), "model1/layers.1": torch.eye(32)}
    record = trained_mlp.save_to(workspace, attachments={"transport": plans})
    loaded = workspace.load_tensors(record.id, "transport")
    assert loaded is not None and loaded.keys() == plans.keys()
    assert all(torch.equal(loaded[k], plans[k]) for k in plans)
    assert workspace.load_tensors(record.id, "other") is None
    assert_same_function(workspace.load(record.id)[0], trained_mlp.model, trained_mlp.data.x_test)


@pytest.mark.parametrize("kind", ["model", "../evil", "Transport", ""])
def test_badly_named_attachment_is_refused_and_nothing_is_saved(trained_mlp, workspace: Workspace, kind: str) -> None:
    with pytest.raises(WorkspaceError):
        trained_mlp.save_to(workspace, attachments={kind: {"x": torch.zeros(2)}})
    assert workspace.records() == [] and list((workspace.root / "models").iterdir()) == []
    assert list((workspace.root / ".staging").iterdir()) == []


def test_a_model_without_its_normalization_is_refused_before_anything_is_written(trained_mlp, workspace) -> None:
    with pytest.raises(CheckpointError, match="normalization"):
        trained_mlp.save_to(workspace, normalization=None)
    assert not workspace.scan().records and not workspace.scan().broken
