"""What a person does on a page of the app in the browser (click, choose, type, wait for a job) and what a check of a
page expects, for the browser tests (``tests/test_browser*.py``). Locators are by role and visible label, as a person
finds the controls."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from browser.harness import CHART, TABLE, main_area, save_full_page, wait_until_idle

try:
    from playwright.sync_api import Page, expect
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
except ImportError:  # the browser tests are skipped (or fail in CI) without Playwright
    pass

PAGE_TIMEOUT_MS = 90_000
"""Loading a page, drawing its figures: seconds when idle, much longer on a loaded 2-core machine."""
JOB_TIMEOUT_MS = 300_000
"""A job started from a page: the demo ensemble takes about 10 s on an idle laptop CPU, but over 3 minutes was seen
on a loaded 2-core machine."""


def click_button(page: Page, name: str) -> None:
    button = main_area(page).get_by_role("button", name=name, exact=True)
    expect(button).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    button.click()


def starts_with(text: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(text))


SELECT_ATTEMPTS = 4
"""Tries at a select box's choice: on a machine loaded by two test processes a choice can be lost more than once."""


def select(page: Page, label: str, option: str, nth: int | None = None) -> None:
    """Choose the option that starts with ``option`` in the selectbox labelled ``label`` (the ``nth`` of them, from
    the top, or from the bottom when negative, where a page has several with that label)."""
    box = main_area(page).get_by_role("combobox", name=label, exact=True)
    if nth is not None:
        box = box.nth(nth)
    expect(box).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    for _ in range(SELECT_ATTEMPTS):  # a choice clicked while a rerun redraws the box can be lost on a loaded machine
        if box.input_value().startswith(option):
            break
        box.scroll_into_view_if_needed()
        box.click()
        choice = page.get_by_role("option", name=starts_with(option))
        try:
            expect(choice).to_be_visible(timeout=5_000)
        except AssertionError:  # the click landed while a rerun redrew the box: open its menu from the keyboard
            box.focus()
            page.keyboard.press("ArrowDown")
        try:
            choice.click(timeout=5_000)
        except PlaywrightTimeoutError:  # the menu is redrawn under the pointer: type the choice and take it
            box.focus()
            page.keyboard.type(option)
            page.keyboard.press("Enter")
        wait_until_idle(page, PAGE_TIMEOUT_MS)
        menu_closed(page)
        try:
            expect(box).to_have_value(starts_with(option), timeout=3_000)
        except AssertionError:
            continue
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


def open_advanced(page: Page) -> None:
    """Unfold the form's "Advanced options" section when it is folded."""
    section = main_area(page).get_by_test_id("stExpander").filter(has_text="Advanced options").first
    expect(section).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    if not section.get_by_role("spinbutton").first.is_visible():
        section.locator("summary").click()
    expect(section.get_by_role("spinbutton").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)


def fill_number(page: Page, label: str, value: float) -> None:
    box = main_area(page).get_by_role("spinbutton", name=label, exact=True)
    box.fill(f"{value:g}" if isinstance(value, float) else str(value))
    box.blur()  # a number input takes what was typed when the focus leaves it
    wait_until_idle(page, PAGE_TIMEOUT_MS)


def save_failure_screenshot(page: Page, path: Path) -> None:
    try:
        save_full_page(page, path)
    except Exception as exc:  # the browser may be what failed; the original error matters more
        print(f"no failure screenshot: {exc}")
