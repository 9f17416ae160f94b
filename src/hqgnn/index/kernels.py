"""Exact scoring kernels and exact top-K selection for quantized (and float) retrieval.

Scores. For b-bit codes with odd levels ``k`` (``m = 2^b - 1``, ``d`` dimensions), the
score of a (user, item) pair is ``(s_u s_i / 4) <k_u, k_i>``; every kernel here returns
the *integer* ``<k_u, k_i>`` (float kernels: the float inner product). Three ways:

* :class:`PlaneKernel` -- bit planes, XOR + popcount (integer-only). Writing
  ``k = sum_j 2^j s_j`` with ``s_j = 2 c^(j) - 1`` in {-1, +1} (``c^(j)`` bit ``j`` of the code),

      <k_u, k_i> = d m^2 - 2 C,   C = sum_{j,l} 2^(j+l) popcount(u_j XOR i_l),

  so ranking by the score is ranking by the integer cost ``C`` (lower first). For
  ``b = 1`` this is ``d - 2 Hamming(u, i)``. ``b^2`` popcount passes per 64 dimensions;
  ``np.bitwise_count`` (numpy >= 2) on uint64 words, zero padding adds nothing.
* :class:`GemmKernel` -- a float32 matrix product of the levels ``k`` (BLAS sgemm).
  Every product and partial sum is an integer of magnitude ``<= d m^2``; below 2^24
  float32 represents them exactly and the result equals the integer inner product
  bit for bit. This is *exact integer arithmetic carried out by the float unit*, not
  integer-only hardware; ``d m^2 >= 2^24`` (e.g. b = 8, d > 258) switches to float64
  (exact below 2^53). Also the float32 kernel of :class:`~hqgnn.index.engine.FloatIndex`.
* :class:`IntMatmulKernel` -- ``torch.mm`` on int32 levels: integer-only arithmetic
  (no float anywhere), exact while ``d m^2 < 2^31``. Slower than sgemm on CPUs without
  int8 dot-product instructions; kept as the honest integer-only GEMM.

Selection (:func:`select_topk`): exact top-K per row with excluded (seen) items removed
and ties broken by the lower item index; vectorised over a block of rows. A per-row
threshold is read off a strided sample of the row, every entry at or above it is
gathered (``flatnonzero``), and the few candidates are sorted; a row whose sample
threshold let fewer than K candidates through is redone with its exact K-th value, so
the result never depends on the sample.

Driver (:func:`search_topk`): rows (users) are processed in blocks, items in chunks that
keep the kernel's temporaries in cache; blocks run on a thread pool (numpy and BLAS
release the GIL), so both cores of a 2-core machine work. Python loops only run over
blocks, item chunks and bit planes, never over users or items.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from .packing import WORD_BITS

#: Sampling stride of the per-row threshold estimate in :func:`select_topk`.
SAMPLE_STRIDE = 16


# ---------------------------------------------------------------- selection
def _sentinel(dtype: np.dtype, largest: bool):
    """The value written over excluded entries: the worst value of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf if largest else np.inf
    info = np.iinfo(dtype)
    return info.min if largest else info.max


