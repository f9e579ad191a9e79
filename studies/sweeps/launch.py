"""Run a sweep through submitit: the jobs without a ``done`` outcome are submitted, the finished ones skipped.

Two stages, because fusions need their parents: first the parent jobs (training, a parent's Hessian), then the
fusion jobs, each as one submitit job running :func:`studies.sweeps.jobs.run_job` in its own process. On the local
executor (submitit's ``LocalExecutor``) at most ``parallel`` processes run at once and this call waits for them; on
SLURM each stage is one job array (``--array=...%parallel``) and, with ``detach``, the fusion array waits for the
parent array through ``--dependency=afterany`` while this call returns at once.

Before anything is stored or submitted the whole plan is checked: the executor can run here (SLURM's commands are
on this machine's PATH) and the parents exist and can be fused by every method of the sweep; a refusal names what is
missing or mismatched.

A parent already stored (and analysed, when the sweep asks for Hessians) is recorded as done here, without a process.
Interrupting the wait (Ctrl-C, a cancelled app job: the progress callback raises) cancels the running jobs, which
store nothing, so running the sweep again resumes it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import submitit
import torch
from submitit.core.utils import FailedJobError

from fusion.device import default_device
from fusion.errors import ArchitectureError, ConfigError, WorkspaceError
from fusion.progress import Progress, no_progress
from fusion.records import Record
from fusion.registry import resolve
from fusion.workspace import Workspace, now_iso
from studies.comparison import has_hessian
from studies.pipeline import check_compatible
from studies.sweeps.jobs import Job, JobOutcome, SweepFolder, parent_job, run_job
from studies.sweeps.spec import ExecutorConfig, FusionJob, ParentJob, SweepSpec

POLL_SECONDS = 0.5
CANCEL_GRACE_SECONDS = 20.0
REPORT_SECONDS = 2.0
ExecutorFactory = Callable[[ExecutorConfig, Path], submitit.Executor]


@dataclass(frozen=True)
class SweepRun(Record):
    """What one call of :func:`run_sweep` did: the ids of the jobs it ``submitted``, ``skipped`` (done before),
    recorded as done from stored models (``reused``), saw fail (``failed``) and left unfinished (``pending``:
    detached, or interrupted), out of ``jobs`` in the sweep."""

    name: str
    jobs: int
    submitted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    reused: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    detached: bool = False


def make_executor(config: ExecutorConfig, folder: Path) -> submitit.Executor:
    """submitit's executor for ``config``, its pickles and logs under ``folder``; :class:`ConfigError` when SLURM is
    asked for on a machine without its commands, or submitit refuses a SLURM setting."""
    if config.cluster == "local":
        executor = submitit.LocalExecutor(folder)
        gpus = config.gpus_per_node if config.gpus_per_node is not None else int(torch.cuda.is_available())
        executor.update_parameters(timeout_min=config.timeout_min, gpus_per_node=gpus)
        return executor
    if shutil.which("srun") is None:  # submitit's own test for a SLURM machine (SlurmExecutor.affinity)
        raise ConfigError(
            'executor cluster = "slurm" needs SLURM\'s srun and sbatch on PATH, and this machine has no srun: run the '
            'sweep on a SLURM login node, or here with cluster = "local" (or --local)'
        )
    executor = submitit.SlurmExecutor(folder)
    named = {"time": config.timeout_min, "array_parallelism": config.parallel, "job_name": "fusionlab-sweep"}
    optional = {
        "partition": config.partition,
        "gpus_per_node": config.gpus_per_node,
        "cpus_per_task": config.cpus_per_task,
        "mem": None if config.mem_gb is None else f"{config.mem_gb}GB",
    }
    named |= {k: v for k, v in optional.items() if v is not None}
    known = set(submitit.SlurmExecutor._valid_parameters())
    extra = {k: v for k, v in config.slurm.items() if k not in known}
    named |= {k: v for k, v in config.slurm.items() if k in known}
    try:
        executor.update_parameters(**named, **({"additional_parameters": extra} if extra else {}))
    except ValueError as exc:
        raise ConfigError(f"SLURM settings refused by submitit: {exc}") from exc
    return executor


def run_sweep(
    workspace: Workspace,
    spec: SweepSpec,
    progress: Progress = no_progress,
    detach: bool = False,
    executor_factory: ExecutorFactory = make_executor,
) -> SweepRun:
    """Run (or resume) ``spec`` on ``workspace`` (see the module docstring); the sweep is stored under its name, and
    its outcomes under the job ids. ``detach`` is for SLURM only."""
    if detach and spec.executor.cluster != "slurm":
        raise ConfigError("only a SLURM sweep can be detached: local jobs need this process to start them")
    folder = SweepFolder(workspace.root, spec.name)
    parents, fusions = spec.parent_jobs(), spec.fusion_jobs()
    check_parents(workspace, spec)
    executor = executor_factory(spec.executor, folder.logs)
    folder.save_spec(spec)
    run = Tally(spec.name, len(parents) + len(fusions), progress)
    root = str(workspace.root)

    pending_parents = run.unfinished(folder, parents)
    for job in list(pending_parents):
        if stored_parent(workspace, job):
            models, metrics = parent_job(workspace, job, default_device())
            folder.save_outcome(JobOutcome(job.id, "done", models, metrics, None, 0.0, now_iso(), "reused"))
            run.reused.append(job.id)
            pending_parents.remove(job)
    first = Stage(executor, spec.executor, folder, root, run)
    first.submit(pending_parents)
    pending_fusions = run.unfinished(folder, fusions)
    second = Stage(executor, spec.executor, folder, root, run, first.array_ids() if detach else ())
    if detach:
        second.submit(pending_fusions)
        run.pending.extend(job.id for job in [*pending_parents, *pending_fusions])
        return run.result(detached=True)
    try:
        first.wait()
        second.submit(pending_fusions)
        second.wait()
    except BaseException:
        first.cancel()
        second.cancel()
        run.pending.extend(j.id for j in [*pending_parents, *pending_fusions] if folder.outcome(j.id) is None)
        raise
    return run.result()


def check_parents(workspace: Workspace, spec: SweepSpec) -> None:
    """Refuse, before any job runs, parents that no job could fuse: groups of a size a method does not take
    (:class:`ConfigError`; a pruning method takes the first parent alone), ids the workspace does not hold
    (:class:`WorkspaceError`), and groups whose datasets or architectures a method cannot fuse together
    (:class:`ArchitectureError`, :func:`studies.pipeline.check_compatible`). Each message names the parents."""
    sizes = {spec.parents.models} if spec.parents is not None else {len(group) for group in spec.parent_ids}
    for method in spec.methods:
        rule = resolve(method).spec
        for size in sorted(sizes):
            used = 1 if rule.max_models == 1 else size
            if not rule.min_models <= used <= (rule.max_models or used):
                raise ConfigError(f"sweep {spec.name}: {method} fuses {rule.models_taken}, a parent group has {size}")
    ids = list(dict.fromkeys(i for group in spec.parent_ids for i in group))
    missing = [i for i in ids if not workspace.has(i)]
    if missing:
        raise WorkspaceError(
            f"sweep {spec.name}: parent(s) {', '.join(missing)} not in the workspace at {workspace.root} "
            "(python -m fusion list shows its models)"
        )
    records = {i: workspace.record(i) for i in ids}
    for method in spec.methods:
        single = resolve(method).spec.max_models == 1
        for group in spec.parent_ids:
            try:
                check_compatible([records[i] for i in (group[:1] if single else group)], method)
            except ArchitectureError as exc:
                raise ArchitectureError(f"sweep {spec.name}, parents {', '.join(group)}: {exc}") from exc


def stored_parent(workspace: Workspace, job: ParentJob) -> bool:
    """Whether a parent job has nothing left to compute: its network is stored, with its Hessian when asked."""
    if job.recipe is not None:
        found = workspace.find_run(job.train_key())
        model_id = None if found is None else found.id
    else:
        model_id = job.model
    if model_id is None or not workspace.has(model_id):
        return False
    return job.hessian is None or has_hessian(workspace, model_id, job.hessian, "test")


class Tally:
    """The counts of one :func:`run_sweep` call, reported through ``progress`` as jobs end."""

    def __init__(self, name: str, total: int, progress: Progress) -> None:
        self.name, self.total, self.progress = name, total, progress
        self.submitted: list[str] = []
        self.skipped: list[str] = []
        self.reused: list[str] = []
        self.failed: list[str] = []
        self.pending: list[str] = []
        self.ended = 0
        self.last: tuple[int, str, float] = (-1, "", 0.0)

    def unfinished(self, folder: SweepFolder, jobs: Sequence[Job]) -> list[Job]:
        left = []
        for job in jobs:
            if folder.done(job.id):
                self.skipped.append(job.id)
            else:
                left.append(job)
        return left

    def report(self, message: str) -> None:
        """Report how many jobs have ended: at once when that or the message changed, else every
        :data:`REPORT_SECONDS` (a cancelled app job raises from this call)."""
        finished = len(self.skipped) + len(self.reused) + self.ended
        now = time.monotonic()
        if (finished, message) != self.last[:2] or now - self.last[2] >= REPORT_SECONDS:
            self.last = (finished, message, now)
            self.progress(finished, self.total, message)

    def result(self, detached: bool = False) -> SweepRun:
        return SweepRun(
            self.name,
            self.total,
            tuple(self.submitted),
            tuple(self.skipped),
            tuple(self.reused),
            tuple(self.failed),
            tuple(self.pending),
            detached,
        )


class Stage:
    """One stage's jobs on one executor: submitted (at most ``parallel`` at once on the local executor, one array on
    SLURM), waited for, cancelled."""

    def __init__(
        self,
        executor: submitit.Executor,
        config: ExecutorConfig,
        folder: SweepFolder,
        root: str,
        run: Tally,
        dependency: Sequence[str] = (),
    ) -> None:
        self.executor, self.config, self.folder, self.root, self.run = executor, config, folder, root, run
        self.dependency = list(dependency)
        self.queue: list[Job] = []
        self.running: dict[str, tuple[Job, submitit.Job]] = {}

    def submit(self, jobs: Sequence[Job]) -> None:
        self.queue = [job for job in jobs if not self.failed_parents(job)]
        for job in self.queue:
            self.folder.forget(job.id)
        if self.config.cluster == "slurm" and self.queue:
            extra = {"dependency": "afterany:" + ":".join(self.dependency)} if self.dependency else {}
            self.executor.update_parameters(**extra)
            try:
                with self.executor.batch():
                    handles = [self.executor.submit(run_job, self.root, self.folder.name, job) for job in self.queue]
            except (FailedJobError, OSError) as exc:  # sbatch missing, or refusing the array's settings
                raise ConfigError(
                    f'executor cluster = "slurm": sbatch did not take the job array ({exc}); check the [executor] '
                    "settings (partition, slurm options) against this cluster"
                ) from exc
            self.running = {job.id: (job, handle) for job, handle in zip(self.queue, handles)}
            self.run.submitted.extend(self.running)
            self.queue = []
        self.fill()

    def failed_parents(self, job: Job) -> bool:
        """Record a fusion job whose parent jobs failed as failed too, with their errors, instead of submitting it."""
        if not isinstance(job, FusionJob) or not job.parent_jobs:
            return False
        outcomes = [self.folder.outcome(p) for p in job.parent_jobs]
        failed = [o for o in outcomes if o is not None and o.status == "failed"]
        if not failed:
            return False
        error = "; ".join(f"parent job {o.job} failed: {o.error}" for o in failed)
        self.folder.save_outcome(JobOutcome(job.id, "failed", error=error, finished=now_iso()))
        self.run.failed.append(job.id)
        self.run.ended += 1
        return True

    def fill(self) -> None:
        while self.queue and len(self.running) < self.config.parallel:
            job = self.queue.pop(0)
            self.running[job.id] = (job, self.executor.submit(run_job, self.root, self.folder.name, job))
            self.run.submitted.append(job.id)

    def array_ids(self) -> list[str]:
        return sorted({handle.job_id.split("_")[0] for _, handle in self.running.values()})

    def wait(self) -> None:
        self.run.report(f"{len(self.running) + len(self.queue)} job(s) running or queued")
        while self.running:
            for job_id, (job, handle) in list(self.running.items()):
                if handle.done():
                    del self.running[job_id]
                    self.ended(job, handle)
            self.fill()
            self.run.report(f"{len(self.running)} running, {len(self.queue)} queued")
            if self.running:
                time.sleep(POLL_SECONDS)

    def ended(self, job: Job, handle: submitit.Job) -> None:
        self.run.ended += 1
        outcome = self.folder.outcome(job.id)
        if outcome is None:
            outcome = JobOutcome(job.id, "failed", error=process_error(handle), finished=now_iso())
            self.folder.save_outcome(outcome)
        if outcome.status == "failed":
            self.run.failed.append(job.id)
        self.run.report(f"{job.id}: {outcome.status}")

    def cancel(self) -> None:
        """Cancel every running job and drop the queue; wait a little for the local processes to end."""
        self.queue = []
        for _, handle in self.running.values():
            handle.cancel(check=False)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        while self.config.cluster == "local" and time.monotonic() < deadline:
            if all(handle.done() for _, handle in self.running.values()):
                break
            time.sleep(POLL_SECONDS)
        self.running = {}


def process_error(handle: submitit.Job) -> str:
    """Why a job's process ended without storing an outcome (killed, timed out, could not start), from submitit."""
    try:
        error = handle.exception()
    except Exception as exc:  # submitit raises when the process left no result at all
        error = exc
    reason = f"{type(error).__name__}: {error}" if error is not None else f"state {handle.state}"
    return f"the job's process ended without a result ({reason.strip()[-500:]})"
