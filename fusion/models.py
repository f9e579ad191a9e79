"""The public face of the model zoo (:mod:`fusion.zoo`): build a network from its :class:`ModelSpec`, count and check
its parameters, give the zoo's default spec for a dataset, and read a spec back from a network.

Every model is built from a :class:`ModelSpec`, a small frozen and JSON-serialisable description, so a saved
state_dict plus its spec rebuilds the exact network. All architectures adapt to the dataset's input shape
``(C, H, W)`` (8x8x1 digits, 28x28x1 MNIST, 32x32x3 CIFAR) and number of classes. What differs between
architectures, the functions here ask the zoo's lookup (:func:`fusion.zoo.architecture`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fusion.device import available_memory
from fusion.errors import ArchitectureError, MemoryLimitError
from fusion.seeds import check_seed
from fusion.zoo import ARCHITECTURES, ModelSpec, architecture, parameter_count, registered
from fusion.zoo.layers import layer_widths
from fusion.zoo.resnet import block_names
from fusion.zoo.seeds import ZOO_ALIASES

__all__ = [
    "ARCHITECTURES",
    "TRAINING_BYTES_PER_PARAMETER",
    "ModelSpec",
    "block_names",
    "build_model",
    "check_fits_in_memory",
    "conform",
    "default_spec",
    "family",
    "layer_widths",
    "parameter_count",
    "parameter_estimate",
    "rebuilt",
    "spec_of",
    "stage_sizes",
    "state_mismatch",
]


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Build the network that ``spec`` describes; with ``seed``, its initialisation is reproducible.

    The global RNG is left untouched when a seed is given.
    """
    build = architecture(spec.arch).build
    if seed is None:
        return build(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        return build(spec)


def parameter_estimate(spec: ModelSpec) -> int:
    """The number of parameters :func:`build_model` gives ``spec``, counted from the spec without building it (so a
    spec too large for memory can be refused before anything is allocated): :meth:`Architecture.parameter_estimate
    <fusion.zoo.spec.Architecture.parameter_estimate>`."""
    return architecture(spec.arch).parameter_estimate(spec)


TRAINING_BYTES_PER_PARAMETER = 16
"""Memory one float32 parameter takes in training: its weight, its gradient and Adam's two moment estimates, 4 bytes
each (activations and data come on top, so the check below is a lower bound)."""


def check_fits_in_memory(spec: ModelSpec, device: torch.device) -> int:
    """The parameter estimate of ``spec``; :class:`MemoryLimitError` when training it needs more than the memory
    free on ``device`` (:func:`fusion.device.available_memory`) at :data:`TRAINING_BYTES_PER_PARAMETER`."""
    parameters = parameter_estimate(spec)
    needed, free = parameters * TRAINING_BYTES_PER_PARAMETER, available_memory(device)
    if needed > free:
        raise MemoryLimitError(
            f"{spec.describe()} has about {parameters:,} parameters; training it needs at least "
            f"{needed / 2**30:.1f} GiB ({TRAINING_BYTES_PER_PARAMETER} bytes a parameter: weights, gradients, "
            f"Adam states) but {device.type} has {free / 2**30:.1f} GiB available"
        )
    return parameters


def default_spec(arch: str, input_shape: tuple[int, int, int], num_classes: int, **overrides: Any) -> ModelSpec:
    """The zoo's default spec of ``arch`` for a dataset; keyword arguments override single fields. A seed
    repository's name for a zoo architecture (``otfusion:vgg11_nobias``, :data:`fusion.zoo.seeds.ZOO_ALIASES`) gives
    that zoo spec.

    Defaults (:attr:`Architecture.defaults <fusion.zoo.spec.Architecture.defaults>`): MLP 128-64 with bias; CNN with
    16-32 channels and a 64-unit hidden layer; VGG with bias, no BN; ResNet with BN, no bias; ViT with bias, width 1
    (64 channels, 4 heads, 4 blocks). On 8x8 inputs VGG and ResNet default to width 1/4 so they train in seconds.
    """
    alias = ZOO_ALIASES.get(arch, {})
    base: dict[str, Any] = {"arch": arch, "input_shape": input_shape, "num_classes": num_classes}
    base.update(architecture(alias.get("arch", arch)).defaults(input_shape))
    base.update(alias)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ModelSpec(**base)


def conform(model: nn.Module, like: ModelSpec) -> tuple[ModelSpec, nn.Module]:
    """A zoo model computing the same function as ``model`` (a fused, pruned or BatchNorm-folded network of
    ``like``'s family), with the spec that rebuilds it: widths are read from the layers (:attr:`Architecture.resize
    <fusion.zoo.spec.Architecture.resize>`), BatchNorm and biases from what the model has; weights are copied layer by
    layer and biases the model lacks are zero.

    A network whose widths are fixed (from an architecture source, or a ViT, whose fusions keep every width) keeps
    ``like``'s spec: it must have ``like``'s parameters, shape by shape.

    Raises :class:`ArchitectureError` when no spec of the family describes the model.
    """
    resize = architecture(like.arch).resize
    if resize is None:
        return like, rebuilt(model, like)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    changes: dict[str, Any] = {"batch_norm": bool(norms), "bias": any(layer.bias is not None for layer in layers)}
    changes.update(resize(dataclasses.replace(like, **changes), model))
    spec = dataclasses.replace(like, **changes)
    target = build_model(spec).eval()
    target_layers = [m for m in target.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    target_norms = [m for m in target.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(target_layers) != len(layers) or len(target_norms) != len(norms):
        raise ArchitectureError(f"the model does not have the layers of {spec.describe()}")
    with torch.no_grad():
        for source, destination in zip(layers + norms, target_layers + target_norms):
            for name, tensor in destination.state_dict().items():
                value = source.state_dict().get(name)
                if value is None and name == "bias":
                    value = torch.zeros_like(tensor)
                if value is None or value.shape != tensor.shape:
                    raise ArchitectureError(f"the model does not fit {spec.describe()} ({name} of a layer)")
                tensor.copy_(value)
    probe = torch.randn(4, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model.eval()(probe), target(probe)
    if not torch.allclose(expected, actual, atol=1e-4 * max(1.0, float(expected.abs().max()))):
        raise ArchitectureError(f"the model is not a {spec.describe()}: its outputs differ once rebuilt")
    return spec, target


def listed(names: list[str], shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """How ``state`` does not fit ``model``: every entry of a wrong shape (``state != model``), and the missing and
    unexpected names (the first eight of each); ``None`` when every name and shape fits."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} ({listed(missing)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} ({listed(unexpected)})")
    if wrong:
        parts.append(f"wrong shapes (given != architecture): {'; '.join(wrong)}")
    return ", ".join(parts) or None


def rebuilt(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """A fresh build of ``spec`` holding ``model``'s state; :class:`ArchitectureError` naming what differs
    (:func:`state_mismatch`) when ``model`` does not have the spec's parameters."""
    target = build_model(spec)
    mismatch = state_mismatch(target, model.state_dict())
    if mismatch:
        raise ArchitectureError(
            f"the model no longer has the parameters of {spec.arch}, whose widths are fixed: {mismatch}"
        )
    target.load_state_dict(model.state_dict())
    return target.eval()


def spec_of(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelSpec:
    """The spec that rebuilds ``model`` (a network of a zoo family that reads its spec back: an MLP, a VGG or a
    ResNet; :attr:`Architecture.read <fusion.zoo.spec.Architecture.read>`), checked parameter shape by parameter
    shape.

    Raises :class:`ArchitectureError` for other networks.
    """
    readers = {entry.module: entry.read for entry in map(architecture, registered()) if entry.read is not None}
    read = next((reader for module, reader in readers.items() if isinstance(model, module)), None)
    if read is None:
        raise ArchitectureError(f"only MLPs, VGGs and ResNets of the model zoo have a spec, got {type(model).__name__}")
    spec = read(model, input_shape)
    expected = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise ArchitectureError(f"{type(model).__name__}: its layer widths are not those of any {spec.arch} spec")
    return spec


def family(spec: ModelSpec) -> str:
    """The architecture without its depth: ``mlp``, ``cnn``, ``vgg``, ``resnet`` or ``vit`` (a sourced network's
    source)."""
    return architecture(spec.arch).family


def stage_sizes(spec: ModelSpec) -> list[int]:
    """Hidden layers per stage: one stage for an MLP; for a VGG, the convs between max-pools (from the plan, so that
    pools skipped on small inputs do not merge stages); for a ResNet, its residual blocks per stage.

    Raises :class:`ArchitectureError` for an architecture without stages.
    """
    stages = architecture(spec.arch).stages
    if stages is None:
        raise ArchitectureError(f"{spec.arch} has no stages (MLPs, VGGs and ResNets have)")
    return stages(spec)
