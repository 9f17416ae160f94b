"""The faiss backends of :mod:`hqgnn.index.engine`: exclusion, tie order, and full lists.

faiss knows no exclusion: each query over-fetches ``k + (its excluded count)``
candidates, the excluded ones are dropped and the rest re-ranked by (score, item
index), so ties follow the exact backend's order. Queries are batched in order of
their excluded count, so each batch over-fetches about what its own queries need.

The approximate indexes may hand back fewer candidates than asked: ``faiss-ivf``
scans only ``nprobe`` of its ``nlist`` lists (lists holding fewer than ``k`` items
leave the rest of the row empty), ``faiss-hnsw`` returns what its beam of
``efSearch`` candidates reached. A row left with fewer than ``min(k, eligible items)``
results is searched again with widened parameters -- ``nprobe`` doubled up to
``nlist`` (where IVF scans every list, i.e. is exhaustive), ``efSearch`` doubled up to
the number of items -- and rows still short after the widest setting get an exact
search. A result row is therefore short only when its query has fewer than ``k``
eligible (not excluded) items.

Search parameters are passed per call (``faiss.SearchParameters*``), never written
onto the shared faiss index, so concurrent searches do not disturb each other.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import kernels as K
from .select import csr_rows

#: Queries per faiss call.
BATCH = 1024


def search(ix, q, k: int, excl: Optional[tuple], threads: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of the prepared queries ``q`` on ``ix``'s faiss backend: ``(items, scores)``, each ``(nq, k)``.

    ``ix`` is a :class:`hqgnn.index.engine.QuantizedIndex` or ``FloatIndex``; ``excl`` an
    ``(indptr, indices)`` CSR with one row per query, or None. Padding: item ``-1``.
    """
    import faiss

    index = ix._faiss_index()
    if threads:
        faiss.omp_set_num_threads(int(threads))
    xq = ix._faiss_queries(q)
    nq, n = len(xq), ix.n_items
    if excl is not None:
        excl = (np.asarray(excl[0], dtype=np.int64), np.asarray(excl[1], dtype=np.int64))
        deg = np.diff(excl[0])
        # distinct excluded items per query (a caller's CSR may repeat an item)
        keys = np.unique(np.repeat(np.arange(nq, dtype=np.int64), deg) * n + excl[1])
        n_excluded = np.bincount(keys // n, minlength=nq)
    else:
        deg = n_excluded = np.zeros(nq, np.int64)
    need = np.minimum(k, n - n_excluded)  # what a full answer holds
    items = np.full((nq, k), -1, np.int64)
    scores = np.full((nq, k), ix._pad_score(None))
    params = _initial_params(ix, index)
    rows = np.arange(nq, dtype=np.int64)
    while rows.size:  # widening rounds: at most log2(nlist) or log2(n_items) of them
        _search_rows(ix, index, xq, rows, k, excl, deg, params, items, scores)
        rows = rows[(items[rows] >= 0).sum(axis=1) < need[rows]]
        # HNSW searches with max(efSearch, over-fetch): widen past what the short rows already had
        floor = int(min(n, k + deg[rows].min())) if rows.size else 0
        params = _widened(index, params, n, floor)
        if params is None:
            break
    if rows.size:  # still short at the widest setting (e.g. an HNSW graph that does not reach every item)
        sub = csr_rows(excl[0], excl[1], rows) if excl is not None else None
        items[rows], scores[rows] = K.search_topk(_exact_kernel(ix), _take(q, rows), k, exclude=sub, threads=threads)
    return items, scores


def _search_rows(ix, index, xq, rows, k, excl, deg, params, out_items, out_scores) -> None:
    """Search the queries ``rows`` (in batches of similar excluded count) and write their rows of the output."""
    n = ix.n_items
    rows = rows[np.argsort(deg[rows], kind="stable")]
    for lo in range(0, len(rows), BATCH):  # loop over query batches
        batch = rows[lo:lo + BATCH]
        kk = int(min(n, k + deg[batch].max()))
        dist, ids = index.search(np.ascontiguousarray(xq[batch]), kk, params=_search_params(index, params, kk))
        ids = ids.astype(np.int64)
        raw = ix._faiss_scores(dist)
        drop = ids < 0
        if excl is not None:
            sub_ptr, sub_ind = csr_rows(excl[0], excl[1], batch)
            seen_key = np.repeat(np.arange(len(batch)), np.diff(sub_ptr)) * n + sub_ind
            drop |= np.isin(np.arange(len(batch))[:, None] * n + ids, seen_key)
        rank = np.lexsort((np.where(drop, n, ids), -raw.astype(np.float64), drop), axis=1)[:, :k]
        ids, raw, drop = (np.take_along_axis(a, rank, 1) for a in (ids, raw, drop))
        width = ids.shape[1]
        out_items[batch] = -1
        out_scores[batch] = ix._pad_score(None)
        out_items[batch, :width] = np.where(drop, -1, ids)
        out_scores[batch, :width] = np.where(drop, ix._pad_score(None), raw)


def _initial_params(ix, index) -> dict:
    p = ix.backend_params
    if hasattr(index, "nlist"):
        return {"nprobe": max(1, min(int(p.get("nprobe", 16)), int(index.nlist)))}
    if hasattr(index, "hnsw"):
        return {"efSearch": max(1, int(p.get("efSearch", 128)))}
    return {}


def _widened(index, params: dict, n_items: int, floor: int = 0) -> Optional[dict]:
    """The next, wider setting; None when the current one is already the widest.

    ``floor``: the smallest efSearch the rows to widen were already searched with."""
    if "nprobe" in params:
        nlist = int(index.nlist)
        return None if params["nprobe"] >= nlist else {"nprobe": min(2 * params["nprobe"], nlist)}
    if "efSearch" in params:
        ef = max(params["efSearch"], floor)
        return None if ef >= n_items else {"efSearch": min(2 * ef, n_items)}
    return None


def _search_params(index, params: dict, kk: int):
    import faiss

    if "nprobe" in params:
        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
    if "efSearch" in params:
        return faiss.SearchParametersHNSW(efSearch=int(max(params["efSearch"], kk)))
    return None


def _take(q, rows):
    """The prepared queries of ``rows``: bit planes ``(b, nq, W)`` or vectors ``(nq, d)``."""
    return np.ascontiguousarray(q[:, rows] if q.ndim == 3 else q[rows])


def _exact_kernel(ix):
    """An exact kernel taking the same prepared queries as the faiss backend."""
    kernel = getattr(ix, "_faiss_exact_kernel", None)
    if kernel is None:
        if getattr(ix, "item_planes", None) is not None:  # QuantizedIndex: faiss queries are bit planes
            kernel = K.PlaneKernel(ix.item_planes, ix.bits, ix.dim)
        else:  # FloatIndex: float vectors
            kernel = K.GemmKernel(ix.item_emb)
        ix._faiss_exact_kernel = kernel
    return kernel
