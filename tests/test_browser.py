"""The app end to end in a real browser: ``streamlit run app.py`` on a free port, Debian's Chromium driven by
Playwright through every page of the navigation, as a user would: build the demo ensemble, fuse two CNNs with OT
fusion, then open each analysis page and run its default computation.

Every page must show its figures and no exception or error message. Full-height screenshots of each page, 1,000 and
1,600 px wide, go to ``test-artifacts/browser/<page>-<width>.png`` (with the server log);
``FUSIONLAB_UPDATE_SCREENSHOTS=1`` also copies the 1,600 px ones to ``docs/screenshots/`` for the README. Without
Playwright or Chromium the test is skipped, except in CI (``CI=true``), where that is a failure.

A new page in the navigation needs one entry in ``PAGES``: its title, what a user does there, what it must show.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from browser.actions import (
    PAGE_TIMEOUT_MS,
    check,
    click_button,
    fill_number,
    multiselect,
    navigation_titles,
    open_advanced,
    open_page,
    save_failure_screenshot,
    select,
    shows,
    wait_for_job,
)
from browser.fixtures import *  # noqa: F403 (the server, browser and screenshot fixtures)
from browser.harness import REPO_ROOT, TRACEBACK, main_area, page_errors, save_full_page, wait_until_idle

from studies.sweeps.spec import EXAMPLE_SWEEP

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the browser_ready fixture skips the tests, or fails them in CI
    pass

DOCS_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
UPDATE_DOCS = os.environ.get("FUSIONLAB_UPDATE_SCREENSHOTS") == "1"
SCREENSHOT_WIDTHS = (1000, 1600)
"""The narrowest and widest windows the pages are laid out for (figures side by side, legends, wide tables)."""


# What a user does on a page -------------------------------------------------------------------------------------


def nothing(page: Page) -> None:
    """Only look at the page."""


def build_demo_ensemble(page: Page) -> None:
    click_button(page, "Build the demo ensemble")
    wait_for_job(page, "Build the demo ensemble")


def first_story_step(page: Page) -> None:
    click_button(page, "Next step")
    wait_for_job(page, "NT demo · step 1")


def fuse_two_cnns_with_ot(page: Page) -> None:
    """Fuse with non-default options typed into the form, and check the form still shows them after the job."""
    select(page, "Method", "ot — ")
    multiselect(page, "Models (at least 2)", "demo cnn · seed 0 ", "demo cnn · seed 1 ")
    sweeps = main_area(page).get_by_role("spinbutton", name="Sweeps", exact=True)
    sweeps.fill("2")
    sweeps.blur()  # a number input takes what was typed when the focus leaves it
    wait_until_idle(page, PAGE_TIMEOUT_MS)
    select(page, "Ground metric", "sqeuclidean")
    click_button(page, "Fuse")
    wait_for_job(page, "ot fusion of 2 model(s)")
    expect(main_area(page).get_by_role("spinbutton", name="Sweeps", exact=True)).to_have_value("2")
    expect(main_area(page).get_by_role("combobox", name="Ground metric", exact=True)).to_have_value("sqeuclidean")


def landscape_of_the_fused_model(page: Page) -> None:
    click_button(page, "Compute")
    wait_for_job(page, "Landscape of ")


def hessians_of_parents_and_fused(page: Page) -> None:
    """With the perturbation study's controls set away from their defaults, then the eigenvector overlaps."""
    parents_and_fused = (
        "demo cnn · seed 0 ",
        "demo cnn · seed 1 ",
        "cnn c16-32-h64 · ot (metric sqeuclidean, sweeps 2) of 2 ",
    )
    multiselect(page, "Models (parents and fused side by side)", *parents_and_fused)
    check(page, "Per-layer Hessians")
    fill_number(page, "Samples (0: all)", 100)
    fill_number(page, "Random directions", 2)
    fill_number(page, "Eigenvector plane: points a side (0: none)", 5)
    open_advanced(page)
    select(page, "Step scale (unit of t)", "filter")
    fill_number(page, "Perturbation: points", 7)
    click_button(page, "Compute")
    wait_for_job(page, "Hessian of 3 model(s)")
    expect(main_area(page).get_by_role("spinbutton", name="Random directions", exact=True)).to_have_value("2")
    click_button(page, "Compute the overlaps")
    wait_for_job(page, "eigenvector overlaps of ")


def compare_every_method(page: Page) -> None:
    """Two methods (of the eight that apply) with a fine-tune and the Hessian of every model."""
    multiselect(page, "Parents", "demo cnn · seed 0 ", "demo cnn · seed 1 ")
    multiselect(page, "Methods (all that apply to these parents by default)", "ot — ", "transplant — ")
    fill_number(page, "Fine-tune epochs for every fused model (0: none)", 1)
    check(page, "Then the Hessian of every model (parents, fused, fine-tuned)")
    fill_number(page, "Hessian samples (test examples)", 50)
    click_button(page, "Compare")
    wait_for_job(page, "comparison of ")


def run_the_generalization_study(page: Page) -> None:
    select(page, "Parent A", "demo cnn · seed 0 ")
    select(page, "Parent B", "demo cnn · seed 1 ")
    select(page, "Pruning", "unstructured")
    fill_number(page, "Hessian samples (test examples)", 50)
    click_button(page, "Run the study")
    wait_for_job(page, "generalization study of ")


