"""A user's own images as a dataset: ``imagefolder:PATH[@SIZE]`` in torchvision's ImageFolder layout, its fixed
stratified split, the stated normalisation, resizing, channels, every refusal, and the command line end to end."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import fusion.image_folder
from cli.main import main
from fusion.data import check_dataset_name, dataset_normalization, dataset_signature, load_dataset, load_image_folder
from fusion.errors import DatasetError
from fusion.image_folder import IMAGE_EXTENSIONS, parse_image_folder_name, read_image_folder, stratified_split
from fusion.models import ModelSpec, build_model, default_spec
from fusion.train import TrainConfig, train
from fusion.workspace import ID_PATTERN, Workspace
from tests.data_helpers import COLOURS, make_folder, write_image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "colours")


def name_of(path: Path, size: str = "") -> str:
    return f"imagefolder:{path}{size}"


def test_a_flat_folder_is_split_75_25_within_each_class(folder: Path) -> None:
    data = load_dataset(name_of(folder))
    assert data.classes == ("blue", "green", "red")
    assert data.num_classes == 3 and data.input_shape == (3, 12, 12)
    assert (len(data.y_train), len(data.y_test)) == (18, 6)
    assert torch.bincount(data.y_train).tolist() == [6, 6, 6]
    assert torch.bincount(data.y_test).tolist() == [2, 2, 2]
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64


@given(st.lists(st.integers(0, 4), min_size=1, max_size=60))
def test_stratified_split_holds_out_the_ceiling_of_a_quarter_of_each_class(labels: list[int]) -> None:
    train_index, test_index = stratified_split(labels)
    assert sorted(train_index + test_index) == list(range(len(labels)))
    for label in set(labels):
        held_out = sum(labels[i] == label for i in test_index)
        assert held_out == math.ceil(labels.count(label) / 4)
    assert stratified_split(labels) == (train_index, test_index)


def test_the_split_does_not_depend_on_the_file_system_listing_order(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset(name_of(folder))
    load_image_folder.cache_clear()
    listing = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: reversed(list(listing(self))))
    again = load_dataset(name_of(folder))
    assert again is not first
    for split in ("train", "test"):
        assert all(torch.equal(a, b) for a, b in zip(first.split(split), again.split(split)))


def test_the_training_split_is_standardised_per_channel_and_the_test_split_alike(folder: Path) -> None:
    data = load_dataset(name_of(folder))
    assert torch.allclose(data.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(data.x_train.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    assert dataset_normalization(data.name) == data.normalization
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.normalization.mean, data.normalization.std))
    pixels = data.x_test * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_a_small_cnn_learns_the_colour_classes(folder: Path) -> None:
    data = load_dataset(name_of(folder, "@8"))
    model = build_model(ModelSpec("cnn", data.input_shape, data.num_classes, channels=(4,), hidden=(8,)), seed=0)
    result = train(model, data, TrainConfig(epochs=15, lr=1e-2, batch_size=8, seed=0))
    assert result.test is not None and result.test.accuracy == 1.0


@pytest.mark.parametrize("size,shape", [("@8", (8, 8)), ("@6x10", (6, 10)), ("@12", (12, 12))])
def test_a_size_resizes_every_image(folder: Path, size: str, shape: tuple[int, int]) -> None:
    data = load_dataset(name_of(folder, size))
    assert data.input_shape == (3, *shape) and data.x_test.shape[2:] == shape
    assert dataset_signature(data.name) == ((3, *shape), 3)


def test_images_of_different_sizes_load_once_a_size_is_given(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mixed")
    write_image(root / "red" / "large.png", COLOURS["red"], size=(20, 16))
    with pytest.raises(DatasetError, match=r"differ in size.*00\.png.*12x12.*large\.png.*20x16.*@32"):
        load_dataset(name_of(root))
    assert load_dataset(name_of(root, "@10x12")).input_shape == (3, 10, 12)


def test_grayscale_images_give_one_channel(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "gray", {"dark": (40,), "light": (210,)})
    data = load_dataset(name_of(root))
    assert data.input_shape == (1, 12, 12) and len(data.normalization.mean) == 1


def test_mixed_grayscale_and_colour_images_are_read_as_rgb(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mixed", {"dark": (40,), "red": (200, 40, 40)})
    data = load_dataset(name_of(root))
    assert data.input_shape == (3, 12, 12)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.normalization.mean, data.normalization.std))
    gray = (data.x_train * std + mean)[data.y_train == data.classes.index("dark")]
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-5) and torch.allclose(gray[:, 0], gray[:, 2], atol=1e-5)


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_train_and_test_folders_are_the_splits(tmp_path: Path, test_folder: str) -> None:
    make_folder(tmp_path / "split" / "train", per_class=5)
    make_folder(tmp_path / "split" / test_folder, per_class=2)
    data = load_dataset(name_of(tmp_path / "split"))
    assert (len(data.y_train), len(data.y_test)) == (15, 6)
    assert torch.bincount(data.y_test).tolist() == [2, 2, 2]


def test_train_and_test_folders_with_different_classes_are_refused_naming_the_difference(tmp_path: Path) -> None:
    make_folder(tmp_path / "split" / "train", per_class=2)
    make_folder(tmp_path / "split" / "test", {"red": (200, 0, 0), "green": (0, 200, 0), "cyan": (0, 200, 200)}, 2)
    with pytest.raises(DatasetError, match="only in train: blue; only in test: cyan"):
        load_dataset(name_of(tmp_path / "split"))


def test_the_canonical_name_is_absolute_and_reloads_from_another_folder(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder.parent)
    canonical = check_dataset_name(f" ImageFolder:{folder.name}@8x8 ")
    assert canonical == f"imagefolder:{folder}@8"
    monkeypatch.chdir(tmp_path.parent)
    assert load_dataset(canonical).name == canonical
    assert check_dataset_name(canonical) == canonical


def test_a_folder_named_with_an_at_sign_keeps_a_round_trip_name(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "me@home")
    canonical = check_dataset_name(f"imagefolder:{root}/")
    assert check_dataset_name(canonical) == canonical
    assert load_dataset(canonical).num_classes == 3
    assert check_dataset_name(f"imagefolder:{root}@16") == f"imagefolder:{root}@16"


def test_loads_are_cached_per_folder_and_size(folder: Path) -> None:
    assert load_dataset(name_of(folder, "@8")) is load_dataset(f"imagefolder:{folder}/../{folder.name}@8x8")
    assert load_dataset(name_of(folder, "@8")) is not load_dataset(name_of(folder))


def test_dataset_signatures_of_torchvision_datasets_need_no_files() -> None:
    assert dataset_signature("cifar10") == ((3, 32, 32), 10)


def test_image_extensions_are_torchvisions() -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS


def bad_folder(tmp_path: Path, case: str) -> Path:
    """A folder that cannot be read as a dataset in the way ``case`` says."""
    root = tmp_path / "bad"
    if case == "missing":
        return root
    if case == "a file":
        root.write_text("not a folder")
        return root
    root.mkdir()
    if case == "no class folders":
        write_image(root / "loose.png", (1, 2, 3))
    elif case == "no images":
        (root / "a").mkdir()
        (root / "b").mkdir()
        (root / "b" / "notes.txt").write_text("not an image")
    elif case == "an empty class":
        make_folder(root, {"a": (1, 2, 3), "b": (4, 5, 6)})
        (root / "c").mkdir()
    elif case == "one class":
        make_folder(root, {"a": (1, 2, 3)})
    elif case == "a class of one image":
        make_folder(root, {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=1)
    elif case == "a corrupt image":
        make_folder(root, {"a": (1, 2, 3), "b": (4, 5, 6)})
        (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif case == "train without test":
        make_folder(root / "train", {"a": (1, 2, 3), "b": (4, 5, 6)})
    return root


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "bad does not exist"),
        ("a file", "bad is not a folder"),
        ("no class folders", "no class folders: expected one sub-folder of images per class.*found 1 image files"),
        ("no images", "no images in the class folders of .*bad: expected files ending in .jpg"),
        ("an empty class", "class folder 'c' of .*bad holds no images"),
        ("one class", "one class folder \\('a'\\); a classifier needs at least 2 classes"),
        ("a class of one image", "class folders 'a', 'b' of .*bad hold a single image"),
        ("a corrupt image", "broken.png is not a readable image"),
        ("train without test", "has a train folder but no test or val folder"),
    ],
)
def test_a_folder_that_is_not_a_dataset_is_refused_with_what_was_found(tmp_path: Path, case: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(name_of(bad_folder(tmp_path, case), "@8"))


def linked_class_folder(tmp_path: Path, target: str) -> Path:
    """An image folder of classes ``a``, ``b`` and ``c`` whose class folder ``b`` is a link to ``target``."""
    root = make_folder(tmp_path / "linked", {"a": (200, 40, 40), "c": (40, 40, 200)}, per_class=4)
    (root / "a" / "deep").mkdir()
    write_image(root / "a" / "deep" / "00.png", (200, 40, 40))
    outside = make_folder(tmp_path / "outside", {"blue": (40, 40, 200)}, per_class=4) / "blue"
    targets = {
        "the dataset root": root,
        "the folder holding the dataset": tmp_path,
        "another class": root / "a",
        "a folder inside another class": root / "a" / "deep",
        "the outside folder another class links to": outside,
    }
    if target == "the outside folder another class links to":
        (root / "c").rename(tmp_path / "c")
        (root / "c").symlink_to(outside, target_is_directory=True)
    (root / "b").symlink_to(targets[target], target_is_directory=True)
    return root


LINKED_CLASS_FOLDER_REFUSALS = {
    "the dataset root": r"class folder .*linked/b links to .*linked, which holds the image folder",
    "the folder holding the dataset": r"class folder .*linked/b links to .*, which holds the image folder",
    "another class": r"class folder .*linked/b links to .*linked/a, the same folder as class folder .*linked/a",
    "a folder inside another class": r"links to .*linked/a/deep, a folder inside class folder .*linked/a \(",
    "the outside folder another class links to": r"linked/b links to .*outside/blue, the same folder as .*/c",
}


@pytest.mark.parametrize("target", LINKED_CLASS_FOLDER_REFUSALS)
def test_class_folder_linking_to_dataset_root_or_another_class_is_refused(tmp_path: Path, target: str) -> None:
    with pytest.raises(DatasetError, match=LINKED_CLASS_FOLDER_REFUSALS[target] + r".*read again as class 'b'"):
        load_dataset(name_of(linked_class_folder(tmp_path, target)))


def test_a_test_split_linking_to_the_training_images_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "split" / "train", per_class=4)
    (tmp_path / "split" / "test").symlink_to(tmp_path / "split" / "train", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"class folder .*split/test/blue links to .*split/train/blue, the same"):
        load_dataset(name_of(tmp_path / "split"))


def test_a_class_folder_linking_to_its_own_folder_outside_the_dataset_is_read(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "linked", {"a": (200, 40, 40)}, per_class=4)
    outside = make_folder(tmp_path / "outside", {"blue": (40, 40, 200)}, per_class=4) / "blue"
    (root / "b").symlink_to(outside, target_is_directory=True)
    images = read_image_folder(parse_image_folder_name(name_of(root)))
    assert images.classes == ("a", "b") and torch.bincount(images.y).tolist() == [4, 4]
    blue = images.x[images.y == 1].mean(dim=(0, 2, 3))
    assert blue[2] > 0.7 and blue[0] < 0.3


@pytest.mark.parametrize("into", ["another class", "the same class"])
def test_an_image_linked_to_another_image_is_refused_rather_than_read_twice(tmp_path: Path, into: str) -> None:
    root = make_folder(tmp_path / "colours", per_class=4)
    link = root / ("green" if into == "another class" else "blue") / "linked.png"
    link.symlink_to(root / "blue" / "00.png")
    with pytest.raises(DatasetError, match=rf"{link} and .*blue/00\.png are one image file, .*blue/00\.png"):
        load_dataset(name_of(root))


def write_grayscale(path: Path, pixels: np.ndarray) -> str:
    """``pixels`` saved to ``path`` by PIL (the array's dtype choosing the mode); the mode PIL reads back."""
    Image.fromarray(pixels).save(path)
    with Image.open(path) as image:
        return image.mode


SIXTEEN_BIT_VALUES = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)


