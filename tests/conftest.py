"""Shared fixtures: CPU only, every FusionLab folder under pytest's tmp dirs, one small trained digits MLP."""

from __future__ import annotations

import os

# Before anything imports fusion.device, whose default_device() reads this once per process.
os.environ["FUSIONLAB_DEVICE"] = "cpu"

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from app_helpers import app_workspace  # noqa: F401  (the AppTest fixture, for every test module)
from hessian_helpers import tiny  # noqa: F401  (the Hessian tests' trained MLP, for every test module)
from hypothesis import settings
from torch import nn

from fusion.data import Dataset, load_dataset
from fusion.models import ModelSpec, build_model
from fusion.train import TrainConfig, TrainResult, train
from fusion.workspace import ModelRecord, Workspace

# One intra-op thread: the models are tiny, and on a shared 2-core machine a second thread mostly spins.
torch.set_num_threads(1)
settings.register_profile("fusionlab", deadline=None, database=None, max_examples=25)
settings.load_profile("fusionlab")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_fusionlab_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point FUSIONLAB_WORKSPACE and FUSIONLAB_DATA at fresh tmp dirs so no test touches ~/.fusionlab."""
    home = tmp_path_factory.mktemp("fusionlab-home")
    (home / "data").mkdir()
    monkeypatch.setenv("FUSIONLAB_WORKSPACE", str(home / "workspace"))
    monkeypatch.setenv("FUSIONLAB_DATA", str(home / "data"))
    return home


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@dataclass(frozen=True)
class TrainedModel:
    """A model trained once per session; tests must not train or load weights into ``model``."""

    model: nn.Module
    spec: ModelSpec
    config: TrainConfig
    result: TrainResult
    data: Dataset

    def metrics(self) -> dict[str, float]:
        assert self.result.test is not None
        return {"test_accuracy": self.result.test.accuracy, "test_loss": self.result.test.loss}

    def save_to(self, workspace: Workspace, **overrides: object) -> ModelRecord:
        options: dict[str, object] = {
            "spec": self.spec,
            "dataset": self.data.name,
            "normalization": self.data.normalization,
            "metrics": self.metrics(),
            "provenance": {"method": "train", "options": self.config.to_dict()},
            "seed": self.config.seed,
        }
        options.update(overrides)
        return workspace.save(self.model, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def trained_mlp(digits: Dataset) -> TrainedModel:
    """An MLP 32 on digits, 4 epochs of Adam: trains in well under a second."""
    spec = ModelSpec("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    config = TrainConfig(epochs=4, lr=1e-2, batch_size=64, seed=0)
    model = build_model(spec, seed=config.seed)
    result = train(model, digits, config)
    return TrainedModel(model.eval(), spec, config, result, digits)


@pytest.fixture
def saved_mlp(trained_mlp: TrainedModel, workspace: Workspace) -> ModelRecord:
    """``trained_mlp`` saved into the ``workspace`` fixture."""
    return trained_mlp.save_to(workspace)
