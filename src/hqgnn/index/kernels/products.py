"""The product kernels: exact ``<k_u, k_i>`` of b-bit codes by matrix / dot products, and float32 sgemm.

* :class:`CodeGemmKernel` -- BLAS sgemm of the levels ``k`` (items kept as uint8 codes,
  widened to float a chunk at a time). Every product and partial sum is an integer of
  magnitude ``<= d m^2``; float32 represents those exactly below 2^24, so the result is
  the integer inner product bit for bit (float64 beyond: b = 8 with d > 258). Honest
  label: *exact integer arithmetic executed by the float unit*, not integer-only.
* :class:`IntMatmulKernel` -- ``torch.mm`` on int32 levels: integer-only, exact while
  ``d m^2 < 2^31``; slower than sgemm on CPUs without int8 dot-product instructions.
* :class:`Int8MatmulKernel` -- int8 x int8 -> int32 matrix products (``torch._int_mm``).
* :class:`Int8DotKernel` -- the same integers, searched by the compiled AVX-512 VNNI loop
  (:mod:`hqgnn.index.kernels.compiled_dot`).
* :class:`Int16DotKernel` -- the same integers, searched by the compiled AVX2 int16
  multiply-add loop (:mod:`hqgnn.index.kernels.compiled_madd`): the small-``d`` kernel.
* :class:`GemmKernel` -- float32 embeddings, sgemm: the kernel of ``FloatIndex``.

All return larger-is-better values; the code kernels' scores are int32 ``<k_u, k_i>``
(``m = 2^b - 1``, levels ``k = 2c - m`` of the unsigned codes ``c``). torch is imported
only by the kernels that use it, when built.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import compiled_dot, compiled_madd
from .protocol import FusedSearch, KernelBase, scratch


class GemmKernel(KernelBase):
    """Float32 scores by one BLAS sgemm per block of queries: the :class:`FloatIndex` kernel.

    ``items``: ``(N, d)`` float embeddings; queries ``(Q, d)`` float32. Scores are the float32
    inner products, larger is better.
    """

    item_chunk = 8192    # (256 x 8192) float32 scores per sgemm: large enough for BLAS, cache-friendly
    name = "sgemm"

    def __init__(self, items: np.ndarray):
        self.dtype = self.score_dtype = np.dtype(np.float32)
        self.items_t = np.ascontiguousarray(np.asarray(items, dtype=np.float32).T)  # (d, N)
        self.n_items = self.items_t.shape[1]

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(queries, dtype=np.float32)

    def subset(self, idx: np.ndarray) -> "GemmKernel":
        return GemmKernel(self.items_t[:, idx].T)

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        np.matmul(q[lo:hi], self.items_t[:, ilo:ihi], out=out)


class CodeGemmKernel(KernelBase):
    """Exact ``<k_u, k_i>`` of b-bit codes by a float matrix product of the odd levels.

    ``codes``: ``(N, d)`` uint8 unsigned codes (``d`` bytes per item, any ``b <= 8``);
    queries ``(Q, d)`` codes too. Each chunk of items is turned into float levels
    ``k = 2c - m`` just before its sgemm (amortised over a block of queries); float32
    holds every partial sum exactly below 2^24 (float64, exact below 2^53, beyond), so
    the int32 scores equal the integer inner products bit for bit.
    """

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

    def subset(self, idx: np.ndarray) -> "CodeGemmKernel":
        return CodeGemmKernel(self.codes[idx], self.bits)

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        key = (id(self), ilo, ihi)
        if tmp.get("chunk_key") != key:
            lv = scratch(tmp, "levels", ihi - ilo, self.dim, self.dtype)
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


class IntMatmulKernel(KernelBase):
    """Integer-only dense ``<k_u, k_i>``: ``torch.mm`` on int32 levels (exact while ``d m^2 < 2^31``).

    ``codes``: ``(N, d)`` unsigned codes; queries ``(Q, d)`` codes. No float anywhere; on
    CPUs without int8 dot-product instructions torch's integer matrix product is slower
    than sgemm, so this is not the default.
    """

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

    def subset(self, idx: np.ndarray) -> "IntMatmulKernel":
        sub = IntMatmulKernel.__new__(IntMatmulKernel)
        sub.__dict__.update(self.__dict__)
        sub.items_t = self.items_t[:, self._torch.from_numpy(np.asarray(idx))].contiguous()
        sub.n_items = sub.items_t.shape[1]
        return sub

    def fill(self, q, lo, hi, out, ilo, ihi, tmp) -> None:
        t = self._torch
        t.mm(t.from_numpy(q[lo:hi]), self.items_t[:, ilo:ihi], out=t.from_numpy(out))


class _Int8ScoreKernel(KernelBase):
    """What the two int8 kernels share: int32 scores (larger is better), the bits check."""

    dtype = score_dtype = np.dtype(np.int32)

    @staticmethod
    def _check_bits(bits: int) -> None:
        if not 1 <= bits <= 8:
            raise ValueError(f"int8 products hold b <= 8 bits, got {bits}")


class Int8MatmulKernel(_Int8ScoreKernel):
    """Integer-only ``<k_u, k_i>`` by int8 x int8 -> int32 matrix products (``torch._int_mm``).

    ``codes``: ``(N, d)`` unsigned codes, ``b <= 8`` (else ``ValueError``); queries ``(Q, d)``
    codes. The odd levels ``k = 2c - (2^b - 1)`` fit int8 for ``b <= 7`` (``|k| <= 127``).
    At 8 bits they span -255 .. 255, so the kernel multiplies ``s = c - 128`` (int8)
    instead: ``k = 2s + 1`` and ``<k_u, k_i> = 4 <s_u, s_i> + 2 sum(s_u) + 2 sum(s_i) + d``,
    the last three terms a per-user and a per-item integer added to the product. Every
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
    loop (:class:`~hqgnn.index.kernels.compiled_dot.FusedDotSearch`: AVX-512 VNNI, eight
    queries per pass over the items, the selection fused). Only where :meth:`available`.

    ``codes``: ``(N, d)`` unsigned codes, ``b <= 8``; queries stay unsigned codes (what the
    fused search reads), and no int8 item table is held: the matrix-product form that
    :func:`~hqgnn.index.search.all_scores` and an unfused search use is built on first use.
    """

    name = "int8-dot"

    @staticmethod
    def available() -> bool:
        """Whether this CPU (and numba) can run the kernel: AVX-512 VNNI."""
        return compiled_dot.vnni_available()

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

    def fused(self) -> Optional[FusedSearch]:
        if self._fused is None:
            self._fused = compiled_dot.FusedDotSearch(self._codes, self.bits)
        return self._fused


class Int16DotKernel(CodeGemmKernel):
    """Exact ``<k_u, k_i>`` of b-bit codes (``b <= 8``), searched by the compiled int16
    multiply-add loop (:class:`~hqgnn.index.kernels.compiled_madd.FusedMaddSearch`: AVX2
    ``vpmaddwd``, eight queries per pass over the items, the selection fused). Integer-only
    in the fused search; :meth:`fill` (what :func:`~hqgnn.index.search.all_scores` uses) is
    :class:`CodeGemmKernel`'s. Where the fused loop cannot run (no AVX2 or numba, or
    ``d m^2 >= 2^30``) the search is :class:`CodeGemmKernel`'s, exact as well.

    The default on AVX2 CPUs without VNNI from 2 bits up to
    :data:`hqgnn.index.engine.INT16_DOT_MAX_BITS` bits per item (benchmarks/results/small-dims-avx2.md).
    """

    name = "int16-dot"

    @staticmethod
    def available() -> bool:
        """Whether this CPU (and numba) can run the kernel: AVX2."""
        return compiled_madd.madd_available()

    def __init__(self, codes: np.ndarray, bits: int):
        super().__init__(codes, bits)
        self._fused = None

    def subset(self, idx: np.ndarray) -> CodeGemmKernel:
        return CodeGemmKernel(self.codes[idx], self.bits)

    def fused(self) -> Optional[FusedSearch]:
        if not self.available() or self.dim * self.top**2 >= 2**30:  # the unfused sgemm search instead
            return None
        if self._fused is None:
            self._fused = compiled_madd.FusedMaddSearch(2 * self.codes.astype(np.int16) - self.top, self.bits)
        return self._fused
