"""AppTest runs of the Hessian and Loss landscape pages: forms, jobs, stored results, bad input."""

import json
import shlex

import pytest
from app_helpers import messages, open_app, train_quick_models, wait_for_job
from streamlit.testing.v1 import AppTest

from cli.main import main
from studies.pipeline import fuse_and_save
from studies.runs import stored_fusion_landscape, stored_hessian, stored_overlaps
from ui.tables import relative_change


def rerun(line: str, workspace, capsys) -> dict:
    """A command line a page shows, run in this process on the page's workspace."""
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "fusion"], line
    assert main([*words[3:], "--workspace", str(workspace.root), "--quiet"]) == 0, line
    return json.loads(capsys.readouterr().out)


SMALL_HESSIAN = {"samples": 200, "iterations": 20, "probes": 10, "steps": 20, "runs": 2, "bins": 200}


def test_hessian_page_computes_and_shows_spectra_of_parents_and_fused(app_workspace, capsys):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1), hidden=(8,))]
    fused = fuse_and_save(app_workspace, ids, "ot").record.id
    at = open_app("pages/hessian.py")
    assert not at.exception
    at.multiselect(key="hessian.models").set_value([ids[0], fused])
    for name, value in SMALL_HESSIAN.items():
        at.number_input(key=f"hessian.{name}").set_value(value)
    at.checkbox(key="hessian.layers").check()
    at.radio(key="hessian.split").set_value("train")
    at.button(key="FormSubmitter:hessian.form-Compute").click().run()
    wait_for_job()
    at.run()
    assert not at.exception and not at.error
    assert [layer.layer for layer in stored_hessian(app_workspace, fused).layers] == ["layers.1", "layers.3"]
    table = at.dataframe[0].value
    assert len(table) == 2 and (table["trace"] > 0).all()
    assert len(at.get("plotly_chart")) == 5, "density, perturbation, top eigenvalues, per-layer blocks, scatter"
    sharpness = at.dataframe[1].value
    runs_formats, sharpness_formats = (column_formats(at.dataframe[i]) for i in (0, 1))
    assert runs_formats["trace ± (std. error)"] == sharpness_formats["λ1 residual"] == "%.3e"
    assert sharpness_formats["λ1 spread"] == sharpness_formats["trace error"] == "%.3e"
    assert sharpness_formats["λ1"] == "%.4g"
    fused_row = sharpness[sharpness["model"] == fused].iloc[0]
    parent_row = sharpness[sharpness["model"] == ids[0]].iloc[0]
    assert fused_row["λ1 / parents' λ1"] == pytest.approx(fused_row["λ1"] / parent_row["λ1"])
    assert fused_row["generalisation gap"] == pytest.approx(fused_row["test loss"] - fused_row["train loss"])
    assert at.radio(key="hessian.curve_split").value == "train", "curves first on the Hessian's own split"
    at.radio(key="hessian.curve_split").set_value("test").run()
    assert not at.exception
    at.button(key="hessian.overlap_compute").click().run()
    wait_for_job()
    at.run()
    assert not at.exception and not at.error, messages(at.error)
    overlaps = stored_overlaps(app_workspace, fused)
    assert [o.overlap.shape for o in overlaps] == [(3, 3), (3, 3)]
    assert len(at.get("plotly_chart")) == 6, "and the overlap heatmaps"
    (code,) = [c.value for c in at.code if "python -m fusion hessian" in c.value]
    assert code.count("--split train --json") == 2 and code.count("--layers") == 2, "the stored runs' settings"
    for line in code.splitlines():
        output = rerun(line, app_workspace, capsys)
        assert output["reused"] and output["result"] in set(table["result"]), line


def column_formats(table) -> dict[str, str]:
    """The printf format of each column of an AppTest dataframe that has one."""
    formats = {c: f.get("type_config", {}).get("format") for c, f in json.loads(table.proto.columns).items()}
    return {column: text for column, text in formats.items() if text}


