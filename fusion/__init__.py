"""FusionLab's fusion library: fuse trained networks and keep them in a workspace. Nothing here imports a front end.

    from fusion import fuse
    result = fuse([model_a, model_b], "ot", data=data)   # result.model, result.transports, result.report

The core every method stands on, in the order a reader meets it: :mod:`fusion.groups` (a network as neuron groups),
:mod:`fusion.transport` (the transport plan between two groups' neurons), :mod:`fusion.alignment` (one model aligned
to another, group by group), then :mod:`fusion.methods` (each method) and :mod:`fusion.registry` (the methods by
name, and :func:`fuse`, one entry point for all).

The names below are imported on first use, so ``import fusion.data`` alone stays as quick as it is.
"""

from __future__ import annotations

from fusion.exports import lazy_exports

EXPORTS: dict[str, str] = {
    "fuse": "fusion.registry",
    "FusionResult": "fusion.registry",
    "FusionReport": "fusion.registry",
    "REGISTRY": "fusion.registry",
    "methods": "fusion.registry",
    "resolve": "fusion.registry",
    "Resolved": "fusion.registry",
    "neuron_groups": "fusion.groups",
    "NeuronGroup": "fusion.groups",
    "align": "fusion.alignment",
    "Alignment": "fusion.alignment",
    "AlignOptions": "fusion.alignment",
    "Transport": "fusion.transport",
    "transport_plan": "fusion.transport",
    "ground_cost": "fusion.transport",
    "recompute_batchnorm": "fusion.batchnorm",
    "ModelSpec": "fusion.models",
    "build_model": "fusion.models",
    "default_spec": "fusion.models",
    "Dataset": "fusion.data",
    "load_dataset": "fusion.data",
    "TrainConfig": "fusion.train",
    "evaluate": "fusion.train",
    "train": "fusion.train",
    "Progress": "fusion.progress",
    "default_device": "fusion.device",
    "Workspace": "fusion.workspace",
    "ModelRecord": "fusion.workspace",
    "FusionError": "fusion.errors",
    "ConfigError": "fusion.errors",
    "ArchitectureError": "fusion.errors",
    "DatasetError": "fusion.errors",
    "CheckpointError": "fusion.errors",
    "WorkspaceError": "fusion.errors",
    "Record": "fusion.records",
    "RecordError": "fusion.records",
}
__all__ = sorted(EXPORTS)


__getattr__, __dir__ = lazy_exports("fusion", globals(), EXPORTS)
