"""Test oracles of the retrieval kernels: plain, slow references with int64 / float64 arithmetic."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def brute_force_scores(user_levels: np.ndarray, item_levels: np.ndarray) -> np.ndarray:
    """Reference ``<k_u, k_i>`` for every (user, item) pair with int64 arithmetic (small inputs only)."""
    return np.asarray(user_levels, np.int64) @ np.asarray(item_levels, np.int64).T


def reference_topk(scores: np.ndarray, k: int, exclude: Optional[Sequence] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of a dense score matrix by a full stable sort: ties to the lower index, excluded
    entries (an ``(indptr, indices)`` CSR, one row per score row) never returned, ``-1`` padding."""
    S = np.asarray(scores, dtype=np.float64).copy()
    if exclude is not None:
        indptr, indices = exclude
        rows = np.repeat(np.arange(S.shape[0]), np.diff(indptr))
        S[rows, np.asarray(indices, np.int64)] = -np.inf
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(S, order, axis=1)
    order = np.where(np.isfinite(vals), order, -1)
    return order, vals
