"""Every number kept, named and reproducible (issue 30): analyses are records keyed by their settings, no run replaces
another's result, names never collide, and every command line shown rebuilds exactly what it stands beside."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
from app_helpers import train_quick_models

from cli.main import main
from fusion.workspace import Workspace
from studies.comparison import comparison_from_workspace

HESSIAN = ["--top-k", "2", "--iterations", "20", "--probes", "5", "--runs", "1", "--steps", "10", "--bins", "50"]
HESSIAN += ["--perturb-points", "5", "--random-directions", "0", "--plane-points", "0"]


def run(capsys: pytest.CaptureFixture, *words: str) -> dict:
    status = main([*words, "--json", "--quiet"])
    output = json.loads(capsys.readouterr().out)
    assert status == 0, output
    return output


def rerun(capsys: pytest.CaptureFixture, command: str) -> dict:
    """A command line as shown (``python -m fusion ...``), run in this process."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "fusion"]
    return run(capsys, *words[3:])


def files_of(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.json")}


@pytest.fixture
def parents(isolated_fusionlab_home: Path) -> list[str]:
    workspace = Workspace(isolated_fusionlab_home / "workspace")
    return [r.id for r in train_quick_models(workspace, seeds=(0, 1), hidden=(16,))]


def test_hessians_of_other_settings_are_kept_and_a_study_adds_records_without_changing_them(
    parents: list[str], isolated_fusionlab_home: Path, capsys: pytest.CaptureFixture
) -> None:
    model = parents[0]
    first = run(capsys, "hessian", model, *HESSIAN, "--samples", "200")
    second = run(capsys, "hessian", model, *HESSIAN, "--samples", "300")
    assert first["result"] != second["result"] and not first["reused"]
    listed = run(capsys, "results", model)["results"]
    assert [r["key"] for r in listed] == [second["result"], first["result"]], "both kept, the newest first"
    assert [r["settings"]["config"]["samples"] for r in listed] == [300, 200]
    assert all(r["command"].startswith(f"python -m fusion hessian {model}") and r["code"] for r in listed)
    workspace = Workspace(isolated_fusionlab_home / "workspace")
    stored = workspace.find_result(model, "hessian", first["result"]).payload
    assert repr(stored["top"]["eigenvalues"][0]) == repr(first["top_eigenvalues"][0]), "byte-identical λ1"
    again = rerun(capsys, listed[1]["command"])
    assert again["reused"] and again["result"] == first["result"]
    assert again["top_eigenvalues"] == first["top_eigenvalues"]

    before = files_of(workspace.results_dir(model))
    study = run(capsys, "study", "--parents", *parents, "--finetune-epochs", "1", "--hessian-samples", "100")
    after = files_of(workspace.results_dir(model))
    assert {name: after[name] for name in before} == before, "the study changed no stored result"
    assert len(after) == len(before) + 2, "it added its parent's Hessian and the study itself"
    kinds = [r["kind"] for r in run(capsys, "results", model)["results"]]
    assert kinds.count("hessian") == 3 and kinds.count("study") == 1
    assert rerun(capsys, study["command"])["result"] == study["result"]

    status = main(["delete", model, "--result", first["result"], "--json", "--quiet"])
    assert status == 0 and json.loads(capsys.readouterr().out)["deleted"]["result"] == first["result"]
    assert first["result"] not in [r["key"] for r in run(capsys, "results", model)["results"]]


def test_a_landscape_of_other_settings_is_added_beside_the_first(parents, capsys) -> None:
    line = ["landscape", "--models", parents[0], "--kind", "random", "--dims", "1", "--samples", "50"]
    first = run(capsys, *line, "--resolution", "3")
    second = run(capsys, *line, "--resolution", "5")
    assert first["result"] != second["result"] and (first["points"], second["points"]) == (3, 5)
    assert rerun(capsys, first["command"]) == {**first, "reused": True}
    kinds = [(r["kind"], r["key"]) for r in run(capsys, "results", parents[0], "--kind", "landscape-random")["results"]]
    assert kinds == [("landscape-random", second["result"]), ("landscape-random", first["result"])]


def test_fusions_that_differ_have_names_that_differ_and_no_two_models_share_a_name(parents, capsys) -> None:
    plain = run(capsys, "fuse", "--method", "ot", "--models", *parents)["models"][0]
    repaired = run(capsys, "fuse", "--method", "ot", "--repair", "--models", *parents)["models"][0]
    assert plain["name"] != repaired["name"] and "REPAIR" in repaired["name"]
    twin = run(capsys, "fuse", "--method", "average", "--models", *parents, "--name", plain["name"])["models"][0]
    assert twin["name"].startswith(plain["name"] + " · ") and twin["name"] != plain["name"]
    names = [m["name"] for m in run(capsys, "list")["models"]]
    assert len(names) == len(set(names)) == 5


def test_every_compare_row_command_rebuilds_the_rows_model_repair_included(
    parents, isolated_fusionlab_home: Path, capsys
) -> None:
    compared = run(capsys, "compare", "--parents", *parents, "--methods", "ot", "average", "--finetune-epochs", "1")
    repaired = run(capsys, "fuse", "--method", "ot", "--repair", "--models", *parents)["models"][0]["id"]
    workspace = Workspace(isolated_fusionlab_home / "workspace")
    page_rows = comparison_from_workspace(workspace, parents).rows
    assert repaired in [row.id for row in page_rows]
    shown = [(row["id"], row["finetuned_id"], row["command"]) for row in compared["rows"]]
    shown += [(row.id, row.finetuned_id, " && ".join(row.commands)) for row in page_rows]
    for fused, tuned, command in shown:
        assert "FUSED_ID" not in command
        rebuilt = [m["id"] for m in rerun(capsys, command)["models"]]
        assert rebuilt == [fused, *([tuned] if tuned else [])], command


def test_train_and_finetune_print_the_command_that_rebuilds_their_models(isolated_fusionlab_home, capsys) -> None:
    trained = run(capsys, "train", "--arch", "mlp", "--hidden", "8", "--epochs", "1", "--seed", "3", "4")
    again = rerun(capsys, trained["command"])
    assert [(m["id"], m["reused"]) for m in again["models"]] == [(m["id"], True) for m in trained["models"]]
    tuned = run(capsys, "finetune", trained["models"][0]["id"], "--epochs", "1", "--lr", "0.01")
    assert [m["id"] for m in rerun(capsys, tuned["command"])["models"]] == [tuned["models"][0]["id"]]
