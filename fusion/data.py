"""Datasets as normalised in-memory tensors.

``digits`` is the offline default: scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped inside the
package, no download). Its split is fixed and documented: a stratified 75/25 split with
``sklearn.model_selection.train_test_split(test_size=0.25, random_state=0, stratify=labels)``, i.e. 1,347 training and
450 test images; pixels (0..16) are scaled to [0, 1] and standardised with the training set's mean and standard
deviation.

MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 come from torchvision under a local root (``FUSIONLAB_DATA`` or
``~/.fusionlab/data``); they are downloaded only when asked for with ``download=True``. Their normalisation constants
are the usual per-channel training-set statistics.

``imagefolder:PATH`` and ``imagefolder:PATH@SIZE`` are a user's own images (:mod:`fusion.image_folder` reads them:
layout, split, size and channels), standardised per channel with their training split's mean and (population)
standard deviation; a channel constant over the training split keeps a standard deviation of 1. A folder is read
once per process: restart to see files changed since.

The :class:`Normalization` a dataset uses is stored with every model trained on it, and every analysis reloads the
dataset through :func:`load_dataset`, so inputs are always standardised the way the model saw them in training.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fusion.errors import DatasetError
from fusion.image_folder import ImageFolderName, is_image_folder, parse_image_folder_name, read_image_folder
from fusion.records import Record

TORCHVISION_DATASETS = {
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = ("digits", *TORCHVISION_DATASETS)
TORCHVISION_SIGNATURES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}
"""``(input_shape, num_classes)`` of each torchvision dataset, known without loading it."""
DATASET_FORMS = f"{', '.join(DATASETS)}, imagefolder:PATH or imagefolder:PATH@SIZE (SIZE: N for NxN, or HxW)"
"""Every form a dataset name takes, for messages and help texts."""


@dataclass(frozen=True)
class Normalization(Record):
    """Per-channel standardisation ``x' = (x - mean) / std`` applied to inputs scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held as normalised tensors.

    Every input is standardised per channel, ``x' = (x - mean_c) / std_c`` with ``x`` scaled to [0, 1] and the
    training split's statistics (``normalization``), so a model sees the same inputs in training and in every analysis.

    Attributes
    ----------
    name : str
        The canonical name :func:`load_dataset` takes (``"digits"``, ``"cifar10"``, ``"imagefolder:/path@32"``).
    x_train, x_test : torch.Tensor
        ``(N, C, H, W)`` float32 inputs of each split.
    y_train, y_test : torch.Tensor
        ``(N,)`` int64 labels in ``[0, num_classes)``.
    num_classes : int
        The number of classes.
    normalization : Normalization
        The per-channel ``mean`` and ``std`` applied, stored with every model trained on the data.
    description : str
        One line on the source and the split.
    classes : tuple[str, ...]
        The class names, index ``i`` naming label ``i``.

    Examples
    --------
    >>> from fusion import load_dataset
    >>> data = load_dataset("digits")
    >>> data.input_shape, data.num_classes
    ((1, 8, 8), 10)
    >>> x, y = data.split("test")
    >>> tuple(x.shape), x.dtype, y.dtype
    ((450, 1, 8, 8), torch.float32, torch.int64)
    >>> x, y = data.sample("train", 4, seed=0)  # seeded, without replacement
    >>> tuple(x.shape), y.shape == (4,)
    ((4, 1, 8, 8), True)
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    normalization: Normalization
    description: str = field(default="")
    classes: tuple[str, ...] = field(default=())
    """The class names, index ``i`` naming label ``i``."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        if which == "train":
            return self.x_train, self.y_train
        if which == "test":
            return self.x_test, self.y_test
        raise DatasetError(f"split must be 'train' or 'test', got {which!r}")

    def sample(self, which: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples of a split drawn without replacement with a fixed seed (all of them if ``n`` exceeds it)."""
        x, y = self.split(which)
        if n < 1:
            raise DatasetError(f"need at least one sample, got n={n}")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(x), generator=generator)[: min(n, len(x))]
        return x[index], y[index]


def data_root() -> Path:
    return Path(os.environ.get("FUSIONLAB_DATA", Path.home() / ".fusionlab" / "data")).expanduser()


