"""Single-file interaction logs: RecBole ``.inter``, CSV, TSV, Parquet.

One row per interaction with a user and an item column (any ids: strings, sparse or
huge integers; they are trimmed and remapped to dense indices, the mapping kept), and
optionally a rating and a timestamp column. :func:`load_table` then applies, in order:
duplicates (``duplicates``), the rating threshold (``min_rating``), the k-core
(``min_user_interactions`` / ``min_item_interactions``) and the test split
(``split_method``, ``test_fraction``); ``InteractionData.preprocessing`` records each
setting and what it removed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp

from ..errors import DataError
from .core import SPLIT_METHODS, InteractionData, interactions_to_csr, show_id
from .preprocess import DUPLICATE_POLICIES, drop_duplicates, k_core, parse_numbers, parse_times
from .splits import describe_split, split_matrix

_USER_COLUMNS = ("user_id", "user", "userid", "uid", "userId", "user_id:token")
_ITEM_COLUMNS = ("item_id", "item", "itemid", "iid", "movie_id", "movieid", "movieId", "item_id:token")
_RATING_COLUMNS = ("rating", "ratings", "score")
_TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date", "unix_timestamp")
_RECBOLE_FIELD = re.compile(r"^[^:\s]+:(token|token_seq|float|float_seq)$")


def _pick_column(columns, wanted: Optional[str], candidates, path: Path, what: str, required: bool = True):
    if wanted:
        if wanted not in columns:
            raise DataError(f"{path}: no column {wanted!r} (columns: {', '.join(map(str, columns))})")
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    if not required:
        return None
    raise DataError(
        f"{path}: cannot find the {what} column among {', '.join(map(str, columns))}; "
        f"name it with --set {what}_column=NAME"
    )


def _inter_separator(path: Path) -> str:
    """RecBole files are tab-separated; a header of space-separated ``name:type`` fields is
    read as whitespace-separated, any other header without a tab is refused."""
    with open(path, encoding="utf-8-sig") as fh:
        header = fh.readline().rstrip("\r\n")
    if "\t" in header or not header.strip():
        return "\t"
    fields = header.split()
    if len(fields) >= 2 and all(_RECBOLE_FIELD.match(f) for f in fields) \
            and not any(f.endswith("_seq") for f in fields):
        return r"\s+"
    raise DataError(f"{path}:1: header {header!r} holds no tab: RecBole .inter files are tab-separated "
                    "(name:type fields, e.g. user_id:token<TAB>item_id:token)")


def read_table(path: Path, user_column: Optional[str] = None, item_column: Optional[str] = None,
               rating_column: Optional[str] = None, timestamp_column: Optional[str] = None) -> dict:
    """The trimmed string columns of an interaction file: ``{"user", "item", "rating",
    "timestamp"}`` (the last two None when absent), plus the column names found.

    Raises :class:`DataError` naming the file (and row, column, value) for an unknown
    format, a parse failure, an empty file, a missing column or an empty id."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix == ".inter":
            sep = _inter_separator(path)
            df = pd.read_csv(path, sep=sep, dtype=str, encoding="utf-8-sig", engine="python" if sep != "\t" else "c")
        elif suffix == ".tsv":
            df = pd.read_csv(path, sep="\t", dtype=str, encoding="utf-8-sig")
        elif suffix == ".csv":
            df = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
        else:
            raise DataError(f"{path}: unknown format {suffix!r} (expected a folder, .inter, .csv, .tsv or .parquet)")
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types for malformed files
        raise DataError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    # RecBole headers are "name:type"; match on the name part. Header names are trimmed too.
    df.columns = [str(c).strip().split(":")[0] if suffix == ".inter" else str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise DataError(f"{path}: empty file (no interactions)")
    ucol = _pick_column(df.columns, user_column, _USER_COLUMNS, path, "user")
    icol = _pick_column(df.columns, item_column, _ITEM_COLUMNS, path, "item")
    rcol = _pick_column(df.columns, rating_column, _RATING_COLUMNS, path, "rating", required=False)
    tcol = _pick_column(df.columns, timestamp_column, _TIME_COLUMNS, path, "timestamp", required=False)
    out = {"columns": {"user": ucol, "item": icol, "rating": rcol, "timestamp": tcol}}
    for key, col in (("user", ucol), ("item", icol), ("rating", rcol), ("timestamp", tcol)):
        if col is None:
            out[key] = None
            continue
        values = df[col].astype("string").str.strip()  # " 7" and "7 " are the id "7"
        missing = (values.isna() | (values == "")).to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(f"{path}: data row {row + 1} has an empty {key} (column {col!r})")
        out[key] = values.to_numpy(dtype=str)
    return out


def _maybe_int(ids: np.ndarray) -> np.ndarray:
    try:
        as_int = ids.astype(np.int64)
    except (ValueError, OverflowError):
        return ids.astype(str)
    # keep strings when the integer form is not a faithful round trip (e.g. "007")
    return as_int if np.array_equal(as_int.astype(str), ids.astype(str)) else ids.astype(str)


def _chronological(times: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
    """Each row's position in time (1-based): by timestamp, equal timestamps in file order."""
    if times is None:
        return None
    pos = np.empty(n, dtype=np.float64)
    pos[np.lexsort((np.arange(n), times))] = np.arange(1, n + 1)
    return pos


def load_table(
    path: Path,
    test_fraction: float = 0.2,
    seed: int = 2020,
    user_column: Optional[str] = None,
    item_column: Optional[str] = None,
    *,
    rating_column: Optional[str] = None,
    timestamp_column: Optional[str] = None,
    min_rating: Optional[float] = None,
    min_user_interactions: int = 0,
    min_item_interactions: int = 0,
    duplicates: str = "first",
    split_method: str = "random",
) -> InteractionData:
    """Read a single-file log, preprocess it and split it (see the module docstring).

    Raises :class:`DataError` naming the file for bad rows, a missing rating or timestamp
    column that a setting needs, nothing left after preprocessing, or an empty test split."""
    path = Path(path)
    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(f"setting duplicates={duplicates!r} is out of range: expected first | last")
    if split_method not in SPLIT_METHODS:
        raise DataError(f"setting split_method={split_method!r} is out of range: expected {' | '.join(SPLIT_METHODS)}")
    cols = read_table(path, user_column, item_column, rating_column, timestamp_column)
    names = cols["columns"]
    if min_rating is not None and cols["rating"] is None:
        raise DataError(f"{path}: min_rating={min_rating:g} needs a rating column (none among the file's columns; "
                        "name it with --set rating_column=NAME)")
    if split_method != "random" and cols["timestamp"] is None:
        raise DataError(f"{path}: split_method={split_method} needs a timestamp column (none found; name it with "
                        "--set timestamp_column=NAME)")
    n_rows = len(cols["user"])
    ratings = parse_numbers(cols["rating"], names["rating"], path, "rating") if min_rating is not None else None
    times = parse_times(cols["timestamp"], names["timestamp"], path) if cols["timestamp"] is not None else None
    user_ids, u = np.unique(cols["user"], return_inverse=True)
    item_ids, i = np.unique(cols["item"], return_inverse=True)
    prep = {"rows": n_rows, "columns": {k: v for k, v in names.items() if v is not None}, "duplicates": duplicates}

    rows = drop_duplicates(u, i, times, duplicates)
    prep["duplicate_rows_dropped"] = int(n_rows - len(rows))
    if min_rating is not None:
        rows = rows[ratings[rows] >= min_rating]
        prep["min_rating"] = float(min_rating)
        prep["below_min_rating_dropped"] = int(n_rows - prep["duplicate_rows_dropped"] - len(rows))
    core, rounds = k_core(u[rows], i[rows], min_user_interactions, min_item_interactions)
    if min_user_interactions > 1 or min_item_interactions > 1:
        prep.update({"min_user_interactions": int(min_user_interactions),
                     "min_item_interactions": int(min_item_interactions),
                     "k_core_dropped": int((~core).sum()), "k_core_rounds": rounds})
    rows = rows[core]
    if len(rows) == 0:
        raise DataError(f"{path}: no interaction is left after preprocessing ({_settings_text(prep)})")
    # dense indices over what is left: filtered-out users and items leave the id space
    kept_users, u = np.unique(u[rows], return_inverse=True)
    kept_items, i = np.unique(i[rows], return_inverse=True)
    user_ids, item_ids = user_ids[kept_users], item_ids[kept_items]
    shape = (len(user_ids), len(item_ids))
    full = interactions_to_csr(u, i, *shape)
    order = None
    chrono = _chronological(times[rows] if times is not None else None, len(rows))
    if chrono is not None:
        order_m = sp.csr_matrix((chrono, (u, i)), shape=shape)  # unique pairs: same sparsity as `full`
        order_m.sort_indices()
        order = order_m.data
    train, test, train_order, orphans = split_matrix(full, split_method, test_fraction, seed, order, orphans="drop")
    notes = [describe_split(split_method, test_fraction, seed, "test")]
    if orphans:
        notes.append(f"test split: {orphans} users with no interaction before the time cut left out")
    if test.nnz == 0:
        deg = np.diff(full.indptr)
        best = int(np.argmax(deg))
        if split_method == "global_time":
            why = ("every user with an interaction after the cut has none before it, and such users are left out; "
                   "use more data or a smaller test_fraction")
        else:
            # per-user methods never take a user's last interaction
            why = (f"no user has enough interactions to hold one out (the most active, user "
                   f"{show_id(user_ids[best])}, has {int(deg[best])}); use more data"
                   + (" or a larger test_fraction" if split_method in ("random", "temporal") else ""))
        raise DataError(f"{path}: the test split is empty ({notes[0].split(': ', 1)[1]}): {why}")
    prep.update({"split_method": split_method, "test_fraction": test_fraction, "users": shape[0], "items": shape[1],
                 "interactions": int(full.nnz)})
    if split_method == "random":
        prep["split_seed"] = seed
    if orphans:
        prep["test_users_without_history_dropped"] = orphans
    return InteractionData(
        train=train,
        test=test,
        name=path.stem,
        user_ids=_maybe_int(user_ids),
        item_ids=_maybe_int(item_ids),
        source=str(path),
        notes=notes,
        train_order=(sp.csr_matrix((train_order, train.indices, train.indptr), shape=shape)
                     if train_order is not None else None),
        split_method=split_method,
        preprocessing=prep,
    )


def _settings_text(prep: dict) -> str:
    keys = ("min_rating", "min_user_interactions", "min_item_interactions")
    return ", ".join(f"{k}={prep[k]:g}" for k in keys if k in prep) or "no filter"
