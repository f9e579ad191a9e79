"""AppTest runs of the Fuse, Transport maps and Neuron norms pages, driven through their forms and jobs."""

import json
import shlex

from app_helpers import messages, open_app, train_quick_models, wait_for_job

from cli.main import main
from fusion.models import default_spec
from fusion.train import TrainConfig
from studies.pipeline import fuse_and_save, train_and_save

FUSE = "FormSubmitter:fuse.form-Fuse"


def fuse_through_the_page(at, method, ids, **widgets):
    at.selectbox(key="fuse.method").set_value(method).run()
    at.multiselect(key=f"fuse.models.{method}").set_value(ids)
    for key, value in widgets.items():
        at.text_input(key=key).input(value) if key.endswith("weights") else at.selectbox(key=key).set_value(value)
    at.button(key=FUSE).click().run()
    if at.error:
        return at
    wait_for_job()
    return at.run()


def test_fuse_page_asks_for_models_when_the_workspace_is_empty(app_workspace):
    at = open_app("pages/fuse.py")
    assert not at.exception
    assert any("no models" in str(i.value) for i in at.info)


def test_ot_fusion_from_the_page_shows_the_comparison_table_and_chart(app_workspace, capsys):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = fuse_through_the_page(open_app("pages/fuse.py"), "ot", ids, **{"fuse.ot.mode": "activations"})
    assert not at.exception
    assert not at.error
    table = at.dataframe[0].value
    assert list(table["role"]) == ["parent A", "parent B", "ensemble", "average", "fused"]
    assert list(table["id"])[:2] == ids and list(table["id"])[2:4] == ["–", "–"]
    assert list(table["time (s)"])[:2] == ["–", "–"] and "None" not in list(table["time (s)"])
    assert at.get("plotly_chart")
    fused = [r for r in app_workspace.records() if r.method == "ot"]
    assert len(fused) == 1 and fused[0].provenance["options"]["mode"] == "activations"
    (code,) = [str(c.value) for c in at.code if "python -m fusion fuse" in str(c.value)]
    assert "--mode activations" in code
    words = shlex.split(code)
    assert main([*words[3:], "--workspace", str(app_workspace.root), "--json", "--quiet"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)["models"]
    assert [(m["id"], m["reused"]) for m in rebuilt] == [(fused[0].id, True)], "the shown command rebuilds the model"
    assert not any("Reused" in text for text in messages(at.info))

    at.button(key=FUSE).click().run()
    wait_for_job()
    at.run()
    assert not at.exception and not at.error
    assert len([r for r in app_workspace.records() if r.method == "ot"]) == 1, "the same fusion again stores no copy"
    assert any("Reused 1 stored model" in text and fused[0].id in text for text in messages(at.info))
    assert list(at.dataframe[0].value["id"])[-1] == fused[0].id


def test_fusing_a_single_model_with_ot_is_refused_and_saves_nothing(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0,))]
    at = fuse_through_the_page(open_app("pages/fuse.py"), "ot", ids)
    assert not at.exception
    assert any("at least 2" in m for m in messages(at.error))
    assert len(app_workspace.records()) == 1


def test_unreadable_weights_and_mismatched_architectures_get_clear_messages(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = fuse_through_the_page(open_app("pages/fuse.py"), "ot", ids, **{"fuse.ot.weights": "a, b"})
    assert any("numbers separated by commas" in m for m in messages(at.error))
    other = train_quick_models(app_workspace, seeds=(2,), hidden=(16, 8))[0].id
    at = fuse_through_the_page(at, "ot", [ids[0], other], **{"fuse.ot.weights": ""})
    assert not at.exception
    assert any("mismatched architectures" in m for m in messages(at.error))
    assert not [r for r in app_workspace.records() if r.parents]


def test_transport_maps_page_shows_the_summary_and_a_heatmap(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    fuse_and_save(app_workspace, ids, "ot")
    at = open_app("pages/transport_maps.py")
    assert not at.exception
    summary = at.dataframe[0].value
    assert list(summary["neurons moved"]) and summary["distance from a permutation"].max() < 1e-9
    assert at.get("plotly_chart")


def test_transport_maps_page_without_fused_models_says_what_to_do(app_workspace):
    train_quick_models(app_workspace, seeds=(0,))
    at = open_app("pages/transport_maps.py")
    assert not at.exception
    assert any("Fuse page" in str(i.value) for i in at.info)


def test_neuron_norms_page_shows_norms_and_the_transplant_survivors(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1, 2))]
    fuse_and_save(app_workspace, ids, "transplant")
    at = open_app("pages/neuron_norms.py")
    assert not at.exception
    counts = at.dataframe[0].value
    assert counts[["parent A", "parent B", "parent C"]].sum(axis=1).tolist() == [32]
    assert len(at.get("plotly_chart")) == 2


