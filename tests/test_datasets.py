"""Benchmark datasets: MNIST, CIFAR-10 and image folders from local files, and what happens
when those files are broken or hostile."""

from __future__ import annotations

import contextlib
import gzip
import os
import pathlib
import pickle
import shlex
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantus_roar.benchmark import DatasetError, load_dataset
from quantus_roar.benchmark.datasets import _materialise


class _Expired(BaseException):
    """Not an OSError (os.walk swallows those) nor an Exception (readers wrap those)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail instead of hanging (a link loop walked forever, a pipe opened for reading)."""
    def expire(signum, frame):
        raise _Expired(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

# --------------------------------------------------------------------------- MNIST


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _write_mnist(root: Path, gz: bool = False, labels: dict | None = None) -> dict:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (12, 28, 28)),
              "t10k": rng.integers(0, 256, (6, 28, 28))}
    labels = labels or {"train": np.arange(12) % 10, "t10k": np.arange(6) % 10}
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[split], gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split], gz)
    return {"images": images, "labels": labels, "raw": raw}


def test_mnist_from_local_idx_files(tmp_path):
    written = _write_mnist(tmp_path)
    images, labels = written["images"], written["labels"]
    data = load_dataset(f"mnist:{tmp_path}")
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (6, 1, 28, 28)
    np.testing.assert_allclose(data.x_train[:, 0], images["train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, labels["t10k"])
    assert data.n_classes == 10 and not data.streamed
    assert data.classes[:2] == ["0 - zero", "1 - one"] and len(data.classes) == 10
    streamed = load_dataset(f"mnist:{tmp_path}", cache=tmp_path / "cache")
    assert streamed.streamed and streamed.digest == data.digest
    np.testing.assert_array_equal(streamed.x_train, data.x_train)


def test_mnist_reads_gzipped_idx_files(tmp_path):
    _write_mnist(tmp_path / "plain")
    _write_mnist(tmp_path / "gz", gz=True)
    assert not list((tmp_path / "gz").rglob("*ubyte"))
    assert (load_dataset(f"mnist:{tmp_path / 'gz'}").digest
            == load_dataset(f"mnist:{tmp_path / 'plain'}").digest)


def test_mnist_with_missing_files_names_the_layout(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"No readable mnist files.*missing train-images-idx3"
                                           r".*t10k-labels-idx1-ubyte"):
        load_dataset(f"mnist:{tmp_path}")


_IMAGES = "train-images-idx3-ubyte"


@pytest.mark.parametrize(("name", "damage", "message"), [
    (_IMAGES, lambda b: b[:-100], r"holds only 9308 \(truncated\)"),
    (_IMAGES, lambda b: b[:10], r"ends inside its header \(truncated\)"),
    (_IMAGES, lambda b: b"", r"not start with an IDX magic number \(got an empty file\)"),
    (_IMAGES, lambda b: b"\x1f\x8b" + b[2:], "not start with an IDX magic number"),
    (_IMAGES, lambda b: b[:2] + b"\x0d" + b[3:], r"IDX type 0x0d, not unsigned bytes"),
    (_IMAGES, lambda b: b[:3] + b"\x02" + b[4:], "has 2 dimensions, expected 3"),
    (_IMAGES, lambda b: b + b"\0", "more bytes than its header"),
    (_IMAGES, lambda b: b"hello, I am a text file\n", "not start with an IDX magic"),
    ("train-labels-idx1-ubyte", lambda b: b[:-2], r"holds only 10 \(truncated\)"),
])
def test_mnist_malformed_idx_file_names_the_file(tmp_path, name, damage, message):
    raw = _write_mnist(tmp_path)["raw"]
    (raw / name).write_bytes(damage((raw / name).read_bytes()))
    with pytest.raises(DatasetError, match=rf"MNIST file '.*{name}' is malformed: .*{message}"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_broken_gzip_names_the_file(tmp_path):
    raw = _write_mnist(tmp_path, gz=True)["raw"]
    path = raw / f"{_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=rf"'{path}' is malformed: EOFError"):
        load_dataset(f"mnist:{tmp_path}")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=rf"'{path}' is malformed: BadGzipFile"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_labels_must_match_the_images(tmp_path):
    _write_mnist(tmp_path, labels={"train": np.arange(11) % 10, "t10k": np.arange(6) % 10})
    with pytest.raises(DatasetError, match=r"\(12 images\) and '.*train-labels-idx1-ubyte' "
                                           r"\(11 labels\) do not match"):
        load_dataset(f"mnist:{tmp_path}")
    _write_mnist(tmp_path / "b", labels={"train": np.arange(12), "t10k": np.arange(6)})
    with pytest.raises(DatasetError, match="holds label 11; MNIST labels are digits 0 to 9"):
        load_dataset(f"mnist:{tmp_path / 'b'}")


def test_single_class_training_split_is_refused(tmp_path):
    _write_mnist(tmp_path, labels={"train": np.full(12, 3), "t10k": np.arange(6) % 10})
    with pytest.raises(DatasetError, match=r"training split of dataset 'mnist:.*' holds 1 "
                                           r"distinct label\(s\) \[3\]; the benchmark needs at "
                                           "least two classes"):
        load_dataset(f"mnist:{tmp_path}")


def test_non_finite_inputs_are_refused(monkeypatch):
    import quantus_roar.data

    real = quantus_roar.data.make_synthetic

    def with_nan(**kwargs):
        x, y, extra = real(**kwargs)
        x = x.copy()
        x[:, 0, 0, 0] = np.nan
        return x, y, extra

    monkeypatch.setattr(quantus_roar.data, "make_synthetic", with_nan)
    with pytest.raises(DatasetError, match=r"train inputs of dataset 'synthetic' contain NaN or "
                                           r"infinite values \(the first in sample 0\)"):
        load_dataset("synthetic")


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, n_per_batch: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL,
                 bytes_keys: bool = False) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = list(rng.integers(0, 10, n_per_batch))
        with open(folder / name, "wb") as f:
            pickle.dump({key("data"): data, key("labels"): labels}, f, protocol=protocol)
        out["test" if name == "test_batch" else "train"].append((data, labels))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): [f"class{i}" for i in range(10)]}, f, protocol=protocol)
    return {k: (np.concatenate([d for d, _ in v]), np.concatenate([lab for _, lab in v]))
            for k, v in out.items()}