@pytest.mark.parametrize(
    "suffix,dtype,mode",
    [(".png", "uint16", "I;16"), (".tif", ">u2", "I;16B"), (".tif", "int32", "I"), (".pgm", "uint16", "I")],
)
def test_sixteen_bit_grayscale_png_is_read_as_one_channel_at_full_depth(
    tmp_path: Path, suffix: str, dtype: str, mode: str
) -> None:
    root = tmp_path / "deep"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            assert write_grayscale(root / name / f"{i}{suffix}", SIXTEEN_BIT_VALUES.astype(dtype)) == mode
    images = read_image_folder(parse_image_folder_name(name_of(root)))
    assert images.x.shape == (4, 1, 2, 2)
    expected = torch.tensor([[0.0, 16384 / 65535], [32768 / 65535, 1.0]])
    assert torch.allclose(images.x, expected.expand(4, 1, 2, 2), atol=1e-6)
    assert abs(images.x[0, 0, 1, 0].item() - 0.5) < 1e-4


def test_sixteen_bit_grayscale_beside_colour_keeps_its_full_depth_in_each_channel(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mixed", {"red": (200, 40, 40)}, per_class=2, size=(2, 2))
    (root / "gray").mkdir()
    for i in range(2):
        write_grayscale(root / "gray" / f"{i}.png", SIXTEEN_BIT_VALUES)
    images = read_image_folder(parse_image_folder_name(name_of(root)))
    assert images.x.shape == (4, 3, 2, 2)
    gray = images.x[images.y == images.classes.index("gray")]
    expected = torch.tensor([[0.0, 16384 / 65535], [32768 / 65535, 1.0]])
    assert torch.allclose(gray, expected.expand(2, 3, 2, 2), atol=1e-6)


def test_a_thirty_two_bit_image_past_sixteen_bits_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "deep", {"a": (1,), "b": (2,)}, per_class=2, size=(2, 2))
    write_grayscale(root / "b" / "wide.tif", np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(DatasetError, match=r"wide\.tif holds values from 0 to 70000 \(PIL mode I\)"):
        load_dataset(name_of(root, "@2"))


def write_png_header(path: Path, height: int, width: int) -> None:
    """An 8-bit RGB PNG file whose header says ``height x width`` and whose pixel data is no deflate stream: PIL reads
    its mode and size, and fails to decode it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not pixels") + chunk(b"IEND", b"")
    )


def test_images_too_large_to_decode_are_refused_before_decoding(tmp_path: Path) -> None:
    root = tmp_path / "large"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(50):
            write_png_header(root / name / f"{i:02d}.png", 3000, 3000)
    with pytest.raises(DatasetError) as refused:
        load_dataset(name_of(root))
    message = str(refused.value)
    assert "the 100 images of" in message and "10.1 GiB decoded (100 x 3x3000x3000 float32)" in message
    assert f"e.g. imagefolder:{root}@" in message and "not a readable image" not in message
    with pytest.raises(DatasetError, match=r"large/a/\d\d\.png is not a readable image"):
        load_dataset(name_of(root, "@8"))


def test_large_images_load_once_a_size_that_fits_is_given(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fusion.image_folder, "MAX_DECODED_BYTES", 20_000)
    with pytest.raises(DatasetError, match=r"24 images .* \(24 x 3x12x12 float32\).*at most 8x8 fits") as refused:
        load_dataset(name_of(folder))
    suggested = str(refused.value).rpartition("e.g. ")[2]
    assert suggested == f"imagefolder:{folder}@8"
    assert load_dataset(suggested).input_shape == (3, 8, 8)
    with pytest.raises(DatasetError, match=r"give a smaller size to resize them to, at most 8x8 fits"):
        load_dataset(name_of(folder, "@10"))


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_an_image_past_pils_decompression_bomb_guard_is_refused_naming_it(tmp_path: Path, side: int) -> None:
    root = make_folder(tmp_path / "bomb", {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=2)
    write_png_header(root / "b" / "huge.png", side, side)
    with pytest.raises(DatasetError, match=rf"huge\.png is too large to decode safely: .*{side * side} pixels"):
        load_dataset(name_of(root, "@8"))


def test_an_image_that_fails_to_decode_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "damaged", {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=2)
    write_png_header(root / "b" / "damaged.png", 12, 12)
    with pytest.raises(DatasetError, match=r"b/damaged\.png is not a readable image"):
        load_dataset(name_of(root))


@pytest.mark.parametrize(
    "name,message",
    [
        ("imagefolder:", "names no folder"),
        ("imagefolder:@8", "names no folder"),
        ("imagefolder:x@0", "each side must be 1 to 1024"),
        ("imagefolder:x@2000", "each side must be 1 to 1024"),
        ("imagefolder:x@", "bad size ''.*expected @N"),
        ("imagefolder:x@big", "bad size 'big'"),
        ("imagefolder:x@8x", "bad size '8x'"),
        ("imagefolder:x@-8", "bad size '-8'"),
    ],
)
def test_a_malformed_image_folder_name_is_refused(name: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        check_dataset_name(name)


def run_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    status = main([*args, "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    (line,) = out.strip().splitlines()
    return status, json.loads(line)


def test_the_command_line_trains_and_fuses_models_of_an_image_folder(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    workspace = ["--workspace", str(tmp_path / "ws")]
    dataset = f"imagefolder:{folder}@8"
    status, trained = run_json(
        capsys, "train", "--arch", "cnn", "--dataset", dataset, "--epochs", "1", "--seed", "0", "1", *workspace
    )
    assert status == 0, trained
    assert [m["dataset"] for m in trained["models"]] == [dataset, dataset]
    records = Workspace(tmp_path / "ws").records()
    assert {r.normalization for r in records} == {load_dataset(dataset).normalization}
    ids = [m["id"] for m in trained["models"]]
    status, fused = run_json(capsys, "fuse", "--method", "ot", "--models", *ids, *workspace)
    assert status == 0, fused
    (model,) = fused["models"]
    assert model["dataset"] == dataset and 0 <= model["test_accuracy_pct"] <= 100


@pytest.mark.parametrize(
    "dataset,status,error",
    [("imagefolder:{empty}", 1, "DatasetError"), ("imagefolder:{empty}@0", 2, "UsageError")],
)
def test_the_command_line_refuses_an_image_folder_with_one_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, dataset: str, status: int, error: str
) -> None:
    (tmp_path / "empty").mkdir()
    code, output = run_json(
        capsys,
        "train",
        "--arch",
        "cnn",
        "--dataset",
        dataset.format(empty=tmp_path / "empty"),
        "--workspace",
        str(tmp_path / "ws"),
    )
    assert code == status
    assert output["error"]["type"] == error and "empty" in output["error"]["message"]


def test_ids_of_long_architecture_names_on_image_folders_stay_valid(tmp_path: Path) -> None:
    spec = default_spec("timm:vit_small_patch16_224.augreg_in21k_ft_in1k", (3, 32, 32), 3)
    dataset = f"imagefolder:{tmp_path}/a-very-long-folder-name-of-someones-own-photographs@32"
    model_id = Workspace(tmp_path / "ws").new_id(spec, dataset, "finetune-of-a-fusion")
    assert ID_PATTERN.fullmatch(model_id), model_id
    assert model_id.startswith("timm-vit-small-patch16-224-augre-a-very-long-folder-name-finetune-of-a-fu-")
