"""Datasets of the benchmark runner, by spec string.

========================  ==================================================
spec                      what is loaded
========================  ==================================================
``digits``                scikit-learn's bundled 8x8 digits (embedded)
``synthetic``             :func:`quantus_roar.make_synthetic`, 4 classes
``mnist:ROOT``            the IDX files in ``ROOT/MNIST/raw`` (plain or
                          ``.gz``), as ``torchvision.datasets.MNIST(ROOT,
                          download=True)`` leaves them
``cifar10:ROOT``          the python batches in ``ROOT/cifar-10-batches-py``,
                          as ``torchvision.datasets.CIFAR10(ROOT,
                          download=True)`` leaves them
``imagefolder:ROOT``      ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``
                          image files, or ``ROOT/<class>/*`` split by seed
========================  ==================================================

Images become float32 arrays (N, C, H, W) in [0, 1] (the synthetic set is
standard normal): 8-bit images are divided by 255, 16-bit greyscale images
(PIL modes ``I;16``, ``I;16B``, ``I``) by 65535. With ``stream=True`` they
are written once to ``.npy`` files in a cache folder, chunk by chunk, and
opened memory-mapped, so no step of the benchmark holds a whole split in
memory; a load that fails leaves no partial file behind.

The folders may come from elsewhere, so reading them is guarded:

* The CIFAR-10 batches are pickles, read by an unpickler that rebuilds only
  dicts, lists, strings, numbers and numpy arrays; a batch that asks for any
  other Python object (the way a pickle runs code) is refused unread.
  No MD5 sums are checked, so subsets and re-packed copies load.
* An image folder's classes are its real sub-folders, sorted; the images
  are the files with an image extension (as
  ``torchvision.datasets.folder.IMG_EXTENSIONS``, any case) found below
  each class folder, sorted, so a folder always lists in the same order.
  Links to folders are not followed (a link loop cannot repeat images). A
  link to an image file is read like the file; anything with an image
  extension that is not a regular file (a broken link, a pipe, a device) is
  an error, as is a file PIL cannot decode.
* Every dataset must have at least two classes in its training split and
  finite inputs.

Every problem is a :class:`DatasetError` naming the file or folder and the
expected layout.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib
import os
import pickle
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantus_roar._io import disk_error, open_memmap, remove_quietly

__all__ = ["BenchmarkData", "DatasetError", "dataset_names", "load_dataset"]

_CHUNK = 4096


class DatasetError(FileNotFoundError):
    """A dataset spec names a folder that is missing, not in the expected layout, or holds
    files that are malformed or unsafe to read; the message names the file."""


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

    @classmethod
    def from_arrays(cls, name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any,
                    classes: list[str] | None = None) -> BenchmarkData:
        """Your own train and test arrays as a benchmark dataset.

        Inputs become float32 (N, C, H, W) arrays, labels int64; they are
        checked as every dataset is (finite inputs, integer labels, at least
        two training classes, every test class seen in training).

        Parameters
        ----------
        name : str
            How the report and the fingerprint name the data (with its digest).
        x_train, y_train, x_test, y_test : array-like or tensor
        classes : list of str, optional
            Class names (default ``"0"``, ``"1"``, ...).

        Raises
        ------
        DatasetError
            For inputs that are not (N, C, H, W), labels that are not one
            integer per sample, NaN or inf, or fewer than two classes.
        """
        def arr(v: Any) -> np.ndarray:
            return np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)

        x_tr, x_te = arr(x_train), arr(x_test)
        y_tr, y_te = arr(y_train), arr(y_test)
        for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            if x.ndim != 4 or len(x) == 0 or not np.issubdtype(x.dtype, np.number):
                raise DatasetError(f"The {split} inputs of dataset '{name}' must be a non-empty "
                                   f"numeric array (N, C, H, W). Got shape {x.shape}, dtype "
                                   f"{x.dtype}.")
            if y.shape != (len(x),) or not (np.issubdtype(y.dtype, np.integer) or (
                    np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))) \
                    or (len(y) and y.min() < 0):
                raise DatasetError(f"The {split} labels of dataset '{name}' must be one integer "
                                   f"class >= 0 per input, shape ({len(x)},). Got shape "
                                   f"{y.shape}, dtype {y.dtype}.")
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise DatasetError(f"The test inputs of dataset '{name}' have per-sample shape "
                               f"{x_te.shape[1:]}, the training inputs {x_tr.shape[1:]}.")
        x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
        present = np.unique(y_tr)
        unseen = sorted(set(np.unique(y_te).tolist()) - set(present.tolist()))
        if len(present) < 2 or unseen:
            raise DatasetError(f"Dataset '{name}' needs at least two training classes and no "
                               f"test class without training samples. Training classes: "
                               f"{present.tolist()}; test-only classes: {unseen}.")
        n_classes = int(max(y_tr.max(), y_te.max())) + 1
        names = classes if classes is not None else [str(i) for i in range(n_classes)]
        if len(names) != n_classes:
            raise DatasetError(f"Dataset '{name}' has {n_classes} classes but {len(names)} "
                               "class names.")
        digest = _digest(name, train=x_tr, train_labels=y_tr, test=x_te, test_labels=y_te)
        return cls(name, x_tr, y_tr, x_te, y_te, n_classes, list(names), digest)


def dataset_names() -> tuple[str, ...]:
    return ("digits", "synthetic", "mnist:ROOT", "cifar10:ROOT", "imagefolder:ROOT")


def _digest(spec: str, **arrays: np.ndarray) -> str:
    """SHA-256 of ``arrays`` in order; refuses float arrays holding NaN or inf (one pass)."""
    h = hashlib.sha256()
    for name, a in arrays.items():
        h.update(str((a.dtype.str, a.shape)).encode())
        for start in range(0, len(a), _CHUNK):
            chunk = np.ascontiguousarray(a[start : start + _CHUNK])
            if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
                bad = start + int(np.flatnonzero(~np.isfinite(chunk).reshape(len(chunk), -1)
                                                 .all(axis=1))[0])
                raise DatasetError(f"The {name} inputs of dataset '{spec}' contain NaN or "
                                   f"infinite values (the first in sample {bad}). The benchmark "
                                   "needs finite inputs; clean the data first.")
            h.update(chunk.tobytes())
    return h.hexdigest()


def _materialise(name: str, n: int, shape: tuple[int, ...], chunks: Iterator[np.ndarray],
                 cache: Path | None) -> np.ndarray:
    """Collect float32 chunks into an in-memory array, or a ``.npy`` memmap in ``cache``.

    In ``cache`` the chunks go to ``name.npy.partial`` (its disk space allocated
    up front), renamed to ``name.npy`` when complete. If anything fails or the
    load is interrupted, the partial file is removed; a partial file left by a
    killed earlier run is replaced.

    Raises
    ------
    quantus_roar.exceptions.StorageError
        When the cache folder cannot be written (full disk, permission).
    """
    if cache is None:
        out = np.empty((n, *shape), dtype=np.float32)
    else:
        tmp = cache / f"{name}.npy.partial"
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(err, cache, "create") from err
        remove_quietly(tmp)  # left by an earlier run that was killed
        out = open_memmap(tmp, np.float32, (n, *shape))
    try:
        start = 0
        for chunk in chunks:
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
        if start != n:  # pragma: no cover - guards the loaders below
            raise RuntimeError(f"Loaded {start} samples for {name}, expected {n}.")
        if cache is None:
            return out
        final = cache / f"{name}.npy"
        try:
            out.flush()
            del out
            os.replace(tmp, final)
        except OSError as err:
            raise disk_error(err, final) from err
    except BaseException:
        out = None  # noqa: F841 - the traceback keeps this frame: drop the map
        if cache is not None:
            remove_quietly(tmp)
        raise
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
                  "<image>, split stratified by the run's seed), one folder per class (at least "
                  "two), images readable by PIL and all of one size (or pass image_size).")


# --------------------------------------------------------------------------- MNIST (IDX files)

_MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
                  "6 - six", "7 - seven", "8 - eight", "9 - nine"]  # torchvision's names
_READ_BLOCK = 1 << 24


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX file (magic ``0x0000 08 <ndim>``, big-endian int32 dims, the bytes)."""
    def bad(what: str) -> DatasetError:
        return DatasetError(f"The MNIST file '{path}' is malformed: {what}. Replace it with the "
                            f"file from the MNIST release. Expected layout: {_MNIST_LAYOUT}")

    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0":
                got = magic.hex() or "an empty file"
                raise bad(f"it does not start with an IDX magic number (got {got})")
            if magic[2] != 0x08:
                raise bad(f"its values are of IDX type 0x{magic[2]:02x}, not unsigned bytes "
                          "(0x08)")
            if magic[3] != ndim:
                raise bad(f"it has {magic[3]} dimensions, expected {ndim}")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise bad("it ends inside its header (truncated)")
            shape = struct.unpack(f">{ndim}I", dims)
            size = int(np.prod(shape, dtype=object))
            data = bytearray()
            while len(data) <= size:  # never more than the header announces (plus one byte)
                block = f.read(min(_READ_BLOCK, size + 1 - len(data)))
                if not block:
                    break
                data += block
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        raise bad(f"{type(err).__name__}: {err}") from err
    if len(data) < size:
        raise bad(f"its header announces shape {shape} ({size} bytes) but it holds only "
                  f"{len(data)} (truncated)")
    if len(data) > size:
        raise bad(f"it holds more bytes than its header's shape {shape} announces")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _mnist_file(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist(root: str, cache: Path | None) -> tuple:
    path = _require_dir(root, "mnist", _MNIST_LAYOUT)
    raw = path / "MNIST" / "raw"
    names = [f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3),
                                                                             ("labels", 1))]
    files = {n: _mnist_file(raw, n) for n in names}
    missing = [n for n, f in files.items() if f is None]
    if missing:
        raise DatasetError(f"No readable mnist files under '{path}': missing {', '.join(missing)} "
                           f"in '{raw}'. Expected layout: {_MNIST_LAYOUT}")
    out: list[Any] = []
    size = None
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_file, labels_file = files[f"{prefix}-images-idx3-ubyte"], files[
            f"{prefix}-labels-idx1-ubyte"]
        images, labels = _read_idx(images_file, 3), _read_idx(labels_file, 1)
        if len(images) != len(labels):
            raise DatasetError(f"The MNIST files '{images_file}' ({len(images)} images) and "
                               f"'{labels_file}' ({len(labels)} labels) do not match. Expected "
                               f"layout: {_MNIST_LAYOUT}")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"The MNIST file '{labels_file}' holds label {int(labels.max())}; "
                               "MNIST labels are digits 0 to 9.")
        if size is None:
            size = images.shape[1:]
        elif images.shape[1:] != size:
            raise DatasetError(f"The MNIST images of '{images_file}' are {images.shape[1:]} but "
                               f"the training images are {size}.")

        def convert(c: np.ndarray) -> np.ndarray:  # (B, H, W) uint8
            return c[:, None].astype(np.float32) / 255.0

        x = _materialise(f"x_{split}", len(images), (1, *images.shape[1:]),
                         _chunks_of(images, convert), cache)
        out += [x, labels.astype(np.int64)]
    return (*out, list(_MNIST_CLASSES))


