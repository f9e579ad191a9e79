"""The Models page: the table, selection, download and delete, the training form, checkpoint imports."""

from __future__ import annotations

import io
import pickle
import threading
from pathlib import Path

import pytest
import torch
from app_helpers import messages, open_app, train_quick_models, wait_for_job
from safetensors.torch import load as load_safetensors

from fusion.errors import CheckpointError, FusionError
from fusion.models import build_model, default_spec
from ui.checkpoints import HeldUpload, export_bytes, file_size, hold_upload, import_upload
from ui.state import SELECTED_MODELS_KEY, job_runner
from ui.tables import escape_markdown
from ui.training import SpecOptions

MODELS = "pages/models.py"
TRAIN = "FormSubmitter:train-Train"
IMPORT = "FormSubmitter:import-Import"
DELETE = "FormSubmitter:models.delete-Delete selected"


class CreatesFileWhenUnpickled:
    """A pickle payload that would create ``path`` if a loader ever executed it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def upload(at, filename: str, content: bytes, arch: str = "from the file", dataset: str = "from the file"):
    """Choose the architecture (from the zoo) and dataset, put a file into the uploader and press Import."""
    at.selectbox(key="import.source").set_value("from the file" if arch == "from the file" else "zoo").run()
    if arch != "from the file":
        at.selectbox(key="import.arch").set_value(arch).run()
    at.selectbox(key="import.dataset").set_value(dataset).run()
    at.file_uploader(key="import.file").upload(filename, content)
    return at.button(key=IMPORT).click().run()


def test_models_page_lists_every_model_with_metrics(app_workspace):
    records = train_quick_models(app_workspace, seeds=(0, 1))

    at = open_app(MODELS)

    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["id"]) == [r.id for r in records]
    assert list(table["architecture"]) == ["mlp 32", "mlp 32"]
    assert table["test accuracy (%)"].notna().all() and table["test loss"].notna().all()
    assert (table["dataset"] == "digits").all() and (table["method"] == "train").all()


def test_selecting_models_shares_the_selection_and_offers_downloads(app_workspace):
    first, second = train_quick_models(app_workspace, seeds=(0, 1))
    at = open_app(MODELS)

    at.multiselect(key="models.selection").select(second.id).run()

    assert not at.exception
    assert at.session_state[SELECTED_MODELS_KEY] == [second.id]
    assert [b.label for b in at.get("download_button")] == ["Download"]
    at.switch_page("pages/home.py").run()
    at.switch_page(MODELS).run()
    assert at.multiselect(key="models.selection").value == [second.id], "the selection survives a page switch"


def test_export_bytes_round_trip_the_weights_and_metadata(app_workspace):
    (record,) = train_quick_models(app_workspace)

    tensors = load_safetensors(export_bytes(app_workspace, record.id))

    model, _ = app_workspace.load(record.id)
    assert tensors.keys() == model.state_dict().keys()


def test_delete_needs_the_confirmation(app_workspace):
    first, second = train_quick_models(app_workspace, seeds=(0, 1))
    at = open_app(MODELS)
    at.multiselect(key="models.selection").select(first.id).run()

    at.button(key=DELETE).click().run()
    assert any("confirmation" in text for text in messages(at.warning))
    assert len(app_workspace.records()) == 2

    at.checkbox[0].check()
    at.button(key=DELETE).click().run()
    assert not at.exception
    assert [r.id for r in app_workspace.records()] == [second.id]
    assert at.session_state[SELECTED_MODELS_KEY] == []
    assert list(at.dataframe[0].value["id"]) == [second.id]


def test_training_form_trains_one_model_per_seed(app_workspace):
    at = open_app(MODELS)
    at.text_input(key="train.mlp.digits.hidden").input("16")
    at.text_input(key="train.seeds").input("0, 1")
    at.number_input(key="train.epochs").set_value(2)
    at.button(key=TRAIN).click().run()
    assert not at.exception and not at.error

    job = wait_for_job()
    assert job is not None and job.status == "done", job
    at.run()

    assert not at.exception
    records = app_workspace.records()
    assert sorted(r.seed for r in records) == [0, 1]
    assert all(r.spec.describe() == "mlp 16" and "test_accuracy" in r.metrics for r in records)
    assert len(at.dataframe[0].value) == 2
    assert any("finished" in text for text in messages(at.success))


@pytest.mark.parametrize(
    "field, text, expected",
    [
        ("train.mlp.digits.hidden", "12,,x", "Hidden widths"),
        ("train.mlp.digits.hidden", "-4", "Hidden widths"),
        ("train.seeds", "zero", "Seeds"),
        ("train.seeds", "", "Seeds"),
    ],
)
def test_bad_text_shows_an_error_and_runs_nothing(app_workspace, field, text, expected):
    at = open_app(MODELS)
    at.text_input(key=field).input(text)
    at.button(key=TRAIN).click().run()

    assert not at.exception
    assert any(expected in e for e in messages(at.error)), messages(at.error)
    assert job_runner().latest("train") is None
    assert app_workspace.records() == []


def test_inconsistent_architecture_options_show_the_library_message(app_workspace):
    at = open_app(MODELS)
    at.selectbox(key="train.arch").set_value("cnn").run()
    at.text_input(key="train.cnn.digits.channels").input("")
    at.button(key=TRAIN).click().run()

    assert not at.exception
    assert any("Conv channels" in e for e in messages(at.error))
    assert job_runner().latest("train") is None


def test_a_fusionlab_export_reimports_with_its_own_metadata(app_workspace):
    (record,) = train_quick_models(app_workspace)
    at = open_app(MODELS)

    upload(at, "exported.safetensors", export_bytes(app_workspace, record.id))

    assert not at.exception and not at.error, messages(at.error)
    records = app_workspace.records()
    assert len(records) == 2
    (imported,) = [r for r in records if r.id != record.id]
    assert imported.method == "import" and imported.spec == record.spec
    assert imported.metrics["test_accuracy"] == pytest.approx(record.metrics["test_accuracy"])
    assert any("Imported" in text for text in messages(at.success))
    assert len(at.dataframe[0].value) == 2


def test_a_plain_state_dict_imports_with_the_chosen_architecture(app_workspace):
    spec = default_spec("mlp", (1, 8, 8), 10)
    state = build_model(spec, seed=3).state_dict()
    at = open_app(MODELS)

    upload(at, "weights.pt", torch_bytes(state), arch="mlp", dataset="digits")

    assert not at.exception and not at.error, messages(at.error)
    (imported,) = app_workspace.records()
    assert imported.spec == spec
    assert imported.provenance["source"] == "upload: weights.pt"
    assert 0.0 <= imported.metrics["test_accuracy"] <= 1.0


def bad_uploads(sentinel: Path) -> dict[str, tuple[str, bytes, str, str, str]]:
    """name -> (filename, content, architecture, dataset, expected message fragment)."""
    mismatched = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(32,))).state_dict()
    nan = build_model(default_spec("mlp", (1, 8, 8), 10)).state_dict()
    nan["layers.1.weight"] = torch.full_like(nan["layers.1.weight"], float("nan"))
    return {
        "not a checkpoint": ("notes.pt", b"these are my notes, not weights" * 4, "mlp", "digits", "not a safetensors"),
        "torch pickle with code": (
            "evil.pt",
            torch_bytes({"w": CreatesFileWhenUnpickled(sentinel)}),
            "mlp",
            "digits",
            "pickled code",
        ),
        "raw pickle with code": (
            "evil.bin",
            pickle.dumps(CreatesFileWhenUnpickled(sentinel), protocol=2),
            "mlp",
            "digits",
            "code",
        ),
        "mismatched state_dict": ("small.pt", torch_bytes(mismatched), "mlp", "digits", "does not fit"),
        "nan weights": ("nan.pt", torch_bytes(nan), "mlp", "digits", "NaN"),
        "plain state_dict without an architecture": (
            "plain.pt",
            torch_bytes(mismatched),
            "from the file",
            "digits",
            "needs an architecture",
        ),
    }


@pytest.mark.parametrize("case", list(bad_uploads(Path("unused"))))
def test_a_bad_upload_shows_the_reason_and_leaves_the_workspace_unchanged(app_workspace, tmp_path, case):
    train_quick_models(app_workspace)
    sentinel = tmp_path / "pwned"
    filename, content, arch, dataset, expected = bad_uploads(sentinel)[case]
    at = open_app(MODELS)

    upload(at, filename, content, arch=arch, dataset=dataset)

    assert not at.exception
    assert any(expected in e for e in messages(at.error)), messages(at.error)
    assert len(app_workspace.records()) == 1
    assert not sentinel.exists(), "the checkpoint's pickled code was executed"
    assert sorted(p.name for p in (app_workspace.root / ".staging").iterdir()) == []


def test_import_is_rolled_back_when_the_model_does_not_fit_the_dataset(app_workspace):
    (record,) = train_quick_models(app_workspace)
    content = export_bytes(app_workspace, record.id)

    with pytest.raises(FusionError):
        import_upload(app_workspace, content, "digits-model.safetensors", dataset="mnist")
    assert [r.id for r in app_workspace.records()] == [record.id]


def test_import_upload_writes_no_file_named_by_the_browser(app_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = build_model(default_spec("mlp", (1, 8, 8), 10)).state_dict()

    record = import_upload(app_workspace, torch_bytes(state), "../../escape.pt", SpecOptions("mlp"), "digits")

    assert record.provenance["source"] == "upload: escape.pt"
    assert not (tmp_path.parent / "escape.pt").exists() and not list(tmp_path.rglob("escape.pt"))


def test_an_import_error_names_the_users_file_in_plain_words(app_workspace):
    whole = torch_bytes(build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(4,)), seed=0).state_dict())
    corrupt = whole[: len(whole) // 2]
    with pytest.raises(CheckpointError) as refused:
        import_upload(app_workspace, corrupt, "my-model.pt", SpecOptions("mlp"), "digits")
    message = str(refused.value)
    assert message.startswith("my-model.pt ") and "damaged or in another format" in message
    assert "uploaded-checkpoint" not in message and "Error)" not in message
    assert not app_workspace.records()


def elements_in_order(node) -> list:
    """Every element below ``node`` of an AppTest tree, in the order the page draws them."""
    children = getattr(node, "children", None)
    if not children:
        return [node]
    return [element for key in sorted(children) for element in elements_in_order(children[key])]


def test_import_success_appears_below_the_import_button_not_at_the_top(app_workspace):
    (record,) = train_quick_models(app_workspace)
    at = open_app(MODELS)

    upload(at, "exported.safetensors", export_bytes(app_workspace, record.id))

    drawn = elements_in_order(at.main)
    where = {getattr(e, "value", None): i for i, e in enumerate(drawn) if e.type in ("subheader", "success")}
    (imported,) = [text for text in where if isinstance(text, str) and text.startswith("Imported")]
    assert where["Import a checkpoint"] < where[imported]


def plain_weights() -> bytes:
    """A plain state_dict of the zoo's default MLP on digits."""
    return torch_bytes(build_model(default_spec("mlp", (1, 8, 8), 10), seed=0).state_dict())


