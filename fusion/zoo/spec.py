"""The zoo's lookup: an :class:`Architecture` by name, and the :class:`ModelSpec` that names one.

An architecture is everything FusionLab knows of a network by its name: how a spec builds it, how many parameters that
gives (counted from the spec, so that a spec too large for memory is refused before anything is allocated), which
specs it accepts, and the layout the methods read (its family, its stages, how its widths are read back). The zoo's
families and the seed repositories' networks are registered by name (:func:`register`); the other sources
(torchvision, timm, a user's factory) resolve their ``SOURCE:NAME`` on demand (:func:`register_source`).
:func:`architecture` finds both. The spec and the lookup share a module because a spec is checked by its architecture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusion.errors import ArchitectureError
from fusion.records import Record, RecordError, from_json
from fusion.sources import SOURCES, is_sourced, split_arch

Shape = tuple[int, int, int]

KNOB_DEFAULTS: dict[str, Any] = {"hidden": (), "channels": (), "width": 1.0, "batch_norm": False, "bias": True}
"""The spec fields that size a zoo network, at the values that leave them unused."""


def accept_any(spec: ModelSpec) -> None:
    """The conformance check of an architecture that takes inputs of every shape."""


def no_defaults(input_shape: Shape) -> dict[str, Any]:
    """The default knobs of an architecture that has none."""
    return {}


def parameter_count(model: nn.Module) -> int:
    """The number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Architecture:
    """One network by name.

    Parameters
    ----------
    name : the ``arch`` of its specs.
    family : the architecture without its depth for the zoo (``mlp``, ``cnn``, ``vgg``, ``resnet``, ``vit``); the
        source's name for a network built as its source defines it.
    build : the randomly initialised network of a spec.
    source : ``zoo``, or the ``SOURCE`` of ``SOURCE:NAME``.
    knobs : the spec fields of :data:`KNOB_DEFAULTS` that size it; every other one must keep its default (``()``:
        the source fixes the whole network).
    check : what else a spec must satisfy (square inputs, say); raises :class:`ArchitectureError`.
    estimate : the parameter count of a spec, computed without building it; ``None``: counted on a build on the meta
        device, which allocates nothing.
    defaults : the zoo's default knobs for inputs of a shape.
    label : the sizes in a spec's label (``128-64``, ``x0.25``); ``None`` for a sourced network, labelled by its name.
    stages : the hidden layers per stage, the layout CLAFusion balances; ``None`` where it does not apply.
    resize : the knobs that give a spec the layer widths of a model of this family (a fused or pruned one);
        ``None`` where the widths are fixed.
    module, read : the class of its networks and the spec read back from one (:func:`fusion.models.spec_of`).
    """

    name: str
    family: str
    build: Callable[[ModelSpec], nn.Module]
    source: str = "zoo"
    knobs: tuple[str, ...] = ()
    check: Callable[[ModelSpec], None] = accept_any
    estimate: Callable[[ModelSpec], int] | None = None
    defaults: Callable[[Shape], dict[str, Any]] = no_defaults
    label: Callable[[ModelSpec], str] | None = None
    stages: Callable[[ModelSpec], list[int]] | None = None
    resize: Callable[[ModelSpec, nn.Module], dict[str, Any]] | None = None
    module: type[nn.Module] | None = None
    read: Callable[[nn.Module, Shape], ModelSpec] | None = None

    def parameter_estimate(self, spec: ModelSpec) -> int:
        """The number of parameters :attr:`build` gives ``spec``."""
        if self.estimate is not None:
            return self.estimate(spec)
        with torch.device("meta"):
            return parameter_count(self.build(spec))

    def conforms(self, spec: ModelSpec) -> None:
        """Refuse ``spec`` (:class:`ArchitectureError`) unless :attr:`check` accepts it and every knob it does not
        take keeps its default."""
        self.check(spec)
        foreign = {k for k, default in KNOB_DEFAULTS.items() if k not in self.knobs and getattr(spec, k) != default}
        if not foreign:
            return
        if not self.knobs:
            raise ArchitectureError(
                f"{self.name} is built as its source defines it: hidden, channels, width, batch_norm and bias apply "
                "to the zoo's architectures only"
            )
        if foreign & {"hidden", "channels"} and "width" in self.knobs:
            raise ArchitectureError(f"{self.name} takes a width multiplier, not hidden/channels lists")
        if "channels" in foreign:
            raise ArchitectureError(f"{self.name} has no conv layers: give hidden widths, not channels={spec.channels}")
        if "width" in foreign:
            raise ArchitectureError(
                f"{self.name} takes hidden/channels lists, not a width multiplier (got {spec.width})"
            )
        raise ArchitectureError(f"{self.name} does not take {', '.join(sorted(foreign))}")


