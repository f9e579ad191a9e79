"""The app with Vision Transformers: the Home page's ViT pair, and the Hessian and Loss landscape pages on two ViTs
and their OT fusion."""

from __future__ import annotations

import pytest
from app_helpers import messages, open_app, wait_for_job

import studies.pipeline
from fusion.models import default_spec
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.pipeline import DemoMember, fuse_and_save, train_and_save
from studies.runs import stored_fusion_landscape, stored_hessian

VIT = default_spec("vit", (1, 8, 8), 10)
SMALL_HESSIAN = {
    "samples": 100,
    "iterations": 12,
    "probes": 4,
    "steps": 12,
    "runs": 1,
    "bins": 100,
    "random_directions": 0,
    "batch_parts": 1,
}


def quick_vits(workspace: Workspace) -> tuple[list[str], str]:
    """Two ViTs trained for one epoch and their OT fusion, stored."""
    ids = [train_and_save(workspace, VIT, "digits", TrainConfig(epochs=1, seed=s)).record.id for s in (0, 1)]
    return ids, fuse_and_save(workspace, ids, "ot").record.id


def test_home_builds_the_vit_pair(app_workspace, monkeypatch: pytest.MonkeyPatch):
    quick = [DemoMember(VIT, TrainConfig(epochs=1, lr=2e-3, seed=s)) for s in (0, 1)]
    monkeypatch.setattr(studies.pipeline, "vit_demo_members", lambda: quick)
    at = open_app()
    at.button(key="FormSubmitter:demo-vits-Build the ViT pair").click().run()
    job = wait_for_job()
    assert job is not None and job.status == "done", job
    at.run()
    assert not at.exception
    records = app_workspace.records()
    assert [r.spec.arch for r in records] == ["vit", "vit"] and {r.seed for r in records} == {0, 1}


def test_hessian_page_on_two_vits_and_their_fusion(app_workspace):
    ids, fused = quick_vits(app_workspace)
    at = open_app("pages/hessian.py")
    at.multiselect(key="hessian.models").set_value([ids[0], fused])
    for name, value in SMALL_HESSIAN.items():
        at.number_input(key=f"hessian.{name}").set_value(value)
    at.button(key="FormSubmitter:hessian.form-Compute").click().run()
    job = wait_for_job()
    at.run()
    assert not at.exception and not at.error, messages(at.error)
    assert job is not None and job.status == "done", job.error if job else "no job"
    report = stored_hessian(app_workspace, fused)
    assert report.top.eigenvalues[0] > 0
    assert len(at.dataframe[0].value) == 2


def test_landscape_page_on_a_vit_fusion(app_workspace):
    _, fused = quick_vits(app_workspace)
    at = open_app("pages/loss_landscape.py")
    at.number_input(key="landscape.resolution.plane").set_value(3)
    at.number_input(key="landscape.samples").set_value(100).run()
    at.button(key="FormSubmitter:landscape.form-Compute").click().run()
    job = wait_for_job()
    at.run()
    assert not at.exception and not at.error, messages(at.error)
    assert job is not None and job.status == "done", job.error if job else "no job"
    assert {"A-B", "A-fused", "B-fused", "plane"} <= set(stored_fusion_landscape(app_workspace, fused))


def test_transport_maps_page_shows_whole_heads_of_a_vit_fusion(app_workspace):
    _, fused = quick_vits(app_workspace)
    at = open_app("pages/transport_maps.py")
    at.selectbox(key="maps.model").set_value(fused).run()
    at.selectbox(key="maps.group").set_value("blocks.0.attn.q").run()
    assert not at.exception and not at.error, messages(at.error)
    assert at.radio(key="maps.heads").value == "whole heads"
    assert "4 attention heads" in at.caption[-1].value
    at.radio(key="maps.heads").set_value("dimensions").run()
    assert not at.exception
    at.selectbox(key="maps.group").set_value("blocks.0.fc1").run()
    assert not at.exception
    assert "maps.heads" not in [r.key for r in at.radio], "free neurons have no heads view"


def test_neuron_norms_page_shows_the_heads_of_a_vit_transplant(app_workspace):
    ids, _ = quick_vits(app_workspace)
    transplanted = fuse_and_save(app_workspace, ids, "transplant").record.id
    at = open_app("pages/neuron_norms.py")
    at.selectbox(key="norms.model").set_value(transplanted).run()
    assert not at.exception and not at.error, messages(at.error)
    assert "Attention heads" in [s.value for s in at.subheader]
    at.selectbox(key="norms.survival.group").set_value("blocks.0.attn.q").run()
    assert not at.exception