def put_file(at, filename: str, content: bytes):
    """Put a file into the checkpoint uploader without pressing Import."""
    at.file_uploader(key="import.file").upload(filename, content)
    return at.run()


def held_lines(at) -> list[str]:
    return [str(m.value) for m in at.markdown if str(m.value).startswith("Uploaded:")]


def test_an_upload_is_kept_when_the_image_folder_is_chosen_and_the_missing_path_is_named_on_import(app_workspace):
    content = plain_weights()
    at = open_app(MODELS)
    at.selectbox(key="import.source").set_value("zoo").run()
    at.selectbox(key="import.arch").set_value("mlp").run()
    put_file(at, "weights.pt", content)

    at.selectbox(key="import.dataset").set_value("image folder").run()
    assert not at.exception and not at.error, "a folder not typed yet is not an error: " + str(messages(at.error))
    assert held_lines(at) == [f"Uploaded: **{escape_markdown(HeldUpload('weights.pt', content).describe())}**"]

    at.button(key=IMPORT).click().run()
    errors = messages(at.error)
    assert any("Type the image folder's path" in e for e in errors), errors
    assert not any("imagefolder:" in e or "Choose a checkpoint" in e for e in errors), errors
    assert held_lines(at) and not app_workspace.records()

    at.selectbox(key="import.dataset").set_value("digits").run()
    at.button(key=IMPORT).click().run()
    assert not at.error, messages(at.error)
    (record,) = app_workspace.records()
    assert record.provenance["source"] == "upload: weights.pt" and record.dataset == "digits"
    assert not held_lines(at) and len(at.file_uploader) == 1, "an imported upload is let go"


