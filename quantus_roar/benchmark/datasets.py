"""Datasets of the benchmark runner, by spec string.

========================  ==================================================
spec                      what is loaded
========================  ==================================================
``digits``                scikit-learn's bundled 8x8 digits (embedded)
``synthetic``             :func:`quantus_roar.make_synthetic`, 4 classes
``mnist:ROOT``            ``torchvision.datasets.MNIST(ROOT, download=False)``
``cifar10:ROOT``          ``torchvision.datasets.CIFAR10(ROOT, download=False)``
``imagefolder:ROOT``      ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``
                          image files, or ``ROOT/<class>/*`` split by seed
========================  ==================================================

Images become float32 arrays (N, C, H, W) in [0, 1] (the synthetic set is
standard normal). With ``stream=True`` they are written once to ``.npy``
files in a cache folder, chunk by chunk, and opened memory-mapped, so no
step of the benchmark holds a whole split in memory.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BenchmarkData", "DatasetError", "dataset_names", "load_dataset"]

_CHUNK = 4096


class DatasetError(FileNotFoundError):
    """A dataset spec names a folder that is missing or not in the expected layout."""


@dataclass
class BenchmarkData:
    """Train and test splits of a benchmark dataset.

    Attributes
    ----------
    name : str
        The spec it was loaded from.
    x_train, x_test : numpy.ndarray
        float32 (N, C, H, W); ``numpy.memmap`` when streamed.
    y_train, y_test : numpy.ndarray
        int64 labels in [0, n_classes).
    n_classes : int
    classes : list of str
        Class names (as folder names, or the digits themselves).
    digest : str
        SHA-256 of the inputs and labels of both splits (part of the run's
        fingerprint).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    classes: list[str]
    digest: str

    @property
    def streamed(self) -> bool:
        return isinstance(self.x_train, np.memmap)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one input, (C, H, W)."""
        return tuple(self.x_train.shape[1:])


def dataset_names() -> tuple[str, ...]:
    return ("digits", "synthetic", "mnist:ROOT", "cifar10:ROOT", "imagefolder:ROOT")


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        for start in range(0, len(a), _CHUNK):
            h.update(np.ascontiguousarray(a[start : start + _CHUNK]).tobytes())
    return h.hexdigest()


def _materialise(name: str, n: int, shape: tuple[int, ...], chunks: Iterator[np.ndarray],
                 cache: Path | None) -> np.ndarray:
    """Collect float32 chunks into an in-memory array, or a ``.npy`` memmap in ``cache``."""
    if cache is None:
        out = np.empty((n, *shape), dtype=np.float32)
    else:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"{name}.npy.partial"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *shape))
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    if start != n:  # pragma: no cover - guards the loaders below
        raise RuntimeError(f"Loaded {start} samples for {name}, expected {n}.")
    if cache is None:
        return out
    out.flush()
    del out
    final = cache / f"{name}.npy"
    os.replace(tmp, final)
    return np.load(final, mmap_mode="r")


def _chunks_of(array: np.ndarray, convert: Callable[[np.ndarray], np.ndarray]
               ) -> Iterator[np.ndarray]:
    for start in range(0, len(array), _CHUNK):
        yield convert(array[start : start + _CHUNK])


def _require_dir(root: str, kind: str, layout: str) -> Path:
    path = Path(root).expanduser()
    if not root:
        raise DatasetError(f"The dataset spec '{kind}:ROOT' needs a folder after the colon, "
                           f"for example '{kind}:/data/{kind}'. Expected layout: {layout}")
    if not path.is_dir():
        raise DatasetError(f"The {kind} folder '{path}' does not exist. quantus-roar never "
                           f"downloads data; put the files there first. Expected layout: {layout}")
    return path


_MNIST_LAYOUT = ("ROOT/MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                 "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz), as "
                 "torchvision.datasets.MNIST(ROOT, download=True) leaves them.")
_CIFAR_LAYOUT = ("ROOT/cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and "
                 "batches.meta, as torchvision.datasets.CIFAR10(ROOT, download=True) leaves them "
                 "(the extracted cifar-10-python.tar.gz).")
_FOLDER_LAYOUT = ("ROOT/train/<class>/<image> and ROOT/test/<class>/<image> (or ROOT/<class>/"
                  "<image>, split stratified by the run's seed), one folder per class, images "
                  "readable by PIL and all of one size (or pass image_size).")


def _cifar10_class() -> type:
    """CIFAR10 that checks the files exist but not their MD5 sums.

    torchvision compares every batch file with the MD5 of the official
    release, so a subset or a re-packed copy reads as "not found"; the files
    are still pickles read by torchvision itself, so load only folders you trust.
    """
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]  # noqa: RUF012
        test_list = [[name, None] for name, _ in CIFAR10.test_list]  # noqa: RUF012
        meta = {**CIFAR10.meta, "md5": None}  # noqa: RUF012

    return LocalCIFAR10


def _torchvision(kind: str, root: str, cache: Path | None) -> tuple:
    import torchvision

    cls, layout = ((torchvision.datasets.MNIST, _MNIST_LAYOUT) if kind == "mnist"
                   else (_cifar10_class(), _CIFAR_LAYOUT))
    path = _require_dir(root, kind, layout)
    try:
        train = cls(str(path), train=True, download=False)
        test = cls(str(path), train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise DatasetError(f"No readable {kind} files under '{path}' ({err}). Expected layout: "
                           f"{layout}") from err
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:
        raise DatasetError(f"The {kind} files under '{path}' are malformed ({type(err).__name__}: "
                           f"{err}). Expected layout: {layout}") from err
    out = []
    for split, ds in (("train", train), ("test", test)):
        data = np.asarray(ds.data)
        if kind == "mnist":  # (N, 28, 28) uint8
            def convert(c: np.ndarray) -> np.ndarray:
                return (c[:, None].astype(np.float32) / 255.0)
        else:  # (N, 32, 32, 3) uint8
            def convert(c: np.ndarray) -> np.ndarray:
                return c.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        shape = convert(data[:1]).shape[1:]
        x = _materialise(f"x_{split}", len(data), shape, _chunks_of(data, convert), cache)
        out += [x, np.asarray(ds.targets, dtype=np.int64)]
    return (*out, list(train.classes))


def _image_files(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    classes, index = find_classes(str(folder))
    return classes, make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)


def _decode(files: list[str], image_size: int | None, mode: str,
            size: tuple[int, ...] | None = None) -> Iterator[np.ndarray]:
    """Images as float32 (B, C, H, W) chunks; all must have the shape ``size`` (default:
    the first image's)."""
    from PIL import Image

    for start in range(0, len(files), _CHUNK):
        batch = []
        for f in files[start : start + _CHUNK]:
            with Image.open(f) as img:
                img = img.convert(mode)
                if image_size is not None:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise DatasetError(f"Image '{f}' has size {arr.shape[1:]} but the first image "
                                   f"has {size[1:]}. Pass image_size (--image-size) to resize "
                                   "all images to one size.")
            batch.append(arr)
        yield np.stack(batch)


def _imagefolder(root: str, seed: int, cache: Path | None, image_size: int | None) -> tuple:
    from PIL import Image

    from quantus_roar.curves import stratified_split

    path = _require_dir(root, "imagefolder", _FOLDER_LAYOUT)
    try:
        if (path / "train").is_dir() and (path / "test").is_dir():
            classes, train = _image_files(path / "train")
            test_classes, test = _image_files(path / "test")
            if test_classes != classes:
                raise DatasetError(f"The class folders of '{path / 'train'}' ({classes}) and "
                                   f"'{path / 'test'}' ({test_classes}) differ. Expected layout: "
                                   f"{_FOLDER_LAYOUT}")
        else:
            classes, files = _image_files(path)
            labels = np.array([c for _, c in files])
            tr, te = stratified_split(labels, 0.2, seed, owner="imagefolder")
            train, test = [files[i] for i in tr], [files[i] for i in te]
    except FileNotFoundError as err:  # torchvision: no class folders / no valid files
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"'{path}' is not an image folder ({err}). Expected layout: "
                           f"{_FOLDER_LAYOUT}") from err
    with Image.open(train[0][0]) as img:
        mode = "L" if img.mode in ("L", "1", "I;16", "I") else "RGB"
    probe = next(_decode([train[0][0]], image_size, mode))
    out = []
    for split, items in (("train", train), ("test", test)):
        files = [f for f, _ in items]
        x = _materialise(f"x_{split}", len(files), probe.shape[1:],
                         _decode(files, image_size, mode, probe.shape[1:]), cache)
        out += [x, np.array([c for _, c in items], dtype=np.int64)]
    return (*out, classes)


