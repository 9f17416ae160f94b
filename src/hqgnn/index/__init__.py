"""Quantized retrieval: packed b-bit codes, exact integer top-K kernels, FAISS-style indexes, artifacts.

* :mod:`~hqgnn.index.packing`  -- b-bit codes <-> 64-bit bit planes;
* :mod:`~hqgnn.index.kernels`  -- exact scoring (XOR + popcount, GEMM) and top-K with exclusion;
* :mod:`~hqgnn.index.engine`   -- :class:`QuantizedIndex`, :class:`FloatIndex`, :class:`Recommendations`;
* :mod:`~hqgnn.index.artifact` -- the single-file, checksummed, memory-mapped export format.
"""

from .artifact import Artifact, export_from_arrays, read_artifact, write_artifact
from .engine import FloatIndex, QuantizedIndex, Recommendations, open_index
from .errors import RetrievalError
from .packing import pack_bits, pack_codes, unpack_bits, unpack_codes

__all__ = [
    "Artifact", "FloatIndex", "QuantizedIndex", "Recommendations", "RetrievalError", "export_from_arrays",
    "open_index", "pack_bits", "pack_codes", "read_artifact", "unpack_bits", "unpack_codes", "write_artifact",
]
