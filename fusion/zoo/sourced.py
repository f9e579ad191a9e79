"""The sources beside the seed repositories, behind the zoo's lookup: torchvision's and timm's networks and a user's
trusted factory (:mod:`fusion.sources` builds them and keeps the trust). Each ``SOURCE:NAME`` the source knows resolves
to an :class:`~fusion.zoo.spec.Architecture` built as its source defines it: no knobs, its parameters counted on a
meta-device build."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from fusion.sources import (
    build_factory,
    build_timm,
    build_torchvision,
    check_factory_name,
    check_timm,
    check_torchvision,
    listed_factories,
    split_arch,
    torchvision_names,
)
from fusion.zoo.spec import Architecture, Shape, Source


def sourced_architecture(
    arch: str, check: Callable[[str], None], build: Callable[[str, Shape, int], nn.Module]
) -> Architecture:
    """The architecture of ``arch`` once ``check`` accepts its ``NAME``: ``build(NAME, input_shape, num_classes)``."""
    source, name = split_arch(arch)
    check(name)
    return Architecture(arch, source, lambda spec: build(name, spec.input_shape, spec.num_classes), source=source)


def torchvision_choices() -> tuple[str, ...]:
    """torchvision's classification models."""
    return tuple(f"torchvision:{name}" for name in sorted(torchvision_names()))


def timm_choices() -> tuple[str, ...]:
    """None: timm's names (``timm.list_models()``, over a thousand) are typed, and checked by the lookup."""
    return ()


def factory_choices() -> tuple[str, ...]:
    """The factories ``FUSIONLAB_FACTORIES`` lists, and only those: a factory a command or a stored model trusted in
    this process is not the server's offer."""
    return tuple(f"python:{name}" for name in sorted(listed_factories()))


OUTSIDE_SOURCES = (
    Source(
        "torchvision",
        functools.partial(sourced_architecture, check=check_torchvision, build=build_torchvision),
        torchvision_choices,
    ),
    Source("timm", functools.partial(sourced_architecture, check=check_timm, build=build_timm), timm_choices),
    Source(
        "python",
        functools.partial(sourced_architecture, check=check_factory_name, build=build_factory),
        factory_choices,
    ),
)
"""torchvision, timm and the user's factories."""
