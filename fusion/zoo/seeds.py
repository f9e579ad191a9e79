"""The seed repositories' own architectures, with their parameter names, so that their checkpoints load as they are.

Each is named ``SOURCE:NAME``, ``SOURCE`` one of :data:`fusion.sources.SEED_REPOSITORIES`, ``NAME`` the name the
repository gives the network (its ``--model-name`` or the prefix of its checkpoint files). An architecture whose layers
and parameter names are those of a zoo spec is an alias of that spec (:data:`ZOO_ALIASES`); the others are modules of
their own (:data:`SEED_MODELS`), registered in the zoo's lookup by name. All take ``input_shape`` and ``num_classes``;
on the shapes the repository trains on they are its networks exactly (the same state_dict, the same logits), and where
its code fixes the input size (a classifier over ``16*5*5`` or ``512`` features) ours computes it from ``input_shape``
instead.

- otfusion (Singh & Jaggi 2020) ships ``mnist_models.zip``: two ``mlpnet`` MLPs 784-400-200-100-10 without biases,
  named ``fc1``...``fc4``, saved as ``{"model_state_dict": ..., "args": ..., "test_accuracy": ...}``. Its CIFAR
  ``vgg11_nobias`` and ``resnet18_nobias_nobn`` carry the zoo's own parameter names (``features.N``, ``classifier``;
  ``conv1``, ``layerS.B.convK``, ``shortcut.0``, ``linear``), so they are zoo specs.
- Neuron Transplantation (masterbaer/neuron-transplantation) defines its networks in ``model.py``; its experiments
  save state_dicts as ``models/{NAME}_{dataset}_{seed}_{i}.pt`` (``smallnn_nobias``, ``lenet_nobias``,
  ``vgg11_nobias``, ``resnet18_nobias``). Its VGG11 (``VGGOT``) and ResNet18 (BatchNorm, no bias anywhere, the
  4x4 average pool of a 32x32 input) are zoo specs; its MLPs and LeNets are not.
- CLAFusion (hsgser/clafusion) builds MLPs in ``model.py`` (otfusion's ``mlpnet`` with ``--net-config`` widths),
  VGGs of several plans in ``cifar/models/vgg.py`` and ResNet18/34 in ``cifar/models/resnet.py``, named as in
  ``cifar/train.py``'s ``get_model``. Its convs never carry a bias, so a ResNet without BatchNorm but with a biased
  classifier (``resnet18_nobn``) and its VGG plans that are no uniform width multiple of the zoo's are modules here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch
from torch import nn

from fusion.errors import ArchitectureError
from fusion.sources import SEED_REPOSITORIES
from fusion.zoo.spec import Architecture, Source


class FcMlp(nn.Module):
    """An MLP whose linear layers are named ``fc1``...``fcN``: ``x -> fcN(relu(...relu(fc1(flatten(x)))))``.

    ``W_k: (hidden[k], hidden[k-1])`` with ``hidden[-1] = C*H*W`` and a last layer ``(num_classes, hidden[-1])``;
    biases when ``bias``. otfusion's and CLAFusion's ``MlpNet`` return the ``log_softmax`` of these logits, which
    changes neither the predicted class nor the cross-entropy; their dropout is off by default (``--enable-dropout``).

    Mirrors, by name (hidden widths; biases):

    - ``otfusion:mlpnet``: otfusion's ``MlpNet`` (``model.py``), 400-200-100; none. CLAFusion's default ``mlpnet``
      (``model.py``) is the same network.
    - ``clafusion:mlpnet_400_200_100_50``, ``clafusion:mlpnet_400_200_100_50_25``: CLAFusion's ``MlpNetFromConfig``
      (``model.py``, ``--net-config`` of ``sh/train_mlp_p_split.sh`` and ``sh/train_mlp_ablation_studies.sh``); none.
    - ``nt:smallnn``, ``nt:smallnn_nobias``: NT's ``NeuralNetwork`` (``model.py``), 512-512-512; with (its default)
      and without (``bias=False``, its ex6, ex10c and ex11).
    - ``nt:smallnn_combined``: NT's ``CombinedNeuralNetwork`` (``model.py``, ex1's wide baseline), 2048-2048-2048;
      with.

    Inputs: any ``(C, H, W)``; the repositories train them on 1x28x28 MNIST (784 inputs) and NT's also on 3x32x32
    CIFAR-10/SVHN (3072 inputs); CLAFusion's last layer always has 10 outputs, ours ``num_classes``.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, hidden: Sequence[int], bias: bool = False
    ) -> None:
        super().__init__()
        widths = (math.prod(input_shape), *hidden, num_classes)
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            self.add_module(f"fc{index}", nn.Linear(fan_in, fan_out, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.children())
        x = x.flatten(1)
        for layer in layers[:-1]:
            x = torch.relu(layer(x))
        return layers[-1](x)


class NTAdaptiveMlp(nn.Module):
    """Neuron Transplantation's ``AdaptiveNeuralNetwork2`` (``model.py``): ``input_layer`` ``(width, C*H*W)``,
    ``hidden_layers.0``...``hidden_layers.{depth-2}`` ``(width, width)``, ``output_layer`` ``(num_classes, width)``,
    ReLU between them, no biases.

    ``nt:adaptive2_512x4`` is the width 512 and depth 4 its experiments call standard (ex7c, ex7d, ex8a, ex9; ex7
    sweeps widths 16-2048 and depths 1-16 around it). Inputs: any ``(C, H, W)``; NT trains it on 3x32x32 SVHN.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        self.input_layer = nn.Linear(math.prod(input_shape), width, bias=False)
        self.hidden_layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth - 1))
        self.output_layer = nn.Linear(width, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.input_layer(x.flatten(1)))
        for layer in self.hidden_layers:
            x = torch.relu(layer(x))
        return self.output_layer(x)


def lenet_size(input_shape: tuple[int, int, int], padding: int, arch: str) -> int:
    """``h * w`` of LeNet's last feature map: two 5x5 convs (``padding`` on the first), each followed by a 2x2
    max-pool; :class:`ArchitectureError` when the inputs are too small for them."""
    height, width = input_shape[1:]
    sides = [((side + 2 * padding - 4) // 2 - 4) // 2 for side in (height, width)]
    if min(sides) < 1:
        raise ArchitectureError(f"{arch} needs larger inputs than {height}x{width}: its two 5x5 convs and pools")
    return sides[0] * sides[1]


class NTLeNet(nn.Module):
    """Neuron Transplantation's ``LeNet`` (``model.py``; ``nt:lenet_nobias``, built with ``bias=False`` as
    ``get_model_from_name`` does): ``conv1`` 5x5 C->6, ReLU, 2x2 max-pool, ``conv2`` 5x5 6->16, ReLU, 2x2 max-pool,
    flatten, ``fc1`` 16*5*5->120, ``fc2`` 120->84, ``fc3`` 84->classes, ReLU between, no padding, no biases.

    Inputs: 3x32x32 (CIFAR-10, SVHN) in the repository, where ``fc1`` reads 400 features; here any ``(C, H, W)``
    of at least 16x16, ``fc1`` reading ``16*h*w``.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 6, 5, bias=False)
        self.conv2 = nn.Conv2d(6, 16, 5, bias=False)
        self.fc1 = nn.Linear(16 * lenet_size(input_shape, 0, "nt:lenet_nobias"), 120, bias=False)
        self.fc2 = nn.Linear(120, 84, bias=False)
        self.fc3 = nn.Linear(84, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


class NTLeNetMnist(nn.Module):
    """Neuron Transplantation's ``LeNetMNIST`` (``model.py``; ``nt:lenet_mnist_nobias``, always built without
    biases): ``feature`` = 5x5 conv C->6 (padding 2), ReLU, 2x2 max-pool, 5x5 conv 6->16, ReLU, 2x2 max-pool;
    ``classifier`` = flatten, linear 16*5*5->120, ReLU, linear 120->84, ReLU, linear 84->classes.

    Inputs: 1x28x28 MNIST with 10 classes in the repository; here any ``(C, H, W)`` of at least 12x12.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        size = lenet_size(input_shape, 2, "nt:lenet_mnist_nobias")
        self.feature = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, 5, padding=2, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * size, 120, bias=False),
            nn.ReLU(),
            nn.Linear(120, 84, bias=False),
            nn.ReLU(),
            nn.Linear(84, num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature(x))


CLAFUSION_VGG_PLANS: dict[str, tuple[int | str, ...]] = {
    "vgg8_nobias": (64, "M", 128, "M", 256, "M", 512, "M", 512, "M"),
    "vgg11_half_nobias": (64, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 512, "M"),
    "vgg11_doub_nobias": (64, "M", 256, "M", 512, 512, "M", 1024, 1024, "M", 1024, 512, "M"),
    "vgg11_quad_nobias": (64, "M", 512, "M", 1024, 1024, "M", 2048, 2048, "M", 2048, 512, "M"),
    "vgg13_student_nobias": (64, 64, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M", 256, 512, "M"),
    "vgg13_half_nobias": (64, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M", 256, 512, "M"),
    "vgg13_doub_nobias": (64, 128, "M", 256, 256, "M", 512, 512, "M", 1024, 1024, "M", 1024, 512, "M"),
    "vgg13_quad_nobias": (64, 256, "M", 512, 512, "M", 1024, 1024, "M", 2048, 2048, "M", 2048, 512, "M"),
    "vgg19_nobias": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}
"""CLAFusion's VGG plans that are no zoo spec (``cifar/models/vgg.py``'s ``cfg``, by ``get_model``'s name): the
channels of each 3x3 conv, "M" a 2x2 max-pool. The "half"/"doub"/"quad" plans keep the first and last widths."""


class ClaFusionVGG(nn.Module):
    """CLAFusion's ``VGG`` without BatchNorm or biases (``cifar/models/vgg.py``, as ``cifar/train.py``'s
    ``get_model`` builds its ``*_nobias`` names): ``features`` = per plan entry a 3x3 conv (padding 1) and a ReLU,
    or a 2x2 max-pool; then flatten and ``classifier``, one linear layer. Its trailing ``AvgPool2d(1)`` is the
    identity and holds no parameters, so it is left out.

    Inputs: 3x32x32 in the repository (CIFAR-10/100), where five pools leave 1x1 and ``classifier`` reads 512
    features; here any ``(C, H, W)`` of at least 32x32, ``classifier`` reading ``512*(H//32)*(W//32)``.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, plan: Sequence[int | str]) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
                continue
            layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False), nn.ReLU()]
            channels = int(item)
        if min(height, width) < 1:
            raise ArchitectureError(
                f"CLAFusion's VGGs pool {plan.count('M')} times: inputs of {input_shape} are too small"
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * width, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class PlainBasicBlock(nn.Module):
    """``relu(conv2(relu(conv1(x))) + shortcut(x))``: bias-free 3x3 convs, no BatchNorm; the shortcut is a bias-free
    1x1 conv (``shortcut.0``) when the stride or the width changes, else the identity."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class ClaFusionResNetNoBN(nn.Module):
    """CLAFusion's ``ResNet18``/``ResNet34`` built with ``use_batchnorm=False`` and its default ``linear_bias=True``
    (``cifar/models/resnet.py``; ``clafusion:resnet18_nobn``, ``clafusion:resnet34_nobn``): a bias-free 3x3 stem
    ``conv1`` C->64, four stages ``layer1``...``layer4`` of :class:`PlainBasicBlock` (64, 128, 256, 512 channels,
    strides 1, 2, 2, 2; blocks (2, 2, 2, 2) or (3, 4, 6, 3)), global average pool and ``linear`` 512->classes *with*
    a bias. The zoo's ResNet without BatchNorm gives every conv a bias when the classifier has one, hence this module.

    Inputs: 3x32x32 CIFAR and 3x64x64 TinyImageNet in the repository; any ``(C, H, W)`` here.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, padding=1, bias=False)
        in_channels = 64
        for stage, (count, channels) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stage_blocks = []
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                stage_blocks.append(PlainBasicBlock(in_channels, channels, stride))
                in_channels = channels
            self.add_module(f"layer{stage}", nn.Sequential(*stage_blocks))
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


