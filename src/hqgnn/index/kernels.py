"""Exact scoring kernels and the exact top-K search driver (quantized codes and float).

Scores. For b-bit codes with odd levels ``k`` (``m = 2^b - 1``, ``d`` dimensions), the
score of a (user, item) pair is ``(s_u s_i / 4) <k_u, k_i>``; the code kernels return
the *integer* ``<k_u, k_i>`` (int32), the float kernel the float32 inner product.

* :class:`PlaneKernel` -- bit planes, XOR + popcount: integer-only. Writing
  ``k = sum_j 2^j s_j`` with ``s_j = 2 c^(j) - 1`` in {-1, +1} (``c^(j)``: bit ``j`` of the code),

      <k_u, k_i> = d m^2 - 2 C,   C = sum_{j,l} 2^(j+l) popcount(u_j XOR i_l),

  so a user's items rank by the integer cost ``C`` (lower first). For ``b = 1`` this is
  ``d - 2 Hamming(u, i)``: one XOR and one popcount per 64 dimensions
  (``np.bitwise_count`` on uint64 words); ``b^2`` of them for ``b`` bits. Zero padding
  adds nothing.
* :class:`CodeGemmKernel` -- BLAS sgemm of the levels ``k`` (items kept as uint8 codes,
  widened to float a chunk at a time). Every product and partial sum is an integer of
  magnitude ``<= d m^2``; float32 represents those exactly below 2^24, so the result is
  the integer inner product bit for bit (float64 beyond: b = 8 with d > 258). Honest
  label: *exact integer arithmetic executed by the float unit*, not integer-only.
* :class:`IntMatmulKernel` -- ``torch.mm`` on int32 levels: integer-only (no float at
  all), exact while ``d m^2 < 2^31``; slower than sgemm on CPUs without int8 dot-product
  instructions, kept as the honest integer GEMM.
* :class:`GemmKernel` -- float32 embeddings, sgemm: the kernel of ``FloatIndex``.

Driver (:func:`search_topk`): queries run in blocks on a thread pool (numpy ufuncs and
BLAS release the GIL; each worker's BLAS is held to one thread, so the pool owns the
cores). Per block: (1) a per-query threshold from a 1-in-16 sample of the items, seen
items masked; (2) the items are scored chunk by chunk (cache-sized), seen items get the
sentinel, and only entries at or past the threshold are kept (``flatnonzero``); (3) the
few survivors are ranked by one sort of packed (query, score, item) keys -- best first,
ties to the lower item index; (4) a query that kept fewer than ``k`` survivors (rare) is
rescored in full and selected exactly, so the result never depends on the sample.
Python loops run over blocks, item chunks and bit planes only, never users or items.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from . import compiled as _compiled
from .select import (SAMPLE_STRIDE, clamp_threshold, csr_rows, excluded_pairs, passing,  # noqa: F401
                     rank_candidates, sample_thresholds, select_topk, sentinel)

#: Upper bound of one block's (rows x items) score matrix, per worker thread.
SCORE_BUFFER_BYTES = 256 << 20


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
    sample_stride = 16

    def __init__(self, items: np.ndarray, bits: int, dim: int, compiled: bool = True):
        items = np.ascontiguousarray(items, dtype=np.uint64)
        if items.ndim != 3 or items.shape[0] != bits:
            raise ValueError(f"expected ({bits}, n, W) bit planes, got shape {items.shape}")
        self.items, self.bits, self.dim = items, bits, dim
        # the compiled fused loop (hqgnn.index.compiled) when numba loads; numpy ufuncs otherwise
        self.compiled = compiled and _compiled.available()
        self._fused = None
        self.n_items, self.words = items.shape[1], items.shape[2]
        m = 2**bits - 1
        self.max_cost = dim * m * m
        self.dtype = np.dtype(np.uint8 if self.max_cost < 255 else np.uint16 if self.max_cost < 65535 else np.int32)
        self.max_score = dim * m * m
        self.score_dtype = np.dtype(np.int32)

    @property
    def name(self) -> str:
        return "bitplane" if self.compiled else "bitplane-numpy"

    def fused(self):
        """The compiled fused search over these items (built on first use), or None."""
        if not self.compiled:
            return None
        if self._fused is None:
            self._fused = _compiled.FusedPlaneSearch(self.items, self.bits, self.dim)
        return self._fused

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """Queries as ``(b, R, W)`` uint64 planes, contiguous."""
        return np.ascontiguousarray(queries, dtype=np.uint64)

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[1]

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The prepared queries of the given rows."""
        return np.ascontiguousarray(q[:, rows])

    def subset(self, idx: np.ndarray) -> "PlaneKernel":
        """The same kernel over the items ``idx`` (for threshold sampling)."""
        return PlaneKernel(self.items[:, idx], self.bits, self.dim, compiled=False)

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
        out[costs == sentinel(costs.dtype, False)] = np.iinfo(np.int32).min
        return out.astype(np.int32)


