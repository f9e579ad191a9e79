"""Long work survives navigation: a job keeps running when the user switches pages, a second submit does not start a
second job, and a new session (a reload) finds the job running or its finished result."""

import threading

import pytest
from app_helpers import open_app, train_quick_models, wait_for_job

from fusion.errors import FusionError
from ui.job_view import job_kind
from ui.jobs import JobBusy
from ui.state import job_runner


def test_switching_pages_neither_stops_nor_duplicates_a_running_job(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1), hidden=(8,))]
    release = threading.Event()

    def slow_job(progress):
        for step in range(3):
            progress(step, 3, "working")
            release.wait(timeout=30)
        return "finished"

    at = open_app("pages/hessian.py")
    job = job_runner().submit("slow", slow_job, kind=job_kind("hessian", sorted(ids)))
    at.multiselect(key="hessian.models").set_value(ids)
    at.button(key="FormSubmitter:hessian.form-Compute").click().run()
    assert not at.exception
    assert at.button(key="FormSubmitter:hessian.form-Compute").disabled, "inputs are disabled while a job runs"
    for page in ("pages/fuse.py", "pages/models.py", "pages/hessian.py"):
        at.switch_page(page).run()
        assert not at.exception
    assert job_runner().get(job.id).status == "running"
    assert [j.id for j in job_runner().jobs()] == [job.id], "no second job was started"
    reloaded = open_app("pages/hessian.py")
    assert not reloaded.exception
    assert job_runner().active().id == job.id
    release.set()
    assert wait_for_job().status == "done"
    reloaded.run()
    reloaded.multiselect(key="hessian.models").set_value(ids).run()
    assert not reloaded.exception
    assert any("finished" in str(s.value) for s in reloaded.success)


def test_the_runner_refuses_a_second_job_while_one_runs(app_workspace):
    release = threading.Event()
    first = job_runner().submit("first", lambda progress: release.wait(timeout=30))
    with pytest.raises(JobBusy) as refused:
        job_runner().submit("second", lambda progress: None)
    release.set()
    assert isinstance(refused.value, FusionError)
    assert wait_for_job().id == first.id
    assert [j.title for j in job_runner().jobs()] == ["first"]
