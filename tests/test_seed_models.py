"""The seed repositories' architectures (fusion.zoo.seeds): Neuron Transplantation's and CLAFusion's networks have
their repositories' parameter names and shapes, their names for zoo networks are zoo specs, and each architecture
fuses and imports like any other.

The parameter lists below were written down from the repositories' own classes (masterbaer/neuron-transplantation
``model.py``; hsgser/clafusion ``model.py``, ``cifar/models/vgg.py``, ``cifar/models/resnet.py`` through
``cifar/train.py``'s ``get_model``), 10 classes: ``NAME:SIZExSIZE`` in state_dict order. Their classes, given these
state_dicts, compute the same logits as ours (checked against the fetched code, which CI cannot import).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from cli.main import main
from fusion.errors import ArchitectureError
from fusion.groups import neuron_groups
from fusion.models import ModelSpec, build_model, default_spec
from fusion.registry import fuse
from fusion.sources import SOURCES
from fusion.surgery import permuted
from fusion.workspace import Workspace
from fusion.zoo import source_choices
from fusion.zoo.seeds import SEED_MODELS, ZOO_ALIASES
from tests.data_helpers import fake_mnist, make_folder
from tests.fusion_helpers import max_logit_difference

STATE = {
    "nt:smallnn": (
        (3, 32, 32),
        "fc1.weight:512x3072 fc1.bias:512 fc2.weight:512x512 fc2.bias:512 fc3.weight:512x512 fc3.bias:512 "
        "fc4.weight:10x512 fc4.bias:10",
    ),
    "nt:smallnn_nobias": (
        (3, 32, 32),
        "fc1.weight:512x3072 fc2.weight:512x512 fc3.weight:512x512 fc4.weight:10x512",
    ),
    "nt:smallnn_combined": (
        (3, 32, 32),
        "fc1.weight:2048x3072 fc1.bias:2048 fc2.weight:2048x2048 fc2.bias:2048 fc3.weight:2048x2048 "
        "fc3.bias:2048 fc4.weight:10x2048 fc4.bias:10",
    ),
    "nt:adaptive2_512x4": (
        (3, 32, 32),
        "input_layer.weight:512x3072 hidden_layers.0.weight:512x512 hidden_layers.1.weight:512x512 "
        "hidden_layers.2.weight:512x512 output_layer.weight:10x512",
    ),
    "nt:lenet_nobias": (
        (3, 32, 32),
        "conv1.weight:6x3x5x5 conv2.weight:16x6x5x5 fc1.weight:120x400 fc2.weight:84x120 fc3.weight:10x84",
    ),
    "nt:lenet_mnist_nobias": (
        (1, 28, 28),
        "feature.0.weight:6x1x5x5 feature.3.weight:16x6x5x5 classifier.1.weight:120x400 "
        "classifier.3.weight:84x120 classifier.5.weight:10x84",
    ),
    "clafusion:mlpnet_400_200_100_50": (
        (1, 28, 28),
        "fc1.weight:400x784 fc2.weight:200x400 fc3.weight:100x200 fc4.weight:50x100 fc5.weight:10x50",
    ),
    "clafusion:mlpnet_400_200_100_50_25": (
        (1, 28, 28),
        "fc1.weight:400x784 fc2.weight:200x400 fc3.weight:100x200 fc4.weight:50x100 fc5.weight:25x50 fc6.weight:10x25",
    ),
    "clafusion:vgg8_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.3.weight:128x64x3x3 features.6.weight:256x128x3x3 "
        "features.9.weight:512x256x3x3 features.12.weight:512x512x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg11_half_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.3.weight:64x64x3x3 features.6.weight:128x64x3x3 "
        "features.8.weight:128x128x3x3 features.11.weight:256x128x3x3 features.13.weight:256x256x3x3 "
        "features.16.weight:256x256x3x3 features.18.weight:512x256x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg11_doub_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.3.weight:256x64x3x3 features.6.weight:512x256x3x3 "
        "features.8.weight:512x512x3x3 features.11.weight:1024x512x3x3 features.13.weight:1024x1024x3x3 "
        "features.16.weight:1024x1024x3x3 features.18.weight:512x1024x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg11_quad_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.3.weight:512x64x3x3 features.6.weight:1024x512x3x3 "
        "features.8.weight:1024x1024x3x3 features.11.weight:2048x1024x3x3 features.13.weight:2048x2048x3x3 "
        "features.16.weight:2048x2048x3x3 features.18.weight:512x2048x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg13_student_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.2.weight:64x64x3x3 features.5.weight:64x64x3x3 "
        "features.7.weight:64x64x3x3 features.10.weight:128x64x3x3 features.12.weight:128x128x3x3 "
        "features.15.weight:256x128x3x3 features.17.weight:256x256x3x3 features.20.weight:256x256x3x3 "
        "features.22.weight:512x256x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg13_half_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.2.weight:32x64x3x3 features.5.weight:64x32x3x3 "
        "features.7.weight:64x64x3x3 features.10.weight:128x64x3x3 features.12.weight:128x128x3x3 "
        "features.15.weight:256x128x3x3 features.17.weight:256x256x3x3 features.20.weight:256x256x3x3 "
        "features.22.weight:512x256x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg13_doub_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.2.weight:128x64x3x3 features.5.weight:256x128x3x3 "
        "features.7.weight:256x256x3x3 features.10.weight:512x256x3x3 features.12.weight:512x512x3x3 "
        "features.15.weight:1024x512x3x3 features.17.weight:1024x1024x3x3 features.20.weight:1024x1024x3x3 "
        "features.22.weight:512x1024x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg13_quad_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.2.weight:256x64x3x3 features.5.weight:512x256x3x3 "
        "features.7.weight:512x512x3x3 features.10.weight:1024x512x3x3 features.12.weight:1024x1024x3x3 "
        "features.15.weight:2048x1024x3x3 features.17.weight:2048x2048x3x3 features.20.weight:2048x2048x3x3 "
        "features.22.weight:512x2048x3x3 classifier.weight:10x512",
    ),
    "clafusion:vgg19_nobias": (
        (3, 32, 32),
        "features.0.weight:64x3x3x3 features.2.weight:64x64x3x3 features.5.weight:128x64x3x3 "
        "features.7.weight:128x128x3x3 features.10.weight:256x128x3x3 features.12.weight:256x256x3x3 "
        "features.14.weight:256x256x3x3 features.16.weight:256x256x3x3 features.19.weight:512x256x3x3 "
        "features.21.weight:512x512x3x3 features.23.weight:512x512x3x3 features.25.weight:512x512x3x3 "
        "features.28.weight:512x512x3x3 features.30.weight:512x512x3x3 features.32.weight:512x512x3x3 "
        "features.34.weight:512x512x3x3 classifier.weight:10x512",
    ),
    "clafusion:resnet18_nobn": (
        (3, 32, 32),
        "conv1.weight:64x3x3x3 layer1.0.conv1.weight:64x64x3x3 layer1.0.conv2.weight:64x64x3x3 "
        "layer1.1.conv1.weight:64x64x3x3 layer1.1.conv2.weight:64x64x3x3 layer2.0.conv1.weight:128x64x3x3 "
        "layer2.0.conv2.weight:128x128x3x3 layer2.0.shortcut.0.weight:128x64x1x1 "
        "layer2.1.conv1.weight:128x128x3x3 layer2.1.conv2.weight:128x128x3x3 "
        "layer3.0.conv1.weight:256x128x3x3 layer3.0.conv2.weight:256x256x3x3 "
        "layer3.0.shortcut.0.weight:256x128x1x1 layer3.1.conv1.weight:256x256x3x3 "
        "layer3.1.conv2.weight:256x256x3x3 layer4.0.conv1.weight:512x256x3x3 "
        "layer4.0.conv2.weight:512x512x3x3 layer4.0.shortcut.0.weight:512x256x1x1 "
        "layer4.1.conv1.weight:512x512x3x3 layer4.1.conv2.weight:512x512x3x3 linear.weight:10x512 "
        "linear.bias:10",
    ),
    "clafusion:resnet34_nobn": (
        (3, 32, 32),
        "conv1.weight:64x3x3x3 layer1.0.conv1.weight:64x64x3x3 layer1.0.conv2.weight:64x64x3x3 "
        "layer1.1.conv1.weight:64x64x3x3 layer1.1.conv2.weight:64x64x3x3 layer1.2.conv1.weight:64x64x3x3 "
        "layer1.2.conv2.weight:64x64x3x3 layer2.0.conv1.weight:128x64x3x3 layer2.0.conv2.weight:128x128x3x3 "
        "layer2.0.shortcut.0.weight:128x64x1x1 layer2.1.conv1.weight:128x128x3x3 "
        "layer2.1.conv2.weight:128x128x3x3 layer2.2.conv1.weight:128x128x3x3 "
        "layer2.2.conv2.weight:128x128x3x3 layer2.3.conv1.weight:128x128x3x3 "
        "layer2.3.conv2.weight:128x128x3x3 layer3.0.conv1.weight:256x128x3x3 "
        "layer3.0.conv2.weight:256x256x3x3 layer3.0.shortcut.0.weight:256x128x1x1 "
        "layer3.1.conv1.weight:256x256x3x3 layer3.1.conv2.weight:256x256x3x3 "
        "layer3.2.conv1.weight:256x256x3x3 layer3.2.conv2.weight:256x256x3x3 "
        "layer3.3.conv1.weight:256x256x3x3 layer3.3.conv2.weight:256x256x3x3 "
        "layer3.4.conv1.weight:256x256x3x3 layer3.4.conv2.weight:256x256x3x3 "
        "layer3.5.conv1.weight:256x256x3x3 layer3.5.conv2.weight:256x256x3x3 "
        "layer4.0.conv1.weight:512x256x3x3 layer4.0.conv2.weight:512x512x3x3 "
        "layer4.0.shortcut.0.weight:512x256x1x1 layer4.1.conv1.weight:512x512x3x3 "
        "layer4.1.conv2.weight:512x512x3x3 layer4.2.conv1.weight:512x512x3x3 "
        "layer4.2.conv2.weight:512x512x3x3 linear.weight:10x512 linear.bias:10",
    ),
}
"""``(input shape, the parameter names and shapes)`` of each seed architecture that is a module of its own, on
10 classes."""

ZOO_SPECS = {
    "nt:vgg11_nobias": (("vgg11", False, False, 1.0), 9, 9222848),
    "nt:resnet18_nobias": (("resnet18", False, True, 1.0), 121, 11183572),
    "clafusion:vgg11_nobias": (("vgg11", False, False, 1.0), 9, 9222848),
    "clafusion:vgg13_nobias": (("vgg13", False, False, 1.0), 11, 9407168),
    "clafusion:vgg16_nobias": (("vgg16", False, False, 1.0), 14, 14715584),
    "clafusion:resnet18": (("resnet18", True, True, 1.0), 122, 11183582),
    "clafusion:resnet18_nobias": (("resnet18", False, True, 1.0), 121, 11183572),
    "clafusion:resnet18_nobias_nobn": (("resnet18", False, False, 1.0), 21, 11164352),
    "clafusion:resnet18_eighth_nobias_nobn": (("resnet18", False, False, 0.125), 21, 175192),
    "clafusion:resnet18_fourth_nobias_nobn": (("resnet18", False, False, 0.25), 21, 699056),
    "clafusion:resnet18_half_nobias_nobn": (("resnet18", False, False, 0.5), 21, 2792800),
    "clafusion:resnet18_doub_nobias_nobn": (("resnet18", False, False, 2.0), 21, 44643712),
    "clafusion:resnet34": (("resnet34", True, True, 1.0), 218, 21299182),
    "clafusion:resnet34_nobias": (("resnet34", False, True, 1.0), 217, 21299172),
    "clafusion:resnet34_nobias_nobn": (("resnet34", False, False, 1.0), 37, 21265088),
    "clafusion:resnet34_eighth_nobias_nobn": (("resnet34", False, False, 0.125), 37, 333016),
    "clafusion:resnet34_fourth_nobias_nobn": (("resnet34", False, False, 0.25), 37, 1330352),
    "clafusion:resnet34_half_nobias_nobn": (("resnet34", False, False, 0.5), 37, 5317984),
    "clafusion:resnet34_doub_nobias_nobn": (("resnet34", False, False, 2.0), 37, 85046656),
}
"""Each repository name of a zoo network: ``((arch, bias, batch_norm, width), state entries, state elements)`` of its
repository's class on 3x32x32 inputs and 10 classes."""

