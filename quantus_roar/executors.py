"""Where retraining runs: in this process, in worker processes, or on a Ray cluster.

An executor takes *tasks* — a module-level function and its arguments — and
hands back their results as they finish, each with the tag it was submitted
with. Large arguments (the unmodified data, the attributions) are stored once
with :meth:`Executor.put` and passed by handle, so on Ray they cross the
network once per node, not once per task.

:class:`LocalExecutor` runs each task when it is submitted.
:class:`ProcessExecutor` runs tasks in worker processes it starts and owns
(``workers`` of them, default the usable cores), started once and reused.
:class:`RayExecutor`
submits it to Ray with the resources it asks for (one task per GPU when the
retrainer trains on CUDA), retries tasks whose worker died or that raised
(``max_retries``), and reports a task that keeps failing as an error for its
tag while the other tasks go on.

Thread policy: every task runs with **one torch thread**, on every executor
(:data:`THREADS_PER_TASK`). CPU reductions are split by thread, so a task's bits
depend on its thread count; with one thread per task a result is the same for
any number of workers, whatever the machine's core count, and small-model
training -- which gains little from intra-op threads -- scales with processes
instead.

Plain PyTorch; Ray is imported only by :class:`RayExecutor` (the ``ray`` extra).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import types
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from multiprocessing import context as _mp_context
from typing import Any

__all__ = [
    "THREADS_PER_TASK",
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "TaskResult",
    "check_picklable",
    "check_ray_address",
    "check_workers",
    "get_executor",
    "one_thread",
    "usable_cores",
]

logger = logging.getLogger(__name__)

#: Torch threads of every task, on every executor (see the module's thread policy).
THREADS_PER_TASK = 1


def usable_cores() -> int:
    """The cores this process may run on: ``os.process_cpu_count`` (Python 3.13+), else
    ``os.sched_getaffinity``, else ``os.cpu_count``; never more than a cgroup CPU quota
    (a container's ``--cpus``) allows."""
    count = getattr(os, "process_cpu_count", None)
    try:
        n = count() if count is not None else len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        n = os.cpu_count()
    quota = _cgroup_cpus()
    return max(1, min(n or 1, quota) if quota else (n or 1))


def _cgroup_cpus() -> int | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max``), rounded up; None if none."""
    import math

    try:
        text = open("/sys/fs/cgroup/cpu.max", encoding="ascii").read().split()
    except OSError:
        return None
    if len(text) != 2 or text[0] == "max":
        return None
    try:
        return max(1, math.ceil(int(text[0]) / int(text[1])))
    except (ValueError, ZeroDivisionError):
        return None


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch runs with :data:`THREADS_PER_TASK` threads inside; the count is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS_PER_TASK)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TaskResult:
    """What a task returned, or the error that ended it (after every retry)."""

    tag: Hashable
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor:
    """The interface the metrics and the runner use."""

    def put(self, value: Any) -> Any:
        """A handle of ``value`` to pass to tasks in place of the value."""
        return value

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any,
               num_cpus: float = 1, num_gpus: float = 0) -> None:
        """Start ``fn(*args)``; handles from :meth:`put` among ``args`` are resolved."""
        raise NotImplementedError

    def poll(self, block: bool = True) -> list[TaskResult]:
        """Results of finished tasks not reported yet; with ``block``, wait for at least one
        (returns ``[]`` only when nothing is pending)."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        raise NotImplementedError

    def drain(self) -> list[TaskResult]:
        """Wait for every pending task."""
        out: list[TaskResult] = []
        while self.pending:
            out.extend(self.poll(block=True))
        return out

    def close(self) -> None:
        """Release what the executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Runs every task in this process, at submission, one after another.

    An exception is reported as the task's error, as on Ray, unless it is a
    ``KeyboardInterrupt``.
    """

    def __init__(self) -> None:
        self._done: list[TaskResult] = []

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any,
               num_cpus: float = 1, num_gpus: float = 0) -> None:
        try:
            with one_thread():
                self._done.append(TaskResult(tag, fn(*args)))
        except Exception as err:  # reported per task, like a failed Ray task
            self._done.append(TaskResult(tag, error=err))

    def poll(self, block: bool = True) -> list[TaskResult]:
        out, self._done = self._done, []
        return out

    @property
    def pending(self) -> int:
        return len(self._done)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "executor='ray' needs Ray, which is not installed. Install the extra with "
            "pip install 'quantus-roar[ray]' (or pip install 'ray>=2.9')."
        ) from err
    return ray