def run_a_sweep(page: Page) -> None:
    """The example sweep cut to two methods and one seed: its parents are the demo ensemble's MLPs of seeds 0 and 1,
    reused; the two fusions run as submitit jobs."""
    sweep = EXAMPLE_SWEEP.replace('["ot", "matching", "average"]', '["ot", "average"]').replace("[0, 1]", "[0]")
    box = main_area(page).get_by_role("textbox", name="Sweep file (TOML)", exact=True)
    box.fill(sweep)
    click_button(page, "Run or resume on this machine")
    wait_for_job(page, "sweep demo-methods")


# What a page must show ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageCheck:
    """A page of the navigation (``title`` as in the sidebar), what a user does there, and what it must then show."""

    title: str
    action: Callable[[Page], None] = nothing
    expectation: Callable[[Page], None] = field(default_factory=lambda: shows())

    @property
    def slug(self) -> str:
        return slug(self.title)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


# In the order of the tour: later pages use what earlier ones made (the demo ensemble, the OT-fused CNN).
PAGES = [
    PageCheck("Home", build_demo_ensemble, shows("Models", re.compile(r"· 7 models"), tables=1)),
    PageCheck("Models", nothing, shows("Train new models", "Import a checkpoint", tables=1)),
    PageCheck("Fuse", fuse_two_cnns_with_ot, shows("Results", charts=1, tables=1)),
    PageCheck("Transport maps", nothing, shows(charts=1, tables=1)),
    PageCheck("Neuron norms", nothing, shows(charts=1)),
    PageCheck("Loss landscape", landscape_of_the_fused_model, shows(charts=2, tables=1)),
    PageCheck("Hessian", hessians_of_parents_and_fused, shows("Sharpness", charts=7, tables=2)),
    PageCheck("Compare", compare_every_method, shows("Results", "Sharpness", charts=1, tables=2)),
    PageCheck("Generalization study", run_the_generalization_study, shows("Every stage", charts=1, tables=1)),
    PageCheck("Sweeps", run_a_sweep, shows("Every fusion job", "Jobs done", charts=1, tables=2)),
    PageCheck("Neuron Transplantation demo", first_story_step, shows("1. The parents", charts=1)),
]


# The server and the browser -------------------------------------------------------------------------------------


@dataclass
class Tour:
    """How far the tour got: a page that fails stops the pages after it, which depend on it."""

    failed: str | None = None
    log_checked: int = 0


@pytest.fixture(scope="module")
def tour() -> Tour:
    return Tour()


def check_no_errors(page: Page, title: str, server_log: Path, tour: Tour) -> None:
    errors = page_errors(page)
    assert not errors, f"{title} shows errors:\n" + "\n".join(errors)
    log = server_log.read_text(errors="replace")
    new, tour.log_checked = log[tour.log_checked :], len(log)
    assert TRACEBACK not in new, f"the server logged an exception on {title}:\n{new[new.index(TRACEBACK) :][:3000]}"


def screenshot(page: Page, name: str, artifacts: Path) -> None:
    """The page at each of :data:`SCREENSHOT_WIDTHS` (``<name>-<width>.png``); the widest goes to the README."""
    paths = [save_full_page(page, artifacts / f"{name}-{width}.png", width) for width in SCREENSHOT_WIDTHS]
    if UPDATE_DOCS:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths[-1], DOCS_SCREENSHOTS / f"{name}.png")


# The tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", [pytest.param(check, id=check.slug) for check in PAGES])
def test_page_shows_its_figures_without_errors(
    check: PageCheck, page: Page, tour: Tour, artifacts: Path, server_log: Path
) -> None:
    if tour.failed is not None:
        pytest.skip(f"the tour stopped at {tour.failed}, whose results this page needs")
    if check.title not in navigation_titles(page):
        pytest.skip(f"{check.title!r} is not in the navigation (yet)")
    try:
        open_page(page, check.title)
        check.action(page)
        check.expectation(page)
        wait_until_idle(page, PAGE_TIMEOUT_MS)
        check_no_errors(page, check.title, server_log, tour)
        screenshot(page, check.slug, artifacts)
    except BaseException:
        tour.failed = check.title
        save_failure_screenshot(page, artifacts / f"failed-{check.slug}.png")
        raise


def test_every_page_in_the_navigation_is_checked(page: Page, tour: Tour, artifacts: Path, server_log: Path) -> None:
    """A page without an entry in PAGES is still opened (it must load without errors, and gets a screenshot), but the
    test fails until the entry says what the page must show."""
    unchecked = [title for title in navigation_titles(page) if title not in {check.title for check in PAGES}]
    for title in unchecked:
        try:
            open_page(page, title)
            check_no_errors(page, title, server_log, tour)
            screenshot(page, slug(title), artifacts)
        except BaseException:
            save_failure_screenshot(page, artifacts / f"failed-{slug(title)}.png")
            raise
    assert not unchecked, f"add an entry to PAGES in {Path(__file__).name} for: {', '.join(unchecked)}"
