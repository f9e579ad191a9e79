"""The ``sweep FILE`` and ``sweeps [NAME]`` commands (:mod:`studies.sweeps`); :mod:`cli.main` registers them
through :func:`add_sweep_commands`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cli.output import add_csv_option, check_csv, stderr_progress, write_csv
from fusion.errors import ConfigError
from fusion.sources import TRUSTED_FACTORIES_VARIABLE, trusted_factories
from fusion.workspace import Workspace
from studies.sweeps.jobs import sweep_names
from studies.sweeps.launch import run_sweep
from studies.sweeps.spec import load_sweep
from studies.sweeps.table import check_some_job_done, job_rows, read_sweep, summary_rows


def sweep_summary(args: argparse.Namespace, workspace: Workspace, name: str) -> dict[str, Any]:
    table = read_sweep(workspace.root, name)
    rows = job_rows(table)
    return {
        "name": name,
        "counts": table.counts(),
        "summary": summary_rows(table),
        "jobs": rows,
        **write_csv(args, workspace, rows),
    }


def command_sweep(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    check_csv(args, workspace)
    spec = load_sweep(args.file, args.max_jobs)
    if args.local:
        spec = spec.local()
    # the jobs run in processes of their own: they inherit the environment, not this process's --trust-factory
    os.environ[TRUSTED_FACTORIES_VARIABLE] = ",".join(sorted(trusted_factories()))
    run = run_sweep(workspace, spec, progress=stderr_progress(args.quiet), detach=args.detach)
    check_some_job_done(read_sweep(workspace.root, spec.name))
    return {"run": run.to_dict(), **sweep_summary(args, workspace, spec.name)}


def command_sweeps(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    check_csv(args, workspace)
    names = sweep_names(workspace.root)
    if args.name is None:
        return {"sweeps": [{"name": n, "counts": read_sweep(workspace.root, n).counts()} for n in names]}
    if args.name not in names:
        known = ", ".join(names) or "none"
        raise ConfigError(f"no sweep named {args.name!r} in {workspace.root} (stored: {known})")
    return sweep_summary(args, workspace, args.name)


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
    sweep.add_argument("--max-jobs", type=int, help="refuse a sweep of more jobs (default: the file's max_jobs, 1000)")
    add_csv_option(sweep, "one row per fusion job")
    sweep.set_defaults(run=command_sweep)

    sweeps = subparsers.add_parser("sweeps", parents=[common], help="list the stored sweeps, or show one's results")
    sweeps.add_argument("name", nargs="?", help="the sweep to show (default: list them all)")
    add_csv_option(sweeps, "one row per fusion job")
    sweeps.set_defaults(run=command_sweeps)
