"""Pretrained weights from the local torchvision and Hugging Face caches (fusion.pretrained): found offline, copied
where name and shape agree, never downloaded unless asked, and refused with a clear error otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from cli.main import main
from fusion.errors import ArchitectureError, CheckpointError
from fusion.models import build_model, default_spec
from fusion.pretrained import initialise, pretrained_weights
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.pipeline import train_and_save


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "hub" / "checkpoints"


def cache_resnet18(checkpoints: Path) -> dict[str, torch.Tensor]:
    """A 1,000-class torchvision ResNet-18 state saved where torchvision caches ResNet18_Weights.IMAGENET1K_V1."""
    torch.manual_seed(11)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")
    return state


def test_cached_torchvision_weights_initialise_all_but_a_head_for_other_classes(torch_home: Path) -> None:
    cached = cache_resnet18(torch_home)
    weights, state = pretrained_weights("torchvision:resnet18")
    assert (weights.tag, Path(weights.path).name) == ("IMAGENET1K_V1", "resnet18-f37072fd.pth")
    model = build_model(default_spec("torchvision:resnet18", (3, 32, 32), 10), seed=0)
    head = model.fc.weight.detach().clone()
    report = initialise(model, weights, state)
    assert report.kept == ("fc.bias", "fc.weight")
    assert report.loaded == len(cached) - 2
    assert torch.equal(model.fc.weight, head)
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, cached[key]), key


def test_weights_missing_from_the_cache_are_refused_without_a_download(torch_home: Path) -> None:
    with pytest.raises(CheckpointError, match="not in the local cache.*allow the download"):
        pretrained_weights("torchvision:resnet18")


def test_a_failed_download_is_a_checkpoint_error(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="could not be downloaded: network unreachable"):
        pretrained_weights("torchvision:resnet18", download=True)


def test_unknown_tags_and_sources_are_refused_by_name(torch_home: Path) -> None:
    with pytest.raises(ArchitectureError, match="no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        pretrained_weights("torchvision:resnet18", "IMAGENET9K")
    with pytest.raises(ArchitectureError, match="torchvision: or timm:"):
        pretrained_weights("otfusion:mlpnet")


def test_cached_pickles_load_without_running_code(torch_home: Path) -> None:
    torch_home.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1), "hook": Path("/")}, torch_home / "resnet18-f37072fd.pth")
    with pytest.raises(CheckpointError, match="cannot be read"):
        pretrained_weights("torchvision:resnet18")


def test_weights_of_another_architecture_are_refused(torch_home: Path) -> None:
    cache_resnet18(torch_home)
    weights, state = pretrained_weights("torchvision:resnet18")
    model = build_model(default_spec("torchvision:resnet34", (3, 32, 32), 10), seed=0)
    with pytest.raises(CheckpointError, match=r"do not fit the model: the model's layer1\.2\.bn1\.bias"):
        initialise(model, weights, state)


@pytest.fixture
def hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """timm's resnet18.a1_in1k in a Hugging Face cache laid out as huggingface_hub lays it out."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repository = tmp_path / "models--timm--resnet18.a1_in1k"
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text("0" * 40)
    snapshot = repository / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    import timm

    torch.manual_seed(12)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18", num_classes=1000).state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    return state


def test_a_timm_network_trains_from_cached_weights_and_records_them(hugging_face_cache, workspace) -> None:
    spec = default_spec("timm:resnet18", (1, 8, 8), 10)
    config = TrainConfig(epochs=1, batch_size=256, seed=0)
    weights, state = pretrained_weights("timm:resnet18")
    assert weights.tag == "a1_in1k"
    model = build_model(spec, seed=0)
    report = initialise(model, weights, state)
    assert set(report.kept) == {"conv1.weight", "fc.weight", "fc.bias"}
    assert torch.equal(model.layer4[1].conv2.weight, hugging_face_cache["layer4.1.conv2.weight"])

    stored = train_and_save(workspace, spec, "digits", config, pretrained="default")
    provenance = stored.record.provenance
    assert provenance["pretrained"]["weights"]["tag"] == "a1_in1k"
    assert provenance["pretrained"]["loaded"] == report.loaded
    assert train_and_save(workspace, spec, "digits", config, pretrained="default").reused
    assert not train_and_save(workspace, spec, "digits", config).reused


def test_the_command_line_trains_from_cached_weights_and_refuses_a_network_without_any(
    hugging_face_cache, torch_home: Path, isolated_fusionlab_home: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["train", "--dataset", "digits", "--epochs", "1", "--json", "--quiet"]
    assert main([*args, "--arch", "timm:resnet18", "--pretrained"]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    record = Workspace(isolated_fusionlab_home / "workspace").record(model["id"])
    assert record.provenance["pretrained"]["weights"]["arch"] == "timm:resnet18"

    assert main([*args, "--arch", "mlp", "--pretrained"]) == 1
    assert "torchvision: or timm:" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert main([*args, "--arch", "timm:resnet34", "--pretrained"]) == 1
    assert "not in the local Hugging Face cache" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert len(Workspace(isolated_fusionlab_home / "workspace").records()) == 1
