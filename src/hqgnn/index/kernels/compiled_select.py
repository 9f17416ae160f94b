"""The selection steps the compiled searches share, and how a compiled search is launched.

Per query, both compiled searches (:mod:`~hqgnn.index.kernels.compiled_planes`,
:mod:`~hqgnn.index.kernels.compiled_dot`) read a threshold off a sample of the items
(:func:`_low_rank_value`, :func:`_kth_smallest`), gather the items at or below it in
index order, drop the query's excluded items (:func:`_drop_excluded`), fall back to
an exact threshold over every item when fewer than ``k`` remain
(:func:`_collect_at_or_below`), and write the ordered top-k (:func:`_write_topk`).
A launch (:func:`numba_threads`) holds numba's thread pool for one call at a time.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

import numpy as np

from .intrinsics import njit, numba

# sample thresholds of lower rank than this walk the distinct values (see _low_rank_value)
LOW_RANK_MAX = 24
#: The score of a padding entry (fewer than k eligible items): the int32 minimum.
PAD_SCORE = np.iinfo(np.int32).min

# numba's default thread pool (workqueue) must not be entered by two Python threads
# at once; every call already spreads over all cores, so calls simply take turns
_LAUNCH = threading.Lock()

if numba is not None:

    @njit(cache=True, nogil=True, inline="always")
    def _low_rank_value(costs, n, rank, big):
        """The value of a low rank ``rank`` (0-based) among ``costs[:n]`` (all below ``big``):
        walks the distinct values upwards from the minimum, one vectorised pass each
        (count at or below, next larger value), so ``rank + 1`` passes at most. A histogram
        costs more here: its increments hit the same few bins and wait on each other."""
        v = costs[0]
        for i in range(1, n):
            v = min(v, costs[i])
        while True:
            count = 0
            nxt = big
            for i in range(n):
                c = costs[i]
                count += c <= v
                nxt = min(nxt, c if c > v else big)
            if count > rank or nxt == big:
                return v
            v = nxt

    @njit(cache=True, nogil=True, inline="always")
    def _kth_smallest(costs, n, rank, max_cost, hist):
        """The value of rank ``rank`` (0-based) among ``costs[:n]``: a counting select when the
        costs are small integers in ``0 .. max_cost`` (``hist`` has at least ``max_cost + 1``
        bins), else (``hist`` empty) a partition, which works on a copy."""
        if hist.shape[0] > 0:
            hist[:max_cost + 1] = 0
            for i in range(n):
                hist[costs[i]] += 1
            seen = 0
            for v in range(max_cost + 1):
                seen += hist[v]
                if seen > rank:
                    return v
            return max_cost
        return np.partition(costs[:n], rank)[rank]

    @njit(cache=True, nogil=True, inline="always")
    def _drop_excluded(cand_i, cand_c, n, ex_indices, s0, s1):
        """Removes the items ``ex_indices[s0:s1]`` from the first ``n`` candidates, in place
        (both lists ascending: a merge); returns how many candidates remain."""
        m = 0
        p = s0
        for c in range(n):
            it = cand_i[c]
            while p < s1 and ex_indices[p] < it:
                p += 1
            if p < s1 and ex_indices[p] == it:
                continue
            cand_i[m] = it
            cand_c[m] = cand_c[c]
            m += 1
        return m

    @njit(cache=True, nogil=True, inline="always")
    def _collect_at_or_below(full, n, t, max_cost, cand_i, cand_c):
        """The items of ``full[:n]`` with a cost at or below ``t`` (and not a sentinel above
        ``max_cost``), in index order, as candidates; returns their number."""
        m = 0
        for i in range(n):
            if full[i] <= t and full[i] <= max_cost:
                cand_i[m] = i
                cand_c[m] = full[i]
                m += 1
        return m

    @njit(cache=True, nogil=True, inline="always")
    def _write_topk(cand_i, cand_c, order, m, k, r, base, step, out_items, out_scores):
        """Row ``r`` of the output: the first ``k`` candidates in ``order``, score
        ``base - step * cost``, padded with -1 / PAD_SCORE past ``m``."""
        for c in range(k):
            if c < m:
                o = order[c]
                out_items[r, c] = cand_i[o]
                out_scores[r, c] = np.int32(base - step * cand_c[o])
            else:
                out_items[r, c] = -1
                out_scores[r, c] = PAD_SCORE


def sorted_exclusion(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``indices`` with every CSR row sorted ascending (a copy only when some row is not)."""
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if len(indices) < 2:
        return indices
    starts = np.zeros(len(indices), bool)
    starts[indptr[:-1][np.diff(indptr) > 0]] = True
    if np.all((np.diff(indices) >= 0) | starts[1:]):
        return indices
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return indices[np.lexsort((indices, rows))]


def call_arrays(exclude: Optional[tuple], nq: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a compiled search takes besides the items: the exclusion CSR ``(indptr,
    indices)`` with rows sorted, and the ``(nq, k)`` item and score outputs."""
    if exclude is None:
        indptr, indices = np.zeros(nq + 1, np.int64), np.zeros(0, np.int64)
    else:
        indptr = np.ascontiguousarray(exclude[0], dtype=np.int64)
        indices = sorted_exclusion(indptr, exclude[1])
    return indptr, indices, np.empty((nq, k), np.int64), np.empty((nq, k), np.int32)


@contextlib.contextmanager
def numba_threads(threads: int) -> Iterator[int]:
    """numba's thread count set to ``threads`` (clamped) for one launch, then restored."""
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    with _LAUNCH:
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            yield threads
        finally:
            numba.set_num_threads(previous)

