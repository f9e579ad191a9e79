"""A user's own images, ``imagefolder:PATH`` or ``imagefolder:PATH@SIZE``, read into tensors.

The layout is torchvision's ImageFolder: one sub-folder per class, named after it (class indices follow the sorted
folder names; hidden entries, those starting with ``.``, are skipped; image files are those torchvision's ImageFolder
reads, :data:`IMAGE_EXTENSIONS`, found at any depth inside a class folder). If ``PATH/train`` exists it is the training
split and ``PATH/test`` (or else ``PATH/val``) the test split, with the same class folders. Otherwise ``PATH`` holds the
class folders and the split is fixed and stratified 75/25: of a class of ``n`` images (``n >= 2``, in sorted path
order), ``ceil(n / 4)`` go to the test split, chosen by ``numpy.random.default_rng(0).permutation``, one generator over
the classes in sorted order (:func:`stratified_split`), so the split depends only on the file names, never on the file
system's listing order. A class folder may be a link to a folder outside ``PATH``; one that resolves to ``PATH`` or a
folder holding it, or to the same place as another class folder (of either split), inside it or around it, is refused,
and so are two image files that are one file through a link: every image is read once, under one class. Without
``@SIZE`` every image must have the same size; ``@N`` (N x N) or ``@HxW`` resizes each one (bilinear, with
antialiasing). If every image is grayscale (PIL modes ``1``, ``L``, ``LA`` and the 16-bit
:data:`SIXTEEN_BIT_GRAYSCALE_MODES`) the images have 1 channel, otherwise all are converted to RGB (3 channels; palettes
expanded, alpha dropped, a 16-bit grayscale image repeated in each), mixed grayscale and colour included. Pixels are
scaled to [0, 1], 8-bit ones divided by 255 and 16-bit grayscale ones by 65535 (PIL reads 16-bit colour at 8 bits);
:func:`fusion.data.load_dataset` standardises them. The image sizes are read from the files' headers first, and a folder
whose decoded pixels (``N x C x H x W`` float32, at ``SIZE`` when given) would take more than
:func:`decoded_bytes_limit` is refused before any image is decoded, as is an image past PIL's decompression-bomb guard
(``PIL.Image.MAX_IMAGE_PIXELS``) or one PIL fails to read, naming the file. The canonical name
(:attr:`ImageFolderName.canonical`) holds the absolute path and the size, so a model records where its images came from
and how they were resized, and reloads them from any working directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fusion.device import available_memory
from fusion.errors import DatasetError

IMAGE_FOLDER_PREFIX = "imagefolder:"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The file endings of an image folder's images, compared in lower case: those torchvision's ImageFolder reads
(``torchvision.datasets.folder.IMG_EXTENSIONS``). Other files are ignored."""
SIXTEEN_BIT_GRAYSCALE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of 16-bit grayscale images (16-bit PNG and TIFF; ``I``, 32-bit integers, is how PIL reads a 16-bit PGM),
read at their full depth: divided by 65535. An ``I`` image with values outside 0 to 65535 is refused."""
GRAYSCALE_MODES = ("1", "L", "LA", *SIXTEEN_BIT_GRAYSCALE_MODES)
"""PIL modes read as one grayscale channel when every image of a folder has one of them."""
MAX_IMAGE_SIDE = 1024
"""The largest side ``@SIZE`` may ask for: a guard against a typo that would fill the memory."""
MAX_DECODED_BYTES = 4 * 2**30
"""The most memory an image folder's decoded pixels (float32) may take, however much memory is free
(:func:`decoded_bytes_limit`)."""
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


def check_class_folders_are_distinct(root: Path, folders: Sequence[Path]) -> None:
    """Refuses a class folder of the image folder ``root`` that resolves, through a link, to ``root`` or a folder
    holding it, or to the same place as another class folder, inside it or around it: its images would be read
    again, under another class. A linked class folder that resolves to a folder of its own (outside ``root``, say) is
    read."""
    resolved_root = root.resolve()
    places = [folder.resolve() for folder in folders]
    for folder, place in zip(folders, places):
        if place == resolved_root / folder.relative_to(root):
            continue  # not linked: sibling folders never overlap
        if resolved_root.is_relative_to(place):
            raise DatasetError(
                f"class folder {folder} links to {place}, which holds the image folder {root}: its images would be "
                f"read again as class {folder.name!r}; a class folder must hold its own images"
            )
        for other, other_place in zip(folders, places):
            if other == folder or not (place.is_relative_to(other_place) or other_place.is_relative_to(place)):
                continue
            relation = (
                "the same folder as"
                if place == other_place
                else "a folder inside"
                if place.is_relative_to(other_place)
                else "a folder holding"
            )
            raise DatasetError(
                f"class folder {folder} links to {place}, {relation} class folder {other} ({other_place}): its images "
                f"would be read again as class {folder.name!r}; a class folder must hold its own images"
            )


def check_each_image_is_read_once(files: LabelledFiles) -> None:
    """Refuses two image files that resolve, through a link, to one file: it would be read twice, under two classes
    or in both splits."""
    first_path: dict[Path, Path] = {}
    for path, _ in files:
        target = path.resolve()
        if target in first_path:
            raise DatasetError(
                f"{path} and {first_path[target]} are one image file, {target} (through a link); every image of a "
                "folder is read once, under one class"
            )
        first_path[target] = path


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
        check_class_folders_are_distinct(
            root, [split / name for split in (root / "train", test_folder) for name in classes]
        )
        train, test = labelled_images(root / "train", classes), labelled_images(test_folder, classes)
        check_each_image_is_read_once([*train, *test])
        return classes, train, test
    classes = class_folders(root)
    check_class_folders_are_distinct(root, [root / name for name in classes])
    files = labelled_images(root, classes)
    check_each_image_is_read_once(files)
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


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``path`` opened by PIL; a file past PIL's decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS`` pixels, whose
    warning is taken as an error here) or that PIL fails to read or decode is a :class:`DatasetError` naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(
            f"{path} is too large to decode safely: {exc} (PIL.Image.MAX_IMAGE_PIXELS); shrink the file itself, as "
            "@SIZE resizes an image only once decoded"
        ) from exc
    # PIL's decoders raise many types (OSError, SyntaxError, ValueError, struct.error...) on a damaged file.
    except Exception as exc:
        raise DatasetError(f"{path} is not a readable image: {exc}") from exc


def image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """The PIL mode and ``(H, W)`` of an image file, read from its header."""
    with open_image(path) as image:
        return image.mode, (image.height, image.width)


def read_image(path: Path, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """An image file as ``(C, H, W)`` float32 in [0, 1]: converted to ``mode`` (``L`` or ``RGB``; 16-bit grayscale
    divided by 65535 and repeated in each channel of ``RGB``, others converted by PIL and divided by 255), and resized
    to ``size`` (bilinear, antialiased) when it is not that size already."""
    with open_image(path) as image:
        if image.mode in SIXTEEN_BIT_GRAYSCALE_MODES:
            pixels, scale = np.array(image, dtype=np.float32), 65535.0
            low, high = pixels.min(), pixels.max()
            if low < 0 or high > 65535:
                raise DatasetError(
                    f"{path} holds values from {low:.0f} to {high:.0f} (PIL mode {image.mode}); a grayscale image is "
                    "read as 16 bits, 0 to 65535"
                )
        else:
            pixels, scale = np.array(image.convert(mode), dtype=np.uint8), 255.0
    x = torch.from_numpy(pixels).reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1).float().div_(scale)
    if mode == "RGB" and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
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


def decoded_bytes_limit() -> int:
    """The most bytes an image folder's decoded pixels may take: the smaller of :data:`MAX_DECODED_BYTES` and a
    quarter of the memory available (:func:`fusion.device.available_memory` of the CPU), as loading holds about four
    times the pixels at its peak (the images read and their stack; the float64 statistics and the standardised copy
    of :func:`fusion.data.load_image_folder`)."""
    return min(MAX_DECODED_BYTES, available_memory(torch.device("cpu")) // 4)


def check_decoded_size(count: int, channels: int, size: tuple[int, int], folder: ImageFolderName) -> None:
    """Refuses ``count`` images of ``channels x H x W`` float32 (``size`` ``(H, W)``) that would take more than
    :func:`decoded_bytes_limit`, naming the estimate and the largest ``@SIZE`` that fits."""
    needed, limit = count * channels * size[0] * size[1] * 4, decoded_bytes_limit()
    if needed <= limit:
        return
    side = min(math.isqrt(limit // (count * channels * 4)), MAX_IMAGE_SIDE)
    advice = (
        f"give a {'smaller ' if folder.size else ''}size to resize them to, at most {side}x{side} fits, e.g. "
        f"{replace(folder, size=(side, side)).canonical}"
        if side >= 1
        else "they are too many to hold even at 1x1 pixel"
    )
    raise DatasetError(
        f"the {count} images of {folder.path} would take {needed / 2**30:.1f} GiB decoded ({count} x {channels}x"
        f"{size[0]}x{size[1]} float32), more than the {limit / 2**30:.1f} GiB allowed (the smaller of "
        f"{MAX_DECODED_BYTES / 2**30:g} GiB and a quarter of the memory available); {advice}"
    )


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
    """Every image of ``folder``, converted to one mode and one size (see the module docstring); the memory the
    decoded pixels would take is checked from the files' headers before any image is decoded."""
    classes, train, test = image_folder_splits(folder.path)
    files = [*train, *test]
    headers = [image_header(path) for path, _ in files]
    mode = "L" if all(image_mode in GRAYSCALE_MODES for image_mode, _ in headers) else "RGB"
    size = folder.size or common_size(headers, files, folder)
    check_decoded_size(len(files), 1 if mode == "L" else 3, size, folder)
    x = torch.stack([read_image(path, mode, size) for path, _ in files])
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    split = "its train and test folders" if (folder.path / "train").is_dir() else "the fixed stratified 75/25 split"
    description = (
        f"image folder {folder.path}: {len(classes)} classes, {len(train)} train / {len(test)} test ({split}), "
        f"{x.shape[1]}x{size[0]}x{size[1]}"
    )
    return FolderImages(x, y, len(train), classes, description)
