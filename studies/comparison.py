"""Every fusion method on one set of parents, in one table.

:func:`compare_methods` fuses the parents with each chosen method (the single-model methods, Intra-Fusion and magnitude
pruning, take the first parent), optionally fine-tunes every fused model with one recipe, and returns one
:class:`ComparisonRow` per method: test accuracy and loss before and after fine-tuning, parameters, fusion time and,
when the workspace holds a Hessian report for the model (:func:`studies.runs.hessian_of`), its top eigenvalue and
trace. Methods whose constraints the parents do not meet are skipped with the reason.
:func:`comparison_from_workspace` builds the same table from models already fused, without recomputing anything;
:func:`to_csv` and :func:`to_markdown` export it. :func:`compare_fusion` is the Fuse page's view of one method: a
:class:`FusionComparison` of the fused model beside its parents and its baselines (:func:`baselines_of`), one
:class:`studies.scores.Score` per model, stored with the fused model. Both load each parent once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from analysis.hessian_config import HessianConfig
from analysis.units import in_percent, percent
from fusion.command_lines import fusion_command_lines
from fusion.data import load_dataset
from fusion.device import default_device
from fusion.errors import ArchitectureError, ConfigError, DamagedResultError, FusionError
from fusion.models import parameter_count
from fusion.progress import Progress, no_progress
from fusion.records import Record, RecordError
from fusion.registry import REGISTRY, FusionReport, fuse, resolve
from fusion.results import ResultRecord
from fusion.train import TrainConfig, evaluate
from fusion.workspace import LoadOnce, ModelRecord, Workspace
from studies.pipeline import check_compatible, finetune_and_save, fuse_and_save, is_evaluated, parent_role
from studies.runs import hessian_record, hessians_of, scaled, stored_hessian
from studies.scores import Score


@dataclass(frozen=True)
class ComparisonRow(Record):
    """One method's fused model (``id`` is ``None`` for the prediction ensemble, which is not one network) and, when
    fine-tuned, the fine-tuned model. Accuracies are fractions, losses mean cross-entropies on the test split,
    ``fusion_seconds`` the wall time of the fusion alone; Hessian values are ``None`` until computed."""

    method: str
    model: str
    id: str | None
    parents: tuple[str, ...]
    test_accuracy: float
    test_loss: float
    parameters: int
    fusion_seconds: float | None = None
    finetuned_id: str | None = None
    finetuned_accuracy: float | None = None
    finetuned_loss: float | None = None
    top_eigenvalue: float | None = None
    hessian_trace: float | None = None
    finetuned_top_eigenvalue: float | None = None
    finetuned_hessian_trace: float | None = None
    note: str = ""
    commands: tuple[str, ...] = ()
    """The command lines that rebuild the row's models: ``fuse`` with the fused model's own options (and its
    fine-tune, as ``--finetune-epochs`` or a second ``finetune FUSED_ID`` command)."""


@dataclass(frozen=True)
class MethodComparison:
    """The rows of a comparison of ``parents``, the methods skipped with the reason, and the fine-tune recipe used
    (``None``: not fine-tuned, or rows read from the workspace)."""

    parents: tuple[str, ...]
    rows: tuple[ComparisonRow, ...]
    skipped: dict[str, str]
    finetune: TrainConfig | None = None


def same_depth(a: ModelRecord, b: ModelRecord) -> bool:
    return (a.spec.arch, len(a.spec.hidden), len(a.spec.channels)) == (
        b.spec.arch,
        len(b.spec.hidden),
        len(b.spec.channels),
    )


def inapplicable_reason(records: Sequence[ModelRecord], method: str) -> str | None:
    """Why ``method`` cannot fuse these parents (too few or too many, other architectures, equal depths for
    CLAFusion), or ``None`` when it can. Single-model methods always apply: they take the first parent."""
    spec = resolve(method).spec
    if spec.max_models == 1:
        return None if records else f"{method} needs one model, none chosen"
    if len(records) < spec.min_models:
        return f"{method} needs at least {spec.min_models} parents, {len(records)} chosen"
    if spec.max_models is not None and len(records) > spec.max_models:
        return f"{method} fuses exactly {spec.max_models} models, {len(records)} chosen"
    try:
        check_compatible(records, method)
    except ArchitectureError as exc:
        return str(exc)
    if spec.parents == "other depths" and same_depth(records[0], records[1]):
        return f"{method} is for networks of different depths; these parents have the same depth"
    return None


def applicable_methods(records: Sequence[ModelRecord]) -> list[str]:
    """The methods of :data:`fusion.registry.REGISTRY` that can fuse these parents, in registry order."""
    return [m for m in REGISTRY if inapplicable_reason(records, m) is None]


def check_comparison(records: Sequence[ModelRecord], methods: Sequence[str]) -> dict[str, str]:
    """The methods to skip, with the reason; raises :class:`ConfigError` when no parent or no method is chosen, a
    method is unknown, or none of the methods applies."""
    if not records:
        raise ConfigError("choose at least one parent model")
    if not methods:
        raise ConfigError("choose at least one fusion method")
    skipped = {m: reason for m in methods if (reason := inapplicable_reason(records, m)) is not None}
    if len(skipped) == len(set(methods)):
        raise ConfigError("none of the chosen methods can fuse these parents: " + "; ".join(skipped.values()))
    return skipped


def hessian_summary(
    workspace: Workspace, model_id: str | None, config: HessianConfig | None = None, split: str = "test"
) -> tuple[float | None, float | None]:
    """The top eigenvalue ``λ_1`` and Hutchinson's trace estimate of a model's stored Hessian report with ``config``
    on ``split`` (:func:`studies.runs.hessian_record`; its newest without ``config``), or ``(None, None)``."""
    report = stored_hessian(workspace, model_id, config, split) if model_id is not None else None
    if report is None:
        return None, None
    return float(report.top.eigenvalues[0]), float(report.trace.mean)


def row_from_records(
    workspace: Workspace,
    fused: ModelRecord,
    tuned: ModelRecord | None,
    note: str = "",
    hessian: HessianConfig | None = None,
    split: str = "test",
) -> ComparisonRow:
    """A row from a fused model's record and, if any, its fine-tuned model's record (metrics as stored), with their
    Hessians of ``hessian`` on ``split`` (the newest stored without ``hessian``)."""
    top, trace = hessian_summary(workspace, fused.id, hessian, split)
    tuned_top, tuned_trace = hessian_summary(workspace, tuned.id if tuned else None, hessian, split)
    seconds = fused.metrics.get("fusion_seconds")
    return ComparisonRow(
        method=fused.method,
        model=fused.name,
        id=fused.id,
        parents=tuple(fused.parents),
        test_accuracy=fused.metrics["test_accuracy"],
        test_loss=fused.metrics["test_loss"],
        parameters=fused.parameters,
        fusion_seconds=seconds,
        finetuned_id=tuned.id if tuned else None,
        finetuned_accuracy=tuned.metrics["test_accuracy"] if tuned else None,
        finetuned_loss=tuned.metrics["test_loss"] if tuned else None,
        top_eigenvalue=top,
        hessian_trace=trace,
        finetuned_top_eigenvalue=tuned_top,
        finetuned_hessian_trace=tuned_trace,
        commands=tuple(
            fusion_command_lines(
                fused.method,
                fused.parents,
                fused.provenance.get("options", {}),
                tuned.provenance.get("options") if tuned else None,
                fused.id,
            )
        ),
        note=note,
    )


def reuse_note(fused: bool, tuned: bool) -> str:
    """Which of a row's models an earlier run with the same inputs had stored (see :mod:`fusion.run_key`)."""
    which = "fused and fine-tuned models" if fused and tuned else "fused model" if fused else "fine-tuned model"
    return f"{which} reused: stored by an earlier run with the same inputs"


