"""Architecture sources: networks from outside FusionLab's zoo, named in a spec's ``arch`` as ``SOURCE:NAME`` so that a
saved model rebuilds exactly.

=======================  =====================================================================================
``torchvision:NAME``     a classification model of ``torchvision.models``: ``get_model(NAME, weights=None,
                         num_classes=...)``; its stem takes 3-channel images
``timm:NAME``            ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=C)``
``otfusion:NAME``       a seed repository's own architectures with their parameter names (otfusion, Neuron
``nt:NAME``              Transplantation, CLAFusion: :mod:`fusion.zoo.seeds`)
``clafusion:NAME``
``python:MODULE:NAME``   ``NAME(input_shape=(C, H, W), num_classes=K)`` from the importable ``MODULE``: a user's
                         own factory returning an ``nn.Module``
=======================  =====================================================================================

Nothing is downloaded: a source builds randomly initialised networks and weights come from the user's own files.
This module holds the libraries' builders and the factories' trust; :func:`fusion.zoo.architecture` resolves every
source's names, the seed repositories' among them, behind the zoo's one lookup.

A ``python:`` factory is code, so it runs only when trusted on this machine: listed in the environment variable
``FUSIONLAB_FACTORIES`` (comma-separated ``MODULE:NAME``, the app server's configuration) or trusted in this process
by :func:`trust_factory` (the command line trusts the one its ``--arch`` or ``--trust-factory`` names). A workspace is
data: a stored model, an imported file or a copied workspace naming an untrusted factory is refused with
:class:`~fusion.errors.UntrustedFactoryError` before its module is imported, so a checkpoint can never make FusionLab
run code. A trusted factory's module and call run with ``sys.stdout`` sent to ``sys.stderr`` (the command line's
``--json`` output stays one object) and with any exception, ``SystemExit`` included, turned into an
:class:`~fusion.errors.ArchitectureError` naming the factory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator

from torch import nn

from fusion.errors import ArchitectureError, UntrustedFactoryError

SEED_REPOSITORIES = {
    "otfusion": "github.com/sidak/otfusion",
    "nt": "github.com/masterbaer/neuron-transplantation",
    "clafusion": "github.com/hsgser/clafusion",
}
"""The architecture sources that are seed repositories, with the repository each mirrors (:mod:`fusion.zoo.seeds`)."""

SOURCES = ("torchvision", "timm", *SEED_REPOSITORIES, "python")
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TRUSTED_FACTORIES_VARIABLE = "FUSIONLAB_FACTORIES"
trusted_here: set[str] = set()


VIT_PREFIXES = ("vit_", "deit_")
"""Vision Transformers, built for the inputs' image size (their position embeddings have one entry per patch)."""


def is_sourced(arch: str) -> bool:
    """Whether ``arch`` names a source's network (``SOURCE:NAME``) rather than one of the zoo's."""
    return ":" in arch


def split_arch(arch: str) -> tuple[str, str]:
    """``("torchvision", "resnet18")`` for ``torchvision:resnet18``; :class:`ArchitectureError` for another source."""
    source, _, name = arch.partition(":")
    if source not in SOURCES or not name:
        raise ArchitectureError(f"unknown architecture source in {arch!r}: expected SOURCE:NAME, SOURCE in {SOURCES}")
    return source, name


@functools.cache
def torchvision_names() -> frozenset[str]:
    """The names of torchvision's classification models."""
    import torchvision.models

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def timm_module():
    """The ``timm`` package; :class:`ArchitectureError` when it is not installed."""
    try:
        import timm
    except ImportError as exc:
        raise ArchitectureError("timm is not installed: pip install timm (no weights are downloaded)") from exc
    return timm


def trust_factory(name: str) -> None:
    """Let ``python:`` specs naming ``MODULE:NAME`` build in this process (the caller vouches for the code). Child
    processes (a sweep's jobs) do not inherit it; ``FUSIONLAB_FACTORIES`` they do."""
    check_factory_name(name)
    trusted_here.add(name)


def listed_factories() -> set[str]:
    """The factories the server's configuration lists in ``FUSIONLAB_FACTORIES``."""
    return {item.strip() for item in os.environ.get(TRUSTED_FACTORIES_VARIABLE, "").split(",") if item.strip()}