# --------------------------------------------------------------------------- CIFAR-10 (pickles)


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it: latin-1 text only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with {type(text).__name__} and "
                                     f"{encoding!r} is not how bytes are pickled")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes`` as protocol-2 pickles of ``b""`` use it: no arguments."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not how bytes are pickled")
    return b""


def _numpy_core(module: str) -> Any:
    """``numpy._core.<module>`` (numpy 2), or ``numpy.core.<module>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # pragma: no cover - numpy 1 without numpy._core
        return importlib.import_module(f"numpy.core.{module}")


# What pickles of dicts/lists of numpy arrays, numpy integers and bytes reference, under
# numpy 1 and 2 and pickle protocols 0-5 (the official batches: protocol 2, numpy 1).
_SAFE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    **{(f"numpy.{core}.multiarray", name): (lambda name=name: getattr(_numpy_core("multiarray"),
                                                                        name))
       for core in ("core", "_core") for name in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): (lambda: _numpy_core("numeric")._frombuffer)
       for core in ("core", "_core")},
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("__builtin__", "bytes"): lambda: _empty_bytes,
    ("builtins", "bytes"): lambda: _empty_bytes,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, tuples, str, bytes, numbers and numpy arrays; refuses any
    other global, so a pickle cannot call a function of its choosing."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        resolve = _SAFE_GLOBALS.get((module, name))
        if resolve is None:
            raise DatasetError(
                f"Refused to read the CIFAR-10 file '{self._path}': its pickle asks for the "
                f"Python object '{module}.{name}', which a CIFAR-10 batch never needs (a pickle "
                "that calls functions can run code). Nothing of it was executed. Use the files "
                f"of the official cifar-10-python.tar.gz. Expected layout: {_CIFAR_LAYOUT}")
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by CIFAR-10 batches")


def _unpickle_dict(path: Path) -> dict[str, Any]:
    """The dict pickled in ``path`` with ``str`` keys (bytes keys decoded as latin-1)."""
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as err:  # a malformed pickle fails in many ways
        raise DatasetError(f"The CIFAR-10 file '{path}' is malformed, not a readable pickle "
                           f"({type(err).__name__}: {err}). Replace it with the file from "
                           f"cifar-10-python.tar.gz. Expected layout: {_CIFAR_LAYOUT}") from err
    if not isinstance(obj, dict):
        raise DatasetError(f"The CIFAR-10 file '{path}' is malformed: it holds a "
                           f"{type(obj).__name__}, not a dict. Expected layout: {_CIFAR_LAYOUT}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (n, 3072) uint8 and ``labels`` (n,) int64 in [0, 10) of one batch file."""
    entry = _unpickle_dict(path)

    def bad(what: str) -> DatasetError:
        return DatasetError(f"The CIFAR-10 file '{path}' is malformed: {what}. Replace it with "
                            f"the file from cifar-10-python.tar.gz. Expected layout: "
                            f"{_CIFAR_LAYOUT}")

    if "data" not in entry or "labels" not in entry:
        raise bad(f"it has no 'data' and 'labels' entries (keys: {sorted(map(str, entry))})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        what = (f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else f"a {type(data).__name__}")
        raise bad(f"'data' is {what}, expected uint8 of shape (n, 3072)")
    try:
        labels = np.asarray(entry["labels"])
    except Exception as err:  # ragged or odd objects
        raise bad(f"'labels' is not a list of integers ({err})") from err
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise bad(f"'labels' is not a flat list of integers (got {labels.dtype} of shape "
                  f"{labels.shape})")
    if len(labels) != len(data):
        raise bad(f"it has {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise bad(f"'labels' holds {int(labels.min() if labels.min() < 0 else labels.max())}; "
                  "CIFAR-10 labels are 0 to 9")
    return data, labels.astype(np.int64)


def _cifar10(root: str, cache: Path | None) -> tuple:
    path = _require_dir(root, "cifar10", _CIFAR_LAYOUT)
    folder = path / "cifar-10-batches-py"
    splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    names = [*splits["train"], *splits["test"], "batches.meta"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"No readable cifar10 files under '{path}': missing "
                           f"{', '.join(missing)} in '{folder}'. Expected layout: {_CIFAR_LAYOUT}")
    meta_path = folder / "batches.meta"
    classes = _unpickle_dict(meta_path).get("label_names")
    if not isinstance(classes, list) or len(classes) != 10 \
            or not all(isinstance(c, (str, bytes)) for c in classes):
        raise DatasetError(f"The CIFAR-10 file '{meta_path}' is malformed: 'label_names' is not "
                           "a list of the 10 class names. Expected layout: " + _CIFAR_LAYOUT)
    classes = [c.decode("latin-1") if isinstance(c, bytes) else c for c in classes]
    out: list[Any] = []
    for split, files in splits.items():
        batches = [_cifar_batch(folder / f) for f in files]
        data = np.concatenate([d for d, _ in batches])

        def convert(c: np.ndarray) -> np.ndarray:  # (B, 3072) uint8, channel-major
            return c.reshape(len(c), 3, 32, 32).astype(np.float32) / 255.0

        x = _materialise(f"x_{split}", len(data), (3, 32, 32), _chunks_of(data, convert), cache)
        out += [x, np.concatenate([lab for _, lab in batches])]
    return (*out, classes)


# --------------------------------------------------------------------------- image folders

# torchvision.datasets.folder.IMG_EXTENSIONS, matched in any case.
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})  # 16-bit greyscale
_GREY_MODES = frozenset({"L", "1"}) | _WIDE_MODES


