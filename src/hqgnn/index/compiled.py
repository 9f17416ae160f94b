"""Compiled exact top-k over packed bit planes: XOR, popcount and selection fused per query.

Why written by hand: no library ships an exact integer top-k over packed b-bit codes
with per-query exclusion lists. faiss's ``IndexBinaryFlat`` covers 1 bit only, takes no
exclusion list (it must over-fetch and filter) and orders ties its own way; numpy
has the pieces (``bitwise_xor``, ``bitwise_count``, ``argpartition``) but as
separate passes, each writing and rereading a (queries x items) temporary, which
is what bounds :class:`hqgnn.index.kernels.PlaneKernel` when it runs on numpy alone.
Here numba compiles one loop per query (parallel over queries) that keeps the costs
of a cache-sized block of items in registers / L1 and only appends the few items at
or below a threshold.

Per query (cost ``C = sum_{j,l} 2^(j+l) popcount(u_j XOR i_l)``, lower is better,
``<k_u, k_i> = d m^2 - 2 C``):

1. a threshold ``t`` from every ``stride``-th item: the cost of the sample item of rank
   ``floor((k + seen) / stride) + 3`` (found by counting when the costs take few values),
   so about ``k + seen + 3 stride`` items pass;
2. one pass over the items: costs of 512 items at a time (vectorised by the compiler:
   ``vpopcntq`` where the CPU has AVX-512 VPOPCNTDQ, a table lookup on AVX2), items with
   ``C <= t`` appended in index order;
3. the query's excluded items (sorted) are removed by a merge. Every item with a cost at
   or below the k-th best is a candidate, so if ``k`` or more remain the top-k is exact.
   Otherwise (about 1 query in 100: the sample misjudged the threshold) the query is
   scored in full and the exact k-th cost becomes the threshold (a counting select or a
   partition: linear, not a full sort);
4. a stable sort of the candidates by cost gives the top-k with ties to the lower index.
"""

from __future__ import annotations

import threading

import numpy as np

try:  # numba is a dependency; the numpy kernels remain the fallback where it cannot load
    import numba
    from numba import njit, prange, types
    from numba.extending import intrinsic
except Exception:  # pragma: no cover - exercised only without numba
    numba = None

BLOCK = 512          # items whose costs are computed at once (a 2 KiB int32 buffer)
# thresholds over fewer distinct costs than this are found by counting (d = 64: 1 to 3 bits)
COUNTING_SELECT_MAX = 4096

# numba's default thread pool (workqueue) must not be entered by two Python threads
# at once; every call already spreads over all cores, so calls simply take turns
_LAUNCH = threading.Lock()
PAD_SCORE = np.iinfo(np.int32).min


def available() -> bool:
    return numba is not None


