"""What one sweep job runs, and where its outcome is stored.

Layout under the workspace root::

    sweeps/<name>/sweep.json        the sweep (:class:`studies.sweeps.spec.SweepSpec`)
    sweeps/<name>/jobs/<job>.json   a finished job's :class:`JobOutcome`: done (its models and figures) or failed
    sweeps/<name>/submitit/         submitit's pickles and logs

A job goes through the pipeline's library calls (train, fuse, fine-tune, Hessian, landscape), so every model it makes
is an ordinary workspace model with its provenance, and a model stored by an identical earlier call is reused. The
outcome is written atomically when the job ends; a job killed before that has no outcome and runs again on resume.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from fusion.device import default_device
from fusion.errors import ConfigError, DamagedResultError, WorkspaceError
from fusion.records import Record, RecordError
from fusion.registry import resolve
from fusion.workspace import Workspace, now_iso, read_json_object, write_json_atomic
from studies.comparison import fill_hessians, hessian_summary
from studies.pipeline import finetune_and_save, fuse_and_save, train_and_save
from studies.runs import fusion_landscape
from studies.sweeps.spec import FusionJob, ParentJob, SweepSpec

SWEEPS = "sweeps"
Job = ParentJob | FusionJob


@dataclass(frozen=True)
class JobOutcome(Record):
    """How a job ended: ``done`` with the ids of the models it made or used (``models``, by role: ``model`` for a
    parent; ``parent A``, ``fused``, ``fine-tuned`` for a fusion) and its figures (``metrics``), or ``failed`` with the
    ``error``; ``seconds`` of wall time on ``host``."""

    job: str
    status: Literal["done", "failed"]
    models: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    finished: str = ""
    host: str = ""


class SweepFolder:
    """The files of one sweep in a workspace (see the module docstring)."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.path = Path(root) / SWEEPS / name
        self.name = name

    @property
    def logs(self) -> Path:
        return self.path / "submitit"

    def outcome_path(self, job_id: str) -> Path:
        return self.path / "jobs" / f"{job_id}.json"

    def save_spec(self, spec: SweepSpec) -> None:
        write_json_atomic(self.path / "sweep.json", spec.to_dict())

    def spec(self) -> SweepSpec:
        stored = read_json_object(self.path / "sweep.json", f"the sweep file of {self.name}", "run the sweep again")
        if stored is None:
            raise WorkspaceError(f"no sweep named {self.name!r} in {self.path.parent}")
        return SweepSpec.from_dict(stored)

    def save_outcome(self, outcome: JobOutcome) -> None:
        write_json_atomic(self.outcome_path(outcome.job), outcome.to_dict())

    def outcome(self, job_id: str) -> JobOutcome | None:
        path = self.outcome_path(job_id)
        stored = read_json_object(path, f"the outcome of job {job_id}", "run the sweep again")
        try:
            return None if stored is None else JobOutcome.from_dict(stored)
        except RecordError as exc:
            raise DamagedResultError(f"{path}: {exc}") from exc

    def forget(self, job_id: str) -> None:
        """Drop a job's stored outcome (a failure being run again), so that only this run's outcome is read."""
        self.outcome_path(job_id).unlink(missing_ok=True)

    def done(self, job_id: str) -> bool:
        outcome = self.outcome(job_id)
        return outcome is not None and outcome.status == "done"


def sweep_names(root: str | Path) -> list[str]:
    """The sweeps stored in a workspace, by name."""
    folder = Path(root) / SWEEPS
    return sorted(p.name for p in folder.iterdir() if (p / "sweep.json").is_file()) if folder.is_dir() else []


def run_job(root: str, sweep: str, job: Job) -> JobOutcome:
    """Run ``job`` of sweep ``sweep`` on the workspace at ``root`` (the function submitit runs in the job's process)
    and store its outcome. A refused or failing job stores a ``failed`` outcome and raises, so submitit reports it
    too; an interrupted one (cancelled, timed out) stores nothing and runs again on resume."""
    started = time.perf_counter()
    folder = SweepFolder(root, sweep)
    try:
        workspace = Workspace(root)
        device = default_device()
        if isinstance(job, ParentJob):
            models, metrics = parent_job(workspace, job, device)
        else:
            models, metrics = fusion_job(workspace, job, parent_models(folder, job), device)
    except Exception as exc:
        folder.save_outcome(
            JobOutcome(
                job.id,
                "failed",
                error=f"{type(exc).__name__}: {exc}",
                seconds=time.perf_counter() - started,
                finished=now_iso(),
                host=socket.gethostname(),
            )
        )
        raise
    outcome = JobOutcome(
        job.id, "done", models, metrics, None, time.perf_counter() - started, now_iso(), socket.gethostname()
    )
    folder.save_outcome(outcome)
    return outcome