def load_dataset(spec: str, *, seed: int = 0, cache: str | Path | None = None,
                 image_size: int | None = None) -> BenchmarkData:
    """Load a benchmark dataset by spec (see the module docstring).

    Parameters
    ----------
    spec : str
        ``"digits"``, ``"synthetic"``, ``"mnist:ROOT"``, ``"cifar10:ROOT"`` or
        ``"imagefolder:ROOT"``.
    seed : int, default 0
        Seeds the train/test split where the dataset has none.
    cache : path, optional
        Stream: write the float32 inputs to ``.npy`` files in this folder and
        return them memory-mapped. Default: in memory.
    image_size : int, optional
        ImageFolder only: resize every image to ``image_size`` x ``image_size``.

    Raises
    ------
    DatasetError
        For a missing folder or files not in the expected layout; the message
        names the layout.
    ValueError
        For an unknown spec.
    """
    kind, _, root = spec.partition(":")
    kind = kind.lower()
    cache_path = None if cache is None else Path(cache)
    if kind == "digits" and not root:
        from quantus_roar.data import load_digits_data

        x_tr, y_tr, x_te, y_te = load_digits_data(seed=seed)
        classes = [str(i) for i in range(10)]
    elif kind == "synthetic" and not root:
        from quantus_roar.curves import stratified_split
        from quantus_roar.data import make_synthetic

        x, y, _ = make_synthetic(n_samples=1200, seed=seed)
        tr, te = stratified_split(y, 0.2, seed, owner="synthetic")
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        classes = [str(i) for i in range(4)]
    elif kind in ("mnist", "cifar10"):
        x_tr, y_tr, x_te, y_te, classes = _torchvision(kind, root, cache_path)
        cache_path = None  # already materialised
    elif kind == "imagefolder":
        x_tr, y_tr, x_te, y_te, classes = _imagefolder(root, seed, cache_path, image_size)
        cache_path = None
    else:
        raise ValueError(f"Unknown dataset spec {spec!r}. Use one of {list(dataset_names())}, "
                         "where ROOT is a local folder.")
    if cache_path is not None:  # embedded data, streamed on request
        x_tr = _materialise("x_train", len(x_tr), x_tr.shape[1:], iter([x_tr]), cache_path)
        x_te = _materialise("x_test", len(x_te), x_te.shape[1:], iter([x_te]), cache_path)
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return BenchmarkData(spec, x_tr, y_tr, x_te, y_te, n_classes, list(classes),
                         _digest(x_tr, y_tr, x_te, y_te))

