"""Check, then work, then store (issue 29): a command refuses any of its inputs before it trains or stores a model,
bounds its grids, names every environment setting it refuses, parses negative numbers, and ends quietly when its
reader goes away."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.grid import step_grid
from analysis.hessian_config import HessianConfig
from analysis.landscape import LandscapeConfig
from cli.main import main
from fusion.device import forced_device
from fusion.errors import ConfigError
from fusion.models import ModelSpec, build_model
from fusion.workspace import ModelRecord, Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture, line: str) -> tuple[int, dict]:
    status = main([*line.split(), "--json", "--quiet"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, json.loads(captured.out)


@pytest.fixture
def home_workspace(isolated_fusionlab_home: Path) -> Workspace:
    return Workspace(isolated_fusionlab_home / "workspace")


@pytest.fixture
def mlp(trained_mlp, home_workspace: Workspace) -> ModelRecord:
    return trained_mlp.save_to(home_workspace)


@pytest.fixture
def cnn(trained_mlp, home_workspace: Workspace) -> ModelRecord:
    data = trained_mlp.data
    spec = ModelSpec("cnn", data.input_shape, data.num_classes, channels=(4,), hidden=(8,))
    return home_workspace.save(
        build_model(spec, seed=0), spec=spec, dataset=data.name, normalization=data.normalization
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("fuse --method average --models {a} {a} --finetune-epochs -1", "epochs"),
        ("fuse --method ensemble --models {a} {a} --finetune-epochs 1", "cannot be fine-tuned"),
        ("fuse --method ot --models {a} {a} --ensemble-step 2", "--ensemble-step must be in [0, 1]"),
        ("study --parents {a} {b}", "mismatched architectures"),
        ("study --parents {a} {b} --lr nan", "lr must be"),
        ("study --parents {b} {a} --finetune-epochs 0 --lr -1", "lr must be"),
        ("train --arch mlp --epochs 1 --seed 0 -5", "seed"),
        ("compare --parents {a} {b} --finetune-epochs -1", "epochs"),
    ],
)
def test_refused_inputs_store_nothing(
    line: str, message: str, mlp, cnn, home_workspace: Workspace, capsys: pytest.CaptureFixture
) -> None:
    status, output = run(capsys, line.format(a=mlp.id, b=cnn.id))
    assert status == 1 and message in output["error"]["message"], output
    assert sorted(r.id for r in home_workspace.records()) == sorted([mlp.id, cnn.id])


@pytest.mark.parametrize(
    ("low", "high", "points"), [(-1e308, 1e308, 21), (1.0, 1.0 + 1e-9, 5), (-1e39, 1e39, 3), (0.0, 1e-46, 3)]
)
def test_grids_without_distinct_finite_points_are_refused(low: float, high: float, points: int) -> None:
    with pytest.raises(ConfigError, match="grid from"):
        step_grid(low, high, points, "range")
    with pytest.raises(ConfigError, match="perturb_low..perturb_high"):
        HessianConfig(perturb_low=low, perturb_high=high, perturb_points=max(points, 3))


def test_landscape_range_that_overflows_is_refused_before_evaluating(mlp, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="span"):
        LandscapeConfig(span=1e308)
    status, output = run(capsys, f"landscape --models {mlp.id} --kind random --range 1e308")
    assert status == 1 and "not finite" in output["error"]["message"]


def test_negative_numbers_parse_as_option_values(mlp, capsys: pytest.CaptureFixture) -> None:
    status, output = run(capsys, f"hessian {mlp.id} --perturb-low -1e40 --perturb-high 1e40")
    assert status == 1 and "perturb_low..perturb_high" in output["error"]["message"]
    status, output = run(capsys, f"landscape --models {mlp.id} --kind random --range -1E-3")
    assert status == 1 and "span must be a positive number, got -0.001" in output["error"]["message"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("tpu", "is not a device: use cpu, cuda or cuda:N"), ("cuda:99", "CUDA device"), ("cpu:0", "not a device")],
)
def test_a_device_setting_this_machine_cannot_honour_is_a_typed_refusal(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"FUSIONLAB_DEVICE='{value}'.*{message}"):
        forced_device(value)
    assert forced_device("cpu").type == "cpu"


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "fusion", "list", "--json", "--workspace", str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # the reader is gone before the command prints, as with `| head -c 0`
    error = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141
    assert "Traceback" not in error and "Exception ignored" not in error and "BrokenPipe" not in error
