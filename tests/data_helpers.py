"""Datasets on disk for tests: torchvision's raw MNIST layout written from random bytes, and image folders of coloured
noise."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path, array) -> None:
    """Write ``array`` (unsigned bytes) as an IDX file: two zero bytes, type 0x08, rank, big-endian sizes, data."""

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def fake_mnist(root, class_name: str = "MNIST", n: int = 6):

    raw = root / class_name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def write_image(path: Path, colour: tuple[int, ...], size: tuple[int, int] = (12, 12), seed: int = 0) -> None:
    """A ``size`` (H, W) image of ``colour`` with a little noise; one value gives a grayscale image."""
    noise = np.random.default_rng(seed).integers(-30, 30, size=(*size, len(colour)))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels.squeeze(-1) if len(colour) == 1 else pixels).save(path)


def make_folder(
    root: Path, colours: Mapping[str, tuple[int, ...]] = COLOURS, per_class: int = 8, size: tuple[int, int] = (12, 12)
) -> Path:
    """``root/<class>/<i>.png``: ``per_class`` images of each class's colour."""
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            write_image(root / name / f"{i:02d}.png", colour, size, seed=i)
    return root
