"""The interaction container every later stage consumes, and the checks it must pass.

Interactions are held as ``scipy.sparse.csr_matrix`` (users x items, binary), the
representation the graph builder, the sampler and the evaluator all consume.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp

from ..errors import DataError

SYNTHETIC = "synthetic"

#: How a data set's test (and validation) interactions are chosen; see :mod:`hqgnn.data.splits`.
SPLIT_METHODS = ("random", "temporal", "global_time", "leave_one_out")


@dataclass
class InteractionData:
    """Train / validation / test interactions over one user and item id space.

    ``train`` / ``valid`` / ``test``: ``(n_users, n_items)`` binary CSR matrices.
    ``user_ids`` / ``item_ids``: the original id (as the file wrote it; integers stay
    integers) of each dense index, or None when the file's ids are the dense indices.
    ``train_order``: the chronological position of each of ``train``'s nonzeros (same
    sparsity; timestamp, then file order), when the source had a timestamp column; the
    time-based validation splits need it.
    ``preprocessing``: the settings applied and what they removed (recorded in ``data.json``).
    """

    train: sp.csr_matrix
    test: sp.csr_matrix
    valid: Optional[sp.csr_matrix] = None
    name: str = "data"
    user_ids: Optional[np.ndarray] = None
    item_ids: Optional[np.ndarray] = None
    source: str = ""
    notes: list = field(default_factory=list)
    train_order: Optional[sp.csr_matrix] = None
    split_method: str = "random"
    preprocessing: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def split(self, name: str) -> sp.csr_matrix:
        if name == "test":
            return self.test
        if name in ("valid", "validation"):
            if self.valid is None:
                raise DataError("no validation split: set val_fraction > 0")
            return self.valid
        if name == "train":
            return self.train
        raise DataError(f"unknown split {name!r} (expected train, valid or test)")

    def fingerprint(self) -> str:
        """A short hash of the training interactions: ties runs and exports to their data."""
        h = hashlib.sha256()
        h.update(np.asarray(self.train.shape, dtype=np.int64).tobytes())
        h.update(self.train.indptr.astype(np.int64).tobytes())
        h.update(self.train.indices.astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def original_user_ids(self) -> np.ndarray:
        return self.user_ids if self.user_ids is not None else np.arange(self.n_users)

    def original_item_ids(self) -> np.ndarray:
        return self.item_ids if self.item_ids is not None else np.arange(self.n_items)

    def show_user(self, index: int) -> str:
        """User ``index`` as the source file wrote it (``zed``, ``42``), for messages."""
        return show_id(self.original_user_ids()[index])

    def show_item(self, index: int) -> str:
        return show_id(self.original_item_ids()[index])

    def stats(self) -> dict:
        from .stats import interaction_stats

        return interaction_stats(self)


def show_id(value) -> str:
    """An id as written in its file: strings quoted only when they hold spaces or are empty."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, str) and (not value or value != value.strip() or " " in value):
        return repr(value)
    return str(value)


def interactions_to_csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR matrix from id arrays; duplicates collapse to one interaction."""
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users.astype(np.int64), items.astype(np.int64))),
        shape=(n_users, n_items),
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def check_trainable(data: InteractionData) -> None:
    """Refuse data BPR cannot train on, naming the user as the file wrote it.

    Raises :class:`DataError` when a user has every item in training (no negative exists)
    or when the test split is empty (an average over no users is undefined).
    """
    deg = np.diff(data.train.indptr)
    full = np.flatnonzero(deg >= data.n_items)
    if len(full):
        raise DataError(
            f"{data.source or data.name}: user {data.show_user(int(full[0]))} has every item ({data.n_items}) in "
            f"training, so BPR has no negative to draw ({len(full)} such users); remove them or add items"
        )
    if data.test.nnz == 0:
        raise DataError(f"{data.source or data.name}: the test split is empty: no user has a test item, so no "
                        "metric can be averaged")
