"""Thread counts of the search: the worker pool's size and OpenBLAS's threads per worker.

The search driver (:mod:`hqgnn.index.search`) runs one block of queries per core on a
thread pool; each worker's sgemm must then stay single-threaded, or OpenBLAS spawns
(and spins) more threads on the same cores. ``openblas_set_num_threads_local``
(OpenBLAS >= 0.3.27) sets the count of the calling thread only; where numpy's OpenBLAS
lacks it these helpers do nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, Optional

import numpy as np


def default_threads() -> int:
    """Worker threads of the search pool: the CPUs this process may use, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(16, n))


@functools.lru_cache(maxsize=1)
def _openblas_set_threads_local() -> Optional[Callable[[int], int]]:
    """``openblas_set_num_threads_local`` of the OpenBLAS that numpy uses, or None."""
    import ctypes
    import glob

    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs_dir, "*openblas*"))):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        return fn
    return None


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit BLAS to ``n`` threads in the calling thread for the duration (no-op when unsupported)."""
    fn = _openblas_set_threads_local()
    previous = fn(n) if fn is not None else None
    try:
        yield
    finally:
        if fn is not None and previous is not None and previous > 0:
            fn(previous)


def single_blas_thread() -> None:
    """Initializer of a search pool worker: its BLAS calls run on one thread."""
    fn = _openblas_set_threads_local()
    if fn is not None:
        fn(1)
