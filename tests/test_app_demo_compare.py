"""AppTest runs of the Neuron Transplantation demo (every step, with its real recipe, within two minutes) and of the
Compare page (a small comparison, its exports, Hessian columns and refused input), and the comparison library behind
it (:mod:`studies.comparison`, its figure)."""

from __future__ import annotations

import csv
import io
import time

import pytest
import streamlit as st
from app_helpers import messages, open_app, train_quick_models, wait_for_job
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from analysis.fusion_figures import finetune_comparison_figure
from analysis.hessian_config import HessianConfig
from fusion.errors import ConfigError, DamagedResultError
from fusion.results import ResultRecord
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.comparison import (
    COMPARISON,
    ComparisonRow,
    check_comparison,
    compare_fusion,
    compare_methods,
    inapplicable_reason,
    stored_comparison,
    to_csv,
    to_markdown,
)
from studies.pipeline import fuse_and_save
from studies.runs import hessian_of, stored_hessian
from studies.story import STEP_TITLES, finetune_title

DEMO = "pages/transplant_demo.py"
NEXT = "FormSubmitter:demo.form-Next step"
COMPARE = "pages/compare.py"
RUN_COMPARISON = "FormSubmitter:compare.form-Compare"
FIGURES_AFTER_STEP = [1, 2, 5, 6, 7]
DEMO_BUDGET_SECONDS = 120


def test_demo_page_renders_and_invites_the_first_step(app_workspace):
    at = open_app(DEMO)
    assert not at.exception
    assert any("Next step" in m for m in messages(at.info))
    assert not at.button(key=NEXT).disabled


def test_demo_refuses_options_out_of_range_with_a_clear_message(app_workspace):
    at = open_app(DEMO)
    at.number_input(key="demo.options.parents").set_value(5)
    at.button(key=NEXT).click().run()
    assert not at.exception
    assert any("Parents must be a whole number from 2 to 4, got 5." in m for m in messages(at.error))
    assert not app_workspace.records()


def test_clicking_through_every_demo_step_shows_a_figure_each_time_within_two_minutes(app_workspace):
    started = time.perf_counter()
    at = open_app(DEMO)
    for step, figures in enumerate(FIGURES_AFTER_STEP):
        at.button(key=NEXT).click().run()
        assert not at.exception and not at.error
        job = wait_for_job()
        assert job is not None and job.status == "done", job.error if job else "no job started"
        at.run()
        assert not at.exception and not at.error
        title = [h.value for h in at.subheader][-1]
        if step == 3:
            pruned, tuned = (
                at.session_state["demo.story"].pruning.transplanted,
                at.session_state["demo.story"].finetune.finetuned,
            )
            assert title == f"4. {finetune_title(pruned.test_accuracy, tuned.test_accuracy)}"
        else:
            assert title == f"{step + 1}. {STEP_TITLES[step]}"
        assert len(at.get("plotly_chart")) == figures
    elapsed = time.perf_counter() - started
    print(f"\ndemo through AppTest: {elapsed:.1f} s end to end")
    assert elapsed < DEMO_BUDGET_SECONDS
    assert any("The story is complete" in m for m in messages(at.success))
    assert any("Fine-tuned NT" in m for m in messages(at.success) + messages(at.info))
    assert at.button(key=NEXT).disabled

    groups = at.selectbox(key="demo.survival.group").options
    at.selectbox(key="demo.survival.group").set_value(groups[-1]).run()
    assert not at.exception and len(at.get("plotly_chart")) == FIGURES_AFTER_STEP[-1]

    reloaded = open_app(DEMO)
    assert not reloaded.exception
    assert len(reloaded.get("plotly_chart")) == FIGURES_AFTER_STEP[-1], "a new session shows the stored story"

    at.button(key="demo.restart").click().run()
    assert not at.exception
    assert not at.get("plotly_chart")
    assert any("Next step" in m for m in messages(at.info))
    assert not messages(at.success), "no banner of the finished story's last step after Restart"


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What the page's download buttons offer, by file name."""
    offered: dict[str, str] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if filename is not None and isinstance(path_or_data, bytes):
            offered[filename] = path_or_data.decode()
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return offered


def compare_through_the_page(at, parents, methods, epochs=1):
    at.multiselect(key="compare.parents").set_value(parents).run()
    at.multiselect(key="compare.methods").set_value(methods)
    at.number_input(key="compare.finetune.epochs").set_value(epochs)
    at.button(key=RUN_COMPARISON).click().run()
    if at.error:
        return at
    wait_for_job()
    return at.run()


