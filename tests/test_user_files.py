"""No write destroys data (issue 29): every file written at a user's path goes through one checked writer
(:mod:`fusion.user_files`), and every command that writes one refuses a protected target before any work."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import main
from fusion.errors import OutputFileError
from fusion.user_files import write_user_file
from fusion.workspace import ModelRecord, Workspace

CSV_COMMANDS: dict[str, Callable[[str], list[str]]] = {
    "hessian": lambda model: ["hessian", model],
    "landscape": lambda model: ["landscape", "--models", model, "--kind", "random", "--dims", "1"],
    "compare": lambda model: ["compare", "--parents", model, model],
    "study": lambda model: ["study", "--parents", model, model],
    "sweep": lambda model: ["sweep", "no-such-sweep.toml"],
    "sweeps": lambda model: ["sweeps", "no-such-sweep"],
}
"""Every command with ``--csv``, with arguments that would make it work (or fail later) if its target passed."""


def protected_targets(workspace: Workspace, model: ModelRecord, home: Path) -> dict[str, tuple[Path, str]]:
    """Targets that a ``--csv`` must never write, each with a word of the refusal; made fresh for every case."""
    folder = workspace.model_dir(model.id)
    checkpoint = home / "checkpoint.pt"
    checkpoint.write_bytes(b"a user's checkpoint")
    notes = home / "notes.csv"
    notes.write_bytes(b"a user's table")
    link_to_notes = home / "link-to-notes.csv"
    link_to_notes.symlink_to(notes)
    link_into_workspace = home / "link-to-weights.csv"
    link_into_workspace.symlink_to(folder / "model.safetensors")
    (home / "a-folder").mkdir()
    return {
        "model metadata": (folder / "meta.json", "inside the workspace"),
        "model weights": (folder / "model.safetensors", "inside the workspace"),
        "new file in the workspace": (workspace.root / "rows.csv", "inside the workspace"),
        "user checkpoint": (checkpoint, "already exists"),
        "user file": (notes, "already exists"),
        "link to a user file": (link_to_notes, "symbolic link"),
        "link into the workspace": (link_into_workspace, "symbolic link"),
        "folder": (home / "a-folder", "not a regular file"),
        "missing folder": (home / "missing" / "rows.csv", "no folder"),
        "proc file": (Path("/proc/self/status"), "already exists"),
    }


def fingerprint(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links as their own target path) with the sha256 of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def protected(trained_mlp, isolated_fusionlab_home: Path) -> tuple[Workspace, ModelRecord, dict[str, tuple[Path, str]]]:
    """A workspace with one model, and the targets of :func:`protected_targets` in a user folder beside it."""
    workspace = Workspace(isolated_fusionlab_home / "workspace")
    model = trained_mlp.save_to(workspace)
    home = isolated_fusionlab_home / "user"
    home.mkdir()
    return workspace, model, protected_targets(workspace, model, home)


@pytest.mark.parametrize("command", sorted(CSV_COMMANDS))
def test_csv_of_every_command_refuses_every_protected_target_before_any_work(
    command: str, protected, isolated_fusionlab_home: Path, capsys: pytest.CaptureFixture
) -> None:
    workspace, model, targets = protected
    before = fingerprint(isolated_fusionlab_home)
    for case, (target, reason) in targets.items():
        status = main([*CSV_COMMANDS[command](model.id), "--csv", str(target), "--json", "--quiet"])
        captured = capsys.readouterr()
        error = json.loads(captured.out)["error"]
        assert (status, error["type"]) == (1, "OutputFileError"), (case, error)
        assert str(target) in error["message"] and reason in error["message"], (case, error["message"])
        assert "Traceback" not in captured.err
    assert fingerprint(isolated_fusionlab_home) == before
    assert [r.id for r in workspace.records()] == [model.id]


def test_force_replaces_a_users_file_but_never_a_link_or_a_workspace_file(
    protected, isolated_fusionlab_home: Path, capsys: pytest.CaptureFixture
) -> None:
    workspace, model, targets = protected
    notes, _ = targets.pop("user file")
    targets.pop("user checkpoint")
    proc, _ = targets.pop("proc file")
    before = fingerprint(workspace.root)
    for case, (target, reason) in targets.items():
        status = main(["sweeps", "none", "--csv", str(target), "--force", "--json", "--quiet"])
        error = json.loads(capsys.readouterr().out)["error"]
        assert status == 1 and reason in error["message"], (case, error)
    line = ["landscape", "--models", model.id, "--kind", "random", "--dims", "1", "--resolution", "3"]
    status = main([*line, "--samples", "20", "--csv", str(proc), "--force", "--json", "--quiet"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert status == 1 and error["type"] == "OutputFileError" and str(proc) in error["message"]
    after = fingerprint(workspace.root)
    assert {path: after.get(path) for path in before} == before
    assert (notes.parent / "link-to-notes.csv").is_symlink() and notes.read_bytes() == b"a user's table"
    assert write_user_file(notes, b"new", overwrite=True) == notes and notes.read_bytes() == b"new"


def test_a_written_csv_is_whole_and_a_second_write_needs_force(
    trained_mlp, isolated_fusionlab_home: Path, capsys: pytest.CaptureFixture
) -> None:
    workspace = Workspace(isolated_fusionlab_home / "workspace")
    model = trained_mlp.save_to(workspace)
    target = isolated_fusionlab_home / "line.csv"
    line = ["landscape", "--models", model.id, "--kind", "random", "--dims", "1", "--resolution", "3"]
    line += ["--samples", "20", "--csv", str(target), "--json", "--quiet"]
    assert main(line) == 0
    summary = json.loads(capsys.readouterr().out)
    lines = target.read_text().splitlines()
    assert summary["csv_rows"] == 3 and len(lines) == 4 and lines[0].startswith("alpha")
    assert main(line) == 1 and "already exists" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert target.read_text().splitlines() == lines
    assert main([*line, "--force"]) == 0
    assert not [p.name for p in isolated_fusionlab_home.iterdir() if p.name.startswith(".line.csv")]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "rows.csv"
    target.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputFileError, match=f"cannot write {target}: No space left"):
        write_user_file(target, b"new", overwrite=True)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["rows.csv"]
