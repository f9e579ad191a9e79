"""A user's own images, ``imagefolder:PATH`` or ``imagefolder:PATH@SIZE``, read into tensors.

The layout is torchvision's ImageFolder: one sub-folder per class, named after it (class indices follow the sorted
folder names; hidden entries, those starting with ``.``, are skipped; image files are those torchvision's ImageFolder
reads, :data:`IMAGE_EXTENSIONS`, found at any depth inside a class folder). If ``PATH/train`` exists it is the training
split and ``PATH/test`` (or else ``PATH/val``) the test split, with the same class folders. Otherwise ``PATH`` holds the
class folders and the split is fixed and stratified 75/25: of a class of ``n`` images (``n >= 2``, in sorted path
order), ``ceil(n / 4)`` go to the test split, chosen by ``numpy.random.default_rng(0).permutation``, one generator over
the classes in sorted order (:func:`stratified_split`), so the split depends only on the file names, never on the file
system's listing order. Without ``@SIZE`` every image must have the same size; ``@N`` (N x N) or ``@HxW`` resizes each
one (bilinear, with antialiasing). If every image is grayscale (PIL modes ``1``, ``L``, ``LA``) the images have 1
channel, otherwise all are converted to RGB (3 channels; palettes expanded, alpha dropped), mixed grayscale and colour
included. Pixels are scaled to [0, 1]; :func:`fusion.data.load_dataset` standardises them. The canonical name
(:attr:`ImageFolderName.canonical`) holds the absolute path and the size, so a model records where its images came from
and how they were resized, and reloads them from any working directory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fusion.errors import DatasetError

IMAGE_FOLDER_PREFIX = "imagefolder:"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The file endings of an image folder's images, compared in lower case: those torchvision's ImageFolder reads
(``torchvision.datasets.folder.IMG_EXTENSIONS``). Other files are ignored."""
GRAYSCALE_MODES = ("1", "L", "LA")
"""PIL modes read as one grayscale channel when every image of a folder has one of them."""
MAX_IMAGE_SIDE = 1024
"""The largest side ``@SIZE`` may ask for: a guard against a typo that would fill the memory."""
SPLIT_SEED = 0
"""The seed of an image folder's fixed stratified split (:func:`stratified_split`)."""

LabelledFiles = list[tuple[Path, int]]
"""Image files with their class indices, in a fixed order."""


@dataclass(frozen=True)
class ImageFolderName:
    """A parsed ``imagefolder:PATH[@SIZE]`` name: ``path`` absolute, ``size`` ``(H, W)`` to resize every image to, or
    ``None`` to keep their (common) size."""

    path: Path
    size: tuple[int, int] | None

    @property
    def canonical(self) -> str:
        if self.size is None:
            # A trailing "/" keeps an "@" in the folder's own name from reading as a size.
            return f"{IMAGE_FOLDER_PREFIX}{self.path}{'/' if '@' in self.path.name else ''}"
        height, width = self.size
        return f"{IMAGE_FOLDER_PREFIX}{self.path}@{height if height == width else f'{height}x{width}'}"


def is_image_folder(name: str) -> bool:
    """Whether ``name`` names an image folder (``imagefolder:...``, the prefix in any case)."""
    return name.strip().lower().startswith(IMAGE_FOLDER_PREFIX)


def parse_image_size(text: str, name: str) -> tuple[int, int]:
    """``(H, W)`` of an ``@SIZE`` suffix: ``N`` for N x N or ``HxW``, each side 1 to :data:`MAX_IMAGE_SIDE` pixels."""
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip().lower())
    if match is None:
        raise DatasetError(
            f"bad size {text!r} in {name!r}: expected @N (N x N pixels) or @HxW, e.g. {IMAGE_FOLDER_PREFIX}PATH@32 "
            "(a folder whose name holds @ is written with a trailing /)"
        )
    height, width = int(match[1]), int(match[2] or match[1])
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise DatasetError(f"bad size {text!r} in {name!r}: each side must be 1 to {MAX_IMAGE_SIDE} pixels")
    return height, width


