"""Original ids <-> dense indices, the one ``k`` check, and numpy scalars as Python values.

Every entry point -- the index engine, :class:`hqgnn.index.recommender.ArtifactRecommender`, the
CLI and the HTTP server -- maps ids and checks ``k`` here, so a bad request gets the same
one-line :class:`~hqgnn.index.errors.RetrievalError` wherever it is made.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence, Union

import numpy as np

from .errors import RetrievalError

_INT64 = np.iinfo(np.int64)
_INT_RE = re.compile(r"-?[0-9]+")


def py_value(x: Any) -> Any:
    """A numpy scalar as the matching Python value (``int``, ``float``, ``str``); anything else unchanged."""
    return x.item() if isinstance(x, np.generic) else x


def short_repr(x: Any, limit: int = 60) -> str:
    """``repr(x)`` cut to ``limit`` characters (for one-line error messages)."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def check_k(k: Any, n: int, what: str = "k", of: Optional[str] = None) -> int:
    """``k`` as a Python int in ``1 .. n``.

    ``what`` names the parameter in the message; ``of`` says what ``n`` counts (``"the
    number of items"``), appended in parentheses. Raises :class:`RetrievalError`
    (``"k=0 is out of range: expected 1 .. 150 (the number of items)"``) for a ``k`` that
    is not an integer (``bool`` included) or lies outside ``1 .. n``.
    """
    note = f" ({of})" if of else ""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise RetrievalError(f"{what}={short_repr(k)} must be an integer in 1 .. {n}{note}")
    if not 1 <= int(k) <= n:
        raise RetrievalError(f"{what}={int(k)} is out of range: expected 1 .. {n}{note}")
    return int(k)


def id_array(ids: Any, name: str, what: str = "") -> np.ndarray:
    """``ids`` (one id, or a sequence / array / iterable of ids) as a 1-d numpy array.

    A string is one id (not its characters). Raises :class:`RetrievalError` naming ``name``
    (the parameter) and the shape for anything deeper than one level (``[[0, 1]]``: a 2-d
    list of ids; ragged nested lists too), instead of numpy's errors further on."""
    label = f"{what} " if what else ""
    expected = f"{name}: expected one {label}id or a 1-d sequence of {label}ids"
    if not isinstance(ids, (str, bytes, np.ndarray, list, tuple)) and hasattr(ids, "__iter__"):
        ids = list(ids)  # a generator, a set, a dict's keys
    try:
        arr = np.asarray(ids)
    except ValueError:  # numpy refuses ragged nesting
        raise RetrievalError(f"{expected}, got a ragged nested sequence") from None
    if arr.ndim == 0:
        return arr.reshape(1)
    if arr.ndim != 1:
        raise RetrievalError(f"{expected}, got shape {arr.shape}")
    return arr