SeedFactory = Callable[[tuple[int, int, int], int], nn.Module]

SEED_MODELS: dict[str, SeedFactory] = {
    "otfusion:mlpnet": functools.partial(FcMlp, hidden=(400, 200, 100), bias=False),
    "nt:smallnn": functools.partial(FcMlp, hidden=(512, 512, 512), bias=True),
    "nt:smallnn_nobias": functools.partial(FcMlp, hidden=(512, 512, 512), bias=False),
    "nt:smallnn_combined": functools.partial(FcMlp, hidden=(2048, 2048, 2048), bias=True),
    "nt:adaptive2_512x4": functools.partial(NTAdaptiveMlp, width=512, depth=4),
    "nt:lenet_nobias": NTLeNet,
    "nt:lenet_mnist_nobias": NTLeNetMnist,
    "clafusion:mlpnet_400_200_100_50": functools.partial(FcMlp, hidden=(400, 200, 100, 50), bias=False),
    "clafusion:mlpnet_400_200_100_50_25": functools.partial(FcMlp, hidden=(400, 200, 100, 50, 25), bias=False),
    **{f"clafusion:{name}": functools.partial(ClaFusionVGG, plan=plan) for name, plan in CLAFUSION_VGG_PLANS.items()},
    "clafusion:resnet18_nobn": functools.partial(ClaFusionResNetNoBN, blocks=(2, 2, 2, 2)),
    "clafusion:resnet34_nobn": functools.partial(ClaFusionResNetNoBN, blocks=(3, 4, 6, 3)),
}
"""The seed architectures that are modules of their own, by ``arch``: each builds from ``(input_shape, num_classes)``.
CLAFusion's default ``mlpnet`` (400-200-100, no bias) is ``otfusion:mlpnet``."""