def _class_folders(split: Path) -> list[str]:
    """Names of the real sub-folders of ``split`` (links to folders are not classes), sorted."""
    try:
        with os.scandir(split) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError as err:
        raise DatasetError(f"Cannot read the image folder '{split}' ({err.strerror or err}). "
                           f"Expected layout: {_FOLDER_LAYOUT}") from err


def _image_paths(folder: Path, root: Path) -> list[str]:
    """The image files below ``folder``, sorted; folder links are not followed."""
    def unreadable(err: OSError) -> None:
        raise DatasetError(f"Cannot read the folder '{err.filename}' of the image folder "
                           f"'{root}' ({err.strerror or err}).") from err

    files = []
    for here, _, names in sorted(os.walk(folder, onerror=unreadable, followlinks=False)):
        for name in sorted(names):
            if not name.lower().endswith(_IMG_EXTENSIONS):
                continue
            path = os.path.join(here, name)
            try:
                mode = os.stat(path).st_mode  # a link to a file is read like the file
            except OSError as err:
                raise DatasetError(f"The image '{path}' cannot be read ({err.strerror or err}; "
                                   "a broken link?). Remove it or fix the link.") from err
            if not stat.S_ISREG(mode):
                raise DatasetError(f"The image '{path}' is not a regular file (a pipe, socket "
                                   "or device). Remove it from the image folder.")
            files.append(path)
    if not files:
        raise DatasetError(f"'{root}' is not an image folder: the class folder '{folder}' holds "
                           f"no image files ({', '.join(_IMG_EXTENSIONS)}; links to folders are "
                           f"not followed). Remove the folder or add its images. Expected layout: "
                           f"{_FOLDER_LAYOUT}")
    return files