class GemmKernel:
    """Float32 scores by one BLAS sgemm per block of queries: the :class:`FloatIndex` kernel.

    ``items`` is an ``(N, d)`` float array (embeddings); scores are the float32 inner
    products, larger is better.
    """

    largest = True
    row_block = 256
    item_chunk = 8192    # (256 x 8192) float32 scores per sgemm: large enough for BLAS, cache-friendly
    name = "sgemm"

    def __init__(self, items: np.ndarray):
        self.dtype = self.score_dtype = np.dtype(np.float32)
        self.items_t = np.ascontiguousarray(np.asarray(items, dtype=np.float32).T)  # (d, N)
        self.n_items = self.items_t.shape[1]

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(queries, dtype=np.float32)

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[0]

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return q[rows]

    def subset(self, idx: np.ndarray) -> "GemmKernel":
        return GemmKernel(self.items_t[:, idx].T)

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

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return q[rows]

    def subset(self, idx: np.ndarray) -> "CodeGemmKernel":
        return CodeGemmKernel(self.codes[idx], self.bits)

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        key = (id(self), ilo, ihi)
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

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return q[rows]

    def subset(self, idx: np.ndarray) -> "IntMatmulKernel":
        sub = IntMatmulKernel.__new__(IntMatmulKernel)
        sub.__dict__.update(self.__dict__)
        sub.items_t = self.items_t[:, self._torch.from_numpy(np.asarray(idx))].contiguous()
        sub.n_items = sub.items_t.shape[1]
        return sub

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        t = self._torch
        t.mm(t.from_numpy(q[lo:hi]), self.items_t[:, ilo:ihi], out=t.from_numpy(out))

    def to_scores(self, vals: np.ndarray) -> np.ndarray:
        return vals


class _Int8ScoreKernel:
    """What the two int8 kernels share: int32 scores (larger is better), query rows, the bits check."""

    largest = True
    row_block = 256
    item_chunk = 8192
    dtype = score_dtype = np.dtype(np.int32)

    @staticmethod
    def _check_bits(bits: int) -> None:
        if not 1 <= bits <= 8:
            raise ValueError(f"int8 products hold b <= 8 bits, got {bits}")

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[0]

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return q[rows]

    def to_scores(self, vals: np.ndarray) -> np.ndarray:
        return vals


