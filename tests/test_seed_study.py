"""The generalization study in one step (prune both parents, fuse, fine-tune, the Hessian of every stage), the
unstructured pruning it uses, its command and its page."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from app_helpers import messages, open_app, wait_for_job

from cli.main import main
from fusion.errors import ConfigError
from fusion.methods.sparsify import zero_smallest
from fusion.models import build_model, default_spec
from fusion.registry import fuse
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.pipeline import train_and_save
from studies.runs import stored_hessian
from studies.seed_study import SeedStudy, StudyConfig, StudyStage, seed_study, study_rows
from studies.sharpness import Sharpness

QUICK = {"hessian_samples": 60, "top_k": 2, "finetune_epochs": 1}


def quick_cnns(workspace: Workspace) -> list[str]:
    spec = default_spec("cnn", (1, 8, 8), 10)
    return [train_and_save(workspace, spec, "digits", TrainConfig(epochs=2, seed=s)).record.id for s in (0, 1)]


def test_zeroing_the_smallest_weights_zeroes_exactly_that_many() -> None:
    generator = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(10, 7, generator=generator), "b": torch.randn(5, 3, 3, generator=generator) * 10}
    layer = zero_smallest(weights, 0.3, "layer")
    assert [int((layer[k] == 0).sum()) for k in "ab"] == [21, 14]
    assert float(layer["a"][layer["a"] != 0].abs().min()) >= float(weights["a"][layer["a"] == 0].abs().max())
    overall = zero_smallest(weights, 0.3, "global")
    assert int((overall["a"] == 0).sum()) + int((overall["b"] == 0).sum()) == round(0.3 * 115)
    assert int((overall["a"] == 0).sum()) > int((overall["b"] == 0).sum()), "the larger layer keeps more"


def test_sparsify_keeps_the_architecture_and_the_untouched_weights(digits) -> None:
    model = build_model(default_spec("cnn", (1, 8, 8), 10), seed=0)
    result = fuse([model], "sparsify", data=digits, sparsity=0.5)
    assert {k: v.shape for k, v in result.model.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    for name, fraction in result.report.details.zero_fraction.items():
        assert fraction == pytest.approx(0.5, abs=0.01), name
        kept = result.model.state_dict()[name] != 0
        assert torch.equal(result.model.state_dict()[name][kept], model.state_dict()[name][kept])
    assert torch.equal(result.model.state_dict()["features.0.bias"], model.state_dict()["features.0.bias"])


@pytest.mark.parametrize("pruning", ["structured", "unstructured"])
def test_the_study_runs_every_stage_and_takes_each_hessian(workspace, pruning) -> None:
    parents = quick_cnns(workspace)
    study = seed_study(workspace, parents, StudyConfig(pruning=pruning, **QUICK))
    assert [s.stage for s in study.stages] == ["parent A", "parent B", "pruned A", "pruned B", "fused", "fine-tuned"]
    assert all(stored_hessian(workspace, s.model) is not None for s in study.stages)
    records = {s.stage: workspace.record(s.model) for s in study.stages}
    assert records["pruned A"].parents == [parents[0]] and records["fused"].parents == [
        records["pruned A"].id,
        records["pruned B"].id,
    ]
    assert records["fine-tuned"].parents == [records["fused"].id]
    widths = (records["parent A"].spec.channels, records["pruned A"].spec.channels)
    if pruning == "structured":
        assert widths[1] == tuple(c // 2 for c in widths[0])
    else:
        assert widths[1] == widths[0]
    pruned = next(s for s in study.stages if s.stage == "pruned A").sharpness
    parent = next(s for s in study.stages if s.stage == "parent A").sharpness
    assert pruned.top_ratio == pytest.approx(pruned.eigenvalues[0] / parent.eigenvalues[0])
    again = seed_study(workspace, parents, StudyConfig(pruning=pruning, **QUICK))
    assert [s.model for s in again.stages] == [s.model for s in study.stages], "every stage reused"


def test_study_rows_give_accuracy_in_percent() -> None:
    sharpness = Sharpness("m", "m", "fused", "ot", [2.0], [1e-17], [0.5], 10.0, 0.1, 0.2, [2.0], 0.1, 0.2, 0.1)
    study = SeedStudy(StudyConfig(), [StudyStage("fused", "m", 0.9644, 0.2, sharpness)])
    (row,) = study_rows(study)
    assert row["test accuracy (%)"] == pytest.approx(96.44)
    assert not [name for name in row if name.endswith("accuracy")], "no column holds a fraction"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"method": "ensemble"}, "two models into one network"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"pruning": "x"}, "pruning"),
    ],
)
def test_bad_study_settings_are_refused(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        StudyConfig(**options)


def test_the_study_command_prints_every_stage(workspace, capsys, tmp_path) -> None:
    parents = quick_cnns(workspace)
    path = tmp_path / "study.csv"
    arguments = ["--hessian-samples", "60", "--top-k", "2", "--finetune-epochs", "1", "--csv", str(path)]
    status = main(["study", "--parents", *parents, *arguments, "--workspace", str(workspace.root), "--json", "--quiet"])
    output = json.loads(capsys.readouterr().out)
    assert status == 0, output
    assert [s["stage"] for s in output["stages"]][-1] == "fine-tuned"
    table = pd.read_csv(path)
    assert table["stage"].tolist() == [s["stage"] for s in output["stages"]]
    assert table["test accuracy (%)"].tolist() == pytest.approx([s["test_accuracy_pct"] for s in output["stages"]])
    assert all(0 < s["test_accuracy_pct"] <= 100 and "test_accuracy" not in s for s in output["stages"])
    status = main(["study", "--parents", parents[0], parents[0], "--workspace", str(workspace.root), "--json"])
    assert status == 1 and "two different parents" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_the_study_page_runs_the_study_and_shows_every_stage(app_workspace) -> None:
    parents = quick_cnns(app_workspace)
    at = open_app("pages/study.py")
    assert not at.exception
    assert at.selectbox(key="study.method").value == "ot"
    at.selectbox(key="study.a").set_value(parents[0])
    at.selectbox(key="study.b").set_value(parents[1])
    at.number_input(key="study.hessian_samples").set_value(60)
    at.number_input(key="study.top_k").set_value(2)
    at.number_input(key="study.finetune_epochs").set_value(1)
    at.button(key="FormSubmitter:study.form-Run the study").click().run()
    assert not at.exception and not at.error, messages(at.error) + [str(e) for e in at.exception]
    job = wait_for_job()
    at.run()
    assert job is not None and job.status == "done", job
    assert not at.exception and not at.error, messages(at.error)
    assert at.dataframe[0].value["stage"].tolist()[-2:] == ["fused", "fine-tuned"]
    assert len(at.get("plotly_chart")) == 1
    assert any("python -m fusion study --parents" in c.value for c in at.code)
