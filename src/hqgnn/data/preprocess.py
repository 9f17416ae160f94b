"""Preprocessing of single-file interaction logs, in RecBole's order: duplicates, rating
threshold, k-core. Each step works on parallel arrays (one entry per log row), vectorised,
and reports what it removed, so ``data.json`` and ``hqgnn data stats`` can state it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import DataError

DUPLICATE_POLICIES = ("first", "last")


def drop_duplicates(users: np.ndarray, items: np.ndarray, times: Optional[np.ndarray], policy: str = "first") -> np.ndarray:
    """Indices (ascending) of the rows kept when a (user, item) pair repeats.

    ``policy``: ``"first"`` keeps each pair's earliest row, ``"last"`` its latest, ordered
    by timestamp when ``times`` is given (ties by file order), else by file order. The kept
    row's rating and timestamp are the pair's. ``users`` / ``items``: integer codes."""
    if policy not in DUPLICATE_POLICIES:
        raise DataError(f"duplicates={policy!r}: expected first | last")
    n = len(users)
    order = np.arange(n) if times is None else np.lexsort((np.arange(n), times))
    if policy == "last":
        order = order[::-1]
    key = users.astype(np.int64) * (int(items.max()) + 1 if n else 1) + items
    _, first_in_order = np.unique(key[order], return_index=True)
    return np.sort(order[first_in_order])


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> tuple[np.ndarray, int]:
    """Mask of the interactions in the (min_user, min_item)-core, and the rounds it took.

    Users with fewer than ``min_user`` interactions and items with fewer than ``min_item``
    are removed, and removal repeated until none is left below its minimum (a fixed point:
    removing an item can push a user under the minimum, and so on). ``users`` / ``items``:
    dense integer codes of unique pairs."""
    keep = np.ones(len(users), dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep, 0
    n_u = int(users.max()) + 1 if len(users) else 0
    n_i = int(items.max()) + 1 if len(items) else 0
    rounds = 0
    while True:
        rounds += 1
        udeg = np.bincount(users[keep], minlength=n_u)
        ideg = np.bincount(items[keep], minlength=n_i)
        now = keep & (udeg[users] >= min_user) & (ideg[items] >= min_item)
        if now.sum() == keep.sum():
            return keep, rounds
        keep = now


def apply_min_rating(ratings: np.ndarray, min_rating: float) -> np.ndarray:
    """Mask of the rows whose rating is at least ``min_rating`` (explicit -> implicit feedback)."""
    return ratings >= min_rating


def parse_numbers(values: np.ndarray, column: str, path, what: str) -> np.ndarray:
    """Float64 values of a string column; a non-number names the data row and the value."""
    import pandas as pd

    out = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: data row {row + 1}: {what} {str(values[row])!r} in column {column!r} is not a finite number")
    return out


def parse_times(values: np.ndarray, column: str, path) -> np.ndarray:
    """Timestamps as float64 seconds: numbers as they are, dates (ISO 8601 and the like) parsed."""
    import pandas as pd

    nums = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    if np.isfinite(nums).all():
        return nums
    try:
        stamps = pd.to_datetime(pd.Series(values), errors="coerce", utc=True)
    except (ValueError, TypeError):
        stamps = pd.Series(pd.NaT, index=range(len(values)))
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: data row {row + 1}: timestamp {str(values[row])!r} in column {column!r} is neither a "
                        "number nor a date")
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
