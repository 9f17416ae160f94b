"""The exact top-k search driver: any :class:`~hqgnn.index.kernels.Kernel`, queries in, :class:`SearchResult` out.

A kernel with a compiled fused search (:meth:`Kernel.fused`) runs it: scoring and
selection in one loop per query. Otherwise queries run in blocks on a thread pool
(numpy ufuncs and BLAS release the GIL; each worker's BLAS is held to one thread, see
:mod:`hqgnn.index.threads`, so the pool owns the cores). Per block: (1) a per-query
threshold from a 1-in-16 sample of the items, excluded items masked; (2) the items are
scored chunk by chunk (cache-sized), excluded items get the sentinel, and only entries
at or past the threshold are kept (``flatnonzero``); (3) the few survivors are ranked by
one sort of packed (query, score, item) keys -- best first, ties to the lower item index
(:mod:`hqgnn.index.select`); (4) a query that kept fewer than ``k`` survivors (rare) is
rescored in full and selected exactly, so the result never depends on the sample.
Python loops run over blocks, item chunks and bit planes only, never users or items.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from .kernels.protocol import Kernel
from .results import SearchResult
from .select import (SAMPLE_STRIDE, clamp_threshold, excluded_pairs, passing, rank_candidates, sample_thresholds,
                     select_topk, sentinel)
from .threads import blas_threads, default_threads, single_blas_thread

#: Upper bound of one block's (rows x items) score matrix, per worker thread.
SCORE_BUFFER_BYTES = 256 << 20


def _flat_scratch(tmp: dict, name: str, rows: int, cols: int, dtype) -> np.ndarray:
    """A C-contiguous ``(rows, cols)`` scratch array carved from a reusable flat buffer."""
    need = rows * cols
    buf = tmp.get(name)
    if buf is None or buf.size < need or buf.dtype != dtype:
        buf = tmp[name] = np.empty(max(need, 1), dtype)
    return buf[:need].reshape(rows, cols)


def _fill_rows(kernel: Kernel, q, lo: int, hi: int, out: np.ndarray, tmp: dict) -> None:
    """Scores of queries ``lo .. hi-1`` against every item of ``kernel`` into ``out``, chunk by chunk."""
    n, chunk = kernel.n_items, min(kernel.item_chunk, max(kernel.n_items, 1))
    for ilo in range(0, n, chunk):  # loop over item chunks
        ihi = min(n, ilo + chunk)
        kernel.fill(q, lo, hi, out[:, ilo:ihi], ilo, ihi, tmp)


class _Search:
    """One exact top-k search: a kernel, prepared queries, an exclusion CSR over the queries."""

    def __init__(self, kernel: Kernel, q, k: int, exclude):
        self.kernel, self.q, self.k = kernel, q, k
        self.n = kernel.n_items
        self.largest, self.dtype = kernel.largest, np.dtype(kernel.dtype)
        self.fill = sentinel(self.dtype, self.largest)
        self.exclude = exclude
        stride = self.stride = getattr(kernel, "sample_stride", SAMPLE_STRIDE)
        # sampled thresholds pay off once the catalogue is large against k
        self.sample = None
        if self.n >= 4 * stride * max(k, 8):
            cache = kernel.__dict__.setdefault("_sample_kernels", {})  # built once per kernel and stride
            if stride not in cache:
                cache[stride] = kernel.subset(np.arange(0, self.n, stride))
            self.sample = cache[stride]

    def block(self, lo: int, hi: int, tmp: dict) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(cols, raw values)`` of queries ``lo .. hi-1``."""
        R, N, k = hi - lo, self.n, self.k
        if self.exclude is not None:
            ex_rows, ex_cols = excluded_pairs(self.exclude[0], self.exclude[1], lo, hi)
        else:
            ex_rows = ex_cols = np.zeros(0, np.int64)
        if self.sample is None:
            S = _flat_scratch(tmp, "S", R, N, self.dtype)
            _fill_rows(self.kernel, self.q, lo, hi, S, tmp)
            S[ex_rows, ex_cols] = self.fill
            return select_topk(S, k, self.largest)
        # 1. per-row thresholds from every stride-th item (seen items masked)
        Ss = _flat_scratch(tmp, "sample", R, self.sample.n_items, self.dtype)
        _fill_rows(self.sample, self.q, lo, hi, Ss, tmp)
        in_sample = ex_cols % self.stride == 0
        Ss[ex_rows[in_sample], ex_cols[in_sample] // self.stride] = self.fill
        t = clamp_threshold(sample_thresholds(Ss, k, self.largest, self.stride), self.dtype, self.largest)
        # 2. stream the items chunk by chunk: excluded entries get the sentinel, then keep the
        #    entries at or past the threshold
        by_col = np.argsort(ex_cols, kind="stable")
        ex_rows, ex_cols = ex_rows[by_col], ex_cols[by_col]
        parts_r, parts_c, parts_v = [], [], []
        chunk = min(self.kernel.item_chunk, N)
        for ilo in range(0, N, chunk):  # loop over item chunks
            ihi = min(N, ilo + chunk)
            width = ihi - ilo
            Sc = _flat_scratch(tmp, "chunk", R, width, self.dtype)
            self.kernel.fill(self.q, lo, hi, Sc, ilo, ihi, tmp)
            a, b = np.searchsorted(ex_cols, [ilo, ihi])
            Sc[ex_rows[a:b], ex_cols[a:b] - ilo] = self.fill
            flat = passing(Sc, t, self.largest)
            r = flat // width
            parts_r.append(r)
            parts_c.append(flat - r * width + ilo)
            parts_v.append(Sc.reshape(-1)[flat])
        rows, cols, vals = np.concatenate(parts_r), np.concatenate(parts_c), np.concatenate(parts_v)
        # 4. rows the threshold left short of k candidates: score them in full, exactly
        short = np.flatnonzero(np.bincount(rows, minlength=R) < k)
        if len(short):
            keep = ~np.isin(rows, short)
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
            S = np.empty((len(short), N), self.dtype)
            _fill_rows(self.kernel, self.kernel.take(self.q, lo + short), 0, len(short), S, tmp)
            pos = np.full(R, -1, np.int64)
            pos[short] = np.arange(len(short))
            hit = pos[ex_rows] >= 0
            S[pos[ex_rows[hit]], ex_cols[hit]] = self.fill
            sc, sv = select_topk(S, k, self.largest)
            ok = sc >= 0
            rows = np.concatenate([rows, np.repeat(short, ok.sum(1))])
            cols = np.concatenate([cols, sc[ok]])
            vals = np.concatenate([vals, sv[ok]])
        return rank_candidates(rows, cols, vals, R, N, k, self.largest, self.fill)


def search_topk(kernel: Kernel, queries: np.ndarray, k: int, exclude: Optional[tuple] = None,
                threads: Optional[int] = None, row_block: Optional[int] = None) -> SearchResult:
    """Exact top-``k`` items of every query under ``kernel``; excluded items never returned.

    ``queries``: in the kernel's input format (``(b, Q, W)`` uint64 bit planes for
    :class:`~hqgnn.index.kernels.PlaneKernel`, ``(Q, d)`` codes or float32 vectors for the
    others; :meth:`Kernel.prepare` is applied). ``exclude``: ``(indptr, indices)``, a CSR
    with one row per query listing item indices that must not be returned, or None.
    ``threads``: worker threads (default :func:`~hqgnn.index.threads.default_threads`);
    ``row_block``: queries per block (default: the kernel's, bounded by
    :data:`SCORE_BUFFER_BYTES`).

    Returns a :class:`SearchResult` ``(items, raw_scores)``, each ``(Q, k)``: item indices
    (int64, best first, ties to the lower index; ``-1`` pads rows with fewer than ``k``
    eligible items) and the kernel's scores (:meth:`Kernel.to_scores`: int32 ``<k_u, k_i>``
    for codes, float32 for embeddings; the int32 minimum / ``-inf`` on padding).
    Raises ``ValueError`` for ``k`` outside ``1 .. n_items`` or an exclusion CSR whose row
    count is not the number of queries.
    """
    q = kernel.prepare(queries)
    nq, n_items = kernel.n_queries(q), kernel.n_items
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} out of range 1..{n_items}")
    if exclude is not None:
        exclude = (np.asarray(exclude[0], dtype=np.int64), np.asarray(exclude[1], dtype=np.int64))
        if len(exclude[0]) != nq + 1:
            raise ValueError(f"exclusion CSR has {len(exclude[0]) - 1} rows for {nq} queries")
    n_workers = threads or default_threads()
    fused = kernel.fused()
    if fused is not None:  # scoring and selection in one compiled loop per query
        return SearchResult(*fused.search(q, k, exclude, n_workers))
    search = _Search(kernel, q, k, exclude)
    rb = row_block
    if rb is None:
        rb = kernel.row_block
        if search.sample is None:  # whole blocks of scores are materialised: bound their size
            rb = max(8, min(rb, SCORE_BUFFER_BYTES // max(1, n_items * np.dtype(kernel.dtype).itemsize)))
        rb = max(1, min(rb, -(-nq // n_workers)))  # at least one block per worker
    blocks = [(lo, min(nq, lo + rb)) for lo in range(0, nq, rb)]
    local = threading.local()

    def run(block):
        tmp = getattr(local, "tmp", None)
        if tmp is None:
            tmp = local.tmp = {}
        cols, vals = search.block(block[0], block[1], tmp)
        return block, cols, kernel.to_scores(vals)

    items_out = np.empty((nq, k), np.int64)
    scores_out = np.empty((nq, k), kernel.score_dtype)
    n_threads = max(1, min(n_workers, len(blocks)))
    if n_threads == 1:
        with blas_threads(n_workers):
            for block in blocks:
                (lo, hi), cols, scores = run(block)
                items_out[lo:hi], scores_out[lo:hi] = cols, scores
    else:
        # one block per worker and core; BLAS single-threaded inside each worker
        with ThreadPoolExecutor(n_threads, initializer=single_blas_thread) as pool:
            for (lo, hi), cols, scores in pool.map(run, blocks):
                items_out[lo:hi], scores_out[lo:hi] = cols, scores
    return SearchResult(items_out, scores_out)


def all_scores(kernel: Kernel, queries: np.ndarray) -> np.ndarray:
    """The full ``(Q, N)`` matrix of :meth:`Kernel.to_scores` values (int32 ``<k_u, k_i>`` or float32)
    of every query against every item: for checks on small sizes (``Q x N`` memory)."""
    q = kernel.prepare(queries)
    nq, n = kernel.n_queries(q), kernel.n_items
    out = np.empty((nq, n), kernel.score_dtype)
    tmp: dict = {}
    rb = kernel.row_block
    buf = np.empty((rb, n), kernel.dtype)
    for lo in range(0, nq, rb):  # loop over blocks
        hi = min(nq, lo + rb)
        _fill_rows(kernel, q, lo, hi, buf[: hi - lo], tmp)
        out[lo:hi] = kernel.to_scores(buf[: hi - lo])
    return out
