"""The app walk's findings (issue 31), each checked in a real browser as a person meets it: results that belong to
the inputs that made them, validation in words, pages that stay usable while a job runs, figures that keep their
colours and never draw over each other, labels and tables a person reads, the defaults a teacher starts from,
estimates stated with their range, and an upload that survives the form.

The server starts on a workspace prepared through the library (two small MLPs on digits, their OT fusion fine-tuned
for an epoch, a CNN), so each check needs seconds, not a tour. Screenshots go to ``test-artifacts/browser/findings/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from browser.actions import (
    JOB_TIMEOUT_MS,
    PAGE_TIMEOUT_MS,
    click_button,
    fill_number,
    multiselect,
    open_page,
    select,
    wait_for_job,
)
from browser.fixtures import *  # noqa: F403 (the server, browser and screenshot fixtures)
from browser.harness import main_area, page_errors, save_full_page, wait_until_idle
from browser.layout import charts, colours_by_name, layout_problems

from analysis.figures import model_colour
from fusion.models import default_spec
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.comparison import compare_fusion
from studies.pipeline import train_and_save

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the browser_ready fixture skips the tests, or fails them in CI
    pass

WIDTHS = (1000, 1600)
PARENT_A, PARENT_B, FUSED = "mlp 32 · train · seed 0 ", "mlp 32 · train · seed 1 ", "mlp 32 · ot of 2 ("
ROLES = ("parent A", "parent B", "fused", "fine-tuned", "ensemble")


@pytest.fixture(scope="module")
def browser_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two one-epoch MLPs (32 hidden units) on digits, their OT fusion fine-tuned for one epoch (the Fuse page's
    comparison), a one-epoch CNN that cannot be fused with them, and the first MLP's weights as a file to upload."""
    root = tmp_path_factory.mktemp("findings") / "workspace"
    workspace = Workspace(root)
    mlp = default_spec("mlp", (1, 8, 8), 10, hidden=(32,))
    ids = [train_and_save(workspace, mlp, "digits", TrainConfig(epochs=1, seed=seed)).record.id for seed in (0, 1)]
    compare_fusion(workspace, ids, "ot", {}, TrainConfig(epochs=1))
    train_and_save(workspace, default_spec("cnn", (1, 8, 8), 10), "digits", TrainConfig(epochs=1))
    torch.save(workspace.load(ids[0])[0].state_dict(), root.parent / "weights.pt")
    return root


def picture(page: Page, artifacts: Path, name: str) -> None:
    for width in WIDTHS:
        save_full_page(page, artifacts / f"{name}-{width}.png", width)


def alert(page: Page, text: str | re.Pattern[str]):
    return main_area(page).get_by_test_id("stAlert").filter(has_text=text)


def text_of(page: Page) -> str:
    return main_area(page).inner_text()


# 1. Results belong to the inputs that made them ----------------------------------------------------------------


def test_a_result_is_shown_only_under_the_inputs_that_made_it(page: Page, artifacts: Path) -> None:
    open_page(page, "Fuse")
    multiselect(page, "Models (at least 2)", PARENT_A, PARENT_B)
    expect(main_area(page).get_by_role("combobox", name="Fused model", exact=True)).to_be_visible()
    select(page, "Method", "average — ")
    multiselect(page, "Models (at least 2)", PARENT_A, PARENT_B)
    expect(alert(page, "No average fusion of the chosen models is stored yet")).to_be_visible()
    expect(main_area(page).get_by_role("combobox", name="Fused model (other settings)", exact=True)).to_be_visible()

    select(page, "Method", "cla — ")
    multiselect(page, "Models (at least 2)", PARENT_A, PARENT_B)
    click_button(page, "Fuse")
    failed = alert(page, re.compile(r"cla fusion of 2 model\(s\) failed: "))
    expect(failed).to_be_visible(timeout=JOB_TIMEOUT_MS)
    wait_until_idle(page, PAGE_TIMEOUT_MS)
    assert main_area(page).locator('[data-testid="stDataFrame"], [data-testid="stPlotlyChart"]').count() == 0
    picture(page, artifacts, "1-fuse-failed")

    open_page(page, "Loss landscape")
    main_area(page).get_by_role("radiogroup").get_by_text("any two models", exact=True).click()
    wait_until_idle(page, PAGE_TIMEOUT_MS)
    select(page, "Model A", PARENT_A)
    select(page, "Model B", "cnn ")
    expect(main_area(page).get_by_test_id("stAlertContentError")).to_be_visible()
    assert "press Compute" not in text_of(page)
    assert main_area(page).get_by_role("button", name="Compute", exact=True).count() == 0
    picture(page, artifacts, "1-landscape-incompatible")


