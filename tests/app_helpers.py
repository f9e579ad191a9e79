"""Shared fixtures and helpers for the AppTest suites (imported by tests/test_app_*.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from fusion.models import default_spec
from fusion.train import TrainConfig
from fusion.workspace import ModelRecord, Workspace
from studies.pipeline import train_and_save
from ui.jobs import Job
from ui.state import job_runner

APP = Path(__file__).resolve().parent.parent / "app.py"
JOB_TIMEOUT = 120


@pytest.fixture
def app_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A fresh workspace under ``tmp_path`` that the app will open, on the CPU, with empty Streamlit caches.

    Clearing ``st.cache_resource`` before and after drops the cached workspace and the job runner (whose history would
    otherwise show one test's jobs to the next); jobs still running at the end are awaited first.
    """
    monkeypatch.setenv("FUSIONLAB_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("FUSIONLAB_DEVICE", "cpu")
    st.cache_resource.clear()
    yield Workspace(tmp_path / "workspace")
    wait_for_job()
    st.cache_resource.clear()


def open_app(page: str | None = None) -> AppTest:
    """Run the app from its entry point, then switch to ``page`` (e.g. ``"pages/models.py"``) if given."""
    at = AppTest.from_file(APP, default_timeout=30).run()
    if page is not None:
        at.switch_page(page).run()
    return at


def wait_for_job(timeout: float = JOB_TIMEOUT) -> Job | None:
    """Block until the server's running job has finished and return it; when none is running any more (a job that
    reuses stored models can end before this is called), the newest job."""
    runner = job_runner()
    return runner.wait(timeout=timeout) or next(iter(runner.jobs()), None)


def train_quick_models(
    workspace: Workspace, seeds: tuple[int, ...] = (0,), hidden: tuple[int, ...] = (32,)
) -> list[ModelRecord]:
    """Small MLPs on digits trained for one epoch (a fraction of a second each), saved with their metrics."""
    spec = default_spec("mlp", (1, 8, 8), 10, hidden=hidden)
    return [train_and_save(workspace, spec, "digits", TrainConfig(epochs=1, seed=seed)).record for seed in seeds]


def messages(elements) -> list[str]:
    """The texts of a list of AppTest alert elements (``at.error``, ``at.warning``...)."""
    return [str(element.value) for element in elements]