def check_dataset_name(name: str) -> str:
    """The canonical form of a dataset name: a built-in name in lower case, or ``imagefolder:ABSOLUTE_PATH`` with
    ``@N`` (square) or ``@HxW`` when a size is given.

    Checks the form only; whether an image folder exists and holds images is checked when it is loaded. Raises
    :class:`DatasetError` for an unknown name or a malformed image-folder name.
    """
    if is_image_folder(name):
        return parse_image_folder_name(name).canonical
    key = name.lower().strip()
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {DATASET_FORMS}")
    return key


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> Dataset:
    """Load a dataset by name, split and standardised; see the module docstring for splits and normalisation.

    Parameters
    ----------
    name : str
        ``digits`` (offline, the default everywhere), ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, or
        ``imagefolder:PATH`` / ``imagefolder:PATH@SIZE`` (a user's images, one folder per class).
    root : str or Path, optional
        Where the torchvision datasets live (``FUSIONLAB_DATA``, else ``~/.fusionlab/data``).
    download : bool
        Allow torchvision to download a dataset missing under ``root``; nothing else is ever downloaded.

    Returns
    -------
    Dataset
        ``x_*: (N, C, H, W)`` float32 standardised inputs and ``y_*: (N,)`` int64 labels of both splits. Results are
        cached per process: never modify the returned tensors.

    Raises
    ------
    DatasetError
        For an unknown name, a torchvision dataset that is not under ``root`` and was not allowed (or could not be)
        downloaded, or an image folder that cannot be read as a dataset.

    Examples
    --------
    >>> from fusion import DatasetError, load_dataset
    >>> data = load_dataset("digits")  # scikit-learn's 8x8 digits, a fixed stratified 75/25 split
    >>> len(data.x_train), len(data.x_test), data.classes[:3]
    (1347, 450, ('0', '1', '2'))
    >>> abs(float(data.x_train.mean())) < 1e-6, round(float(data.x_train.std()), 4)  # standardised on the train split
    (True, 1.0)
    >>> try:
    ...     load_dataset("imagenet")
    ... except DatasetError as refused:
    ...     print(str(refused).split(";")[0])
    unknown dataset 'imagenet'
    """
    key = check_dataset_name(name)
    if is_image_folder(key):
        return load_image_folder(parse_image_folder_name(key))
    if key == "digits":
        return load_digits()
    return load_torchvision(key, str(Path(root).expanduser() if root else data_root()), download)


def dataset_signature(name: str) -> tuple[tuple[int, int, int], int]:
    """``(input_shape, num_classes)`` of a dataset without loading (or downloading) a torchvision one.

    Used to show a form's defaults and to check options before a job starts; the job itself builds its spec from the
    loaded dataset. digits and an image folder are loaded (and so cached for the job).
    """
    key = check_dataset_name(name)
    if key in TORCHVISION_SIGNATURES:
        return TORCHVISION_SIGNATURES[key]
    data = load_dataset(key)
    return data.input_shape, data.num_classes


DIGITS_SPLIT = Path(__file__).with_name("digits_split.npz")
"""The digits split, frozen: the train and test indices (in their order) of scikit-learn's
``train_test_split(test_size=0.25, random_state=0, stratify=target)``, which a test recomputes and compares."""


