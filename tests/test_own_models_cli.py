"""The issue's own-model path end to end from the command line: plain torchvision state_dicts imported onto a user's
image folder and fused with OT, every hard alignment verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from cli.main import main
from fusion.workspace import Workspace
from tests.data_helpers import make_folder


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


def test_two_torchvision_resnets_saved_as_state_dicts_import_onto_an_image_folder_and_fuse_with_ot(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = make_folder(tmp_path / "colours", per_class=4)
    dataset = f"imagefolder:{folder}@16"
    workspace = str(tmp_path / "ws")
    ids = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / f"resnet18-{seed}.pt")
        code, imported = run(
            capsys, "import", str(tmp_path / f"resnet18-{seed}.pt"), "--arch", "torchvision:resnet18",
            "--dataset", dataset, "--workspace", workspace,
        )  # fmt: skip
        assert code == 0, imported
        ids.append(imported["models"][0]["id"])
    code, fused = run(capsys, "fuse", "--method", "ot", "--models", *ids, "--workspace", workspace)
    assert code == 0, fused
    record = Workspace(tmp_path / "ws").record(fused["models"][0]["id"])
    assert (record.spec.arch, record.dataset) == ("torchvision:resnet18", dataset)
    verified = [error for error in record.provenance["report"]["verified"] if error is not None]
    assert len(verified) == 1 and verified[0] < 1e-4
