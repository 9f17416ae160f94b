"""The index objects over exported embeddings -- b-bit codes or float32 -- and their search signature.

* :class:`QuantizedIndex` -- b-bit codes (1..8), held as packed bit planes
  (``item_planes`` / ``user_planes``; :meth:`~QuantizedIndex.item_codes` unpacks them).
  Raw scores are the integers ``<k_u, k_i>``; the model's score is
  ``(s_u s_i / 4) <k_u, k_i>`` (:meth:`~QuantizedIndex.dequantize`). Backends: ``"exact"``
  (default; the kernels of :mod:`hqgnn.index.kernels` run by :mod:`hqgnn.index.search`)
  and, for 1 bit, the faiss binary indexes ``"faiss-flat"`` (exact Hamming),
  ``"faiss-hnsw"`` and ``"faiss-ivf"`` (approximate; :mod:`hqgnn.index.backends.faiss`,
  imported only when asked for); ``"cascade"`` (:mod:`hqgnn.index.backends.cascade`).
* :class:`FloatIndex` -- float32 embeddings, scored by the float inner product
  (``"exact"``: BLAS sgemm + exact selection; ``"faiss-flat"``: ``IndexFlatIP``).

Both share one interface:

* ``search(users | queries=, k, exclude=) -> SearchResult(items, raw_scores)`` -- dense
  indices in and out, *items first* (the reverse of faiss's ``D, I``);
* ``similar(items, k) -> SearchResult`` -- item-to-item, the item itself excluded;
* ``recommend(user_ids, k) -> Recommendations`` / ``similar_items(item_ids, k) ->
  Recommendations`` -- original ids in and out, the model's ``scores`` beside the
  ``raw_scores`` (:mod:`hqgnn.index.results`);
* ``save`` / ``load`` -- the artifact of :mod:`hqgnn.index.artifact`.

Every result is exact for ``"exact"`` and ``"faiss-flat"``: best first, ties broken by
the lower item index, excluded items never returned, rows with fewer than ``k``
eligible items padded with item ``-1``. The approximate backends return rows of the
same form, filled to ``min(k, eligible items)`` by widening their search;
``Recommendations.found`` counts real items. Bad requests raise
:class:`~hqgnn.index.errors.RetrievalError`; bad settings :class:`~hqgnn.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import CheckpointError, ConfigError
from .artifact import FLOAT_BITS, Artifact, read_artifact
from .backends import CASCADE, FAISS_BACKENDS
from .base import EXACT, _Index
from .errors import RetrievalError
from .ids import IdMap, check_k
from .kernels import (CodeGemmKernel, GemmKernel, Int8DotKernel, Int8MatmulKernel, Int16DotKernel, IntMatmulKernel,
                      PlaneKernel)
from .packing import check_codes, pack_codes, unpack_codes
from .results import Recommendations, SearchResult

__all__ = ["DEFAULT_KERNEL", "EXACT", "FAISS_BACKENDS", "FloatIndex", "IdMap", "QUANTIZED_KERNELS", "QuantizedIndex",
           "Recommendations", "SearchResult", "check_k", "default_kernel", "open_index"]

QUANTIZED_KERNELS = ("auto", "bitplane", "bitplane-numpy", "gemm", "int16-dot", "int8-dot", "int8-mm", "int32-mm")

#: Default exact kernel per bit width on CPUs without AVX-512 VNNI. Where the CPU has VNNI,
#: :func:`default_kernel` takes the compiled int8 dot-product kernel ``int8-dot`` from 2 bits
#: up (4-5x float32 sgemm at every width: benchmarks/results/retrieval.md, 2-core AVX-512
#: EPYC). Elsewhere, the fastest exact kernel per width of benchmarks/results/kernels-avx2.md
#: (``python benchmarks/kernels.py --wide-users 2048``; 2-core AMD EPYC, AVX2, no AVX-512;
#: Gowalla shape 29,858 users x 40,981 items, its train CSR excluded, d = 64, exact top-50
#: over all users, threads 1 and 2, 3 interleaved rounds), as queries/s relative to float32
#: sgemm (median of the rounds, 1 thread / 2 threads):
#:
#:   bits   bitplane      gemm          int8-mm       int32-mm
#:   1      4.54 / 5.24   0.81 / 0.87   0.04 / 0.05   0.13 / 0.14
#:   2      1.34 / 1.40   0.94 / 0.95   0.05 / 0.05   0.14 / 0.12
#:   3      0.68 / 0.70   0.93 / 0.98   0.05 / 0.05   0.13 / 0.13
#:   4      0.39 / 0.40   0.96 / 0.95   0.04 / 0.04   0.13 / 0.13
#:   8      0.11 / 0.11   1.02 / 0.98   0.04 / 0.05   0.13 / 0.13
#:
#: so XOR + popcount for 1-2 bits (one word pair per item at 1 bit; b^2 = 4 plane pairs at
#: 2 bits still beat a matrix product) and sgemm of the exact integer levels for 3-8 bits.
#: torch's int8 GEMM (``int8-mm``, the previous default for 3-8 bits) has no fast int8 path
#: on this CPU (torch._int_mm of 1024 x 64 x 8192 on one core: ~0.6 GOPS against ~19 GFLOPS
#: for sgemm) and is never a default. Without int8 dot-product instructions 3-8 bits thus
#: search at float32 speed, not faster. Every default is exact wherever the int32 raw
#: scores hold ``d m^2`` (``d m^2 < 2^31``; d < 33,025 at 8 bits): ``gemm`` sums in float32
#: while ``d m^2 < 2^24`` and in float64 beyond (8 bits with
#: d > 258; :class:`~hqgnn.index.kernels.CodeGemmKernel`), where it is still the fastest
#: (8 bits, d = 300: gemm 0.43x float32, bitplane 0.06x, int32-mm 0.10x, int8-mm 0.03x).
#: These remain the defaults where the compiled AVX2 kernel ``int16-dot`` cannot run, and
#: beyond :data:`INT16_DOT_MAX_BITS` bits per item.
DEFAULT_KERNEL = {1: "bitplane", 2: "bitplane", **{b: "gemm" for b in range(3, 9)}}

#: On AVX2 CPUs without VNNI, codes of 2-8 bits up to this many bits per item (``bits x d``)
#: search with ``int16-dot`` (integer multiply-adds, selection fused). Measured in
#: benchmarks/results/small-dims-avx2.md (``python benchmarks/small_dims.py``; exact top-50,
#: seen items excluded, 1 thread, CPU time, 2-core AVX2 EPYC): at 8 and 16 bytes per item on
#: the ML-1M and Gowalla shapes, 1.1-2.5x bitplane at 2 bits and 1.9-2.8x gemm at 4 and 8 bits,
#: reaching 0.51-0.90x the 1 bit x 64 code (before: 0.26-0.55x); at d = 64, 2.6-2.9x gemm at
#: 4 bits and 1.6-2.0x at 8 bits; 8 bits x 128 (1,024 bits, Gowalla shape) still 1.2x gemm.
INT16_DOT_MAX_BITS = 1024


def default_kernel(bits: int, dim: int = 64) -> str:
    """The exact kernel ``kernel="auto"`` picks for ``bits`` (1..8) and ``dim`` dimensions on this CPU."""
    if bits >= 2 and Int8DotKernel.available():
        return "int8-dot"
    if bits >= 2 and bits * dim <= INT16_DOT_MAX_BITS and Int16DotKernel.available():
        return "int16-dot"
    return DEFAULT_KERNEL[bits]


class QuantizedIndex(_Index):
    """Exact integer retrieval over b-bit codes (bits 1..8).

    ``item_codes`` / ``user_codes``: ``(n, d)`` unsigned codes in ``[0, 2^bits - 1]``, held
    packed as ``item_planes`` / ``user_planes`` (``(bits, n, W)`` uint64; :meth:`item_codes`
    unpacks them). Raw scores are the integers ``<k_u, k_i>`` (odd levels
    ``k = 2c - (2^b - 1)``); the model's score is ``(s_u s_i / 4) <k_u, k_i>``
    (:meth:`dequantize`), so the ranking of a user is the ranking of the dequantized float
    scores. Raises :class:`~hqgnn.errors.ConfigError` for ``bits`` outside 1..8, an unknown
    kernel or backend, ``ValueError`` for codes out of range or of mismatched dimensions.

    ``kernel`` (exact backend): ``"auto"`` (:func:`default_kernel`), ``"bitplane"``
    (XOR + popcount, integer-only; compiled and fused with the selection when numba
    loads), ``"bitplane-numpy"`` (the same on numpy ufuncs), ``"gemm"`` (float-unit
    GEMM of exact small integers), ``"int16-dot"`` (int16 / int8 multiply-adds with AVX2,
    compiled and fused with the selection), ``"int8-dot"`` (int8 dot products with AVX-512 VNNI,
    compiled and fused with the selection), ``"int8-mm"`` (int8 x int8 -> int32 matrix
    products), ``"int32-mm"`` (torch integer matmul).
    """

    def __init__(self, item_codes: np.ndarray, bits: int, *, user_codes: Optional[np.ndarray] = None,
                 user_scale: float = 1.0, item_scale: float = 1.0, user_ids=None, item_ids=None, train=None,
                 model: str = "", data_fingerprint: str = "", extra: Optional[dict] = None,
                 backend: str = EXACT, backend_params: Optional[dict] = None, kernel: str = "auto",
                 threads: Optional[int] = None, _planes: Optional[tuple] = None):
        if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
            raise ConfigError(f"bits={bits!r}: a QuantizedIndex holds 1..8-bit codes (float32 -> FloatIndex)")
        self.bits = int(bits)
        if _planes is not None:  # from an artifact: packed planes (memory-mapped), dim given
            self.item_planes, self.user_planes, dim = _planes
            n_items = self.item_planes.shape[1]
            n_users = 0 if self.user_planes is None else self.user_planes.shape[1]
        else:
            item_codes = check_codes(item_codes, bits)
            n_items, dim = item_codes.shape
            self.item_planes = pack_codes(item_codes, bits)
            if user_codes is not None:
                user_codes = check_codes(user_codes, bits)
                if user_codes.shape[1] != dim:
                    raise ValueError(f"user codes have dim {user_codes.shape[1]}, item codes {dim}")
                self.user_planes = pack_codes(user_codes, bits)
            else:
                self.user_planes = None
            n_users = 0 if user_codes is None else len(user_codes)
        if self.user_planes is None and user_ids is not None:
            n_users = len(user_ids)  # an item-only index that still knows its users' ids and history
        if kernel not in QUANTIZED_KERNELS:
            raise ConfigError(f"kernel={kernel!r} is unknown (choose from {', '.join(QUANTIZED_KERNELS)})")
        if kernel == "int8-dot" and not Int8DotKernel.available():
            raise ConfigError("kernel='int8-dot' needs a CPU with AVX-512 VNNI (and numba); "
                              "use kernel='int8-mm' or 'auto'")
        self.kernel_name = default_kernel(self.bits, dim) if kernel == "auto" else kernel
        self.user_scale, self.item_scale = float(user_scale), float(item_scale)
        self._kernel_obj = None
        self._codes_cache: dict = {}
        super().__init__(n_users, n_items, dim, user_ids, item_ids, train, model, data_fingerprint, extra,
                         backend, backend_params, threads)

    # ----- constructors
    @classmethod
    def from_codes(cls, item_codes, bits: int, **kwargs) -> "QuantizedIndex":
        """Build from ``(n_items, d)`` unsigned codes (and optional ``user_codes=``, scales, ids, ``train=``)."""
        return cls(item_codes, bits, **kwargs)

    @classmethod
    def from_artifact(cls, path, bits: Optional[int] = None, mmap: bool = True, **kwargs) -> "QuantizedIndex":
        """Open a quantized artifact (``bits``, when given, must match the stored bit width)."""
        art = path if isinstance(path, Artifact) else read_artifact(path, mmap=mmap, bits=bits)
        if art.is_float:
            raise CheckpointError(f"{art.path}: artifact holds float32 embeddings; open it with FloatIndex")
        if bits is not None and int(bits) != art.bits:
            raise CheckpointError(f"{art.path}: artifact holds {art.bits}-bit codes, but bits={bits} was requested")
        return cls(None, art.bits, user_scale=art.user_scale, item_scale=art.item_scale, user_ids=art.user_ids,
                   item_ids=art.item_ids, train=(art.train_indptr, art.train_indices), model=art.model,
                   data_fingerprint=art.data_fingerprint, extra=art.extra,
                   _planes=(art.item_planes, art.user_planes, art.dim), **kwargs)

    # ----- codes
    def item_codes(self) -> np.ndarray:
        """``(n_items, d)`` uint8 unsigned codes (unpacked once, cached)."""
        if "items" not in self._codes_cache:
            self._codes_cache["items"] = unpack_codes(self.item_planes, self.bits, self.dim)
        return self._codes_cache["items"]

    def user_codes(self) -> np.ndarray:
        """``(n_users, d)`` uint8 unsigned codes (unpacked once, cached)."""
        self._need_users()
        if "users" not in self._codes_cache:
            self._codes_cache["users"] = unpack_codes(self.user_planes, self.bits, self.dim)
        return self._codes_cache["users"]

    def _has_user_vectors(self) -> bool:
        return self.user_planes is not None

    def _need_users(self):
        if self.user_planes is None:
            raise RetrievalError("this index holds no user codes: search with query codes instead")

    def dequantize(self, scores: np.ndarray, items_only: bool = False) -> np.ndarray:
        """Model scores of raw integer scores: ``(s_u s_i / 4) <k_u, k_i>`` (``s_i^2 / 4`` for item-item)."""
        scale = self._item_value_scale() if items_only else self._user_value_scale()
        return np.asarray(scores, dtype=np.float64) * scale

    def _user_value_scale(self) -> float:
        return self.user_scale * self.item_scale / 4.0

    def _item_value_scale(self) -> float:
        return self.item_scale * self.item_scale / 4.0

    # ----- kernels
    def _backends(self) -> tuple:
        return (EXACT, CASCADE) + (FAISS_BACKENDS if self.bits == 1 else ())

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value in FAISS_BACKENDS and self.bits != 1:
            raise ConfigError(f"backend={value!r} needs 1-bit codes (this index holds {self.bits}-bit codes); "
                              f"use backend='exact'")
        _Index.backend.fset(self, value)

    def _kernel(self):
        if self._kernel_obj is None:
            if self.kernel_name in ("bitplane", "bitplane-numpy"):
                self._kernel_obj = PlaneKernel(self.item_planes, self.bits, self.dim,
                                                 compiled=self.kernel_name == "bitplane")
            elif self.kernel_name == "gemm":
                self._kernel_obj = CodeGemmKernel(self.item_codes(), self.bits)
            elif self.kernel_name == "int8-mm":
                self._kernel_obj = Int8MatmulKernel(self.item_codes(), self.bits)
            elif self.kernel_name == "int8-dot":
                self._kernel_obj = Int8DotKernel(self.item_codes(), self.bits)
            elif self.kernel_name == "int16-dot":
                self._kernel_obj = Int16DotKernel(self.item_codes(), self.bits)
            else:
                self._kernel_obj = IntMatmulKernel(self.item_codes(), self.bits)
        return self._kernel_obj

    def _uses_planes(self) -> bool:
        return self.backend != EXACT or self.kernel_name in ("bitplane", "bitplane-numpy")

    def _count(self, q) -> int:
        return q.shape[1] if self._uses_planes() else q.shape[0]

    def _user_queries(self, rows):
        self._need_users()
        if self._uses_planes():
            return np.ascontiguousarray(self.user_planes[:, rows])
        return self.user_codes()[rows]

    def _item_queries(self, rows):
        if self._uses_planes():
            return np.ascontiguousarray(self.item_planes[:, rows])
        return self.item_codes()[rows]

    def _query_vectors(self, queries):
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise RetrievalError(f"query codes must have shape (q, {self.dim}), got {q.shape}")
        try:
            q = check_codes(q, self.bits)
        except ValueError as exc:
            raise RetrievalError(f"query codes: {exc}") from None
        return pack_codes(q, self.bits) if self._uses_planes() else q

    # ----- persistence
    def _export_users(self):
        return None if self.user_planes is None else self.user_codes()

    def _export_items(self):
        return self.item_codes()

    def memory_bytes(self) -> dict:
        per_item = self.item_planes.shape[0] * self.item_planes.shape[2] * 8
        return {"bytes_per_item": per_item, "item_code_bytes": per_item * self.n_items,
                "float32_bytes_per_item": 4 * self.dim}

    def __repr__(self) -> str:
        return (f"QuantizedIndex(bits={self.bits}, dim={self.dim}, n_users={self.n_users}, n_items={self.n_items}, "
                f"backend={self.backend!r}, kernel={self.kernel_name!r})")


# ---------------------------------------------------------------- float
class FloatIndex(_Index):
    """Exact float32 inner-product retrieval: the full-precision reference with the same interface.

    ``item_emb`` / ``user_emb``: ``(n, d)`` float32 embeddings; raw scores are the float32
    inner products, which are also the model's scores. Raises ``ValueError`` for embeddings
    that are not ``(n, d)`` with one ``d``."""

    bits = FLOAT_BITS

    def __init__(self, item_emb: np.ndarray, *, user_emb: Optional[np.ndarray] = None, user_ids=None,
                 item_ids=None, train=None, model: str = "", data_fingerprint: str = "",
                 extra: Optional[dict] = None, backend: str = EXACT, backend_params: Optional[dict] = None,
                 threads: Optional[int] = None):
        self.item_emb = np.asarray(item_emb, dtype=np.float32)
        if self.item_emb.ndim != 2:
            raise ValueError(f"item embeddings must be (n, d), got shape {self.item_emb.shape}")
        n_items, dim = self.item_emb.shape
        self.user_emb = None if user_emb is None else np.asarray(user_emb, dtype=np.float32)
        if self.user_emb is not None and (self.user_emb.ndim != 2 or self.user_emb.shape[1] != dim):
            raise ValueError(f"user embeddings must be (n, {dim}), got shape {self.user_emb.shape}")
        n_users = len(self.user_emb) if self.user_emb is not None else (len(user_ids) if user_ids is not None else 0)
        self._kernel_obj = None
        super().__init__(n_users, n_items, dim, user_ids, item_ids, train, model, data_fingerprint, extra,
                         backend, backend_params, threads)

    @classmethod
    def from_embeddings(cls, item_emb, **kwargs) -> "FloatIndex":
        """Build from ``(n_items, d)`` float embeddings (and optional ``user_emb=``, ids, ``train=``)."""
        return cls(item_emb, **kwargs)

    from_codes = from_embeddings  # same constructor name as QuantizedIndex

    @classmethod
    def from_artifact(cls, path, mmap: bool = True, bits: Optional[int] = None, **kwargs) -> "FloatIndex":
        """Open a float32 artifact (``bits`` must be 32 or None)."""
        art = path if isinstance(path, Artifact) else read_artifact(path, mmap=mmap, bits=bits)
        if not art.is_float:
            raise CheckpointError(f"{art.path}: artifact holds {art.bits}-bit codes; open it with QuantizedIndex")
        return cls(art.item_embeddings, user_emb=art.user_embeddings, user_ids=art.user_ids, item_ids=art.item_ids,
                   train=(art.train_indptr, art.train_indices), model=art.model,
                   data_fingerprint=art.data_fingerprint, extra=art.extra, **kwargs)

    def _backends(self) -> tuple:
        return (EXACT, "faiss-flat")

    def _has_user_vectors(self) -> bool:
        return self.user_emb is not None

    def _kernel(self):
        if self._kernel_obj is None:
            self._kernel_obj = GemmKernel(self.item_emb)
        return self._kernel_obj

    def _count(self, q) -> int:
        return q.shape[0]

    def _user_queries(self, rows):
        if self.user_emb is None:
            raise RetrievalError("this index holds no user embeddings: search with query vectors instead")
        return self.user_emb[rows]

    def _item_queries(self, rows):
        return self.item_emb[rows]

    def _query_vectors(self, queries):
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise RetrievalError(f"query vectors must have shape (q, {self.dim}), got {q.shape}")
        return q

    def _user_value_scale(self) -> float:
        return 1.0

    def _item_value_scale(self) -> float:
        return 1.0

    def _export_users(self):
        return self.user_emb

    def _export_items(self):
        return self.item_emb

    def memory_bytes(self) -> dict:
        return {"bytes_per_item": 4 * self.dim, "item_code_bytes": 4 * self.dim * self.n_items,
                "float32_bytes_per_item": 4 * self.dim}

    def __repr__(self) -> str:
        return f"FloatIndex(dim={self.dim}, n_users={self.n_users}, n_items={self.n_items}, backend={self.backend!r})"


def open_index(path, mmap: bool = True, **kwargs):
    """Open any artifact as the matching index class (:class:`QuantizedIndex` or :class:`FloatIndex`)."""
    art = read_artifact(path, mmap=mmap, bits=kwargs.pop("bits", None))
    return (FloatIndex if art.is_float else QuantizedIndex).from_artifact(art, **kwargs)
