"""Figures and command lines as the pages draw them: models named by their roles, commands wrapped in their box."""

import ast
import json
from pathlib import Path

from app_helpers import open_app, train_quick_models
from streamlit.testing.v1 import AppTest

from fusion.train import TrainConfig
from studies.pipeline import finetune_and_save, fuse_and_save

REPO_ROOT = Path(__file__).resolve().parents[1]


def chart_traces(at: AppTest, index: int = 0) -> list[dict]:
    return json.loads(at.get("plotly_chart")[index].proto.spec)["data"]


def test_neuron_norms_of_a_fine_tuned_model_show_it_as_fine_tuned_beside_the_fused_model_it_came_from(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    fused = fuse_and_save(app_workspace, ids, "average").record
    tuned = finetune_and_save(app_workspace, fused.id, TrainConfig(epochs=1)).record
    at = open_app("pages/neuron_norms.py")
    at.selectbox(key="norms.model").set_value(tuned.id).run()
    assert not at.exception
    assert [trace["name"] for trace in chart_traces(at)] == ["fused", "fine-tuned"]


def test_neuron_norms_of_a_fused_model_show_its_parents_by_position(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    fused = fuse_and_save(app_workspace, ids, "average").record
    at = open_app("pages/neuron_norms.py")
    at.selectbox(key="norms.model").set_value(fused.id).run()
    assert [trace["name"] for trace in chart_traces(at)] == ["parent A", "parent B", "fused"]


def test_a_command_line_wraps_inside_its_box():
    def page() -> None:
        from ui.charts import show_command

        show_command("fusionlab fuse " + " ".join(f"--option-{i} value" for i in range(40)))

    at = AppTest.from_function(page).run()
    (code,) = at.get("code")
    assert code.proto.wrap_lines and code.proto.language == "bash"


def test_every_page_shows_its_command_lines_through_the_wrapping_box():
    calls = [
        f"{path.name}:{node.lineno}"
        for path in [REPO_ROOT / "app.py", *sorted((REPO_ROOT / "pages").glob("*.py"))]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "code"
    ]
    assert not calls, f"st.code outside ui.charts.show_command does not wrap: {calls}"


def test_the_random_direction_landscape_of_one_model_calls_it_by_its_name(app_workspace):
    from analysis.landscape import LandscapeConfig
    from studies.runs import landscape_of

    (model,) = train_quick_models(app_workspace)
    landscape_of(app_workspace, [model.id], "random", LandscapeConfig(resolution=11), dims=2)
    at = open_app("pages/loss_landscape.py")
    at.radio(key="landscape.view").set_value("random directions around one model").run()
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][1]["text"] == [model.name] and model.name in spec["layout"]["title"]["text"]
    assert "parent A" not in json.dumps(spec)
