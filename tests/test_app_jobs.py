"""Long work survives navigation and never freezes the app: a job keeps running when the user switches pages, a
submit while it runs queues the next job (once), forms stay usable, and a new session (a reload) finds the job it
started with the inputs it was started from."""

import threading

import pytest
import torch
from app_helpers import messages, open_app, train_quick_models, wait_for_job

from fusion.errors import FusionError
from ui.job_view import job_kind
from ui.jobs import JobBusy, JobRunner, same_call
from ui.state import job_runner

FUSE = "FormSubmitter:fuse.form-Fuse"
COMPUTE = "FormSubmitter:hessian.form-Compute"


def blocking(release: threading.Event):
    """A job function that reports one step, then waits for ``release``."""

    def job(progress) -> str:
        progress(0, 1, "working")
        release.wait(timeout=30)
        return "finished"

    return job


def progress_texts(at) -> list[str]:
    return [element.proto.text for element in at.get("progress")]


def test_a_job_submitted_while_another_runs_waits_in_the_queue_and_runs_after_it():
    runner, release = JobRunner(), threading.Event()
    first = runner.submit("first", blocking(release))
    second = runner.submit("second", lambda progress: "second done")

    assert runner.get(second.id).status == "queued"
    assert [job.title for job in runner.queue()] == ["first", "second"]
    assert [job.id for job in runner.ahead_of(second.id)] == [first.id]
    release.set()
    finished = runner.wait(timeout=10)
    assert (finished.id, finished.status, finished.result) == (second.id, "done", "second done")
    assert finished.started >= runner.get(first.id).finished, "two jobs never overlap"
    runner.shutdown()


def test_cancelling_a_queued_job_takes_it_out_of_the_queue_before_it_starts():
    runner, release = JobRunner(), threading.Event()
    ran = threading.Event()
    first = runner.submit("first", blocking(release))
    second = runner.submit("second", lambda progress: ran.set())

    cancelled = runner.cancel(second.id)
    assert cancelled.status == "cancelled" and cancelled.message == "cancelled before it started"
    assert [job.id for job in runner.queue()] == [first.id]
    release.set()
    assert runner.wait(first.id, timeout=10).status == "done"
    assert not ran.is_set()
    runner.shutdown()


def test_the_same_computation_queued_or_running_is_returned_instead_of_queued_again():
    runner, release = JobRunner(), threading.Event()
    work = blocking(release)
    first = runner.submit("work", work, kind="k", inputs={"page.models": ["a"]})

    again = runner.submit("work", work, kind="k")
    other_kind = runner.submit("work", work, kind="other")
    release.set()
    runner.wait(timeout=10)

    assert again.id == first.id and again.inputs == {"page.models": ["a"]}
    assert other_kind.id != first.id
    assert len(runner.jobs()) == 2
    after_it_ended = runner.submit("work", work, kind="k")
    assert after_it_ended.id != first.id, "a finished job is not a reason to refuse the next"
    runner.wait(timeout=10)
    runner.shutdown()


def test_calls_with_other_arguments_or_arguments_that_cannot_be_compared_are_different():
    def fn(x, progress=None) -> None:
        return None

    assert same_call((fn, (1,), {"device": "cpu"}), (fn, (1,), {"device": "cpu"}))
    assert not same_call((fn, (1,), {}), (fn, (2,), {}))
    assert not same_call((fn, (torch.ones(3),), {}), (fn, (torch.ones(3),), {}))


def test_a_full_queue_refuses_the_next_job_and_names_the_waiting_ones():
    runner, release = JobRunner(max_queued=2), threading.Event()
    runner.submit("running", blocking(release))
    runner.submit("waiting 1", lambda progress: None)
    runner.submit("waiting 2", lambda progress: None)

    with pytest.raises(JobBusy, match="2 jobs already wait.*“waiting 1”, “waiting 2”") as refused:
        runner.submit("one too many", lambda progress: None)
    release.set()
    runner.wait(timeout=10)
    assert isinstance(refused.value, FusionError)
    assert "one too many" not in [job.title for job in runner.jobs()]
    runner.shutdown()


def test_switching_pages_neither_stops_nor_duplicates_a_running_job(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1), hidden=(8,))]
    release = threading.Event()

    at = open_app("pages/hessian.py")
    job = job_runner().submit("slow", blocking(release), kind=job_kind("hessian", sorted(ids)))
    at.multiselect(key="hessian.models").set_value(ids).run()
    assert not at.exception
    assert any("Computing: working" in text for text in messages(at.info))
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


def test_while_a_job_runs_another_page_stays_usable_and_queues_its_job_behind_it(app_workspace):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1), hidden=(8,))]
    release = threading.Event()
    first = job_runner().submit("slow", blocking(release))

    at = open_app("pages/fuse.py")
    assert not at.button(key=FUSE).disabled and not at.selectbox(key="fuse.method").disabled
    at.multiselect(key="fuse.models.ot").set_value(ids)
    at.button(key=FUSE).click().run()
    assert not at.exception and not at.error

    queued = job_runner().queue()
    assert [j.id for j in queued][:1] == [first.id] and len(queued) == 2
    assert any("queued behind “slow”; starts when it ends" in text for text in progress_texts(at))
    assert f"Queued: {queued[1].title}" in [c.value for c in open_app().sidebar.caption]
    at.button(key=FUSE).click().run()
    assert len(job_runner().queue()) == 2, "the same fusion is not queued twice"
    assert any("already queued" in text for text in messages(at.info))

    release.set()
    second = wait_for_job()
    assert second.id == queued[1].id and second.status == "done", second.error
    assert second.started >= job_runner().get(first.id).finished
    at.run()
    assert not at.exception
    assert any("finished" in text for text in messages(at.success))


def test_work_a_page_does_itself_waits_for_the_running_job_and_says_which(app_workspace):
    release = threading.Event()
    job_runner().submit("slow", blocking(release))

    at = open_app("pages/models.py")
    assert not at.exception
    assert not at.button(key="FormSubmitter:train-Train").disabled, "training queues behind the job"
    assert at.button(key="FormSubmitter:import-Import").disabled
    assert any(c.value.startswith("Importing waits until “slow” ends (running") for c in at.caption)
    release.set()
    wait_for_job()
    at.run()
    assert not at.button(key="FormSubmitter:import-Import").disabled
    assert not any("waits until" in c.value for c in at.caption)


def test_a_new_session_on_the_hessian_page_shows_the_running_job_with_its_models_selected(app_workspace, monkeypatch):
    ids = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1, 2), hidden=(8,))]
    release = threading.Event()
    monkeypatch.setattr("studies.runs.hessians_of", lambda *args, progress, **kwargs: blocking(release)(progress))

    at = open_app("pages/hessian.py")
    at.multiselect(key="hessian.models").set_value([ids[0]])
    at.number_input(key="hessian.top_k").set_value(2)
    at.button(key=COMPUTE).click().run()
    assert not at.exception and not at.error
    job = job_runner().active()
    assert job is not None and job.inputs["hessian.models"] == [ids[0]]

    reloaded = open_app("pages/hessian.py")
    assert not reloaded.exception
    assert reloaded.multiselect(key="hessian.models").value == [ids[0]]
    assert reloaded.number_input(key="hessian.top_k").value == 2
    assert any("Computing: working" in text for text in messages(reloaded.info))
    assert not any("press Compute" in text for text in messages(reloaded.info))
    release.set()
    assert wait_for_job().status == "done"
    reloaded.run()
    assert any("finished" in text for text in messages(reloaded.success))