NEW_SEED_MODELS = [arch for arch in SEED_MODELS if arch.split(":")[0] in ("nt", "clafusion")]
WIDE = tuple(f"clafusion:vgg{depth}_{size}_nobias" for depth in (11, 13) for size in ("doub", "quad"))
"""Wide copies of smaller plans whose fusion and import take most of this file's time: their names and shapes are
checked like the others', their fusion and import through the narrower plans of the same module."""
LIGHT_SEED_MODELS = [arch for arch in NEW_SEED_MODELS if arch not in WIDE]


def parameter_shapes(text: str) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(int(size) for size in shape.split("x"))
        for name, _, shape in (item.partition(":") for item in text.split())
    }


def cli(*argv: str, capsys) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_every_new_seed_module_has_a_frozen_parameter_list() -> None:
    assert sorted(STATE) == sorted(NEW_SEED_MODELS)


@pytest.mark.parametrize("arch", NEW_SEED_MODELS)
def test_a_seed_architecture_has_the_parameter_names_and_shapes_of_its_repository(arch: str) -> None:
    shape, expected = STATE[arch]
    state = build_model(ModelSpec(arch, shape, 10)).state_dict()
    assert {name: tuple(tensor.shape) for name, tensor in state.items()} == parameter_shapes(expected)
    assert list(state) == list(parameter_shapes(expected))


