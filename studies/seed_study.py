"""The generalization study of "Unveiling Generalization Prospects in OT Fused Neural Networks" in one step: prune
both parents, fuse the pruned parents, fine-tune the fused network, and take the Hessian of every stage.

Pruning is structured (``prune``: whole neurons by L1 magnitude, the network narrower) or unstructured
(``sparsify``: the smallest weights zeroed, the architecture kept), at ``sparsity``; fusion is any method that fuses
two networks into one. Every stage is stored in the workspace with its provenance (reused when an identical run is
stored, :mod:`fusion.run_key`), and every Hessian with its model (:func:`studies.comparison.fill_hessians`), so the
Hessian, Compare and Loss landscape pages show them too. The result: per stage its model, test accuracy and loss and
its sharpness summary (:mod:`studies.sharpness`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from analysis.hessian_config import HessianConfig
from analysis.units import percent
from fusion.command_lines import command_line, non_default
from fusion.distributed import is_writer
from fusion.errors import ConfigError
from fusion.problems import Checked, Checks, given
from fusion.progress import Progress, no_progress
from fusion.records import Record
from fusion.registry import REGISTRY, resolve
from fusion.results import ResultRecord
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.comparison import fill_hessians
from studies.pipeline import check_compatible, finetune_and_save, fuse_and_save
from studies.runs import scaled
from studies.sharpness import Sharpness, sharpness_rows, sharpness_table

PRUNINGS = {"structured": "prune", "unstructured": "sparsify"}
STUDY = "study"
"""The kind of the record a study stores with its first parent (:mod:`fusion.results`)."""


@dataclass(frozen=True)
class StudyConfig(Record, Checked):
    """The study's choices: pruning type and fraction, fusion method, fine-tune, and the Hessian's settings (kept
    small: the study compares six models)."""

    pruning: Literal["structured", "unstructured"] = field(
        default="structured", metadata={"help": "remove whole neurons, or zero single weights"}
    )
    sparsity: float = field(default=0.5, metadata={"help": "fraction of neurons (or weights) pruned"})
    method: Literal["ot", "matching", "average", "transplant", "cla"] = field(
        default="ot", metadata={"help": "fusion method for the two pruned parents"}
    )
    finetune_epochs: int = field(default=5, metadata={"help": "epochs of the fused model's fine-tune"})
    lr: float = field(default=1e-3, metadata={"help": "fine-tune learning rate (Adam)"})
    hessian_samples: int = field(default=300, metadata={"help": "test examples of every Hessian"})
    top_k: int = field(default=3, metadata={"help": "top eigenvalues per model"})

    def check(self, checks: Checks) -> None:
        checks.choice("pruning", self.pruning, tuple(PRUNINGS))
        checks.number("sparsity", self.sparsity, 0, 1, above=True, below=True)
        spec = resolve(self.method).spec if self.method in REGISTRY else None
        if spec is None or spec.output == "ensemble" or spec.max_models == 1:
            fusing = [m for m, s in REGISTRY.items() if s.output != "ensemble" and s.max_models != 1]
            checks.add(
                "method",
                f"{{method}} must fuse two models into one network ({', '.join(fusing)}), got {given(self.method)}",
            )
        if checks.whole("finetune_epochs", self.finetune_epochs, 0, 1000):
            checks.nested(self.finetune, {"epochs": "finetune_epochs"})
        samples = checks.whole("hessian_samples", self.hessian_samples, 1)
        if checks.whole("top_k", self.top_k, 1) and samples:
            checks.nested(self.hessian, {"samples": "hessian_samples"})

    def finetune(self) -> TrainConfig:
        """The fused model's fine-tune (checked even with ``finetune_epochs`` 0, so a bad rate is refused)."""
        return TrainConfig(epochs=max(1, self.finetune_epochs), lr=self.lr, seed=0)

    def hessian(self) -> HessianConfig:
        return HessianConfig(
            samples=self.hessian_samples,
            batch_size=max(1, min(self.hessian_samples, 1000)),
            top_k=self.top_k,
            iterations=max(50, self.top_k),
            probes=50,
            deflation=10,
            steps=40,
            runs=2,
            random_directions=2,
        )


