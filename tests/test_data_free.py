"""Data only where the math needs it (issue 30): a checkpoint imports, and weights-mode fusions run, without its
dataset on disk, stored "not evaluated" until evaluated on demand; an option that reads data is refused by name, and
a model is evaluated on another dataset of its shape beside its own metrics. ``FUSIONLAB_DATA`` is an empty folder in
every test (conftest), so MNIST is absent unless a test writes a stand-in."""

from __future__ import annotations

import argparse
import doctest
import io
import json
from pathlib import Path

import pytest
import torch
from app_helpers import messages, open_app
from data_helpers import fake_mnist

from cli.commands import command_evaluate
from cli.main import main
from fusion import registry
from fusion.data import Dataset, dataset_normalization
from fusion.errors import ArchitectureError, ConfigError, DatasetError
from fusion.models import ModelSpec, build_model, default_spec
from fusion.registry import fuse
from fusion.workspace import ModelRecord, Workspace
from studies.pipeline import NOT_EVALUATED, evaluate_and_save, fuse_and_save, is_evaluated
from ui.tables import marked_not_evaluated, model_rows
from ui.training import SpecOptions

MNIST_SHAPE = (1, 28, 28)


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    status = main([*args, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, json.loads(captured.out)


def otfusion_checkpoint(path: Path, seed: int, input_shape: tuple[int, int, int] = MNIST_SHAPE) -> Path:
    """An ``otfusion:mlpnet`` saved as otfusion saves it (``{"model_state_dict": ...}``), seeded initialisation."""
    spec = default_spec("otfusion:mlpnet", input_shape, 10)
    torch.save({"model_state_dict": build_model(spec, seed=seed).state_dict()}, path)
    return path


def import_line(checkpoint: Path, workspace: Path) -> list[str]:
    return ["import", str(checkpoint), "--arch", "otfusion:mlpnet", "--dataset", "mnist", "--workspace", str(workspace)]


def save_mnist_model(workspace: Workspace, seed: int = 0, batch_norm: bool = False) -> ModelRecord:
    spec = ModelSpec("mlp", MNIST_SHAPE, 10, hidden=(8,), batch_norm=batch_norm)
    normalization = dataset_normalization("mnist")
    return workspace.save(build_model(spec, seed=seed), spec=spec, dataset="mnist", normalization=normalization)


def test_otfusion_mlpnet_checkpoints_import_without_mnist_and_fuse_with_weights_mode_ot(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    workspace = tmp_path / "ws"
    ids = []
    for seed in (0, 1):
        checkpoint = otfusion_checkpoint(tmp_path / f"model_{seed}.checkpoint", seed)
        status, imported = run(capsys, *import_line(checkpoint, workspace))
        assert status == 0, imported
        assert imported["evaluated"] is False and "MNIST was not found" in imported["reason"]
        (model,) = imported["models"]
        assert model["dataset"] == "mnist" and not is_evaluated(Workspace(workspace).record(model["id"]))
        ids.append(model["id"])

    status, fused = run(capsys, "fuse", "--method", "ot", "--models", *ids, "--workspace", str(workspace))

    assert status == 0, fused
    assert fused["evaluated"] is False and "MNIST was not found" in fused["reason"]
    record = Workspace(workspace).record(fused["models"][0]["id"])
    assert (record.spec.arch, record.dataset, record.parents) == ("otfusion:mlpnet", "mnist", ids)
    assert not is_evaluated(record) and "fusion_seconds" in record.metrics
    verified = [error for error in record.provenance["report"]["verified"] if error is not None]
    assert len(verified) == 1 and verified[0] < 1e-4, "the permutation keeps parent B's function"
    status, listed = run(capsys, "list", "--workspace", str(workspace))
    assert [m["evaluated"] for m in listed["models"]] == [False, False, False]


def test_an_import_without_its_dataset_says_so_in_the_human_output(tmp_path: Path, capsys) -> None:
    checkpoint = otfusion_checkpoint(tmp_path / "final.checkpoint", 0)

    status = main(import_line(checkpoint, tmp_path / "ws"))

    error = capsys.readouterr().err
    assert status == 0
    assert f"{NOT_EVALUATED}: MNIST was not found" in error and "python -m fusion evaluate" in error


def nan_checkpoint(path: Path) -> Path:
    state = build_model(default_spec("otfusion:mlpnet", MNIST_SHAPE, 10), seed=0).state_dict()
    state["fc2.weight"][0, 0] = float("nan")
    torch.save(state, path)
    return path


def spec_file(path: Path) -> Path:
    path.write_text(json.dumps(default_spec("otfusion:mlpnet", (1, 8, 8), 10).to_dict()))
    return path


IMPORT_REFUSALS = {
    "weights of another shape": (
        lambda tmp: import_line(otfusion_checkpoint(tmp / "cifar.pt", 0, (3, 32, 32)), tmp / "ws"),
        "CheckpointError",
        "fc1.weight",
    ),
    "NaN weights": (lambda tmp: import_line(nan_checkpoint(tmp / "nan.pt"), tmp / "ws"), "CheckpointError", "NaN"),
    "a spec of another input shape": (
        lambda tmp: [
            "import",
            str(otfusion_checkpoint(tmp / "m.pt", 0, (1, 8, 8))),
            "--spec",
            str(spec_file(tmp / "s.json")),
            "--dataset",
            "mnist",
            "--workspace",
            str(tmp / "ws"),
        ],  # fmt: skip
        "ArchitectureError",
        "(1, 8, 8) and 10 classes; mnist has (1, 28, 28)",
    ),
}


@pytest.mark.parametrize(("line", "error", "message"), list(IMPORT_REFUSALS.values()), ids=list(IMPORT_REFUSALS))
def test_an_import_without_its_dataset_still_refuses_a_checkpoint_that_does_not_fit_and_stores_nothing(
    tmp_path: Path, capsys, line, error: str, message: str
) -> None:
    status, output = run(capsys, *line(tmp_path))

    assert status == 1 and output["error"]["type"] == error and message in output["error"]["message"], output
    assert Workspace(tmp_path / "ws").records() == []


def test_a_model_stored_not_evaluated_is_evaluated_once_its_dataset_is_on_disk(
    tmp_path: Path, capsys, isolated_fusionlab_home: Path
) -> None:
    workspace = tmp_path / "ws"
    _, imported = run(capsys, *import_line(otfusion_checkpoint(tmp_path / "m.pt", 0), workspace))
    model_id = imported["models"][0]["id"]
    status, refused = run(capsys, "evaluate", model_id, "--workspace", str(workspace))
    assert status == 1 and refused["error"]["type"] == "DatasetError"

    fake_mnist(isolated_fusionlab_home / "data", n=12)
    status, evaluated = run(capsys, "evaluate", model_id, "--workspace", str(workspace))

    assert status == 0, evaluated
    assert evaluated["dataset"] == "mnist" and 0 <= evaluated["test_accuracy_pct"] <= 100
    record = Workspace(workspace).record(model_id)
    assert is_evaluated(record) and 100 * record.metrics["test_accuracy"] == evaluated["test_accuracy_pct"]
    _, listed = run(capsys, "list", "--workspace", str(workspace))
    assert listed["models"][0]["evaluated"] is True


def test_evaluating_on_another_dataset_of_the_same_shape_stores_it_beside_the_own_metrics(
    workspace: Workspace, isolated_fusionlab_home: Path
) -> None:
    for class_name in ("MNIST", "FashionMNIST"):  # the same pixels and labels under each name
        fake_mnist(isolated_fusionlab_home / "data", class_name, n=16)
    record = save_mnist_model(workspace)
    own = evaluate_and_save(workspace, record.id)

    other = evaluate_and_save(workspace, record.id, "fashion-mnist")

    assert other.scores == pytest.approx(own.scores), "the same pixels, standardised as the model's own"
    keys = ("train_accuracy", "train_loss", "test_accuracy", "test_loss")
    assert other.stored == tuple(f"{key} on fashion-mnist" for key in keys)
    metrics = workspace.record(record.id).metrics
    assert {key: metrics[key] for key in keys} == own.scores, "its own-dataset metrics are kept"
    assert metrics["test_loss on fashion-mnist"] == other.scores["test_loss"]
    arguments = argparse.Namespace(id=record.id, dataset="fashion-mnist", download=False, json=True)
    output = command_evaluate(arguments, workspace)
    assert (output["dataset"], output["model_dataset"]) == ("fashion-mnist", "mnist")
    assert output["stored_as"] == list(other.stored)


@pytest.mark.parametrize(
    ("dataset", "shape"),
    [("cifar10", "(3, 32, 32) and 10"), ("mnist", "(1, 28, 28) and 10"), ("cifar100", "(3, 32, 32) and 100")],
)
def test_evaluating_on_a_dataset_of_another_shape_is_refused_naming_both(
    workspace: Workspace, trained_mlp, dataset: str, shape: str
) -> None:
    record = trained_mlp.save_to(workspace)

    with pytest.raises(ArchitectureError, match="takes inputs") as refused:
        evaluate_and_save(workspace, record.id, dataset)

    assert "(1, 8, 8) with 10 classes" in str(refused.value) and f"{dataset} has {shape}" in str(refused.value)
    assert workspace.record(record.id).metrics == record.metrics


@pytest.mark.parametrize("method", ["ot", "matching", "average"])
def test_a_weights_only_fusion_without_data_equals_the_same_fusion_given_data(method: str, digits: Dataset) -> None:
    spec = ModelSpec("mlp", digits.input_shape, digits.num_classes, hidden=(16, 12))
    parents = [build_model(spec, seed=0), build_model(spec, seed=1)]

    without = fuse(parents, method)
    given = fuse(parents, method, data=digits)

    for name, tensor in given.model.state_dict().items():
        assert torch.equal(without.model.state_dict()[name], tensor), name
    assert "weights alone" in without.report.notes[0] and not given.report.notes


def test_the_fuse_docstring_example_fuses_without_data() -> None:
    outcome = doctest.testmod(registry)

    assert outcome.attempted >= 4 and outcome.failed == 0


def batchnorm_mlps() -> list[torch.nn.Module]:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(8,), batch_norm=True)
    return [build_model(spec, seed=0), build_model(spec, seed=1)]


def plain_mlps() -> list[torch.nn.Module]:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(8,))
    return [build_model(spec, seed=0), build_model(spec, seed=1)]


FUSE_REFUSALS = {
    "ot activations": (plain_mlps, "ot", {"mode": "activations"}, "mode=activations needs data"),
    "matching activations": (plain_mlps, "matching", {"mode": "activations"}, "mode=activations needs data"),
    "ot BatchNorm": (batchnorm_mlps, "ot", {}, "recompute_bn needs data: the parents have BatchNorm"),
    "average BatchNorm": (batchnorm_mlps, "average", {}, "recompute_bn needs data: the parents have BatchNorm"),
    "REPAIR": (plain_mlps, "ot", {"repair": True}, "repair needs data"),
}


@pytest.mark.parametrize(("parents", "method", "options", "message"), list(FUSE_REFUSALS.values()), ids=FUSE_REFUSALS)
def test_an_option_that_needs_data_is_refused_by_name_before_any_work(parents, method, options, message) -> None:
    calls: list[tuple] = []

    with pytest.raises(ConfigError, match=message):
        fuse(parents(), method, progress=lambda *call: calls.append(call), **options)

    assert calls == [], "refused before fusing"


def test_batchnorm_parents_fuse_without_data_when_their_statistics_are_kept() -> None:
    result = fuse(batchnorm_mlps(), "ot", recompute_bn=False)

    assert result.report.verified[1] < 1e-4


def test_a_network_whose_first_layer_is_a_convolution_needs_its_input_shape_to_fuse_without_data() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10, channels=(4,), hidden=(8,))
    parents = [build_model(spec, seed=0), build_model(spec, seed=1)]

    with pytest.raises(ConfigError, match=r"first layer \(Conv2d\): give input_shape"):
        fuse(parents, "ot")
    assert fuse(parents, "ot", input_shape=(1, 8, 8)).report.verified[1] < 1e-4