def _image_items(split: Path, classes: list[str], root: Path) -> list[tuple[str, int]]:
    return [(f, i) for i, c in enumerate(classes) for f in _image_paths(split / c, root)]


def _two_classes(split: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise DatasetError(f"'{split}' is not an image folder for the benchmark: it holds "
                           f"{len(classes)} class folder(s) {classes}, and classification needs "
                           f"at least two classes. Expected layout: {_FOLDER_LAYOUT}")


def _pixels(img: Any, mode: str, image_size: int | None) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1] of an opened, loaded PIL image."""
    from PIL import Image

    if img.mode.startswith("F"):
        raise ValueError(f"it holds floating-point pixels (PIL mode {img.mode}) whose range is "
                         "unknown; convert the images to 8- or 16-bit first")
    if mode == "L" and img.mode not in _GREY_MODES:
        raise ValueError(f"it is a colour image (PIL mode {img.mode}) but the folder's first "
                         "image is greyscale, and converting it to grey would discard colour; "
                         "store all images of the folder in one colour mode")
    if img.mode in _WIDE_MODES:
        raw = np.asarray(img)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ValueError(f"its {img.mode} pixels range over [{raw.min()}, {raw.max()}], "
                             "outside 16 bits [0, 65535]")
        grey = raw.astype(np.float32) / 65535.0
        if image_size is not None:
            grey = np.asarray(Image.fromarray(grey).resize((image_size, image_size),
                                                           Image.BILINEAR), dtype=np.float32)
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
    img = img.convert(mode)
    if image_size is not None:
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _read_image(path: str, mode: str | None, image_size: int | None) -> tuple[np.ndarray, str]:
    """The image at ``path`` as float32 (C, H, W) in ``mode`` ("L" or "RGB"; default: grey
    for greyscale images, else RGB), and that mode."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # PIL decodes lazily: make a broken file fail here
            if mode is None:
                mode = "L" if img.mode in _GREY_MODES else "RGB"
            arr = _pixels(img, mode, image_size)
    except Exception as err:  # PIL's decoders fail in many ways
        raise DatasetError(f"The image '{path}' cannot be read ({type(err).__name__}: {err}). "
                           "Remove or replace the file.") from err
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), mode


