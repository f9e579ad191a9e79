"""The architecture registry (fusion.zoo): every registered architecture builds, its parameter estimate is its built
parameter count, its conformance check refuses what it does not take, an unknown name is refused with the known ones,
and nothing outside the zoo branches on an architecture's name."""

from __future__ import annotations

import dataclasses
import doctest
import re
from pathlib import Path

import grimp
import pytest
import torch

import fusion.zoo
from fusion.errors import ArchitectureError
from fusion.models import default_spec, spec_of, stage_sizes
from fusion.sources import SEED_REPOSITORIES
from fusion.zoo import ARCHITECTURES, ModelSpec, architecture, parameter_count, registered

REGISTERED = [name for source in ("zoo", *SEED_REPOSITORIES) for name in registered(source)]
FUSION = Path(__file__).resolve().parent.parent / "fusion"


def test_the_zoo_and_every_seed_repository_register_architectures() -> None:
    assert ARCHITECTURES == ("mlp", "cnn", "vgg11", "vgg13", "vgg16", "resnet18", "resnet34", "vit")
    assert all(registered(source) for source in SEED_REPOSITORIES)


@pytest.mark.parametrize("name", REGISTERED)
def test_a_registered_architecture_builds_with_its_parameter_estimate(name: str) -> None:
    spec = default_spec(name, (1, 32, 32), 10)
    entry = architecture(name)
    model = entry.build(spec)
    assert parameter_count(model) == entry.parameter_estimate(spec)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 32, 32)], ids=["digits", "cifar"])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("name", [name for name in ARCHITECTURES if name != "vit"])
def test_a_zoo_estimate_counted_from_the_spec_equals_the_built_count(name, batch_norm, input_shape) -> None:
    spec = default_spec(
        name, input_shape, 10, batch_norm=batch_norm, width=0.125 if "width" in architecture(name).knobs else None
    )
    entry = architecture(name)
    assert entry.estimate is not None, "the zoo's convolutional families count from the spec"
    assert entry.parameter_estimate(spec) == parameter_count(entry.build(spec))


@pytest.mark.parametrize("name", REGISTERED)
def test_a_spec_with_a_knob_its_architecture_does_not_take_is_refused(name: str) -> None:
    spec = default_spec(name, (1, 32, 32), 10)
    wrong = {"width": 2.0} if "hidden" in architecture(name).knobs else {"hidden": (8,)}
    with pytest.raises(ArchitectureError, match=name):
        dataclasses.replace(spec, **wrong)


@pytest.mark.parametrize(
    ("name", "input_shape", "message"),
    [
        ("cnn", (1, 8, 12), "needs square inputs"),
        ("vgg11", (3, 32, 16), "needs square inputs"),
        ("vit", (1, 8, 12), "needs square inputs"),
        ("vit", (1, 10, 10), "must be a multiple of 4"),
    ],
)
def test_an_input_shape_the_architecture_does_not_take_is_refused(name, input_shape, message) -> None:
    overrides = {"channels": (8,)} if name == "cnn" else {}
    with pytest.raises(ArchitectureError, match=message):
        ModelSpec(name, input_shape, 10, **overrides)


@pytest.mark.parametrize(
    ("name", "known"),
    [
        ("transformer", "expected one of mlp, cnn, vgg11, vgg13, vgg16, resnet18, resnet34, vit, or SOURCE:NAME"),
        ("nt:vit", "unknown seed-repository architecture 'nt:vit'; known: nt:smallnn, "),
        ("keras:resnet18", "unknown architecture source in 'keras:resnet18'"),
        ("torchvision:resnet19", "torchvision has no classification model 'resnet19'"),
    ],
)
def test_an_unknown_name_is_refused_with_the_known_ones(name: str, known: str) -> None:
    with pytest.raises(ArchitectureError, match=re.escape(known)):
        architecture(name)


def test_a_sourced_name_resolves_to_an_architecture_without_knobs() -> None:
    entry = architecture("torchvision:resnet18")
    assert (entry.source, entry.family, entry.knobs, entry.stages) == ("torchvision", "torchvision", (), None)
    spec = ModelSpec("torchvision:resnet18", (3, 32, 32), 10)
    assert entry.parameter_estimate(spec) == parameter_count(entry.build(spec))


@pytest.mark.parametrize(
    ("spec", "stages"),
    [
        (ModelSpec("mlp", (1, 8, 8), 10, hidden=(32, 16, 8)), [3]),
        (ModelSpec("vgg11", (1, 8, 8), 10, width=0.125), [1, 1, 2, 2, 2]),
        (ModelSpec("vgg16", (3, 32, 32), 10, width=0.125), [2, 2, 3, 3, 3]),
        (ModelSpec("resnet34", (1, 8, 8), 10, width=0.125), [3, 4, 6, 3]),
    ],
    ids=["mlp", "vgg11", "vgg16", "resnet34"],
)
def test_stage_sizes_come_from_the_architecture(spec: ModelSpec, stages: list[int]) -> None:
    assert stage_sizes(spec) == stages
    assert spec_of(architecture(spec.arch).build(spec), spec.input_shape) == spec


@pytest.mark.parametrize("name", ["cnn", "vit", "nt:smallnn"])
def test_an_architecture_without_stages_says_so(name: str) -> None:
    with pytest.raises(ArchitectureError, match="has no stages"):
        stage_sizes(default_spec(name, (1, 32, 32), 10))


def test_the_zoo_docstring_example_runs() -> None:
    result = doctest.testmod(fusion.zoo)
    assert result.attempted > 0 and result.failed == 0, result


def test_nothing_in_fusion_outside_the_zoo_branches_on_an_architecture_name() -> None:
    branches = [
        f"{path.relative_to(FUSION)}:{number}: {line.strip()}"
        for path in FUSION.rglob("*.py")
        if "zoo" not in path.relative_to(FUSION).parts
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"arch (==|in) ", line)
    ]
    assert branches == []


def test_the_zoo_imports_in_no_circle() -> None:
    graph = grimp.build_graph("fusion", cache_dir=None)
    modules = sorted(m for m in graph.modules if m.startswith("fusion.zoo")) + ["fusion.models", "fusion.sources"]
    circles = [
        (module, imported)
        for module in modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.find_shortest_chain(importer=imported, imported=module)
    ]
    assert circles == []
