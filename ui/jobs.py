"""The job runner: long library calls run one at a time on a single worker thread, reporting progress.

Streamlit starts a new script run for every click while the previous run's torch loop goes on, so two trainings could
overlap on one device. The app therefore holds one :class:`JobRunner` per server (see :func:`ui.state.job_runner`):
one worker and one lock. :meth:`JobRunner.submit` queues a job behind the one running (a few at most, so a forgotten
tab cannot pile up work), and returns the job already queued or running when the same computation is asked for again,
so pages never need to freeze their forms while a job runs. Jobs get the library's ``progress(done, total, message)``
callback; cancelling sets an event that the callback turns into :class:`JobCancelled` at the job's next progress
report, or takes a queued job out of the queue. Finished jobs are kept (the newest ``history``) so a reload or a page
switch still shows how the last job ended. Nothing here imports Streamlit.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fusion.errors import FusionError
from fusion.progress import Progress

logger = logging.getLogger("fusionlab.app")

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
ACTIVE_STATUSES: tuple[JobStatus, ...] = ("queued", "running")


class JobCancelled(Exception):
    """Raised inside a job's progress callback once someone asked the job to stop."""


class JobBusy(FusionError):
    """A job was submitted while the queue was full."""


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Job:
    """One unit of long work and how far it got. Times are ``time.time()`` seconds.

    The runner owns the live object; callers get copies (:meth:`JobRunner.get`), so a page never reads a half-updated
    job. ``result`` is what the function returned; ``error`` the message shown when it failed. ``inputs`` are the
    widget values the job was started from, by their Session State key, so that a new browser session (a reload) can
    show the page as it was when the job started, and with it the job.
    """

    id: str
    title: str
    kind: str
    status: JobStatus = "queued"
    done: int = 0
    total: int = 0
    message: str = ""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]; 0 until the first report."""
        return min(1.0, max(0.0, self.done / self.total)) if self.total > 0 else 0.0

    @property
    def elapsed(self) -> float:
        """Seconds since the job started (its run time once finished; 0 while queued)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated linearly from the steps done so far; ``None`` before the first step."""
        if not self.active or self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed * max(0, self.total - self.done) / self.done

    def summary(self) -> str:
        """``"step 37/190 · 0:02 elapsed · ETA 0:06"``."""
        step = f"step {self.done}/{self.total}" if self.total else "starting"
        text = f"{step} · {format_seconds(self.elapsed)} elapsed"
        eta = self.eta
        return text if eta is None else f"{text} · ETA {format_seconds(eta)}"


def release_gpu_memory() -> None:
    """Hand the CUDA caching allocator's unused blocks back after a job, so the next job and other processes see
    the memory free."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def same_call(first: Call, second: Call) -> bool:
    """Whether two calls ``(fn, args, kwargs)`` compute the same thing: the same function on equal arguments.
    Arguments that cannot be compared as a whole (tensors) count as different."""
    try:
        return bool(first[0] == second[0] and first[1] == second[1] and first[2] == second[2])
    except (RuntimeError, TypeError, ValueError):
        return False