def single_model_note(method: str, parent_id: str) -> str:
    return f"{method} works on one model: applied to the first parent, {parent_id}"


def compare_methods(
    workspace: Workspace,
    parent_ids: Sequence[str],
    methods: Sequence[str],
    finetune: TrainConfig | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    hessian: HessianConfig | None = None,
    split: str = "test",
) -> MethodComparison:
    """Fuse the parents with every applicable method (saved with provenance, see :func:`fuse_and_save`), fine-tune
    each fused network with ``finetune`` when given (saved too), and return one row per method that ran. With
    ``hessian``, the Hessian analysis of the parents and of every fused and fine-tuned network follows in the same
    job (:func:`fill_hessians`), and the rows carry its top eigenvalue and trace.

    Methods that do not apply (:func:`inapplicable_reason`), or that the library refuses while fusing, are listed in
    ``skipped``. Each parent is loaded once for every method. Raises :class:`ConfigError` as :func:`check_comparison`
    does.
    """
    workspace = LoadOnce(workspace)
    if hessian is not None:
        fusing_progress, hessian_progress = scaled(progress, 0, 2, "fusion"), scaled(progress, 1, 2, "Hessians")
        progress = fusing_progress
    parent_ids = list(dict.fromkeys(parent_ids))
    records = [workspace.record(i) for i in parent_ids]
    methods = list(dict.fromkeys(methods))
    skipped = check_comparison(records, methods)
    runnable = [m for m in methods if m not in skipped]
    per_method = 1 + (finetune.epochs if finetune is not None else 0)
    total = len(runnable) * per_method
    rows = []
    for index, method in enumerate(runnable):
        offset = index * per_method
        single = resolve(method).spec.max_models == 1
        ids = parent_ids[:1] if single else parent_ids

        def fusing(done: int, steps: int, message: str, offset: int = offset, method: str = method) -> None:
            progress(offset, total, f"{method}: {message}")

        def tuning(done: int, steps: int, message: str, offset: int = offset + 1, method: str = method) -> None:
            progress(offset + done, total, f"{method} fine-tune: {message}")

        progress(offset, total, f"{method}: fusing {len(ids)} model(s)")
        try:
            run = fuse_and_save(workspace, ids, method, device=device, progress=fusing)
        except FusionError as exc:
            skipped[method] = str(exc)
            continue
        if run.record is None:
            rows.append(
                ComparisonRow(
                    method=method,
                    model=f"prediction ensemble of {len(ids)}",
                    id=None,
                    parents=tuple(ids),
                    test_accuracy=run.metrics["test_accuracy"],
                    test_loss=run.metrics["test_loss"],
                    parameters=sum(r.parameters for r in records),
                    fusion_seconds=run.metrics["fusion_seconds"],
                    note="not one network: not fine-tuned" if finetune is not None else "",
                    commands=tuple(fusion_command_lines(method, ids, {})),
                )
            )
            continue
        stored = (
            finetune_and_save(workspace, run.record.id, finetune, device=device, progress=tuning, model=run.model)
            if finetune
            else None
        )
        notes = [single_model_note(method, ids[0])] if single else []
        if run.reused or (stored is not None and stored.reused):
            notes.append(reuse_note(run.reused, stored is not None and stored.reused))
        tuned = stored.record if stored is not None else None
        rows.append(row_from_records(workspace, run.record, tuned, "; ".join(notes)))
        progress(offset + per_method, total, f"{method}: done")
    if hessian is not None:
        models = [*parent_ids, *(i for r in rows for i in (r.id, r.finetuned_id) if i is not None)]
        fill_hessians(workspace, models, hessian, split, device, hessian_progress)
        rows = [refreshed(workspace, row, hessian, split) for row in rows]
    return MethodComparison(tuple(parent_ids), tuple(rows), skipped, finetune)


