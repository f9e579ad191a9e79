"""What every fusion method receives and returns, so that :func:`fusion.registry.fuse` can dispatch to any of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.groups import NeuronGroup
from fusion.models import ModelSpec, family
from fusion.progress import Progress, no_progress
from fusion.records import Record
from fusion.train import TrainConfig
from fusion.transport import Transport


@dataclass(frozen=True)
class GroupReport:
    """One neuron group: its name, width in each input model, transport cost and seconds per aligned model, and its
    attention heads (1 for a group of free neurons; ``None`` in reports stored before heads were recorded)."""

    name: str
    widths: list[int]
    costs: list[float | None]
    seconds: list[float | None]
    heads: int | None = None


@dataclass(frozen=True, eq=False)
class Context:
    """Inputs a method may need besides the models: training inputs (``pool``, for activations and BatchNorm), a
    probe batch (for verification), the device, the progress callback, the training labels and, for a fusion given
    no data, random inputs of the networks' input shape (``shapes``) to trace them on."""

    pool: torch.Tensor | None
    probe: torch.Tensor | None
    device: torch.device
    progress: Progress = no_progress
    labels: torch.Tensor | None = None
    shapes: torch.Tensor | None = None

    def example(self) -> torch.Tensor:
        """Two inputs to trace a network on: training inputs, or the random ones of a fusion without data."""
        from fusion.errors import ConfigError

        if self.pool is not None:
            return self.pool[:2].cpu()
        if self.shapes is not None:
            return self.shapes[:2].cpu()
        raise ConfigError("this method needs training inputs (data= or inputs=) to trace the network")

    def sample(self, count: int, seed: int) -> torch.Tensor:
        """``count`` training inputs drawn without replacement with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        assert self.pool is not None
        return self.pool[torch.randperm(len(self.pool), generator=generator)[:count]]

    def labelled_sample(self, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` labelled training examples drawn without replacement with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        assert self.pool is not None and self.labels is not None
        index = torch.randperm(len(self.pool), generator=generator)[:count]
        return self.pool[index], self.labels[index]


class LazyModels(Sequence[nn.Module]):
    """Models built on first access, each once: a fusion offers its aligned parents without holding them in memory
    until someone asks (REPAIR, a landscape through the aligned parents)."""

    def __init__(self, builders: Sequence[Callable[[], nn.Module]]) -> None:
        self.builders = list(builders)
        self.built: dict[int, nn.Module] = {}

    @classmethod
    def of(cls, models: Sequence[nn.Module]) -> LazyModels:
        """``models`` as lazy models (themselves when they already are)."""
        return models if isinstance(models, LazyModels) else cls([lambda m=m: m for m in models])

    def __len__(self) -> int:
        return len(self.builders)

    def __getitem__(self, index: int) -> nn.Module:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"model {index} of {len(self)}")
        index %= len(self)
        if index not in self.built:
            self.built[index] = self.builders[index]()
        return self.built[index]

    def map(self, function: Callable[[nn.Module], nn.Module]) -> LazyModels:
        """Lazy models ``function(model)``, each built when first asked for."""
        return LazyModels([lambda i=i: function(self[i]) for i in range(len(self))])


@dataclass(frozen=True)
class Survival(Record):
    """One group of a pruning or a Neuron Transplantation: for each neuron of the model that was pruned (the
    concatenated model of a transplantation), its parent, its index in that parent, its importance and whether it
    survived the pruning."""

    group: str
    parent: list[int]
    neuron: list[int]
    importance: list[float]
    kept: list[bool]

    def kept_per_parent(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for parent, kept in zip(self.parent, self.kept):
            counts[parent] = counts.get(parent, 0) + int(kept)
        return counts


@dataclass(frozen=True)
class Details(Record):
    """What a method reports beyond the maps and per-group reports every method gives: nothing, for the methods
    whose maps say it all (averaging, OT fusion, matching, the ensemble). A method with more declares a subclass in its
    module, named in its :class:`MethodSpec`, so that a stored report reads back as that record."""

    survival_heading: ClassVar[str] = ""
    """What :meth:`survival` shows, as a heading (empty when the method keeps every neuron)."""

    def survival(self) -> list[Survival]:
        """Which neurons the method kept, per pruned group (in stored order); empty when it keeps every neuron."""
        return []

    def layout_parent(self, reference: int) -> int:
        """The input model whose architecture (depth and layer types) the result has: the ``reference`` unless the
        method changes depth."""
        return reference

    def lines(self) -> list[str]:
        """What is worth reading beside the scores, one sentence each (a layer map, say); empty by default."""
        return []


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """A method's fused (or pruned) model with its maps and per-group reports, plus its method's ``details`` record
    (Neuron Transplantation's kept neurons, CLAFusion's layer map, ...), and for methods that average, the input models
    in the fused model's neuron order (``aligned``, what REPAIR measures)."""

    model: nn.Module
    transports: list[dict[str, Transport] | None]
    groups: list[NeuronGroup] = field(default_factory=list)
    group_reports: list[GroupReport] = field(default_factory=list)
    sweeps: list[int] = field(default_factory=list)
    verified: list[float | None] = field(default_factory=list)
    details: Details = field(default_factory=Details)
    aligned: Sequence[nn.Module] = field(default_factory=list)