def parse_image_folder_name(name: str) -> ImageFolderName:
    """The folder and size of ``imagefolder:PATH`` or ``imagefolder:PATH@SIZE``; SIZE follows the last ``@`` unless a
    path separator follows that. ``PATH`` is made absolute against the working directory, ``~`` expanded."""
    rest = name.strip()[len(IMAGE_FOLDER_PREFIX) :] if is_image_folder(name) else ""
    path_text, at, size_text = rest.rpartition("@")
    sized = bool(at) and "/" not in size_text and os.sep not in size_text
    if not sized:
        path_text = rest
    if not path_text.strip():
        raise DatasetError(
            f"{name!r} names no folder; expected {IMAGE_FOLDER_PREFIX}PATH or {IMAGE_FOLDER_PREFIX}PATH@SIZE"
        )
    size = parse_image_size(size_text, name) if sized else None
    try:
        path = Path(path_text).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise DatasetError(f"the folder of {name!r} cannot be resolved: {exc}") from exc
    return ImageFolderName(path, size)


def visible_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` whose names do not start with ``.``, sorted by name."""
    try:
        return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"cannot list {folder}: {exc.strerror or exc}") from exc


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def class_folders(folder: Path) -> tuple[str, ...]:
    """The sorted names of the class folders in ``folder``; refuses fewer than two."""
    classes = tuple(entry.name for entry in visible_entries(folder) if entry.is_dir())
    if not classes:
        loose = sum(is_image_file(entry) for entry in visible_entries(folder))
        found = f"{loose} image files and no sub-folder" if loose else "no sub-folder"
        raise DatasetError(
            f"{folder} has no class folders: expected one sub-folder of images per class (torchvision's ImageFolder "
            f"layout, e.g. {folder}/cat/1.png, {folder}/dog/1.png), found {found}"
        )
    if len(classes) < 2:
        raise DatasetError(f"{folder} has one class folder ({classes[0]!r}); a classifier needs at least 2 classes")
    return classes


def class_images(folder: Path) -> list[Path]:
    """The image files at any depth in ``folder``, in sorted path order; hidden entries are skipped, and so are linked
    sub-folders, which could loop."""
    images = []
    for entry in visible_entries(folder):
        if entry.is_dir() and not entry.is_symlink():
            images.extend(class_images(entry))
        elif is_image_file(entry):
            images.append(entry)
    return images


def labelled_images(folder: Path, classes: Sequence[str]) -> LabelledFiles:
    """Every image of each class folder of ``folder`` with the class's index, refusing an empty class folder."""
    per_class = [class_images(folder / name) for name in classes]
    if not any(per_class):
        raise DatasetError(
            f"no images in the class folders of {folder}: expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    empty = [name for name, images in zip(classes, per_class) if not images]
    if empty:
        raise DatasetError(
            f"class folder{'s' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} of {folder} "
            f"{'hold' if len(empty) > 1 else 'holds'} no images (files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return [(path, label) for label, images in enumerate(per_class) for path in images]


def stratified_split(labels: Sequence[int], seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """The train and test indices (each ascending) of a stratified 75/25 split of ``labels``.

    Of the ``n`` indices of each class, ``ceil(n / 4)`` go to the test split: the first ones of
    ``numpy.random.default_rng(seed).permutation(n)``, one generator drawn from for the classes in ascending order.
    """
    labels = np.asarray(labels)
    generator = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[generator.permutation(len(members))]
        held_out = math.ceil(len(members) / 4)
        test.extend(members[:held_out].tolist())
        train.extend(members[held_out:].tolist())
    return sorted(train), sorted(test)


def image_folder_splits(root: Path) -> tuple[tuple[str, ...], LabelledFiles, LabelledFiles]:
    """The classes and the training and test images of an image folder (see the module docstring for the layout)."""
    if not root.exists():
        raise DatasetError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"image folder {root} is not a folder")
    if (root / "train").is_dir():
        test_folder = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
        if test_folder is None:
            raise DatasetError(f"{root} has a train folder but no test or val folder beside it for the test split")
        classes = class_folders(root / "train")
        test_classes = class_folders(test_folder)
        if classes != test_classes:
            only_train, only_test = sorted(set(classes) - set(test_classes)), sorted(set(test_classes) - set(classes))
            raise DatasetError(
                f"{root}/train and {test_folder} must hold the same class folders; only in train: "
                f"{', '.join(only_train) or 'none'}; only in {test_folder.name}: {', '.join(only_test) or 'none'}"
            )
        return classes, labelled_images(root / "train", classes), labelled_images(test_folder, classes)
    classes = class_folders(root)
    files = labelled_images(root, classes)
    counts = np.bincount([label for _, label in files], minlength=len(classes))
    single = [name for name, count in zip(classes, counts) if count < 2]
    if single:
        raise DatasetError(
            f"class folder{'s' if len(single) > 1 else ''} {', '.join(map(repr, single))} of {root} "
            f"{'hold' if len(single) > 1 else 'holds'} a single image; the 75/25 split needs at least 2 images per "
            "class (or give train and test folders)"
        )
    train, test = stratified_split([label for _, label in files])
    return classes, [files[i] for i in train], [files[i] for i in test]


def image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """The PIL mode and ``(H, W)`` of an image file, read from its header."""
    try:
        with Image.open(path) as image:
            return image.mode, (image.height, image.width)
    # PIL's decoders raise many types (OSError, SyntaxError, ValueError, struct.error...) on a damaged file.
    except Exception as exc:
        raise DatasetError(f"{path} is not a readable image: {exc}") from exc


def read_image(path: Path, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """An image file as ``(C, H, W)`` float32 in [0, 1]: converted to ``mode`` (``L`` or ``RGB``), and resized to
    ``size`` (bilinear, antialiased) when it is not that size already."""
    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert(mode), dtype=np.uint8)
    except Exception as exc:  # see image_header
        raise DatasetError(f"{path} is not a readable image: {exc}") from exc
    x = torch.from_numpy(pixels).reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1).float().div_(255.0)
    if tuple(x.shape[1:]) == size:
        return x
    return F.interpolate(x.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False).squeeze(0)


def common_size(
    headers: Sequence[tuple[str, tuple[int, int]]], files: LabelledFiles, folder: ImageFolderName
) -> tuple[int, int]:
    """The size every image has, refusing images of different sizes (naming two of them) without ``@SIZE``."""
    first = headers[0][1]
    for (_, size), (path, _) in zip(headers, files):
        if size != first:
            raise DatasetError(
                f"the images of {folder.path} differ in size: {files[0][0]} is {first[0]}x{first[1]} (HxW) and {path} "
                f"is {size[0]}x{size[1]}; give a size to resize them all to, e.g. "
                f"{replace(folder, size=(32, 32)).canonical}"
            )
    return first


@dataclass(frozen=True, eq=False)
class FolderImages:
    """An image folder's pixels, unnormalised: ``x: (N, C, H, W)`` float32 in [0, 1] and ``y: (N,)`` int64, the
    training split first (its ``train`` images), then the test split."""

    x: torch.Tensor
    y: torch.Tensor
    train: int
    classes: tuple[str, ...]
    description: str


def read_image_folder(folder: ImageFolderName) -> FolderImages:
    """Every image of ``folder``, converted to one mode and one size (see the module docstring)."""
    classes, train, test = image_folder_splits(folder.path)
    files = [*train, *test]
    headers = [image_header(path) for path, _ in files]
    mode = "L" if all(image_mode in GRAYSCALE_MODES for image_mode, _ in headers) else "RGB"
    size = folder.size or common_size(headers, files, folder)
    x = torch.stack([read_image(path, mode, size) for path, _ in files])
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    split = "its train and test folders" if (folder.path / "train").is_dir() else "the fixed stratified 75/25 split"
    description = (
        f"image folder {folder.path}: {len(classes)} classes, {len(train)} train / {len(test)} test ({split}), "
        f"{x.shape[1]}x{size[0]}x{size[1]}"
    )
    return FolderImages(x, y, len(train), classes, description)