def test_fuse_and_save_without_the_dataset_refuses_what_needs_it_and_fuses_what_does_not(workspace: Workspace) -> None:
    ids = [save_mnist_model(workspace, seed, batch_norm=True).id for seed in (0, 1)]

    with pytest.raises(DatasetError, match="MNIST was not found.*recompute_bn needs data"):
        fuse_and_save(workspace, ids, "ot")
    with pytest.raises(DatasetError, match="ensemble is not stored"):
        fuse_and_save(workspace, ids, "ensemble")
    assert len(workspace.records()) == 2, "nothing stored"
    run = fuse_and_save(workspace, ids, "ot", {"recompute_bn": False})

    assert run.not_evaluated is not None and "MNIST was not found" in run.not_evaluated
    assert run.record is not None and not is_evaluated(run.record) and set(run.metrics) == {"fusion_seconds"}
    again = fuse_and_save(workspace, ids, "ot", {"recompute_bn": False})
    assert again.reused and again.not_evaluated is not None


def test_the_models_table_reads_not_evaluated_for_a_model_without_test_metrics(workspace, trained_mlp) -> None:
    evaluated = trained_mlp.save_to(workspace)
    bare = trained_mlp.save_to(workspace, metrics={})

    rows = marked_not_evaluated(model_rows([evaluated, bare]))

    accuracy = f"{100 * evaluated.metrics['test_accuracy']:.1f}"
    assert rows["test accuracy (%)"].tolist() == [accuracy, NOT_EVALUATED]
    assert rows["test loss"].tolist()[1] == NOT_EVALUATED
    assert model_rows([evaluated])["test accuracy (%)"].dtype.kind == "f", "all evaluated: the column stays numeric"


