"""The error a bad retrieval request raises (unknown id, k out of range, wrong query shape).

Bad *artifacts* (missing, truncated, corrupt, newer format, wrong bit width) raise
:class:`hqgnn.errors.CheckpointError` instead.
"""

from __future__ import annotations

from ..errors import HQGNNError


class RetrievalError(HQGNNError):
    """A search request the index cannot answer: the message is one line naming the bad value."""