# 2. Validation in words ------------------------------------------------------------------------------------------


def test_bad_values_are_listed_by_their_labels_with_the_allowed_range(page: Page, artifacts: Path) -> None:
    """Out-of-range numbers used to leave the run button doing nothing but outline the field in red."""
    open_page(page, "Fuse")
    select(page, "Method", "ot — ")
    multiselect(page, "Models (at least 2)", PARENT_A, PARENT_B)
    fill_number(page, "Fine-tune epochs after fusion (0: none)", 99_999_999)
    fill_number(page, "Fine-tune learning rate", 1e9)
    fill_number(page, "Sinkhorn regularisation", -1)
    click_button(page, "Fuse")
    error = main_area(page).get_by_test_id("stAlertContentError")
    expect(error).to_have_count(1)
    listed = error.inner_text()
    for label in ("Fine-tune epochs after fusion (0: none)", "Fine-tune learning rate", "Sinkhorn regularisation"):
        assert label in listed, listed
    assert "10000" in listed and not re.search(r"\b(reg|finetune_epochs|lr)\b", listed), listed
    picture(page, artifacts, "2-fuse-validation")

    open_page(page, "Hessian")
    multiselect(page, "Models (parents and fused side by side)", FUSED)
    fill_number(page, "Samples (0: all)", -3)
    fill_number(page, "Top-k eigenvalues", 0)
    click_button(page, "Compute")
    listed = main_area(page).get_by_test_id("stAlertContentError").inner_text()
    assert "Samples (0: all)" in listed and "Top-k eigenvalues" in listed and "top_k" not in listed, listed
    picture(page, artifacts, "2-hessian-validation")


# 3. One job does not freeze the app -----------------------------------------------------------------------------