class Int8MatmulKernel(_Int8ScoreKernel):
    """Integer-only ``<k_u, k_i>`` by int8 x int8 -> int32 matrix products (``torch._int_mm``).

    The odd levels ``k = 2c - (2^b - 1)`` fit int8 for ``b <= 7`` (``|k| <= 127``). At
    8 bits they span -255 .. 255, so the kernel multiplies ``s = c - 128`` (int8) instead:
    ``k = 2s + 1`` and ``<k_u, k_i> = 4 <s_u, s_i> + 2 sum(s_u) + 2 sum(s_i) + d``, the
    last three terms a per-user and a per-item integer added to the product. Every
    product and sum is exact in int32 (``d m^2 < 2^31``). On CPUs with int8 multiply-add
    instructions (AVX2 ``vpmaddubsw``, AVX-512 VNNI) the int8 GEMM does several times the
    multiply-adds per instruction of float32 sgemm.
    """

    name = "int8-mm"

    def __init__(self, codes: np.ndarray, bits: int):
        import torch

        self._check_bits(bits)
        self._torch = torch
        self.bits = bits
        self.shifted = bits == 8
        levels = self._int8(codes)
        # a fresh copy, not ascontiguousarray: for d = 1 numpy keeps the transpose's strides
        # (1, 1), which it calls contiguous but torch._int_mm then misreads
        self.items_t = torch.from_numpy(levels.T.copy())  # (d, N) int8
        self.dim, self.n_items = self.items_t.shape
        self.item_bias = 2 * levels.sum(axis=1, dtype=np.int32) if self.shifted else None

    def _int8(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int16)
        if self.shifted:
            return np.ascontiguousarray((codes - 128).astype(np.int8))
        return np.ascontiguousarray((2 * codes - (2**self.bits - 1)).astype(np.int8))

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return self._int8(queries)

    def subset(self, idx: np.ndarray) -> "Int8MatmulKernel":
        sub = Int8MatmulKernel.__new__(Int8MatmulKernel)
        sub.__dict__.update(self.__dict__)
        idx = np.asarray(idx)
        sub.items_t = self.items_t[:, self._torch.from_numpy(idx)].contiguous()
        sub.n_items = sub.items_t.shape[1]
        if self.shifted:
            sub.item_bias = self.item_bias[idx]
        return sub

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        t = self._torch
        res = t._int_mm(t.from_numpy(q[lo:hi]), self.items_t[:, ilo:ihi]).numpy()
        if not self.shifted:
            out[...] = res
            return
        np.multiply(res, 4, out=out)
        out += self.item_bias[ilo:ihi]
        out += (2 * q[lo:hi].sum(axis=1, dtype=np.int32) + self.dim)[:, None]


class Int8DotKernel(_Int8ScoreKernel):
    """:class:`Int8MatmulKernel`'s integer scores, searched by the compiled int8 dot-product
    loop (:class:`hqgnn.index.compiled.FusedDotSearch`: AVX-512 VNNI, eight queries per pass
    over the items, the selection fused). Only where :func:`available` says so.

    Queries stay unsigned codes (what the fused search reads), and no int8 item table is
    held: the matrix-product form that :func:`all_scores` and an unfused search use is
    built on first use only."""

    name = "int8-dot"

    @staticmethod
    def available() -> bool:
        return _compiled.vnni_available()

    def __init__(self, codes: np.ndarray, bits: int):
        self._check_bits(bits)
        self.bits = bits
        self._codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self.n_items, self.dim = self._codes.shape
        self._fused = None
        self._matmul = None

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(queries, dtype=np.uint8)

    def _products(self) -> Int8MatmulKernel:
        if self._matmul is None:
            self._matmul = Int8MatmulKernel(self._codes, self.bits)
        return self._matmul

    def subset(self, idx: np.ndarray) -> Int8MatmulKernel:
        return self._products().subset(idx)

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        mm = self._products()
        mm.fill(mm.prepare(q[lo:hi]), 0, hi - lo, out, ilo, ihi, tmp)

    def fused(self):
        if self._fused is None:
            self._fused = _compiled.FusedDotSearch(self._codes, self.bits)
        return self._fused


