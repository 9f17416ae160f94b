"""BPR triples sampled in bulk: every training interaction once per epoch (or, per user,
as many uniformly drawn users with one of their items each), one uniformly drawn negative
(or n candidates) per positive, negatives that the user has in training rejected and
redrawn (vectorised over the rejected entries only).

BPR: Rendle et al., UAI 2009, https://arxiv.org/abs/1205.2618 (docs/method.md, 'Training')."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import DataError


class TripleSampler:
    """(user, positive, negative) triples of the training interactions, for BPR.

    A negative j of user u is drawn uniformly from all items and redrawn while (u, j) is a
    training interaction, so every negative is an item the user has not interacted with in
    ``train`` (validation and test items can be drawn: they are unseen in training).

    Args:
        train: the ``(n_users, n_items)`` training interactions (sparse, nonzero = interaction).

    Shapes (E = ``train.nnz``, the epoch length):
        - :meth:`epoch` returns ``users`` ``(E,)``, ``positives`` ``(E,)`` and ``negatives``
          ``(E,)`` (or ``(E, n)`` with ``n_negatives = n``), int64 indices.

    Raises:
        DataError: a user has every item in training (no negative exists for it).
    """

    def __init__(self, train: sp.csr_matrix):
        train = train.tocsr()
        self.n_users, self.n_items = train.shape
        deg = np.diff(train.indptr)
        self.indptr, self.deg = train.indptr.astype(np.int64), deg.astype(np.int64)
        self.active = np.flatnonzero(deg > 0)
        self.users = np.repeat(np.arange(self.n_users, dtype=np.int64), deg)
        self.items = train.indices.astype(np.int64)
        # sorted keys user * n_items + item: membership test by binary search
        self.keys = self.users * self.n_items + self.items
        if self.keys.size and not np.all(self.keys[1:] >= self.keys[:-1]):
            self.keys = np.sort(self.keys)
        full = deg >= self.n_items
        if full.any():
            raise DataError(f"user index {int(np.flatnonzero(full)[0])} has every item in training: no negative exists "
                            "(hqgnn.data.check_trainable names it by its original id)")

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users * self.n_items + items
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == q

    def negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        neg = rng.integers(0, self.n_items, size=len(users), dtype=np.int64)
        bad = np.flatnonzero(self.is_positive(users, neg))
        while bad.size:
            neg[bad] = rng.integers(0, self.n_items, size=bad.size, dtype=np.int64)
            bad = bad[self.is_positive(users[bad], neg[bad])]
        return neg

    def epoch(self, rng: np.random.Generator, n_negatives: int = 1, positives: str = "interactions"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, positives, negatives) for one epoch, in a random order; with
        ``n_negatives > 1`` the negatives are an ``(E, n)`` array of candidates per positive.

        ``positives``: ``"interactions"`` (each training pair once) or ``"users"`` (E pairs,
        each a uniformly drawn user with training items and one of them, uniformly)."""
        if positives == "users":
            u = self.active[rng.integers(0, len(self.active), size=len(self.users))]
            offset = (rng.random(len(u)) * self.deg[u]).astype(np.int64)
            p = self.items[self.indptr[u] + np.minimum(offset, self.deg[u] - 1)]
        elif positives == "interactions":
            order = rng.permutation(len(self.users))
            u, p = self.users[order], self.items[order]
        else:
            raise ValueError(f"positives={positives!r}: expected 'interactions' or 'users'")
        if n_negatives == 1:
            return u, p, self.negatives(u, rng)
        return u, p, self.negatives(np.repeat(u, n_negatives), rng).reshape(len(u), n_negatives)