def _clamp_threshold(t: np.ndarray, dtype, largest: bool) -> np.ndarray:
    """Move thresholds strictly past the sentinel, so that excluded entries never pass."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        edge = np.nextafter(dtype.type(_sentinel(dtype, largest)), dtype.type(0))
    else:
        edge = _sentinel(dtype, largest) + (1 if largest else -1)
    return np.maximum(t, edge) if largest else np.minimum(t, edge)


def _exact_thresholds(S: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """The K-th best value of every row of ``S`` (``k <= S.shape[1]``)."""
    n = S.shape[1]
    if largest:
        return np.partition(S, n - k, axis=1)[:, n - k]
    return np.partition(S, k - 1, axis=1)[:, k - 1]


def _sample_thresholds(S: np.ndarray, k: int, largest: bool, stride: int) -> np.ndarray:
    """A per-row threshold that about ``k`` + margin entries of the row pass (from every ``stride``-th entry)."""
    sample = np.ascontiguousarray(S[:, ::stride])
    R, ns = sample.shape
    expect = k / stride
    kk = min(ns, int(math.ceil(expect + 2.0 * math.sqrt(expect) + 2)))
    if sample.dtype == np.uint8 and not largest:
        # small-range integer costs: per-row histogram of the sample, then the kk-th smallest
        key = sample + (np.arange(R, dtype=np.int64) * 256)[:, None]
        hist = np.bincount(key.reshape(-1), minlength=R * 256).reshape(R, 256)
        return np.argmax(np.cumsum(hist, axis=1) >= kk, axis=1).astype(np.uint8)
    return _exact_thresholds(sample, kk, largest)


def _sortable_bits(vals: np.ndarray, largest: bool) -> tuple[np.ndarray, int]:
    """Map values to non-negative int64 ranks-preserving keys (smaller key = better) and their bit width."""
    if vals.dtype.kind == "f":
        v = vals.astype(np.float32) + np.float32(0.0)  # -0.0 -> +0.0; exact: float kernels produce float32 (or int-valued float64 < 2^53)
        if vals.dtype != np.float32 and not np.array_equal(v.astype(vals.dtype), vals):
            return None, 0
        u = v.view(np.uint32).astype(np.int64)
        # IEEE order trick: flip all bits of negatives, the sign bit of non-negatives -> ascending uint32
        u = np.where(u & 0x80000000, u ^ 0xFFFFFFFF, u | 0x80000000)
        if largest:
            u = 0xFFFFFFFF - u
        return u, 32
    v = vals.astype(np.int64)
    if largest:
        v = -v
    if len(v) == 0:
        return v, 1
    v = v - v.min()
    return v, max(1, int(v.max()).bit_length())


def _sort_candidates(rows, cols, vals, R: int, N: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Candidates sorted by (row, value best first, column); returns their ``(cols, vals)``.

    One int64 ``np.sort`` of packed ``(row, value rank, column)`` keys when they fit in 63
    bits (always for integer kernels and float32 scores at the block sizes used here),
    else a ``lexsort``.
    """
    key, vbits = _sortable_bits(vals, largest)
    rbits, cbits = max(1, (R - 1).bit_length()), max(1, (N - 1).bit_length())
    if key is not None and rbits + vbits + cbits <= 63:
        packed = np.sort((((rows << vbits) | key) << cbits) | cols)
        cols_s = packed & ((1 << cbits) - 1)
        rows_s = packed >> (vbits + cbits)
        return cols_s, rows_s
    alt = -vals.astype(np.float64) if largest else vals
    order = np.lexsort((cols, alt, rows))
    return cols[order], rows[order]


