"""The ``cascade`` backend of :class:`~hqgnn.index.engine.QuantizedIndex`: sign-plane candidates, exact re-ranking.

The sign of a b-bit mid-rise level is its code's top bit: with ``k = 2c - (2^b - 1)``,
``k > 0`` exactly when ``c >= 2^(b-1)``, i.e. when bit ``b - 1`` of ``c`` is set. So the
top bit plane of an index (``item_planes[b - 1]``, :mod:`hqgnn.index.packing`) *is* the
1-bit code of ``sign(k)``, and every b-bit index already holds a 1-bit index. A search:

1. **candidates** -- the exact top-``C`` items by Hamming distance on the sign plane
   (the raw 1-bit score ``d - 2 Hamming``; ties to the lower index), excluded items left
   out: the 1-bit :class:`~hqgnn.index.kernels.PlaneKernel` run by
   :func:`~hqgnn.index.search.search_topk` (the compiled fused XOR + popcount search);
2. **re-ranking** -- the exact ``<k_u, k_i>`` of those ``C`` items from the full b-bit
   levels, then the top ``k`` by (score desc, item index asc), the exact backend's order.

The raw scores are the exact integers ``<k_u, k_i>``, so an answer is exact whenever the
exact top-``k`` lies among the candidates, and always with ``C = n_items``. The
candidates are ``max(C, k)``, at most ``n_items``; a query with fewer eligible items gets
them all, then ``-1`` padding, as the exact backend. ``C``: ``backend_params={"candidates":
C}`` (default :data:`DEFAULT_CANDIDATES`). A 1-bit index has nothing to re-rank: there the
cascade is the exact search. A float32 index is refused.

Step 2 is a small compiled loop (numba, parallel over the queries: per candidate one
gathered row of int8 levels and a ``d``-long integer dot product, kept when it beats the
k-th best so far), with a vectorised numpy fallback where numba does not load.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from ...errors import ConfigError
from ..kernels import PlaneKernel
from ..kernels.compiled_select import PAD_SCORE, numba_threads
from ..kernels.intrinsics import available, njit, numba, prange
from ..packing import codes_to_levels, unpack_codes
from ..results import SearchResult
from ..search import search_topk
from ..threads import default_threads

#: Sign-plane candidates per query when ``backend_params`` names none. On the trained Gowalla
#: 4-bit model (benchmarks/results/cascade/cascade.md) C = 1000 keeps 95% of the exact
#: Recall@50 at 1.9x the fastest exact kernel's queries/s; 99% takes C = 4000, slower than exact.
DEFAULT_CANDIDATES = 1000
#: Bytes of candidate lists (int64 item + int32 score per candidate) held at once: queries
#: run in blocks of at most this much.
BLOCK_BYTES = 32 << 20
#: The parameters the backend reads.
PARAMS = ("candidates",)
_BUILD = threading.Lock()


def candidates(params: dict) -> int:
    """``C`` of ``backend_params`` (default :data:`DEFAULT_CANDIDATES`); ConfigError unless an integer >= 1."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ConfigError(f"backend 'cascade' takes no parameter {unknown[0]!r} (only: {', '.join(PARAMS)})")
    c = params.get("candidates", DEFAULT_CANDIDATES)
    if c is None:
        return DEFAULT_CANDIDATES
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or c < 1:
        raise ConfigError(f"candidates={c!r}: expected an integer >= 1 (sign-plane candidates per query)")
    return int(c)


def check(ix) -> None:
    """Refuse the backend for ``ix`` now rather than at its first search: float32 embeddings,
    bad ``backend_params`` (ConfigError, one line)."""
    if getattr(ix, "item_planes", None) is None:
        raise ConfigError("backend='cascade' ranks b-bit codes by their sign plane; this index holds float32 "
                          "embeddings (use backend='exact' or 'faiss-flat')")
    candidates(ix.backend_params)


def sign_planes(planes: np.ndarray) -> np.ndarray:
    """The sign plane of ``(b, n, W)`` bit planes as ``(1, n, W)`` 1-bit planes: the top plane, a view."""
    return planes[planes.shape[0] - 1:]


def _state(ix) -> tuple:
    """``ix``'s sign-plane kernel and ``(n_items, d)`` item levels (int8; int16 at 8 bits), built on first use."""
    st = ix._backend_state
    if "sign" not in st:
        with _BUILD:
            if "sign" not in st:
                if ix.bits > 1:
                    st["levels"] = codes_to_levels(ix.item_codes(), ix.bits, np.int8 if ix.bits < 8 else np.int16)
                    st["item_max"] = int(np.abs(st["levels"]).max(initial=0))  # once: a pass over every item
                st["sign"] = PlaneKernel(sign_planes(ix.item_planes), 1, ix.dim)
    return st["sign"], st.get("levels")


