"""Safe file writes: atomic, never through a link, disk errors in plain words.

Every file the package writes goes through these helpers:

* :func:`atomic_write` writes a temporary file created exclusively in the
  target's folder and renames it over the target. A symlink planted at the
  target is replaced, never followed, and a reader never sees a half-written
  file. On any error the temporary file is removed.
* :func:`open_memmap` creates a ``.npy`` file with its blocks allocated up
  front, so a full disk is an ``OSError`` at creation rather than a SIGBUS
  while writing through the memory map.
* :func:`disk_error` turns ``OSError`` (full disk, read-only folder, missing
  permission) into a :class:`StorageError` naming the file and the way out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from quantus_roar.exceptions import StorageError

__all__ = [
    "StorageError", "atomic_write", "disk_error", "open_memmap", "remove_quietly", "write_text",
    "write_with",
]


_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or use another --out folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or use another --out folder",
    errno.EROFS: "the file system is read-only; use another --out folder",
    errno.EACCES: "permission denied; use a folder you can write to (--out)",
    errno.EPERM: "permission denied; use a folder you can write to (--out)",
}


def disk_error(err: OSError, path: str | Path, action: str = "write") -> StorageError:
    """A :class:`StorageError` for ``err`` that names ``path`` and how to recover."""
    advice = _ADVICE.get(err.errno or 0, err.strerror or str(err))
    return StorageError(err.errno or 0, f"Cannot {action} '{path}': {advice}.")


def remove_quietly(path: str | Path) -> None:
    """Remove a file if it exists; never raises."""
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it to ``path`` when the block ends.

    The temporary file is created with ``O_EXCL`` (``tempfile.mkstemp``), so
    it is never a link planted in advance, and ``os.replace`` swaps the
    directory entry, so a symlink at ``path`` is replaced rather than
    followed. If the block raises, ``path`` is left as it was.

    Raises
    ------
    StorageError
        When the folder cannot be written (full disk, read-only, permission).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as err:
        raise disk_error(err, path) from err
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
        os.replace(tmp, path)
    except OSError as err:
        remove_quietly(tmp)
        raise disk_error(err, path) from err
    except BaseException:
        remove_quietly(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write ``path`` with ``writer(file_object)`` (``np.save``, ``savefig``...)."""
    with atomic_write(path, "wb") as f:
        writer(f)


def open_memmap(path: str | Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A writable ``.npy`` memory map at ``path`` whose disk blocks are allocated now.

    Writing through a memory map into a sparse file on a full disk kills the
    process with SIGBUS; allocating the blocks first turns that into an
    ``OSError`` here. ``path`` must not exist (it is created exclusively).

    Raises
    ------
    StorageError
        When the file cannot be created or its space allocated; the partial
        file is removed.
    """
    path = Path(path)
    try:
        # Exclusive creation: never open a file (or a link) someone else put there.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                        shape=tuple(shape))
        allocate = getattr(os, "posix_fallocate", None)
        if allocate is not None:
            with open(path, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if size:
                    try:
                        allocate(f.fileno(), 0, size)
                    except OSError as err:  # file systems without fallocate: write as before
                        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                            raise
    except OSError as err:
        remove_quietly(path)
        raise disk_error(err, path) from err
    return out
