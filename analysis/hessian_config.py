"""The settings of the Hessian analyses (:class:`HessianConfig`): data, iteration counts, tolerances, seeds and
the limits checked before any work (:mod:`analysis.hessian`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from analysis.grid import step_grid
from fusion.errors import ConfigError
from fusion.problems import Checked, Checks, given
from fusion.records import Record

StepScale = Literal["absolute", "relative", "filter"]
STEP_SCALES: tuple[StepScale, ...] = ("absolute", "relative", "filter")


@dataclass(frozen=True)
class HessianConfig(Record, Checked):
    """Data, iteration counts and seeds of the Hessian analyses.

    ``samples`` examples (``None``: all given) drawn with ``seed``, in batches of ``batch_size`` (the otfusion study
    used test batches of 1000). Top-k: at most ``iterations`` Lanczos steps, stopping at relative residual
    ``tolerance`` (PyHessian's ``maxIter=100``, ``tol=1e-3``), ``top_k`` eigenvalues (3 in the study). Trace: at most
    ``probes`` Rademacher probes (PyHessian's ``maxIter=100``) after deflation by ``deflation`` Lanczos vectors,
    stopping at a relative error bar ``trace_tolerance`` (0: every probe). Density: ``runs`` SLQ runs of ``steps``
    Lanczos steps (PyHessian's ``n_v``, ``iter=100``), a Gaussian kernel of width ``kernel_width`` times the
    spectrum's range, on a grid of ``bins`` points, with full reorthogonalisation when ``reorthogonalize`` (memory
    ``runs * steps * n`` floats). ``cache_graph`` computes each batch's gradient graph once and keeps it for every
    product (memory grows with ``samples``); without it every product recomputes it. ``block_size`` vectors share one
    backward pass.
    ``layers`` adds each layer's diagonal block to :func:`hessian_report` (:meth:`Hessian.layers`).
    Perturbation (:mod:`analysis.perturbation`): the loss at ``θ + t d`` for ``perturb_points`` values of ``t`` from
    ``perturb_low`` to ``perturb_high`` (the otfusion study: -0.5 to 0.5, 21 points, along the unit top eigenvector)
    along every top-k eigenvector and ``random_directions`` random filter-normalised directions, each scaled by
    ``step_scale``: ``absolute`` (unit ``d``, ``t`` is the parameter distance), ``relative`` (``||d|| = ||θ||``,
    ``t`` a fraction of the model's norm) or ``filter`` (every filter of ``d`` as long as the model's, Li et al.
    2018). Eigenvalue spreads come from ``batch_parts`` equal parts of the sample. With ``plane_points``, the surface
    over the same range along the top two eigenvectors (``plane_points`` steps a side). With ``lines_to_parents`` a
    workspace model's curves also follow the line to each parent of its architecture (the parents aligned as its
    fusion aligned them, for ``average``, ``ot`` and ``matching``; :func:`studies.runs.hessian_of`).
    Limits, checked before any work (:func:`check_hessian_cost`): at most ``max_products`` Hessian-vector products,
    ``max_seconds`` estimated seconds and ``max_memory_gb`` estimated GiB; above ``warn_seconds`` a
    :class:`SlowHessianWarning` is issued.
    """

    samples: int | None = field(default=1000, metadata={"help": "examples the loss is averaged over (all when unset)"})
    batch_size: int = field(default=1000, metadata={"help": "examples per forward/backward pass"})
    iterations: int = field(default=100, metadata={"help": "maximum Lanczos steps for the top eigenvalues"})
    tolerance: float = field(
        default=1e-3, metadata={"help": "top-k stop: estimated eigenvalue error relative to |λ_1|"}
    )
    top_k: int = field(default=3, metadata={"help": "number of top eigenvalues"})
    probes: int = field(default=100, metadata={"help": "maximum Hutchinson probes for the trace"})
    deflation: int = field(
        default=20, metadata={"help": "Lanczos vectors deflated from the trace's probes (0: plain Hutchinson)"}
    )
    trace_tolerance: float = field(
        default=1e-2, metadata={"help": "trace stop: error bar relative to |trace| (0: every probe)"}
    )
    steps: int = field(default=100, metadata={"help": "Lanczos steps per density run"})
    runs: int = field(default=4, metadata={"help": "independent density (SLQ) runs"})
    bins: int = field(default=1000, metadata={"help": "grid points of the density"})
    kernel_width: float = field(
        default=0.01, metadata={"help": "Gaussian kernel width, relative to the spectrum's range"}
    )
    reorthogonalize: bool = field(
        default=True, metadata={"help": "fully reorthogonalise the density's Lanczos vectors"}
    )
    cache_graph: bool = field(default=True, metadata={"help": "keep each batch's gradient graph for all products"})
    block_size: int = field(default=1, metadata={"help": "vectors per Hessian-vector backward pass"})
    seed: int = field(default=0, metadata={"help": "seed of the sample, start vectors and probes"})
    layers: bool = field(
        default=False, metadata={"help": "also each layer's top eigenvalue and trace (one analysis per layer)"}
    )
    max_products: int = field(default=10_000, metadata={"help": "refuse runs needing more Hessian-vector products"})
    max_seconds: float = field(default=6 * 3600.0, metadata={"help": "refuse runs estimated to take longer (s)"})
    warn_seconds: float = field(default=600.0, metadata={"help": "warn for runs estimated to take longer (s)"})
    max_memory_gb: float = field(default=16.0, metadata={"help": "refuse runs estimated to hold more memory (GiB)"})
    perturb_low: float = field(default=-0.5, metadata={"help": "first step t of the perturbation curves"})
    perturb_high: float = field(default=0.5, metadata={"help": "last step t of the perturbation curves"})
    perturb_points: int = field(default=21, metadata={"help": "steps t per perturbation curve"})
    step_scale: StepScale = field(
        default="absolute",
        metadata={"help": "t as parameter distance, relative to the model's norm, or filter-normalised"},
    )
    random_directions: int = field(default=3, metadata={"help": "random filter-normalised directions (a band)"})
    batch_parts: int = field(default=4, metadata={"help": "sample parts for the eigenvalues' spread over data"})
    plane_points: int = field(
        default=0, metadata={"help": "steps a side of the surface along the top two eigenvectors (0: none)"}
    )
    lines_to_parents: bool = field(
        default=True,
        metadata={"help": "also perturb along the line to each parent (aligned, for fusions by averaging)"},
    )

    def check(self, checks: Checks) -> None:
        if self.samples is not None:
            checks.whole("samples", self.samples, 1)
        counts_valid = [
            checks.whole(name, getattr(self, name), low, high)
            for name, low, high in (
                ("batch_size", 1, 65536),
                ("iterations", 1, 100_000),
                ("top_k", 1, 10_000),
                ("probes", 1, 1_000_000),
                ("deflation", 0, 100_000),
                ("steps", 1, 100_000),
                ("runs", 1, 10_000),
                ("bins", 50, 1_000_000),
                ("block_size", 1, 4096),
                ("perturb_points", 3, 1001),
                ("random_directions", 0, 100),
                ("batch_parts", 1, 100),
                ("plane_points", 0, 201),
            )
        ]
        if all(counts_valid):
            if self.iterations < self.top_k:
                checks.add(
                    "iterations", f"{{iterations}} ({self.iterations}) must be at least {{top_k}} ({self.top_k})"
                )
            if self.plane_points and (self.plane_points < 3 or self.top_k < 2):
                checks.add(
                    "plane_points",
                    f"{{plane_points}} must be 0 (no plane) or at least 3 with {{top_k}} of at least 2, got "
                    f"{self.plane_points} with {{top_k}} {self.top_k}",
                )
        checks.number("tolerance", self.tolerance, 0, 1, above=True, below=True)
        checks.number("trace_tolerance", self.trace_tolerance, 0, 1, below=True)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (self.perturb_low, self.perturb_high)):
            checks.add(
                "perturb_low",
                f"{{perturb_low}} and {{perturb_high}} must be numbers, got {given(self.perturb_low)}, "
                f"{given(self.perturb_high)}",
            )
        elif not self.perturb_low < self.perturb_high:
            checks.add(
                "perturb_low",
                f"{{perturb_low}} ({self.perturb_low}) must be below {{perturb_high}} ({self.perturb_high})",
            )
        elif all(counts_valid):
            for points in sorted({self.perturb_points, self.plane_points} - {0}):
                try:
                    step_grid(self.perturb_low, self.perturb_high, points, "{perturb_low}..{perturb_high}")
                except ConfigError as exc:  # its message names the range by the two fields, in braces
                    checks.add("perturb_low", str(exc))
        checks.choice("step_scale", self.step_scale, STEP_SCALES)
        checks.number("kernel_width", self.kernel_width, 0, 1, above=True)
        checks.seed("seed", self.seed)
        checks.whole("max_products", self.max_products, 1)
        for name in ("max_seconds", "warn_seconds", "max_memory_gb"):
            checks.number(name, getattr(self, name), 0, above=True)