def test_the_models_page_imports_without_the_dataset_and_evaluates_on_demand(
    app_workspace: Workspace, isolated_fusionlab_home: Path
) -> None:
    state = build_model(SpecOptions("mlp").build(MNIST_SHAPE, 10), seed=0).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    at = open_app("pages/models.py")
    at.selectbox(key="import.source").set_value("zoo").run()
    at.selectbox(key="import.arch").set_value("mlp").run()
    at.selectbox(key="import.dataset").set_value("mnist").run()
    at.file_uploader(key="import.file").upload("weights.pt", buffer.getvalue())
    at.button(key="FormSubmitter:import-Import").click().run()

    assert not at.exception and not at.error, messages(at.error)
    assert any(NOT_EVALUATED in text for text in messages(at.success))
    (record,) = app_workspace.records()
    assert at.dataframe[0].value["test accuracy (%)"].tolist() == [NOT_EVALUATED]
    at.multiselect(key="models.selection").select(record.id).run()
    at.button(key=f"models.evaluate.{record.id}").click().run()
    assert any("MNIST was not found" in text for text in messages(at.error)), "still missing: the reason"

    fake_mnist(isolated_fusionlab_home / "data", n=12)
    at.button(key=f"models.evaluate.{record.id}").click().run()

    assert not at.exception and not at.error, messages(at.error)
    assert is_evaluated(app_workspace.record(record.id))
    assert at.dataframe[0].value["test accuracy (%)"].notna().all()
