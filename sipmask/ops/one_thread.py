"""A worker thread whose OpenMP team and MKL calls are one thread, for stages of many small ops
(`serial_postprocess=True`: the postprocess on a busy CPU).

Each of torch's intra-op parallel ops pays a fork/join barrier, which a stage of many small ops can
lose more to than a second core gains. `torch.set_num_threads` would change the whole process (and
racing calls could leave it changed), so instead one worker thread is started once per process and
its own OpenMP thread count, a per-thread setting of the OpenMP runtime that torch loaded, is set to
1; so is MKL's per-thread count (`mkl_set_num_threads_local`). Every other thread keeps torch's count.

The MKL setting matters beyond the worker: MKL takes its thread count from its own process-wide
setting, not from OpenMP's per-thread one, so a matrix product on the worker started a second
OpenMP team of torch's size. With more OpenMP threads than cores, GNU OpenMP stops spin-waiting at
its barriers (futex sleeps instead), and every parallel op of the caller's network got slower from
then on: 44 -> 72 ms for `tiny` at 320 px on 2 cores, for the rest of the process.

Where no OpenMP runtime can be found (not Linux, or a torch build without OpenMP), `run` calls the
function on the caller's thread, unchanged.
"""
from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import torch

__all__ = ["openmp_runtime", "run_on_one_thread"]

T = TypeVar("T")

#: Shared-library names of the OpenMP runtimes torch builds link (GNU, Intel, LLVM).
OPENMP_LIBRARIES = ("libgomp", "libiomp5", "libomp")

_THREAD_NAME = "sipmask-one-thread"
_lock = threading.Lock()
_worker: ThreadPoolExecutor | None = None
_runtime: Any = None
_runtime_searched = False


def _loaded_function(library_prefixes: tuple[str, ...], name: str) -> Any:
    """The C function `name` of the first shared library loaded in this process whose file name
    starts with one of `library_prefixes` and exports it (ctypes, the library's existing handle), or
    None (no such library, or not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        file_name = path.rsplit("/", 1)[-1]
        if file_name.startswith(library_prefixes) and ".so" in file_name:
            try:
                return getattr(ctypes.CDLL(path), name)  # already loaded: the same handle, no second copy
            except (OSError, AttributeError):
                continue
    return None


def openmp_runtime() -> Any:
    """omp_set_num_threads of the OpenMP runtime loaded in this process (ctypes), or None."""
    global _runtime, _runtime_searched
    if not _runtime_searched:
        _runtime_searched = True
        _runtime = _loaded_function(OPENMP_LIBRARIES, "omp_set_num_threads")
        if _runtime is not None:
            _runtime.argtypes = [ctypes.c_int]
    return _runtime


def _mkl_function(name: str) -> Any:
    """MKL's function `name` from the loaded torch library (its exported names take int arguments by
    reference), or None (a torch built without MKL)."""
    fn = _loaded_function(("libtorch_cpu",), name)
    if fn is not None:
        fn.restype = ctypes.c_int
    return fn


def _start_one_thread_team() -> None:
    """Worker initialiser: torch's per-thread set-up first (it sets the OpenMP count from torch's
    global one on a thread's first use), then this thread's OpenMP team to one thread, and MKL's
    thread count on this thread to one as well."""
    torch.get_num_threads()
    openmp_runtime()(1)
    set_local = _mkl_function("mkl_set_num_threads_local")
    if set_local is not None:
        set_local(ctypes.byref(ctypes.c_int(1)))  # (the exported name takes the count by reference)


def _shared_worker() -> ThreadPoolExecutor | None:
    global _worker
    if openmp_runtime() is None:
        return None
    with _lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(1, thread_name_prefix=_THREAD_NAME,
                                         initializer=_start_one_thread_team)
    return _worker


def run_on_one_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) on the process's one-thread worker, with the caller's grad / inference mode
    (both are per-thread in torch); exceptions reach the caller. Calls from several threads queue."""
    worker = _shared_worker()
    if worker is None or threading.current_thread().name.startswith(_THREAD_NAME):  # (no nesting deadlock)
        return fn(*args, **kwargs)
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call() -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)

    return worker.submit(call).result()