class JobRunner:
    """A single worker thread, the jobs queued for it and the jobs it ran; every method is thread-safe."""

    def __init__(self, history: int = 20, max_queued: int = 3) -> None:
        self.history = history
        self.max_queued = max_queued
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionlab-job")
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._futures: dict[str, Future[None]] = {}
        self._calls: dict[str, Call] = {}

    def submit(
        self,
        title: str,
        fn: Callable[..., Any],
        *args: Any,
        kind: str | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Job:
        """Queue ``fn(*args, progress=callback, **kwargs)`` behind the jobs already waiting and return (a copy of) its
        job; it starts when every job submitted before it has ended.

        ``kind`` (default: the title) names what the job does, so a page finds its latest one with :meth:`latest`;
        ``inputs`` are stored on the job (see :class:`Job`). Neither is passed to ``fn``. When a job of the same kind
        calling the same function on equal arguments is still queued or running, that job is returned and nothing is
        queued. Raises :class:`JobBusy` when ``max_queued`` jobs already wait behind the running one.
        """
        kind = kind or title
        call: Call = (fn, args, kwargs)
        with self._lock:
            same = next(
                (j for j in self._jobs.values() if j.active and j.kind == kind and same_call(self._calls[j.id], call)),
                None,
            )
            if same is not None:
                return copy.copy(same)
            waiting = [job.title for job in self._jobs.values() if job.active][1:]
            if len(waiting) >= self.max_queued:
                names = ", ".join(f"“{name}”" for name in waiting)
                raise JobBusy(
                    f"{len(waiting)} jobs already wait for the running one ({names}); cancel one of them or wait "
                    "until one starts before adding another."
                )
            job = Job(id=uuid.uuid4().hex[:12], title=title, kind=kind, inputs=dict(inputs or {}))
            self._jobs[job.id] = job
            self._calls[job.id] = call
            self._futures[job.id] = self._executor.submit(self._execute, job, fn, args, kwargs)
            return copy.copy(job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.copy(job) if job is not None else None

    def jobs(self) -> list[Job]:
        """All kept jobs, newest first."""
        with self._lock:
            return [copy.copy(job) for job in reversed(self._jobs.values())]

    def queue(self) -> list[Job]:
        """The jobs queued or running, in the order they run (the running one first)."""
        return [job for job in reversed(self.jobs()) if job.active]

    def active(self) -> Job | None:
        """The job running now, or else the next to run; ``None`` when none is queued or running."""
        return next(iter(self.queue()), None)

    def ahead_of(self, job_id: str) -> list[Job]:
        """The jobs that run before ``job_id`` (the running one first); empty once it runs or has ended."""
        queue = self.queue()
        ids = [job.id for job in queue]
        return queue[: ids.index(job_id)] if job_id in ids else []

    def latest(self, kind: str) -> Job | None:
        """The newest job of ``kind``, active or finished."""
        return next((job for job in self.jobs() if job.kind == kind), None)

    def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop: a queued job never starts, a running one stops at its next progress report."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return copy.copy(job) if job is not None else None
            job.cancel_event.set()
            if job.status == "queued" and self._futures[job_id].cancel():
                self._finish(job, "cancelled", message="cancelled before it started")
            return copy.copy(job)

    def wait(self, job_id: str | None = None, timeout: float | None = None) -> Job | None:
        """Block until the job has finished (default: the last one queued, so every job has); returns it, or ``None``
        if there was none.

        Meant for tests and scripts; raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        with self._lock:
            if job_id is None:
                job_id = next((job.id for job in reversed(self._jobs.values()) if job.active), None)
            future = self._futures.get(job_id) if job_id is not None else None
        if future is None:
            return self.get(job_id) if job_id is not None else None
        _, pending = wait_futures([future], timeout=timeout)
        if pending:
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        return self.get(job_id)

    def shutdown(self) -> None:
        """Cancel every job and stop the worker (used when Streamlit releases the cached runner)."""
        with self._lock:
            for job in self._jobs.values():
                job.cancel_event.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _progress_callback(self, job: Job) -> Progress:
        def report(done: int, total: int, message: str) -> None:
            if job.cancel_event.is_set():
                raise JobCancelled(f"cancelled at step {done}/{total}")
            with self._lock:
                job.done, job.total, job.message = int(done), int(total), str(message)

        return report

    def _execute(self, job: Job, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._lock:
            if job.cancel_event.is_set():
                self._finish(job, "cancelled", message="cancelled before it started")
                return
            job.status, job.started = "running", time.time()
        try:
            result = fn(*args, progress=self._progress_callback(job), **kwargs)
        except JobCancelled as exc:
            with self._lock:
                self._finish(job, "cancelled", message=str(exc))
        except FusionError as exc:
            with self._lock:
                self._finish(job, "failed", error=str(exc))
        except Exception as exc:
            logger.exception("job %s (%s) failed", job.id, job.title)
            with self._lock:
                self._finish(job, "failed", error=f"Unexpected error: {type(exc).__name__}: {exc}")
        else:
            with self._lock:
                job.result = result
                self._finish(job, "done")
        finally:
            release_gpu_memory()

    def _finish(self, job: Job, status: JobStatus, message: str | None = None, error: str | None = None) -> None:
        job.status, job.finished = status, time.time()
        if job.started is None:
            job.started = job.finished
        if message is not None:
            job.message = message
        job.error = error
        self._calls.pop(job.id, None)
        self._forget_old_jobs()

    def _forget_old_jobs(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if not job.active]
        for job_id in finished[: max(0, len(finished) - self.history)]:
            del self._jobs[job_id]
            self._futures.pop(job_id, None)
