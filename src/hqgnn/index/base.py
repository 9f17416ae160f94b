"""The base of the index objects: ids, exclusion, the search signature, ``save`` / ``load``.

:class:`_Index` holds what :class:`~hqgnn.index.engine.QuantizedIndex` (b-bit codes) and
:class:`~hqgnn.index.engine.FloatIndex` (float32) share: the original-id maps, the exclusion
sets (``exclude=``), ``search`` / ``similar`` on dense indices (:class:`SearchResult`, items
first), ``recommend`` / ``similar_items`` on original ids (:class:`Recommendations`) and the
artifact round trip. A subclass supplies its query vectors, its kernel and its value scales.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from ..errors import ConfigError
from .artifact import FLOAT_BITS, export_from_arrays
from .backends import CASCADE, FAISS_BACKENDS, cascade, with_backend
from .errors import RetrievalError
from .ids import IdMap, check_k
from .kernels import Kernel
from .results import Recommendations, SearchResult
from .search import search_topk
from .select import csr_rows

EXACT = "exact"

#: ``exclude=``: None, ``"train"``, a ``scipy.sparse`` matrix or an ``(indptr, indices)`` pair.
Exclude = Union[None, str, tuple, Any]


def _faiss_backend():
    """:mod:`hqgnn.index.backends.faiss`, imported on demand (faiss is optional)."""
    try:
        from .backends import faiss as faiss_backend
    except ImportError as exc:
        raise ConfigError(f"the faiss backends need faiss ({exc}); pip install 'hqgnn[faiss]' (faiss-cpu)") from None
    return faiss_backend


# ---------------------------------------------------------------- base
class _Index:
    """Shared plumbing: ids, exclusion, result mapping, the backend switch, save/load."""

    bits: int
    with_backend = with_backend  # index.with_backend(name, **params): a view searched another way

    def __init__(self, n_users: int, n_items: int, dim: int, user_ids=None, item_ids=None, train=None,
                 model: str = "", data_fingerprint: str = "", extra: Optional[dict] = None,
                 backend: str = EXACT, backend_params: Optional[dict] = None, threads: Optional[int] = None):
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_map = IdMap(user_ids, n_users, "user")
        self.item_map = IdMap(item_ids, n_items, "item")
        self.train = _as_csr(train, n_users, n_items) if train is not None else None
        self.model, self.data_fingerprint, self.extra = model, data_fingerprint, dict(extra or {})
        self.threads = threads
        self.backend_params = dict(backend_params or {})
        self._backend_state: dict = {}  # what a non-exact backend keeps (the faiss index), reset on a switch
        self.backend = backend

    # ----- backend
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        allowed = self._backends()
        if value not in allowed:
            raise ConfigError(f"backend={value!r} is not available for this index (choose from {', '.join(allowed)})")
        if value in FAISS_BACKENDS:
            _faiss_backend()  # faiss is optional: refuse the setting now, not at the first search
        if value == CASCADE:
            cascade.candidates(self.backend_params)  # bad candidates: refused now (an all-users job: before its first batch)
        self._backend = value
        self._backend_state = {}

    def _backends(self) -> tuple:
        return (EXACT,)

    # ----- queries
    def _user_rows(self, users) -> np.ndarray:
        if users is None:
            return np.arange(self.n_users, dtype=np.int64)
        rows = np.atleast_1d(np.asarray(users))
        if rows.dtype.kind not in "iu":
            raise RetrievalError(f"user indices must be integers, got dtype {rows.dtype}")
        bad = (rows < 0) | (rows >= self.n_users)
        if bad.any():
            raise RetrievalError(f"user index {rows[bad][0].item()} out of range 0 .. {self.n_users - 1}")
        return rows.astype(np.int64)

    def _item_rows(self, items) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(items))
        if rows.dtype.kind not in "iu":
            raise RetrievalError(f"item indices must be integers, got dtype {rows.dtype}")
        bad = (rows < 0) | (rows >= self.n_items)
        if bad.any():
            raise RetrievalError(f"item index {rows[bad][0].item()} out of range 0 .. {self.n_items - 1}")
        return rows.astype(np.int64)

    def _exclusion(self, exclude: Exclude, rows: Optional[np.ndarray], n_queries: int):
        """``exclude`` as a CSR ``(indptr, indices)`` aligned with the queries, or None."""
        if exclude is None or exclude is False:
            return None
        if isinstance(exclude, str) or exclude is True:
            if exclude not in ("train", True):
                raise RetrievalError(f"exclude={exclude!r}: expected 'train', a CSR matrix or (indptr, indices)")
            if rows is None:
                raise RetrievalError("exclude='train' needs user indices, not query vectors")
            if self.train is None:
                return None
            indptr, indices = self.train
        else:
            indptr, indices = _as_csr(exclude, None, self.n_items)
        n_rows = len(indptr) - 1
        if rows is not None and n_rows == self.n_users:
            return csr_rows(indptr, indices, rows)  # one row per user: take the queried users' rows
        if n_rows != n_queries:
            raise RetrievalError(f"exclusion matrix has {n_rows} rows; expected one per query ({n_queries})"
                                 + (f" or one per user ({self.n_users})" if rows is not None else ""))
        return indptr, indices

    # ----- public search API
    def search(self, users=None, k: int = 10, *, queries=None, exclude: Exclude = None,
               threads: Optional[int] = None) -> SearchResult:
        """Top-``k`` items for users (dense indices; ``None`` = all) or for query vectors.

        ``users``: ``(q,)`` int user indices. ``queries``: ``(q, d)`` unsigned codes
        (:class:`QuantizedIndex`) or float32 vectors (:class:`FloatIndex`), instead of
        ``users``. ``exclude``: ``None``, ``"train"`` (the users' seen items), or a CSR
        (``scipy.sparse`` or ``(indptr, indices)``) with one row per user or per query.
        ``threads``: search threads (default: the index's, else every CPU).

        Returns :class:`SearchResult` ``(items, raw_scores)`` -- items first, unlike faiss's
        ``(D, I)`` -- each ``(q, k)``: item indices (int64, best first, ties to the lower
        index, ``-1`` padding) and the raw scores (int32 ``<k_u, k_i>`` / float32).
        Raises :class:`RetrievalError` for a ``k`` outside ``1 .. n_items``, an index out of
        range, query vectors of the wrong shape, or an exclusion CSR of the wrong size.
        """
        k = check_k(k, self.n_items)
        if queries is not None and users is not None:
            raise RetrievalError("pass either users or queries, not both")
        if queries is None:
            if not self._has_user_vectors():
                raise RetrievalError(f"this index holds no user {'embeddings' if self.bits == FLOAT_BITS else 'codes'}:"
                                     " search with query vectors instead")
            rows = self._user_rows(users)
            q = self._user_queries(rows)
        else:
            rows = None
            q = self._query_vectors(queries)
        excl = self._exclusion(exclude, rows, self._count(q))
        return self._run(q, k, excl, threads)

    def similar(self, items, k: int = 10, threads: Optional[int] = None) -> SearchResult:
        """Top-``k`` item-to-item neighbours of ``(q,)`` item indices, the item itself excluded.

        Returns :class:`SearchResult` ``(items, raw_scores)``, each ``(q, k)`` (at most
        ``n_items - 1`` real items per row, then ``-1`` padding). Raises :class:`RetrievalError`
        for a bad ``k`` or an item index out of range."""
        k = check_k(k, self.n_items)
        rows = self._item_rows(items)
        q = self._item_queries(rows)
        excl = (np.arange(len(rows) + 1, dtype=np.int64), rows)
        return self._run(q, k, excl, threads)

    def recommend(self, user_ids, k: int = 10, exclude_seen: bool = True,
                  threads: Optional[int] = None) -> Recommendations:
        """Top-``k`` items of ``(q,)`` original user ids, as :class:`Recommendations` (original ids,
        the model's ``scores`` and the ``raw_scores``). Seen items (the artifact's training CSR:
        training + validation) are excluded unless ``exclude_seen`` is False.
        Raises :class:`RetrievalError` for an unknown user id or a bad ``k``."""
        rows = self.user_map.to_index(user_ids)
        items, raw = self.search(rows, k, exclude="train" if exclude_seen else None, threads=threads)
        return self._results(self.user_map.to_ids(rows), items, raw, self._user_value_scale(), "user")

    def similar_items(self, item_ids, k: int = 10, threads: Optional[int] = None) -> Recommendations:
        """Top-``k`` neighbours of ``(q,)`` original item ids, the item itself excluded, as
        :class:`Recommendations` (``kind="item"``). Raises :class:`RetrievalError` for an unknown
        item id or a bad ``k``."""
        rows = self.item_map.to_index(item_ids)
        items, raw = self.similar(rows, k, threads=threads)
        return self._results(self.item_map.to_ids(rows), items, raw, self._item_value_scale(), "item")

    def _results(self, queries, items, raw, scale, kind) -> Recommendations:
        valid = items >= 0
        scores = np.where(valid, raw.astype(np.float64) * scale, -np.inf)
        return Recommendations(queries=np.asarray(queries), items=self.item_map.to_ids(items), scores=scores,
                               raw_scores=raw, valid=valid, kind=kind)

    def user_index(self, user_ids) -> np.ndarray:
        """Dense user indices of original user ids."""
        return self.user_map.to_index(user_ids)

    def item_index(self, item_ids) -> np.ndarray:
        """Dense item indices of original item ids."""
        return self.item_map.to_index(item_ids)

    # ----- execution
    def _run(self, q, k, excl, threads):
        threads = threads if threads is not None else self.threads
        if self.backend == EXACT:
            return search_topk(self._kernel(), q, k, exclude=excl, threads=threads)
        # cascade: sign-plane candidates re-ranked exactly; faiss: exclusion by over-fetching, exact
        # tie order, and rows filled to min(k, eligible items) by widening the approximate search
        return (cascade if self.backend == CASCADE else _faiss_backend()).search(self, q, k, excl, threads)

    def _kernel(self) -> Kernel:
        raise NotImplementedError

    # ----- persistence
    def save(self, path) -> dict:
        """Write the index as an artifact (:mod:`hqgnn.index.artifact`); returns the export summary."""
        indptr, indices = self.train if self.train is not None else (np.zeros(self.n_users + 1, np.int64),
                                                                     np.zeros(0, np.int64))
        return export_from_arrays(
            path, model=self.model, bits=self.bits, user_codes=self._export_users(), item_codes=self._export_items(),
            user_scale=getattr(self, "user_scale", 1.0), item_scale=getattr(self, "item_scale", 1.0),
            user_ids=self.user_map.ids, item_ids=self.item_map.ids, train_csr=(indptr, indices),
            data_fingerprint=self.data_fingerprint, extra_meta=self.extra)

    @classmethod
    def load(cls, path, mmap: bool = True, **kwargs):
        """Open a saved index: same as :meth:`from_artifact`."""
        return cls.from_artifact(path, mmap=mmap, **kwargs)

    def memory_bytes(self) -> dict:
        """Bytes of the stored codes (packed) per item and in all."""
        raise NotImplementedError


def _as_csr(m, n_rows: Optional[int], n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """A CSR-like (scipy matrix or ``(indptr, indices)``) as int64 ``(indptr, indices)``, validated."""
    if hasattr(m, "tocsr"):
        m = m.tocsr()
        if m.shape[1] != n_cols:
            raise RetrievalError(f"exclusion matrix has {m.shape[1]} columns, expected {n_cols} items")
        indptr, indices = m.indptr, m.indices
    else:
        try:
            indptr, indices = m
        except (TypeError, ValueError):
            raise RetrievalError("exclude must be a CSR matrix or an (indptr, indices) pair, "
                                 f"got {type(m).__name__}") from None
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    if (indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(indices)
            or np.any(np.diff(indptr) < 0)):
        raise RetrievalError("exclusion CSR is malformed (indptr must start at 0, rise, and end at len(indices))")
    if n_rows is not None and len(indptr) != n_rows + 1:
        raise RetrievalError(f"exclusion CSR has {len(indptr) - 1} rows, expected {n_rows}")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
        raise RetrievalError(f"exclusion CSR holds item index outside 0 .. {n_cols - 1}")
    return indptr, indices


# ---------------------------------------------------------------- quantized