def test_tables_show_residuals_spreads_and_errors_in_scientific_notation():
    def page():
        import pandas as pd

        from ui.charts import show_table

        figures = {"λ1": [2.0], "λ1 residual": [1e-17], "λ1 spread": [2e-3], "trace error": [0.5], "error": ["none"]}
        show_table(pd.DataFrame(figures), "small figures")

    at = AppTest.from_function(page).run()
    assert not at.exception
    assert column_formats(at.dataframe[0]) == {"λ1 residual": "%.3e", "λ1 spread": "%.3e", "trace error": "%.3e"}


def test_hessian_page_refuses_absurd_settings_with_a_message(app_workspace):
    train_quick_models(app_workspace, seeds=(0,), hidden=(8,))
    at = open_app("pages/hessian.py")
    at.number_input(key="hessian.top_k").set_value(50)
    at.number_input(key="hessian.iterations").set_value(10)
    at.button(key="FormSubmitter:hessian.form-Compute").click().run()
    assert not at.exception
    assert any("Iterations (10) must be at least Top-k eigenvalues (50)." in m for m in messages(at.error))


def test_landscape_page_draws_the_interpolations_and_the_plane_of_a_fusion(app_workspace, capsys):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1), hidden=(8,))]
    fused = fuse_and_save(app_workspace, ids, "ot").record.id
    at = open_app("pages/loss_landscape.py")
    assert not at.exception
    at.number_input(key="landscape.resolution.plane").set_value(4)
    at.number_input(key="landscape.samples").set_value(100).run()
    assert any("grid points" in str(c.value) for c in at.caption)
    at.button(key="FormSubmitter:landscape.form-Compute").click().run()
    wait_for_job()
    at.run()
    assert not at.exception and not at.error
    found = stored_fusion_landscape(app_workspace, fused)
    assert set(found) == {"A-B", "A-fused", "B-fused", "A-B aligned", "A-B aligned + REPAIR", "plane"}
    assert [found[n].repaired for n in ("A-B", "A-B aligned", "A-B aligned + REPAIR")] == [False, False, True]
    assert list(at.dataframe[0].value["line"]) == ["A-B", "A-fused", "B-fused"]
    assert len(at.get("plotly_chart")) == 3
    assert any("with REPAIR" in str(c.value) for c in at.caption)
    (code,) = [c.value for c in at.code if "python -m fusion landscape" in c.value]
    output = rerun(code, app_workspace, capsys)
    assert output["reused"] and output["kind"] == "plane" and output["model_ids"] == [*ids, fused]


def test_landscape_page_refuses_a_grid_of_absurd_size(app_workspace):
    train_quick_models(app_workspace, seeds=(0,), hidden=(8,))
    at = open_app("pages/loss_landscape.py")
    at.number_input(key="landscape.resolution.random").set_value(201).run()
    at.button(key="FormSubmitter:landscape.form-Compute").click().run()
    wait_for_job()
    at.run()
    assert not at.exception
    failures = messages(at.error)
    assert any("limit" in m or "resolution" in m for m in failures), failures


def test_a_change_reads_lower_or_higher_never_a_negative_lower():
    assert relative_change(0.4, 0.2) == "(50 % lower)"
    assert relative_change(0.04138, 0.06339) == "(53 % higher)"
    assert relative_change(0.0, 0.1) == "(no baseline)"


def test_landscape_page_with_an_incompatible_pair_shows_the_reason_and_no_stale_invitation(app_workspace):
    train_quick_models(app_workspace, seeds=(0,), hidden=(8,))
    train_quick_models(app_workspace, seeds=(1,), hidden=(16,))
    at = open_app("pages/loss_landscape.py")
    at.radio(key="landscape.view").set_value("any two models").run()
    ids = [r.id for r in app_workspace.records()]
    at.selectbox(key="landscape.a").set_value(ids[0])
    at.selectbox(key="landscape.b").set_value(ids[1]).run()
    assert not at.exception
    assert any("architecture" in m for m in messages(at.error)), messages(at.error)
    assert not any("press Compute" in m for m in messages(at.info))
    assert not [b for b in at.button if "Compute" in str(b.label)]
