"""The app end to end in a real browser: ``streamlit run app.py`` on a free port, Debian's Chromium driven by
Playwright through every page of the navigation, as a user would: build the demo ensemble, fuse two CNNs with OT
fusion, then open each analysis page and run its default computation.

Every page must show its figures and no exception or error message. A full-height screenshot of each page goes to
``test-artifacts/browser/<page>.png`` (with the server log); ``FUSIONLAB_UPDATE_SCREENSHOTS=1`` also copies them to
``docs/screenshots/`` for the README. Without Playwright or Chromium the test is skipped, except in CI (``CI=true``),
where that is a failure.

A new page in the navigation needs one entry in ``PAGES``: its title, what a user does there, what it must show.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
from browser.harness import (
    CHART,
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO_ROOT,
    TABLE,
    TRACEBACK,
    VIEWPORT,
    main_area,
    missing_browser,
    page_errors,
    save_full_page,
    streamlit_server,
    wait_until_idle,
)

from analysis.sweeps.spec import EXAMPLE_SWEEP
from fusion.models import default_spec
from fusion.pipeline import fuse_and_save, train_and_save
from fusion.train import TrainConfig
from fusion.workspace import Workspace

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # the browser_ready fixture skips the tests, or fails them in CI
    pass

ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
DOCS_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
UPDATE_DOCS = os.environ.get("FUSIONLAB_UPDATE_SCREENSHOTS") == "1"
IN_CI = os.environ.get("CI", "").lower() == "true"

PAGE_TIMEOUT_MS = 90_000
"""Loading a page, drawing its figures: seconds when idle, much longer on a loaded 2-core machine."""
JOB_TIMEOUT_MS = 300_000
"""A job started from a page: the demo ensemble takes about 10 s on an idle laptop CPU, but over 3 minutes was seen
on a loaded 2-core machine."""


# What a user does on a page -------------------------------------------------------------------------------------


def click_button(page: Page, name: str) -> None:
    button = main_area(page).get_by_role("button", name=name, exact=True)
    expect(button).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    button.click()


def starts_with(text: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(text))


def select(page: Page, label: str, option: str) -> None:
    """Choose the option that starts with ``option`` in the selectbox labelled ``label``."""
    box = main_area(page).get_by_role("combobox", name=label, exact=True)
    expect(box).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    if not box.input_value().startswith(option):
        box.scroll_into_view_if_needed()
        box.click()
        choice = page.get_by_role("option", name=starts_with(option))
        try:
            expect(choice).to_be_visible(timeout=5_000)
        except AssertionError:  # the click landed while a rerun redrew the box: open its menu from the keyboard
            box.focus()
            page.keyboard.press("ArrowDown")
        choice.click()
        wait_until_idle(page, PAGE_TIMEOUT_MS)
    expect(box).to_have_value(starts_with(option))
    menu_closed(page)


def menu_closed(page: Page) -> None:
    """Assert that no select box's menu is open. The focus stays in the box, as a user leaves it: that is no reason
    for a lost click (the Hessian page's first Compute click after choosing three models reaches the server with the
    focus still in its multiselect). But while a menu is open, Streamlit 1.67 marks the page around it
    ``aria-hidden``, so a button looked up by its role is not found and the click is never sent."""
    expect(page.get_by_role("listbox")).to_have_count(0, timeout=PAGE_TIMEOUT_MS)
    wait_until_idle(page, PAGE_TIMEOUT_MS)


def check(page: Page, label: str) -> None:
    """Tick the checkbox labelled ``label`` (inside a form: nothing is sent until the form is submitted)."""
    box = main_area(page).get_by_role("checkbox", name=label, exact=True)
    expect(box).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    box.check(force=True)
    if not box.is_checked():  # a click sent while the page re-rendered can be lost on a loaded machine
        box.check(force=True)
    expect(box).to_be_checked(timeout=PAGE_TIMEOUT_MS)


def multiselect(page: Page, label: str, *options: str) -> None:
    """Make the multiselect labelled ``label`` hold exactly the options that start with ``options`` (the pages
    preselect the models chosen elsewhere, so some may be there already and others must go)."""
    widget = (
        main_area(page).get_by_test_id("stMultiSelect").filter(has=page.get_by_role("combobox", name=label, exact=True))
    )
    box = widget.get_by_role("combobox")
    tags = widget.locator("[data-tag]")
    expect(box).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    chosen = [tag.get_attribute("aria-label") or "" for tag in tags.all()]
    for text in chosen:
        if not text.startswith(options):
            widget.get_by_role("button", name=f"Remove {text}", exact=True).click()
            wait_until_idle(page, PAGE_TIMEOUT_MS)
    for option in options:
        if not any(text.startswith(option) for text in chosen):
            box.click()
            page.get_by_role("option", name=starts_with(option)).click()
            page.keyboard.press("Escape")
            wait_until_idle(page, PAGE_TIMEOUT_MS)
    expect(tags).to_have_count(len(options))
    menu_closed(page)


def wait_for_job(page: Page, title: str) -> None:
    """Wait until the page reports how the job whose title starts with ``title`` ended; it must have finished."""
    ended = (
        main_area(page)
        .get_by_test_id("stAlert")
        .filter(has_text=re.compile(re.escape(title) + r".*(: finished in|: cancelled after| failed: )"))
    )
    expect(ended).to_be_visible(timeout=JOB_TIMEOUT_MS)
    outcome = ended.inner_text()
    assert ": finished in" in outcome, f"the job {title!r} did not finish: {outcome}"
    wait_until_idle(page, PAGE_TIMEOUT_MS)


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
    fill_number(page, "Samples (0: all)", 300)
    fill_number(page, "Random directions", 4)
    fill_number(page, "Eigenvector plane: points a side (0: none)", 7)
    open_advanced(page)
    select(page, "Step scale (unit of t)", "filter")
    fill_number(page, "Perturbation: points", 11)
    click_button(page, "Compute")
    wait_for_job(page, "Hessian of 3 model(s)")
    expect(main_area(page).get_by_role("spinbutton", name="Random directions", exact=True)).to_have_value("4")
    click_button(page, "Compute the overlaps")
    wait_for_job(page, "eigenvector overlaps of ")


def compare_every_method(page: Page) -> None:
    """Three methods (of the eight that apply) with a fine-tune and the Hessian of every model."""
    multiselect(page, "Parents", "demo cnn · seed 0 ", "demo cnn · seed 1 ")
    multiselect(page, "Methods (all that apply to these parents by default)", "ot — ", "sparsify — ", "transplant — ")
    fill_number(page, "Fine-tune epochs for every fused model (0: none)", 1)
    check(page, "Then the Hessian of every model (parents, fused, fine-tuned)")
    fill_number(page, "Hessian samples (test examples)", 100)
    click_button(page, "Compare")
    wait_for_job(page, "comparison of ")


def run_the_generalization_study(page: Page) -> None:
    select(page, "Parent A", "demo cnn · seed 0 ")
    select(page, "Parent B", "demo cnn · seed 1 ")
    select(page, "Pruning", "unstructured")
    fill_number(page, "Hessian samples (test examples)", 100)
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


def shows(*texts: str | re.Pattern[str], charts: int = 0, tables: int = 0) -> Callable[[Page], None]:
    """The page shows each of ``texts`` (a string: the whole text of an element; a pattern: found in one) and at
    least ``charts`` drawn plotly figures and ``tables`` data frames."""

    def expectation(page: Page) -> None:
        main = main_area(page)
        for text in texts:
            expect(main.get_by_text(text, exact=True).first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
        for selector, count in ((CHART, charts), (TABLE, tables)):
            if count:
                expect(main.locator(selector).nth(count - 1)).to_be_visible(timeout=PAGE_TIMEOUT_MS)

    return expectation


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


def browser_unusable(reason: str) -> NoReturn:
    """Skip the browser test, except in CI, where it must run."""
    if IN_CI:
        pytest.fail(f"the browser test must run in CI, but {reason}")
    pytest.skip(f"browser test skipped: {reason}")


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = missing_browser()
    if reason is not None:
        browser_unusable(reason)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.log")]:
        stale.unlink()
    return ARTIFACTS


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Path]:
    """The server's output; copied to the artifacts at the end (written elsewhere first, so that two runs in one
    checkout do not write into each other's log)."""
    log = tmp_path_factory.mktemp("browser-log") / "streamlit.log"
    yield log
    if log.exists():
        shutil.copyfile(log, artifacts / log.name)


