"""The Neuron Transplantation story, step by step, on two demo MLPs (the quickest demo parents to train)."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from pathlib import Path

import pytest

from cli.main import main
from fusion.errors import ConfigError
from fusion.workspace import Workspace
from studies.story import (
    STORY_RESULT,
    Story,
    StoryOptions,
    Verdict,
    advance_story,
    concatenation_step,
    finetune_title,
    load_story,
    parents_step,
    story_commands,
)

QUICK = StoryOptions(arch="mlp", parents=2, finetune_epochs=3)


@pytest.fixture(scope="module")
def story_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("story") / "workspace"


@pytest.fixture(scope="module")
def story(story_workspace: Path) -> Story:
    """Every step of the story on the demo MLPs with a 3-epoch fine-tune, run once for the module."""
    workspace = Workspace(story_workspace)
    told = Story(QUICK)
    while not told.finished:
        told = advance_story(workspace, told)
    return told


def test_parents_are_the_demo_members_and_are_found_instead_of_retrained(story: Story, story_workspace: Path) -> None:
    assert story.parents is not None
    assert len(story.parents.scores) == 2 and len(story.parents.trained) == 2
    assert [s.role for s in story.parents.scores] == ["parent A", "parent B"]
    assert story.parents.test_size == 450
    again = parents_step(Workspace(story_workspace), QUICK)
    assert again.trained == () and again.ids == story.parents.ids


def test_concatenated_model_computes_the_ensemble_exactly(story: Story) -> None:
    step = story.concatenation
    assert step is not None
    assert step.max_logit_difference < 1e-5
    assert step.disagreements == 0
    assert step.wide.test_accuracy == step.ensemble.test_accuracy
    assert step.wide_widths == {g: 2 * w for g, w in step.parent_widths.items()}


def test_pruning_keeps_exact_widths_and_survival_counts_add_up(story: Story) -> None:
    assert story.concatenation is not None and story.pruning is not None
    widths = story.concatenation.parent_widths
    for table in story.pruning.survival:
        assert len(table.kept) == 2 * widths[table.group]
        assert sum(table.kept) == widths[table.group]
        assert sum(table.kept_per_parent().values()) == widths[table.group]
        kept = [v for v, k in zip(table.importance, table.kept) if k]
        dropped = [v for v, k in zip(table.importance, table.kept) if not k]
        assert min(kept) >= max(dropped)
    assert story.pruning.accuracy_drop == pytest.approx(
        story.concatenation.ensemble.test_accuracy - story.pruning.transplanted.test_accuracy
    )
    assert set(story.pruning.norms) == {"parent A", "parent B", "fused"}


def test_finetune_improves_over_the_pruned_model(story: Story) -> None:
    assert story.pruning is not None and story.finetune is not None
    assert story.finetune.finetuned.test_accuracy > story.pruning.transplanted.test_accuracy
    assert story.finetune.config["epochs"] == 3


def test_baselines_are_ot_and_averaging_each_fine_tuned(story: Story, story_workspace: Path) -> None:
    assert story.baselines is not None
    assert [p.method for p in story.baselines.pairs] == ["ot", "average"]
    workspace = Workspace(story_workspace)
    for pair in story.method_pairs():
        tuned = workspace.record(pair.finetuned.id)
        assert tuned.parents == [pair.fused.id]
        assert workspace.record(pair.fused.id).method == pair.method


def test_stored_story_reloads_equal(story: Story, story_workspace: Path) -> None:
    workspace = Workspace(story_workspace)
    assert story.finetune is not None
    assert [r.kind for r in workspace.results(story.finetune.finetuned.id)] == [STORY_RESULT]
    assert load_story(workspace) == story
    assert Story.from_dict(story.to_dict()) == story


def test_a_finished_story_and_steps_out_of_order_are_refused(story: Story, story_workspace: Path) -> None:
    workspace = Workspace(story_workspace)
    with pytest.raises(ConfigError, match="finished"):
        advance_story(workspace, story)
    with pytest.raises(ConfigError, match="no parents step"):
        concatenation_step(workspace, Story(QUICK))


@pytest.mark.parametrize("changes", [{"parents": 1}, {"parents": 5}, {"arch": "vgg11"}, {"finetune_epochs": 0}])
def test_story_options_out_of_range_are_refused(changes: dict) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(StoryOptions(), **changes)


@pytest.mark.parametrize(
    "finetuned, ensemble, beats, expected",
    [
        (
            0.9822,
            0.9867,
            False,
            ["1 test image (0.22 points) ahead", "within the test set's sampling error of ±0.66", "on par"],
        ),
        (0.9956, 0.9867, True, ["7 test images (1.56 points) ahead", "beats every parent"]),
        (0.9800, 0.9867, False, ["a tie", "something to gain"]),
        (0.9778, 0.9711, False, ["1 test image behind", "does not beat the best parent", "0.22 points"]),
    ],
)
def test_verdict_weighs_the_margin_against_the_sampling_error(finetuned, ensemble, beats, expected) -> None:
    verdict = Verdict(finetuned, 0.9800, ensemble, 450)
    assert verdict.sampling_error == pytest.approx(math.sqrt(0.98 * 0.02 / 450))
    assert verdict.beats_best_parent is beats
    for text in expected:
        assert text in verdict.explanation()


@pytest.mark.parametrize(
    "pruned, tuned, title",
    [
        (0.80, 0.97, "A short fine-tune recovers 17.00 points"),
        (0.97, 0.97, "A short fine-tune does not recover (no change)"),
        (0.97, 0.95, "A short fine-tune does not recover (-2.00 points)"),
    ],
)
def test_the_fine_tune_steps_title_follows_its_outcome(pruned, tuned, title):
    assert finetune_title(pruned, tuned) == title


def test_telling_the_story_again_reuses_every_model_and_stores_no_copy(story: Story, story_workspace: Path) -> None:
    workspace = Workspace(story_workspace)
    before = {r.id for r in workspace.records()}
    told = Story(QUICK)
    while not told.finished:
        told = advance_story(workspace, told)
    assert {r.id for r in workspace.records()} == before
    assert told.parents is not None and told.parents.trained == ()
    assert [s.id for s in told.parents.scores] == [s.id for s in story.parents.scores]
    assert told.pruning is not None and story.pruning is not None
    assert told.pruning.transplanted == story.pruning.transplanted and told.pruning.survival == story.pruning.survival
    assert told.method_pairs() == story.method_pairs()


def test_every_command_line_the_story_shows_rebuilds_its_models(story: Story, story_workspace: Path, capsys) -> None:
    assert story.parents is not None and story.pruning is not None and story.finetune is not None
    assert story.baselines is not None
    expected = [[i] for i in story.parents.ids] + [[story.pruning.transplanted.id, story.finetune.finetuned.id]]
    expected += [[pair.fused.id, pair.finetuned.id] for pair in story.baselines.pairs]
    rebuilt = []
    for line in story_commands(story):
        words = shlex.split(line)
        assert words[:3] == ["python", "-m", "fusion"] and "FUSED_ID" not in words, line
        assert main([*words[3:], "--workspace", str(story_workspace), "--json", "--quiet"]) == 0, line
        models = json.loads(capsys.readouterr().out)["models"]
        assert all(m["reused"] for m in models), line
        rebuilt.append([m["id"] for m in models])
    assert sum(rebuilt, []) == sum(expected, [])