def zoo_options(arch: str, bias: bool, batch_norm: bool, width: float = 1.0) -> dict[str, Any]:
    return {"arch": arch, "bias": bias, "batch_norm": batch_norm, "width": width}


CLAFUSION_WIDTHS = {"eighth": 0.125, "fourth": 0.25, "half": 0.5, "doub": 2.0}
"""CLAFusion's ResNet ``width_ratio`` names: channels ``int(c / ratio)``, the zoo's width ``1 / ratio``."""


def clafusion_resnet_aliases() -> dict[str, dict[str, Any]]:
    """CLAFusion's ResNet18/34 names that are zoo specs (all but ``*_nobn``, whose classifier alone has a bias)."""
    aliases = {}
    for arch in ("resnet18", "resnet34"):
        aliases[f"clafusion:{arch}"] = zoo_options(arch, bias=True, batch_norm=True)
        aliases[f"clafusion:{arch}_nobias"] = zoo_options(arch, bias=False, batch_norm=True)
        aliases[f"clafusion:{arch}_nobias_nobn"] = zoo_options(arch, bias=False, batch_norm=False)
        for ratio, width in CLAFUSION_WIDTHS.items():
            aliases[f"clafusion:{arch}_{ratio}_nobias_nobn"] = zoo_options(arch, False, False, width)
    return aliases


