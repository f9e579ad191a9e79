"""Datasets: the documented offline digits split, refusals for unknown or missing data, seeded sampling, batching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.data import (
    DATASETS,
    TORCHVISION_DATASETS,
    Dataset,
    Normalization,
    batches,
    dataset_normalization,
    load_dataset,
    load_digits,
)
from fusion.errors import DatasetError, FusionError
from tests.data_helpers import fake_mnist, write_idx

ROOT = Path(__file__).resolve().parents[1]


def toy_dataset(n_train: int = 50, n_test: int = 10) -> Dataset:
    """A dataset whose every example is distinguishable by its single pixel value (its index)."""
    return Dataset(
        name="toy",
        x_train=torch.arange(n_train, dtype=torch.float32).view(n_train, 1, 1, 1),
        y_train=torch.arange(n_train) % 2,
        x_test=torch.arange(n_test, dtype=torch.float32).view(n_test, 1, 1, 1),
        y_test=torch.arange(n_test) % 2,
        num_classes=2,
        normalization=Normalization((0.0,), (1.0,)),
    )


def test_digits_has_the_documented_split_sizes_and_shapes(digits: Dataset) -> None:
    assert digits.x_train.shape == (1347, 1, 8, 8)
    assert digits.x_test.shape == (450, 1, 8, 8)
    assert digits.y_train.shape == (1347,) and digits.y_test.shape == (450,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert set(digits.y_train.tolist()) == set(digits.y_test.tolist()) == set(range(10))


def test_digits_training_split_is_standardised(digits: Dataset) -> None:
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert float(digits.x_train.std()) == pytest.approx(1.0, abs=1e-3)


def test_digits_normalization_inverts_to_pixels_in_unit_interval(digits: Dataset) -> None:
    (mean,), (std,) = digits.normalization.mean, digits.normalization.std
    pixels = torch.cat([digits.x_train, digits.x_test]) * std + mean
    assert float(pixels.min()) == pytest.approx(0.0, abs=1e-5)
    assert float(pixels.max()) == pytest.approx(1.0, abs=1e-5)
    # the raw digits are integers 0..16 scaled by 1/16
    assert torch.allclose(pixels * 16, (pixels * 16).round(), atol=1e-3)


def test_digits_split_is_stratified(digits: Dataset) -> None:
    train_counts = torch.bincount(digits.y_train, minlength=10)
    test_counts = torch.bincount(digits.y_test, minlength=10)
    total = train_counts + test_counts
    proportional = total.double() * len(digits.y_test) / total.sum()
    assert ((test_counts.double() - proportional).abs() <= 1).all(), (test_counts, proportional)


def test_loading_digits_twice_gives_identical_tensors() -> None:
    first = load_dataset("digits")
    load_digits.cache_clear()
    second = load_dataset("digits")
    assert second is not first
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.normalization == second.normalization


def test_dataset_names_are_case_and_space_insensitive(digits: Dataset) -> None:
    assert torch.equal(load_dataset("  Digits ").x_train, digits.x_train)


@pytest.mark.parametrize("name", ["imagenet", "", "digit", "mnist2"])
def test_unknown_dataset_raises_dataset_error(name: str) -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset(name)
    with pytest.raises(DatasetError, match="unknown dataset"):
        dataset_normalization(name)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_torchvision_dataset_without_download_raises_dataset_error_mentioning_download(
    name: str, isolated_fusionlab_home
) -> None:
    data_dir = isolated_fusionlab_home / "data"
    with pytest.raises(DatasetError, match="(?i)download") as error:
        load_dataset(name, download=False)
    assert isinstance(error.value, FusionError)
    assert str(data_dir) in str(error.value)
    assert list(data_dir.iterdir()) == [], "nothing may be written without download=True"


def test_explicit_root_overrides_the_environment(tmp_path) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset("fashion-mnist", root=empty)
    assert str(empty) in str(error.value)


def test_sample_is_seeded() -> None:
    data = toy_dataset()
    first_x, first_y = data.sample("train", 20, seed=3)
    again_x, again_y = data.sample("train", 20, seed=3)
    other_x, _ = data.sample("train", 20, seed=4)
    assert torch.equal(first_x, again_x) and torch.equal(first_y, again_y)
    assert not torch.equal(first_x, other_x)


def test_sample_draws_without_replacement_and_keeps_labels_with_inputs() -> None:
    data = toy_dataset()
    x, y = data.sample("train", 20, seed=0)
    indices = x.flatten().long()
    assert len(set(indices.tolist())) == 20
    assert torch.equal(y, data.y_train[indices])


def test_sample_larger_than_the_split_returns_each_example_once() -> None:
    data = toy_dataset(n_test=10)
    x, _ = data.sample("test", 1000, seed=0)
    assert sorted(x.flatten().tolist()) == list(range(10))


@pytest.mark.parametrize(("which", "n"), [("train", 0), ("train", -5), ("validation", 3)])
def test_sample_refuses_bad_requests(which: str, n: int) -> None:
    with pytest.raises(DatasetError):
        toy_dataset().sample(which, n, seed=0)


def test_batches_on_empty_tensors_raise_dataset_error() -> None:
    with pytest.raises(DatasetError, match="empty"):
        next(batches(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long), 16))


@pytest.mark.parametrize("shuffled", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("batch_size", [1, 7, 50, 64])
def test_batches_cover_every_example_exactly_once(batch_size: int, shuffled: bool) -> None:
    data = toy_dataset(n_train=50)
    generator = torch.Generator().manual_seed(0) if shuffled else None
    parts = list(batches(data.x_train, data.y_train, batch_size, generator))
    assert all(len(x) <= batch_size and len(x) == len(y) for x, y in parts)
    seen = torch.cat([x.flatten() for x, _ in parts]).long()
    assert sorted(seen.tolist()) == list(range(50))
    assert torch.equal(torch.cat([y for _, y in parts]), data.y_train[seen])
    assert torch.equal(seen, torch.arange(50)) == (not shuffled)


def test_dataset_normalization_matches_the_loaded_digits(digits: Dataset) -> None:
    assert dataset_normalization("digits") == load_dataset("digits").normalization == digits.normalization


@pytest.mark.parametrize("name", list(TORCHVISION_DATASETS))
def test_torchvision_normalization_is_known_without_the_files(name: str) -> None:
    normalization = dataset_normalization(name)
    channels = 3 if name.startswith("cifar") else 1
    assert len(normalization.mean) == len(normalization.std) == channels
    assert all(0 < m < 1 for m in normalization.mean) and all(0 < s < 1 for s in normalization.std)
    assert normalization.to_dict() == {"mean": list(normalization.mean), "std": list(normalization.std)}


def test_every_listed_dataset_is_loadable_by_name_or_refused_as_missing() -> None:
    for name in DATASETS:
        try:
            data = load_dataset(name)
        except DatasetError as error:
            assert name != "digits", error
            continue
        assert data.name == name


def test_a_well_formed_local_mnist_loads_from_its_raw_files(tmp_path) -> None:
    fake_mnist(tmp_path, n=6)
    data = load_dataset("mnist", root=tmp_path)
    assert data.x_train.shape == (6, 1, 28, 28) and data.y_test.shape == (6,)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[: len(b) // 2], "truncated or damaged"),
        (lambda b: b"\x1f\x8b\x08\x00" + b[4:], "not an MNIST IDX file"),
        (lambda b: b"", "not an MNIST IDX file"),
        (lambda b: b[:6], "truncated inside its header"),
        (lambda b: b + b"\0" * 10, "truncated or damaged"),
    ],
    ids=["halved", "gzip-magic", "empty", "cut-header", "trailing-bytes"],
)
def test_a_corrupt_mnist_raw_file_is_a_dataset_error_naming_the_file(tmp_path, damage, reason) -> None:
    raw = fake_mnist(tmp_path, "FashionMNIST")
    target = raw / "t10k-images-idx3-ubyte"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(DatasetError, match=reason) as caught:
        load_dataset("fashion-mnist", root=tmp_path)
    assert str(target) in str(caught.value)


def test_mnist_with_more_labels_than_images_is_a_dataset_error(tmp_path) -> None:
    import numpy as np

    raw = fake_mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(9))
    with pytest.raises(DatasetError, match="6 images but 9 labels"):
        load_dataset("mnist", root=tmp_path)


def test_digits_read_without_scikit_learn_equal_scikit_learns_own_load_and_split() -> None:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = bunch.images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    data = load_digits()
    mean, std = data.normalization.mean[0], data.normalization.std[0]
    assert (mean, std) == (float(x_train.mean()), float(x_train.std()))
    assert torch.equal(data.x_train, torch.from_numpy((x_train - mean) / std).unsqueeze(1))
    assert torch.equal(data.x_test, torch.from_numpy((x_test - mean) / std).unsqueeze(1))
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()


def test_loading_digits_does_not_import_scikit_learn() -> None:
    code = "import sys; from fusion.data import load_digits; load_digits(); print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"
