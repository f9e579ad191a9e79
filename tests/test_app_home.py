"""The Home page, the sidebar, and the job runner behind every long computation."""

from __future__ import annotations

import threading

from app_helpers import messages, open_app, wait_for_job
from streamlit.testing.v1 import AppTest

from fusion.errors import ConfigError
from ui.jobs import JobRunner
from ui.state import job_runner

BUILD = "Build the demo ensemble"


def test_home_renders_with_device_and_empty_workspace(app_workspace):
    at = open_app()

    assert not at.exception
    assert at.title[0].value == "FusionLab"
    overview = at.markdown[1].value
    assert "**Device:** CPU" in overview
    assert f"`{app_workspace.root}` · 0 models" in overview
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert "CPU" in sidebar and str(app_workspace.root) in sidebar


def test_build_demo_ensemble_trains_seven_models_and_lists_them(app_workspace):
    at = open_app()
    at.button(key=f"FormSubmitter:demo-ensemble-{BUILD}").click().run()

    assert not at.exception
    assert not at.button(key=f"FormSubmitter:demo-ensemble-{BUILD}").disabled, "the form stays usable while it runs"
    job = wait_for_job()
    assert job is not None and job.status == "done", job
    at.run()

    assert not at.exception
    assert any("finished" in text for text in messages(at.success))
    table = at.dataframe[0].value
    assert len(table) == 7
    assert table["test accuracy (%)"].between(50, 100).all()
    assert "· 7 models" in at.markdown[1].value
    assert len(app_workspace.records()) == 7
    assert not any("Reused" in text for text in messages(at.info))

    at.button(key=f"FormSubmitter:demo-ensemble-{BUILD}").click().run()
    job = wait_for_job()
    at.run()
    assert not at.exception and job is not None and job.status == "done"
    assert len(app_workspace.records()) == 7, "a second build stores no copies"
    assert any("Reused 7 stored models" in text for text in messages(at.info))
    assert len(at.dataframe[0].value) == 7


def test_cancel_stops_the_demo_build_at_the_next_progress_report(app_workspace):
    at = open_app()
    at.button(key=f"FormSubmitter:demo-ensemble-{BUILD}").click().run()
    cancel = [b for b in at.main.button if b.label == "Cancel"]
    cancel[0].click().run()

    job = wait_for_job()
    at.run()
    assert not at.exception
    assert job is not None and job.status == "cancelled"
    assert any("cancelled" in text for text in messages(at.warning))
    assert not at.main.button(key=f"FormSubmitter:demo-ensemble-{BUILD}").disabled


def test_a_finished_job_is_shown_after_a_fresh_session_opens_the_page(app_workspace):
    job_runner().submit(BUILD, lambda progress: progress(1, 1, "ok"), kind="demo-ensemble")
    wait_for_job()

    at = open_app()

    assert not at.exception
    assert any(BUILD in text for text in messages(at.success))
    assert f"Last: {BUILD} · done" in " ".join(c.value for c in at.sidebar.caption)


def test_a_failed_job_shows_its_message_as_an_error(app_workspace):
    def refuse(progress) -> None:
        raise ConfigError("learning rate must be in (0, 10], got 50")

    job_runner().submit(BUILD, refuse, kind="demo-ensemble")
    wait_for_job()

    at = open_app()

    assert not at.exception
    assert messages(at.error) == [f"{BUILD} failed: learning rate must be in (0, 10], got 50"]


def test_report_errors_shows_messages_and_never_a_traceback():
    def page() -> None:
        import streamlit as st

        from fusion.errors import DatasetError
        from ui.errors import report_errors

        with report_errors():
            raise DatasetError("MNIST was not found under /data")
        with report_errors():
            {}["missing"]
        st.write("the page goes on")

    at = AppTest.from_function(page).run()

    assert not at.exception
    assert messages(at.error) == ["MNIST was not found under /data", "Unexpected error: KeyError: 'missing'"]
    assert at.markdown[0].value == "the page goes on"


def test_runner_reports_progress_results_and_library_errors():
    runner = JobRunner()

    def count(n: int, progress) -> int:
        for i in range(n):
            progress(i + 1, n, f"step {i + 1}")
        return n * 10

    done = runner.wait(runner.submit("count", count, 3).id, timeout=10)
    assert (done.status, done.result, done.done, done.total, done.message) == ("done", 30, 3, 3, "step 3")
    assert done.summary().startswith("step 3/3")

    def refuse(progress) -> None:
        raise ConfigError("epochs must be positive")

    failed = runner.wait(runner.submit("refuse", refuse).id, timeout=10)
    assert (failed.status, failed.error) == ("failed", "epochs must be positive")

    def crash(progress) -> None:
        raise KeyError("boom")

    crashed = runner.wait(runner.submit("crash", crash).id, timeout=10)
    assert crashed.error == "Unexpected error: KeyError: 'boom'"
    runner.shutdown()


def test_runner_cancels_through_the_progress_callback_and_keeps_a_bounded_history():
    runner = JobRunner(history=3)
    started = threading.Event()

    def forever(progress) -> None:
        started.set()
        while True:
            progress(1, 2, "waiting")

    job = runner.submit("forever", forever)
    started.wait(10)
    runner.cancel(job.id)
    assert runner.wait(job.id, timeout=10).status == "cancelled"
    for i in range(5):
        runner.wait(runner.submit(f"quick {i}", lambda progress: None).id, timeout=10)
    assert [j.title for j in runner.jobs()] == ["quick 4", "quick 3", "quick 2"]
    assert runner.latest("quick 3").title == "quick 3"
    runner.shutdown()