def select_topk(S: np.ndarray, k: int, largest: bool, sample_stride: int = SAMPLE_STRIDE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of every row of ``S``, best first, ties to the lower column.

    ``S`` is a C-contiguous ``(R, N)`` array of scores (``largest=True``) or costs
    (``largest=False``); entries equal to the dtype's worst value (``-inf`` / ``+inf``,
    the integer min / max) are excluded. Returns ``(cols, vals)``, each ``(R, k)``; a
    row with fewer than ``k`` eligible entries is padded with column ``-1`` and the
    sentinel value.
    """
    R, N = S.shape
    sentinel = _sentinel(S.dtype, largest)
    if R == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), S.dtype)
    if not S.flags.c_contiguous:
        S = np.ascontiguousarray(S)
    k_eff = min(k, N)
    if N >= 4 * sample_stride * max(k_eff, 8):
        t = _sample_thresholds(S, k_eff, largest, sample_stride)
    else:
        t = _exact_thresholds(S, k_eff, largest)
    t = _clamp_threshold(t, S.dtype, largest)
    mask = (S >= t[:, None]) if largest else (S <= t[:, None])
    flat = np.flatnonzero(mask)
    counts = np.bincount(flat // N, minlength=R)
    short = np.flatnonzero(counts < k_eff)
    if len(short):
        # redo these rows with their exact K-th value (rare: the sample under-estimated them,
        # or the row has fewer than k eligible entries)
        keep = ~np.isin(flat // N, short)
        sub = S[short]
        ts = _clamp_threshold(_exact_thresholds(sub, k_eff, largest), S.dtype, largest)
        sub_mask = (sub >= ts[:, None]) if largest else (sub <= ts[:, None])
        sub_rows, sub_cols = np.divmod(np.flatnonzero(sub_mask), N)
        flat = np.concatenate([flat[keep], short[sub_rows] * N + sub_cols])
        counts[short] = np.bincount(sub_rows, minlength=len(short))
    if len(flat) == 0:  # no eligible entry in any row
        return np.full((R, k), -1, np.int64), np.full((R, k), sentinel, S.dtype)
    rows, cols = np.divmod(flat, N)
    cols, rows = _sort_candidates(rows, cols, S.reshape(-1)[flat], R, N, largest)
    starts = np.zeros(R, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    valid = np.arange(k)[None, :] < counts[:, None]
    pos = np.where(valid, starts[:, None] + np.arange(k), 0)
    out_cols = np.where(valid, cols[pos], -1)
    out_vals = np.where(valid, S[np.arange(R)[:, None], np.maximum(out_cols, 0)], sentinel).astype(S.dtype, copy=False)
    return out_cols, out_vals


# ---------------------------------------------------------------- exclusion
def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sub-CSR ``(indptr, indices)`` of the given rows (vectorised gather)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(indptr, dtype=np.int64)[rows]
    lens = np.asarray(indptr, dtype=np.int64)[rows + 1] - starts
    sub_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=sub_ptr[1:])
    gather = np.repeat(starts - sub_ptr[:-1], lens) + np.arange(sub_ptr[-1])
    return sub_ptr, np.asarray(indices)[gather]


def _mask_excluded(S: np.ndarray, indptr: np.ndarray, indices: np.ndarray, lo: int, hi: int, sentinel) -> None:
    """Write ``sentinel`` over the excluded items of rows ``lo .. hi-1`` (a CSR over the queries)."""
    a, b = int(indptr[lo]), int(indptr[hi])
    if a == b:
        return
    lens = np.diff(np.asarray(indptr[lo:hi + 1], dtype=np.int64))
    rows = np.repeat(np.arange(hi - lo), lens)
    cols = np.asarray(indices[a:b], dtype=np.int64)
    S[rows, cols] = sentinel


# ---------------------------------------------------------------- kernels
def _scratch(tmp: dict, name: str, rows: int, cols: int, dtype) -> np.ndarray:
    """A reusable ``(rows, cols)`` scratch array from the per-thread dict ``tmp`` (grown on demand)."""
    buf = tmp.get(name)
    if buf is None or buf.shape[0] < rows or buf.shape[1] < cols:
        buf = tmp[name] = np.empty((max(rows, 0 if buf is None else buf.shape[0]),
                                    max(cols, 0 if buf is None else buf.shape[1])), dtype)
    return buf[:rows, :cols]


class PlaneKernel:
    """Integer-only b-bit scores by XOR + popcount over packed bit planes (``b = 1``: Hamming).

    ``items`` are ``(b, N, W)`` uint64 planes (:func:`hqgnn.index.packing.pack_codes`).
    :meth:`fill` writes the cost ``C = sum_{j,l} 2^(j+l) popcount(u_j XOR i_l)`` (lower is
    better); :meth:`to_scores` turns costs into ``<k_u, k_i> = d m^2 - 2 C``.
    """

    largest = False
    row_block = 64       # users per block
    item_chunk = 4096    # items per chunk: (64 x 4096) uint64 temporaries stay in L2/L3
    name = "bitplane"

    def __init__(self, items: np.ndarray, bits: int, dim: int):
        items = np.ascontiguousarray(items, dtype=np.uint64)
        if items.ndim != 3 or items.shape[0] != bits:
            raise ValueError(f"expected ({bits}, n, W) bit planes, got shape {items.shape}")
        self.items, self.bits, self.dim = items, bits, dim
        self.n_items, self.words = items.shape[1], items.shape[2]
        m = 2**bits - 1
        self.max_cost = dim * m * m
        self.dtype = np.dtype(np.uint8 if self.max_cost < 255 else np.uint16 if self.max_cost < 65535 else np.int32)
        self.max_score = dim * m * m
        self.score_dtype = np.dtype(np.int32)

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """Queries as ``(b, R, W)`` uint64 planes, contiguous."""
        return np.ascontiguousarray(queries, dtype=np.uint64)

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[1]

    def fill(self, q: np.ndarray, lo: int, hi: int, out: np.ndarray, ilo: int, ihi: int, tmp: dict) -> None:
        """Costs of queries ``lo .. hi-1`` against items ``ilo .. ihi-1`` into ``out`` (R x C)."""
        R, C = hi - lo, ihi - ilo
        x = _scratch(tmp, "xor", R, C, np.uint64)
        first = True
        single = self.bits == 1 and self.words == 1 and self.dtype == np.uint8
        if not single:
            pc = _scratch(tmp, "pc", R, C, self.dtype)
        for j in range(self.bits):          # loops over bit planes and words only
            for l in range(self.bits):
                shift = j + l
                for w in range(self.words):
                    np.bitwise_xor(q[j, lo:hi, w, None], self.items[l, None, ilo:ihi, w], out=x)
                    if single:
                        np.bitwise_count(x, out=out)
                        continue
                    if first:
                        np.bitwise_count(x, out=out, casting="unsafe")
                        if shift:
                            np.left_shift(out, shift, out=out)
                        first = False
                    else:
                        np.bitwise_count(x, out=pc, casting="unsafe")
                        if shift:
                            np.left_shift(pc, shift, out=pc)
                        np.add(out, pc, out=out)

    def to_scores(self, costs: np.ndarray) -> np.ndarray:
        """``<k_u, k_i> = d m^2 - 2 C`` as int32 (sentinel costs map to the int32 minimum)."""
        out = self.max_score - 2 * costs.astype(np.int64)
        out[costs == _sentinel(costs.dtype, False)] = np.iinfo(np.int32).min
        return out.astype(np.int32)


class GemmKernel:
    """Float32 scores by one BLAS sgemm per block of queries: the :class:`FloatIndex` kernel.

    ``items`` is an ``(N, d)`` float array (embeddings); scores are the float32 inner
    products, larger is better.
    """

    largest = True
    row_block = 256
    item_chunk = 1 << 30    # one sgemm per row block: small products are inefficient
    name = "sgemm"

    def __init__(self, items: np.ndarray):
        self.dtype = self.score_dtype = np.dtype(np.float32)
        self.items_t = np.ascontiguousarray(np.asarray(items, dtype=np.float32).T)  # (d, N)
        self.n_items = self.items_t.shape[1]

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(queries, dtype=np.float32)

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[0]

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        np.matmul(q[lo:hi], self.items_t[:, ilo:ihi], out=out)

    def to_scores(self, vals: np.ndarray) -> np.ndarray:
        return vals


class CodeGemmKernel:
    """Exact ``<k_u, k_i>`` of b-bit codes by a float matrix product of the odd levels.

    Items stay as ``(N, d)`` uint8 codes (``d`` bytes per item, for any ``b <= 8``); each
    chunk of items is turned into float levels ``k = 2c - m`` just before its sgemm
    (amortised over a block of queries). Every product and partial sum is an integer
    of magnitude ``<= d m^2``; float32 holds those exactly below 2^24, so the result
    equals the integer inner product bit for bit (float64, exact below 2^53, beyond).
    Honest label: exact integer arithmetic executed by the float unit, not integer-only.
    """

    largest = True
    row_block = 256
    item_chunk = 8192
    name = "gemm"

    def __init__(self, codes: np.ndarray, bits: int):
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self.n_items, self.dim = self.codes.shape
        self.bits, self.top = bits, 2**bits - 1
        exact32 = self.dim * self.top**2 < 2**24
        self.dtype = np.dtype(np.float32 if exact32 else np.float64)
        self.score_dtype = np.dtype(np.int32)

    def levels(self, codes: np.ndarray) -> np.ndarray:
        out = np.asarray(codes).astype(self.dtype)
        out *= 2
        out -= self.top
        return out

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """Queries as float levels ``(Q, d)`` from unsigned codes."""
        return np.ascontiguousarray(self.levels(queries))

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[0]

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        key = ("levels", ilo, ihi)
        if tmp.get("chunk_key") != key:
            lv = _scratch(tmp, "levels", ihi - ilo, self.dim, self.dtype)
            np.copyto(lv, self.codes[ilo:ihi], casting="unsafe")
            lv *= 2
            lv -= self.top
            tmp["chunk_key"] = key
        np.matmul(q[lo:hi], tmp["levels"][: ihi - ilo, : self.dim].T, out=out)

    def to_scores(self, vals: np.ndarray) -> np.ndarray:
        out = np.full(vals.shape, np.iinfo(np.int32).min, np.int32)
        ok = np.isfinite(vals)
        out[ok] = vals[ok]
        return out


class IntMatmulKernel:
    """Integer-only dense ``<k_u, k_i>``: ``torch.mm`` on int32 levels (exact while ``d m^2 < 2^31``).

    No float anywhere; on CPUs without int8 dot-product instructions torch's integer
    matrix product is slower than sgemm, so this is not the default.
    """

    largest = True
    row_block = 256
    item_chunk = 1 << 30
    name = "int32-mm"

    def __init__(self, codes: np.ndarray, bits: int):
        import torch

        self._torch = torch
        levels = 2 * np.asarray(codes, dtype=np.int32) - (2**bits - 1)
        self.items_t = torch.from_numpy(np.ascontiguousarray(levels.T))  # (d, N)
        self.n_items = self.items_t.shape[1]
        self.bits = bits
        self.dtype = self.score_dtype = np.dtype(np.int32)

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(2 * np.asarray(queries, dtype=np.int32) - (2**self.bits - 1))

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[0]

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        t = self._torch
        t.mm(t.from_numpy(q[lo:hi]), self.items_t[:, ilo:ihi], out=t.from_numpy(out))

    def to_scores(self, vals: np.ndarray) -> np.ndarray:
        return vals


# ---------------------------------------------------------------- driver
def default_threads() -> int:
    """Worker threads of the search pool: the CPUs this process may use (at most 16)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(16, n))