def test_cifar10_from_local_python_batches(tmp_path):
    written = _write_cifar(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}")
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(data.x_train.reshape(20, -1), written["train"][0] / 255.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(data.y_train, written["train"][1])
    np.testing.assert_array_equal(data.y_test, written["test"][1])
    assert data.y_train.dtype == np.int64 and data.x_train.dtype == np.float32
    assert data.classes == [f"class{i}" for i in range(10)]
    streamed = load_dataset(f"cifar10:{tmp_path}", cache=tmp_path / "cache")
    assert streamed.streamed and streamed.digest == data.digest


@pytest.mark.parametrize(("protocol", "bytes_keys"), [(2, False), (2, True), (5, True), (0, False)])
def test_cifar10_reads_every_pickle_protocol_and_bytes_keys(tmp_path, protocol, bytes_keys):
    _write_cifar(tmp_path / "ref")
    _write_cifar(tmp_path / "other", protocol=protocol, bytes_keys=bytes_keys)
    ref = load_dataset(f"cifar10:{tmp_path / 'ref'}")
    other = load_dataset(f"cifar10:{tmp_path / 'other'}")
    assert other.digest == ref.digest and other.classes == ref.classes


def test_cifar10_malformed_batch_is_a_clear_error(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"'.*cifar-10-batches-py/data_batch_3' is malformed, "
                                           "not a readable pickle"):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar10_missing_files_are_named(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").unlink()
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DatasetError, match=r"No readable cifar10 files .*missing data_batch_2, "
                                           r"batches.meta.*Expected layout"):
        load_dataset(f"cifar10:{tmp_path}")


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class _TouchesFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize(("payload", "global_name"), [(_RunsShell, r"'(posix|os)\.system'"),
                                                      (_TouchesFile, r"'pathlib\.")])
def test_cifar10_pickle_that_runs_code_is_refused_unread(tmp_path, payload, global_name):
    _write_cifar(tmp_path)
    marker = tmp_path / "MARKER"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    data = pickle.loads(batch.read_bytes())
    batch.write_bytes(pickle.dumps({**data, "extra": payload(marker)}))
    with pytest.raises(DatasetError, match=rf"Refused to read the CIFAR-10 file '{batch}': its "
                                           rf"pickle asks for the Python object {global_name}"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"  # read first
    meta.write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(DatasetError, match=rf"Refused to read the CIFAR-10 file '{meta}'"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_cifar10_truncated_batch_names_the_file(tmp_path):
    _write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=rf"'{batch}' is malformed, not a readable pickle"):
        load_dataset(f"cifar10:{tmp_path}")
    batch.write_text("data,labels\n1,2\n")
    with pytest.raises(DatasetError, match=rf"'{batch}' is malformed, not a readable pickle"):
        load_dataset(f"cifar10:{tmp_path}")


_GOOD = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}


@pytest.mark.parametrize(("batch", "message"), [
    ({**_GOOD, "data": np.zeros((4, 3072))}, r"'data' is a float64 array of shape \(4, 3072\), "
                                             r"expected uint8 of shape \(n, 3072\)"),
    ({**_GOOD, "data": np.zeros((4, 32, 32, 3), np.uint8)}, r"of shape \(4, 32, 32, 3\)"),
    ({**_GOOD, "data": b"\0" * 3072}, r"'data' is a bytes, expected uint8"),
    ({**_GOOD, "labels": [0, 1, 2]}, "it has 4 images but 3 labels"),
    ({**_GOOD, "labels": [0, 1, 2, 10]}, "'labels' holds 10; CIFAR-10 labels are 0 to 9"),
    ({**_GOOD, "labels": [0, -1, 2, 3]}, "'labels' holds -1"),
    ({**_GOOD, "labels": [0.0, 1.5, 2, 3]}, "'labels' is not a flat list of integers"),
    ({"data": _GOOD["data"]}, r"no 'data' and 'labels' entries \(keys: \['data'\]\)"),
    ([1, 2, 3], "it holds a list, not a dict"),
])
def test_cifar10_wrong_contents_name_the_file(tmp_path, batch, message):
    _write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetError, match=rf"CIFAR-10 file '{path}' is malformed: .*{message}"):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar10_meta_without_ten_names_is_refused(tmp_path):
    _write_cifar(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": ["cat", "dog"]}))
    with pytest.raises(DatasetError, match=rf"'{meta}' is malformed: 'label_names' is not a "
                                           "list of the 10 class names"):
        load_dataset(f"cifar10:{tmp_path}")


# --------------------------------------------------------------------------- image folders


def _write_folder(root: Path, classes: int = 3, per_class: int = 5, size: int = 6) -> None:
    rng = np.random.default_rng(2)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                d / f"{i}.png")