if numba is not None:

    @intrinsic
    def _popcount(typingctx, x):
        """The CPU's population count of a uint64 (LLVM ``ctpop``; vectorised by table lookup on AVX2)."""
        if x != types.uint64:
            return None

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @njit(cache=True, nogil=True, inline="always")
    def _block_costs(qr, items, lo, hi, out):
        """Costs of the query planes ``qr`` (b, W) against items ``lo .. hi-1`` of ``items`` (b, W, N)."""
        b, W = qr.shape
        n = hi - lo
        for i in range(n):
            out[i] = 0
        for j in range(b):
            for l in range(b):
                s = j + l
                for w in range(W):
                    qv = qr[j, w]
                    row = items[l, w]
                    for i in range(n):
                        out[i] += np.int32(_popcount(qv ^ row[lo + i])) << s

    @njit(cache=True, nogil=True, inline="always")
    def _kth_smallest(costs, n, rank, max_cost, hist):
        """The value of rank ``rank`` (0-based) among ``costs[:n]``: a counting select when the
        costs are small integers in ``0 .. max_cost`` (``hist`` has at least ``max_cost + 1``
        bins), else (``hist`` empty) a partition, which works on a copy."""
        if hist.shape[0] > 0:
            hist[:] = 0
            for i in range(n):
                hist[costs[i]] += 1
            seen = 0
            for v in range(max_cost + 1):
                seen += hist[v]
                if seen > rank:
                    return v
            return max_cost
        return np.partition(costs[:n], rank)[rank]

    @njit(cache=True, nogil=True, parallel=True)
    def _plane_topk(q, items, sample, stride, k, ex_indptr, ex_indices, max_cost, n_chunks,
                    out_items, out_scores):
        R = q.shape[0]
        N = items.shape[2]
        ns = sample.shape[2]
        sentinel = np.int32(max_cost + 1)
        n_bins = max_cost + 2 if max_cost < COUNTING_SELECT_MAX else 0
        for chunk in prange(n_chunks):
            r_lo = chunk * R // n_chunks
            r_hi = (chunk + 1) * R // n_chunks
            buf = np.empty(BLOCK, np.int32)
            samp = np.empty(max(ns, 1), np.int32)
            cand_i = np.empty(N, np.int64)
            cand_c = np.empty(N, np.int32)
            hist = np.empty(n_bins, np.int64)
            full = np.empty(0, np.int32)
            for r in range(r_lo, r_hi):
                qr = q[r]
                s0 = ex_indptr[r]
                s1 = ex_indptr[r + 1]
                need = k + (s1 - s0)
                m = 0
                rank = need // stride + 3
                if rank < ns:
                    # 1. threshold from the sample
                    _block_costs(qr, sample, 0, ns, samp)
                    t = _kth_smallest(samp, ns, rank, max_cost, hist)
                    # 2. one pass: keep the items at or below the threshold, in index order
                    n = 0
                    for blo in range(0, N, BLOCK):
                        bhi = min(N, blo + BLOCK)
                        _block_costs(qr, items, blo, bhi, buf)
                        for i in range(bhi - blo):
                            if buf[i] <= t:
                                cand_i[n] = blo + i
                                cand_c[n] = buf[i]
                                n += 1
                    # 3. drop excluded items (both lists ascending)
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
                if m < k:
                    # the sample misjudged the threshold (or the list is long): score every item,
                    # excluded ones past the largest cost, and take the exact k-th cost as threshold
                    if full.shape[0] == 0:
                        full = np.empty(N, np.int32)
                    for blo in range(0, N, BLOCK):
                        bhi = min(N, blo + BLOCK)
                        _block_costs(qr, items, blo, bhi, buf)
                        full[blo:bhi] = buf[: bhi - blo]
                    for p in range(s0, s1):
                        full[ex_indices[p]] = sentinel
                    t = _kth_smallest(full, N, min(k, N) - 1, max_cost + 1, hist)  # hist covers the sentinel
                    m = 0
                    for i in range(N):
                        if full[i] <= t and full[i] <= max_cost:
                            cand_i[m] = i
                            cand_c[m] = full[i]
                            m += 1
                # 4. a stable sort by cost: ties go to the lower item index
                order = np.argsort(cand_c[:m], kind="mergesort")
                for c in range(k):
                    if c < m:
                        o = order[c]
                        out_items[r, c] = cand_i[o]
                        out_scores[r, c] = np.int32(max_cost - 2 * cand_c[o])
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


class FusedPlaneSearch:
    """Exact top-k over ``(b, N, W)`` uint64 item planes with the compiled fused loop.

    Built once per index (it keeps the items plane-word-major, ``(b, W, N)``, so the
    inner loop runs over contiguous items, and a strided sample for thresholds)."""

    sample_stride = 16

    def __init__(self, item_planes: np.ndarray, bits: int, dim: int):
        if numba is None:  # pragma: no cover
            raise RuntimeError("numba is not available")
        self.bits, self.dim = bits, dim
        self.items = np.ascontiguousarray(np.transpose(item_planes, (0, 2, 1)), dtype=np.uint64)
        self.sample = np.ascontiguousarray(self.items[:, :, :: self.sample_stride])
        self.n_items = self.items.shape[2]
        m = 2**bits - 1
        self.max_cost = dim * m * m  # as an int32 score, d m^2 - 2C stays within +- d m^2 < 2^31

    def search(self, query_planes: np.ndarray, k: int, exclude=None, threads: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
        """``query_planes``: ``(b, Q, W)`` uint64. Returns ``(items int64, scores int32)``, each ``(Q, k)``."""
        q = np.ascontiguousarray(np.transpose(query_planes, (1, 0, 2)), dtype=np.uint64)  # (Q, b, W)
        nq = q.shape[0]
        if exclude is None:
            indptr = np.zeros(nq + 1, np.int64)
            indices = np.zeros(0, np.int64)
        else:
            indptr = np.ascontiguousarray(exclude[0], dtype=np.int64)
            indices = sorted_exclusion(indptr, exclude[1])
        out_items = np.empty((nq, k), np.int64)
        out_scores = np.empty((nq, k), np.int32)
        if nq == 0:
            return out_items, out_scores
        threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        with _LAUNCH:
            previous = numba.get_num_threads()
            numba.set_num_threads(threads)
            try:
                n_chunks = min(nq, 8 * threads)
                _plane_topk(q, self.items, self.sample, self.sample_stride, k, indptr, indices,
                            self.max_cost, n_chunks, out_items, out_scores)
            finally:
                numba.set_num_threads(previous)
        return out_items, out_scores
