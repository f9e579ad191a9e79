"""Jobs on the page: queue one from a form, watch it live, see how it ended.

A page calls :func:`start_job` when its form is submitted, with the widget values it was started from, and
:func:`show_job` with ``job_runner().latest(kind)``. Forms stay usable while a job runs: a submit queues its job behind
the running one (or shows the same computation already queued or running), so a person can browse results, change
options and line up the next job. Only work a page does on the device inside its own script run waits, and says for
which job (:func:`device_wait`). A new browser session (a reload) gives a page's widgets the inputs of the newest job
the page started (:func:`restore_inputs`), so the page shows that job. While a job is queued or runs, a fragment polls
it once a second (only then: a finished job is drawn without a fragment, so an idle page never polls) and triggers a
full rerun when it ends, so the page redraws its results from the workspace.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import streamlit as st

from studies.comparison import FusionComparison
from studies.pipeline import FusionRun, Stored
from ui.errors import report_errors
from ui.jobs import Job, format_seconds
from ui.state import job_runner

NOTICE_KEY = "fusionlab.job_notice"
"""``st.session_state[NOTICE_KEY]``: ``(job id, text)`` said once beside that job, after the rerun that shows it."""


def start_job(
    title: str,
    fn: Callable[..., Any],
    *args: Any,
    kind: str | None = None,
    inputs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Queue ``fn(*args, progress=..., **kwargs)`` on the job runner, then rerun the page so it shows the job's
    progress (or its place in the queue). ``inputs``: the widget values it was started from, by Session State key (see
    :func:`restore_inputs`). The same computation already queued or running is shown instead of being queued twice,
    with a note that says so; a full queue is reported as a warning and nothing is queued.
    """
    with report_errors():
        runner = job_runner()
        pending = {job.id for job in runner.queue()}
        job = runner.submit(title, fn, *args, kind=kind, inputs=inputs, **kwargs)
        if job.id in pending:
            st.session_state[NOTICE_KEY] = (
                job.id,
                f"“{job.title}” is already {job.status}: shown here, not queued again.",
            )
        st.rerun()


def latest_started(name: str) -> Job | None:
    """The newest job, server-wide, that a page started under ``name``: of kind ``name`` or ``job_kind(name, ...)``."""
    return next((job for job in job_runner().jobs() if job.kind == name or job.kind.startswith(f"{name}:")), None)


def restore_inputs(name: str) -> None:
    """On a page's first run in a browser session, give its widgets the inputs of the newest job it started (under
    ``name``), so that after a reload the page shows that job and then its result instead of other models' nothing.

    Only a queued or running job's inputs are restored: a finished job's result is stored in the workspace, and a new
    session opens on the page's defaults, not on the last person's form. Later runs keep whatever the person chooses.
    Call it before the page draws its widgets.
    """
    restored = f"fusionlab.restored.{name}"
    if restored in st.session_state:
        return
    st.session_state[restored] = True
    job = latest_started(name)
    if job is not None and job.active:
        st.session_state.update(copy.deepcopy(job.inputs))


def device_wait(action: str) -> bool:
    """Whether ``action``, which a page runs inside its own script run (outside the job runner), must wait for a
    queued or running job: it would compete with the job for the device, or change the models the job reads. When it
    must, a caption says so, names the job and points to its progress."""
    job = job_runner().active()
    if job is None:
        return False
    st.caption(
        f"{action} waits until “{job.title}” ends ({job.status}, {job.summary()}), so that it neither competes with "
        "the job for the device nor changes the models the job reads. Its progress and a Cancel button are in the "
        "sidebar."
    )
    return True


def waiting_for(ahead: list[Job]) -> str:
    """``"queued behind “A”; starts when it ends"``, for the jobs that run before a queued one (oldest first)."""
    if not ahead:
        return "starting"
    more = f" and {len(ahead) - 1} more" if len(ahead) > 1 else ""
    return f"queued behind “{ahead[-1].title}”{more}; starts when {'they end' if more else 'it ends'}"