@dataclass(frozen=True)
class StudyStage(Record):
    """One model of the study: its stage (``parent A``, ``pruned A``, ``fused``, ``fine-tuned``, ...), id, test
    accuracy and loss, and sharpness summary."""

    stage: str
    model: str
    test_accuracy: float
    test_loss: float
    sharpness: Sharpness


@dataclass(frozen=True)
class SeedStudy(Record):
    """Every stage of one run of the study, in order, with the configuration."""

    config: StudyConfig
    stages: list[StudyStage]


def seed_study(
    workspace: Workspace,
    parent_ids: Sequence[str],
    config: StudyConfig = StudyConfig(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> SeedStudy:
    """Run the study on two parents (see the module docstring)."""
    if len(parent_ids) != 2 or parent_ids[0] == parent_ids[1]:
        raise ConfigError(f"the study takes two different parents, got {list(parent_ids)}")
    records = [workspace.record(i) for i in parent_ids]
    check_compatible(records, config.method)
    started = time.time()
    hessian = config.hessian()
    stages: list[tuple[str, str]] = [("parent A", parent_ids[0]), ("parent B", parent_ids[1])]
    pruning = PRUNINGS[config.pruning]
    steps = 5 if config.finetune_epochs else 4
    pruned = []
    for index, (label, parent) in enumerate(zip("AB", parent_ids)):
        run = fuse_and_save(
            workspace,
            [parent],
            pruning,
            {"sparsity": config.sparsity},
            device=device,
            progress=scaled(progress, index, steps, f"{config.pruning} pruning of parent {label}"),
        )
        assert run.record is not None
        pruned.append(run.record.id)
        stages.append((f"pruned {label}", run.record.id))
    fused = fuse_and_save(
        workspace, pruned, config.method, device=device, progress=scaled(progress, 2, steps, "fusion")
    )
    assert fused.record is not None
    stages.append(("fused", fused.record.id))
    if config.finetune_epochs:
        tuned = finetune_and_save(
            workspace,
            fused.record.id,
            config.finetune(),
            device=device,
            progress=scaled(progress, 3, steps, "fine-tune"),
            model=fused.model,
        )
        stages.append(("fine-tuned", tuned.record.id))
    ids = [model_id for _, model_id in stages]
    fill_hessians(workspace, ids, hessian, "test", device, scaled(progress, steps - 1, steps, "Hessians"))
    summaries = {s.model: s for s in sharpness_table(workspace, ids, hessian, "test")}
    study = SeedStudy(
        config,
        [
            StudyStage(
                stage,
                model_id,
                workspace.record(model_id).metrics["test_accuracy"],
                workspace.record(model_id).metrics["test_loss"],
                summaries[model_id],
            )
            for stage, model_id in stages
        ],
    )
    if is_writer():
        settings = config.to_dict()
        record = ResultRecord.make(STUDY, list(parent_ids), settings, study.to_dict(), time.time() - started)
        workspace.save_result(parent_ids[0], replace(record, command=study_command(parent_ids, config)))
    return study


def study_command(parent_ids: Sequence[str], config: StudyConfig) -> str:
    """The ``study`` command line that runs this study."""
    return command_line(["study", "--parents", *parent_ids], non_default(StudyConfig, config.to_dict()))


def study_rows(study: SeedStudy) -> list[dict[str, Any]]:
    """One flat row per stage: stage, test accuracy (%), then the sharpness columns
    (:func:`studies.sharpness.sharpness_rows`)."""
    return [
        {"stage": s.stage, "test accuracy (%)": percent(s.test_accuracy), **sharpness_rows([s.sharpness])[0]}
        for s in study.stages
    ]
