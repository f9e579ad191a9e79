"""The ``hessian`` and ``landscape`` commands; :mod:`cli.main` registers them through :func:`add_analysis_commands`.
Each stores its result with the (first) model in the workspace and returns a summary."""

from __future__ import annotations

import argparse
from typing import Any

from analysis.hessian_config import HessianConfig
from analysis.landscape import LandscapeConfig
from analysis.rows import curve_rows, landscape_rows
from analysis.units import in_percent
from cli.arguments import add_option_arguments, given_options
from cli.output import add_csv_option, check_csv, stderr_progress, write_csv
from fusion.device import default_device
from fusion.options import option_fields
from fusion.results import result_key
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.comparison import applicable_methods, compare_methods
from studies.runs import (
    LANDSCAPE_MODELS,
    hessian_command,
    hessian_of,
    hessian_record,
    landscape_command,
    landscape_of,
    landscape_record,
)
from studies.seed_study import STUDY, StudyConfig, seed_study, study_command, study_rows
from studies.sharpness import sharpness_of, sharpness_rows, sharpness_table


def command_hessian(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    config = HessianConfig(**given_options(args, option_fields(HessianConfig)))
    check_csv(args, workspace)
    reused = hessian_record(workspace, args.id, config, args.split) is not None
    report = hessian_of(workspace, args.id, config, args.split, progress=stderr_progress(args.quiet))
    written = write_csv(args, workspace, curve_rows({args.id: report}))
    stored = hessian_record(workspace, args.id, config, args.split)
    key = stored.key if stored is not None else None
    (sharpness,) = sharpness_rows([sharpness_of(workspace, args.id, report, key)])
    return {
        "id": args.id,
        "dataset": workspace.record(args.id).dataset,
        "split": args.split,
        "samples": report.samples,
        "device": str(default_device()),
        "top_eigenvalues": report.top.eigenvalues.tolist(),
        "converged": report.top.converged,
        "trace": report.trace.mean,
        "trace_error": report.trace.error,
        "trace_converged": report.trace.converged,
        "trace_status": report.trace.status,
        "density_runs": len(report.density.nodes),
        "layers": [layer.to_dict() for layer in report.layers],
        "sharpness": sharpness,
        "curves": [
            {
                "direction": c.label,
                "split": c.split,
                "fitted_curvature": c.curvature,
                "fit_range": c.fit_range,
                "d_H_d": c.expected,
                "agrees": c.agrees,
                "agreeing_range": c.agreeing_range,
            }
            for c in report.curves
        ],
        "seconds": report.seconds,
        "result": key,
        "reused": reused,
        "command": hessian_command(args.id, config, args.split),
        **written,
    }


def command_landscape(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    config = LandscapeConfig(
        resolution=args.resolution,
        span=args.range,
        samples=args.samples,
        seed=args.seed,
        recompute_batchnorm=args.recompute_batchnorm,
    )
    check_csv(args, workspace)
    reused = landscape_record(workspace, args.models, args.kind, config, args.dims) is not None
    result = landscape_of(workspace, args.models, args.kind, config, args.dims, progress=stderr_progress(args.quiet))
    stored = landscape_record(workspace, args.models, args.kind, config, args.dims)
    summary: dict[str, Any] = {}
    if args.kind == "interpolation":
        summary = {"train_barrier": result.train_barrier, "test_barrier": result.test_barrier}
    elif args.kind == "plane":
        summary = {"coordinates": [list(c) for c in result.coordinates], "labels": list(result.labels)}
    else:
        summary = {"dims": args.dims}
    return {
        "kind": args.kind,
        "model_ids": args.models,
        "dataset": workspace.record(args.models[0]).dataset,
        "device": str(default_device()),
        "points": int(result.metrics.test_loss.size),
        "min_test_loss": float(result.metrics.test_loss.min()),
        **summary,
        "result": stored.key if stored is not None else None,
        "reused": reused,
        "command": landscape_command(args.models, args.kind, config, args.dims),
        **write_csv(args, workspace, landscape_rows(result)),
    }


def command_compare(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    check_csv(args, workspace)
    hessian = HessianConfig(samples=args.hessian_samples) if args.hessian else None
    finetune = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=0) if args.finetune_epochs else None
    comparison = compare_methods(
        workspace,
        args.parents,
        args.methods or applicable_methods([workspace.record(i) for i in args.parents]),
        finetune,
        progress=stderr_progress(args.quiet),
        hessian=hessian,
    )
    ids = [*comparison.parents, *(i for r in comparison.rows for i in (r.id, r.finetuned_id) if i is not None)]
    return {
        "parents": list(comparison.parents),
        "rows": [{**in_percent(row.to_dict()), "command": " && ".join(row.commands)} for row in comparison.rows],
        "skipped": comparison.skipped,
        "sharpness": sharpness_rows(sharpness_table(workspace, ids)),
        **write_csv(args, workspace, [in_percent(row.to_dict()) for row in comparison.rows]),
    }


def command_study(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    check_csv(args, workspace)
    config = StudyConfig(**given_options(args, option_fields(StudyConfig)))
    study = seed_study(workspace, args.parents, config, progress=stderr_progress(args.quiet))
    rows = study_rows(study)
    return {
        "config": config.to_dict(),
        "result": result_key(STUDY, args.parents, config.to_dict()),
        "command": study_command(args.parents, config),
        "stages": [in_percent(stage.to_dict()) for stage in study.stages],
        **write_csv(args, workspace, rows),
    }


def command_results(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    """The results stored with a model, newest first (each without its payload)."""
    workspace.record(args.id)
    return {"id": args.id, "results": [r.summary() for r in workspace.results(args.id, args.kind)]}


def add_analysis_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Register ``hessian ID`` and ``landscape --models ...`` on ``python -m fusion``'s subparsers."""
    hessian = subparsers.add_parser(
        "hessian",
        parents=[common],
        help="Hessian top-k eigenvalues, trace, eigenvalue density and eigenvector perturbation",
    )
    hessian.add_argument("id")
    hessian.add_argument("--split", choices=("train", "test"), default="test", help="data the loss is taken over")
    add_csv_option(hessian, "every perturbation curve's points")
    add_option_arguments(hessian, option_fields(HessianConfig))
    hessian.set_defaults(run=command_hessian)

    landscape_defaults = LandscapeConfig()
    landscape = subparsers.add_parser(
        "landscape", parents=[common], help="loss landscape: interpolation, plane or random directions"
    )
    landscape.add_argument("--models", nargs="+", required=True, help="2 ids (interpolation), 3 (plane) or 1 (random)")
    landscape.add_argument("--kind", choices=tuple(LANDSCAPE_MODELS), default="interpolation")
    landscape.add_argument("--resolution", type=int, default=landscape_defaults.resolution, help="points per axis")
    landscape.add_argument(
        "--range", type=float, default=landscape_defaults.span, help="random directions: coefficients in [-R, R]"
    )
    landscape.add_argument("--dims", type=int, choices=(1, 2), default=2, help="random directions: 1-D or 2-D")
    landscape.add_argument(
        "--samples", type=int, default=landscape_defaults.samples, help="examples per split (default all)"
    )
    landscape.add_argument("--seed", type=int, default=landscape_defaults.seed)
    landscape.add_argument(
        "--recompute-batchnorm", action="store_true", help="re-estimate BatchNorm statistics at every point"
    )
    add_csv_option(landscape, "every evaluated point")
    landscape.set_defaults(run=command_landscape)

    compare = subparsers.add_parser(
        "compare", parents=[common], help="fuse parents with every method, fine-tune, and optionally their Hessians"
    )
    compare.add_argument("--parents", nargs="+", required=True, help="ids of the parents")
    compare.add_argument("--methods", nargs="+", help="methods to compare (default: every one that applies)")
    compare.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune every fused model for N epochs")
    compare.add_argument("--finetune-lr", type=float, default=1e-3)
    compare.add_argument(
        "--hessian", action="store_true", help="then the Hessian of the parents and of every fused/fine-tuned model"
    )
    compare.add_argument("--hessian-samples", type=int, default=500, help="test examples of each Hessian")
    add_csv_option(compare, "the comparison's rows")
    compare.set_defaults(run=command_compare)

    study = subparsers.add_parser(
        "study",
        parents=[common],
        help="the generalization study: prune both parents, fuse, fine-tune, and the Hessian of every stage",
    )
    study.add_argument("--parents", nargs=2, required=True, help="ids of the two parents")
    add_option_arguments(study, option_fields(StudyConfig))
    add_csv_option(study, "one row per stage (its sharpness)")
    study.set_defaults(run=command_study)

    results = subparsers.add_parser(
        "results", parents=[common], help="list the analysis results stored with a model, newest first"
    )
    results.add_argument("id")
    results.add_argument("--kind", help="only results of this kind (hessian, landscape-random, overlap, ...)")
    results.set_defaults(run=command_results)
