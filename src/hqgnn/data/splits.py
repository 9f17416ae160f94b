"""Held-out splits, the ones RecBole and Cornac users know (``split_method``):

* ``random``: per user, ``round(fraction * degree)`` random interactions (seeded);
* ``temporal``: per user, the last ``round(fraction * degree)`` interactions in time;
* ``leave_one_out``: per user, the last interaction in time;
* ``global_time``: the last ``round(fraction * all)`` interactions in time, whoever made
  them; a user left with nothing before the cut is dropped from the held-out part (a
  graph model cannot embed a user without training interactions).

Per-user methods never take a user's last remaining training interaction. Time order
is the chronological position of each interaction (``InteractionData.train_order``:
timestamp, then file order for equal timestamps), so ties are broken as the file lists
them. Every split is vectorised: a key per interaction, ranked within its user's row.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError, DataError
from .core import SPLIT_METHODS, InteractionData, interactions_to_csr


def _within_row_rank(rows: np.ndarray, keys: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Rank (0-based) of each interaction inside its row by ``keys`` (ties: CSR order)."""
    order = np.lexsort((np.arange(len(keys)), keys, rows))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - indptr[rows[order]]
    return rank


def held_mask(m: sp.csr_matrix, method: str, fraction: float, seed: int,
              order: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask over ``m``'s nonzeros (CSR order): True for the held-out interactions.

    ``order``: the chronological position of each nonzero (needed by every method but
    ``random``). Raises :class:`ConfigError` for an unknown method or a time-based method
    without ``order``."""
    if method not in SPLIT_METHODS:
        raise ConfigError(f"split_method={method!r}: expected {' | '.join(SPLIT_METHODS)}")
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"hold-out fraction must be in [0, 1), got {fraction}")
    deg = np.diff(m.indptr).astype(np.int64)
    rows = np.repeat(np.arange(m.shape[0]), deg)
    if method == "random":
        rng = np.random.default_rng(seed)
        keys = rng.random(m.nnz)
        # rank of each interaction inside its row by its random key (lexsort is stable)
        ranked = np.lexsort((keys, rows))
        rank = np.empty(m.nnz, dtype=np.int64)
        rank[ranked] = np.arange(m.nnz) - np.repeat(m.indptr[:-1], deg)
        n_out = np.minimum(np.floor(deg * fraction + 0.5).astype(np.int64), np.maximum(deg - 1, 0))
        return rank < n_out[rows]
    if order is None:
        raise ConfigError(f"split_method={method} needs timestamps: name the column with --set timestamp_column=NAME "
                          "(a LightGCN folder or synthetic data has none; use split_method=random)")
    if method == "global_time":
        n_out = int(np.floor(m.nnz * fraction + 0.5))
        if n_out == 0:
            return np.zeros(m.nnz, dtype=bool)
        cut = np.sort(order)[m.nnz - n_out]
        held = order >= cut
        # a user with nothing before the cut cannot be embedded: drop (not keep) its held part
        return held
    rank = _within_row_rank(rows, order, m.indptr)
    if method == "leave_one_out":
        n_out = (deg >= 2).astype(np.int64)
    else:  # temporal
        n_out = np.minimum(np.floor(deg * fraction + 0.5).astype(np.int64), np.maximum(deg - 1, 0))
    return rank >= (deg - n_out)[rows]


def split_matrix(m: sp.csr_matrix, method: str, fraction: float, seed: int, order: Optional[np.ndarray] = None,
                 orphans: str = "drop"):
    """``(kept, held, kept_order, orphan_users)``: ``m`` split by :func:`held_mask`.

    ``kept_order``: the chronological positions of ``kept``'s nonzeros (None without
    ``order``). ``orphans`` (``global_time`` only: users all of whose interactions fall
    after the cut): ``"drop"`` removes them from both parts (the test split: a user
    without training interactions cannot be embedded), ``"keep"`` leaves them in ``kept``
    (the validation split, so they stay trainable for test); ``orphan_users`` counts them."""
    m = m.tocsr()
    held = held_mask(m, method, fraction, seed, order)
    deg = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), deg)
    cols = m.indices
    n_orphans = 0
    keep_mask = ~held
    if method == "global_time" and held.any():
        kept_per_user = np.bincount(rows[~held], minlength=m.shape[0])
        orphan = held & (kept_per_user[rows] == 0)
        n_orphans = int(len(np.unique(rows[orphan])))
        held = held & ~orphan
        if orphans == "keep":
            keep_mask = ~held
    kept = interactions_to_csr(rows[keep_mask], cols[keep_mask], *m.shape)
    out = interactions_to_csr(rows[held], cols[held], *m.shape)
    kept_order = None
    if order is not None:
        # m is canonical (sorted, no duplicates), so the kept entries stay in CSR order
        kept_order = np.asarray(order)[keep_mask]
    return kept, out, kept_order, n_orphans


def holdout_split(m: sp.csr_matrix, fraction: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Per user, move round(fraction * degree) random interactions to the held-out matrix.

    Users with a single interaction keep it in the remaining part, so that no
    held-out user is left without training items. Vectorised: one random key
    per interaction, ranked within each user's row.
    """
    kept, held, _, _ = split_matrix(m, "random", fraction, seed)
    return kept, held


def describe_split(method: str, fraction: float, seed: int, what: str, of: str = "interactions") -> str:
    """One line for a run's notes: how the ``what`` split was taken from ``of``."""
    if method == "random":
        return f"{what} split: seeded per-user hold-out of {fraction:.0%} of {of} (seed {seed})"
    if method == "temporal":
        return f"{what} split: the last {fraction:.0%} of each user's {of} in time"
    if method == "leave_one_out":
        return f"{what} split: each user's last one of {of} in time (leave-one-out)"
    return f"{what} split: the last {fraction:.0%} of all {of} in time (a global time cut)"


def with_validation(data: InteractionData, fraction: float, seed: int) -> InteractionData:
    """Carve a validation split out of train with the data's own ``split_method`` (test is
    left untouched); ``fraction`` 0 returns ``data`` unchanged.

    Raises :class:`DataError` when the carved validation split is empty."""
    if fraction <= 0:
        return data
    order = data.train_order.data if data.train_order is not None else None
    train, valid, kept_order, orphans = split_matrix(data.train, data.split_method, fraction, seed, order,
                                                     orphans="keep")
    if valid.nnz == 0:
        raise DataError(f"{data.source or data.name}: the validation split is empty (val_fraction={fraction}, "
                        f"split_method={data.split_method}): no user has enough training interactions; "
                        "set val_fraction=0")
    notes = [describe_split(data.split_method, fraction, seed, "validation", "training interactions")]
    if orphans:
        notes.append(f"validation: {orphans} users with no training interaction before the cut kept in train")
    train_order = None
    if kept_order is not None:
        train_order = sp.csr_matrix((kept_order, train.indices, train.indptr), shape=train.shape)
    return InteractionData(
        train=train, test=data.test, valid=valid, name=data.name, user_ids=data.user_ids, item_ids=data.item_ids,
        source=data.source, notes=data.notes + notes, train_order=train_order, split_method=data.split_method,
        preprocessing=data.preprocessing,
    )
