"""The LightGCN text format: ``train.txt`` / ``test.txt``, one line per user, ``user item item ...``.

Ids are 0-based and dense (the format of LightGCN, NGCF, BiGeaR and HQ-GNN's published
splits); optional ``user_list.txt`` / ``item_list.txt`` declare the id ranges. Every id
is checked before anything is allocated: a sparse or huge id would make the dense id
range (and every array sized by it) explode, so it is refused with the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError
from .core import InteractionData, interactions_to_csr

#: A dense-id file may leave gaps (MovieLens-1M uses 3,706 of 3,952 item ids), but an id
#: range this many times the distinct ids, and above MIN_CHECKED_RANGE, is a sparse id
#: scheme that the CSV/TSV/Parquet reader (which remaps ids) must read instead.
MAX_RANGE_PER_ID = 16
MIN_CHECKED_RANGE = 1_000_000

OVERLAP_POLICIES = ("error", "drop")


def read_lightgcn_file(path: Path, return_lines: bool = False):
    """Parse ``user item item ...`` lines into ``(users, items)`` int64 arrays (and, with
    ``return_lines``, the 1-based line of each interaction), validating every line.

    Raises :class:`DataError` naming ``path:line`` and the value for a missing or empty
    file, a non-integer, negative or out-of-int64 id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    users, items, lines = [], [], []
    with open(path, "r", encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = np.array(parts, dtype=np.int64)
            except (ValueError, OverflowError):
                bad = next(p for p in parts if not _is_int64(p))
                what = "is not an integer" if not _is_int(bad) else "does not fit in 64 bits"
                raise DataError(f"{path}:{lineno}: id {bad!r} {what}") from None
            if (ids < 0).any():
                raise DataError(f"{path}:{lineno}: negative id {int(ids[ids < 0][0])}")
            users.append(np.full(len(ids) - 1, ids[0], dtype=np.int64))
            items.append(ids[1:])
            if return_lines:
                lines.append(np.full(len(ids) - 1, lineno, dtype=np.int64))
    if not users:
        raise DataError(f"{path}: empty file (no interactions)")
    u, i = np.concatenate(users), np.concatenate(items)
    if len(u) == 0:
        raise DataError(f"{path}: no interactions (every line holds a user id only)")
    if return_lines:
        return u, i, np.concatenate(lines)
    return u, i


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def _is_int64(s: str) -> bool:
    return _is_int(s) and -(2**63) <= int(s) < 2**63


def _declared_count(folder: Path, name: str) -> Optional[int]:
    """Number of ids declared in LightGCN's ``user_list.txt`` / ``item_list.txt`` (header + one per line)."""
    f = folder / name
    if not f.is_file():
        return None
    with open(f, encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip()]
    return max(len(lines) - 1, 0)


def check_dense_range(ids: np.ndarray, lines: np.ndarray, path: Path, what: str, other=None) -> None:
    """Refuse an id range far larger than the ids it holds, before it is allocated.

    ``ids`` / ``lines``: the ids of one file and their lines; ``other``: ids of the
    other split sharing the range. Raises :class:`DataError` naming ``path:line`` and
    the id."""
    top = int(ids.max())
    pool = ids if other is None else np.concatenate([ids, other])
    span = int(pool.max()) + 1
    if span <= MIN_CHECKED_RANGE or top + 1 < span:  # the other file holds the largest id: named there
        return
    distinct = len(np.unique(pool))
    if span > MAX_RANGE_PER_ID * distinct:
        line = int(lines[int(np.argmax(ids))])
        raise DataError(
            f"{path}:{line}: {what} id {top} makes a dense id range of {span:,} for {distinct:,} distinct {what}s; "
            f"the LightGCN format wants dense ids 0 .. n-1: give sparse or string ids to the CSV/TSV/Parquet "
            f"reader (a file with user and item columns), which remaps them"
        )


def load_lightgcn_folder(folder: Path, train_test_overlap: str = "error") -> InteractionData:
    """Read a LightGCN folder (``train.txt``, ``test.txt``, optional id lists).

    ``train_test_overlap``: a (user, item) pair in both files is refused (``"error"``:
    it would be masked as seen yet counted as relevant, capping recall below 1) or
    dropped from test (``"drop"``, said in the data's notes).

    Raises :class:`DataError` naming the file, line and value for every bad input."""
    folder = Path(folder)
    if train_test_overlap not in OVERLAP_POLICIES:
        raise DataError(f"train_test_overlap={train_test_overlap!r}: expected error | drop")
    tr_path, te_path = folder / "train.txt", folder / "test.txt"
    tr_u, tr_i, tr_l = read_lightgcn_file(tr_path, return_lines=True)
    te_u, te_i, te_l = read_lightgcn_file(te_path, return_lines=True)
    for path, u, i, lines, ou, oi in ((tr_path, tr_u, tr_i, tr_l, te_u, te_i), (te_path, te_u, te_i, te_l, tr_u, tr_i)):
        check_dense_range(u, lines, path, "user", ou)
        check_dense_range(i, lines, path, "item", oi)
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    for fname, declared, arrs, what in (
        ("user_list.txt", _declared_count(folder, "user_list.txt"), ((tr_u, tr_l), (te_u, te_l)), "user"),
        ("item_list.txt", _declared_count(folder, "item_list.txt"), ((tr_i, tr_l), (te_i, te_l)), "item"),
    ):
        if declared is None:
            continue
        for path, (arr, lines) in zip((tr_path, te_path), arrs):
            if arr.max() >= declared:
                at = int(np.argmax(arr))
                raise DataError(f"{path}:{int(lines[at])}: {what} id {int(arr[at])} is beyond the {declared} ids "
                                f"declared in {fname}")
        if what == "user":
            n_users = declared
        else:
            n_items = declared
    notes = []
    # the same pair in train and test: masked as seen, yet counted as relevant
    tr_keys = np.unique(tr_u * n_items + tr_i)
    te_keys = te_u * n_items + te_i
    both = np.isin(te_keys, tr_keys)
    pairs = len(np.unique(te_keys[both]))
    if pairs:
        first = int(np.flatnonzero(both)[0])
        if train_test_overlap == "error":
            raise DataError(
                f"{te_path}:{int(te_l[first])}: user {int(te_u[first])}, item {int(te_i[first])} is also in "
                f"{tr_path.name} ({pairs} such {'pair' if pairs == 1 else 'pairs'}); remove them from one file, or set "
                f"train_test_overlap=drop "
                "to drop them from test"
            )
        te_u, te_i = te_u[~both], te_i[~both]
        notes.append(f"train_test_overlap=drop: {pairs} (user, item) pairs of {te_path.name} also in "
                     f"{tr_path.name} were dropped from test")
    train = interactions_to_csr(tr_u, tr_i, n_users, n_items)
    test = interactions_to_csr(te_u, te_i, n_users, n_items)
    if test.nnz == 0:
        raise DataError(f"{te_path}: the test split is empty after dropping the pairs also in {tr_path.name}")
    _check_test_users(train, test, te_path, te_u, te_l)
    return InteractionData(train=train, test=test, name=folder.name, source=str(folder), notes=notes,
                           preprocessing={"train_test_overlap": train_test_overlap,
                                          "overlap_pairs_dropped": pairs})


def _check_test_users(train, test, path: Path, te_u: np.ndarray, te_l: np.ndarray) -> None:
    has_test = np.diff(test.indptr) > 0
    no_train = np.diff(train.indptr) == 0
    bad = np.flatnonzero(has_test & no_train)
    if len(bad):
        line = int(te_l[np.flatnonzero(te_u == bad[0])[0]])
        raise DataError(
            f"{path}:{line}: test user {int(bad[0])} has no training items ({len(bad)} such users); "
            "a graph recommender cannot embed them"
        )