def parent_job(
    workspace: Workspace, job: ParentJob, device: torch.device
) -> tuple[dict[str, str], dict[str, float | None]]:
    """Train the parent (reused when stored) and take its Hessian when asked."""
    if job.recipe is not None:
        stored = train_and_save(
            workspace,
            job.recipe.model_spec(),
            job.recipe.dataset,
            job.recipe.config(job.training_seed),
            name=f"sweep parent {job.recipe.arch} · seed {job.training_seed}",
            device=device,
        )
        model_id = stored.record.id
    else:
        assert job.model is not None
        model_id = workspace.record(job.model).id
    if job.hessian is not None:
        fill_hessians(workspace, [model_id], job.hessian, device=device)
    record = workspace.record(model_id)
    top, trace = hessian_summary(workspace, model_id, job.hessian) if job.hessian else (None, None)
    return {"model": model_id}, {
        "test_accuracy": record.metrics.get("test_accuracy"),
        "test_loss": record.metrics.get("test_loss"),
        "top_eigenvalue": top,
        "hessian_trace": trace,
    }


def fusion_job(
    workspace: Workspace, job: FusionJob, parents: Sequence[str], device: torch.device
) -> tuple[dict[str, str], dict[str, float | None]]:
    """Fuse ``parents`` (the first alone for a single-model method), then fine-tune, take the Hessians and the fusion
    landscape as the job asks; every step reuses what an identical earlier call stored."""
    parents = list(parents[:1] if job.single else parents)
    records = [workspace.record(i) for i in parents]
    models = {f"parent {chr(65 + k)}": record.id for k, record in enumerate(records)}
    metrics: dict[str, float | None] = {
        f"parent {chr(65 + k)} accuracy": record.metrics.get("test_accuracy") for k, record in enumerate(records)
    }
    run = fuse_and_save(workspace, parents, job.method, job.options, device=device)
    metrics |= {k: run.metrics.get(k) for k in ("test_accuracy", "test_loss", "fusion_seconds")}
    if run.record is None:
        return models, metrics
    models["fused"] = run.record.id
    analysed = [run.record.id]
    if job.finetune is not None:
        tuned = finetune_and_save(workspace, run.record.id, job.finetune, device=device, model=run.model).record
        models["fine-tuned"] = tuned.id
        metrics |= {
            "finetuned_accuracy": tuned.metrics.get("test_accuracy"),
            "finetuned_loss": tuned.metrics.get("test_loss"),
        }
        analysed.append(tuned.id)
    if job.hessian is not None:
        fill_hessians(workspace, analysed, job.hessian, device=device)
        for prefix, model_id in zip(("", "finetuned_"), analysed):
            top, trace = hessian_summary(workspace, model_id, job.hessian)
            metrics |= {f"{prefix}top_eigenvalue": top, f"{prefix}hessian_trace": trace}
    if job.landscape is not None and len(parents) == 2 and resolve(job.method).spec.output != "pruned":
        lines = fusion_landscape(workspace, run.record.id, job.landscape, device=device)
        metrics |= {f"barrier {name}": float(result.test_barrier) for name, result in lines.items() if name != "plane"}
    return models, metrics


def parent_models(folder: SweepFolder, job: FusionJob) -> tuple[str, ...]:
    """The parents of ``job``: its workspace ids, or the networks its parent jobs stored in their outcomes;
    :class:`ConfigError` naming a parent job that has not produced its network."""
    if job.parents:
        return job.parents
    found = {p: folder.outcome(p) for p in job.parent_jobs}
    missing = [p for p, outcome in found.items() if outcome is None or outcome.status != "done"]
    if missing:
        reasons = [f"{p} ({found[p].error})" if found[p] is not None else p for p in missing]
        raise ConfigError(f"parent job(s) {', '.join(reasons)} did not finish")
    return tuple(found[p].models["model"] for p in job.parent_jobs)
