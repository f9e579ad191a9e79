"""Jobs on the page: start one from a form, watch it live, see how it ended.

A page calls :func:`start_job` when its form is submitted, disables its inputs while :func:`inputs_disabled`, and
calls :func:`show_job` with ``job_runner().latest(kind)``. While the job runs, a fragment polls it once a second (only
then: a finished job is drawn without a fragment, so an idle page never polls) and triggers a full rerun when it ends,
so the page redraws its results from the workspace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import streamlit as st

from analysis.comparison import FusionComparison
from fusion.pipeline import FusionRun, Stored
from ui.errors import report_errors
from ui.jobs import Job, format_seconds
from ui.state import job_runner


def inputs_disabled() -> bool:
    """True while a job is queued or running: pages disable their forms so a click cannot start a second one."""
    return job_runner().active() is not None


def start_job(title: str, fn: Callable[..., Any], *args: Any, kind: str | None = None, **kwargs: Any) -> None:
    """Submit ``fn(*args, progress=..., **kwargs)`` to the job runner, then rerun the page so it redraws with its
    inputs disabled and the live progress shown. A busy runner is reported as a warning and nothing is started.
    """
    with report_errors():
        job_runner().submit(title, fn, *args, kind=kind, **kwargs)
        st.rerun()


def cancel_job(job_id: str) -> None:
    job_runner().cancel(job_id)


@st.fragment(run_every=1)
def live_job_progress(job_id: str, place: str = "main") -> None:
    """Progress bar, ``step k/n · elapsed · ETA`` and a Cancel button, redrawn every second; reruns the whole app
    once the job has ended. ``place`` keeps the widget keys apart when the job is drawn twice (page and sidebar).
    """
    job = job_runner().get(job_id)
    if job is None or not job.active:
        st.rerun()
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
    ``reused`` ids (:class:`analysis.comparison.FusionComparison`)."""
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
    if job.active:
        live_job_progress(job.id, place)
    else:
        show_job_outcome(job)


def job_kind(name: str, keys: Iterable[str]) -> str:
    """The job kind of a page's run over these inputs (model ids, options), so that the page shows the job of the
    current selection only, never another selection's finished job beside this one's empty result."""
    return f"{name}:{'|'.join(keys)}"


def computing_message(job: Job) -> str:
    """What a page shows where its result will appear while ``job`` runs: ``"Computing: <progress>"``."""
    return f"Computing: {job.message or job.status} ({job.summary()}). The results appear here when it finishes."