def search_topk(kernel, queries: np.ndarray, k: int, exclude: Optional[tuple] = None,
                threads: Optional[int] = None, row_block: Optional[int] = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` items of every query under ``kernel``; seen items excluded.

    ``queries`` are in the kernel's query format (:meth:`prepare` is applied);
    ``exclude`` is ``(indptr, indices)``, a CSR with one row per query listing item
    indices that must not be returned. Returns ``(items, scores)``, each ``(Q, k)``:
    item indices (int64, best first, ties to the lower index; ``-1`` pads rows with
    fewer than ``k`` eligible items) and the kernel's scores (int32 ``<k_u, k_i>`` for
    codes, float32 for float embeddings; the int32 minimum / ``-inf`` on padding).
    """
    q = kernel.prepare(queries)
    nq, n_items = kernel.n_queries(q), kernel.n_items
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} out of range 1..{n_items}")
    rb = row_block or kernel.row_block
    chunk = min(kernel.item_chunk, n_items)
    sentinel = _sentinel(kernel.dtype, kernel.largest)
    if exclude is not None:
        indptr, indices = np.asarray(exclude[0], dtype=np.int64), np.asarray(exclude[1], dtype=np.int64)
        if len(indptr) != nq + 1:
            raise ValueError(f"exclusion CSR has {len(indptr) - 1} rows for {nq} queries")
    items_out = np.empty((nq, k), np.int64)
    scores_out = None
    local = threading.local()
    blocks = [(lo, min(nq, lo + rb)) for lo in range(0, nq, rb)]

    def run(block):
        lo, hi = block
        tmp = getattr(local, "tmp", None)
        if tmp is None:
            tmp = local.tmp = {"S": np.empty(rb * n_items, kernel.dtype)}
        S = tmp["S"][: (hi - lo) * n_items].reshape(hi - lo, n_items)
        for ilo in range(0, n_items, chunk):  # loop over item chunks
            ihi = min(n_items, ilo + chunk)
            kernel.fill(q, lo, hi, S[:, ilo:ihi], ilo, ihi, tmp)
        if exclude is not None:
            _mask_excluded(S, indptr, indices, lo, hi, sentinel)
        cols, vals = select_topk(S, k, kernel.largest)
        return lo, hi, cols, kernel.to_scores(vals)

    n_threads = max(1, min(threads or default_threads(), len(blocks)))
    if n_threads == 1:
        results = map(run, blocks)
    else:
        pool = ThreadPoolExecutor(n_threads)
        results = pool.map(run, blocks)
    try:
        for lo, hi, cols, scores in results:
            if scores_out is None:
                scores_out = np.empty((nq, k), scores.dtype)
            items_out[lo:hi] = cols
            scores_out[lo:hi] = scores
    finally:
        if n_threads > 1:
            pool.shutdown()
    if scores_out is None:
        scores_out = np.empty((0, k), kernel.score_dtype)
    return items_out, scores_out


def all_scores(kernel, queries: np.ndarray) -> np.ndarray:
    """The full ``(Q, N)`` score matrix of a kernel (int32 ``<k_u, k_i>`` or float32): tests, small sizes."""
    q = kernel.prepare(queries)
    nq, n = kernel.n_queries(q), kernel.n_items
    out = np.empty((nq, n), kernel.score_dtype)
    tmp: dict = {}
    rb, chunk = kernel.row_block, min(kernel.item_chunk, max(n, 1))
    buf = np.empty((rb, n), kernel.dtype)
    for lo in range(0, nq, rb):  # loop over blocks
        hi = min(nq, lo + rb)
        for ilo in range(0, n, chunk):
            ihi = min(n, ilo + chunk)
            kernel.fill(q, lo, hi, buf[: hi - lo, ilo:ihi], ilo, ihi, tmp)
        out[lo:hi] = kernel.to_scores(buf[: hi - lo])
    return out


def brute_force_scores(user_levels: np.ndarray, item_levels: np.ndarray) -> np.ndarray:
    """Reference ``<k_u, k_i>`` for every pair with int64 arithmetic (tests, small inputs only)."""
    return np.asarray(user_levels, np.int64) @ np.asarray(item_levels, np.int64).T


def reference_topk(scores: np.ndarray, k: int, exclude: Optional[Sequence] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of a dense score matrix by a full stable sort (tests): ties to the lower index."""
    S = np.asarray(scores, dtype=np.float64).copy()
    if exclude is not None:
        indptr, indices = exclude
        rows = np.repeat(np.arange(S.shape[0]), np.diff(indptr))
        S[rows, np.asarray(indices, np.int64)] = -np.inf
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(S, order, axis=1)
    order = np.where(np.isfinite(vals), order, -1)
    return order, vals
