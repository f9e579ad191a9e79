"""The model zoo: every architecture FusionLab builds, found by name through one lookup.

Each family registers its architectures (:mod:`fusion.zoo.mlp`, :mod:`~fusion.zoo.cnn`, :mod:`~fusion.zoo.vgg`,
:mod:`~fusion.zoo.resnet`, :mod:`~fusion.zoo.vit`, and the seed repositories' own networks in
:mod:`~fusion.zoo.seeds`), each with its builder, parameter estimate, conformance check and stage sizes
(:class:`Architecture`); torchvision, timm and a user's factories (:mod:`~fusion.zoo.sourced`) and the seed repositories
resolve the other ``SOURCE:NAME`` names (:class:`Source`). Nothing outside the zoo branches on an architecture's name:
it asks :func:`architecture` (:mod:`fusion.models` is the public face that builds, counts and reads back networks).

>>> from fusion.zoo import ModelSpec, architecture, parameter_count
>>> mlp = architecture("mlp")
>>> spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(32,))
>>> parameter_count(mlp.build(spec)), mlp.parameter_estimate(spec)
(2410, 2410)
>>> architecture("vgg11").stages(ModelSpec("vgg11", (3, 32, 32), 10))
[1, 1, 2, 2, 2]
>>> architecture("transformer")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fusion.errors.ArchitectureError: unknown architecture 'transformer'; expected one of mlp, cnn, vgg11, vgg13, vgg16, ...
"""

from __future__ import annotations

from fusion.zoo import cnn, mlp, resnet, seeds, sourced, vgg, vit
from fusion.zoo.spec import (
    Architecture,
    ModelSpec,
    Source,
    architecture,
    parameter_count,
    register,
    register_source,
    registered,
    source_choices,
)

for family in (mlp, cnn, vgg, resnet, vit, seeds):
    for entry in family.ARCHITECTURES:
        register(entry)
for source in (*seeds.SEED_SOURCES, *sourced.OUTSIDE_SOURCES):
    register_source(source)
del family, entry, source

ARCHITECTURES = registered("zoo")
"""The zoo's own architectures, in the order the front ends offer them."""

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ModelSpec",
    "Source",
    "architecture",
    "parameter_count",
    "register",
    "register_source",
    "registered",
    "source_choices",
]
