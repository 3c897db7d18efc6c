"""Where retraining runs: in this process, or as tasks on a Ray cluster.

An executor takes *tasks* — a module-level function and its arguments — and
hands back their results as they finish, each with the tag it was submitted
with. Large arguments (the unmodified data, the attributions) are stored once
with :meth:`Executor.put` and passed by handle, so on Ray they cross the
network once per node, not once per task.

:class:`LocalExecutor` runs each task when it is submitted. :class:`RayExecutor`
submits it to Ray with the resources it asks for (one task per GPU when the
retrainer trains on CUDA), retries tasks whose worker died or that raised
(``max_retries``), and reports a task that keeps failing as an error for its
tag while the other tasks go on.

Plain PyTorch; Ray is imported only by :class:`RayExecutor` (the ``ray`` extra).
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "TaskResult", "check_ray_address",
           "get_executor"]

logger = logging.getLogger(__name__)


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


def _run_task(fn: Callable[..., Any], num_threads: int, *args: Any) -> Any:
    """Worker side: fix torch's thread count to the task's CPUs, then call ``fn``."""
    import torch

    torch.set_num_threads(max(1, num_threads))
    return fn(*args)


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
        self._node_cpus = max((n["Resources"].get("CPU", 0.0) for n in self.ray.nodes()
                               if n.get("Alive")), default=0.0)

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any,
               num_cpus: float = 1, num_gpus: float = 0) -> None:
        if 0 < self._node_cpus < num_cpus:
            warnings.warn(f"Tasks ask for {num_cpus:g} CPUs (this process's torch threads) but "
                          f"the largest node of the Ray cluster has {self._node_cpus:g}; they "
                          f"run with {self._node_cpus:g}, so CPU sums may differ in the last "
                          "bits from the local executor. Call torch.set_num_threads(n) with n "
                          "at most the CPUs of a node for identical numbers.", stacklevel=2)
            num_cpus = self._node_cpus
        ref = self._remote.options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.max_retries,
            retry_exceptions=True,
        ).remote(fn, int(max(1, num_cpus)), *args)
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
                 max_retries: int = 3) -> Executor:
    """An executor from a name (``"local"``, ``"ray"``) or an :class:`Executor` as it is."""
    if executor is None or executor == "local":
        if address is not None:
            raise ValueError("A Ray address was given but the executor is 'local'. Pass "
                             "executor='ray' to run on the cluster at that address.")
        return LocalExecutor()
    if executor == "ray":
        return RayExecutor(address, max_retries=max_retries)
    if isinstance(executor, Executor):
        return executor
    raise ValueError(f"Unknown executor {executor!r}: use 'local', 'ray' or an "
                     "quantus_roar.executors.Executor.")