@dataclass(frozen=True)
class Source:
    """An architecture source: ``resolve`` gives the architecture of a ``SOURCE:NAME`` that is not registered by name
    (:class:`ArchitectureError` for a name the source does not know), ``choices`` the names a front end offers."""

    name: str
    resolve: Callable[[str], Architecture]
    choices: Callable[[], tuple[str, ...]]


REGISTERED: dict[str, Architecture] = {}
REGISTERED_SOURCES: dict[str, Source] = {}


def register(entry: Architecture) -> Architecture:
    """Add ``entry`` to the lookup under its name; :class:`ArchitectureError` when the name is taken."""
    if entry.name in REGISTERED:
        raise ArchitectureError(f"the architecture {entry.name!r} is registered already")
    REGISTERED[entry.name] = entry
    return entry


def register_source(source: Source) -> Source:
    """Let the lookup resolve ``SOURCE:NAME`` through ``source``; its name must be one of
    :data:`fusion.sources.SOURCES`."""
    if source.name not in SOURCES:
        raise ArchitectureError(f"unknown architecture source {source.name!r}; expected one of {', '.join(SOURCES)}")
    REGISTERED_SOURCES[source.name] = source
    return source


def registered(source: str = "zoo") -> tuple[str, ...]:
    """The names registered from ``source``, in the order they were registered."""
    return tuple(name for name, entry in REGISTERED.items() if entry.source == source)


def architecture(name: str) -> Architecture:
    """The architecture ``name`` names: a registered one, else the one its source resolves.

    Raises :class:`ArchitectureError` naming the known architectures when neither knows ``name``.
    """
    found = REGISTERED.get(name)
    if found is not None:
        return found
    if not is_sourced(name):
        raise ArchitectureError(
            f"unknown architecture {name!r}; expected one of {', '.join(registered())}, or SOURCE:NAME with SOURCE "
            f"one of {', '.join(SOURCES)}"
        )
    source, _ = split_arch(name)
    return REGISTERED_SOURCES[source].resolve(name)


def source_choices(source: str) -> tuple[str, ...]:
    """The ``arch`` names a front end offers for ``source`` (:attr:`Source.choices`)."""
    if source not in REGISTERED_SOURCES:
        raise ArchitectureError(f"unknown architecture source {source!r}; expected one of {', '.join(SOURCES)}")
    return REGISTERED_SOURCES[source].choices()


@dataclass(frozen=True)
class ModelSpec(Record):
    """Everything needed to rebuild a network.

    Parameters
    ----------
    arch : a registered architecture (:data:`fusion.zoo.ARCHITECTURES`, a seed repository's network), or
        ``SOURCE:NAME`` from an architecture source (:mod:`fusion.sources`: ``torchvision:resnet18``,
        ``timm:resnet18``, ``python:MODULE:CALLABLE``), which builds the network as its source defines it: the
        zoo's knobs below do not apply to it.
    input_shape : ``(C, H, W)`` of one input.
    num_classes : number of output logits.
    hidden : widths of the hidden linear layers (``mlp`` and ``cnn``).
    channels : output channels of the conv layers (``cnn`` only; each conv is followed by a 2x2 max-pool).
    batch_norm : BatchNorm after every conv (and, for ``mlp``/``cnn``, after every hidden linear layer).
    bias : biases in conv and linear layers (ResNet convs never carry a bias when ``batch_norm`` is on).
    width : width multiplier of VGG and ResNet channels, and of the ViT's embedding (64 at width 1).
    """

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    hidden: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    batch_norm: bool = False
    bias: bool = True
    width: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        found = architecture(self.arch)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ArchitectureError(f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape}")
        if self.num_classes < 2:
            raise ArchitectureError(f"num_classes must be at least 2, got {self.num_classes}")
        if any(h < 1 for h in self.hidden) or any(c < 1 for c in self.channels):
            raise ArchitectureError(f"layer widths must be positive, got hidden={self.hidden} channels={self.channels}")
        if max((*self.hidden, *self.channels), default=0) > 65536:
            raise ArchitectureError("layer widths above 65536 are not supported")
        if not 0 < self.width <= 16:
            raise ArchitectureError(f"width multiplier must be in (0, 16], got {self.width}")
        found.conforms(self)

    @property
    def sourced(self) -> bool:
        """Whether the network comes from an architecture source rather than the zoo."""
        return is_sourced(self.arch)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """Strict, unlike other records: a spec field this version does not know would build another network."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)} if isinstance(data, Mapping) else set()
        if unknown:
            raise ArchitectureError(f"unknown model spec fields: {', '.join(sorted(unknown))}")
        try:
            return from_json(cls, data)
        except RecordError as exc:
            raise ArchitectureError(f"invalid model spec: {exc}") from exc

    def describe(self) -> str:
        """A short human label, e.g. ``mlp 128-64``, ``vgg11-bn x0.25``, ``torchvision:resnet18``."""
        label = architecture(self.arch).label
        if label is None:
            return self.arch
        return f"{self.arch}{'-bn' if self.batch_norm else ''} {label(self)}"
