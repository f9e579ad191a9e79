"""Form fields shared by pages: an architecture (its source, then its name), its options and a training recipe.

Widgets return raw values; :meth:`SpecInputs.parse` and :meth:`TrainingInputs.parse` turn them into library objects
when the form is submitted, raising one :class:`fusion.errors.ConfigError` that lists every bad field (by the names
of :data:`SPEC_LABELS` and :data:`TRAINING_LABELS`), so nothing runs on a typo.
Defaults come from :func:`fusion.models.default_spec` and :class:`fusion.train.TrainConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from fusion.data import DATASETS, dataset_signature
from fusion.image_folder import IMAGE_FOLDER_PREFIX
from fusion.models import ARCHITECTURES, default_spec
from fusion.problems import Checks, literal
from fusion.sources import SOURCES, is_sourced
from fusion.train import OPTIMIZERS, TrainConfig
from fusion.zoo import architecture, source_choices
from ui.options import kept
from ui.parsing import parse_int_list, parse_seeds
from ui.training import SpecOptions

ZOO = "zoo"
FROM_FILE = "from the file"
SOURCE_LABELS = {
    FROM_FILE: FROM_FILE,
    ZOO: "FusionLab zoo",
    "torchvision": "torchvision",
    "timm": "timm",
    "otfusion": "otfusion (seed repository)",
    "nt": "Neuron Transplantation (seed repository)",
    "clafusion": "CLAFusion (seed repository)",
    "python": "your factories",
}
DEFAULT_ARCHS = {"torchvision": "torchvision:resnet18"}
TIMM_DEFAULT = "resnet18"


def joined(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def offered_sources(from_file: bool = False) -> list[str]:
    """The zoo and every architecture source (the factories only when ``FUSIONLAB_FACTORIES`` lists some), after
    :data:`FROM_FILE` when ``from_file``."""
    sources = [ZOO, *(source for source in SOURCES if source != "python" or source_choices("python"))]
    return [FROM_FILE, *sources] if from_file else sources


def architecture_select(prefix: str, columns: Sequence[DeltaGenerator], from_file: bool = False) -> str | None:
    """A "Source" select in ``columns[0]`` and that source's architecture in ``columns[1]``: a select of the zoo's,
    torchvision's, otfusion's or the listed factories' names, a text input for timm (checked when the form is
    submitted). Returns the ``arch``, or ``None`` for :data:`FROM_FILE` (offered first when ``from_file``).

    Keys: ``{prefix}.source``, ``{prefix}.arch`` for the zoo, ``{prefix}.arch.{source}`` for the others, each kept
    across reruns, so switching sources back and forth keeps every choice.
    """
    sources = offered_sources(from_file)
    kept(f"{prefix}.source", sources[0], sources)
    source = columns[0].selectbox("Source", sources, format_func=SOURCE_LABELS.__getitem__, key=f"{prefix}.source")
    if source == FROM_FILE:
        return None
    if source == "timm":
        kept(f"{prefix}.arch.timm", TIMM_DEFAULT)
        name = columns[1].text_input(
            "Architecture",
            key=f"{prefix}.arch.timm",
            help="A timm model name (timm.list_models()), e.g. resnet18; checked when you submit",
        )
        return f"timm:{name.strip()}"
    choices = ARCHITECTURES if source == ZOO else source_choices(source)
    key = f"{prefix}.arch" if source == ZOO else f"{prefix}.arch.{source}"
    kept(key, DEFAULT_ARCHS.get(source, choices[0]), choices)
    return columns[1].selectbox(
        "Architecture",
        choices,
        format_func=lambda arch: arch.partition(":")[2] or arch,
        key=key,
    )


IMAGE_FOLDER = "image folder"


def dataset_select(prefix: str, column: DeltaGenerator, from_file: bool = False) -> str | None:
    """A "Dataset" select in ``column``: the built-in datasets and an image folder (a folder path and an optional size
    below the select, composed into ``imagefolder:PATH[@SIZE]``, :mod:`fusion.image_folder`). Returns the name, or
    ``None`` for :data:`FROM_FILE` (offered first when ``from_file``). Keys start with ``{prefix}.dataset``."""
    choices = [*([FROM_FILE] if from_file else []), *DATASETS, IMAGE_FOLDER]
    key = f"{prefix}.dataset"
    kept(key, choices[0], choices)
    chosen = column.selectbox("Dataset", choices, key=key)
    if chosen == FROM_FILE:
        return None
    if chosen != IMAGE_FOLDER:
        return chosen
    kept(f"{key}.folder", "")
    kept(f"{key}.size", "")
    folder = column.text_input(
        "Image folder",
        key=f"{key}.folder",
        help="A folder on the server with one sub-folder of images per class (torchvision's ImageFolder layout), "
        "optionally split into train/ and test/",
    )
    size = column.text_input(
        "Resize to",
        key=f"{key}.size",
        placeholder="keep (all images one size)",
        help="N for N x N pixels, or HxW; empty keeps the images' own size, which must then be the same for all",
    )
    return f"{IMAGE_FOLDER_PREFIX}{folder.strip()}" + (f"@{size.strip()}" if size.strip() else "")


def folder_missing(prefix: str) -> bool:
    """Whether :func:`dataset_select` under ``prefix`` has the image folder chosen and no path typed yet: a form still
    being filled in, to be named as missing when it is submitted, not an error while the user types."""
    key = f"{prefix}.dataset"
    return st.session_state.get(key) == IMAGE_FOLDER and not str(st.session_state.get(f"{key}.folder", "")).strip()


SPEC_LABELS = {
    "arch": "Architecture",
    "hidden": "Hidden widths",
    "channels": "Conv channels",
    "width": "Width multiplier",
}
"""The architecture fields' labels by the names their problems carry (:meth:`SpecInputs.parse`)."""
TRAINING_LABELS = {
    "seeds": "Seeds",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "optimizer": "Optimizer",
}
"""The training fields' labels by the names their problems carry (:meth:`TrainingInputs.parse`)."""