@pytest.fixture(scope="module")
def browser_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser") / "workspace"


@pytest.fixture(scope="module")
def app_url(browser_ready: None, server_log: Path, browser_workspace: Path) -> Iterator[str]:
    with streamlit_server(browser_workspace, server_log) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser_ready: None, app_url: str) -> Iterator[Page]:
    with ExitStack() as stack:
        try:
            playwright = stack.enter_context(sync_playwright())
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=120_000)
        except Exception as exc:
            # Playwright's own Node.js needs libatomic1, which chromium does not pull in on a minimal Debian.
            browser_unusable(f"Playwright could not start {CHROMIUM} ({exc}); on Debian, apt-get install libatomic1")
        stack.callback(browser.close)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(app_url)
        expect(page.get_by_test_id("stSidebarNavLink").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
        wait_until_idle(page, PAGE_TIMEOUT_MS)
        yield page


@dataclass
class Tour:
    """How far the tour got: a page that fails stops the pages after it, which depend on it."""

    failed: str | None = None
    log_checked: int = 0


@pytest.fixture(scope="module")
def tour() -> Tour:
    return Tour()


def navigation_titles(page: Page) -> list[str]:
    links = page.get_by_test_id("stSidebarNavLink").get_by_test_id("stMarkdownContainer")
    return [text.strip() for text in links.all_inner_texts()]


def open_page(page: Page, title: str) -> None:
    link = page.get_by_test_id("stSidebarNavLink").filter(
        has=page.get_by_test_id("stMarkdownContainer").get_by_text(title, exact=True)
    )
    expect(link).to_have_count(1, timeout=PAGE_TIMEOUT_MS)
    link.click()
    expect(link).to_have_attribute("aria-current", "page", timeout=PAGE_TIMEOUT_MS)
    wait_until_idle(page, PAGE_TIMEOUT_MS)


def check_no_errors(page: Page, title: str, server_log: Path, tour: Tour) -> None:
    errors = page_errors(page)
    assert not errors, f"{title} shows errors:\n" + "\n".join(errors)
    log = server_log.read_text(errors="replace")
    new, tour.log_checked = log[tour.log_checked :], len(log)
    assert TRACEBACK not in new, f"the server logged an exception on {title}:\n{new[new.index(TRACEBACK) :][:3000]}"


def screenshot(page: Page, name: str, artifacts: Path) -> None:
    path = save_full_page(page, artifacts / f"{name}.png")
    if UPDATE_DOCS:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)


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


