"""What the command line prints: model summaries, strict JSON, readable text, errors, progress on stderr."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from analysis.rows import csv_bytes
from analysis.units import SCIENTIFIC, is_small_figure, percent
from fusion.distributed import is_writer, rank, world_size
from fusion.errors import OutputFileError
from fusion.progress import Progress
from fusion.user_files import check_user_target, write_user_file
from fusion.workspace import ModelRecord, Workspace
from studies.pipeline import Stored


def record_summary(record: ModelRecord, workspace: Workspace) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "arch": record.spec.describe(),
        "dataset": record.dataset,
        "method": record.method,
        "parents": record.parents,
        "parameters": record.parameters,
        "test_accuracy_pct": percent(record.metrics.get("test_accuracy")),
        "test_loss": record.metrics.get("test_loss"),
        "path": str(workspace.model_dir(record.id)),
    }


def stored_summary(stored: Stored, workspace: Workspace) -> dict[str, Any]:
    """A model a run saved or reused (:class:`studies.pipeline.Stored`), with ``reused`` saying which."""
    return {**record_summary(stored.record, workspace), "reused": stored.reused}


def stderr_progress(quiet: bool) -> Progress:
    def report(done: int, total: int, message: str) -> None:
        if not quiet:
            print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    return report


def finite(value: Any, replaced: list[int]) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (counted in ``replaced``), for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced[0] += 1
        return None
    if isinstance(value, dict):
        return {k: finite(v, replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, replaced) for v in value]
    return value


def strict_json(result: dict[str, Any]) -> str:
    """One JSON object, valid by the standard: non-finite numbers become ``null`` and ``non_finite_values`` counts
    them."""
    replaced = [0]
    cleaned = finite(result, replaced)
    if replaced[0]:
        cleaned["non_finite_values"] = replaced[0]
    return json.dumps(cleaned, allow_nan=False)


def failure(exc: BaseException, kind: str, message: str, as_json: bool, status: int) -> int:
    """Report a failure as one line on stderr (from every rank of a distributed run, prefixed by its rank) and, under
    ``--json``, one ``{"error": ...}`` object on stdout (from rank 0)."""
    if as_json and is_writer():
        print(json.dumps({"error": {"type": kind, "message": message}}))
    prefix = f"rank {rank()}: " if world_size() > 1 else ""
    print(f"{prefix}error: {message}", file=sys.stderr)
    return status


def human_readable(result: dict[str, Any]) -> str:
    if "models" in result:
        lines = [
            f"{m['id']:<40} {m['arch']:<22} {m['dataset']:<9} {m['method']:<9} "
            + (f"test acc {m['test_accuracy_pct']:.2f}%" if m.get("test_accuracy_pct") is not None else "not evaluated")
            + ("  (no checksum: unverified)" if m.get("checksum") is False else "")
            + ("  (reused: stored by an earlier run with the same inputs)" if m.get("reused") else "")
            for m in result["models"]
        ]
        lines += [f"BROKEN {b['id']}: {b['reason']}" for b in result.get("broken", [])]
        return "\n".join(lines) or "no models"
    return "\n".join(f"{k}: {readable(k, v)}" for k, v in result.items())


def readable(name: str, value: Any) -> str:
    """``value`` as text; a float named as a residual, spread or error (:func:`analysis.units.is_small_figure`) in
    scientific notation with three significant digits, inside objects and lists too."""
    if isinstance(value, float) and is_small_figure(name):
        return SCIENTIFIC % value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {readable(str(k), v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(readable(name, v) for v in value) + "]"
    return str(value)


def add_csv_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--csv PATH`` (also write ``what`` there) and ``--force`` (replace an existing file at it)."""
    parser.add_argument("--csv", type=Path, help=f"also write {what} to this new CSV file (outside the workspace)")
    parser.add_argument("--force", action="store_true", help="replace an existing regular file at --csv")


def check_csv(args: argparse.Namespace, workspace: Workspace) -> None:
    """Refuse the ``--csv`` target before any work, by the rules of :func:`fusion.user_files.write_user_file`."""
    if args.csv is not None:
        with flag_named("--csv"):
            check_user_target(args.csv, overwrite=args.force, protected=[workspace.root])


def write_csv(args: argparse.Namespace, workspace: Workspace, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``rows`` written to ``--csv`` (from rank 0 of a distributed run); the summary's ``csv`` entries."""
    if args.csv is None:
        return {}
    if is_writer():
        with flag_named("--csv"):
            write_user_file(args.csv, csv_bytes(rows), overwrite=args.force, protected=[workspace.root])
    return {"csv": str(args.csv), "csv_rows": len(rows)}


@contextmanager
def flag_named(flag: str) -> Iterator[None]:
    """Prefix an :class:`OutputFileError` with the flag whose path it refuses."""
    try:
        yield
    except OutputFileError as exc:
        raise OutputFileError(f"{flag}: {exc}") from exc