def test_imagefolder_with_train_and_test_folders(tmp_path):
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "test", per_class=2)
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.x_train.shape == (15, 3, 6, 6) and data.x_test.shape == (6, 3, 6, 6)
    assert data.classes == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(data.y_test, [0, 0, 1, 1, 2, 2])
    first = np.asarray(Image.open(tmp_path / "train" / "c0" / "0.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(data.x_train[0], first.transpose(2, 0, 1))
    resized = load_dataset(f"imagefolder:{tmp_path}", image_size=4)
    assert resized.x_train.shape == (15, 3, 4, 4)


def test_imagefolder_without_split_is_split_stratified(tmp_path):
    _write_folder(tmp_path, per_class=10)
    data = load_dataset(f"imagefolder:{tmp_path}", seed=3)
    assert len(data.y_train) == 24 and np.bincount(data.y_test).tolist() == [2, 2, 2]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*ROOT/train/<class>"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not an image folder"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    _write_folder(tmp_path / "mixed", per_class=2)
    Image.new("RGB", (9, 9)).save(tmp_path / "mixed" / "c1" / "big.png")
    with pytest.raises(DatasetError, match="Pass image_size"):
        load_dataset(f"imagefolder:{tmp_path / 'mixed'}")
    with pytest.raises(ValueError, match="Unknown dataset spec"):
        load_dataset("imagenet")


def test_imagefolder_lists_image_extensions_in_any_case_sorted(tmp_path):
    _write_folder(tmp_path, classes=2, per_class=2)
    (tmp_path / "c0" / "0.png").rename(tmp_path / "c0" / "B.PNG")
    (tmp_path / "c0" / "notes.txt").write_text("not an image")
    (tmp_path / "c0" / "sub").mkdir()
    Image.new("RGB", (6, 6), (255, 0, 0)).save(tmp_path / "c0" / "sub" / "a.png")
    data = load_dataset(f"imagefolder:{tmp_path}", seed=0)
    assert len(data.y_train) + len(data.y_test) == 5
    again = load_dataset(f"imagefolder:{tmp_path}", seed=0)
    assert again.digest == data.digest


def test_imagefolder_does_not_follow_folder_links(tmp_path):
    _write_folder(tmp_path, classes=2, per_class=3)
    (tmp_path / "c0" / "loop").symlink_to(tmp_path / "c0" / "..", target_is_directory=True)
    (tmp_path / "c2").symlink_to(tmp_path / "c0", target_is_directory=True)
    with _deadline(20):
        data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.classes == ["c0", "c1"]
    assert len(data.y_train) + len(data.y_test) == 6


def test_imagefolder_reads_file_links_and_refuses_broken_links_and_pipes(tmp_path):
    _write_folder(tmp_path / "ok", classes=2, per_class=2)
    (tmp_path / "ok" / "c1" / "linked.png").symlink_to(tmp_path / "ok" / "c0" / "0.png")
    data = load_dataset(f"imagefolder:{tmp_path / 'ok'}")
    assert len(data.y_train) + len(data.y_test) == 5
    _write_folder(tmp_path / "broken", classes=2, per_class=2)
    broken = tmp_path / "broken" / "c1" / "gone.png"
    broken.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DatasetError, match=rf"The image '{broken}' cannot be read .*broken link"):
        load_dataset(f"imagefolder:{tmp_path / 'broken'}")
    _write_folder(tmp_path / "fifo", classes=2, per_class=2)
    fifo = tmp_path / "fifo" / "c0" / "pipe.png"
    os.mkfifo(fifo)
    with _deadline(20), pytest.raises(DatasetError, match=rf"The image '{fifo}' is not a "
                                                         "regular file"):
        load_dataset(f"imagefolder:{tmp_path / 'fifo'}")


@pytest.mark.skipif(not Path("/proc/self/attr").is_dir(), reason="needs Linux /proc")
def test_imagefolder_proc_self_ends_quickly_as_not_an_image_folder():
    t0 = time.perf_counter()
    message = (r"'/proc/self' is not an image folder: the class folder '/proc/self/\w+' holds no "
               r"image files.*Expected layout: ROOT/train/<class>")
    with _deadline(20), pytest.raises(DatasetError, match=message):
        load_dataset("imagefolder:/proc/self")
    assert time.perf_counter() - t0 < 10


def test_imagefolder_needs_two_classes_before_decoding(tmp_path):
    (tmp_path / "one" / "c0").mkdir(parents=True)
    (tmp_path / "one" / "c0" / "0.png").write_bytes(b"not decoded")
    with pytest.raises(DatasetError, match=r"'.*one' is not an image folder for the benchmark: "
                                           r"it holds 1 class folder\(s\) \['c0'\].*needs at "
                                           "least two classes"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}")
    _write_folder(tmp_path / "split" / "train", classes=1)
    _write_folder(tmp_path / "split" / "test", classes=2)
    with pytest.raises(DatasetError, match=r"'.*split/train' is not an image folder.*needs at "
                                           "least two classes"):
        load_dataset(f"imagefolder:{tmp_path / 'split'}")


def test_imagefolder_test_split_may_lack_a_class_but_not_have_an_empty_one(tmp_path):
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "test", per_class=2)
    for f in (tmp_path / "test" / "c1").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=rf"the class folder '{tmp_path / 'test' / 'c1'}' "
                                           "holds no image files"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "test" / "c1").rmdir()
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.classes == ["c0", "c1", "c2"] and data.n_classes == 3
    np.testing.assert_array_equal(data.y_test, [0, 0, 2, 2])
    (tmp_path / "test" / "c9").mkdir()
    with pytest.raises(DatasetError, match=r"must be some of those of .*not in train: \['c9'\]"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_class_with_one_image_needs_a_test_folder(tmp_path):
    _write_folder(tmp_path, classes=2, per_class=3)
    for f in ("1.png", "2.png"):
        (tmp_path / "c1" / f).unlink()
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['c1'\] of .* hold a single "
                                           "image"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_scales_16_bit_greyscale_by_65535(tmp_path):
    rng = np.random.default_rng(4)
    arrays = {}
    for c, (dtype, ext) in enumerate([(np.uint16, "png"), (">u2", "tiff"), (np.int32, "tiff")]):
        for split in ("train", "test"):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            arr = rng.integers(0, 65536, (5, 7)).astype(dtype)
            path = tmp_path / split / f"c{c}" / f"0.{ext}"
            Image.fromarray(arr).save(path)
            arrays[split, c] = arr
    assert [Image.open(p).mode for p in sorted((tmp_path / "train").rglob("0.*"))] == [
        "I;16", "I;16B", "I"]
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.x_train.shape == (3, 1, 5, 7)
    for c in range(3):
        np.testing.assert_allclose(data.x_train[c, 0], arrays["train", c] / 65535, atol=1e-6)
        np.testing.assert_allclose(data.x_test[c, 0], arrays["test", c] / 65535, atol=1e-6)
    small = load_dataset(f"imagefolder:{tmp_path}", image_size=3)
    assert small.x_train.shape == (3, 1, 3, 3)
    assert 0.0 < small.x_train.min() and small.x_train.max() < 1.0
    Image.fromarray(np.full((5, 7), 70000, np.int32)).save(tmp_path / "train" / "c2" / "1.tiff")
    with pytest.raises(DatasetError, match=r"1.tiff' cannot be read .*outside 16 bits"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_8_bit_images_are_divided_by_255(tmp_path):
    rng = np.random.default_rng(5)
    grey = {c: rng.integers(0, 256, (4, 4), dtype=np.uint8) for c in range(2)}
    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            Image.fromarray(grey[c]).save(tmp_path / split / f"c{c}" / "0.png")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.x_train.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(data.x_train[1, 0], grey[1].astype(np.float32) / 255.0)


def _truncated_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(
        path)
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize(("damage", "error"), [
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(200)), "UnidentifiedImageError"),
    (lambda p: p.write_text("just some text\n"), "UnidentifiedImageError"),
    (_truncated_png, "OSError"),
])
def test_imagefolder_unreadable_image_names_the_file(tmp_path, damage, error):
    _write_folder(tmp_path, classes=2, per_class=3)
    bad = tmp_path / "c1" / "1.png"
    damage(bad)
    with pytest.raises(DatasetError, match=rf"The image '{bad}' cannot be read \({error}: "):
        load_dataset(f"imagefolder:{tmp_path}")


