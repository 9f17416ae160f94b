"""The kernel interface: what :func:`hqgnn.index.search.search_topk` needs from a scoring kernel.

A kernel holds the items (codes, bit planes or embeddings) and scores blocks of
queries against chunks of them. It works in its own *values* (``dtype``): scores
where larger is better (``largest=True``: the product kernels) or costs where smaller
is better (``largest=False``: the bit-plane kernel's ``C``), and maps them to the
scores it reports (``to_scores``: ``score_dtype``). A kernel may also offer a compiled
search that scores and selects in one loop (``fused``); the driver then uses it.

A new kernel implements :class:`Kernel` (subclassing :class:`KernelBase` gives the
common defaults) and is chosen by name in :class:`hqgnn.index.engine.QuantizedIndex`.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import numpy as np

from ..select import SAMPLE_STRIDE


@runtime_checkable
class FusedSearch(Protocol):
    """A compiled exact top-k over one kernel's items (scoring and selection fused)."""

    def search(self, queries: np.ndarray, k: int, exclude: Optional[tuple], threads: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """``queries`` as :meth:`Kernel.prepare` returns them; ``exclude`` an ``(indptr,
        indices)`` CSR with one row per query, or None. Returns ``(items int64, scores)``,
        each ``(Q, k)``, as :func:`hqgnn.index.search.search_topk` does."""
        ...


@runtime_checkable
class Kernel(Protocol):
    """Exact scores of queries against the items one kernel holds.

    Attributes: ``name`` (the ``kernel=`` name), ``n_items``, ``largest`` (True: larger
    values are better; False: costs), ``dtype`` (values that :meth:`fill` writes),
    ``score_dtype`` (what :meth:`to_scores` returns), ``row_block`` (queries per block of
    the driver), ``item_chunk`` (items per :meth:`fill` call, sized for the caches),
    ``sample_stride`` (1 in this many items sets the sampled threshold).
    """

    name: str
    n_items: int
    largest: bool
    dtype: np.dtype
    score_dtype: np.dtype
    row_block: int
    item_chunk: int
    sample_stride: int

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """Queries in the kernel's input form (planes, codes, levels or float32), contiguous."""
        ...

    def n_queries(self, q: np.ndarray) -> int:
        """How many queries the prepared ``q`` holds."""
        ...

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The prepared queries ``rows`` of ``q``."""
        ...

    def subset(self, idx: np.ndarray) -> "Kernel":
        """The same kernel over the items ``idx`` only (the threshold sample)."""
        ...

    def fill(self, q: np.ndarray, lo: int, hi: int, out: np.ndarray, ilo: int, ihi: int, tmp: dict) -> None:
        """Values of queries ``lo .. hi-1`` against items ``ilo .. ihi-1`` into ``out`` (``(hi-lo, ihi-ilo)``,
        ``dtype``); ``tmp`` is a per-thread dict for scratch buffers."""
        ...

    def to_scores(self, values: np.ndarray) -> np.ndarray:
        """Values as reported scores (``score_dtype``); sentinel values map to the worst score."""
        ...

    def fused(self) -> Optional[FusedSearch]:
        """The compiled fused search over these items, or None (the driver's blocked search then)."""
        ...


class KernelBase:
    """Defaults shared by the kernels: row-major queries, scores as values, no fused search."""

    largest = True
    row_block = 256
    item_chunk = 8192
    sample_stride = SAMPLE_STRIDE

    def n_queries(self, q: np.ndarray) -> int:
        return q.shape[0]

    def take(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return q[rows]

    def to_scores(self, values: np.ndarray) -> np.ndarray:
        return values

    def fused(self) -> Optional[FusedSearch]:
        return None


def scratch(tmp: dict, name: str, rows: int, cols: int, dtype) -> np.ndarray:
    """A reusable ``(rows, cols)`` scratch array from the per-thread dict ``tmp`` (grown on demand)."""
    buf = tmp.get(name)
    if buf is None or buf.shape[0] < rows or buf.shape[1] < cols:
        buf = tmp[name] = np.empty((max(rows, 0 if buf is None else buf.shape[0]),
                                    max(cols, 0 if buf is None else buf.shape[1])), dtype)
    return buf[:rows, :cols]
