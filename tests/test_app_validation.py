"""Validation in words: a submit with out-of-range values starts nothing and lists every problem at once, in one
error under the form, each by the label beside its field with the allowed range, never by an internal name."""

import re

from app_helpers import messages, open_app, train_quick_models

from analysis.hessian_config import HessianConfig
from fusion.errors import ConfigError
from fusion.methods.ot import OTOptions
from ui.options import option_labels, parse_options
from ui.state import job_runner
from ui.validation import refusal_lines, refusal_message

FUSE = "FormSubmitter:fuse.form-Fuse"
HESSIAN = "FormSubmitter:hessian.form-Compute"
TRAIN = "FormSubmitter:train-Train"
INTERNAL_NAMES = re.compile(r"^- [a-z]|\b[a-z]+_[a-z_]+\b", re.MULTILINE)
"""An option's own name: a listed problem that starts lowercase (labels are capitalised), or a snake_case word."""


def only_error(at) -> str:
    """The one error on the page (several would mean the problems are reported one by one)."""
    errors = messages(at.error)
    assert len(errors) == 1, errors
    assert not INTERNAL_NAMES.search(errors[0]), errors[0]
    return errors[0]


def test_the_fuse_form_lists_every_bad_value_by_its_label_and_starts_nothing(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app("pages/fuse.py")
    at.selectbox(key="fuse.method").set_value("ot").run()
    at.multiselect(key="fuse.models.ot").set_value(ids)
    at.number_input(key="fuse.ot.finetune.epochs").set_value(99_999_999)
    at.number_input(key="fuse.ot.finetune.lr").set_value(1e9)
    at.number_input(key="fuse.ot.reg").set_value(-1.0)
    at.number_input(key="fuse.ot.sweeps").set_value(0)
    assert not at.button(key=FUSE).disabled
    at.button(key=FUSE).click().run()

    assert not at.exception
    error = only_error(at)
    for line in (
        "Fine-tune epochs after fusion (0: none) must be a whole number from 1 to 10000, got 99999999.",
        "Fine-tune learning rate must be a number above 0 and at most 10, got 1000000000.0.",
        "Sinkhorn regularisation must be a number above 0, got -1.0.",
        "Sweeps must be a whole number from 1 to 1000, got 0.",
    ):
        assert f"- {line}" in error, error
    assert "correct these 4 values" in error
    assert job_runner().latest("fuse") is None
    assert len(app_workspace.records()) == 2


def test_the_hessian_form_lists_bad_samples_and_top_k_together(app_workspace):
    (record,) = train_quick_models(app_workspace)
    at = open_app("pages/hessian.py")
    at.multiselect(key="hessian.models").set_value([record.id])
    at.number_input(key="hessian.samples").set_value(-3)
    at.number_input(key="hessian.top_k").set_value(0)
    at.button(key=HESSIAN).click().run()

    assert not at.exception
    error = only_error(at)
    assert "- Samples (0: all) must be a whole number of at least 1, got -3." in error, error
    assert "- Top-k eigenvalues must be a whole number from 1 to 10000, got 0." in error, error
    assert not any(name.startswith("hessian") for name in (job.kind for job in job_runner().jobs()))


def test_the_training_form_lists_every_bad_value_by_its_label(app_workspace):
    at = open_app("pages/models.py")
    at.text_input(key="train.seeds").input("zero")
    at.number_input(key="train.epochs").set_value(0)
    at.number_input(key="train.batch").set_value(0)
    at.number_input(key="train.lr").set_value(50.0)
    at.button(key=TRAIN).click().run()

    assert not at.exception
    error = only_error(at)
    for line in (
        "Seeds: 'zero' is not a comma-separated list of whole numbers; expected e.g. 0,1,2.",
        "Epochs must be a whole number from 1 to 10000, got 0.",
        "Learning rate must be a number above 0 and at most 10, got 50.0.",
        "Batch size must be a whole number from 1 to 65536, got 0.",
    ):
        assert f"- {line}" in error, error
    assert job_runner().latest("train") is None
    assert app_workspace.records() == []


def test_the_compare_form_lists_its_fine_tune_and_hessian_problems_together(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app("pages/compare.py")
    at.multiselect(key="compare.parents").set_value(ids).run()
    at.number_input(key="compare.finetune.epochs").set_value(99_999_999)
    at.checkbox(key="compare.hessian").check()
    at.number_input(key="compare.hessian.samples").set_value(0)
    at.button(key="FormSubmitter:compare.form-Compare").click().run()

    assert not at.exception
    error = only_error(at)
    assert "- Fine-tune epochs for every fused model (0: none) must be a whole number from 1 to 10000" in error
    assert "- Hessian samples (test examples) must be a whole number of at least 1, got 0." in error
    assert job_runner().latest("compare") is None


def test_the_landscape_page_lists_bad_grid_values_before_any_estimate(app_workspace):
    train_quick_models(app_workspace, seeds=(0, 1))
    at = open_app("pages/loss_landscape.py")
    next(n for n in at.number_input if n.key.startswith("landscape.resolution")).set_value(1)
    at.number_input(key="landscape.samples").set_value(-3).run()

    assert not at.exception
    error = only_error(at)
    assert "- Points per axis must be a whole number from 2 to 1001, got 1." in error, error
    assert "- Examples per split (0: all) must be a whole number of at least 1, got -3." in error, error
    assert not any("grid points" in str(c.value) for c in at.caption), "no estimate for values that are refused"


def test_unreadable_text_and_out_of_range_options_are_refused_together():
    values = {**parse_values(OTOptions), "weights": "1, x", "reg": -1.0}
    try:
        parse_options(OTOptions, values)
    except ConfigError as refused:
        lines = refusal_lines(refused, option_labels(OTOptions))
    assert lines == [
        "Weights: expected numbers separated by commas, got '1, x'.",
        "Sinkhorn regularisation must be a number above 0, got -1.0.",
    ]


def test_an_error_without_problems_is_one_line():
    assert refusal_lines(ConfigError("choose at least one parent model"), {}) == ["choose at least one parent model."]


def test_the_message_says_nothing_started_and_lists_each_line():
    message = refusal_message(["A is bad.", "B is bad."])
    assert message == "Nothing was started: correct these 2 values and submit again.\n\n- A is bad.\n- B is bad."


def test_every_hessian_option_has_a_label_that_is_not_its_name():
    labels = option_labels(HessianConfig)
    assert all(label != name and "_" not in label for name, label in labels.items())


def parse_values(options_class) -> dict:
    """The widget values of every option at its default, as the form holds them before any change."""
    from fusion.options import option_fields

    return {
        f.name: "" if f.kind == "floats" else (0 if f.kind == "optional int" and f.default is None else f.default)
        for f in option_fields(options_class)
    }
