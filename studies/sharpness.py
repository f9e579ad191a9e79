"""Sharpness of stored Hessian analyses, model by model, and the numbers behind the Hessian page as flat rows.

Per model (its stored :class:`analysis.hessian.HessianReport`): ``λ_1 .. λ_k`` with their Ritz residual bounds
``||H v_i - λ_i v_i||`` and their spread over data parts (standard error of the parts' Rayleigh quotients), the
trace ± its standard error, ``λ_1 / trace`` (how much of the curvature the top direction holds), the curvature
``2 c`` fitted to the loss along each eigenvector, the train and test loss at the model and their gap
``test - train`` (the generalisation gap), and for a derived model the ratios of ``λ_1`` and the trace to the mean of
its parents' (above 1: sharper than the parents). Each summary names the stored record it comes from (``result``, its
key) and its sample; a table built for one set of Hessian settings takes every model's and parent's record of those
settings, so its rows compare like with like.

:func:`sharpness_rows` flattens the summaries into rows of plain values, one per model, the form of the CSV and JSON
downloads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from analysis.hessian import HessianReport
from analysis.hessian_config import HessianConfig
from analysis.perturbation import curve_kind
from fusion.records import Record
from fusion.workspace import ModelRecord, Workspace
from studies.runs import hessian_record, model_role, model_roles


@dataclass(frozen=True)
class Sharpness(Record):
    """One model's sharpness summary (see the module docstring); ratios are ``None`` without parents' Hessians."""

    model: str
    name: str
    role: str
    method: str
    eigenvalues: list[float]
    residuals: list[float]
    spread: list[float]
    trace: float
    trace_error: float
    top_over_trace: float | None
    curvatures: list[float | None]
    train_loss: float | None
    test_loss: float | None
    gap: float | None
    top_ratio: float | None = None
    trace_ratio: float | None = None
    result: str | None = None
    samples: int | None = None


def summarise(record: ModelRecord, report: HessianReport, role: str, result: str | None = None) -> Sharpness:
    eigenvalues = [float(v) for v in report.top.eigenvalues]
    trace = float(report.trace.mean)
    curvatures = []
    for index in range(len(eigenvalues)):
        found = [
            c
            for c in report.curves
            if curve_kind(c) == "eigenvector" and c.index == index and c.split in (report.split, None)
        ]
        curvatures.append(found[0].curvature if found else None)
    train = (report.metrics or {}).get("train")
    test = (report.metrics or {}).get("test")
    return Sharpness(
        model=record.id,
        name=record.name,
        role=role,
        method=record.method,
        eigenvalues=eigenvalues,
        residuals=[float(v) for v in report.top.residuals],
        spread=[float(v) for v in (report.spread if report.spread is not None else [])],
        trace=trace,
        trace_error=float(report.trace.error),
        top_over_trace=eigenvalues[0] / trace if trace else None,
        curvatures=curvatures,
        train_loss=train.loss if train else None,
        test_loss=test.loss if test else None,
        gap=test.loss - train.loss if train and test else None,
        result=result,
        samples=report.samples,
    )


def with_ratios(summary: Sharpness, parents: Sequence[Sharpness]) -> Sharpness:
    """``summary`` with ``λ_1`` and the trace divided by the mean of ``parents``' (unchanged without parents)."""
    if not parents:
        return summary
    top = sum(p.eigenvalues[0] for p in parents) / len(parents)
    trace = sum(p.trace for p in parents) / len(parents)
    return replace(
        summary,
        top_ratio=summary.eigenvalues[0] / top if top else None,
        trace_ratio=summary.trace / trace if trace else None,
    )


def parent_summaries(
    workspace: Workspace, record: ModelRecord, summary_of: Callable[[str], Sharpness | None]
) -> list[Sharpness]:
    """The summaries of ``record``'s parents that are in the workspace and have a Hessian (``summary_of``)."""
    return [found for p in record.parents if workspace.has(p) and (found := summary_of(p)) is not None]


def stored_summary(
    workspace: Workspace, model_id: str, role: str, config: HessianConfig | None, split: str
) -> Sharpness | None:
    """The summary of ``model_id``'s stored Hessian record of ``config`` on ``split`` (its newest without
    ``config``), or ``None``."""
    found = hessian_record(workspace, model_id, config, split)
    if found is None:
        return None
    return summarise(workspace.record(model_id), HessianReport.from_dict(found.payload), role, found.key)


def sharpness_of(workspace: Workspace, model_id: str, report: HessianReport, result: str | None = None) -> Sharpness:
    """The summary of ``report`` (a fresh analysis of ``model_id``, stored as ``result`` or not), with ratios to its
    parents' stored Hessians of the same settings."""
    record = workspace.record(model_id)
    split = report.split or "test"
    parents = parent_summaries(
        workspace, record, lambda p: stored_summary(workspace, p, "parent", report.config, split)
    )
    return with_ratios(summarise(record, report, model_role(record, 0), result), parents)


def sharpness_table(
    workspace: Workspace,
    model_ids: Sequence[str] | None = None,
    config: HessianConfig | None = None,
    split: str = "test",
) -> list[Sharpness]:
    """The summaries of ``model_ids`` (default: every model of the workspace) that have a stored Hessian of
    ``config`` on ``split`` (each one's newest without ``config``), with ratios to their parents' of the same
    settings where the parents have one too; roles as on the Hessian page (:func:`studies.runs.model_roles`)."""
    records = workspace.records()
    by_id = {r.id: r for r in records}
    chosen = list(model_ids) if model_ids is not None else [r.id for r in records]
    summaries = {}
    roles = model_roles([by_id[model_id] for model_id in chosen])
    for model_id, role in zip(chosen, roles, strict=True):
        found = stored_summary(workspace, model_id, role, config, split)
        if found is not None:
            summaries[model_id] = found
    parents: dict[str, Sharpness | None] = {}

    def parent_of(parent_id: str) -> Sharpness | None:
        if parent_id not in parents:
            parents[parent_id] = stored_summary(workspace, parent_id, "parent", config, split)
        return parents[parent_id]

    return [
        with_ratios(summary, parent_summaries(workspace, by_id[model_id], parent_of))
        for model_id, summary in summaries.items()
    ]


def sharpness_rows(summaries: Sequence[Sharpness]) -> list[dict[str, Any]]:
    """One flat row per model: lists spread into numbered columns (``λ1``, ``λ1 residual``, ...)."""
    rows = []
    for s in summaries:
        row: dict[str, Any] = {"model": s.model, "name": s.name, "role": s.role, "method": s.method}
        for i, value in enumerate(s.eigenvalues):
            row[f"λ{i + 1}"] = value
            row[f"λ{i + 1} residual"] = s.residuals[i] if i < len(s.residuals) else None
            row[f"λ{i + 1} spread"] = s.spread[i] if i < len(s.spread) else None
            row[f"λ{i + 1} fitted curvature"] = s.curvatures[i] if i < len(s.curvatures) else None
        row.update(
            {
                "trace": s.trace,
                "trace error": s.trace_error,
                "λ1 / trace": s.top_over_trace,
                "train loss": s.train_loss,
                "test loss": s.test_loss,
                "generalisation gap": s.gap,
                "λ1 / parents' λ1": s.top_ratio,
                "trace / parents' trace": s.trace_ratio,
            }
        )
        row.update({"samples": s.samples, "result": s.result})
        rows.append({k: clean(v) for k, v in row.items()})
    return rows


def clean(value: Any) -> Any:
    """``None`` for a NaN or infinite float (JSON has no such numbers), the value otherwise."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
