"""What the command line prints: model summaries, strict JSON, readable text, errors, progress on stderr."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from fusion.distributed import is_writer, rank, world_size
from fusion.pipeline import Stored
from fusion.progress import Progress
from fusion.workspace import ModelRecord, Workspace


def record_summary(record: ModelRecord, workspace: Workspace) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "arch": record.spec.describe(),
        "dataset": record.dataset,
        "method": record.method,
        "parents": record.parents,
        "parameters": record.parameters,
        "test_accuracy": record.metrics.get("test_accuracy"),
        "test_loss": record.metrics.get("test_loss"),
        "path": str(workspace.model_dir(record.id)),
    }


def stored_summary(stored: Stored, workspace: Workspace) -> dict[str, Any]:
    """A model a run saved or reused (:class:`fusion.pipeline.Stored`), with ``reused`` saying which."""
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
            + (f"test acc {100 * m['test_accuracy']:.2f}%" if m.get("test_accuracy") is not None else "")
            + ("  (no checksum: unverified)" if m.get("checksum") is False else "")
            + ("  (reused: stored by an earlier run with the same inputs)" if m.get("reused") else "")
            for m in result["models"]
        ]
        lines += [f"BROKEN {b['id']}: {b['reason']}" for b in result.get("broken", [])]
        return "\n".join(lines) or "no models"
    return "\n".join(f"{k}: {v}" for k, v in result.items())
