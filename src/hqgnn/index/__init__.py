"""Quantized retrieval: packed b-bit codes, exact integer top-K kernels, index objects, artifacts.

* :mod:`~hqgnn.index.packing`  -- b-bit codes <-> 64-bit bit planes (*codes* are unpacked
  ``(n, d)`` uint8, *planes* packed ``(b, n, W)`` uint64);
* :mod:`~hqgnn.index.kernels`  -- exact scoring kernels behind one :class:`~hqgnn.index.kernels.Kernel` protocol;
* :mod:`~hqgnn.index.search`   -- the search driver (blocks, threads, sampled thresholds);
* :mod:`~hqgnn.index.select`   -- exact top-K selection with exclusion and deterministic ties;
* :mod:`~hqgnn.index.base`     -- what both index objects share: id maps, exclusion, the
  search signature, ``save`` / ``load``;
* :mod:`~hqgnn.index.engine`   -- :class:`QuantizedIndex`, :class:`FloatIndex`: ``search`` ->
  :class:`SearchResult` ``(items, raw_scores)``, ``recommend`` -> :class:`Recommendations`;
* :mod:`~hqgnn.index.ids`      -- :class:`IdMap` and :func:`check_k`, used by every entry point;
* :mod:`~hqgnn.index.artifact` -- the single-file, checksummed, memory-mapped export format;
* :mod:`~hqgnn.index.backends` -- faiss (imported only when a faiss backend is asked for) and
  the cascade (sign-plane candidates re-ranked exactly).
"""

from .artifact import Artifact, export_from_arrays, read_artifact, write_artifact
from .engine import FloatIndex, QuantizedIndex, open_index
from .errors import RetrievalError
from .ids import IdMap, check_k
from .packing import pack_bits, pack_codes, unpack_bits, unpack_codes
from .results import Recommendations, SearchResult

__all__ = [
    "Artifact", "FloatIndex", "IdMap", "QuantizedIndex", "Recommendations", "RetrievalError", "SearchResult",
    "check_k", "export_from_arrays", "open_index", "pack_bits", "pack_codes", "read_artifact", "unpack_bits",
    "unpack_codes", "write_artifact",
]