ParentRule = Literal["identical", "same depth", "other depths"]
"""What a method's input models must share: ``identical`` specs (vanilla averaging), the ``same depth``: one
architecture with any widths (alignment by OT or matching), or one family at ``other depths`` (CLAFusion)."""

Output = Literal["aligned average", "ensemble", "pruned", "network"]
"""What a method makes: an ``aligned average`` (one network of the reference's widths, returned with the input models
in its neuron order), the prediction ``ensemble`` (not one network, so never stored), a ``pruned`` copy of its one
model, or another ``network`` (of another depth or made by concatenation)."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, options dataclass, function, how many input models it takes, a one-line
    description for the app and the command line, what its input models must share and what it makes, whether
    it solves transport or assignment problems (``solvers``: POT and lap, :func:`fusion.transport.load_solvers`) and
    the record of its details (:class:`Details`). ``finetune`` is the fine-tune the method's paper applies after fusing
    (``None``: the paper uses the fused model as it is); the app offers it by default."""

    name: str
    options: type
    run: Callable[[Sequence[nn.Module], Any, Context], MethodOutput]
    min_models: int
    max_models: int | None
    summary: str
    parents: ParentRule = "same depth"
    output: Output = "aligned average"
    solvers: bool = False
    finetune: TrainConfig | None = None
    details: type[Details] = Details

    @property
    def models_taken(self) -> str:
        """How many input models the method takes, in words: ``exactly 1 model``, ``at least 2 models``."""
        if self.max_models == self.min_models:
            return f"exactly {self.min_models} model{'s' if self.min_models > 1 else ''}"
        if self.max_models is None:
            return f"at least {self.min_models} models"
        return f"{self.min_models} to {self.max_models} models"

    def check_models(self, count: int) -> None:
        """Refuse ``count`` input models outside ``[min_models, max_models]`` with :class:`ConfigError`, e.g. ``ot
        takes at least 2 models, got 1``."""
        if count < self.min_models or (self.max_models is not None and count > self.max_models):
            raise ConfigError(f"{self.name} takes {self.models_taken}, got {count}")


def parents_mismatch(a: ModelSpec, b: ModelSpec, rule: ParentRule) -> str | None:
    """What two input models' specs would need to share under ``rule`` and do not, or ``None`` when they can be fused
    together."""
    if rule == "identical":
        return None if a == b else "identical architectures (OT fusion can fuse different widths)"
    if rule == "other depths":
        if a.sourced or b.sourced:
            return "the zoo's MLPs, VGGs or ResNets (CLAFusion balances their depths from the zoo's layer plans)"
        shared = (family(a), a.input_shape, a.num_classes, a.batch_norm, a.bias)
        if shared == (family(b), b.input_shape, b.num_classes, b.batch_norm, b.bias):
            return None
        return "one family (mlp, vgg or resnet) with the same inputs, classes, BatchNorm and biases"
    shared = (a.arch, a.input_shape, a.num_classes, a.batch_norm, a.bias, len(a.hidden), len(a.channels))
    if shared == (b.arch, b.input_shape, b.num_classes, b.batch_norm, b.bias, len(b.hidden), len(b.channels)):
        return None
    return "the same architecture and depth (widths may differ)"