@dataclass(frozen=True)
class SpecInputs:
    """What the architecture fields hold: text for the layer lists, numbers and flags for the rest."""

    arch: str
    hidden: str | None = None
    channels: str | None = None
    width: float | None = None
    batch_norm: bool | None = None
    bias: bool | None = None

    def parse(self) -> SpecOptions:
        """The architecture's options; a :class:`ConfigError` lists every unreadable field (:data:`SPEC_LABELS`)."""
        checks = Checks()
        if self.arch.endswith(":"):
            source = literal(self.arch.removesuffix(":"))
            checks.add("arch", f"{{arch}}: type the name of a {source} model, e.g. resnet18")
        hidden = channels = None
        with checks.refused("hidden"):
            hidden = None if self.hidden is None else parse_int_list(self.hidden, "hidden", allow_empty=True)
        with checks.refused("channels"):
            channels = None if self.channels is None else parse_int_list(self.channels, "channels", example="16,32")
        checks.done()
        return SpecOptions(
            arch=self.arch,
            hidden=hidden,
            channels=channels,
            width=self.width,
            batch_norm=self.batch_norm,
            bias=self.bias,
        )


def architecture_fields(prefix: str, arch: str, dataset: str) -> SpecInputs:
    """Fields for the options of ``arch`` (layer widths for mlp/cnn, a width multiplier for vgg/resnet, batch norm,
    bias), pre-filled with the zoo's defaults for ``dataset``. Widget keys start with ``prefix``. An architecture from
    a source has none of these options: only a caption, and :meth:`SpecInputs.parse` gives ``SpecOptions(arch)``.
    """
    if is_sourced(arch):
        st.caption(
            f"`{arch}` is built as its source defines it, with the number of classes and the input shape of the "
            "dataset; the zoo's options (widths, batch norm, bias) do not apply."
        )
        return SpecInputs(arch)
    defaults = default_spec(arch, *dataset_signature(dataset))
    key = f"{prefix}.{arch}.{dataset}"
    hidden = channels = width = None
    knobs = architecture(arch).knobs
    if "channels" in knobs:
        kept(f"{key}.channels", joined(defaults.channels))
        channels = st.text_input(
            SPEC_LABELS["channels"],
            key=f"{key}.channels",
            help="Comma-separated output channels, one 3x3 conv + 2x2 max-pool each, e.g. 16,32",
        )
    if "hidden" in knobs:
        kept(f"{key}.hidden", joined(defaults.hidden))
        hidden = st.text_input(
            SPEC_LABELS["hidden"],
            key=f"{key}.hidden",
            help="Comma-separated widths of the hidden linear layers, e.g. 128,64 (empty: none)",
        )
    else:
        kept(f"{key}.width", float(defaults.width))
        width = st.number_input(
            SPEC_LABELS["width"],
            step=0.0625,
            key=f"{key}.width",
            help="Scales every layer's channels (1 = the paper's widths)",
        )
    left, right = st.columns(2)
    kept(f"{key}.bn", defaults.batch_norm)
    kept(f"{key}.bias", defaults.bias)
    batch_norm = left.checkbox("Batch norm", key=f"{key}.bn")
    bias = right.checkbox("Bias", key=f"{key}.bias")
    return SpecInputs(arch, hidden, channels, width, batch_norm, bias)


@dataclass(frozen=True)
class TrainingInputs:
    """What the training fields hold: the seeds as text, the rest as numbers."""

    seeds: str
    epochs: int
    lr: float
    batch_size: int
    optimizer: str

    def parse(self) -> list[TrainConfig]:
        """One :class:`TrainConfig` per seed; a :class:`ConfigError` lists every problem at once, the seeds' text
        and each value out of range (:data:`TRAINING_LABELS`)."""
        checks = Checks()
        seeds: tuple[int, ...] = ()
        with checks.refused("seeds"):
            seeds = parse_seeds(self.seeds)
        checks.nested(lambda: self.config(seed=0))
        checks.done()
        return [self.config(seed) for seed in seeds]

    def config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=int(self.epochs),
            lr=float(self.lr),
            batch_size=int(self.batch_size),
            optimizer=self.optimizer,
            seed=seed,
        )


def training_fields(prefix: str) -> TrainingInputs:
    """Fields for a training recipe, pre-filled from :class:`TrainConfig`'s defaults."""
    defaults = TrainConfig()
    left, middle, right = st.columns(3)
    for name, default in (
        ("seeds", "0"),
        ("epochs", defaults.epochs),
        ("batch", defaults.batch_size),
        ("lr", defaults.lr),
    ):
        kept(f"{prefix}.{name}", default)
    kept(f"{prefix}.optimizer", defaults.optimizer, OPTIMIZERS)
    labels = TRAINING_LABELS
    seeds = left.text_input(labels["seeds"], key=f"{prefix}.seeds", help="One model per seed, e.g. 0,1,2")
    epochs = middle.number_input(labels["epochs"], step=1, key=f"{prefix}.epochs")
    batch_size = right.number_input(labels["batch_size"], step=1, key=f"{prefix}.batch")
    left, right = st.columns(2)
    lr = left.number_input(labels["lr"], step=1e-4, format="%.6f", key=f"{prefix}.lr")
    optimizer = right.selectbox(
        labels["optimizer"],
        OPTIMIZERS,
        key=f"{prefix}.optimizer",
    )
    return TrainingInputs(seeds, int(epochs), float(lr), int(batch_size), str(optimizer))