def save_failure_screenshot(page: Page, path: Path) -> None:
    try:
        save_full_page(page, path)
    except Exception as exc:  # the browser may be what failed; the original error matters more
        print(f"no failure screenshot: {exc}")


def open_advanced(page: Page) -> None:
    """Unfold the form's "Advanced options" section when it is folded."""
    section = main_area(page).get_by_test_id("stExpander").filter(has_text="Advanced options").first
    expect(section).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    if not section.get_by_role("spinbutton").first.is_visible():
        section.locator("summary").click()
    expect(section.get_by_role("spinbutton").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)


def fill_number(page: Page, label: str, value: int) -> None:
    box = main_area(page).get_by_role("spinbutton", name=label, exact=True)
    box.fill(str(value))
    box.blur()  # a number input takes what was typed when the focus leaves it
    wait_until_idle(page, PAGE_TIMEOUT_MS)


def test_the_hessian_and_landscape_pages_work_on_a_vit_pair_and_its_fusion(
    page: Page, browser_workspace: Path, artifacts: Path, server_log: Path, tour: Tour
) -> None:
    """Two ViTs (one epoch each) and their OT fusion, made through the library in the server's workspace; then the
    Hessian of a parent and the fusion, and the fusion's landscape, computed from the pages."""
    workspace = Workspace(browser_workspace)
    vit = default_spec("vit", (1, 8, 8), 10)
    ids = [train_and_save(workspace, vit, "digits", TrainConfig(epochs=1, seed=s)).record.id for s in (0, 1)]
    fuse_and_save(workspace, ids, "ot")
    try:
        open_page(page, "Hessian")
        multiselect(page, "Models (parents and fused side by side)", "vit x1 · train · seed 0 ", "vit x1 · ot of 2 ")
        open_advanced(page)
        settings = (("Samples (0: all)", 100), ("Iterations", 8), ("Probes", 4), ("Steps", 8), ("Runs", 1))
        for label, value in (*settings, ("Random directions", 0), ("Sample parts (eigenvalue spread)", 1)):
            fill_number(page, label, value)
        main_area(page).get_by_role("checkbox", name="Per-layer Hessians", exact=True).uncheck(force=True)
        click_button(page, "Compute")
        wait_for_job(page, "Hessian of 2 model(s)")
        shows(charts=3, tables=1)(page)
        check_no_errors(page, "Hessian (ViT)", server_log, tour)
        screenshot(page, "hessian_vit", artifacts)

        open_page(page, "Loss landscape")
        select(page, "Fused model", "vit x1 · ot of 2")
        fill_number(page, "Points per axis", 3)
        fill_number(page, "Examples per split (0: all)", 100)
        click_button(page, "Compute")
        wait_for_job(page, "Landscape of ")
        shows(charts=2, tables=1)(page)
        check_no_errors(page, "Loss landscape (ViT)", server_log, tour)
        screenshot(page, "loss_landscape_vit", artifacts)
    except BaseException:
        save_failure_screenshot(page, artifacts / "failed-vit.png")
        raise
