"""The ``sweep FILE`` and ``sweeps [NAME]`` commands (:mod:`analysis.sweeps`); :mod:`cli.main` registers them
through :func:`add_sweep_commands`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from analysis.sweeps.jobs import sweep_names
from analysis.sweeps.launch import run_sweep
from analysis.sweeps.spec import load_sweep
from analysis.sweeps.table import job_rows, read_sweep, summary_rows
from cli.analysis_commands import check_csv_path, write_csv
from cli.output import stderr_progress
from fusion.errors import ConfigError
from fusion.workspace import Workspace


def sweep_summary(workspace: Workspace, name: str, csv: Path | None) -> dict[str, Any]:
    table = read_sweep(workspace.root, name)
    rows = job_rows(table)
    return {
        "name": name,
        "counts": table.counts(),
        "summary": summary_rows(table),
        "jobs": rows,
        **write_csv(csv, rows),
    }


def command_sweep(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    check_csv_path(args.csv)
    spec = load_sweep(args.file)
    if args.local:
        spec = spec.local()
    run = run_sweep(workspace, spec, progress=stderr_progress(args.quiet), detach=args.detach)
    return {"run": run.to_dict(), **sweep_summary(workspace, spec.name, args.csv)}


def command_sweeps(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    check_csv_path(args.csv)
    names = sweep_names(workspace.root)
    if args.name is None:
        return {"sweeps": [{"name": n, "counts": read_sweep(workspace.root, n).counts()} for n in names]}
    if args.name not in names:
        known = ", ".join(names) or "none"
        raise ConfigError(f"no sweep named {args.name!r} in {workspace.root} (stored: {known})")
    return sweep_summary(workspace, args.name, args.csv)


def add_sweep_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Register ``sweep FILE`` and ``sweeps [NAME]`` on ``python -m fusion``'s subparsers."""
    sweep = subparsers.add_parser(
        "sweep",
        parents=[common],
        help="run or resume a sweep file (methods x options x seeds) through submitit, locally or on SLURM",
    )
    sweep.add_argument("file", type=Path, help="a .toml or .json sweep file")
    sweep.add_argument("--detach", action="store_true", help="SLURM: submit the job arrays and return at once")
    sweep.add_argument("--local", action="store_true", help="run on this machine whatever the file's executor says")
    sweep.add_argument("--csv", type=Path, help="also write one row per fusion job to this CSV file")
    sweep.set_defaults(run=command_sweep)

    sweeps = subparsers.add_parser("sweeps", parents=[common], help="list the stored sweeps, or show one's results")
    sweeps.add_argument("name", nargs="?", help="the sweep to show (default: list them all)")
    sweeps.add_argument("--csv", type=Path, help="also write one row per fusion job to this CSV file")
    sweeps.set_defaults(run=command_sweeps)
