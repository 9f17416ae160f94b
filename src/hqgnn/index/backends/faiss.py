"""The faiss backends of :mod:`hqgnn.index.engine`: building the faiss index, exclusion, tie order, full lists.

Imported only when an index is given a faiss backend (``import hqgnn.index`` does not
import faiss, an optional dependency: ``pip install 'hqgnn[faiss]'``).

Indexes. A 1-bit :class:`~hqgnn.index.engine.QuantizedIndex` uses faiss's binary
indexes over its single bit plane (Hamming distance ``h``; the raw score is
``d - 2h``, the exact backend's ``<k_u, k_i>``): ``faiss-flat`` (``IndexBinaryFlat``,
exact), ``faiss-hnsw`` (``IndexBinaryHNSW``; ``M``, ``efConstruction``, ``efSearch``) and
``faiss-ivf`` (``IndexBinaryIVF``; ``nlist``, ``nprobe``). A
:class:`~hqgnn.index.engine.FloatIndex` uses ``IndexFlatIP`` (``faiss-flat``). The faiss
index is built on first search and kept on the index object.

faiss knows no exclusion: each query over-fetches ``k + (its excluded count)``
candidates, the excluded ones are dropped and the rest re-ranked by (score, item
index), so ties follow the exact backend's order. Queries are batched in order of
their excluded count, a batch's largest over-fetch at most :data:`FETCH_SPREAD` times
its smallest, so each batch over-fetches about what its own queries need (one user
with 800 seen items no longer widens the search of a thousand users with 20:
``faiss-hnsw`` searches with ``max(efSearch, over-fetch)``).

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

import threading
from typing import Optional

import faiss
import numpy as np

from ..kernels import GemmKernel, PlaneKernel
from ..results import SearchResult
from ..search import search_topk
from ..select import csr_rows

#: Queries per faiss call, at most.
BATCH = 1024
#: A faiss call's largest over-fetch (``k`` + excluded count) is at most this factor of its
#: smallest: queries with few excluded items are not searched as wide as the heaviest.
FETCH_SPREAD = 1.25
_BUILD = threading.Lock()


# ---------------------------------------------------------------- the faiss index of an index
def _is_float(ix) -> bool:
    return getattr(ix, "item_planes", None) is None


def build(ix):
    """A new faiss index over ``ix``'s items for its backend (``ix.backend``, ``ix.backend_params``)."""
    p = ix.backend_params
    if _is_float(ix):
        index = faiss.IndexFlatIP(ix.dim)
        index.add(np.ascontiguousarray(ix.item_emb, dtype=np.float32))
        return index
    nbits = 64 * ix.item_planes.shape[2]
    xb = np.ascontiguousarray(ix.item_planes[0]).view(np.uint8)
    if ix.backend == "faiss-flat":
        index = faiss.IndexBinaryFlat(nbits)
    elif ix.backend == "faiss-hnsw":
        index = faiss.IndexBinaryHNSW(nbits, int(p.get("M", 32)))
        index.hnsw.efConstruction = int(p.get("efConstruction", 64))
    else:
        # faiss wants >= 39 training points per list
        nlist = int(p.get("nlist", max(1, min(4096, int(4 * np.sqrt(ix.n_items)), ix.n_items // 39))))
        quantizer = faiss.IndexBinaryFlat(nbits)
        index = faiss.IndexBinaryIVF(quantizer, nbits, nlist)
        index.own_fields = True
        quantizer.this.disown()
        index.train(xb)
    index.add(xb)
    return index


def index_of(ix):
    """``ix``'s faiss index, built on first use and kept (``ix._backend_state``; reset when the backend changes)."""
    index = ix._backend_state.get("faiss")
    if index is None:
        with _BUILD:
            index = ix._backend_state.get("faiss")
            if index is None:
                index = ix._backend_state["faiss"] = build(ix)
    return index


def queries(ix, q: np.ndarray) -> np.ndarray:
    """Prepared queries (``(1, nq, W)`` planes or ``(nq, d)`` float32) in faiss's form (bytes or float32 rows)."""
    if _is_float(ix):
        return np.ascontiguousarray(q, dtype=np.float32)
    return np.ascontiguousarray(q[0]).view(np.uint8)


def _raw_scores(ix, dist: np.ndarray) -> np.ndarray:
    """faiss's distances as the exact backend's raw scores: ``d - 2 Hamming`` (int32), or the float32 products."""
    if _is_float(ix):
        return dist.astype(np.float32)
    return (ix.dim - 2 * dist.astype(np.int64)).astype(np.int32)


def _pad_score(ix):
    return np.float32(-np.inf) if _is_float(ix) else np.int32(np.iinfo(np.int32).min)


# ---------------------------------------------------------------- search
def search(ix, q: np.ndarray, k: int, excl: Optional[tuple], threads: Optional[int]) -> SearchResult:
    """Top-``k`` of the prepared queries ``q`` on ``ix``'s faiss backend.

    ``ix``: a :class:`~hqgnn.index.engine.QuantizedIndex` (1 bit; ``q`` are ``(1, nq, W)``
    uint64 planes) or :class:`~hqgnn.index.engine.FloatIndex` (``q`` are ``(nq, d)``
    float32); ``excl``: an ``(indptr, indices)`` CSR with one row per query, or None.
    Returns a :class:`SearchResult` ``(items, raw_scores)``, each ``(nq, k)``, as the exact
    backend's: best first, ties to the lower index, padding item ``-1`` only where a query
    has fewer than ``k`` eligible items.
    """
    index = index_of(ix)
    if threads:
        faiss.omp_set_num_threads(int(threads))
    xq = queries(ix, q)
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
    scores = np.full((nq, k), _pad_score(ix))
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
        items[rows], scores[rows] = search_topk(_exact_kernel(ix), _take(q, rows), k, exclude=sub, threads=threads)
    return SearchResult(items, scores)


def _search_rows(ix, index, xq, rows, k, excl, deg, params, out_items, out_scores) -> None:
    """Search the queries ``rows`` (in batches of similar excluded count) and write their rows of the output."""
    n = ix.n_items
    pad = _pad_score(ix)
    for batch in _batches(rows, k, deg):  # loop over query batches
        kk = int(min(n, k + deg[batch].max()))
        dist, ids = index.search(np.ascontiguousarray(xq[batch]), kk, params=_search_params(index, params, kk))
        ids = ids.astype(np.int64)
        raw = _raw_scores(ix, dist)
        drop = ids < 0
        if excl is not None:
            sub_ptr, sub_ind = csr_rows(excl[0], excl[1], batch)
            seen_key = np.repeat(np.arange(len(batch)), np.diff(sub_ptr)) * n + sub_ind
            drop |= np.isin(np.arange(len(batch))[:, None] * n + ids, seen_key)
        rank = np.lexsort((np.where(drop, n, ids), -raw.astype(np.float64), drop), axis=1)[:, :k]
        ids, raw, drop = (np.take_along_axis(a, rank, 1) for a in (ids, raw, drop))
        width = ids.shape[1]
        out_items[batch] = -1
        out_scores[batch] = pad
        out_items[batch, :width] = np.where(drop, -1, ids)
        out_scores[batch, :width] = np.where(drop, pad, raw)


def _batches(rows: np.ndarray, k: int, deg: np.ndarray) -> list:
    """``rows`` in order of excluded count ``deg``, cut into batches of at most :data:`BATCH` queries
    whose over-fetch ``k + deg`` spans at most a factor :data:`FETCH_SPREAD`."""
    rows = rows[np.argsort(deg[rows], kind="stable")]
    fetch = k + deg[rows]
    out, lo = [], 0
    while lo < len(rows):  # loop over batches
        hi = min(len(rows), lo + BATCH, int(np.searchsorted(fetch, FETCH_SPREAD * fetch[lo], side="right")))
        out.append(rows[lo:hi])
        lo = hi
    return out


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
    if "nprobe" in params:
        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
    if "efSearch" in params:
        return faiss.SearchParametersHNSW(efSearch=int(max(params["efSearch"], kk)))
    return None


def _take(q, rows):
    """The prepared queries of ``rows``: bit planes ``(b, nq, W)`` or vectors ``(nq, d)``."""
    return np.ascontiguousarray(q[:, rows] if q.ndim == 3 else q[rows])


def _exact_kernel(ix):
    """An exact kernel taking the same prepared queries as the faiss backend (kept with the faiss index)."""
    kernel = ix._backend_state.get("exact")
    if kernel is None:
        if _is_float(ix):  # FloatIndex: float vectors
            kernel = GemmKernel(ix.item_emb)
        else:  # QuantizedIndex: faiss queries are bit planes
            kernel = PlaneKernel(ix.item_planes, ix.bits, ix.dim)
        ix._backend_state["exact"] = kernel
    return kernel