@pytest.mark.parametrize("arch", sorted(ZOO_SPECS))
def test_a_seed_repository_name_of_a_zoo_network_is_that_zoo_spec(arch: str) -> None:
    (zoo_arch, bias, batch_norm, width), entries, elements = ZOO_SPECS[arch]
    spec = default_spec(arch, (3, 32, 32), 10)
    assert (spec.arch, spec.bias, spec.batch_norm, spec.width) == (zoo_arch, bias, batch_norm, width)
    state = build_model(spec).state_dict()
    assert (len(state), sum(math.prod(tensor.shape) for tensor in state.values())) == (entries, elements)


@pytest.mark.parametrize("source", ["nt", "clafusion"])
def test_each_seed_repository_is_a_source_offering_its_modules_then_its_zoo_names(source: str) -> None:
    assert source in SOURCES
    own = [arch for arch in SEED_MODELS if arch.startswith(f"{source}:")]
    aliases = [arch for arch in ZOO_ALIASES if arch.startswith(f"{source}:")]
    assert own and aliases and source_choices(source) == (*own, *aliases)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("nt:resnet18_nobias", "is the zoo's resnet18 with BatchNorm, without bias: build it with default_spec"),
        ("clafusion:resnet34_half_nobias_nobn", "is the zoo's resnet34 without bias or BatchNorm, width x0.5"),
        ("clafusion:vgg11", "unknown seed-repository architecture 'clafusion:vgg11'; known: clafusion:mlpnet_400"),
        ("nt:vit", "unknown seed-repository architecture"),
    ],
)
def test_a_seed_name_that_is_no_module_of_its_own_is_refused_as_a_stored_arch(arch: str, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        ModelSpec(arch, (3, 32, 32), 10)


@pytest.mark.parametrize(
    ("arch", "shape", "message"),
    [
        ("nt:lenet_nobias", (1, 8, 8), "nt:lenet_nobias needs larger inputs than 8x8"),
        ("nt:lenet_mnist_nobias", (1, 8, 8), "nt:lenet_mnist_nobias needs larger inputs than 8x8"),
        ("clafusion:vgg8_nobias", (3, 16, 16), "pool 5 times: inputs of \\(3, 16, 16\\) are too small"),
    ],
)
def test_inputs_too_small_for_a_seed_architecture_are_refused(arch: str, shape: tuple, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        build_model(ModelSpec(arch, shape, 10))


@pytest.mark.parametrize("arch", LIGHT_SEED_MODELS)
def test_a_neuron_shuffled_copy_of_a_seed_architecture_fuses_back_to_its_function(arch: str) -> None:
    shape = STATE[arch][0]
    model = build_model(ModelSpec(arch, shape, 10), seed=0).eval()
    inputs = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
    copy = permuted(model, neuron_groups(model, inputs[:2]), seed=3)
    assert not torch.equal(next(iter(copy.state_dict().values())), next(iter(model.state_dict().values())))
    with torch.no_grad():
        scale = float(model(inputs).abs().max())
    assert max_logit_difference(model, copy, inputs) <= 1e-4 * scale
    fused = fuse([model, copy], "ot", inputs=inputs, recompute_bn=False)
    assert max_logit_difference(model, fused.model, inputs) <= 1e-4 * scale


def dataset_for(arch: str, tmp_path) -> tuple[str, tuple[int, int, int], int]:
    """A dataset the architecture fits, by its first layer: digits (1x8x8, 10 classes) for an MLP, fake MNIST
    (1x28x28, 10 classes) for a one-channel conv, else a folder of 3x32x32 colour images in 3 classes."""
    first = next(iter(parameter_shapes(STATE[arch][1]).values()))
    if len(first) == 2:
        return "digits", (1, 8, 8), 10
    if first[1] == 1:
        fake_mnist(tmp_path / "data", n=12)
        return "mnist", (1, 28, 28), 10
    return f"imagefolder:{make_folder(tmp_path / 'colours', per_class=4, size=(32, 32))}@32", (3, 32, 32), 3


@pytest.mark.parametrize("arch", LIGHT_SEED_MODELS)
def test_a_seed_architecture_state_dict_imports_from_the_command_line(arch: str, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUSIONLAB_DATA", str(tmp_path / "data"))
    dataset, shape, classes = dataset_for(arch, tmp_path)
    state = build_model(ModelSpec(arch, shape, classes), seed=1).state_dict()
    torch.save(state, tmp_path / "model.pt")
    code, imported = cli(
        "import",
        "--workspace",
        str(tmp_path / "ws"),
        str(tmp_path / "model.pt"),
        "--arch",
        arch,
        "--dataset",
        dataset,
        capsys=capsys,
    )
    assert code == 0, imported
    stored, record = Workspace(tmp_path / "ws").load(imported["models"][0]["id"])
    assert record.spec.arch == arch
    assert all(torch.equal(stored.state_dict()[name], tensor) for name, tensor in state.items())


def test_a_seed_repository_name_of_a_zoo_network_imports_as_that_zoo_spec(capsys, tmp_path) -> None:
    dataset = f"imagefolder:{make_folder(tmp_path / 'colours', per_class=4, size=(32, 32))}@32"
    arch = "clafusion:resnet18_eighth_nobias_nobn"
    torch.save(build_model(default_spec(arch, (3, 32, 32), 3), seed=1).state_dict(), tmp_path / "model.pt")
    code, imported = cli(
        "import",
        "--workspace",
        str(tmp_path / "ws"),
        str(tmp_path / "model.pt"),
        "--arch",
        arch,
        "--dataset",
        dataset,
        capsys=capsys,
    )
    assert code == 0, imported
    spec = Workspace(tmp_path / "ws").record(imported["models"][0]["id"]).spec
    assert (spec.arch, spec.bias, spec.batch_norm, spec.width) == ("resnet18", False, False, 0.125)