ZOO_ALIASES: dict[str, dict[str, Any]] = {
    "otfusion:vgg11_nobias": zoo_options("vgg11", bias=False, batch_norm=False),
    "otfusion:resnet18_nobias_nobn": zoo_options("resnet18", bias=False, batch_norm=False),
    "nt:vgg11_nobias": zoo_options("vgg11", bias=False, batch_norm=False),
    "nt:resnet18_nobias": zoo_options("resnet18", bias=False, batch_norm=True),
    **{f"clafusion:{arch}_nobias": zoo_options(arch, False, False) for arch in ("vgg11", "vgg13", "vgg16")},
    **clafusion_resnet_aliases(),
}
"""The seed architectures that are zoo specs, by the name their repository gives them: NT's ``VGGOT("VGG11")`` and
``ResNet18`` (``model.py``), CLAFusion's VGG11/13/16 without bias and its ResNet18/34 with and without BatchNorm and
classifier bias, at its width ratios (``cifar/train.py``); a ResNet whose ``avg_pool2d(out, 4)`` sees the 4x4 map of a
32x32 input is the zoo's global average pool."""


def describe_alias(options: dict[str, Any]) -> str:
    """``vgg11 without bias or BatchNorm``, ``resnet18 with BatchNorm, without bias``, ... for an alias's options."""
    parts = {"bias": options["bias"], "BatchNorm": options["batch_norm"]}
    has = [part for part, present in parts.items() if present]
    lacks = [part for part, present in parts.items() if not present]
    text = ", ".join(
        ([f"with {' and '.join(has)}"] if has else [])
        + ([f"without {' or '.join(lacks)}"] if lacks else [])
        + ([f"width x{options['width']:g}"] if options["width"] != 1.0 else [])
    )
    return f"{options['arch']} {text}"


def seed_choices(source: str) -> tuple[str, ...]:
    """The ``arch`` names of the seed repository ``source``: its own modules, then its zoo aliases."""
    return tuple(arch for arch in (*SEED_MODELS, *ZOO_ALIASES) if arch.partition(":")[0] == source)


def refuse_seed_name(arch: str) -> NoReturn:
    """Refuse a seed-repository name that is not a module of its own (the lookup asks only for names not
    registered): the zoo's aliases name zoo specs (:func:`fusion.models.default_spec` and ``--arch`` resolve them),
    never a stored ``arch``."""
    if arch in ZOO_ALIASES:
        raise ArchitectureError(
            f"{arch} is the zoo's {describe_alias(ZOO_ALIASES[arch])}: build it with default_spec({arch!r}, ...) or "
            f"--arch {arch}"
        )
    known = ", ".join(seed_choices(arch.partition(":")[0])) or "none"
    raise ArchitectureError(f"unknown seed-repository architecture {arch!r}; known: {known}")


def seed_architecture(name: str, factory: SeedFactory) -> Architecture:
    """``name`` (``SOURCE:NAME``) built by ``factory`` as its repository defines it: no knobs."""
    source = name.partition(":")[0]
    return Architecture(name, source, lambda spec: factory(spec.input_shape, spec.num_classes), source=source)


ARCHITECTURES = tuple(seed_architecture(name, factory) for name, factory in SEED_MODELS.items())
"""The seed repositories' modules of their own, by name."""

SEED_SOURCES = tuple(
    Source(repository, refuse_seed_name, functools.partial(seed_choices, repository))
    for repository in SEED_REPOSITORIES
)
"""The seed repositories as sources: they offer their modules, then their zoo aliases, and refuse other names."""
