"""The numbers behind the analyses as flat rows of plain values, one per point: the form of the ``--csv`` files of
the analysis commands (and of their JSON)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis.figures import plain
from analysis.hessian import HessianReport
from analysis.landscape import METRIC_NAMES, GridMetrics, InterpolationResult, PlaneResult, RandomDirectionsResult
from analysis.perturbation import curve_kind
from analysis.units import in_percent, percent


def csv_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """``rows`` as UTF-8 CSV: a header of every key in order of first appearance, one line per row (a key a row
    lacks, and ``None``, as an empty field).

    >>> csv_bytes([{"t": 0.0, "loss": 1.5}, {"t": 0.5, "accuracy": 90.0}]).decode().splitlines()
    ['t,loss,accuracy', '0.0,1.5,', '0.5,,90.0']
    """
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: plain(v) for k, v in row.items()} for row in rows)
    return text.getvalue().encode()


def curve_rows(reports: Mapping[str, HessianReport]) -> list[dict[str, Any]]:
    """One row per point of every perturbation curve of ``reports`` (keyed by the model's label): model, direction,
    kind, split, step scale, ``t``, loss and accuracy (%, ``accuracy_pct``)."""
    rows = []
    for label, report in reports.items():
        for curve in report.curves:
            for t, loss, accuracy in zip(curve.ts, curve.loss, curve.accuracy):
                rows.append(
                    {
                        "model": label,
                        "direction": curve.label,
                        "kind": curve_kind(curve),
                        "split": curve.split or report.split,
                        "scale": curve.scale,
                        "t": float(t),
                        "loss": plain(float(loss)),
                        "accuracy_pct": plain(percent(float(accuracy))),
                    }
                )
    return rows


def metric_row(metrics: GridMetrics, index: tuple[int, ...]) -> dict[str, Any]:
    return in_percent({name: plain(float(getattr(metrics, name)[index])) for name in METRIC_NAMES})


def landscape_rows(result: InterpolationResult | PlaneResult | RandomDirectionsResult) -> list[dict[str, Any]]:
    """One row per evaluated point: its coordinates (``t``; ``x, y``; ``alpha`` or ``alpha, beta``) and the train
    and test loss and accuracy (%: ``train_accuracy_pct``, ``test_accuracy_pct``) there."""
    if isinstance(result, InterpolationResult):
        return [{"t": float(t), **metric_row(result.metrics, (i,))} for i, t in enumerate(result.ts)]
    if isinstance(result, PlaneResult):
        return [
            {"x": float(x), "y": float(y), **metric_row(result.metrics, (j, i))}
            for j, y in enumerate(result.y)
            for i, x in enumerate(result.x)
        ]
    alphas = np.asarray(result.alphas)
    if result.dims == 1:
        return [{"alpha": float(a), **metric_row(result.metrics, (i,))} for i, a in enumerate(alphas)]
    return [
        {"alpha": float(a), "beta": float(b), **metric_row(result.metrics, (j, i))}
        for j, b in enumerate(alphas)
        for i, a in enumerate(alphas)
    ]
