"""Datasets on disk for tests: torchvision's raw MNIST layout written from random bytes."""

from __future__ import annotations


def write_idx(path, array) -> None:
    """Write ``array`` (unsigned bytes) as an IDX file: two zero bytes, type 0x08, rank, big-endian sizes, data."""
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def fake_mnist(root, class_name: str = "MNIST", n: int = 6):
    import numpy as np

    raw = root / class_name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw
