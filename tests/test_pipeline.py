"""Pipelines: the offline demo ensemble (an acceptance criterion) and train-and-save."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fusion.data import Dataset
from fusion.errors import ArchitectureError
from fusion.models import ModelSpec
from fusion.train import TrainConfig, evaluate
from fusion.workspace import Workspace
from studies.pipeline import (
    build_demo_ensemble,
    demo_members,
    finetune_and_save,
    fuse_and_save,
    train_and_save,
    train_key,
)


def test_demo_ensemble_trains_seven_models_and_every_mlp_reaches_95_percent(
    workspace: Workspace, digits: Dataset
) -> None:
    calls: list[tuple[int, int, str]] = []
    members = demo_members()
    stored = build_demo_ensemble(workspace, progress=lambda *call: calls.append(call))
    records = [s.record for s in stored]
    assert not any(s.reused for s in stored)

    assert len(records) == 7
    assert [r.spec.arch for r in records] == ["mlp"] * 4 + ["cnn"] * 3
    assert sorted(r.id for r in workspace.records()) == sorted(r.id for r in records)
    for record, member in zip(records, members):
        assert record.spec == member.spec
        assert record.dataset == "digits"
        assert record.normalization == digits.normalization
        assert record.seed == member.config.seed
        assert record.provenance == {
            "method": "train",
            "options": member.config.to_dict(),
            "run": train_key(member.spec, "digits", member.config),
        }
        assert {"test_accuracy", "test_loss", "train_accuracy", "train_loss"} <= record.metrics.keys()
        model, stored = workspace.load(record.id)
        assert stored == record
        metrics = evaluate(model, *digits.split("test"))
        assert metrics.accuracy == pytest.approx(record.metrics["test_accuracy"])
        if record.spec.arch == "mlp":
            assert metrics.accuracy >= 0.95, f"{record.name}: {metrics.accuracy:.3f}"

    mlp_seeds = [r.seed for r in records if r.spec.arch == "mlp"]
    assert len(set(mlp_seeds)) == 4
    first, second = (workspace.load(r.id)[0].state_dict() for r in records[:2])
    assert any(not torch.equal(first[k], second[k]) for k in first), "different seeds give different members"

    total = sum(m.config.epochs for m in members)
    assert [done for done, _, _ in calls] == list(range(1, total + 1))
    assert all(t == total for _, t, _ in calls)

    calls.clear()
    again = build_demo_ensemble(workspace, progress=lambda *call: calls.append(call))
    assert [s.record for s in again] == records and all(s.reused for s in again)
    assert len(workspace.records()) == 7 and calls == [], "a second build trains nothing and stores no copy"


MISFITS = {
    "mnist-shape": ModelSpec("mlp", (1, 28, 28), 10, hidden=(16,)),
    "cifar-shape": ModelSpec("cnn", (3, 32, 32), 10, channels=(4,)),
    "hundred-classes": ModelSpec("mlp", (1, 8, 8), 100, hidden=(16,)),
}


@pytest.mark.parametrize("spec", list(MISFITS.values()), ids=list(MISFITS))
def test_train_and_save_refuses_a_spec_that_does_not_fit_the_dataset(workspace: Workspace, spec: ModelSpec) -> None:
    calls = []
    with pytest.raises(ArchitectureError, match="digits"):
        train_and_save(workspace, spec, "digits", TrainConfig(epochs=1), progress=lambda *call: calls.append(call))
    assert calls == [], "nothing was trained"
    assert workspace.records() == []
    assert list((workspace.root / "models").iterdir()) == []


def test_train_and_save_stores_metrics_that_match_the_saved_weights(workspace: Workspace, digits: Dataset) -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,))
    config = TrainConfig(epochs=2, lr=1e-2, seed=3)
    record = train_and_save(workspace, spec, "digits", config, name="tiny").record
    assert record.name == "tiny" and record.seed == 3
    assert record.provenance == {
        "method": "train",
        "options": config.to_dict(),
        "run": train_key(spec, "digits", config),
    }
    model, _ = workspace.load(record.id)
    assert evaluate(model, *digits.split("test")).accuracy == pytest.approx(record.metrics["test_accuracy"])
    assert evaluate(model, *digits.split("train")).accuracy > 0.5


def test_train_and_save_with_the_same_config_reuses_the_stored_model(workspace: Workspace) -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,))
    config = TrainConfig(epochs=1, lr=1e-2, seed=11)
    first = train_and_save(workspace, spec, "digits", config)
    second = train_and_save(workspace, spec, "digits", config, name="another name")
    assert (first.reused, second.reused) == (False, True)
    assert second.record == first.record and len(workspace.records()) == 1
    other_seed = train_and_save(workspace, spec, "digits", replace(config, seed=12))
    other_lr = train_and_save(workspace, spec, "digits", replace(config, lr=2e-2))
    assert not other_seed.reused and not other_lr.reused and len(workspace.records()) == 3


def test_train_and_save_without_reuse_saves_identical_weights(workspace: Workspace) -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,))
    config = TrainConfig(epochs=1, lr=1e-2, seed=11)
    first, second = (train_and_save(workspace, spec, "digits", config, reuse=False).record for _ in range(2))
    assert first.id != second.id
    a, b = workspace.load(first.id)[0].state_dict(), workspace.load(second.id)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_a_fusion_in_memory_equals_fine_tuning_it_from_disk(workspace: Workspace, monkeypatch) -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(16,))
    ids = [train_and_save(workspace, spec, "digits", TrainConfig(epochs=1, seed=s)).record.id for s in range(2)]
    run = fuse_and_save(workspace, ids, "ot")
    assert run.record is not None and run.model is not None
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    stored, _ = workspace.load(run.record.id)
    assert all(torch.equal(before[k], v) for k, v in stored.state_dict().items()), "run.model is the saved network"

    loads: list[str] = []
    load = Workspace.load
    monkeypatch.setattr(Workspace, "load", lambda self, i: loads.append(i) or load(self, i))
    config = TrainConfig(epochs=2, seed=3)
    in_memory = finetune_and_save(workspace, run.record.id, config, model=run.model, reuse=False).record
    assert loads == [], "no reload of the fused model"
    from_disk = finetune_and_save(workspace, run.record.id, config, reuse=False).record
    a, b = (workspace.load(r.id)[0].state_dict() for r in (in_memory, from_disk))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items()), "the run's model is untouched"