def trusted_factories() -> set[str]:
    """The factories that may run here: those listed in ``FUSIONLAB_FACTORIES`` and those trusted in this process."""
    return listed_factories() | trusted_here


def check_factory_name(name: str) -> None:
    """Refuse a factory name that is not ``MODULE:CALLABLE``."""
    if not FACTORY_PATTERN.fullmatch(name):
        raise ArchitectureError(f"a factory is named MODULE:CALLABLE (e.g. mypackage.nets:small_resnet), got {name!r}")


def check_torchvision(name: str) -> None:
    """Refuse a name that is none of torchvision's classification models."""
    if name not in torchvision_names():
        raise ArchitectureError(f"torchvision has no classification model {name!r} (torchvision.models.list_models())")


def check_timm(name: str) -> None:
    """Refuse a name that is none of timm's models."""
    if not timm_module().is_model(name):
        raise ArchitectureError(f"timm has no model {name!r} (timm.list_models())")


def build_timm(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=C)``, a ViT for the inputs' size."""
    size = {"img_size": input_shape[1:]} if name.startswith(VIT_PREFIXES) else {}
    return call(
        f"timm:{name}",
        lambda: timm_module().create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **size
        ),
    )


def build_torchvision(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``torchvision.models.get_model(NAME, weights=None, num_classes=...)``; :class:`ArchitectureError` unless the
    inputs have 3 channels (and, for a ViT, are square: it is built for their size)."""
    import torchvision.models

    if input_shape[0] != 3:
        raise ArchitectureError(
            f"torchvision:{name} takes 3-channel images, the inputs have {input_shape[0]} (use timm:, which adapts "
            "its stem with in_chans, or a 3-channel dataset)"
        )
    extra: dict[str, object] = {}
    if name in ("googlenet", "inception_v3"):
        extra = {"aux_logits": False, "init_weights": True}
    elif name.startswith(VIT_PREFIXES):
        if input_shape[1] != input_shape[2]:
            raise ArchitectureError(f"torchvision:{name} takes square images, the inputs are {input_shape[1:]}")
        extra = {"image_size": input_shape[1]}
    return call(
        f"torchvision:{name}",
        lambda: torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra),
    )


def build_factory(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``NAME(input_shape=..., num_classes=...)`` of the factory ``MODULE:NAME``, imported only when it is trusted on
    this machine (:class:`UntrustedFactoryError` otherwise, whatever spec or record names it)."""
    check_factory_name(name)
    if name not in trusted_factories():
        raise UntrustedFactoryError(
            f"the factory {name} is not trusted on this machine, so it does not run: list it in "
            f"{TRUSTED_FACTORIES_VARIABLE} (comma-separated MODULE:CALLABLE) or pass --trust-factory {name} on the "
            "command line; a stored model or an imported file never trusts its own factory"
        )
    module_name, _, attribute = name.partition(":")
    with user_code(f"the factory {name} cannot be imported"):
        factory = getattr(importlib.import_module(module_name), attribute)
    return call(f"python:{name}", lambda: factory(input_shape=input_shape, num_classes=num_classes))


@contextlib.contextmanager
def user_code(failure: str) -> Iterator[None]:
    """Run the body, code FusionLab does not control, with ``sys.stdout`` sent to ``sys.stderr`` (a command's
    ``--json`` output stays the only thing on stdout); an exception or ``SystemExit`` becomes an
    :class:`ArchitectureError` that starts with ``failure``. ``KeyboardInterrupt`` still interrupts."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except ArchitectureError:
        raise
    except SystemExit as exc:
        raise ArchitectureError(f"{failure}: it called sys.exit({exc.code!r})") from exc
    except Exception as exc:  # a user's module or factory, or a library's constructor, may raise anything
        raise ArchitectureError(f"{failure}: {type(exc).__name__}: {exc}") from exc


def call(arch: str, make: Callable[[], object]) -> nn.Module:
    """``make()``, which must return an ``nn.Module``, run as :func:`user_code`; any failure becomes an
    :class:`ArchitectureError` naming ``arch``."""
    with user_code(f"{arch} could not be built"):
        model = make()
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