def _no_cluster(where: str, reason: str) -> ConnectionError:
    return ConnectionError(f"No Ray cluster answers at {where} ({reason}); start one with "
                           "`ray start --head` or check the address.")


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address; ``None`` for
    addresses Ray resolves itself (``auto``, ``local``, no port)."""
    rest = address.strip()
    default_port = None
    if rest.startswith("ray://"):
        rest, default_port = rest[len("ray://"):], 10001
    elif "://" in rest:
        return None
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):  # [IPv6]:port
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host or host in ("auto", "local"):
        return None
    if not port_text:
        return None if default_port is None else (host, default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"The Ray address {address!r} has no valid port; use HOST:PORT, such "
                         "as 127.0.0.1:6379, or 'auto'.") from None
    if not 0 < port < 65536:
        raise ValueError(f"The Ray address {address!r} has port {port}, outside 1-65535; use "
                         "HOST:PORT, such as 127.0.0.1:6379.")
    return host, port


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Raise at once unless something listens at the ``host:port`` of ``address``.

    ``ray.init`` retries an address that does not answer for many minutes; a
    TCP connection tells within ``timeout`` seconds. Addresses without a port
    (``auto``) are left to Ray.

    Raises
    ------
    ConnectionError
        Nothing listens there (refused, unreachable, unknown host, timed out).
    ValueError
        The address is not ``HOST:PORT``.
    """
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror as err:
        raise _no_cluster(f"{host}:{port}", f"unknown host: {err.strerror or err}") from None
    except TimeoutError:
        raise _no_cluster(f"{host}:{port}", f"no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise _no_cluster(f"{host}:{port}", "connection refused") from None
    except OSError as err:
        raise _no_cluster(f"{host}:{port}", err.strerror or str(err)) from None


def _run_task(fn: Callable[..., Any], *args: Any) -> Any:
    """Worker side: one torch thread (the thread policy), then call ``fn``."""
    import torch

    torch.set_num_threads(THREADS_PER_TASK)
    return fn(*args)


def _run_in_worker(fn: Callable[..., Any], *args: Any) -> bytes:
    """:func:`_run_task` in a :class:`ProcessExecutor` worker, its result as plain pickle
    bytes: tensors travel by value (never as handles to this worker's shared or CUDA
    memory, which end with it), and an error that would not unpickle in the parent is
    sent as a ``RuntimeError`` with its traceback."""
    import pickle
    import traceback

    try:
        return pickle.dumps(_run_task(fn, *args))
    except Exception as err:
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:
            raise RuntimeError(f"{type(err).__name__}: {err}\n"
                               f"{traceback.format_exc()}") from None
        raise


def _exit_with(parent: Any) -> None:
    """Worker side: end this process as soon as the parent process is gone."""
    from multiprocessing.connection import wait

    wait([parent.sentinel])
    os._exit(1)


def _worker_start() -> None:
    """Set up a worker process of :class:`ProcessExecutor` once: one torch thread, freed
    memory kept (the package owns the process), Ctrl+C left to the parent, an exit when
    the parent dies, and the removal and training code imported and run once on a tiny
    input, so no task pays a first-call cost."""
    import multiprocessing
    import signal
    import threading

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    torch.set_num_threads(THREADS_PER_TASK)
    with contextlib.suppress(RuntimeError):  # already set by an earlier parallel call
        torch.set_num_interop_threads(1)
    from quantus_roar.removal import warm_up
    from quantus_roar.retrain import keep_freed_memory

    keep_freed_memory()
    warm_up()


class _Shared:
    """A value put into shared memory once: its tensors travel to the workers as handles."""

    def __init__(self, value: Any):
        self.value = value


def _share(value: Any) -> Any:
    """A copy of ``value`` in shared memory when it is an array or a CPU tensor (other
    values as they are), so passing it to a worker sends a handle, not a copy."""
    import numpy as np
    import torch

    try:
        if isinstance(value, np.ndarray) and value.dtype != object:
            array = np.ascontiguousarray(value)
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            if not array.flags.writeable:  # torch wants writable memory; it is copied anyway
                array = array.copy()
            return torch.from_numpy(array).share_memory_()
        if isinstance(value, torch.Tensor) and value.device.type == "cpu":
            return value.detach().clone().share_memory_()  # the caller's tensor stays put
    except RuntimeError as err:
        raise RuntimeError(f"Cannot put {tuple(value.shape)} values into shared memory for "
                           f"the worker processes ({err}). Free space in /dev/shm (in Docker: "
                           "--shm-size), or retrain in this process (executor='local', "
                           "--executor local).") from err
    return value


def _resolved(args: tuple) -> tuple:
    return tuple(a.value if isinstance(a, _Shared) else a for a in args)


def check_workers(workers: Any, owner: str) -> int | None:
    """``workers`` if it is None or a positive integer; a ``ValueError`` naming ``owner``
    otherwise."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"The 'workers' parameter of {owner} must be a positive integer (or "
                         f"None: the usable cores, {usable_cores()} here). Got {workers!r}.")
    return workers


def _from_main(payload: bytes) -> list[str]:
    """The ``__main__`` globals a pickle refers to (functions and classes by name)."""
    import pickletools

    found, strings = [], []
    for op, arg, _ in pickletools.genops(payload):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL" and str(arg).startswith("__main__ "):
            found.append(str(arg).split(" ", 1)[1])
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2 and strings[-2] == "__main__":
            found.append(strings[-1])
    return found


def check_picklable(value: Any, what: str) -> None:
    """Raise a clear error, before any work, when ``value`` cannot go to a worker process:
    it does not pickle (a lambda, a local function, an open file), or it needs a function
    or class of an interactive ``__main__`` (a notebook, ``python -c``), which a worker
    cannot import.

    Raises
    ------
    ValueError
        The message names ``what``, the reason and the ways out.
    """
    import pickle
    import sys

    ways = ("Define model factories, models and augment functions in an importable module "
            "(or as a functools.partial of such a function), not as a lambda, a local "
            "function or in a notebook; or retrain in this process (executor='local', "
            "--executor local).")
    try:
        payload = pickle.dumps(value)
    except Exception as err:
        raise ValueError(f"Worker processes need {what}, but it cannot be pickled "
                         f"({type(err).__name__}: {err}). {ways}") from None
    main = sys.modules.get("__main__")
    names = _from_main(payload)
    if names and getattr(main, "__file__", None) is None:
        raise ValueError(f"Worker processes need {what}, but it uses {sorted(set(names))} "
                         "defined in an interactive session, which worker processes cannot "
                         f"import. {ways}")


def _needs_main(fn: Callable[..., Any], args: tuple) -> bool:
    """Whether a task refers to a function or class of ``__main__`` (the parent's script),
    which its worker must then import: every object the task pickles is looked at,
    but arrays and tensors (of classes defined elsewhere) are not looked into, and the
    bytes are not kept."""
    import pickle

    import numpy as np
    import torch

    found = []

    class _Discard:
        @staticmethod
        def write(data: bytes) -> int:
            return len(data)

    class _Scan(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            defined_there = isinstance(obj, (type, types.FunctionType)) and getattr(
                obj, "__module__", None) == "__main__"
            if defined_there or type(obj).__module__ == "__main__":
                found.append(obj)
                return 0
            if isinstance(obj, torch.Tensor) or (
                    isinstance(obj, np.ndarray) and obj.dtype != object):
                return 0
            return None

    try:
        _Scan(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump((fn, _resolved(args)))
    except Exception:  # pickled for real at submit, which reports the error
        return True
    return bool(found)


class _SpawnWithoutMain:
    """:mod:`multiprocessing.spawn` whose preparation data leaves out the parent's
    ``__main__``, so a new process does not run the parent's script again."""

    def __getattr__(self, name: str) -> Any:
        from multiprocessing import spawn

        return getattr(spawn, name)

    @staticmethod
    def get_preparation_data(name: str) -> dict:
        from multiprocessing import spawn

        data = spawn.get_preparation_data(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data


@functools.cache
def _popen_without_main() -> Any:
    """A ``Popen`` of ``spawn`` whose new process skips running the parent's ``__main__``
    again, or None where multiprocessing launches processes otherwise (Windows)."""
    if os.name != "posix":  # pragma: no cover - Windows launches processes otherwise
        return None
    from multiprocessing import popen_spawn_posix

    launch = popen_spawn_posix.Popen._launch
    if "spawn" not in launch.__code__.co_names:  # pragma: no cover - another stdlib
        return None
    # The stdlib's own launch, reading `spawn` from a namespace of its own: nothing
    # global is patched, so processes started meanwhile by others are not affected.
    namespace = dict(vars(popen_spawn_posix), spawn=_SpawnWithoutMain())
    plain = types.FunctionType(launch.__code__, namespace, launch.__name__,
                               launch.__defaults__, launch.__closure__)
    return type("_PopenWithoutMain", (popen_spawn_posix.Popen,), {"_launch": plain})


class _ProcessWithoutMain(_mp_context.SpawnProcess):
    """A ``spawn`` process that does not run the parent's ``__main__`` again."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        popen = _popen_without_main()
        return (popen or _mp_context.SpawnProcess._Popen)(process_obj)


class _ContextWithoutMain(_mp_context.SpawnContext):
    Process = _ProcessWithoutMain


def _spawn_context(with_main: bool) -> Any:
    """The ``spawn`` context, or with ``with_main=False`` one whose processes skip running
    the parent's ``__main__`` module again. ``spawn`` imports the parent's script in
    every worker (its top-level imports included: seconds for a script that imports
    Quantus), which a worker only needs when a task refers to something defined there.
    Where multiprocessing launches processes otherwise (Windows), plain ``spawn``."""
    import multiprocessing

    if with_main or _popen_without_main() is None:
        return multiprocessing.get_context("spawn")
    return _ContextWithoutMain()


class _Lost(RuntimeError):
    """A task whose worker process died (killed, out of memory, or unable to start)."""


_LOST = ("its worker process died: killed, out of memory, or unable to start (a worker "
         "imports the retrainer's classes: they must be importable, and a script that "
         "starts workers needs the `if __name__ == \"__main__\":` guard). Retrain in this "
         "process with executor='local' (--executor local) to see the error itself")


class ProcessExecutor(Executor):
    """Tasks in worker processes that this executor starts and owns.

    Workers start at the first task (not at construction). Each runs one torch
    thread (the thread policy of this module), keeps freed memory
    (:func:`quantus_roar.retrain.keep_freed_memory`, allowed here because the
    package owns these processes), ignores Ctrl+C (the parent stops it), exits
    when the parent dies, and is warmed up once, at start; workers live until
    :meth:`close`, so imports and allocations are reused from task to task.
    Values given to :meth:`put` go into shared memory once and reach every task
    as a handle; results come back by value. Workers are started with ``spawn``
    (never ``fork``, which is unsafe in a process that has run torch), and they
    run the parent's script (``__main__``) again only when the tasks refer to a
    function or class defined there: a script's top-level imports (Quantus
    takes seconds) are not paid again in every worker otherwise.

    Everything a task gets is pickled: a model factory or retrainer must be
    importable (a module-level function or class, or a ``functools.partial`` of
    one), not a lambda or a class defined in a notebook
    (:func:`check_picklable`); and a script that starts workers needs the
    ``if __name__ == "__main__":`` guard, as for any ``multiprocessing`` use.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default :func:`usable_cores`.
    max_retries : int, default 3
        Retries of a task that raised or whose worker died. When a worker dies,
        every task running or waiting in the pool at that moment is lost and
        counts one try; tasks that had finished keep their results.

    Raises
    ------
    ValueError
        If ``workers`` is not a positive integer.
    """

    def __init__(self, workers: int | None = None, *, max_retries: int = 3):
        import sys

        self.workers = check_workers(workers, "ProcessExecutor") or usable_cores()
        if sys.platform == "win32":  # the most ProcessPoolExecutor accepts there
            self.workers = min(self.workers, 61)
        self.max_retries = int(max_retries)
        self._pool: Any = None  # started at the first task, then kept until close()
        self._with_main = False  # whether the pool's workers imported the parent's script
        # future -> (tag, fn, args, tries so far, the task's own error of an earlier try)
        self._futures: dict[Any, tuple[Hashable, Callable[..., Any], tuple, int,
                                       BaseException | None]] = {}
        self._ready: list[TaskResult] = []  # finished before a restart, not reported yet
        # tasks that need the parent's script, waiting for a pool whose workers have it
        self._held: list[tuple[Hashable, Callable[..., Any], tuple, int,
                               BaseException | None]] = []

    def _new_pool(self, with_main: bool) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        self._with_main = with_main
        return ProcessPoolExecutor(self.workers, mp_context=_spawn_context(with_main),
                                   initializer=_worker_start)

    def put(self, value: Any) -> Any:
        return _Shared(_share(value))

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any,
               num_cpus: float = 1, num_gpus: float = 0) -> None:
        self._start(tag, fn, args, 0, None)

    def _start(self, tag: Hashable, fn: Callable[..., Any], args: tuple, tries: int,
               own: BaseException | None) -> None:
        """Submit a task. Workers run the parent's script only once a task refers to
        something defined there (then every later pool does too); such a task, and every
        task after it, waits while workers without the script run tasks, then gets new
        workers."""
        from concurrent.futures import BrokenExecutor

        needs_main = not self._with_main and _needs_main(fn, args)
        if self._held or (self._pool is not None and needs_main):
            self._held.append((tag, fn, args, tries, own))
            self._release_held()
            return
        for attempt in range(2):
            if self._pool is None:
                self._pool = self._new_pool(needs_main or self._with_main)
            try:
                future = self._pool.submit(_run_in_worker, fn, *_resolved(args))
                break
            except BrokenExecutor:  # a worker died since the last poll
                if attempt:
                    raise
                self._restart()
        self._futures[future] = (tag, fn, args, tries, own)

    def _release_held(self) -> None:
        """Once no task runs, replace workers without the parent's script by workers with
        it and submit the tasks that wait, in order."""
        if not self._held or self._futures:
            return
        if not self._with_main:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)
            self._pool = self._new_pool(True)
        held, self._held = self._held, []
        for i, entry in enumerate(held):
            try:
                self._start(*entry)
            except BaseException:
                self._held = held[i:] + self._held  # still pending, not lost
                raise

    def poll(self, block: bool = True) -> list[TaskResult]:
        out = self._poll_once(block)
        while block and not out and (self._futures or self._ready or self._held):
            out = self._poll_once(True)
        return out

    def _poll_once(self, block: bool) -> list[TaskResult]:
        from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, wait

        self._release_held()
        out, self._ready = self._ready, []
        if out or not self._futures:
            return out
        done, _ = wait(list(self._futures), timeout=None if block else 0,
                       return_when=FIRST_COMPLETED)
        if any(isinstance(f.exception(), BrokenExecutor) for f in done):
            self._restart()  # sorts every task of the dead pool
            out, self._ready = self._ready, []
            return out
        for future in done:
            self._finish(future, *self._futures.pop(future))
        out, self._ready = self._ready, []
        return out

    def _finish(self, future: Any, tag: Hashable, fn: Callable[..., Any], args: tuple,
                tries: int, own: BaseException | None) -> None:
        """Report a finished future, or retry its task (a lost one without an error of its
        own is reported as lost)."""
        import pickle
        from concurrent.futures import BrokenExecutor

        error = future.exception()
        if error is None:
            self._ready.append(TaskResult(tag, pickle.loads(future.result())))
            return
        if isinstance(error, BrokenExecutor):
            error = own or _Lost(f"Task {tag!r} failed: {_LOST}.")
        if tries < self.max_retries:
            logger.warning("task %s failed (%r); retrying", tag, error)
            self._start(tag, fn, args, tries + 1, error if not isinstance(error, _Lost)
                        else own)
        else:
            logger.error("task %s failed after %d retries: %s", tag, self.max_retries, error)
            self._ready.append(TaskResult(tag, error=error))

    def _restart(self) -> None:
        """A new pool after a worker died: tasks that finished keep their results, every
        other task of the old pool counts a try and is resubmitted."""
        old, self._pool = self._pool, None
        pending, self._futures = self._futures, {}
        with contextlib.suppress(Exception):
            old.shutdown(wait=False, cancel_futures=True)
        for future, entry in pending.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                self._finish(future, *entry)
            else:
                self._finish(_LostFuture(), *entry)

    @property
    def pending(self) -> int:
        return len(self._futures) + len(self._ready) + len(self._held)

    def close(self) -> None:
        """Stop the workers: at once, ending the tasks still running, when some are
        pending (an interrupted or failed call); after they finish otherwise."""
        pool, self._pool = self._pool, None
        running = bool(self._futures)
        self._futures.clear()
        self._ready.clear()
        self._held.clear()
        if pool is None:
            return
        if running:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    process.terminate()
        pool.shutdown(wait=not running, cancel_futures=True)


class _LostFuture:
    """Stands for a task's future lost with its pool."""

    @staticmethod
    def exception() -> BaseException:
        from concurrent.futures.process import BrokenProcessPool

        return BrokenProcessPool("the pool of the task's worker broke")


class RayExecutor(Executor):
    """Tasks on a Ray cluster: the one at ``address``, or one started in this process.

    Parameters
    ----------
    address : str, optional
        Address of a running cluster (``"127.0.0.1:6379"``, ``"ray://..."``,
        ``"auto"``). Default: connect to the cluster Ray already initialised in
        this process, else start a local one.
    max_retries : int, default 3
        Retries of a task whose worker process died or that raised.
    num_cpus : int, optional
        CPUs of the local cluster started when there is no address.
    init_kwargs
        Further keyword arguments of ``ray.init``.

    Raises
    ------
    ImportError
        If Ray is not installed; the message says how to install it.
    ConnectionError
        If no cluster answers at ``address`` (checked with a TCP connection
        before ``ray.init``, which would retry for many minutes), or, for
        ``"auto"``, if Ray finds no running cluster; one line.
    """

    def __init__(self, address: str | None = None, *, max_retries: int = 3,
                 num_cpus: int | None = None, **init_kwargs: Any):
        self.ray = _import_ray()
        self.max_retries = int(max_retries)
        self._started = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      **init_kwargs}
            if address is not None:
                check_ray_address(address)
                kwargs["address"] = address
            elif num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            try:
                self.ray.init(**kwargs)
            except ConnectionError as err:
                if address is None:
                    raise
                reason = str(err).splitlines()[0] if str(err) else "no running cluster found"
                raise _no_cluster(f"address {address!r}", reason) from None
            self._started = True
        self._remote = self.ray.remote(_run_task)
        self._refs: dict[Any, Hashable] = {}

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any,
               num_cpus: float = 1, num_gpus: float = 0) -> None:
        ref = self._remote.options(
            num_cpus=THREADS_PER_TASK, num_gpus=num_gpus, max_retries=self.max_retries,
            retry_exceptions=True,
        ).remote(fn, *args)
        self._refs[ref] = tag

    def poll(self, block: bool = True) -> list[TaskResult]:
        if not self._refs:
            return []
        refs = list(self._refs)
        ready: list[Any] = []
        if block:
            ready, refs = self.ray.wait(refs, num_returns=1)
        if refs:
            more, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
            ready += more
        out = []
        for ref in ready:
            tag = self._refs.pop(ref)
            try:
                out.append(TaskResult(tag, self.ray.get(ref)))
            except Exception as err:  # RayTaskError, WorkerCrashedError, ...
                logger.error("task %s failed after %d retries: %s", tag, self.max_retries, err)
                out.append(TaskResult(tag, error=err))
        return out

    @property
    def pending(self) -> int:
        return len(self._refs)

    def close(self) -> None:
        for ref in list(self._refs):
            self.ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self.ray.shutdown()
            self._started = False


def get_executor(executor: str | Executor | None, *, address: str | None = None,
                 max_retries: int = 3, workers: int | None = None) -> Executor:
    """An executor from a name (``"local"``, ``"processes"``, ``"ray"``) or an
    :class:`Executor` as it is."""
    if executor in (None, "local", "processes") and address is not None:
        raise ValueError("A Ray address was given but the executor is not 'ray'. Pass "
                         "executor='ray' to run on the cluster at that address.")
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "processes":
        return ProcessExecutor(workers, max_retries=max_retries)
    if executor == "ray":
        return RayExecutor(address, max_retries=max_retries)
    if isinstance(executor, Executor):
        return executor
    raise ValueError(f"Unknown executor {executor!r}: use 'local', 'processes', 'ray' or "
                     "a quantus_roar.executors.Executor.")
