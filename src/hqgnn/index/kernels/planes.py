"""The bit-plane kernel: integer-only b-bit scores by XOR + popcount over packed planes.

Writing a level ``k = sum_j 2^j s_j`` with ``s_j = 2 c^(j) - 1`` in {-1, +1} (``c^(j)``:
bit ``j`` of the code, ``m = 2^b - 1``, ``d`` dimensions),

    <k_u, k_i> = d m^2 - 2 C,   C = sum_{j,l} 2^(j+l) popcount(u_j XOR i_l),

so a user's items rank by the integer cost ``C`` (lower first). For ``b = 1`` this is
``d - 2 Hamming(u, i)``: one XOR and one popcount per 64 dimensions (``np.bitwise_count``
on uint64 words); ``b^2`` of them for ``b`` bits. Zero padding adds nothing.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..select import sentinel
from . import compiled_planes
from .protocol import FusedSearch, KernelBase, scratch


class PlaneKernel(KernelBase):
    """Integer-only b-bit scores by XOR + popcount over packed bit planes (``b = 1``: Hamming).

    ``items``: ``(b, N, W)`` uint64 planes (:func:`hqgnn.index.packing.pack_codes`); queries
    are ``(b, Q, W)`` planes too. :meth:`fill` writes the cost ``C`` (lower is better, uint8 /
    uint16 / int32 as ``d m^2`` allows); :meth:`to_scores` turns costs into int32
    ``<k_u, k_i> = d m^2 - 2 C``. ``compiled``: search with the fused compiled loop
    (:class:`~hqgnn.index.kernels.compiled_planes.FusedPlaneSearch`) when numba loads,
    else on numpy ufuncs (``"bitplane-numpy"``). Raises ``ValueError`` for planes of
    another shape than ``(bits, N, W)``.
    """

    largest = False
    row_block = 64       # users per block
    item_chunk = 4096    # items per chunk: (64 x 4096) uint64 temporaries stay in L2/L3

    def __init__(self, items: np.ndarray, bits: int, dim: int, compiled: bool = True):
        items = np.ascontiguousarray(items, dtype=np.uint64)
        if items.ndim != 3 or items.shape[0] != bits:
            raise ValueError(f"expected ({bits}, n, W) bit planes, got shape {items.shape}")
        self.items, self.bits, self.dim = items, bits, dim
        self.compiled = compiled and compiled_planes.available()
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

    def fused(self) -> Optional[FusedSearch]:
        """The compiled fused search over these items (built on first use), or None."""
        if not self.compiled:
            return None
        if self._fused is None:
            self._fused = compiled_planes.FusedPlaneSearch(self.items, self.bits, self.dim)
        return self._fused

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """Queries as ``(b, R, W)`` uint64 planes, contiguous."""
        return np.ascontiguousarray(queries, dtype=np.uint64)

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[1]

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(q[:, rows])

    def subset(self, idx: np.ndarray) -> "PlaneKernel":
        return PlaneKernel(self.items[:, idx], self.bits, self.dim, compiled=False)

    def fill(self, q: np.ndarray, lo: int, hi: int, out: np.ndarray, ilo: int, ihi: int, tmp: dict) -> None:
        """Costs of queries ``lo .. hi-1`` against items ``ilo .. ihi-1`` into ``out`` (R x C)."""
        R, C = hi - lo, ihi - ilo
        x = scratch(tmp, "xor", R, C, np.uint64)
        first = True
        single = self.bits == 1 and self.words == 1 and self.dtype == np.uint8
        if not single:
            pc = scratch(tmp, "pc", R, C, self.dtype)
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