def test_a_running_job_leaves_the_other_pages_usable_and_a_reload_shows_the_queued_one(
    page: Page, artifacts: Path
) -> None:
    """Training runs; the Hessian form stays usable and queues its job behind it; a reload (a new session) opens
    the Hessian page on that job's model and shows it waiting; cancelling both leaves nothing running."""
    open_page(page, "Models")
    fill_number(page, "Epochs", 2000)
    click_button(page, "Train")
    expect(page.get_by_test_id("stSidebar").get_by_text(re.compile("^Train "))).to_be_visible()

    open_page(page, "Hessian")
    multiselect(page, "Models (parents and fused side by side)", PARENT_B)
    fill_number(page, "Samples (0: all)", 100)
    fill_number(page, "Top-k eigenvalues", 3)
    click_button(page, "Compute")
    queued = re.compile("queued behind “Train ")
    expect(main_area(page).get_by_text(queued)).to_be_visible()
    picture(page, artifacts, "3-hessian-queued")

    page.reload()
    expect(page.get_by_test_id("stSidebarNavLink").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    open_page(page, "Hessian")
    models = main_area(page).get_by_test_id("stMultiSelect").locator("[data-tag]")
    expect(models).to_have_count(1)
    assert (models.first.get_attribute("aria-label") or "").startswith(PARENT_B)
    expect(main_area(page).get_by_text(queued)).to_be_visible()
    picture(page, artifacts, "3-hessian-after-reload")

    sidebar = page.get_by_test_id("stSidebar")
    while sidebar.get_by_role("button", name="Cancel", exact=True).count():
        sidebar.get_by_role("button", name="Cancel", exact=True).first.click()
        wait_until_idle(page, PAGE_TIMEOUT_MS)
    expect(sidebar.get_by_role("button", name="Cancel", exact=True)).to_have_count(0, timeout=JOB_TIMEOUT_MS)


# 7. Estimates from measurement ---------------------------------------------------------------------------------


def test_estimates_are_measured_here_and_stated_with_their_range(page: Page, artifacts: Path) -> None:
    """Fixed promises ("about six seconds of training", "about a minute per small model") were off by 3x; every
    estimate is now timed on this machine and shown with its range."""
    estimate = re.compile(r"about [\d.,]+ s \([\d.,]+-[\d.,]+ s\)")
    for title in ("Home", "Loss landscape", "Hessian", "Neuron Transplantation demo"):
        open_page(page, title)
        text = text_of(page)
        assert "six seconds" not in text and "about a minute" not in text, f"{title}: a fixed promise"
        if title in ("Home", "Loss landscape"):
            expect(main_area(page).get_by_text(estimate).first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    picture(page, artifacts, "7-demo-estimate")


# 8. The upload survives the form ----------------------------------------------------------------------------------


def test_an_upload_is_kept_while_the_form_is_still_being_filled_in(
    page: Page, artifacts: Path, browser_workspace: Path
) -> None:
    open_page(page, "Models")
    main_area(page).locator("input[type=file]").set_input_files(str(browser_workspace.parent / "weights.pt"))
    uploaded = main_area(page).get_by_text(re.compile("^Uploaded: weights.pt"))
    expect(uploaded).to_be_visible()
    wait_until_idle(page, PAGE_TIMEOUT_MS)
    select(page, "Dataset", "image folder", nth=-1)  # the import section's, below the training section's
    expect(uploaded).to_be_visible()
    assert not page_errors(page) and main_area(page).get_by_test_id("stAlertContentError").count() == 0
    click_button(page, "Import")
    missing = main_area(page).get_by_test_id("stAlertContentError")
    expect(missing).to_contain_text("Type the image folder's path")
    assert "imagefolder:" not in missing.inner_text()
    expect(uploaded).to_be_visible()
    picture(page, artifacts, "8-upload-kept")


# 5. Labels a person reads ----------------------------------------------------------------------------------------


def test_command_lines_wrap_inside_their_box(page: Page, artifacts: Path) -> None:
    open_page(page, "Fuse")
    select(page, "Method", "ot — ")
    multiselect(page, "Models (at least 2)", PARENT_A, PARENT_B)
    code = main_area(page).get_by_test_id("stCode").last
    expect(code).to_be_visible()
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        wait_until_idle(page, PAGE_TIMEOUT_MS)
        overflow = code.evaluate("el => el.querySelector('pre').scrollWidth - el.querySelector('pre').clientWidth")
        assert overflow <= 1, f"the command line is cut off by {overflow} px at {width} px"
    page.set_viewport_size({"width": 1400, "height": 900})
    wait_until_idle(page, PAGE_TIMEOUT_MS)


def test_neuron_norms_name_a_fine_tuned_model_and_its_source_by_their_roles(page: Page, artifacts: Path) -> None:
    open_page(page, "Neuron norms")
    select(page, "Model (its parents are shown beside it)", "mlp 32 · ot of 2 · fine-tuned")
    expect(main_area(page).locator('[data-testid="stPlotlyChart"]').first).to_be_visible()
    names = {name for chart in charts(page) for name, _ in chart.traces}
    assert any(name.startswith("fine-tuned") for name in names), names
    assert any(name.startswith("fused") for name in names), names
    assert not any(name.startswith("parent") for name in names), names
    picture(page, artifacts, "5-neuron-norms")


# 6. Defaults a teacher starts from -------------------------------------------------------------------------------


def test_fuse_opens_on_ot_and_transplant_fine_tunes_by_default(page: Page, artifacts: Path) -> None:
    page.reload()
    expect(page.get_by_test_id("stSidebarNavLink").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    open_page(page, "Fuse")
    expect(main_area(page).get_by_role("combobox", name="Method", exact=True)).to_have_value(re.compile("^ot — "))
    select(page, "Method", "transplant — ")
    epochs = main_area(page).get_by_role("spinbutton", name="Fine-tune epochs after fusion (0: none)", exact=True)
    expect(epochs).to_have_value("30")
    expect(main_area(page).get_by_text(re.compile("30 epochs of SGD"))).to_be_visible()
    picture(page, artifacts, "6-fuse-transplant")


def test_the_hessian_form_shows_the_few_options_a_first_run_needs(page: Page, artifacts: Path) -> None:
    open_page(page, "Hessian")
    form = main_area(page).get_by_test_id("stForm").first
    visible = [
        control
        for control in form.locator("input, [role=combobox]").all()
        if control.is_visible() and control.get_attribute("type") != "hidden"
    ]
    assert len(visible) <= 8, f"{len(visible)} options shown at once"
    expect(form.get_by_text(re.compile("^Advanced options"))).to_have_count(2)
    picture(page, artifacts, "6-hessian-form")


# 4. Figures ---------------------------------------------------------------------------------------------------


def test_figures_keep_role_colours_and_never_draw_over_each_other(page: Page, artifacts: Path) -> None:
    """The Hessian of both parents and the fused model with the perturbation study, the eigenvector overlaps, then
    the fusion's landscape: at 1,000 and 1,600 px every legend is complete, no plot area or tick label is drawn over
    another, titles stay apart, and each role has its colour in every chart."""
    open_page(page, "Hessian")
    multiselect(page, "Models (parents and fused side by side)", PARENT_A, PARENT_B, FUSED)
    fill_number(page, "Samples (0: all)", 100)
    fill_number(page, "Top-k eigenvalues", 3)
    click_button(page, "Compute")
    wait_for_job(page, "Hessian of 3 model(s)")
    click_button(page, "Compute the overlaps")
    wait_for_job(page, "eigenvector overlaps of ")
    check_figures(page, artifacts, "4-hessian", expected=5)

    open_page(page, "Loss landscape")
    main_area(page).get_by_role("radiogroup").get_by_text("random directions around one model", exact=True).click()
    wait_until_idle(page, PAGE_TIMEOUT_MS)
    select(page, "Model", FUSED)
    fill_number(page, "Points per axis", 5)
    fill_number(page, "Examples per split (0: all)", 100)
    click_button(page, "Compute")
    wait_for_job(page, "random landscape")
    names = {name for chart in charts(page) for name, _ in chart.traces}
    assert not any(name.startswith("parent A") for name in names), f"a single model is called parent A: {names}"
    check_figures(page, artifacts, "4-random-landscape", expected=1)


def check_figures(page: Page, artifacts: Path, name: str, expected: int) -> None:
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        wait_until_idle(page, PAGE_TIMEOUT_MS)
        page.wait_for_timeout(500)  # plotly lays the figures out again after the resize
        drawn = charts(page)
        assert len(drawn) >= expected, f"{len(drawn)} charts drawn at {width} px"
        problems = [problem for chart in drawn for problem in layout_problems(chart)]
        assert not problems, f"at {width} px:\n" + "\n".join(problems)
        for trace_name, colours in colours_by_name(drawn).items():
            role = next((r for r in ROLES if trace_name == r or trace_name.startswith(r + " ")), None)
            if role is not None:
                assert colours == {model_colour(role).lower()}, f"{trace_name!r} drawn in {colours} at {width} px"
    page.set_viewport_size({"width": 1400, "height": 900})
    wait_until_idle(page, PAGE_TIMEOUT_MS)
    picture(page, artifacts, name)
    assert not page_errors(page)