def has_hessian(workspace: Workspace, model_id: str, config: HessianConfig, split: str) -> bool:
    """Whether ``model_id`` has a stored Hessian record with ``config`` on ``split``."""
    return hessian_record(workspace, model_id, config, split) is not None


def fill_hessians(
    workspace: Workspace,
    model_ids: Sequence[str],
    config: HessianConfig,
    split: str = "test",
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[str]:
    """The Hessian analysis (:func:`studies.runs.hessians_of`) of every model of ``model_ids`` that has none stored
    with ``config`` on ``split``, as one task (limits checked for all first); returns the ids analysed."""
    missing = [i for i in dict.fromkeys(model_ids) if not has_hessian(workspace, i, config, split)]
    if missing:
        hessians_of(workspace, missing, config, split, device, progress)
    return missing


def refreshed(workspace: Workspace, row: ComparisonRow, hessian: HessianConfig, split: str) -> ComparisonRow:
    """``row`` with the figures of its models' Hessians of ``hessian`` on ``split``."""
    if row.id is None:
        return row
    tuned = workspace.record(row.finetuned_id) if row.finetuned_id else None
    return row_from_records(workspace, workspace.record(row.id), tuned, row.note, hessian, split)


def comparison_from_workspace(workspace: Workspace, parent_ids: Sequence[str]) -> MethodComparison:
    """The rows of the models already fused from exactly these parents (and the single-model methods' results of
    one of them), oldest first, each with its newest fine-tuned descendant; nothing is recomputed. A fused model
    stored without test metrics (its dataset was not on disk) is listed under ``skipped``."""
    chosen = list(dict.fromkeys(parent_ids))
    records = workspace.records()
    tuned_of = {r.parents[0]: r for r in records if r.method == "finetune" and len(r.parents) == 1 and is_evaluated(r)}
    rows = []
    skipped = {}
    for record in records:
        if record.method not in REGISTRY or not record.parents:
            continue
        single = resolve(record.method).spec.max_models == 1
        if single and record.parents[0] in chosen:
            note = single_model_note(record.method, record.parents[0])
        elif not single and set(record.parents) == set(chosen):
            note = ""
        else:
            continue
        if not is_evaluated(record):
            skipped[record.name] = f"{record.id} is not evaluated yet: python -m fusion evaluate {record.id}"
            continue
        rows.append(row_from_records(workspace, record, tuned_of.get(record.id), note))
    return MethodComparison(tuple(chosen), tuple(rows), skipped)


def none_as_blank(value: Any) -> Any:
    return "" if value is None else value


def to_csv(rows: Sequence[ComparisonRow]) -> str:
    """The rows as CSV: one header line of :class:`ComparisonRow`'s field names, accuracies in percent under names
    that say so (:func:`analysis.units.in_percent`: ``test_accuracy_pct``), then one line per row; parents separated
    by spaces, command lines joined by `` && ``, missing values empty."""
    stream = io.StringIO()
    names = list(in_percent({f.name: None for f in fields(ComparisonRow)}))
    writer = csv.DictWriter(stream, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = in_percent(row.to_dict())
        values["parents"] = " ".join(row.parents)
        values["commands"] = " && ".join(row.commands)
        writer.writerow({k: none_as_blank(v) for k, v in values.items()})
    return stream.getvalue()


TABLE_COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], Any]], ...] = (
    ("method", lambda r: r.method),
    ("model", lambda r: r.model),
    ("id", lambda r: r.id),
    ("test accuracy (%)", lambda r: percent(r.test_accuracy)),
    ("test loss", lambda r: r.test_loss),
    ("fine-tuned accuracy (%)", lambda r: percent(r.finetuned_accuracy)),
    ("fine-tuned loss", lambda r: r.finetuned_loss),
    ("parameters", lambda r: r.parameters),
    ("fusion time (s)", lambda r: r.fusion_seconds),
    ("top Hessian eigenvalue", lambda r: r.top_eigenvalue),
    ("Hessian trace", lambda r: r.hessian_trace),
    ("fine-tuned top eigenvalue", lambda r: r.finetuned_top_eigenvalue),
    ("fine-tuned Hessian trace", lambda r: r.finetuned_hessian_trace),
    ("note", lambda r: r.note),
)