def _decode(files: list[str], image_size: int | None, mode: str,
            size: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Images as float32 (B, C, H, W) chunks; all must have the shape ``size``."""
    for start in range(0, len(files), _CHUNK):
        batch = []
        for f in files[start : start + _CHUNK]:
            arr, _ = _read_image(f, mode, image_size)
            if arr.shape != size:
                raise DatasetError(f"Image '{f}' has size {arr.shape[1:]} but the first image "
                                   f"has {size[1:]}. Pass image_size (--image-size) to resize "
                                   "all images to one size.")
            batch.append(arr)
        yield np.stack(batch)


def _imagefolder(root: str, seed: int, cache: Path | None, image_size: int | None) -> tuple:
    from quantus_roar.splits import stratified_split

    path = _require_dir(root, "imagefolder", _FOLDER_LAYOUT)
    if (path / "train").is_dir() and (path / "test").is_dir():
        classes = _class_folders(path / "train")
        _two_classes(path / "train", classes)
        test_classes = _class_folders(path / "test")
        extra = sorted(set(test_classes) - set(classes))
        if extra or not test_classes:
            raise DatasetError(f"The class folders of '{path / 'test'}' ({test_classes}) must be "
                               f"some of those of '{path / 'train'}' ({classes}); "
                               f"{'not in train: ' + str(extra) if extra else 'it has none'}. "
                               f"Expected layout: {_FOLDER_LAYOUT}")
        train = _image_items(path / "train", classes, path)
        test = _image_items(path / "test", test_classes, path)
        test = [(f, classes.index(test_classes[c])) for f, c in test]
    else:
        classes = _class_folders(path)
        _two_classes(path, classes)
        files = _image_items(path, classes, path)
        labels = np.array([c for _, c in files])
        single = [classes[c] for c in np.flatnonzero(np.bincount(labels) < 2)]
        if single:
            raise DatasetError(f"The class folder(s) {single} of '{path}' hold a single image; "
                               "without train/ and test/ folders every class needs at least two "
                               f"(one goes to the test split). Expected layout: {_FOLDER_LAYOUT}")
        tr, te = stratified_split(labels, 0.2, seed, owner="imagefolder")
        train, test = [files[i] for i in tr], [files[i] for i in te]
    probe, mode = _read_image(train[0][0], None, image_size)
    out: list[Any] = []
    for split, items in (("train", train), ("test", test)):
        files = [f for f, _ in items]
        x = _materialise(f"x_{split}", len(files), probe.shape,
                         _decode(files, image_size, mode, probe.shape), cache)
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
        For a missing folder, files not in the expected layout, a malformed
        or unsafe file (a pickle that would run code, an image PIL cannot
        decode), fewer than two classes in the training split, or inputs that
        are not finite; the message names the file and the layout.
    quantus_roar.exceptions.StorageError
        When ``cache`` cannot be written (full disk, permission).
    ValueError
        For an unknown spec.
    """
    if not isinstance(spec, str):
        raise TypeError(f"The dataset spec must be a string such as 'digits' or "
                        f"'imagefolder:/data/images'. Got {type(spec).__name__} instead.")
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool)
                                   or image_size < 1):
        raise ValueError(f"The 'image_size' parameter of load_dataset must be a positive integer "
                         f"(pixels per side) or None. Got {image_size!r} instead.")
    kind, _, root = spec.partition(":")
    kind = kind.lower()
    cache_path = None if cache is None else Path(cache)
    if kind == "digits" and not root:
        from quantus_roar.data import load_digits_data

        x_tr, y_tr, x_te, y_te = load_digits_data(seed=seed)
        classes = [str(i) for i in range(10)]
    elif kind == "synthetic" and not root:
        from quantus_roar.data import make_synthetic
        from quantus_roar.splits import stratified_split

        x, y, _ = make_synthetic(n_samples=1200, seed=seed)
        tr, te = stratified_split(y, 0.2, seed, owner="synthetic")
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        classes = [str(i) for i in range(4)]
    elif kind in ("mnist", "cifar10"):
        x_tr, y_tr, x_te, y_te, classes = (_mnist if kind == "mnist" else _cifar10)(root,
                                                                                   cache_path)
        cache_path = None  # already materialised
    elif kind == "imagefolder":
        x_tr, y_tr, x_te, y_te, classes = _imagefolder(root, seed, cache_path, image_size)
        cache_path = None
    else:
        raise ValueError(f"Unknown dataset spec {spec!r}. Use one of {list(dataset_names())}, "
                         "where ROOT is a local folder.")
    present = np.unique(y_tr)
    if len(present) < 2:
        raise DatasetError(f"The training split of dataset '{spec}' holds {len(present)} "
                           f"distinct label(s) {present.tolist()}; the benchmark needs at least "
                           "two classes. Add samples of other classes.")
    if cache_path is not None:  # embedded data, streamed on request
        x_tr = _materialise("x_train", len(x_tr), x_tr.shape[1:], iter([x_tr]), cache_path)
        x_te = _materialise("x_test", len(x_te), x_te.shape[1:], iter([x_te]), cache_path)
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    digest = _digest(spec, train=x_tr, train_labels=y_tr, test=x_te, test_labels=y_te)
    return BenchmarkData(spec, x_tr, y_tr, x_te, y_te, n_classes, list(classes), digest)