def test_compare_page_tabulates_every_method_and_exports_one_row_per_method(app_workspace, downloads):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    methods = ["ensemble", "ot", "transplant"]
    at = compare_through_the_page(open_app(COMPARE), ids, methods)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == methods
    assert [v != "–" for v in table["fine-tuned accuracy (%)"]] == [False, True, True]
    assert table["id"].iloc[0] == "–" and not table.isna().any().any(), "missing values read '–', never 'None'"
    assert at.get("plotly_chart")
    assert at.download_button(key="compare.csv").label == "Download CSV"
    assert at.download_button(key="compare.markdown").label == "Download Markdown"

    rows = list(csv.DictReader(io.StringIO(downloads["fusion-comparison.csv"])))
    assert [r["method"] for r in rows] == methods
    markdown = downloads["fusion-comparison.md"].strip().splitlines()
    assert len(markdown) == 2 + len(methods)
    assert [line.split("|")[1].strip() for line in markdown[2:]] == methods
    code = "\n".join(str(c.value) for c in at.code)
    assert all(f"--method {m}" in code for m in methods)
    assert "--finetune-epochs 1" in code

    st.cache_resource.clear()  # a server restart: no job history, only the workspace
    fresh = open_app(COMPARE)
    fresh.multiselect(key="compare.parents").set_value(ids).run()
    assert not fresh.exception
    assert any("already in the workspace" in str(h.value) for h in fresh.subheader)
    assert list(fresh.dataframe[0].value["method"]) == ["ot", "transplant"], "saved models, without the ensemble"


@pytest.mark.parametrize(
    "seeds, methods, message",
    [((0,), ["ot", "average"], "at least 2 parents"), ((0, 1), [], "choose at least one fusion method")],
    ids=["one-parent-for-multi-model-methods", "no-methods"],
)
def test_compare_page_refuses_bad_input_with_a_clear_message(app_workspace, seeds, methods, message):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=seeds)]
    at = compare_through_the_page(open_app(COMPARE), ids, methods)
    assert not at.exception
    assert any(message in m for m in messages(at.error))
    assert not [r for r in app_workspace.records() if r.parents]


def test_compare_page_shows_the_hessian_of_models_that_have_one(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    run = fuse_and_save(app_workspace, ids, "ot")
    assert run.record is not None
    tiny = HessianConfig(samples=100, batch_size=100, iterations=8, top_k=1, probes=4, steps=8, runs=1, bins=50)
    report = hessian_of(app_workspace, run.record.id, tiny)
    at = open_app(COMPARE)
    at.multiselect(key="compare.parents").set_value(ids).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["method"]) == ["ot"]
    assert table["top Hessian eigenvalue"][0] == pytest.approx(report.top.eigenvalues[0])
    assert table["Hessian trace"][0] == pytest.approx(report.trace.mean)


