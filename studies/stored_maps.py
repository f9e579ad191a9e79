"""The transport maps saved with a fused model in the workspace, read back as :class:`analysis.maps.GroupMap`."""

from __future__ import annotations

from analysis.maps import GroupMap, maps_from_tensors
from fusion.workspace import Workspace


def stored_maps(workspace: Workspace, model_id: str) -> list[GroupMap]:
    """The maps saved with fused model ``model_id`` (its ``transport`` attachment), by parent and then in network
    order (:func:`analysis.maps.maps_from_tensors`); empty if none."""
    tensors = workspace.load_tensors(model_id, "transport") or {}
    return maps_from_tensors(tensors, workspace.record(model_id).provenance.get("report") or {})