def digits_csv() -> Path:
    """scikit-learn's bundled ``digits.csv.gz`` (1,797 rows of 64 pixels in 0..16 and the label), found without
    importing scikit-learn, whose import takes longer than training a demo model."""
    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:
        raise DatasetError("the digits dataset ships with scikit-learn, which is not installed")
    return Path(next(iter(found.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


@functools.lru_cache(maxsize=1)
def load_digits() -> Dataset:
    with gzip.open(digits_csv()) as file:
        table = np.loadtxt(file, delimiter=",")
    images, target = (table[:, :-1] / 16.0).astype(np.float32).reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    with np.load(DIGITS_SPLIT) as split:
        train, test = split["train"].astype(np.int64), split["test"].astype(np.int64)
    x_train, x_test, y_train, y_test = images[train], images[test], target[train], target[test]
    mean, std = float(x_train.mean()), float(x_train.std())
    normalise = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1).contiguous()  # noqa: E731
    return Dataset(
        name="digits",
        x_train=normalise(x_train),
        y_train=torch.from_numpy(y_train).long(),
        x_test=normalise(x_test),
        y_test=torch.from_numpy(y_test).long(),
        num_classes=10,
        normalization=Normalization((mean,), (std,)),
        description="scikit-learn 8x8 digits, 1,347 train / 450 test (stratified, random_state=0), offline",
        classes=tuple(str(digit) for digit in range(10)),
    )


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""The raw files torchvision's MNIST and Fashion-MNIST read, under ``root/<class name>/raw``."""


def check_idx_file(path: Path) -> None:
    """Refuse an IDX file (LeCun's MNIST format) whose header or length is wrong, naming it.

    An IDX file is two zero bytes, a type code (``0x08``: unsigned bytes, the only type MNIST uses), the rank ``r``,
    then ``r`` big-endian 32-bit sizes ``d_1 .. d_r`` and exactly ``d_1 * ... * d_r`` data bytes. torchvision reads
    such a file with bare assertions, so a truncated or foreign file would otherwise end in an ``AssertionError``."""
    with path.open("rb") as handle:
        header = handle.read(4)
        if len(header) < 4 or header[:2] != b"\0\0" or header[2] != 0x08 or not 1 <= header[3] <= 4:
            raise DatasetError(f"{path} is not an MNIST IDX file of bytes (its header is {header.hex() or 'empty'})")
        sizes = handle.read(4 * header[3])
    if len(sizes) < 4 * header[3]:
        raise DatasetError(f"{path} is truncated inside its header")
    shape = [int.from_bytes(sizes[i : i + 4], "big") for i in range(0, len(sizes), 4)]
    expected = 4 + len(sizes) + int(np.prod(shape))
    actual = path.stat().st_size
    if actual != expected:
        raise DatasetError(
            f"{path} holds {actual:,} bytes but its header ({' x '.join(map(str, shape))}) needs {expected:,}: "
            "the file is truncated or damaged; delete it and download again"
        )


def check_raw_files(class_name: str, root: str) -> None:
    """Check every present raw IDX file of MNIST or Fashion-MNIST before torchvision reads it."""
    if class_name not in ("MNIST", "FashionMNIST"):
        return
    for name in IDX_FILES:
        path = Path(root) / class_name / "raw" / name
        if path.is_file():
            check_idx_file(path)


@functools.lru_cache(maxsize=4)
def load_torchvision(key: str, root: str, download: bool) -> Dataset:
    import torchvision

    class_name, mean, std = TORCHVISION_DATASETS[key]
    factory = getattr(torchvision.datasets, class_name)
    check_raw_files(class_name, root)
    splits = {}
    classes: tuple[str, ...] = ()
    for train in (True, False):
        try:
            raw = factory(root=root, train=train, download=download)
        except RuntimeError as exc:
            hint = (
                ""
                if download
                else " Allow the download (--download, or the checkbox in the app) if the network allows."
            )
            raise DatasetError(f"{class_name} was not found under {root}.{hint} ({exc})") from exc
        except OSError as exc:
            raise DatasetError(f"{class_name} could not be downloaded to {root}: {exc}") from exc
        images = torch.as_tensor(np.asarray(raw.data))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        x = images.float().div_(255.0)
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        labels = torch.as_tensor(np.asarray(raw.targets)).long()
        if len(labels) != len(x):
            split = "training" if train else "test"
            raise DatasetError(
                f"{class_name} under {root}: the {split} split has {len(x)} images but {len(labels)} labels"
            )
        splits[train] = (x.contiguous(), labels)
        classes = tuple(str(c) for c in raw.classes)
    if len(splits[True][0]) == 0:
        raise DatasetError(f"{class_name} under {root} is empty")
    return Dataset(
        name=key,
        x_train=splits[True][0],
        y_train=splits[True][1],
        x_test=splits[False][0],
        y_test=splits[False][1],
        num_classes=100 if key == "cifar100" else 10,
        normalization=Normalization(mean, std),
        description=f"torchvision {class_name} from {root}",
        classes=classes,
    )


@functools.lru_cache(maxsize=4)
def load_image_folder(folder: ImageFolderName) -> Dataset:
    """An image folder as a :class:`Dataset`, standardised per channel with its training split's statistics (layout,
    split and channels: :mod:`fusion.image_folder`)."""
    images = read_image_folder(folder)
    x_train = images.x[: images.train]
    mean = x_train.double().mean(dim=(0, 2, 3))
    std = x_train.double().std(dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = ((images.x - mean.float().view(1, -1, 1, 1)) / std.float().view(1, -1, 1, 1)).contiguous()
    return Dataset(
        name=folder.canonical,
        x_train=x[: images.train],
        y_train=images.y[: images.train],
        x_test=x[images.train :],
        y_test=images.y[images.train :],
        num_classes=len(images.classes),
        normalization=Normalization(tuple(mean.tolist()), tuple(std.tolist())),
        description=images.description,
        classes=images.classes,
    )


def dataset_normalization(name: str) -> Normalization:
    """The normalisation ``load_dataset(name)`` applies, known without loading a torchvision dataset (digits and an
    image folder, whose statistics are their training split's, are loaded)."""
    key = check_dataset_name(name)
    if key in TORCHVISION_DATASETS:
        _, mean, std = TORCHVISION_DATASETS[key]
        return Normalization(mean, std)
    return load_dataset(key).normalization


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``(x, y)``: shuffled with ``generator`` when given, in order otherwise."""
    if len(x) == 0:
        raise DatasetError("the dataset is empty")
    order = torch.randperm(len(x), generator=generator) if generator is not None else None
    for start in range(0, len(x), batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield x[index], y[index]
