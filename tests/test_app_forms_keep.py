"""Forms keep what was typed (issue 10, item 10): after a submit, the job and the reruns that follow, every form
still shows the submitted values, so a second press runs the same settings."""

from app_helpers import open_app, train_quick_models, wait_for_job


def submit_and_finish(at, button):
    at.button(key=button).click().run()
    assert not at.exception and not at.error
    job = wait_for_job()
    assert job is not None and job.status == "done", job.error if job else "no job"
    at.run()
    at.run()
    assert not at.exception
    return at


def test_the_fuse_form_keeps_its_values(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app("pages/fuse.py")
    at.selectbox(key="fuse.method").set_value("ot").run()
    at.multiselect(key="fuse.models.ot").set_value(ids)
    at.number_input(key="fuse.ot.sweeps").set_value(2)
    at.selectbox(key="fuse.ot.metric").set_value("sqeuclidean")
    at.number_input(key="fuse.ot.finetune.epochs").set_value(1)
    at = submit_and_finish(at, "FormSubmitter:fuse.form-Fuse")
    assert at.number_input(key="fuse.ot.sweeps").value == 2
    assert at.selectbox(key="fuse.ot.metric").value == "sqeuclidean"
    assert at.number_input(key="fuse.ot.finetune.epochs").value == 1


def test_the_train_form_keeps_its_values(app_workspace):
    at = open_app("pages/models.py")
    at.text_input(key="train.mlp.digits.hidden").input("12")
    at.text_input(key="train.seeds").input("3")
    at.number_input(key="train.epochs").set_value(2)
    at.checkbox(key="train.mlp.digits.bias").uncheck()
    at = submit_and_finish(at, "FormSubmitter:train-Train")
    assert at.text_input(key="train.mlp.digits.hidden").value == "12"
    assert at.text_input(key="train.seeds").value == "3"
    assert at.number_input(key="train.epochs").value == 2
    assert at.checkbox(key="train.mlp.digits.bias").value is False


def test_the_hessian_form_keeps_its_values(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0,), hidden=(8,))]
    at = open_app("pages/hessian.py")
    at.multiselect(key="hessian.models").set_value(ids)
    at.radio(key="hessian.split").set_value("train")
    at.number_input(key="hessian.top_k").set_value(2)
    at.number_input(key="hessian.samples").set_value(64)
    at = submit_and_finish(at, "FormSubmitter:hessian.form-Compute")
    assert at.radio(key="hessian.split").value == "train"
    assert at.number_input(key="hessian.top_k").value == 2
    assert at.number_input(key="hessian.samples").value == 64


def test_the_compare_form_keeps_its_values(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app("pages/compare.py")
    at.multiselect(key="compare.parents").set_value(ids).run()
    at.multiselect(key="compare.methods").set_value(["average"])
    at.number_input(key="compare.finetune.epochs").set_value(1)
    at = submit_and_finish(at, "FormSubmitter:compare.form-Compare")
    assert at.number_input(key="compare.finetune.epochs").value == 1


def test_a_text_option_is_parsed_as_text_not_as_a_list_of_numbers():
    """A ``str`` option once fell through to the comma-separated number list: its widget showed 'o, t' for 'ot'."""
    from dataclasses import dataclass, field

    from ui.options import parse_options

    @dataclass(frozen=True)
    class Named:
        label: str = field(default="ot", metadata={"help": "a text"})

    assert parse_options(Named, {"label": " matching "}) == {"label": "matching"}
    assert parse_options(Named, {"label": "ot"}) == {}
