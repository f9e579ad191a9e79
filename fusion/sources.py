"""Architecture sources: networks from outside FusionLab's zoo, named in a spec's ``arch`` as ``SOURCE:NAME`` so that a
saved model rebuilds exactly.

=======================  =====================================================================================
``torchvision:NAME``     a classification model of ``torchvision.models``: ``get_model(NAME, weights=None,
                         num_classes=...)``; its stem takes 3-channel images
``timm:NAME``            ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=C)``
``otfusion:NAME``       a seed repository's own architectures with their parameter names (otfusion, Neuron
``nt:NAME``              Transplantation, CLAFusion: :mod:`fusion.seed_models`)
``clafusion:NAME``
``python:MODULE:NAME``   ``NAME(input_shape=(C, H, W), num_classes=K)`` from the importable ``MODULE``: a user's
                         own factory returning an ``nn.Module``
=======================  =====================================================================================

Nothing is downloaded: a source builds randomly initialised networks and weights come from the user's own files.
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
from fusion.seed_models import SEED_REPOSITORIES, build_seed_model, check_seed_arch, seed_choices

SOURCES = ("torchvision", "timm", *SEED_REPOSITORIES, "python")
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TRUSTED_FACTORIES_VARIABLE = "FUSIONLAB_FACTORIES"
trusted_here: set[str] = set()


VIT_PREFIXES = ("vit_", "deit_")
"""Vision Transformers, built for the inputs' image size (their position embeddings have one entry per patch)."""


def is_sourced(arch: str) -> bool:
    return ":" in arch


def split_arch(arch: str) -> tuple[str, str]:
    """``("torchvision", "resnet18")`` for ``torchvision:resnet18``; :class:`ArchitectureError` for another source."""
    source, _, name = arch.partition(":")
    if source not in SOURCES or not name:
        raise ArchitectureError(f"unknown architecture source in {arch!r}: expected SOURCE:NAME, SOURCE in {SOURCES}")
    return source, name


@functools.cache
def torchvision_names() -> frozenset[str]:
    import torchvision.models

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def timm_module():
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
    return listed_factories() | trusted_here


def source_choices(source: str) -> tuple[str, ...]:
    """The ``arch`` names a front end offers for ``source``: torchvision's classification models, a seed
    repository's architectures, the factories ``FUSIONLAB_FACTORIES`` lists (only those: a factory a command or a
    stored model trusted in this process is not the server's offer). ``()`` for timm, whose names
    (``timm.list_models()``, over a thousand) are typed and checked by :func:`check_arch`."""
    if source not in SOURCES:
        raise ArchitectureError(f"unknown architecture source {source!r}; expected one of {', '.join(SOURCES)}")
    if source == "torchvision":
        return tuple(f"torchvision:{name}" for name in sorted(torchvision_names()))
    if source in SEED_REPOSITORIES:
        return seed_choices(source)
    if source == "python":
        return tuple(f"python:{name}" for name in sorted(listed_factories()))
    return ()


def check_factory_name(name: str) -> None:
    if not FACTORY_PATTERN.fullmatch(name):
        raise ArchitectureError(f"a factory is named MODULE:CALLABLE (e.g. mypackage.nets:small_resnet), got {name!r}")


def check_arch(arch: str) -> None:
    """Refuse an ``arch`` whose source does not know its name."""
    source, name = split_arch(arch)
    if source == "torchvision" and name not in torchvision_names():
        raise ArchitectureError(f"torchvision has no classification model {name!r} (torchvision.models.list_models())")
    if source == "timm" and not timm_module().is_model(name):
        raise ArchitectureError(f"timm has no model {name!r} (timm.list_models())")
    if source in SEED_REPOSITORIES:
        check_seed_arch(arch)
    if source == "python":
        check_factory_name(name)


def build_sourced(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The randomly initialised network ``arch`` names, for inputs of ``input_shape`` and ``num_classes`` outputs."""
    source, name = split_arch(arch)
    if source == "torchvision":
        return build_torchvision(name, input_shape, num_classes)
    if source == "timm":
        size = {"img_size": input_shape[1:]} if name.startswith(VIT_PREFIXES) else {}
        return call(
            arch,
            lambda: timm_module().create_model(
                name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **size
            ),
        )
    if source in SEED_REPOSITORIES:
        return build_seed_model(arch, input_shape, num_classes)
    return build_factory(name, input_shape, num_classes)


def build_torchvision(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
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
