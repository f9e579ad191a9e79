"""The command line: exactly one JSON object per command with --json, exit status 1 and a JSON error on refusal."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cli.main import main
from cli.output import human_readable
from fusion.train import predict_logits
from fusion.workspace import ModelRecord, Workspace


def run_module(repo_root: Path, workspace_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FUSIONLAB_WORKSPACE": str(workspace_root), "FUSIONLAB_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fusion", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, Any]:
    """Run the CLI in-process with --json; the whole of stdout must be one JSON document."""
    status = main([*args, "--json", "--quiet"])
    out = capsys.readouterr().out
    return status, json.loads(out)


@pytest.fixture
def cli_workspace(isolated_fusionlab_home: Path) -> Workspace:
    """The workspace the CLI uses by default ($FUSIONLAB_WORKSPACE)."""
    return Workspace(isolated_fusionlab_home / "workspace")


@pytest.fixture
def cli_model(trained_mlp, cli_workspace: Workspace) -> ModelRecord:
    return trained_mlp.save_to(cli_workspace)


def test_train_json_prints_exactly_one_json_object(repo_root: Path, tmp_path: Path) -> None:
    workspace_root = tmp_path / "ws"
    result = run_module(
        repo_root,
        workspace_root,
        "train",
        "--arch",
        "mlp",
        "--dataset",
        "digits",
        "--seed",
        "0",
        "--json",
        "--epochs",
        "5",
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert isinstance(output, dict)
    (model,) = output["models"]
    assert 0 < model["test_accuracy_pct"] <= 100
    assert model["dataset"] == "digits" and model["method"] == "train"
    assert "epoch 5/5" in result.stderr, "progress goes to stderr"
    (record,) = Workspace(workspace_root).records()
    assert record.id == model["id"]
    assert 100 * record.metrics["test_accuracy"] == pytest.approx(model["test_accuracy_pct"])
    assert record.provenance["options"]["epochs"] == 5


def test_refused_input_exits_1_with_a_json_error_in_a_real_process(repo_root: Path, tmp_path: Path) -> None:
    result = run_module(repo_root, tmp_path / "ws", "evaluate", "mlp-digits-s0-000000", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["type"] == "WorkspaceError"
    assert "Traceback" not in result.stderr


def test_train_in_process_saves_one_model_per_seed(capsys, cli_workspace: Workspace) -> None:
    status, output = run_json(capsys, "train", "--arch", "mlp", "--hidden", "16", "--epochs", "1", "--seed", "0", "1")
    assert status == 0
    ids = [m["id"] for m in output["models"]]
    assert len(set(ids)) == 2
    assert sorted(r.id for r in cli_workspace.records()) == sorted(ids)
    assert {r.seed for r in cli_workspace.records()} == {0, 1}
    assert all(r.spec.hidden == (16,) for r in cli_workspace.records())


def test_list_json_shows_the_workspace_models(capsys, cli_workspace: Workspace, cli_model: ModelRecord) -> None:
    status, output = run_json(capsys, "list")
    assert status == 0
    assert output["workspace"] == str(cli_workspace.root)
    (listed,) = output["models"]
    assert listed["id"] == cli_model.id
    assert listed["test_accuracy_pct"] == pytest.approx(100 * cli_model.metrics["test_accuracy"])
    assert listed["arch"] == cli_model.spec.describe()


def test_list_json_on_an_empty_workspace_lists_nothing(capsys) -> None:
    status, output = run_json(capsys, "list")
    assert status == 0 and output["models"] == []


def test_list_with_an_explicit_workspace_option(capsys, trained_mlp, tmp_path: Path) -> None:
    other = Workspace(tmp_path / "other")
    record = trained_mlp.save_to(other)
    status, output = run_json(capsys, "list", "--workspace", str(other.root))
    assert status == 0 and [m["id"] for m in output["models"]] == [record.id]


def test_list_without_json_prints_one_line_per_model(capsys, cli_model: ModelRecord) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(cli_model.id)


def test_human_output_gives_residuals_spreads_and_errors_in_scientific_notation() -> None:
    text = human_readable({"trace": 12.5, "trace_error": 0.0123456, "sharpness": {"λ1 residual": 1.23456e-17}})
    assert text.splitlines() == ["trace: 12.5", "trace_error: 1.235e-02", "sharpness: {λ1 residual: 1.235e-17}"]


def field_names(value: Any) -> list[str]:
    """Every key of every object nested in a JSON value."""
    if isinstance(value, dict):
        return [*value, *(name for v in value.values() for name in field_names(v))]
    return [name for v in value for name in field_names(v)] if isinstance(value, list) else []


def test_json_outputs_give_accuracy_in_percent_under_names_that_say_so(capsys, cli_model: ModelRecord) -> None:
    fraction = cli_model.metrics["test_accuracy"]
    outputs = [
        run_json(capsys, *command)[1]
        for command in (["list"], ["evaluate", cli_model.id], ["fuse", "--method", "prune", "--models", cli_model.id])
    ]
    listed, evaluated, fused = outputs
    assert listed["models"][0]["test_accuracy_pct"] == pytest.approx(100 * fraction)
    assert evaluated["test_accuracy_pct"] == pytest.approx(100 * fraction) and 0 < evaluated["train_accuracy_pct"]
    assert fused["test_accuracy_pct"] == fused["models"][0]["test_accuracy_pct"] > 1
    assert not [name for output in outputs for name in field_names(output) if name.endswith("accuracy")]
    assert main(["list"]) == 0 and f"test acc {100 * fraction:.2f}%" in capsys.readouterr().out


def test_evaluate_json_reports_and_stores_the_metrics(capsys, trained_mlp, cli_workspace, cli_model) -> None:
    status, output = run_json(capsys, "evaluate", cli_model.id)
    assert status == 0
    assert output["id"] == cli_model.id
    assert output["test_accuracy_pct"] == pytest.approx(100 * trained_mlp.metrics()["test_accuracy"])
    assert 0 < output["train_accuracy_pct"] <= 100
    stored = cli_workspace.record(cli_model.id).metrics
    assert 100 * stored["train_accuracy"] == pytest.approx(output["train_accuracy_pct"])
    assert stored["test_loss"] == pytest.approx(output["test_loss"])


def test_export_then_import_round_trip(capsys, trained_mlp, cli_workspace, cli_model, tmp_path: Path) -> None:
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    status, exported = run_json(capsys, "export", cli_model.id, "--out", str(out_dir))
    assert status == 0
    path = Path(exported["path"])
    assert path.parent == out_dir and path.is_file()

    status, imported = run_json(capsys, "import", str(path))
    assert status == 0
    (model,) = imported["models"]
    assert model["id"] != cli_model.id and model["method"] == "import"
    assert model["test_accuracy_pct"] == pytest.approx(100 * cli_model.metrics["test_accuracy"])
    loaded, record = cli_workspace.load(model["id"])
    assert record.spec == cli_model.spec
    x = trained_mlp.data.x_test
    assert torch.equal(predict_logits(loaded, x), predict_logits(trained_mlp.model, x))


def test_import_plain_state_dict_with_arch_options(capsys, trained_mlp, cli_workspace, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(trained_mlp.model.state_dict(), path)
    status, output = run_json(capsys, "import", str(path), "--arch", "mlp", "--hidden", "32", "--dataset", "digits")
    assert status == 0
    (record,) = cli_workspace.records()
    assert record.id == output["models"][0]["id"] and record.spec == trained_mlp.spec


def test_import_with_a_spec_file(capsys, trained_mlp, cli_workspace, tmp_path: Path) -> None:
    path, spec_file = tmp_path / "weights.pt", tmp_path / "spec.json"
    torch.save(trained_mlp.model.state_dict(), path)
    spec_file.write_text(json.dumps(trained_mlp.spec.to_dict()))
    status, _ = run_json(capsys, "import", str(path), "--spec", str(spec_file), "--dataset", "digits")
    assert status == 0
    assert [r.spec for r in cli_workspace.records()] == [trained_mlp.spec]


def test_delete_removes_the_model(capsys, cli_workspace: Workspace, cli_model: ModelRecord) -> None:
    status, output = run_json(capsys, "delete", cli_model.id)
    assert status == 0 and output == {"deleted": cli_model.id}
    assert cli_workspace.records() == []
    status, output = run_json(capsys, "delete", cli_model.id)
    assert status == 1 and output["error"]["type"] == "WorkspaceError"


def test_device_json_reports_the_forced_cpu(capsys) -> None:
    status, output = run_json(capsys, "device")
    assert status == 0 and output["device"] == "cpu" and output["description"].startswith("CPU")


def write_random_bytes(path: Path) -> Path:
    path.write_bytes(random.Random(0).randbytes(2048))
    return path


def write_json(path: Path, payload: Any) -> Path:
    path.write_text(json.dumps(payload))
    return path


REFUSALS = {
    "zero-epochs": (lambda tmp: ["train", "--arch", "mlp", "--epochs", "0"], "ConfigError", "epochs"),
    "negative-lr": (lambda tmp: ["train", "--arch", "mlp", "--lr", "-1"], "ConfigError", "lr must be"),
    "invalid-spec": (lambda tmp: ["train", "--arch", "cnn", "--channels", "0"], "ArchitectureError", "positive"),
    "unknown-model": (lambda tmp: ["evaluate", "mlp-digits-s0-000000"], "WorkspaceError", "no model"),
    "malformed-id": (lambda tmp: ["export", "../../etc", "--out", str(tmp)], "WorkspaceError", "not a model id"),
    "random-bytes": (
        lambda tmp: ["import", str(write_random_bytes(tmp / "x.pt")), "--arch", "mlp", "--dataset", "digits"],
        "CheckpointError",
        "x.pt",
    ),
    "missing-file": (lambda tmp: ["import", str(tmp / "absent.pt")], "CheckpointError", "no checkpoint"),
    "arch-without-dataset": (
        lambda tmp: ["import", str(tmp / "absent.pt"), "--arch", "mlp"],
        "FusionError",
        "--dataset",
    ),
    "malformed-spec-file": (
        lambda tmp: [
            "import",
            str(write_random_bytes(tmp / "x.pt")),
            "--dataset",
            "digits",
            "--spec",
            str(
                write_json(
                    tmp / "spec.json", {"arch": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "hidden": ["wide"]}
                )
            ),
        ],
        "ArchitectureError",
        "invalid model spec",
    ),
    "mnist-not-local": (lambda tmp: ["train", "--arch", "mlp", "--dataset", "mnist"], "DatasetError", "download"),
}


@pytest.mark.parametrize(("make_args", "error_type", "message"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_refused_input_exits_1_with_a_json_error(
    capsys, cli_workspace: Workspace, tmp_path: Path, make_args, error_type: str, message: str
) -> None:
    status = main([*make_args(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert status == 1
    output = json.loads(captured.out)
    assert set(output) == {"error"} and set(output["error"]) == {"type", "message"}
    assert output["error"]["type"] == error_type
    assert message.lower() in output["error"]["message"].lower()
    assert captured.err.startswith("error: ")
    assert cli_workspace.records() == []


def test_refused_input_without_json_prints_only_to_stderr(capsys) -> None:
    assert main(["train", "--arch", "mlp", "--epochs", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "epochs" in captured.err