# ---------------------------------------------------------------- driver
def default_threads() -> int:
    """Worker threads of the search pool: the CPUs this process may use (at most 16)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(16, n))


@functools.lru_cache(maxsize=1)
def _openblas_set_threads_local():
    """``openblas_set_num_threads_local`` of the OpenBLAS that numpy uses, or None.

    It sets the BLAS thread count of the calling thread only (OpenBLAS >= 0.3.27): the
    search pool already runs one block per core, so each worker's sgemm must not spawn
    (and spin) more BLAS threads on the same cores.
    """
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
def blas_threads(n: int):
    """Limit BLAS to ``n`` threads in the calling thread for the duration (no-op when unsupported)."""
    fn = _openblas_set_threads_local()
    previous = fn(n) if fn is not None else None
    try:
        yield
    finally:
        if fn is not None and previous is not None and previous > 0:
            fn(previous)


def _worker_init() -> None:
    fn = _openblas_set_threads_local()
    if fn is not None:
        fn(1)


def _flat_scratch(tmp: dict, name: str, rows: int, cols: int, dtype) -> np.ndarray:
    """A C-contiguous ``(rows, cols)`` scratch array carved from a reusable flat buffer."""
    need = rows * cols
    buf = tmp.get(name)
    if buf is None or buf.size < need or buf.dtype != dtype:
        buf = tmp[name] = np.empty(max(need, 1), dtype)
    return buf[:need].reshape(rows, cols)


def _fill_rows(kernel, q, lo: int, hi: int, out: np.ndarray, tmp: dict) -> None:
    """Scores of queries ``lo .. hi-1`` against every item of ``kernel`` into ``out``, chunk by chunk."""
    n, chunk = kernel.n_items, min(kernel.item_chunk, max(kernel.n_items, 1))
    for ilo in range(0, n, chunk):  # loop over item chunks
        ihi = min(n, ilo + chunk)
        kernel.fill(q, lo, hi, out[:, ilo:ihi], ilo, ihi, tmp)


class _Search:
    """One exact top-k search: a kernel, prepared queries, an exclusion CSR over the queries."""

    def __init__(self, kernel, q, k: int, exclude, stride: int = SAMPLE_STRIDE):
        self.kernel, self.q, self.k = kernel, q, k
        self.n = kernel.n_items
        self.largest, self.dtype = kernel.largest, np.dtype(kernel.dtype)
        self.fill = sentinel(self.dtype, self.largest)
        self.exclude = exclude
        self.stride = stride
        stride = self.stride = getattr(kernel, "sample_stride", stride)
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


def search_topk(kernel, queries: np.ndarray, k: int, exclude: Optional[tuple] = None,
                threads: Optional[int] = None, row_block: Optional[int] = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` items of every query under ``kernel``; excluded items never returned.

    ``queries`` are in the kernel's input format (:meth:`prepare` is applied);
    ``exclude`` is ``(indptr, indices)``, a CSR with one row per query listing item
    indices that must not be returned. Returns ``(items, scores)``, each ``(Q, k)``:
    item indices (int64, best first, ties to the lower index; ``-1`` pads rows with
    fewer than ``k`` eligible items) and the kernel's scores (int32 ``<k_u, k_i>`` for
    codes, float32 for float embeddings; the int32 minimum / ``-inf`` on padding).

    Queries run in blocks of ``row_block`` on ``threads`` worker threads. Per block, a
    threshold per query is read off a 1-in-16 sample of the items, the items are then
    scored chunk by chunk (cache-sized) keeping only entries at or past the threshold,
    and the survivors are ranked; a query left with fewer than ``k`` survivors is
    rescored in full (see :mod:`hqgnn.index.select`).
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
    fused = getattr(kernel, "fused", None)
    fused = fused() if fused is not None else None
    if fused is not None:  # scoring and selection in one compiled loop per query
        return fused.search(q, k, exclude, n_workers)
    search = _Search(kernel, q, k, exclude)
    rb = row_block
    if rb is None:
        rb = kernel.row_block
        if search.sample is None:  # whole blocks of scores are materialised: bound their size
            rb = max(8, min(rb, SCORE_BUFFER_BYTES // max(1, n_items * kernel.dtype.itemsize)))
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
        with ThreadPoolExecutor(n_threads, initializer=_worker_init) as pool:
            for (lo, hi), cols, scores in pool.map(run, blocks):
                items_out[lo:hi], scores_out[lo:hi] = cols, scores
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
