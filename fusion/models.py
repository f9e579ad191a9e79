"""The model zoo: MLP, small CNN, VGG-11/13/16, CIFAR-style ResNet-18/34 and a small Vision Transformer.

Every model is built from a :class:`ModelSpec`, a small frozen and JSON-serialisable description, so a saved
state_dict plus its spec rebuilds the exact network. All architectures adapt to the dataset's input shape
``(C, H, W)`` (8x8x1 digits, 28x28x1 MNIST, 32x32x3 CIFAR) and number of classes.

Layer naming follows the reference implementations: VGG as in Simonyan & Zisserman (2015) with the single linear
classifier that otfusion uses on CIFAR; ResNet as in He et al. (2016), CIFAR variant (3x3 stem, no max-pool); the
ViT in :mod:`fusion.vit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusion.device import available_memory
from fusion.errors import ArchitectureError, MemoryLimitError
from fusion.records import Record, RecordError, from_json
from fusion.seed_models import ZOO_ALIASES
from fusion.seeds import check_seed
from fusion.sources import build_sourced, check_arch, is_sourced
from fusion.vit import VIT_GRID, ViT

VGG_LAYERS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}
RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
ARCHITECTURES = ("mlp", "cnn", *VGG_LAYERS, *RESNET_BLOCKS, "vit")


@dataclass(frozen=True)
class ModelSpec(Record):
    """Everything needed to rebuild a network.

    Parameters
    ----------
    arch : one of :data:`ARCHITECTURES`, or ``SOURCE:NAME`` from an architecture source (:mod:`fusion.sources`:
        ``torchvision:resnet18``, ``timm:resnet18``, ``otfusion:mlpnet``, ``python:MODULE:CALLABLE``), which builds
        the network as its source defines it: the zoo's knobs below do not apply to it.
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
        if is_sourced(self.arch):
            self.check_sourced()
        elif self.arch not in ARCHITECTURES:
            raise ArchitectureError(f"unknown architecture {self.arch!r}; expected one of {', '.join(ARCHITECTURES)}")
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
        if self.arch in ("cnn", *VGG_LAYERS, "vit") and self.input_shape[1] != self.input_shape[2]:
            raise ArchitectureError(f"{self.arch} needs square inputs (H == W), got input_shape={self.input_shape}")
        if self.arch == "vit" and self.input_shape[1] % VIT_GRID:
            raise ArchitectureError(
                f"vit cuts an image into {VIT_GRID}x{VIT_GRID} patches: its side must be a multiple of {VIT_GRID}, "
                f"got {self.input_shape[1]}"
            )
        if self.arch == "vit" and self.batch_norm:
            raise ArchitectureError("vit normalises with LayerNorm: batch_norm does not apply")
        if self.arch == "cnn" and not self.channels:
            raise ArchitectureError("a cnn needs at least one conv layer: give channels, e.g. (16, 32)")
        if self.arch not in ("mlp", "cnn") and (self.hidden or self.channels):
            raise ArchitectureError(f"{self.arch} takes a width multiplier, not hidden/channels lists")
        if self.arch == "mlp" and self.channels:
            raise ArchitectureError(f"an mlp has no conv layers: give hidden widths, not channels={self.channels}")
        if self.arch in ("mlp", "cnn") and self.width != 1.0:
            raise ArchitectureError(
                f"{self.arch} takes hidden/channels lists, not a width multiplier (got {self.width})"
            )

    def check_sourced(self) -> None:
        check_arch(self.arch)
        zoo_knobs = (self.hidden, self.channels, self.width, self.batch_norm, self.bias)
        if zoo_knobs != ((), (), 1.0, False, True):
            raise ArchitectureError(
                f"{self.arch} is built as its source defines it: hidden, channels, width, batch_norm and bias apply to "
                "the zoo's architectures only"
            )

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
        if self.sourced:
            return self.arch
        if self.arch == "mlp":
            body = "-".join(map(str, self.hidden)) or "linear"
        elif self.arch == "cnn":
            body = (
                "c"
                + "-".join(map(str, self.channels))
                + ("-h" + "-".join(map(str, self.hidden)) if self.hidden else "")
            )
        else:
            body = f"x{self.width:g}"
        return f"{self.arch}{'-bn' if self.batch_norm else ''} {body}"


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class MLP(nn.Module):
    """``Flatten -> [Linear -> (BN) -> ReLU] * len(hidden) -> Linear``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = spec.input_shape[0] * spec.input_shape[1] * spec.input_shape[2]
        for width in spec.hidden:
            layers.append(nn.Linear(fan_in, width, bias=spec.bias))
            if spec.batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            fan_in = width
        layers.append(nn.Linear(fan_in, spec.num_classes, bias=spec.bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def conv_stack(
    in_channels: int, size: int, plan: tuple[int | str, ...], spec: ModelSpec
) -> tuple[nn.Sequential, int, int]:
    """Conv 3x3 (pad 1) -> (BN) -> ReLU for each int in ``plan``, 2x2 max-pool for each "M".

    A pool that would shrink the map below 1x1 is skipped, so the same plan serves 8x8 digits and 32x32 CIFAR.
    Returns the stack, its output channels and its output spatial size.
    """
    layers: list[nn.Module] = []
    for item in plan:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        out_channels = int(item)
        layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=spec.bias))
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        in_channels = out_channels
    return nn.Sequential(*layers), in_channels, size


class CNN(nn.Module):
    """A small CNN: a conv stack (one max-pool after each conv), flatten, hidden linear layers, classifier."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        plan = tuple(x for c in spec.channels for x in (c, "M"))
        self.features, channels, size = conv_stack(spec.input_shape[0], spec.input_shape[1], plan, spec)
        head: list[nn.Module] = [nn.Flatten()]
        fan_in = channels * size * size
        for width in spec.hidden:
            head.append(nn.Linear(fan_in, width, bias=spec.bias))
            if spec.batch_norm:
                head.append(nn.BatchNorm1d(width))
            head.append(nn.ReLU())
            fan_in = width
        head.append(nn.Linear(fan_in, spec.num_classes, bias=spec.bias))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGG(nn.Module):
    """VGG-11/13/16 features with a single linear classifier over the flattened final map."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        plan = tuple(x if x == "M" else scaled(int(x), spec.width) for x in VGG_LAYERS[spec.arch])
        self.features, channels, size = conv_stack(spec.input_shape[0], spec.input_shape[1], plan, spec)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels * size * size, spec.num_classes, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def norm_layer(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batch_norm: bool, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm_layer(out_channels, batch_norm)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = norm_layer(out_channels, batch_norm)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias), norm_layer(out_channels, batch_norm)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four stages of basic blocks (strides 1, 2, 2, 2), global average pool, linear."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        bias = spec.bias and not spec.batch_norm
        widths = [scaled(c, spec.width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(spec.input_shape[0], widths[0], 3, padding=1, bias=bias)
        self.bn1 = norm_layer(widths[0], spec.batch_norm)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for stage, (blocks, out_channels) in enumerate(zip(RESNET_BLOCKS[spec.arch], widths)):
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for b in range(blocks):
                stage_blocks.append(
                    BasicBlock(in_channels, out_channels, stride if b == 0 else 1, spec.batch_norm, bias)
                )
                in_channels = out_channels
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_channels, spec.num_classes, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.flatten(self.pool(out)))


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Build the network that ``spec`` describes; with ``seed``, its initialisation is reproducible.

    The global RNG is left untouched when a seed is given.
    """
    if spec.sourced:

        def factory(spec: ModelSpec) -> nn.Module:
            return build_sourced(spec.arch, spec.input_shape, spec.num_classes)

    elif spec.arch == "mlp":
        factory = MLP
    elif spec.arch == "cnn":
        factory = CNN
    elif spec.arch in VGG_LAYERS:
        factory = VGG
    elif spec.arch == "vit":

        def factory(spec: ModelSpec) -> nn.Module:
            return ViT(spec.input_shape, spec.num_classes, spec.width, spec.bias)

    else:
        factory = ResNet
    if seed is None:
        return factory(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        return factory(spec)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_estimate(spec: ModelSpec) -> int:
    """The number of parameters :func:`build_model` gives ``spec``, counted from the spec without building it (so a
    spec too large for memory can be refused before anything is allocated). A layer of ``n`` outputs over ``m``
    inputs holds ``n m k^2`` weights (``k = 3`` for convs, 1 for linear layers and 1x1 shortcuts), ``n`` biases when
    it has them, and BatchNorm adds ``2 n`` (its scale and shift)."""

    if spec.sourced or spec.arch == "vit":
        with torch.device("meta"):
            return parameter_count(build_model(spec))

    def layer(fan_in: int, out: int, kernel: int, bias: bool, norm: bool) -> int:
        return fan_in * out * kernel * kernel + (out if bias else 0) + (2 * out if norm else 0)

    def stack(in_channels: int, size: int, plan: tuple[int | str, ...]) -> tuple[int, int, int]:
        total = 0
        for item in plan:
            if item == "M":
                size = size // 2 if size >= 2 else size
                continue
            total += layer(in_channels, int(item), 3, spec.bias, spec.batch_norm)
            in_channels = int(item)
        return total, in_channels, size

    def head(fan_in: int) -> int:
        total = 0
        for width in spec.hidden:
            total += layer(fan_in, width, 1, spec.bias, spec.batch_norm)
            fan_in = width
        return total + layer(fan_in, spec.num_classes, 1, spec.bias, False)

    channels, size = spec.input_shape[0], spec.input_shape[1]
    if spec.arch == "mlp":
        return head(channels * size * spec.input_shape[2])
    if spec.arch in ("cnn", *VGG_LAYERS):
        if spec.arch == "cnn":
            plan = tuple(x for c in spec.channels for x in (c, "M"))
        else:
            plan = tuple(x if x == "M" else scaled(int(x), spec.width) for x in VGG_LAYERS[spec.arch])
        total, channels, size = stack(channels, size, plan)
        return total + head(channels * size * size)
    bias = spec.bias and not spec.batch_norm
    widths = [scaled(c, spec.width) for c in (64, 128, 256, 512)]
    total = layer(channels, widths[0], 3, bias, spec.batch_norm)
    in_channels = widths[0]
    for stage, (blocks, out) in enumerate(zip(RESNET_BLOCKS[spec.arch], widths)):
        for b in range(blocks):
            total += layer(in_channels, out, 3, bias, spec.batch_norm) + layer(out, out, 3, bias, spec.batch_norm)
            if (stage > 0 and b == 0) or in_channels != out:
                total += layer(in_channels, out, 1, bias, spec.batch_norm)
            in_channels = out
    return total + layer(in_channels, spec.num_classes, 1, spec.bias, False)


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
    repository's name for a zoo architecture (``otfusion:vgg11_nobias``, :data:`ZOO_ALIASES`) gives that zoo spec.

    Defaults: MLP 128-64 with bias; CNN with 16-32 channels and a 64-unit hidden layer; VGG with bias, no BN;
    ResNet with BN, no bias; ViT with bias, width 1 (64 channels, 4 heads, 4 blocks). On 8x8 inputs VGG and ResNet
    default to width 1/4 so they train in seconds.
    """
    small = input_shape[1] <= 8
    base: dict[str, Any] = {"arch": arch, "input_shape": input_shape, "num_classes": num_classes}
    alias = ZOO_ALIASES.get(arch, {})
    arch = alias.get("arch", arch)
    if arch == "mlp":
        base.update(hidden=(128, 64))
    elif arch == "cnn":
        base.update(channels=(16, 32), hidden=(64,))
    elif arch in VGG_LAYERS:
        base.update(width=0.25 if small else 1.0)
    elif arch in RESNET_BLOCKS:
        base.update(batch_norm=True, bias=False, width=0.25 if small else 1.0)
    base.update(alias)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ModelSpec(**base)


def layer_widths(model: nn.Module) -> list[int]:
    """Output widths of the conv and linear layers, in the order the model registers them."""
    return [int(m.weight.shape[0]) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def width_multiplier(spec: ModelSpec, widths: list[int]) -> float | None:
    """The width multiplier that gives a VGG/ResNet of ``spec`` these conv widths, if one does."""
    for numerator in sorted(set(widths)):
        candidate = dataclasses.replace(spec, width=numerator / 64)
        if layer_widths(build_model(candidate))[:-1] == widths[:-1]:
            return candidate.width
    return None


def conform(model: nn.Module, like: ModelSpec) -> tuple[ModelSpec, nn.Module]:
    """A zoo model computing the same function as ``model`` (a fused, pruned or BatchNorm-folded network of
    ``like``'s family), with the spec that rebuilds it: widths are read from the layers, BatchNorm and biases from
    what the model has; weights are copied layer by layer and biases the model lacks are zero.

    A network from an architecture source, or a ViT (whose fusions keep every width), keeps ``like``'s spec: it must
    have ``like``'s parameters, shape by shape.

    Raises :class:`ArchitectureError` when no spec of the family describes the model.
    """
    if like.sourced or like.arch == "vit":
        return like, rebuilt(model, like)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    widths = layer_widths(model)
    changes: dict[str, Any] = {"batch_norm": bool(norms), "bias": any(layer.bias is not None for layer in layers)}
    if like.arch == "mlp":
        changes["hidden"] = tuple(widths[:-1])
    elif like.arch == "cnn":
        convs = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
        changes["channels"] = tuple(widths[: len(convs)])
        changes["hidden"] = tuple(widths[len(convs) : -1])
    else:
        multiplier = width_multiplier(dataclasses.replace(like, **changes), widths)
        if multiplier is None:
            raise ArchitectureError(f"the widths {widths[:-1]} are no uniform width multiple of {like.arch}")
        changes["width"] = multiplier
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
    """The spec that rebuilds ``model`` (an MLP or a VGG of the zoo), checked parameter shape by parameter shape.

    Raises :class:`ArchitectureError` for other networks.
    """
    if isinstance(model, MLP):
        linears = [m for m in model.layers if isinstance(m, nn.Linear)]
        spec = ModelSpec(
            "mlp",
            input_shape,
            linears[-1].out_features,
            hidden=tuple(m.out_features for m in linears[:-1]),
            batch_norm=any(isinstance(m, nn.BatchNorm1d) for m in model.layers),
            bias=linears[0].bias is not None,
        )
    elif isinstance(model, VGG):
        convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
        arch = next((a for a, plan in VGG_LAYERS.items() if sum(x != "M" for x in plan) == len(convs)), None)
        if arch is None:
            raise ArchitectureError(f"a VGG with {len(convs)} conv layers is none of {', '.join(VGG_LAYERS)}")
        spec = ModelSpec(
            arch,
            input_shape,
            model.classifier.out_features,
            width=convs[-1].out_channels / 512,
            batch_norm=any(isinstance(m, nn.BatchNorm2d) for m in model.features),
            bias=convs[0].bias is not None,
        )
    elif isinstance(model, ResNet):
        blocks = tuple(len(getattr(model, f"layer{stage}")) for stage in range(1, 5))
        arch = next((a for a, counts in RESNET_BLOCKS.items() if counts == blocks), None)
        if arch is None:
            raise ArchitectureError(f"a ResNet with {blocks} blocks per stage is none of {', '.join(RESNET_BLOCKS)}")
        spec = ModelSpec(
            arch,
            input_shape,
            model.linear.out_features,
            width=model.linear.in_features / 512,
            batch_norm=isinstance(model.bn1, nn.BatchNorm2d),
            bias=model.linear.bias is not None,
        )
    else:
        raise ArchitectureError(f"only MLPs, VGGs and ResNets of the model zoo have a spec, got {type(model).__name__}")
    expected = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise ArchitectureError(f"{type(model).__name__}: its layer widths are not those of any {spec.arch} spec")
    return spec


def family(spec: ModelSpec) -> str:
    """The architecture without its depth: ``mlp``, ``cnn``, ``vgg`` or ``resnet``."""
    return spec.arch.rstrip("0123456789")


def stage_sizes(spec: ModelSpec) -> list[int]:
    """Hidden layers per stage: one stage for an MLP; for a VGG, the convs between max-pools (from the plan, so that
    pools skipped on small inputs do not merge stages); for a ResNet, its residual blocks per stage."""
    if spec.arch == "mlp":
        return [len(spec.hidden)]
    if spec.arch in RESNET_BLOCKS:
        return list(RESNET_BLOCKS[spec.arch])
    sizes, count = [], 0
    for item in VGG_LAYERS[spec.arch]:
        if item == "M":
            sizes.append(count)
            count = 0
        else:
            count += 1
    return [s for s in sizes if s]


def block_names(spec: ModelSpec) -> list[str]:
    return [f"layer{stage + 1}.{b}" for stage, count in enumerate(RESNET_BLOCKS[spec.arch]) for b in range(count)]