def test_compare_page_fills_every_hessian_column_in_one_job(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app(COMPARE)
    at.multiselect(key="compare.parents").set_value(ids).run()
    at.multiselect(key="compare.methods").set_value(["ot", "average"])
    at.number_input(key="compare.finetune.epochs").set_value(1)
    at.checkbox(key="compare.hessian").check()
    at.number_input(key="compare.hessian.samples").set_value(60)
    at.button(key=RUN_COMPARISON).click().run()
    job = wait_for_job()
    at.run()
    assert job is not None and job.status == "done", job
    assert not at.exception and not at.error, messages(at.error)
    table = at.dataframe[0].value
    for column in ("top Hessian eigenvalue", "Hessian trace", "fine-tuned top eigenvalue", "fine-tuned Hessian trace"):
        assert all(v != "–" for v in table[column]), column
    sharpness = at.dataframe[1].value
    assert len(sharpness) == 2 + 2 * 2, "parents, fused and fine-tuned models"
    fused = sharpness[sharpness["method"] == "ot"].iloc[0]
    parents = sharpness[sharpness["model"].isin(ids)]
    assert fused["λ1 / parents' λ1"] == pytest.approx(fused["λ1"] / parents["λ1"].mean())
    assert "compare.fill_hessians" not in [b.key for b in at.button], "nothing left to compute"


def test_compare_page_computes_the_missing_hessians_of_stored_results(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    fused = fuse_and_save(app_workspace, ids, "ot").record.id
    at = open_app(COMPARE)
    at.number_input(key="compare.hessian.samples").set_value(60)
    at.multiselect(key="compare.parents").set_value(ids).run()
    at.button(key="compare.fill_hessians").click().run()
    wait_for_job()
    at.run()
    assert not at.exception and not at.error, messages(at.error)
    assert all(stored_hessian(app_workspace, i) is not None for i in (*ids, fused))
    assert at.dataframe[0].value["top Hessian eigenvalue"][0] != "–"


def test_methods_that_do_not_fit_the_parents_are_skipped_with_the_reason(workspace):
    shallow = train_quick_models(workspace, seeds=(0,), hidden=(16,))[0]
    deep = train_quick_models(workspace, seeds=(1,), hidden=(16, 8))[0]
    records = [shallow, deep]
    assert inapplicable_reason(records, "average") is not None
    assert inapplicable_reason(records, "cla") is None
    assert "different depths" in inapplicable_reason(records[:1] * 2, "cla")
    assert "at least 2 parents" in inapplicable_reason(records[:1], "ot")
    comparison = compare_methods(workspace, [shallow.id, deep.id], ["average", "cla", "prune"])
    assert [r.method for r in comparison.rows] == ["cla", "prune"]
    assert set(comparison.skipped) == {"average"}
    assert comparison.rows[1].parents == (shallow.id,) and "first parent" in comparison.rows[1].note
    with pytest.raises(ConfigError, match="unknown fusion method"):
        check_comparison(records, ["nonsense"])


def test_markdown_export_escapes_pipes_and_marks_missing_values():
    row = ComparisonRow("ot", "a | b", "id-1", ("p0", "p1"), 0.5, 1.25, 100, fusion_seconds=0.5)
    lines = to_markdown([row]).splitlines()
    assert "a \\| b" in lines[2] and "| 50.00 |" in lines[2] and "–" in lines[2]
    assert lines[2].count(" | ") == lines[0].count(" | ")
    (exported,) = csv.DictReader(io.StringIO(to_csv([row])))
    assert exported["parents"] == "p0 p1"


def test_comparison_csv_gives_accuracy_in_percent_under_names_that_say_so():
    row = ComparisonRow("ot", "m", "id-1", ("p0", "p1"), 0.9644, 1.25, 100, finetuned_accuracy=0.5)
    (exported,) = csv.DictReader(io.StringIO(to_csv([row])))
    assert float(exported["test_accuracy_pct"]) == pytest.approx(96.44)
    assert float(exported["finetuned_accuracy_pct"]) == pytest.approx(50.0)
    assert not [name for name in exported if name.endswith("accuracy")], "no column holds a fraction"


def test_finetune_comparison_figure_draws_missing_fine_tunes_as_gaps_and_references_as_lines():
    figure = finetune_comparison_figure(
        [
            {"method": "ensemble", "test_accuracy": 0.9, "finetuned_accuracy": None},
            {"method": "ot", "test_accuracy": 0.8, "finetuned_accuracy": 0.95},
        ],
        [("best parent", "parent B", 0.93)],
    )
    before, after, reference = figure.data
    assert list(before.y) == [90.0, 80.0] and list(after.y) == [None, 95.0]
    assert figure.layout.shapes[0].y0 == pytest.approx(93.0)
    assert reference.name == "best parent 93.00%" and reference.x == (None,)


def test_compare_page_offers_every_applicable_method_for_the_chosen_parents(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app(COMPARE)
    assert at.multiselect(key="compare.methods").value == []
    at.multiselect(key="compare.parents").set_value(ids).run()
    assert not at.exception
    everything_but_cla = ["average", "ensemble", "ot", "matching", "intra", "prune", "sparsify", "transplant"]
    assert at.multiselect(key="compare.methods").value == everything_but_cla
    at.multiselect(key="compare.parents").set_value(ids[:1]).run()
    assert at.multiselect(key="compare.methods").value == ["intra", "prune", "sparsify"]


def counting_loads(monkeypatch) -> list[str]:
    loads: list[str] = []
    load = Workspace.load
    monkeypatch.setattr(Workspace, "load", lambda self, i: loads.append(i) or load(self, i))
    return loads


def test_a_comparison_of_five_methods_loads_each_parent_once(workspace, monkeypatch):
    parents = [r.id for r in train_quick_models(workspace, seeds=(0, 1), hidden=(16,))]
    loads = counting_loads(monkeypatch)
    comparison = compare_methods(workspace, parents, ["average", "ot", "matching", "transplant", "prune"])
    assert [r.method for r in comparison.rows] == ["average", "ot", "matching", "transplant", "prune"]
    assert sorted(loads) == sorted(parents), loads


def test_fusion_comparison_loads_each_parent_once_and_reads_back_as_stored(workspace, monkeypatch):
    parents = [r.id for r in train_quick_models(workspace, seeds=(0, 1), hidden=(16,))]
    loads = counting_loads(monkeypatch)
    comparison = compare_fusion(workspace, parents, "ot", finetune=TrainConfig(epochs=1))
    assert sorted(loads) == sorted(parents), loads
    roles = [row.role for row in comparison.rows]
    assert roles == ["parent A", "parent B", "ensemble", "average", "fused", "fine-tuned"]
    fused = workspace.record(comparison.fused)
    assert comparison.rows[4].test_accuracy == fused.metrics["test_accuracy"] and comparison.rows[4].seconds > 0
    assert stored_comparison(workspace, comparison.fused) == comparison


def test_intra_fusion_is_compared_with_magnitude_pruning_at_its_own_sparsity(workspace):
    parent = train_quick_models(workspace, seeds=(0,), hidden=(16,))[0]
    comparison = compare_fusion(workspace, [parent.id], "intra", {"sparsity": 0.25})
    pruned, fused = comparison.rows[1], comparison.rows[2]
    assert (pruned.role, fused.role) == ("pruned", "fused")
    assert pruned.parameters == fused.parameters < parent.parameters


def test_a_damaged_stored_comparison_is_a_damaged_result_error(workspace, saved_mlp):
    payload = {"method": "ot", "parents": ["a"], "fused": None, "report": {}, "rows": [{"model": 3}]}
    workspace.save_result(saved_mlp.id, ResultRecord.make(COMPARISON, [saved_mlp.id], {}, payload))
    with pytest.raises(DamagedResultError, match=r"rows\[0\]\.model: expected a string"):
        stored_comparison(workspace, saved_mlp.id)
