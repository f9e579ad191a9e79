"""A config with several bad values reports every one at once, each as a problem of its field
(:mod:`fusion.problems`), so that a form can name them all by their labels."""

import doctest
import pickle

import pytest

import fusion.problems
from analysis.hessian_config import HessianConfig
from analysis.landscape import LandscapeConfig
from fusion.errors import ConfigError
from fusion.methods.intra import IntraOptions
from fusion.methods.ot import OTOptions
from fusion.problems import Checks, Problem
from fusion.train import TrainConfig
from studies.seed_study import StudyConfig
from studies.story import StoryOptions


def refused_fields(make) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        make()
    return [problem.field for problem in refused.value.problems]


@pytest.mark.parametrize(
    "make, fields",
    [
        (lambda: TrainConfig(epochs=99_999_999, lr=1e9, batch_size=0, seed=-1), ["epochs", "lr", "batch_size", "seed"]),
        (lambda: HessianConfig(samples=-3, top_k=0, tolerance=2.0), ["samples", "top_k", "tolerance"]),
        (lambda: LandscapeConfig(resolution=1, span=-1.0, samples=0), ["resolution", "span", "samples"]),
        (lambda: OTOptions(reg=-1.0, sweeps=0, weights=(1.0, -1.0)), ["sweeps", "reg", "weights"]),
        (lambda: IntraOptions(sparsity=1.5, reg=0.0), ["sparsity", "reg"]),
        (lambda: StudyConfig(sparsity=2.0, lr=1e9, hessian_samples=-3), ["sparsity", "lr", "hessian_samples"]),
        (
            lambda: StoryOptions(parents=9, finetune_epochs=0, finetune_lr=-1.0),
            ["parents", "finetune_epochs", "finetune_lr"],
        ),
    ],
    ids=["train", "hessian", "landscape", "ot", "intra", "study", "story"],
)
def test_a_config_with_several_bad_values_reports_all_of_them(make, fields) -> None:
    assert refused_fields(make) == fields


def test_the_message_joins_every_problem_under_its_field_name() -> None:
    with pytest.raises(ConfigError) as refused:
        TrainConfig(epochs=0, lr=1e9)
    assert str(refused.value) == (
        "epochs must be a whole number from 1 to 10000, got 0; lr must be a number above 0 and at most 10, "
        "got 1000000000.0"
    )


def test_a_nested_config_reports_its_problems_under_the_outer_names() -> None:
    with pytest.raises(ConfigError) as refused:
        StoryOptions(finetune_epochs=0)
    (problem,) = refused.value.problems
    assert problem.text() == "finetune_epochs must be a whole number from 1 to 10000, got 0"
    assert problem.text({"finetune_epochs": "Fine-tune epochs"}).startswith("Fine-tune epochs must be")


def test_a_rule_between_two_fields_names_both_by_their_labels() -> None:
    with pytest.raises(ConfigError) as refused:
        HessianConfig(iterations=2, top_k=3)
    (problem,) = refused.value.problems
    assert (
        problem.text({"iterations": "Lanczos steps", "top_k": "Top-k"})
        == "Lanczos steps (2) must be at least Top-k (3)"
    )


def test_braces_in_a_given_value_are_shown_as_typed() -> None:
    with pytest.raises(ConfigError) as refused:
        TrainConfig(optimizer="{lr}")
    assert str(refused.value) == "optimizer must be one of adam, sgd, got '{lr}'"


def test_renaming_composes_through_two_levels() -> None:
    problem = Problem("epochs", "{epochs} must be at least {lr}").renamed({"epochs": "a"}).renamed({"a": "b"})
    assert problem.field == "b"
    assert problem.text({"b": "B", "lr": "rate"}) == "B must be at least rate"


def test_the_problems_survive_pickling_from_a_job_process() -> None:
    with pytest.raises(ConfigError) as refused:
        TrainConfig(epochs=0, lr=0.0)
    restored = pickle.loads(pickle.dumps(refused.value))
    assert type(restored) is ConfigError and restored.problems == refused.value.problems


def test_a_valid_config_has_no_problems() -> None:
    checks = Checks()
    TrainConfig().check(checks)
    HessianConfig().check(checks)
    assert checks.problems == []


def test_the_examples_in_the_module_docstring_run() -> None:
    assert doctest.testmod(fusion.problems).failed == 0