def cancel_job(job_id: str) -> None:
    job_runner().cancel(job_id)


@st.fragment(run_every=1)
def live_job_progress(job_id: str, place: str = "main") -> None:
    """Progress bar, ``step k/n · elapsed · ETA`` (or, while queued, the job it waits for) and a Cancel button, redrawn
    every second; reruns the whole app once the job has ended. ``place`` keeps the widget keys apart when the job is
    drawn twice (page and sidebar). Cancelling a queued job takes it out of the queue.
    """
    job = job_runner().get(job_id)
    if job is None or not job.active:
        st.rerun()
    if job.status == "queued":
        st.progress(0.0, text=f"**{job.title}** · {waiting_for(job_runner().ahead_of(job_id))}")
    else:
        st.progress(job.fraction, text=f"**{job.title}** · {job.message or job.status}")
        st.caption(job.summary() + (" · cancelling…" if job.cancel_requested else ""))
    st.button(
        "Cancel",
        key=f"fusionlab.cancel.{place}.{job_id}",
        on_click=cancel_job,
        args=(job_id,),
        disabled=job.cancel_requested,
    )


def reused_ids(result: Any) -> list[str]:
    """The models a job's result returned from earlier runs with the same inputs instead of making them again
    (:mod:`fusion.run_key`): from :class:`Stored` and :class:`FusionRun` results, lists of them, and dicts with
    ``reused`` ids (:class:`studies.comparison.FusionComparison`)."""
    if isinstance(result, Stored):
        return [result.record.id] if result.reused else []
    if isinstance(result, FusionRun):
        return [result.record.id] if result.reused and result.record is not None else []
    if isinstance(result, (list, tuple)):
        return [i for item in result for i in reused_ids(item)]
    if isinstance(result, FusionComparison):
        return list(result.reused)
    return []


def show_job_outcome(job: Job) -> None:
    """How a finished job ended: a success (naming the models it reused), a warning (cancelled) or an error with the
    job's message."""
    took = format_seconds(job.elapsed)
    if job.status == "done":
        st.success(f"{job.title}: finished in {took}.")
        reused = reused_ids(job.result)
        if reused:
            ids = ", ".join(f"`{i}`" for i in reused)
            st.info(
                f"Reused {len(reused)} stored model{'' if len(reused) == 1 else 's'} instead of storing copies: an "
                f"earlier run had the same inputs (parents, method, options, seed, data). {ids}"
            )
    elif job.status == "cancelled":
        st.warning(f"{job.title}: cancelled after {took} ({job.message}).")
    else:
        st.error(f"{job.title} failed: {job.error}")


def show_job(job: Job | None, place: str = "main") -> None:
    """Live progress while ``job`` runs, its outcome once it has finished, nothing for ``None``."""
    if job is None:
        return
    notice = st.session_state.get(NOTICE_KEY)
    if notice is not None and notice[0] == job.id:
        st.info(notice[1])
        del st.session_state[NOTICE_KEY]
    if job.active:
        live_job_progress(job.id, place)
    else:
        show_job_outcome(job)


def job_kind(name: str, keys: Iterable[str]) -> str:
    """The job kind of a page's run over these inputs (model ids, options), so that the page shows the job of the
    current selection only, never another selection's finished job beside this one's empty result."""
    return f"{name}:{'|'.join(keys)}"


def computing_message(job: Job) -> str:
    """What a page shows where its result will appear while ``job`` is queued (``"Queued behind …"``) or runs
    (``"Computing: <progress>"``)."""
    if job.status == "queued":
        waiting = waiting_for(job_runner().ahead_of(job.id))
        return f"{waiting[0].upper()}{waiting[1:]}. The results appear here when it has run."
    return f"Computing: {job.message or job.status} ({job.summary()}). The results appear here when it finishes."
