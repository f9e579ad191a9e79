"""Pretrained weights of torchvision and timm networks, read from the local cache; downloaded only when asked for.

A sourced network (:mod:`fusion.sources`) starts from random weights. Researchers often start it from published
weights instead (ImageNet weights fine-tuned on their own data, then fused): :func:`pretrained_weights` finds those
weights where the libraries keep them,

- ``torchvision:NAME``: the file of ``torchvision.models.get_model_weights(NAME)[TAG].url`` under
  ``torch.hub.get_dir()/checkpoints`` (``TORCH_HOME``), the file ``torchvision.models.get_model(..., weights=TAG)``
  reads and writes;
- ``timm:NAME``: ``model.safetensors`` (else ``pytorch_model.bin``) of the model's Hugging Face repository
  (``pretrained_cfg["hf_hub_id"]``, ``TAG`` picks ``NAME.TAG``) in the Hugging Face cache (``HF_HOME``),

and reads them without executing code (safetensors, or ``torch.load(weights_only=True)``). With ``download=True``
a missing file is fetched by the library's own downloader, and a failure says so. :func:`initialise` then copies
every tensor of matching name and shape into a model; a head built for another number of classes keeps its random
initialisation, and the report says which tensors were kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fusion.errors import ArchitectureError, CheckpointError
from fusion.records import Record
from fusion.sources import is_sourced, split_arch, timm_module


@dataclass(frozen=True)
class PretrainedWeights(Record):
    """Where a network's published weights were found: ``arch`` and ``tag`` (torchvision's weights name, e.g.
    ``IMAGENET1K_V1``, or timm's pretrained tag, e.g. ``a1_in1k``) and the cached file."""

    arch: str
    tag: str
    path: str


@dataclass(frozen=True)
class Initialisation(Record):
    """What :func:`initialise` copied: ``loaded`` tensors, and the model's tensors it left as built (``kept``: another
    shape, such as a head for another number of classes)."""

    weights: PretrainedWeights
    loaded: int
    kept: tuple[str, ...]


def pretrained_weights(
    arch: str, tag: str | None = None, download: bool = False
) -> tuple[PretrainedWeights, dict[str, torch.Tensor]]:
    """The published weights of ``arch`` (``torchvision:NAME`` or ``timm:NAME``) named ``tag`` (default: the
    library's default weights), from the local cache, or downloaded when ``download``.

    Raises :class:`ArchitectureError` for another source or an unknown tag, and :class:`CheckpointError` when the
    weights are not cached (and no download was asked for) or cannot be read.
    """
    source, name = split_arch(arch) if is_sourced(arch) else ("zoo", arch)
    if source == "torchvision":
        return torchvision_weights(name, tag, download)
    if source == "timm":
        return timm_weights(name, tag, download)
    raise ArchitectureError(f"pretrained weights come from torchvision: or timm: architectures, not {arch!r}")


def torchvision_weights(
    name: str, tag: str | None, download: bool
) -> tuple[PretrainedWeights, dict[str, torch.Tensor]]:
    import torchvision.models

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as exc:
        raise ArchitectureError(f"torchvision publishes no weights for {name!r}") from exc
    choices = {w.name: w for w in enum}
    chosen = enum.DEFAULT if tag is None else choices.get(tag)
    if chosen is None:
        raise ArchitectureError(f"torchvision:{name} has no weights {tag!r}; it has {', '.join(choices)}")
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(chosen.url).name
    if not path.is_file():
        if not download:
            raise CheckpointError(
                f"the weights torchvision:{name} {chosen.name} are not in the local cache ({path}); allow the "
                "download (--download, or the checkbox in the app) if the network allows, or copy the file there"
            )
        try:
            state = torch.hub.load_state_dict_from_url(chosen.url, progress=False, weights_only=True)
        except Exception as exc:  # the network, the server or the file may fail in any way
            raise CheckpointError(
                f"the weights torchvision:{name} {chosen.name} could not be downloaded: {exc}"
            ) from exc
        return PretrainedWeights(f"torchvision:{name}", chosen.name, str(path)), state
    return PretrainedWeights(f"torchvision:{name}", chosen.name, str(path)), read_state(path)


TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_weights(name: str, tag: str | None, download: bool) -> tuple[PretrainedWeights, dict[str, torch.Tensor]]:
    timm = timm_module()
    full = name if tag is None else f"{name.partition('.')[0]}.{tag}"
    try:
        config = timm.models.get_pretrained_cfg(full)
    except Exception as exc:  # timm raises RuntimeError or returns None depending on the name's form
        raise ArchitectureError(f"timm has no pretrained weights {full!r}: {exc}") from exc
    repository = getattr(config, "hf_hub_id", None) if config is not None else None
    if not repository:
        raise ArchitectureError(f"timm publishes no Hugging Face weights for {full!r}")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    weights = PretrainedWeights(f"timm:{name.partition('.')[0]}", config.tag or "", "")
    for file in TIMM_FILES:
        found = try_to_load_from_cache(repository, file)
        if isinstance(found, str):
            return PretrainedWeights(weights.arch, weights.tag, found), read_state(Path(found))
    if not download:
        raise CheckpointError(
            f"the weights of timm:{full} ({repository}) are not in the local Hugging Face cache; allow the download "
            "(--download, or the checkbox in the app) if the network allows"
        )
    try:
        found = hf_hub_download(repository, TIMM_FILES[0])
    except Exception as exc:  # the network, the hub or the file may fail in any way
        raise CheckpointError(f"the weights of timm:{full} ({repository}) could not be downloaded: {exc}") from exc
    return PretrainedWeights(weights.arch, weights.tag, found), read_state(Path(found))


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a safetensors file or a tensors-only pickle, never running code from it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file fails inside the reader in many ways
        raise CheckpointError(
            f"the cached weights {path} cannot be read (damaged or in another format): {exc}"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"the cached weights {path} are not a state_dict of tensors")
    return state


def initialise(model: nn.Module, weights: PretrainedWeights, state: dict[str, torch.Tensor]) -> Initialisation:
    """Copy into ``model`` (in place) every tensor of ``state`` of the same name and shape; a tensor of another shape
    (a head for another number of classes, timm's stem for another number of input channels) keeps its initialisation.

    Raises :class:`CheckpointError` when a name is missing on either side: the weights are of another architecture,
    and a model so initialised would be partly random under a pretrained name.
    """
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"the weights {weights.arch} {weights.tag} do not fit the model: "
            + "; ".join(
                f"{label} {', '.join(names[:4])}" + (f" and {len(names) - 4} more" if len(names) > 4 else "")
                for label, names in (("the model's", missing), ("the weights'", unexpected))
                if names
            )
            + " have no counterpart"
        )
    loaded = {k: v for k, v in state.items() if own[k].shape == v.shape}
    model.load_state_dict(loaded, strict=False)
    return Initialisation(weights, len(loaded), tuple(sorted(set(own) - set(loaded))))