# --------------------------------------------------------------------------- streamed files


def test_failed_streamed_load_leaves_no_partial_file(tmp_path):
    _write_folder(tmp_path / "data" / "train", classes=2, per_class=4)
    _write_folder(tmp_path / "data" / "test", classes=2, per_class=1)
    bad = tmp_path / "data" / "train" / "c0" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=rf"The image '{bad}' cannot be read"):
        load_dataset(f"imagefolder:{tmp_path / 'data'}", cache=cache)
    assert cache.is_dir() and list(cache.iterdir()) == []


def test_stale_partial_file_does_not_block_a_rerun(tmp_path):
    _write_folder(tmp_path / "data", classes=2, per_class=3)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "x_train.npy.partial").write_bytes(b"left by a killed run")
    data = load_dataset(f"imagefolder:{tmp_path / 'data'}", cache=cache)
    assert data.streamed
    assert sorted(p.name for p in cache.iterdir()) == ["x_test.npy", "x_train.npy"]
    assert data.digest == load_dataset(f"imagefolder:{tmp_path / 'data'}").digest


def test_interrupted_materialise_removes_the_partial_file(tmp_path):
    def chunks():
        yield np.zeros((2, 1, 3, 3), np.float32)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _materialise("x_train", 4, (1, 3, 3), chunks(), tmp_path)
    assert list(tmp_path.iterdir()) == []
    out = _materialise("x_train", 2, (1, 3, 3), iter([np.ones((2, 1, 3, 3), np.float32)]),
                       tmp_path)
    assert isinstance(out, np.memmap) and float(out.sum()) == 18.0
    assert [p.name for p in tmp_path.iterdir()] == ["x_train.npy"]


def test_float_images_and_colour_after_grey_are_refused_naming_the_file(tmp_path):
    from PIL import Image

    root = tmp_path / "f"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(root / c / f"{i}.png")
    Image.fromarray(np.full((8, 8), 0.25, np.float32), "F").save(root / "a" / "9.tif")
    with pytest.raises(DatasetError, match=r"9\.tif.*floating-point pixels"):
        load_dataset(f"imagefolder:{root}")
    (root / "a" / "9.tif").unlink()
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    Image.fromarray(red, "RGB").save(root / "b" / "9.png")
    with pytest.raises(DatasetError, match=r"9\.png.*colour image.*first image is greyscale"):
        load_dataset(f"imagefolder:{root}")


@pytest.mark.parametrize("image_size", [0, -3, 4.5, True])
def test_bad_image_size_is_named_before_any_image_is_read(tmp_path, image_size):
    with pytest.raises(ValueError, match=r"'image_size' parameter of load_dataset"):
        load_dataset(f"imagefolder:{tmp_path}", image_size=image_size)
    with pytest.raises(TypeError, match=r"dataset spec must be a string"):
        load_dataset(None)  # type: ignore[arg-type]