def search(ix, q: np.ndarray, k: int, excl: Optional[tuple], threads: Optional[int]) -> SearchResult:
    """Top-``k`` of the prepared queries ``q`` (``(b, nq, W)`` uint64 planes) on ``ix``
    (a :class:`~hqgnn.index.engine.QuantizedIndex`) by the cascade; ``excl``: an
    ``(indptr, indices)`` CSR with one row per query, or None. Returns a
    :class:`SearchResult` ``(items, raw_scores)`` as the exact backend's."""
    c = candidates(ix.backend_params)
    sign, levels = _state(ix)
    threads = threads or default_threads()
    if ix.bits == 1:  # the sign plane is the whole code: the cascade is the exact search
        return search_topk(sign, q, k, exclude=excl, threads=threads)
    c = min(ix.n_items, max(c, k))
    nq = q.shape[1]
    items, scores = np.empty((nq, k), np.int64), np.empty((nq, k), np.int32)
    block = max(1, BLOCK_BYTES // (12 * c))
    for lo in range(0, nq, block):  # blocks of queries bound the candidate lists' memory
        hi = min(nq, lo + block)
        sub = None
        if excl is not None:
            a, b = int(excl[0][lo]), int(excl[0][hi])
            sub = (np.asarray(excl[0][lo:hi + 1], np.int64) - a, np.asarray(excl[1][a:b], np.int64))
        cand, _ = search_topk(sign, sign_planes(q)[:, lo:hi], c, exclude=sub, threads=threads)
        user = codes_to_levels(unpack_codes(q[:, lo:hi], ix.bits, ix.dim), ix.bits, levels.dtype)
        items[lo:hi], scores[lo:hi] = rerank(user, levels, cand, k, threads, item_max=ix._backend_state["item_max"])
    return SearchResult(items, scores)


def rerank(user: np.ndarray, levels: np.ndarray, cand: np.ndarray, k: int, threads: int = 1,
           compiled: Optional[bool] = None, item_max: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of each row's candidates by their exact integer score.

    ``user``: ``(Q, d)`` query levels; ``levels``: ``(N, d)`` item levels (same integer
    dtype); ``cand``: ``(Q, C)`` item indices, ``-1`` padding at the ends of rows. Returns
    ``(items int64, scores int32)``, each ``(Q, k)``: by score ``<user, levels[item]>``
    descending, ties to the lower item index, ``-1`` / the int32 minimum past a row's
    candidates. ``compiled``: the numba loop (default: where numba loads) or numpy. ``item_max``:
    the largest ``|level|`` of ``levels`` when the caller knows it (scanning every item for it
    cost a single query ~14 ms at 1M items: benchmarks/results/sizing.md)."""
    user = np.ascontiguousarray(user)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    nq, n = cand.shape[0], levels.shape[0]
    if item_max is None:
        item_max = int(np.abs(levels).max(initial=0))
    top = item_max * int(np.abs(user).max(initial=0)) * levels.shape[1]
    out_items, out_scores = np.empty((nq, k), np.int64), np.empty((nq, k), np.int32)
    if nq == 0:
        return out_items, out_scores
    if available() if compiled is None else compiled:
        with numba_threads(threads) as t:
            _rerank(user, levels, cand, k, top, n, min(nq, 8 * t), out_items, out_scores)
        return out_items, out_scores
    step = max(1, (8 << 20) // max(1, cand.shape[1] * levels.shape[1] * 4))
    for lo in range(0, nq, step):  # blocks of queries: the gathered (rows, C, d) levels stay small
        hi = min(nq, lo + step)
        cb = cand[lo:hi]
        valid = cb >= 0
        s = np.einsum("qcd,qd->qc", levels[np.where(valid, cb, 0)].astype(np.int32), user[lo:hi].astype(np.int32))
        key = np.where(valid, (top - s.astype(np.int64)) * n + cb, np.iinfo(np.int64).max)
        kk = min(k, key.shape[1])
        if kk < key.shape[1]:
            key = np.partition(key, kk - 1, axis=1)[:, :kk]
        key = np.sort(key, axis=1)
        pad = key == np.iinfo(np.int64).max
        out_items[lo:hi, :kk] = np.where(pad, -1, key % n)
        out_scores[lo:hi, :kk] = np.where(pad, PAD_SCORE, top - key // n)
        out_items[lo:hi, kk:], out_scores[lo:hi, kk:] = -1, PAD_SCORE
    return out_items, out_scores


if numba is not None:

    @njit(cache=True, nogil=True, parallel=True)
    def _rerank(user, levels, cand, k, top, n, n_chunks, out_items, out_scores):
        # key = (top - score) * n + item: ascending keys are score descending, then item ascending.
        # The k best keys so far are kept sorted; a key better than the k-th is inserted. The
        # candidates come roughly best first (by the sign plane), so insertions are few.
        Q, C = cand.shape
        d = user.shape[1]
        for chunk in prange(n_chunks):
            best = np.empty(k, np.int64)
            for r in range(chunk * Q // n_chunks, (chunk + 1) * Q // n_chunks):
                u = user[r]
                m = 0
                worst = np.int64(0)
                for c in range(C):
                    item = cand[r, c]
                    if item < 0:  # padding: the row's candidates ended
                        break
                    row = levels[item]
                    s = np.int32(0)
                    for t in range(d):
                        s += np.int32(u[t]) * np.int32(row[t])
                    key = (top - np.int64(s)) * n + item
                    if m < k:
                        j = m
                        m += 1
                    elif key < worst:
                        j = k - 1
                    else:
                        continue
                    while j > 0 and best[j - 1] > key:
                        best[j] = best[j - 1]
                        j -= 1
                    best[j] = key
                    worst = best[m - 1]
                for c in range(k):
                    if c < m:
                        out_items[r, c] = best[c] % n
                        out_scores[r, c] = np.int32(top - best[c] // n)
                    else:
                        out_items[r, c] = -1
                        out_scores[r, c] = PAD_SCORE
