"""``python -m fusion hessian`` and ``landscape``: one JSON object on stdout, the result stored with the model, exit
status 1 and a JSON error on refused input."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis.hessian import HessianReport
from analysis.hessian_config import HessianConfig
from analysis.landscape import InterpolationResult, PlaneResult, RandomDirectionsResult
from cli.arguments import given_options
from cli.main import main, parser
from fusion.command_lines import command_line, non_default
from fusion.models import build_model
from fusion.options import option_fields
from fusion.workspace import ModelRecord, Workspace

FAST_HESSIAN = [
    "--samples",
    "120",
    "--probes",
    "4",
    "--runs",
    "2",
    "--steps",
    "8",
    "--iterations",
    "30",
    "--top-k",
    "2",
]


def run_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, Any]:
    status = main([*args, "--json", "--quiet"])
    return status, json.loads(capsys.readouterr().out)


@pytest.fixture
def cli_workspace(isolated_fusionlab_home: Path) -> Workspace:
    return Workspace(isolated_fusionlab_home / "workspace")


@pytest.fixture
def records(trained_mlp, cli_workspace: Workspace) -> list[ModelRecord]:
    """The trained MLP, an untrained one of the same spec (parents) and another saved as a fusion result."""
    return [
        trained_mlp.save_to(cli_workspace),
        *(
            cli_workspace.save(
                build_model(trained_mlp.spec, seed=seed),
                spec=trained_mlp.spec,
                dataset="digits",
                normalization=trained_mlp.data.normalization,
                provenance={"method": method},
                seed=seed,
            )
            for seed, method in ((1, "train"), (2, "ot"))
        ),
    ]


def test_hessian_command_prints_one_json_object_and_stores_the_result(
    repo_root: Path, records, cli_workspace: Workspace
) -> None:
    env = {
        **os.environ,
        "FUSIONLAB_WORKSPACE": str(cli_workspace.root),
        "FUSIONLAB_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusion",
            "hessian",
            records[0].id,
            "--json",
            *FAST_HESSIAN,
            "--layers",
            "--deflation",
            "5",
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["id"] == records[0].id and output["samples"] == 120 and len(output["top_eigenvalues"]) == 2
    assert output["top_eigenvalues"][0] >= output["top_eigenvalues"][1]
    assert "top eigenvalues" in result.stderr, "progress goes to stderr"
    stored = cli_workspace.find_result(records[0].id, "hessian", output["result"]).payload
    report = HessianReport.from_dict(stored)
    assert report.top.eigenvalues.tolist() == output["top_eigenvalues"]
    assert report.trace.mean == pytest.approx(output["trace"])
    assert stored["dataset"] == "digits" and stored["split"] == "test"
    assert (
        [layer["layer"] for layer in output["layers"]]
        == [layer.layer for layer in report.layers]
        == ["layers.1", "layers.3"]
    )
    assert report.config.layers and report.config.deflation == 5 and report.trace.deflation >= 5, (
        "the eigenvalue run's basis"
    )


def test_every_hessian_setting_round_trips_through_the_command_line_the_page_shows() -> None:
    config = HessianConfig(
        samples=None,
        batch_size=64,
        top_k=2,
        tolerance=1e-4,
        deflation=0,
        trace_tolerance=0.0,
        kernel_width=0.02,
        reorthogonalize=False,
        cache_graph=False,
        block_size=2,
        layers=True,
        seed=3,
    )
    line = command_line(["hessian", "ID"], non_default(HessianConfig, config.to_dict()))
    args = parser().parse_args(shlex.split(line)[3:])
    assert args.id == "ID" and HessianConfig(**given_options(args, option_fields(HessianConfig))) == config


@pytest.mark.parametrize(
    "kind, models, result_type",
    [
        ("interpolation", [0, 0], InterpolationResult),
        ("plane", [0, 1, 2], PlaneResult),
        ("random", [0], RandomDirectionsResult),
    ],
)
def test_landscape_command_stores_each_kind(
    capsys, records, cli_workspace: Workspace, kind: str, models: list[int], result_type
) -> None:
    ids = [records[i].id for i in models]
    status, output = run_json(
        capsys, "landscape", "--models", *ids, "--kind", kind, "--resolution", "3", "--samples", "100"
    )
    assert status == 0, output
    assert output["kind"] == kind and output["model_ids"] == ids
    stored = cli_workspace.find_result(ids[0], f"landscape-{kind}", output["result"]).payload
    assert stored["model_ids"] == ids
    result = result_type.from_dict(stored)
    assert result.metrics.test_loss.size == output["points"] == (9 if kind != "interpolation" else 3)
    if kind == "interpolation":
        assert abs(output["test_barrier"]) < 1e-5, "two copies of one model: a flat line"
    if kind == "plane":
        assert output["labels"] == ["parent A", "parent B", "fused"]


def test_a_missing_model_exits_1_with_a_json_error(capsys, cli_workspace: Workspace) -> None:
    status, output = run_json(capsys, "hessian", "mlp-digits-s0-000000")
    assert status == 1 and output["error"]["type"] == "WorkspaceError"


@pytest.mark.parametrize(
    "arguments, error",
    [
        (["hessian", "{id}", "--top-k", "0"], "ConfigError"),
        (["hessian", "{id}", "--top-k", "5000", "--iterations", "5000", "--samples", "50"], "AnalysisError"),
        (["landscape", "--models", "{id}", "--kind", "interpolation"], "ConfigError"),
        (["landscape", "--models", "{id}", "--kind", "random", "--resolution", "1"], "ConfigError"),
        (["landscape", "--models", "{id}", "--kind", "random", "--resolution", "120"], "GridTooLarge"),
    ],
)
def test_refused_analysis_input_exits_1(capsys, records, arguments: list[str], error: str) -> None:
    status, output = run_json(capsys, *[a.format(id=records[0].id) for a in arguments])
    assert status == 1 and output["error"]["type"] == error, output


def test_landscape_refuses_models_of_different_architectures(capsys, records, cli_workspace: Workspace) -> None:
    status, trained = run_json(capsys, "train", "--arch", "mlp", "--hidden", "8", "--epochs", "1")
    assert status == 0
    other = trained["models"][0]["id"]
    status, output = run_json(capsys, "landscape", "--models", records[0].id, other, "--kind", "interpolation")
    assert status == 1 and output["error"]["type"] == "ArchitectureError"


def test_hessian_csv_holds_every_curve_point_and_the_json_the_sharpness(
    capsys: pytest.CaptureFixture, records, cli_workspace: Workspace, tmp_path: Path
) -> None:
    path = tmp_path / "curves.csv"
    options = ["--random-directions", "2", "--perturb-points", "5", "--step-scale", "relative"]
    status, output = run_json(capsys, "hessian", records[0].id, *FAST_HESSIAN, *options, "--csv", str(path))
    assert status == 0 and output["csv"] == str(path)
    table = pd.read_csv(path)
    assert len(table) == output["csv_rows"] == (2 + 2) * 2 * 5, "(eigenvectors + random) x splits x points"
    assert set(table["split"]) == {"train", "test"} and set(table["scale"]) == {"relative"}
    report = HessianReport.from_dict(cli_workspace.find_result(records[0].id, "hessian", output["result"]).payload)
    curve = report.curve("random 2", "train")
    mine = table[(table["direction"] == "random 2") & (table["split"] == "train")]
    assert mine["loss"].tolist() == pytest.approx(curve.loss.tolist())
    assert mine["accuracy_pct"].tolist() == pytest.approx((100 * curve.accuracy).tolist()), "accuracy in percent"
    assert output["sharpness"]["λ1"] == pytest.approx(output["top_eigenvalues"][0])
    assert output["sharpness"]["generalisation gap"] == pytest.approx(
        report.metrics["test"].loss - report.metrics["train"].loss
    )
    assert [c["direction"] for c in output["curves"]][:2] == ["eigenvector 1", "eigenvector 1"]


def test_landscape_csv_has_one_row_per_point(capsys: pytest.CaptureFixture, records, tmp_path: Path) -> None:
    path = tmp_path / "line.csv"
    ids = [records[0].id, records[1].id]
    status, output = run_json(capsys, "landscape", "--models", *ids, "--resolution", "5", "--csv", str(path))
    assert status == 0 and output["csv_rows"] == 5
    table = pd.read_csv(path)
    assert table["t"].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert output["min_test_loss"] == pytest.approx(table["test_loss"].min())
    assert table["test_accuracy_pct"].between(1, 100).all() and "test_accuracy" not in table, "accuracy in percent"


def test_a_csv_path_in_a_missing_folder_is_refused_before_any_work(
    capsys: pytest.CaptureFixture, records, tmp_path: Path
) -> None:
    status, output = run_json(capsys, "hessian", records[0].id, *FAST_HESSIAN, "--csv", str(tmp_path / "no" / "x.csv"))
    assert status != 0 and "--csv" in output["error"]["message"]


def test_compare_command_fuses_fine_tunes_and_fills_every_hessian(
    capsys: pytest.CaptureFixture, records, tmp_path: Path
) -> None:
    path = tmp_path / "comparison.csv"
    parents = [records[0].id, records[1].id]
    arguments = ["--methods", "ot", "average", "--finetune-epochs", "1", "--hessian", "--hessian-samples", "60"]
    status, output = run_json(capsys, "compare", "--parents", *parents, *arguments, "--csv", str(path))
    assert status == 0, output
    assert [row["method"] for row in output["rows"]] == ["ot", "average"]
    assert all(
        row["top_eigenvalue"] is not None and row["finetuned_top_eigenvalue"] is not None for row in output["rows"]
    )
    assert len(output["sharpness"]) == 2 + 2 * 2
    assert pd.read_csv(path)["method"].tolist() == ["ot", "average"]
    assert pd.read_csv(path)["test_accuracy_pct"].tolist() == pytest.approx(
        [r["test_accuracy_pct"] for r in output["rows"]]
    )
    assert all(0 < row["test_accuracy_pct"] <= 100 and "test_accuracy" not in row for row in output["rows"])
    again_status, again = run_json(capsys, "compare", "--parents", *parents, *arguments)
    assert again_status == 0
    kept = ("id", "finetuned_id", "top_eigenvalue", "hessian_trace", "finetuned_top_eigenvalue")
    assert [{k: r[k] for k in kept} for r in again["rows"]] == [{k: r[k] for k in kept} for r in output["rows"]]
    assert all("reused" in row["note"] for row in again["rows"]), "fused, fine-tuned and Hessians all reused"