def test_an_upload_is_kept_through_a_running_job_and_a_page_switch_until_removed(app_workspace):
    release = threading.Event()
    at = put_file(open_app(MODELS), "weights.pt", plain_weights())
    job = job_runner().submit("slow", lambda progress: release.wait(timeout=30))
    at.run()
    release.set()
    wait_for_job()
    at.run()
    at.switch_page("pages/home.py").run()
    at.switch_page(MODELS).run()

    assert job_runner().get(job.id).status == "done" and not at.exception
    assert len(held_lines(at)) == 1 and len(at.file_uploader) == 0
    at.button(key="import.file.remove").click().run()
    assert not held_lines(at) and len(at.file_uploader) == 1
    at.button(key=IMPORT).click().run()
    assert any("Choose a checkpoint file" in e for e in messages(at.error)), messages(at.error)


class Uploaded(io.BytesIO):
    """What an uploader holds: the bytes and the name the browser sent."""

    def __init__(self, content: bytes, name: str) -> None:
        super().__init__(content)
        self.name = name


def test_hold_upload_keeps_the_file_once_its_uploader_is_emptied_and_drops_the_browsers_folders():
    content = b"weights" * 1000
    state = {"widget": Uploaded(content, "../../secret/model.pt")}

    hold_upload(state, "widget", "held")
    state["widget"] = None
    hold_upload(state, "widget", "held")

    assert state["held"] == HeldUpload("model.pt", content)
    assert state["held"].describe() == "model.pt (7.0 kB)"


@pytest.mark.parametrize(
    ("size", "shown"), [(512, "512 bytes"), (7_000, "7.0 kB"), (44_800_000, "44.8 MB"), (2_500_000_000, "2.5 GB")]
)
def test_file_sizes_read_as_a_file_browser_shows_them(size, shown):
    assert file_size(size) == shown


def test_training_on_an_image_folder_not_typed_yet_says_so_in_words_on_train(app_workspace):
    at = open_app(MODELS)
    at.selectbox(key="train.dataset").set_value("image folder").run()
    assert not at.exception and not at.error, messages(at.error)
    at.button(key="FormSubmitter:train-Train").click().run()
    errors = messages(at.error)
    assert any("Type the image folder's path" in e for e in errors) and not any("imagefolder:" in e for e in errors)
    assert job_runner().latest("train") is None
