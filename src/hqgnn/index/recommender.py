"""Recommendations from an exported artifact, with original ids: what ``hqgnn recommend`` /
``hqgnn similar`` and the HTTP server answer from (no torch, no model code: an artifact and
the index engine only).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import HQGNNError
from .ids import check_k, id_array
from .results import Recommendations


class ArtifactRecommender:
    """Recommendations from an exported artifact, with original ids: what the CLI and the HTTP server use.

    ``path``: the artifact (read with its checksum verified, arrays memory-mapped);
    ``backend``: the index backend (``"exact"``; ``"cascade"`` for b-bit codes; for 1-bit codes
    ``"faiss-flat"`` / ``"faiss-hnsw"`` / ``"faiss-ivf"``; ``"faiss-flat"`` for float);
    ``backend_params``: its settings (``{"candidates": C}`` for ``"cascade"``). Every answer is a
    :class:`~hqgnn.index.results.Recommendations` (``.to_records()`` is the JSON form).
    Thread-safe for concurrent reads. Raises :class:`~hqgnn.errors.CheckpointError` for a
    missing or bad artifact, :class:`~hqgnn.errors.ConfigError` for a backend it cannot use.
    """

    def __init__(self, path, backend: str = "exact", backend_params: Optional[dict] = None):
        from .artifact import read_artifact
        from .engine import FloatIndex, QuantizedIndex

        self.path = Path(path)
        self.artifact = read_artifact(self.path, mmap=True)  # checks magic, version, sizes, sha256
        cls = FloatIndex if self.artifact.is_float else QuantizedIndex
        # a view with the backend: its settings are checked now, not at the first query
        self.index = cls.from_artifact(self.artifact).with_backend(backend, **(backend_params or {}))
        self._popular_order: Optional[np.ndarray] = None
        self._popular_counts: Optional[np.ndarray] = None
        self._lock = threading.Lock()

    # -- ids
    @property
    def n_users(self) -> int:
        return self.index.n_users

    @property
    def n_items(self) -> int:
        return self.index.n_items

    @property
    def user_map(self):
        """The users' :class:`~hqgnn.index.ids.IdMap` (parse, known, to_index)."""
        return self.index.user_map

    @property
    def item_map(self):
        """The items' :class:`~hqgnn.index.ids.IdMap`."""
        return self.index.item_map

    def info(self) -> dict:
        """The artifact and index, described: path, model, bits, dim, counts, format, sizes."""
        art = self.artifact
        return {"path": str(self.path), "model": art.model, "bits": art.bits, "dim": art.dim,
                "n_users": self.n_users, "n_items": self.n_items, "file_bytes": art.file_size(),
                "format_version": art.format_version, "data_fingerprint": art.data_fingerprint,
                "index": repr(self.index), "backend_params": dict(self.index.backend_params),
                **self.index.memory_bytes()}

    def recommend(self, users: Sequence, k: int = 50, exclude_seen: bool = True) -> Recommendations:
        """Top-``k`` items per original user id: ``(len(users), k)`` :class:`Recommendations`.

        ``scores`` are the model's (dequantized), ``queries`` the users in the artifact's own
        id type (``"42"`` from a command line is 42); ``found``: how many items each row holds,
        ``k`` unless the user has fewer than ``k`` eligible items (then all of them: seen items
        -- training + validation -- are excluded unless ``exclude_seen`` is False).
        Approximate backends widen their search until the list is full. Raises
        :class:`~hqgnn.index.errors.RetrievalError` for an unknown user or ``k`` outside ``1 .. n_items``.
        """
        k = check_k(k, self.n_items)
        return self.index.recommend(id_array(users, "users", "user"), k=k, exclude_seen=exclude_seen)

    def similar(self, item, k: int = 20) -> Recommendations:
        """The ``k`` items most similar to one original item id (the item itself excluded):
        a one-row :class:`Recommendations` with ``kind="item"``. ``k == n_items`` is taken as
        ``n_items - 1`` (every other item). Raises :class:`~hqgnn.index.errors.RetrievalError`
        for an unknown item or ``k`` outside ``1 .. n_items``."""
        k = check_k(self.n_items - 1 if k == self.n_items else k, self.n_items)
        return self.index.similar_items([item], k=k)

    def popular(self, k: int, users: Optional[Sequence] = None) -> Recommendations:
        """The cold-start fallback: the ``k`` items with the most training interactions (ties:
        lower item index), ``scores`` the interaction counts, ``fallback="popular"``. One row per
        id of ``users`` (any ids, known or not; default: one row with query ``None``).
        Raises :class:`~hqgnn.index.errors.RetrievalError` for ``k`` outside ``1 .. n_items``."""
        k = check_k(k, self.n_items)
        if self._popular_order is None:
            with self._lock:
                if self._popular_order is None:
                    counts = np.bincount(np.asarray(self.artifact.train_indices, dtype=np.int64),
                                         minlength=self.n_items)
                    self._popular_counts = counts
                    self._popular_order = np.lexsort((np.arange(self.n_items), -counts))
        top = self._popular_order[:k]
        queries = np.empty(1, dtype=object) if users is None else np.asarray(list(users), dtype=object)
        q = len(queries)
        counts = self._popular_counts[top]
        return Recommendations(queries=queries, items=np.broadcast_to(self.item_map.to_ids(top), (q, k)),
                               scores=np.broadcast_to(counts.astype(np.float64), (q, k)),
                               raw_scores=np.broadcast_to(counts, (q, k)), valid=np.ones((q, k), bool),
                               fallback="popular")


def _read_users_file(path) -> list:
    p = Path(path)
    if not p.is_file():
        raise HQGNNError(f"{p}: users file not found")
    users = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not users:
        raise HQGNNError(f"{p}: no user ids (one per line expected)")
    return users


def recommend_from_artifact(artifact, user=None, users_file=None, k: int = 50, include_seen: bool = False,
                            backend: str = "exact", backend_params: Optional[dict] = None):
    """``hqgnn recommend``: the JSON records (:meth:`Recommendations.to_records`) of one user
    (a dict) or of the users listed in ``users_file`` (a list of dicts)."""
    rec = ArtifactRecommender(artifact, backend=backend, backend_params=backend_params)
    users = [user] if user is not None else _read_users_file(users_file)
    out = rec.recommend(users, k=k, exclude_seen=not include_seen).to_records()
    return out[0] if user is not None else out


def similar_from_artifact(artifact, item, k: int = 20, backend: str = "exact",
                          backend_params: Optional[dict] = None) -> dict:
    """``hqgnn similar``: the JSON record of one item's neighbours ``{"item", "items", "scores", "found"}``."""
    rec = ArtifactRecommender(artifact, backend=backend, backend_params=backend_params)
    return rec.similar(item, k=k).to_records()[0]
