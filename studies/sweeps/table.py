"""A sweep's results as tables, read from the workspace alone (nothing is recomputed).

:func:`job_rows` has one row per fusion job: its method, options and seed, its state (``done``, ``failed`` or
``pending``: no outcome yet), the models it made, its figures (accuracies in percent; ``fusion_seconds``: the fusion
alone) and the job's wall time (``job_seconds``: loading, fusing, evaluating, fine-tuning, analyses).
:func:`summary_rows` has one row per method and option set: for each figure the mean and sample standard deviation
over the seeds that finished, and how many did.
:func:`check_some_job_done` refuses a sweep whose every fusion job failed.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.units import in_percent
from fusion.command_lines import fusion_command_lines
from fusion.errors import FusionError
from studies.sweeps.jobs import JobOutcome, SweepFolder
from studies.sweeps.spec import FusionJob, SweepSpec

JOB_COLUMNS = (
    "job",
    "state",
    "method",
    "options",
    "seed",
    "parents",
    "fused",
    "fine-tuned",
    "job_seconds",
    "error",
    "command",
)
LEADING_FIGURES = (
    "test_accuracy",
    "test_loss",
    "finetuned_accuracy",
    "finetuned_loss",
    "top_eigenvalue",
    "hessian_trace",
    "finetuned_top_eigenvalue",
    "finetuned_hessian_trace",
)
"""The figures shown first, in this order; the others (barriers, the parents' accuracies, seconds) follow."""


def figure_order(name: str) -> tuple[int, str]:
    return (LEADING_FIGURES.index(name), "") if name in LEADING_FIGURES else (len(LEADING_FIGURES), name)


@dataclass(frozen=True)
class SweepTable:
    """A stored sweep with the state of its jobs: ``parents`` and ``fusions`` map job ids to their outcomes (absent:
    pending)."""

    spec: SweepSpec
    parents: dict[str, JobOutcome | None]
    fusions: dict[str, JobOutcome | None]
    jobs: tuple[FusionJob, ...]

    def counts(self) -> dict[str, int]:
        """How many jobs (parents and fusions) are done, failed and pending."""
        states = [state_of(o) for o in [*self.parents.values(), *self.fusions.values()]]
        return {state: states.count(state) for state in ("done", "failed", "pending")}


class SweepFailedError(FusionError):
    """Every fusion job of a sweep failed (or none could run, its parents having failed): the sweep has no result."""


def check_some_job_done(table: SweepTable) -> None:
    """Raise :class:`SweepFailedError` when every fusion job of ``table`` failed, with their distinct errors (a sweep
    with a job done or still pending passes)."""
    outcomes = list(table.fusions.values())
    if not outcomes or any(o is None or o.status != "failed" for o in outcomes):
        return
    errors = list(dict.fromkeys(o.error or "no error stored" for o in outcomes if o is not None))
    more = f" (and {len(errors) - 1} other error(s))" if len(errors) > 1 else ""
    raise SweepFailedError(
        f"sweep {table.spec.name}: all {len(outcomes)} fusion job(s) failed: {errors[0]}{more}; python -m fusion "
        f"sweeps {table.spec.name} shows each job's error"
    )


def state_of(outcome: JobOutcome | None) -> str:
    return "pending" if outcome is None else outcome.status


def read_sweep(root: str | Path, name: str) -> SweepTable:
    """The sweep stored as ``name`` in the workspace at ``root`` and every outcome stored for it."""
    folder = SweepFolder(root, name)
    spec = folder.spec()
    jobs = tuple(spec.fusion_jobs())
    return SweepTable(
        spec,
        {job.id: folder.outcome(job.id) for job in spec.parent_jobs()},
        {job.id: folder.outcome(job.id) for job in jobs},
        jobs,
    )


def options_text(job: FusionJob) -> str:
    """The options the sweep varies or sets, without the seed (a column of its own), as ``k=v`` pairs."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(job.options.items()) if k != "seed")


def job_rows(table: SweepTable) -> list[dict[str, Any]]:
    """One row per fusion job (see the module docstring); figures are the outcome's metrics, by name, accuracies in
    percent under names that say so (:func:`analysis.units.in_percent`: ``test_accuracy_pct``)."""
    metric_names = sorted({k for o in table.fusions.values() if o is not None for k in o.metrics}, key=figure_order)
    rows = []
    for job in table.jobs:
        outcome = table.fusions[job.id]
        models = outcome.models if outcome is not None else {}
        parents = [v for k, v in models.items() if k.startswith("parent ")] or list(job.parents or job.parent_jobs)
        metrics = outcome.metrics if outcome is not None else {}
        row: dict[str, Any] = {
            "job": job.id,
            "state": state_of(outcome),
            "method": job.method,
            "options": options_text(job),
            "seed": job.seed,
            **in_percent({name: metrics.get(name) for name in metric_names}),
            "parents": " ".join(parents),
            "fused": models.get("fused"),
            "fine-tuned": models.get("fine-tuned"),
            "job_seconds": None if outcome is None else round(outcome.seconds, 2),
            "error": None if outcome is None else outcome.error,
            "command": job_command(job, parents, models.get("fused")) if "fused" in models else None,
        }
        rows.append(row)
    return rows


def job_command(job: FusionJob, parents: list[str], fused: str) -> str:
    """The command lines that rebuild a finished job's fused (and fine-tuned) model from its parents."""
    recipe = job.finetune.to_dict() if job.finetune is not None else None
    return " && ".join(fusion_command_lines(job.method, parents, job.options, recipe, fused))


def summary_rows(table: SweepTable) -> list[dict[str, Any]]:
    """One row per method and option set: ``seeds`` finished, and ``<figure>`` mean and ``<figure> sd`` (sample
    standard deviation, blank below two seeds) of every figure over them."""
    rows = job_rows(table)
    figures = [c for c in (rows[0] if rows else {}) if c not in JOB_COLUMNS]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["options"]), []).append(row)
    summary = []
    for (method, options), members in groups.items():
        done = [r for r in members if r["state"] == "done"]
        entry: dict[str, Any] = {"method": method, "options": options, "seeds": len(done), "of": len(members)}
        for name in figures:
            values = [float(r[name]) for r in done if r[name] is not None and math.isfinite(float(r[name]))]
            entry[name] = statistics.fmean(values) if values else None
            entry[f"{name} sd"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary
