"""The Models page offers every architecture source (fusion.sources) for training and for import: the zoo,
torchvision, timm, otfusion and the factories the server lists in FUSIONLAB_FACTORIES, each refusal a clear message."""

from __future__ import annotations

import io

import huggingface_hub
import pytest
import torch
from app_helpers import messages, open_app, wait_for_job

from fusion.data import dataset_normalization
from fusion.errors import ArchitectureError
from fusion.models import build_model, default_spec
from fusion.sources import TRUSTED_FACTORIES_VARIABLE, trust_factory, trusted_here
from fusion.zoo import source_choices
from tests import factories
from tests.data_helpers import make_folder
from ui.forms import SOURCE_LABELS, SpecInputs, offered_sources
from ui.state import job_runner
from ui.training import SpecOptions

MODELS = "pages/models.py"
TRAIN = "FormSubmitter:train-Train"
IMPORT = "FormSubmitter:import-Import"
FACTORY = "python:tests.factories:small_net"


@pytest.fixture(autouse=True)
def listed_factory(monkeypatch: pytest.MonkeyPatch):
    """The server lists ``tests.factories:small_net``; nothing is trusted in this process before or after a test."""
    monkeypatch.setenv(TRUSTED_FACTORIES_VARIABLE, FACTORY.removeprefix("python:"))
    trusted_here.clear()
    yield
    trusted_here.clear()


def choose(at, prefix: str, source: str, arch: str):
    """Pick ``source`` in the Source select, then ``arch`` (the name typed for timm)."""
    at.selectbox(key=f"{prefix}.source").set_value(source).run()
    if source == "timm":
        at.text_input(key=f"{prefix}.arch.timm").input(arch.removeprefix("timm:")).run()
    else:
        at.selectbox(key=f"{prefix}.arch" if source == "zoo" else f"{prefix}.arch.{source}").set_value(arch).run()
    return at


def test_source_choices_are_full_arch_names_of_each_source():
    assert "torchvision:resnet18" in source_choices("torchvision")
    assert source_choices("otfusion") == ("otfusion:mlpnet", "otfusion:vgg11_nobias", "otfusion:resnet18_nobias_nobn")
    assert source_choices("timm") == ()
    assert source_choices("python") == (FACTORY,)
    with pytest.raises(ArchitectureError, match="unknown architecture source 'keras'"):
        source_choices("keras")


def test_only_the_listed_factories_are_offered_not_those_trusted_in_this_process(monkeypatch):
    trust_factory("tests.factories:raising")
    assert source_choices("python") == (FACTORY,)
    monkeypatch.setenv(TRUSTED_FACTORIES_VARIABLE, "")
    assert source_choices("python") == ()


def test_a_stored_model_of_an_unlisted_factory_is_listed_and_refused_on_load_without_running_it(
    app_workspace, monkeypatch
):
    """A workspace is data: the server runs only the factories it lists, whatever a copied workspace names."""
    unlisted = "python:tests.factories:counted_net"
    spec = default_spec(unlisted, (1, 8, 8), 10)
    with monkeypatch.context() as elsewhere:
        elsewhere.setenv(TRUSTED_FACTORIES_VARIABLE, unlisted.removeprefix("python:"))
        model = build_model(spec, seed=0)
        record = app_workspace.save(model, spec=spec, dataset="digits", normalization=dataset_normalization("digits"))
    factories.built.clear()

    at = open_app(MODELS)
    assert not at.exception and not at.error, messages(at.error)
    assert list(at.dataframe[0].value["architecture"]) == [unlisted]

    at.switch_page("pages/neuron_norms.py").run()
    assert not at.exception
    assert any("tests.factories:counted_net is not trusted" in e for e in messages(at.error)), messages(at.error)
    assert factories.built == [] and app_workspace.record(record.id).spec.arch == unlisted


def test_a_sourced_architecture_parses_to_its_arch_alone():
    assert SpecInputs("otfusion:mlpnet").parse() == SpecOptions("otfusion:mlpnet")
    assert SpecOptions(FACTORY).build((1, 8, 8), 10) == default_spec(FACTORY, (1, 8, 8), 10)


def test_the_factories_source_is_absent_when_the_server_lists_none(app_workspace, monkeypatch):
    monkeypatch.delenv(TRUSTED_FACTORIES_VARIABLE)
    at = open_app(MODELS)

    assert not at.exception
    assert "your factories" not in at.selectbox(key="train.source").options
    assert "your factories" not in at.selectbox(key="import.source").options
    assert "torchvision" in at.selectbox(key="train.source").options


def test_a_sourced_architecture_shows_no_zoo_options(app_workspace):
    at = choose(open_app(MODELS), "train", "otfusion", "otfusion:mlpnet")

    assert not at.exception
    keys = [widget.key for widget in (*at.text_input, *at.number_input, *at.checkbox)]
    assert not [key for key in keys if key.startswith("train.") and key.endswith(("hidden", "width", "bn", "bias"))]
    assert any("built as its source defines it" in caption.value for caption in at.caption)


def test_a_listed_factory_trains_from_the_page_and_is_stored_with_its_arch(app_workspace):
    at = choose(open_app(MODELS), "train", "python", FACTORY)
    at.number_input(key="train.epochs").set_value(1)
    at.button(key=TRAIN).click().run()
    assert not at.exception and not at.error, messages(at.error)

    job = wait_for_job()
    assert job is not None and job.status == "done", job.error if job else "no job"
    at.run()

    assert not at.exception
    (record,) = app_workspace.records()
    assert record.spec.arch == FACTORY and "test_accuracy" in record.metrics
    assert list(at.dataframe[0].value["architecture"]) == [FACTORY]
    assert at.selectbox(key="train.source").value == "python", "the form keeps its source after the job"
    assert at.selectbox(key="train.arch.python").value == FACTORY