def test_intra_fusion_from_the_page_compares_with_magnitude_pruning(app_workspace):
    spec = default_spec("cnn", (1, 8, 8), 10, channels=(8, 8), hidden=(16,))
    model = train_and_save(app_workspace, spec, "digits", TrainConfig(epochs=2)).record
    at = fuse_through_the_page(open_app("pages/fuse.py"), "intra", [model.id])
    assert not at.exception
    assert list(at.dataframe[0].value["role"]) == ["parent A", "pruned", "fused"]
    at.switch_page("pages/neuron_norms.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2


def test_a_damaged_stored_comparison_is_a_warning_not_a_crash(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = fuse_through_the_page(open_app("pages/fuse.py"), "average", ids)
    fused = next(r for r in app_workspace.records() if r.method == "average")
    (stored,) = (app_workspace.results_dir(fused.id) / "comparison").glob("*.json")
    stored.write_bytes(b'{"rows": [\xff')
    at = open_app("pages/fuse.py")
    assert not at.exception
    assert any("damaged" in str(w.value) and fused.id in str(w.value) for w in at.warning)


def test_option_widgets_are_labelled_in_words_not_option_names(app_workspace):
    train_quick_models(app_workspace, seeds=(0, 1))
    at = open_app("pages/fuse.py")
    at.selectbox(key="fuse.method").set_value("ot").run()
    assert at.checkbox(key="fuse.ot.recompute_bn").label == "Recompute BatchNorm statistics"
    assert at.selectbox(key="fuse.ot.metric").label == "Ground metric"
    assert at.number_input(key="fuse.ot.sweeps").label == "Sweeps"
    labels = [w.label for w in (*at.checkbox, *at.selectbox, *at.number_input, *at.text_input)]
    assert not [label for label in labels if "_" in label or label.islower()]


def test_the_fuse_page_opens_on_ot_fusion(app_workspace):
    train_quick_models(app_workspace, seeds=(0, 1))
    at = open_app("pages/fuse.py")
    assert not at.exception and at.selectbox(key="fuse.method").value == "ot"


def test_a_result_of_other_settings_is_marked_and_a_refused_run_replaces_it(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = fuse_through_the_page(open_app("pages/fuse.py"), "ot", ids)
    assert not at.error and not any("other settings" in m for m in messages(at.info))
    at.selectbox(key="fuse.method").set_value("average").run()
    at.multiselect(key="fuse.models.average").set_value(ids).run()
    assert any("No average fusion of the chosen models" in m for m in messages(at.info))
    assert at.selectbox[-1].label == "Fused model (other settings)"
    at.text_input(key="fuse.average.weights").input("x, y")
    at.button(key=FUSE).click().run()
    assert any("Weights: expected numbers separated by commas" in m for m in messages(at.error)), messages(at.error)
    assert not at.dataframe and not at.get("plotly_chart"), "the refusal is not shown above an earlier result"


def test_a_failed_fusion_job_shows_its_error_without_an_earlier_result_below(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = fuse_through_the_page(open_app("pages/fuse.py"), "average", ids)
    assert at.dataframe and not at.error
    at = fuse_through_the_page(at, "cla", ids)
    assert not at.exception
    assert messages(at.error) or any("failed" in str(e.value) for e in at.get("alert")), "the job's failure is shown"
    assert not at.dataframe and not at.get("plotly_chart")


def test_transplant_fine_tunes_by_default_with_the_papers_recipe(app_workspace):
    """Neuron Transplantation is concatenation, pruning and a fine-tune: the form opens on the reference recipe (30
    epochs of SGD, lr 0.01), other methods on none."""
    train_quick_models(app_workspace, seeds=(0, 1))
    at = open_app("pages/fuse.py")
    assert at.number_input(key="fuse.ot.finetune.epochs").value == 0
    at.selectbox(key="fuse.method").set_value("transplant").run()
    recipe = (
        at.number_input(key="fuse.transplant.finetune.epochs").value,
        at.number_input(key="fuse.transplant.finetune.lr").value,
        at.selectbox(key="fuse.transplant.finetune.optimizer").value,
    )
    assert recipe == (30, 0.01, "sgd")
    assert any("30 epochs of SGD" in caption.value for caption in at.caption)


def test_a_transplant_from_the_page_is_fine_tuned_with_sgd(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app("pages/fuse.py")
    at.selectbox(key="fuse.method").set_value("transplant").run()
    at.multiselect(key="fuse.models.transplant").set_value(ids)
    at.number_input(key="fuse.transplant.finetune.epochs").set_value(1)
    at.button(key=FUSE).click().run()
    wait_for_job()
    at.run()
    assert not at.exception and not at.error, messages(at.error)
    tuned = [r for r in app_workspace.records() if r.provenance.get("options", {}).get("optimizer") == "sgd"]
    assert len(tuned) == 1 and tuned[0].provenance["options"]["epochs"] == 1
    assert any("finetune" in block.value and "--optimizer sgd" in block.value for block in at.code)


def test_a_failed_fusion_is_not_shown_once_the_method_or_models_change(app_workspace):
    """The browser walk: after ``cla`` failed on two equal-depth MLPs, choosing ``ot`` still showed the cla error
    and nothing else."""
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = fuse_through_the_page(open_app("pages/fuse.py"), "ot", ids)
    at = fuse_through_the_page(at, "cla", ids)
    assert any("cla fusion of 2 model(s) failed" in m for m in messages(at.error)), "the failure is shown for cla"
    at.selectbox(key="fuse.method").set_value("ot").run()
    at.multiselect(key="fuse.models.ot").set_value(ids).run()
    assert not at.error, messages(at.error)
    assert at.dataframe and at.code, "the ot result and its command line are shown again"
