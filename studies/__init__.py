"""Workflows over the workspace: fuse-and-save (:mod:`studies.pipeline`), method comparisons
(:mod:`studies.comparison`), the analyses of :mod:`analysis` run on stored models with their results kept as records
(:mod:`studies.runs`), the Neuron Transplantation story (:mod:`studies.story`), the generalization study
(:mod:`studies.seed_study`), sharpness across the workspace (:mod:`studies.sharpness`) and sweeps
(:mod:`studies.sweeps`). Nothing here imports Streamlit.

    from studies import compare_methods, hessian_of

The names below are imported on first use.
"""

from __future__ import annotations

from fusion.exports import lazy_exports

EXPORTS: dict[str, str] = {
    "compare_methods": "studies.comparison",
    "compare_fusion": "studies.comparison",
    "FusionComparison": "studies.comparison",
    "Score": "studies.scores",
    "hessian_of": "studies.runs",
    "landscape_of": "studies.runs",
    "fusion_landscape": "studies.runs",
    "fuse_and_save": "studies.pipeline",
    "train_and_save": "studies.pipeline",
    "finetune_and_save": "studies.pipeline",
    "build_demo_ensemble": "studies.pipeline",
}
__all__ = sorted(EXPORTS)

__getattr__, __dir__ = lazy_exports("studies", globals(), EXPORTS)