@pytest.mark.parametrize(
    ("source", "arch", "expected"),
    [
        ("torchvision", "torchvision:resnet18", "takes 3-channel images, the inputs have 1"),
        ("timm", "timm:not_a_net", "timm has no model 'not_a_net'"),
        ("timm", "timm:", "type the name of a timm model"),
    ],
)
def test_an_architecture_that_cannot_train_on_the_dataset_is_refused_before_a_job(
    app_workspace, source, arch, expected
):
    at = choose(open_app(MODELS), "train", source, arch)
    at.button(key=TRAIN).click().run()

    assert not at.exception
    assert any(expected in e for e in messages(at.error)), messages(at.error)
    assert job_runner().latest("train") is None
    assert app_workspace.records() == []


def test_the_typed_timm_name_is_kept_while_another_source_is_chosen(app_workspace):
    at = choose(open_app(MODELS), "train", "timm", "timm:resnet10t")
    choose(at, "train", "zoo", "cnn")

    at.selectbox(key="train.source").set_value("timm").run()

    assert not at.exception
    assert at.text_input(key="train.arch.timm").value == "resnet10t"


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def import_file(at, content: bytes, source: str, arch: str):
    choose(at, "import", source, arch)
    at.selectbox(key="import.dataset").set_value("digits").run()
    at.file_uploader(key="import.file").upload("weights.pt", content)
    return at.button(key=IMPORT).click().run()


def test_a_plain_state_dict_of_a_listed_factory_imports_with_its_arch(app_workspace):
    state = build_model(default_spec(FACTORY, (1, 8, 8), 10), seed=0).state_dict()

    at = import_file(open_app(MODELS), torch_bytes(state), "python", FACTORY)

    assert not at.exception and not at.error, messages(at.error)
    (record,) = app_workspace.records()
    assert record.spec.arch == FACTORY and 0.0 <= record.metrics["test_accuracy"] <= 1.0


def test_a_torchvision_import_on_grey_digits_is_refused_and_nothing_is_stored(app_workspace):
    content = torch_bytes(build_model(default_spec("torchvision:resnet18", (3, 8, 8), 10)).state_dict())

    at = import_file(open_app(MODELS), content, "torchvision", "torchvision:resnet18")

    assert not at.exception
    assert any("takes 3-channel images" in e for e in messages(at.error)), messages(at.error)
    assert app_workspace.records() == []


def choose_image_folder(at, prefix: str, folder: str, size: str = ""):
    at.selectbox(key=f"{prefix}.dataset").set_value("image folder").run()
    at.text_input(key=f"{prefix}.dataset.folder").input(folder).run()
    at.text_input(key=f"{prefix}.dataset.size").input(size).run()
    return at


def test_a_cnn_trains_on_an_image_folder_resized_from_the_page(app_workspace, tmp_path):
    root = make_folder(tmp_path / "colours")
    at = choose_image_folder(choose(open_app(MODELS), "train", "zoo", "cnn"), "train", str(root), "8")
    at.number_input(key="train.epochs").set_value(1)
    at.button(key=TRAIN).click().run()
    assert not at.exception and not at.error, messages(at.error)

    job = wait_for_job()
    assert job is not None and job.status == "done", job.error if job else "no job"
    at.run()

    (record,) = app_workspace.records()
    assert record.dataset == f"imagefolder:{root}@8"
    assert record.spec.input_shape == (3, 8, 8) and record.spec.num_classes == 3
    assert at.text_input(key="train.dataset.folder").value == str(root), "the form keeps the folder after the job"


def test_an_unreadable_image_folder_is_named_and_the_form_waits(app_workspace, tmp_path):
    (tmp_path / "empty").mkdir()
    at = choose_image_folder(open_app(MODELS), "train", str(tmp_path / "empty"))

    assert not at.exception
    assert any("has no class folders" in e for e in messages(at.error)), messages(at.error)
    assert TRAIN not in [button.key for button in at.button]


def test_pretrained_weights_are_offered_for_torchvision_and_timm_only(app_workspace):
    at = choose(open_app(MODELS), "train", "timm", "timm:resnet18")
    assert at.checkbox(key="train.pretrained").label.startswith("Start from the published pretrained weights")
    choose(at, "train", "zoo", "cnn")
    assert "train.pretrained" not in [box.key for box in at.checkbox]


def test_pretrained_weights_missing_from_the_cache_fail_the_job_with_the_reason(app_workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    at = choose(open_app(MODELS), "train", "timm", "timm:resnet18")
    at.checkbox(key="train.pretrained").check()
    at.number_input(key="train.epochs").set_value(1)
    at.button(key=TRAIN).click().run()

    job = wait_for_job()
    assert job is not None and job.status == "failed"
    assert "not in the local Hugging Face cache" in job.error
    at.run()
    assert not at.exception
    assert app_workspace.records() == []


def test_every_source_has_a_label_on_the_page():
    assert set(offered_sources(from_file=True)) <= set(SOURCE_LABELS)
    assert {"nt", "clafusion"} <= set(offered_sources())
