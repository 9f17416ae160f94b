"""What a search returns: :class:`SearchResult` (dense indices) and :class:`Recommendations` (original ids).

Vocabulary, the same from the kernels to HTTP:

* ``items`` -- item indices (``SearchResult``) or original item ids (``Recommendations``),
  best first, ties to the lower item index; ``-1`` (``""`` for string ids) pads a row
  whose query has fewer than ``k`` eligible items;
* ``raw_scores`` -- what the index computes: the integer ``<k_u, k_i>`` (int32) for b-bit
  codes, the float32 inner product for float embeddings; the int32 minimum / ``-inf`` on padding;
* ``scores`` -- the model's scores (float64): ``raw_scores`` dequantized
  (``(s_u s_i / 4) <k_u, k_i>``; equal to them for float embeddings), ``-inf`` on padding.
  This is what the CLI and the HTTP server call ``scores``.

The order is items first, then scores -- the reverse of faiss's ``(D, I)``: a
:class:`SearchResult` is a named tuple, so ``items, raw_scores = index.search(...)``, and
:class:`Recommendations` unpacks the same way, ``items, scores = index.recommend(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Optional, Union

import numpy as np


class SearchResult(NamedTuple):
    """Top-k by dense index: unpacks as ``items, raw_scores`` (items first, unlike faiss's ``D, I``).

    ``items``: ``(q, k)`` int64 item indices, best first, ties to the lower index, ``-1``
    padding. ``raw_scores``: ``(q, k)`` the index's scores (int32 ``<k_u, k_i>`` for codes,
    float32 inner products for embeddings; the int32 minimum / ``-inf`` on padding).
    """

    items: np.ndarray
    raw_scores: np.ndarray


@dataclass
class Recommendations:
    """The answer of every ``recommend`` / ``similar`` (engine, artifact recommender, Python API
    :meth:`hqgnn.Recommender.recommend`, CLI, HTTP). Unpacks as ``items, scores``.

    ``queries``: ``(q,)`` the original ids asked for, as the index stores them (``"42"`` in,
    42 out where ids are integers); ``items``: ``(q, k)`` original item ids (``-1`` / ``""``
    padding); ``scores``: ``(q, k)`` float64 model scores (``-inf`` padding; popularity counts
    for the ``"popular"`` fallback); ``raw_scores``: ``(q, k)`` the index's raw scores (see
    :class:`SearchResult`); ``valid``: ``(q, k)`` bool, False on padding; ``kind``: ``"user"``
    (recommend) or ``"item"`` (similar items); ``fallback``: ``"popular"`` when the answer is
    the most popular items rather than the model's, else None. Padding always ends a row.

    Rows (one per query): ``len(recs)`` is ``q``; ``recs[i]`` (an integer, negative counting
    from the end) is a :class:`Recommendations` of row ``i`` alone: ``queries`` ``(1,)``,
    ``items`` / ``scores`` / ``raw_scores`` / ``valid`` ``(1, k)``, the same ``kind`` and
    ``fallback``; ``recs[a:b]`` (any slice) keeps those rows, ``(len(range(q)[a:b]), k)``. The
    arrays are numpy views of this result's. An index outside ``-q .. q-1`` raises
    :class:`IndexError`. ``items, scores = recs`` still unpacks the two ``(q, k)`` arrays:
    iterating a ``Recommendations`` yields ``items`` then ``scores`` (for unpacking), not the
    rows; loop over the rows with ``for i in range(len(recs)): recs[i]``.
    Importable as ``from hqgnn import Recommendations``.
    """

    queries: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    raw_scores: np.ndarray
    valid: np.ndarray
    kind: str = "user"
    fallback: Optional[str] = None

    #: the item id that pads a row of integer item ids (``""`` pads string ids)
    PAD_ITEM = -1

    def __iter__(self):
        """``items, scores = recs``: items first, as :class:`SearchResult` unpacks."""
        return iter((self.items, self.scores))

    def __len__(self) -> int:
        """``q``, the number of rows (queries), as :attr:`n_queries`."""
        return len(self.queries)

    def __getitem__(self, index: Union[int, slice]) -> "Recommendations":
        """Row ``index`` (an integer, negative from the end) as a ``q = 1`` result, or the rows of a slice."""
        q = len(self.queries)
        if isinstance(index, slice):
            rows = index
        elif isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
            if not -q <= index < q:
                valid = f"{-q} .. {q - 1}" if q else "none"
                raise IndexError(f"Recommendations index {int(index)} is out of range for q={q} rows "
                                 f"(valid indices: {valid})")
            start = int(index) % q
            rows = slice(start, start + 1)
        else:
            raise TypeError(f"Recommendations indices are integers or slices, not {type(index).__name__}")
        return replace(self, queries=self.queries[rows], items=self.items[rows], scores=self.scores[rows],
                       raw_scores=self.raw_scores[rows], valid=self.valid[rows])

    @property
    def n_queries(self) -> int:
        """``q``, the number of rows (queries)."""
        return len(self.queries)

    @property
    def found(self) -> np.ndarray:
        """``(q,)`` int64: real items per row, ``k`` unless the query has fewer eligible items."""
        return self.valid.sum(axis=1).astype(np.int64)

    def to_records(self) -> list[dict]:
        """One JSON-ready dict per query, padding dropped: ``{kind: id, "items": [...], "scores":
        [...], "found": n}`` plus ``"fallback": "popular"`` for a fallback answer. ``scores`` are
        the model's (the HTTP and CLI field of that name)."""
        found = self.found.tolist()
        queries = self.queries.tolist()
        items = self.items.tolist()
        scores = self.scores.astype(np.float64).tolist()
        out = []
        for row, n in enumerate(found):  # output formatting, one dict per query
            rec = {self.kind: queries[row], "items": items[row][:n], "scores": scores[row][:n], "found": n}
            if self.fallback is not None:
                rec["fallback"] = self.fallback
            out.append(rec)
        return out
