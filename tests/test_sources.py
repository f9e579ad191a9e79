"""Architecture sources (fusion.sources): torchvision, timm, otfusion's own architectures and a user's factory, built,
stored, imported and fused; each bad input refused with a clear message and nothing stored."""

from __future__ import annotations

import json

import pytest
import torch

from cli.main import main
from fusion.data import dataset_normalization
from fusion.errors import ArchitectureError
from fusion.groups import neuron_groups
from fusion.models import ModelSpec, build_model, conform, default_spec, parameter_count, parameter_estimate
from fusion.registry import fuse
from fusion.sources import TRUSTED_FACTORIES_VARIABLE, trusted_here
from fusion.surgery import permuted
from fusion.workspace import Workspace
from tests.data_helpers import fake_mnist
from tests.fusion_helpers import max_logit_difference, randomised

RGB = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def no_trusted_factories(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(TRUSTED_FACTORIES_VARIABLE, raising=False)
    trusted_here.clear()
    yield
    trusted_here.clear()


def cli(*argv: str, capsys) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "timm:resnet18"])
def test_a_neuron_permuted_copy_of_a_library_resnet_fuses_back_to_its_function(arch: str) -> None:
    spec = ModelSpec(arch, (3, 16, 16), 10)
    model = randomised(spec, seed=0)
    assert parameter_estimate(spec) == parameter_count(model)
    first, second = (build_model(spec, seed=5).state_dict().values() for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    copy = permuted(model, neuron_groups(model, RGB[:2]), seed=3)
    assert max_logit_difference(model, copy, RGB) < 1e-4
    fused = fuse([model, copy], "ot", inputs=RGB, recompute_bn=False)
    assert max(v for v in fused.report.verified if v is not None) < 1e-4
    assert max_logit_difference(model, fused.model, RGB) < 1e-4


def test_timm_adapts_its_stem_to_grey_images_and_torchvision_says_it_cannot() -> None:
    model = build_model(ModelSpec("timm:resnet18", (1, 16, 16), 10), seed=0)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(ArchitectureError, match="takes 3-channel images, the inputs have 1"):
        build_model(ModelSpec("torchvision:resnet18", (1, 16, 16), 10))


@pytest.mark.parametrize(
    ("arch", "fields", "message"),
    [
        ("torchvision:resnet19", {}, "torchvision has no classification model 'resnet19'"),
        ("timm:not_a_net", {}, "timm has no model 'not_a_net'"),
        ("keras:resnet18", {}, "unknown architecture source"),
        ("otfusion:lenet", {}, "unknown seed-repository architecture"),
        ("otfusion:vgg11_nobias", {}, "is the zoo's vgg11 without bias or BatchNorm"),
        ("python:no-colon", {}, "MODULE:CALLABLE"),
        ("torchvision:resnet18", {"width": 0.5}, "apply to the zoo's architectures only"),
        ("torchvision:resnet18", {"batch_norm": True}, "apply to the zoo's architectures only"),
    ],
)
def test_bad_source_specs_name_the_problem(arch: str, fields: dict, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        ModelSpec(arch, (3, 16, 16), 10, **fields)


def test_a_library_model_is_stored_with_its_source_and_rebuilds_exactly(workspace: Workspace) -> None:
    spec = ModelSpec("torchvision:resnet18", (3, 16, 16), 10)
    model = build_model(spec, seed=1)
    record = workspace.save(model, spec=spec, dataset="cifar10", normalization=dataset_normalization("cifar10"))
    loaded, again = workspace.load(record.id)
    assert (
        again.spec == spec
        and json.loads((workspace.model_dir(record.id) / "meta.json").read_text())["spec"]["arch"]
        == "torchvision:resnet18"
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_a_factory_runs_only_when_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec("python:tests.factories:small_net", (1, 8, 8), 10)
    with pytest.raises(ArchitectureError, match="is not trusted"):
        build_model(spec)
    monkeypatch.setenv(TRUSTED_FACTORIES_VARIABLE, "other.module:net, tests.factories:small_net")
    assert parameter_count(build_model(spec, seed=0)) == 64 * 24 + 24 + 24 * 10 + 10


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("tests.factories:raising", "could not be built: ValueError: this factory needs a config file"),
        ("tests.factories:not_a_module", "returned a dict, not a torch.nn.Module"),
        ("tests.factories:missing", "cannot be imported"),
        ("tests.nowhere:net", "cannot be imported"),
    ],
)
def test_a_bad_factory_is_a_clear_error_and_nothing_is_stored(factory: str, message: str, capsys, tmp_path) -> None:
    workspace = tmp_path / "ws"
    code, output = cli(
        "train",
        "--workspace",
        str(workspace),
        "--arch",
        f"python:{factory}",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        capsys=capsys,
    )
    assert code == 1 and message in output["error"]["message"]
    assert Workspace(workspace).records() == []


def test_a_factory_named_on_the_command_line_trains_and_fuses_where_it_is_trusted(
    capsys, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = str(tmp_path / "ws")
    arch = "python:tests.factories:small_net"
    code, trained = cli(
        "train",
        "--workspace",
        workspace,
        "--arch",
        arch,
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--seed",
        "0",
        "1",
        capsys=capsys,
    )
    assert code == 0, trained
    ids = [m["id"] for m in trained["models"]]
    trusted_here.clear()  # a later process: the workspace does not vouch for its models' factory
    code, refused = cli("fuse", "--workspace", workspace, "--method", "ot", "--models", *ids, capsys=capsys)
    assert code == 1 and refused["error"]["type"] == "UntrustedFactoryError", refused
    monkeypatch.setenv(TRUSTED_FACTORIES_VARIABLE, arch.removeprefix("python:"))
    code, fused = cli("fuse", "--workspace", workspace, "--method", "ot", "--models", *ids, capsys=capsys)
    assert code == 0, fused
    assert Workspace(tmp_path / "ws").record(fused["models"][0]["id"]).spec.arch == arch


def test_an_export_naming_an_untrusted_factory_is_refused_on_import(tmp_path, monkeypatch) -> None:
    spec = ModelSpec("python:tests.factories:small_net", (1, 8, 8), 10)
    monkeypatch.setenv(TRUSTED_FACTORIES_VARIABLE, "tests.factories:small_net")
    source = Workspace(tmp_path / "a")
    record = source.save(
        build_model(spec, 0), spec=spec, dataset="digits", normalization=dataset_normalization("digits")
    )
    exported = source.export(record.id, tmp_path / "model.safetensors")
    monkeypatch.delenv(TRUSTED_FACTORIES_VARIABLE)
    trusted_here.clear()
    target = Workspace(tmp_path / "b")
    with pytest.raises(ArchitectureError, match="is not trusted"):
        target.import_checkpoint(exported)
    assert target.records() == []


def otfusion_checkpoint(path, seed: int) -> None:
    """A checkpoint in the layout of otfusion's mnist_models.zip: its state_dict under ``model_state_dict`` beside
    the run's ``args`` and ``test_accuracy``."""
    model = build_model(ModelSpec("otfusion:mlpnet", (1, 28, 28), 10), seed=seed)
    args = {"model_name": "mlpnet", "disable_bias": True, "num_hidden_nodes1": 400, "dataset": "mnist"}
    torch.save({"args": args, "epoch": 10, "test_accuracy": 97.7, "model_state_dict": model.state_dict()}, path)


def test_otfusion_mnist_checkpoints_import_and_fuse_from_the_command_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUSIONLAB_DATA", str(tmp_path / "data"))
    fake_mnist(tmp_path / "data", n=12)
    workspace = str(tmp_path / "ws")
    ids = []
    for seed in (0, 1):
        otfusion_checkpoint(tmp_path / f"model_{seed}.checkpoint", seed)
        code, imported = cli(
            "import",
            "--workspace",
            workspace,
            str(tmp_path / f"model_{seed}.checkpoint"),
            "--arch",
            "otfusion:mlpnet",
            "--dataset",
            "mnist",
            capsys=capsys,
        )
        assert code == 0, imported
        ids.append(imported["models"][0]["id"])
    stored = Workspace(tmp_path / "ws").load(ids[0])[0]
    assert [k for k in stored.state_dict()] == ["fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight"]
    code, fused = cli(
        "fuse", "--workspace", workspace, "--method", "ot", "--models", *ids, "--no-recompute-bn", capsys=capsys
    )
    assert code == 0, fused
    assert Workspace(tmp_path / "ws").record(fused["models"][0]["id"]).spec.arch == "otfusion:mlpnet"


def test_wrong_architecture_weights_name_the_mismatched_parameters(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUSIONLAB_DATA", str(tmp_path / "data"))
    fake_mnist(tmp_path / "data", n=12)
    otfusion_checkpoint(tmp_path / "mlp.checkpoint", 0)
    code, output = cli(
        "import",
        "--workspace",
        str(tmp_path / "ws"),
        str(tmp_path / "mlp.checkpoint"),
        "--arch",
        "mlp",
        "--dataset",
        "mnist",
        capsys=capsys,
    )
    assert code == 1 and "fc1.weight" in output["error"]["message"] and "layers.1.weight" in output["error"]["message"]
    assert Workspace(tmp_path / "ws").records() == []


def test_otfusion_cifar_names_are_the_zoo_s_own_specs() -> None:
    vgg = default_spec("otfusion:vgg11_nobias", (3, 32, 32), 10)
    resnet = default_spec("otfusion:resnet18_nobias_nobn", (3, 32, 32), 10)
    assert (vgg.arch, vgg.bias, vgg.batch_norm, vgg.width) == ("vgg11", False, False, 1.0)
    assert (resnet.arch, resnet.bias, resnet.batch_norm, resnet.width) == ("resnet18", False, False, 1.0)
    names = list(build_model(resnet).state_dict())
    assert names[:2] == ["conv1.weight", "layer1.0.conv1.weight"] and "layer2.0.shortcut.0.weight" in names


def test_cla_refuses_library_models_by_name() -> None:
    models = [build_model(ModelSpec("torchvision:resnet18", (3, 16, 16), 10), s) for s in range(2)]
    with pytest.raises(ArchitectureError, match="model zoo"):
        fuse(models, "cla", inputs=RGB)


def test_a_pruned_library_model_cannot_be_stored_under_its_source_and_the_error_names_the_parameters() -> None:
    spec = ModelSpec("torchvision:resnet18", (3, 16, 16), 10)
    pruned = fuse([build_model(spec, seed=0)], "prune", inputs=RGB, sparsity=0.5).model
    with pytest.raises(ArchitectureError, match=r"widths are fixed.*wrong shapes.*conv1\.weight \(32, 3, 7, 7\)"):
        conform(pruned, spec)
