"""The settings of the Hessian analyses (:class:`HessianConfig`): data, iteration counts, tolerances, seeds and
the limits checked before any work (:mod:`analysis.hessian`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from analysis.grid import step_grid
from fusion.errors import ConfigError
from fusion.records import Record
from fusion.seeds import check_seed

StepScale = Literal["absolute", "relative", "filter"]
STEP_SCALES: tuple[StepScale, ...] = ("absolute", "relative", "filter")


@dataclass(frozen=True)
class HessianConfig(Record):
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
    ``layers`` adds each layer's diagonal block to :func:`hessian_report` (:func:`layerwise_hessian`).
    Perturbation (:mod:`analysis.perturbation`): the loss at ``θ + t d`` for ``perturb_points`` values of ``t`` from
    ``perturb_low`` to ``perturb_high`` (the otfusion study: -0.5 to 0.5, 21 points, along the unit top eigenvector)
    along every top-k eigenvector and ``random_directions`` random filter-normalised directions, each scaled by
    ``step_scale``: ``absolute`` (unit ``d``, ``t`` is the parameter distance), ``relative`` (``||d|| = ||θ||``,
    ``t`` a fraction of the model's norm) or ``filter`` (every filter of ``d`` as long as the model's, Li et al.
    2018). Eigenvalue spreads come from ``batch_parts`` equal parts of the sample. With ``plane_points``, the surface
    over the same range along the top two eigenvectors (``plane_points`` steps a side). With ``lines_to_parents`` a
    workspace model's curves also follow the line to each parent of its architecture (the parents aligned as its
    fusion aligned them, for ``average``, ``ot`` and ``matching``; :func:`analysis.runs.hessian_of`).
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

    def __post_init__(self) -> None:
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
            raise ConfigError(f"samples must be a positive integer or None (all), got {self.samples!r}")
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
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if self.iterations < self.top_k:
            raise ConfigError(f"iterations ({self.iterations}) must be at least top_k ({self.top_k})")
        if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance < 1):
            raise ConfigError(f"tolerance must be in (0, 1), got {self.tolerance!r}")
        if not (isinstance(self.trace_tolerance, (int, float)) and 0 <= self.trace_tolerance < 1):
            raise ConfigError(f"trace_tolerance must be in [0, 1), got {self.trace_tolerance!r}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (self.perturb_low, self.perturb_high)):
            raise ConfigError(
                f"perturb_low and perturb_high must be numbers, got {self.perturb_low!r}, {self.perturb_high!r}"
            )
        if not self.perturb_low < self.perturb_high:
            raise ConfigError(f"perturb_low ({self.perturb_low}) must be below perturb_high ({self.perturb_high})")
        for points in {self.perturb_points, self.plane_points} - {0}:
            step_grid(self.perturb_low, self.perturb_high, points, "perturb_low..perturb_high")
        if self.plane_points and (self.plane_points < 3 or self.top_k < 2):
            raise ConfigError(
                f"plane_points must be 0 (no plane) or at least 3 with top_k of at least 2, got {self.plane_points} "
                f"with top_k {self.top_k}"
            )
        if self.step_scale not in STEP_SCALES:
            raise ConfigError(f"step_scale must be one of {', '.join(STEP_SCALES)}, got {self.step_scale!r}")
        if not (isinstance(self.kernel_width, (int, float)) and 0 < self.kernel_width <= 1):
            raise ConfigError(f"kernel_width must be in (0, 1], got {self.kernel_width!r}")
        check_seed(self.seed)
        if not isinstance(self.max_products, int) or self.max_products < 1:
            raise ConfigError(f"max_products must be a positive integer, got {self.max_products!r}")
        for name in ("max_seconds", "warn_seconds", "max_memory_gb"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