class IdMap:
    """The original ids of one side (users or items) and their dense indices ``0 .. n-1``.

    ``ids``: a 1-d array of ``n`` ids, int64 or strings (``None``: the identity ``0 .. n-1``).
    Lookups are vectorised: an identity range is checked by bounds, anything else by a
    binary search of a sorted copy of the ids (built on first use, 8 bytes per integer id).
    Raises ``ValueError`` when ``len(ids) != n``.
    """

    def __init__(self, ids: Optional[np.ndarray], n: int, what: str):
        self.what, self.n = what, int(n)
        self.ids = np.arange(self.n, dtype=np.int64) if ids is None else np.asarray(ids)
        if len(self.ids) != self.n:
            raise ValueError(f"{what} ids: {len(self.ids)} ids for {n} rows")
        self.numeric = self.ids.dtype.kind in "iub"
        self.identity = self.ids.dtype.kind in "iu" and (
            self.n == 0 or (int(self.ids[0]) == 0 and int(self.ids[-1]) == self.n - 1
                            and np.array_equal(self.ids, np.arange(self.n))))
        self._order: Optional[np.ndarray] = None
        self._sorted: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.n

    def _sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        if self._order is None:
            keys = self.ids.astype(np.int64) if self.numeric else self.ids.astype(str)
            order = np.argsort(keys, kind="stable")
            self._sorted, self._order = keys[order], order
        return self._order, self._sorted

    # ----- single ids from outside (a query string, a JSON value, a command line)
    def parse(self, raw: Any) -> Union[int, str]:
        """One id as this map stores it: an int where ids are integers (``"42"`` -> 42), else a str.

        Raises :class:`RetrievalError` for a value that cannot be such an id (``"abc"`` or
        ``True`` where ids are integers; a list, a float or a bool where they are strings).
        Whether the id is *known* is :meth:`known`'s question.
        """
        if self.numeric:
            if not isinstance(raw, bool):
                if isinstance(raw, (int, np.integer)):
                    return int(raw)
                if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
                    return int(raw.strip())
            raise RetrievalError(f"{self.what} id {short_repr(raw)} is not an integer: "
                                 f"this model's {self.what} ids are integers")
        if isinstance(raw, bool) or not isinstance(raw, (str, int, np.integer)):
            raise RetrievalError(f"{self.what} id {short_repr(raw)} must be a string")
        return str(raw)

    def known(self, ids: Sequence) -> np.ndarray:
        """``(len(ids),)`` bool: which of the (parsed, :meth:`parse`) ids are in the map.

        Integer ids beyond int64 are simply unknown.
        """
        ids = list(ids)
        out = np.zeros(len(ids), dtype=bool)
        if not self.n or not ids:
            return out
        if self.numeric:
            try:
                q = np.asarray(ids, dtype=np.int64)
                in_range = np.ones(len(ids), dtype=bool)
            except OverflowError:  # some id beyond int64: unknown, the others looked up
                in_range = np.array([_INT64.min <= int(u) <= _INT64.max for u in ids], dtype=bool)
                q = np.where(in_range, np.array([int(u) if ok else 0 for u, ok in zip(ids, in_range)],
                                                dtype=np.int64), 0)
            if self.identity:
                return in_range & (q >= 0) & (q < self.n)
        else:
            in_range = np.ones(len(ids), dtype=bool)
            q = np.asarray(ids, dtype=str)  # own width: never truncated to the table's width
        _, keys = self._sorted_keys()
        pos = np.minimum(np.searchsorted(keys, q), self.n - 1)
        return in_range & (keys[pos] == q)

    # ----- arrays of ids
    def to_index(self, ids: Sequence) -> np.ndarray:
        """``(q,)`` int64 dense indices of original ids (a sequence or array; ``"42"`` is 42 where
        ids are integers). Raises :class:`RetrievalError` naming the first unknown id, or the
        shape of ``ids`` deeper than 1-d (:func:`id_array`)."""
        arr = id_array(ids, f"{self.what}s", self.what)
        if arr.dtype.kind == "O":
            arr = arr.astype(str)
        if self.identity and arr.dtype.kind in "iu":
            bad = (arr < 0) | (arr >= self.n)
            if bad.any():
                raise RetrievalError(f"unknown {self.what} id {arr[bad][0].item()!r} "
                                     f"(known ids: 0 .. {self.n - 1})")
            return arr.astype(np.int64)
        q = arr
        if self.numeric and arr.dtype.kind in "bf":  # True or 1.5 is no user 1 (3.0 from a float column is)
            bad = ~np.isfinite(arr) | (arr != np.floor(arr)) if arr.dtype.kind == "f" else np.ones(arr.shape, bool)
            if bad.any():
                raise RetrievalError(f"{self.what} id {py_value(arr[bad][0])!r} is not an integer: "
                                     f"this model's {self.what} ids are integers")
        if self.numeric and arr.dtype.kind not in "iu":
            try:
                q = arr.astype(np.int64)
            except (ValueError, OverflowError):
                bad = next(x for x in arr if not _is_int(x))
                raise RetrievalError(f"unknown {self.what} id {py_value(bad)!r} "
                                     f"({self.what} ids are integers)") from None
        elif not self.numeric:
            q = arr.astype(str)
        if self.n == 0:
            if len(arr):
                raise RetrievalError(f"unknown {self.what} id {py_value(arr[0])!r} (no {self.what}s known)")
            return np.zeros(0, np.int64)
        order, keys = self._sorted_keys()
        pos = np.minimum(np.searchsorted(keys, q), self.n - 1)
        found = keys[pos] == q
        if not np.all(found):
            raise RetrievalError(f"unknown {self.what} id {py_value(arr[~found][0])!r} ({self.n} {self.what}s known)")
        return order[pos].astype(np.int64)

    def to_ids(self, index: np.ndarray) -> np.ndarray:
        """Original ids of dense indices, same shape; ``-1`` (padding) maps to ``-1`` (``""`` for string ids)."""
        index = np.asarray(index)
        out = self.ids[np.maximum(index, 0)] if self.n else np.zeros(index.shape, self.ids.dtype)
        pad = index < 0
        if pad.any():
            out = out.copy()
            out[pad] = -1 if out.dtype.kind in "iu" else ""
        return out


def _is_int(x) -> bool:
    try:
        int(x)
        return True
    except (TypeError, ValueError):
        return False