def table_records(rows: Sequence[ComparisonRow]) -> list[dict[str, Any]]:
    """The rows as the app and the Markdown export show them: the columns of :data:`TABLE_COLUMNS`, accuracies in
    percent."""
    return [{name: value(row) for name, value in TABLE_COLUMNS} for row in rows]


MARKDOWN_FORMATS = {
    "test accuracy (%)": "{:.2f}",
    "fine-tuned accuracy (%)": "{:.2f}",
    "test loss": "{:.4f}",
    "fine-tuned loss": "{:.4f}",
    "parameters": "{:,}",
    "fusion time (s)": "{:.2f}",
    "top Hessian eigenvalue": "{:.4g}",
    "Hessian trace": "{:.4g}",
    "fine-tuned top eigenvalue": "{:.4g}",
    "fine-tuned Hessian trace": "{:.4g}",
}


def markdown_cell(column: str, value: Any) -> str:
    if value is None or value == "":
        return "–"
    text = MARKDOWN_FORMATS.get(column, "{}").format(value)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[ComparisonRow]) -> str:
    """The rows as a GitHub Markdown table (the columns of :func:`table_records`), missing values as ``–``."""
    columns = [name for name, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(markdown_cell(c, record[c]) for c in columns) + " |" for record in table_records(rows)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FusionComparison(Record):
    """One fusion beside its parents and baselines (:func:`compare_fusion`): the method, the parents' ids, the fused
    model's id (``None`` for the prediction ensemble), one :class:`Score` per model (roles ``parent A``...,
    ``ensemble``, ``average``, ``pruned``, ``fused``, ``fine-tuned``), the fusion's report and the ids of the models
    that earlier runs with the same inputs had stored."""

    method: str
    parents: tuple[str, ...]
    fused: str | None
    rows: tuple[Score, ...]
    report: FusionReport
    reused: tuple[str, ...] = ()


COMPARISON = "comparison"
"""The result name under which a fused model keeps its :class:`FusionComparison`."""

BASELINE_LABELS: dict[str, tuple[str, str]] = {
    "ensemble": ("prediction ensemble", "ensemble"),
    "average": ("vanilla average", "average"),
    "prune": ("magnitude pruning", "pruned"),
}
"""Each baseline method's label and role in a comparison."""


def baselines_of(records: Sequence[ModelRecord], method: str, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The baselines a fusion by ``method`` is shown beside, with their options: for a method that prunes its model
    (:attr:`MethodSpec.output`), magnitude pruning with the pruning options they share (the same sparsity and
    importance); otherwise the prediction ensemble and vanilla averaging (for identical architectures) of two or
    more parents, with their defaults. A method is not its own baseline."""
    baselines: dict[str, dict[str, Any]] = {}
    if resolve(method).spec.output == "pruned":
        shared = {f.name for f in fields(resolve("prune").spec.options)}
        baselines["prune"] = {k: v for k, v in options.items() if k in shared}
    elif len(records) >= 2:
        baselines["ensemble"] = {}
        if all(r.spec == records[0].spec for r in records):
            baselines["average"] = {}
    baselines.pop(method, None)
    return baselines


def compare_fusion(
    workspace: Workspace,
    model_ids: Sequence[str],
    method: str,
    options: dict[str, Any] | None = None,
    finetune: TrainConfig | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> FusionComparison:
    """Fuse workspace models and compare the result with its baselines (:func:`baselines_of`) on the test split:
    every parent, the baselines, the fused model and, with ``finetune``, the fused model fine-tuned. Each parent is
    loaded once. The comparison is stored with the fused model as its ``comparison`` result."""
    device = device or default_device()
    options = dict(options or {})
    workspace = LoadOnce(workspace)
    records = [workspace.record(i) for i in model_ids]
    rows = [Score.of(record, parent_role(index)) for index, record in enumerate(records)]
    run = fuse_and_save(workspace, model_ids, method, options, device=device, progress=progress)
    data = load_dataset(records[0].dataset)
    models = [workspace.load(i)[0] for i in model_ids]
    for baseline, baseline_options in baselines_of(records, method, options).items():
        result = fuse(models, baseline, data=data, device=device, **baseline_options)
        metrics = evaluate(result.model, *data.split("test"), device=device)
        label, role = BASELINE_LABELS[baseline]
        parameters = parameter_count(result.model)
        rows.append(Score(label, role, None, metrics.accuracy, metrics.loss, parameters, result.report.seconds))
    if run.record is not None:
        rows.append(Score.of(run.record, "fused", run.report.seconds))
    else:
        assert run.result is not None
        parameters = parameter_count(run.result.model)
        scores = (run.metrics["test_accuracy"], run.metrics["test_loss"], parameters, run.report.seconds)
        rows.append(Score("prediction ensemble", "fused", None, *scores))
    reused = [run.record.id] if run.reused and run.record is not None else []
    if finetune is not None and run.record is not None:
        stored = finetune_and_save(
            workspace, run.record.id, finetune, device=device, progress=progress, model=run.model
        )
        rows.append(Score.of(stored.record, "fine-tuned", stored.record.metrics.get("train_seconds")))
        reused += [stored.record.id] if stored.reused else []
    fused_id = run.record.id if run.record is not None else None
    comparison = FusionComparison(method, tuple(model_ids), fused_id, tuple(rows), run.report, tuple(reused))
    if fused_id is not None:
        settings = {"method": method, "parents": list(model_ids), "options": run.report.options}
        settings["finetune"] = finetune.to_dict() if finetune is not None else None
        command = " && ".join(fusion_command_lines(method, model_ids, options, settings["finetune"]))
        record = ResultRecord.make(COMPARISON, [fused_id], settings, comparison.to_dict(), None, command)
        workspace.save_result(fused_id, record)
    return comparison


def stored_comparison(workspace: Workspace, fused_id: str) -> FusionComparison | None:
    """The comparison stored with a fused model, or ``None``; :class:`DamagedResultError` when it cannot be read."""
    stored = workspace.results(fused_id, COMPARISON)
    if not stored:
        return None
    try:
        return FusionComparison.from_dict(stored[0].payload)
    except RecordError as exc:
        raise DamagedResultError(f"the comparison stored with {fused_id!r} cannot be read: {exc}") from exc
