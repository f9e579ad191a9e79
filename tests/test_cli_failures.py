"""Every failure of the command line under ``--json``: a non-zero exit, exactly one JSON object with ``error`` on
stdout, and no traceback on stderr (issue 10, item 5). The table runs in process through ``main``; three cases run
through the real entry point."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from cli.main import main
from cli.output import strict_json

MISSING = "no-such-model"

# (command line with {model} for a stored model's id and {tmp} for a scratch folder, expected exit status)
CASES = [
    ("frobnicate", 2),
    ("", 2),
    ("train", 2),
    ("train --arch transformer", 2),
    ("train --arch keras:resnet18 --dataset digits", 2),
    ("train --arch torchvision:resnet19 --dataset digits", 1),
    ("train --arch torchvision:resnet18 --dataset digits", 1),
    ("train --arch python:os:system --dataset digits", 1),
    ("train --arch mlp --dataset imagenet", 2),
    ("train --arch mlp --epochs 1e9", 2),
    ("train --arch mlp --epochs ten", 2),
    ("train --arch mlp --lr fast", 2),
    ("train --arch mlp --hidden 8,8", 2),
    ("train --arch mlp --optimizer lbfgs", 2),
    ("train --arch mlp --seed 1.5", 2),
    ("train --arch mlp --epochs 0", 1),
    ("train --arch mlp --epochs 1 --lr -1", 1),
    ("train --arch mlp --epochs 1 --seed -1", 1),
    ("train --arch mlp --epochs 1 --seed 1180591620717411303424", 1),
    ("train --arch mlp --epochs 1 --seed 9223372036854775808", 1),
    ("train --arch mlp --epochs 1 --channels 8", 1),
    ("train --arch cnn --epochs 1 --channels 0", 1),
    ("train --arch mlp --epochs 1 --dataset mnist", 1),
    ("list --unknown-flag", 2),
    ("device extra", 2),
    ("evaluate", 2),
    (f"evaluate {MISSING}", 1),
    ("export {model}", 2),
    (f"export {MISSING} --out {{tmp}}/x.safetensors", 1),
    ("export {model} --out ''", 1),
    ("export {model} --out /dev/null", 1),
    ("import", 2),
    ("import {tmp}/missing.pt --arch mlp", 1),
    ("import {tmp}/notes.txt --arch mlp", 1),
    ("fuse --models {model} {model}", 2),
    ("fuse --method magic --models {model} {model}", 2),
    ("fuse --method ot --models", 2),
    (f"fuse --method ot --models {{model}} {MISSING}", 1),
    ("fuse --method ot --models {model}", 1),
    ("fuse --method ot --models {model} {model} --weights nan nan", 1),
    ("fuse --method ot --models {model} {model} --weights -1 2", 1),
    ("fuse --method ot --models {model} {model} --solver quantum", 2),
    ("fuse --method ot --models {model} {model} --reference 5", 1),
    ("fuse --method average --models {model} {model} --finetune-epochs many", 2),
    ("finetune", 2),
    (f"finetune {MISSING}", 1),
    ("finetune {model} --epochs 0", 1),
    ("delete", 2),
    (f"delete {MISSING}", 1),
    ("hessian", 2),
    (f"hessian {MISSING}", 1),
    ("hessian {model} --split validation", 2),
    ("landscape", 2),
    ("landscape --models {model} --kind sphere", 2),
    ("landscape --models {model} --kind interpolation", 1),
    ("landscape --models {model} {model} --resolution 1", 1),
    ("landscape --models {model} {model} --resolution 1001 --kind plane", 1),
    ("landscape --models {model} --kind random --dims 3", 2),
    ("landscape --models {model} {model} --seed 4294967296", 1),
]


@pytest.fixture(scope="module")
def stored(tmp_path_factory, trained_mlp):
    from fusion.workspace import Workspace

    root = tmp_path_factory.mktemp("cli-failures")
    record = trained_mlp.save_to(Workspace(root / "ws"))
    (root / "notes.txt").write_text("not a checkpoint")
    return root, record.id


def command(template: str, stored) -> list[str]:
    root, model = stored
    return shlex.split(template.format(model=model, tmp=root)) + ["--workspace", str(root / "ws"), "--json", "--quiet"]


def test_the_table_has_at_least_forty_bad_command_lines():
    assert len(CASES) >= 40
    assert len({c for c, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("template,status", CASES, ids=[c or "(empty)" for c, _ in CASES])
def test_a_bad_command_line_fails_with_one_json_error(template, status, stored, capsys):
    code = main(command(template, stored))
    out, err = capsys.readouterr()
    assert code == status
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    error = json.loads(lines[0])["error"]
    assert error["type"] and error["message"]
    assert "Traceback" not in err
    assert err.strip().startswith("error:")


def test_a_failure_without_json_is_one_line_on_stderr(stored, capsys):
    root, _ = stored
    assert main(["evaluate", MISSING, "--workspace", str(root / "ws")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1


def test_an_internal_error_is_reported_without_a_traceback_unless_debugging(stored, capsys, monkeypatch):
    monkeypatch.setattr("cli.commands.describe_device", lambda device: 1 / 0)
    root, _ = stored
    assert main(["device", "--json", "--workspace", str(root / "ws")]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["type"] == "InternalError"
    assert "Traceback" not in err and "FUSIONLAB_DEBUG=1" in err
    monkeypatch.setenv("FUSIONLAB_DEBUG", "1")
    main(["device", "--json", "--workspace", str(root / "ws")])
    assert "Traceback" in capsys.readouterr().err


def test_non_finite_numbers_become_null_and_are_counted():
    text = strict_json({"loss": float("nan"), "curve": [1.0, float("inf"), -float("inf")], "ok": 2})
    assert json.loads(text) == {"loss": None, "curve": [1.0, None, None], "ok": 2, "non_finite_values": 3}


@pytest.mark.parametrize("template,status", [CASES[3], CASES[5], CASES[22]])
def test_the_real_entry_point_behaves_the_same(template, status, stored, repo_root):
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    done = subprocess.run(
        [sys.executable, "-m", "fusion", *command(template, stored)],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo_root,
        timeout=120,
    )
    assert done.returncode == status
    assert "error" in json.loads(done.stdout)
    assert "Traceback" not in done.stderr
