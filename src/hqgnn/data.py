"""Interaction data: readers for the standard formats, splits, statistics, synthetic data.

Everything is held as ``scipy.sparse.csr_matrix`` (users x items, binary), the
representation the graph builder, the sampler and the evaluator all consume.

Supported inputs (``load_dataset``):

* a folder with ``train.txt`` / ``test.txt`` in the LightGCN format
  (one line per user: ``user item item ...``; 0-based dense ids);
  optional ``user_list.txt`` / ``item_list.txt`` declare the id ranges;
* a RecBole atomic ``.inter`` file (tab separated, typed header);
* a CSV / TSV / Parquet file with a user and an item column (string ids are
  mapped to dense ints; the mapping is kept in ``user_ids`` / ``item_ids``);
* ``synthetic``: the embedded default, a planted latent-factor model.

Single-file inputs carry no split: a seeded per-user hold-out makes one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp

from .errors import DataError

SYNTHETIC = "synthetic"


@dataclass
class InteractionData:
    """Train / validation / test interactions over one user and item id space."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    valid: Optional[sp.csr_matrix] = None
    name: str = "data"
    # original ids (strings or ints) of each dense index, for export and recommend
    user_ids: Optional[np.ndarray] = None
    item_ids: Optional[np.ndarray] = None
    source: str = ""
    notes: list = field(default_factory=list)

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

    def stats(self) -> dict:
        return interaction_stats(self)


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


# ---------------------------------------------------------------- LightGCN text format
def read_lightgcn_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``user item item ...`` lines into (users, items) arrays, validating every line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    users, items = [], []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = np.array(parts, dtype=np.int64)
            except ValueError:
                bad = next(p for p in parts if not _is_int(p))
                raise DataError(f"{path}:{lineno}: id {bad!r} is not an integer") from None
            if (ids < 0).any():
                raise DataError(f"{path}:{lineno}: negative id {int(ids[ids < 0][0])}")
            users.append(np.full(len(ids) - 1, ids[0], dtype=np.int64))
            items.append(ids[1:])
    if not users:
        raise DataError(f"{path}: empty file (no interactions)")
    u, i = np.concatenate(users), np.concatenate(items)
    if len(u) == 0:
        raise DataError(f"{path}: no interactions (every line holds a user id only)")
    return u, i


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def _declared_count(folder: Path, name: str) -> Optional[int]:
    """Number of ids declared in LightGCN's ``user_list.txt`` / ``item_list.txt`` (header + one per line)."""
    f = folder / name
    if not f.is_file():
        return None
    with open(f, encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip()]
    return max(len(lines) - 1, 0)


def load_lightgcn_folder(folder: Path) -> InteractionData:
    folder = Path(folder)
    tr_u, tr_i = read_lightgcn_file(folder / "train.txt")
    te_u, te_i = read_lightgcn_file(folder / "test.txt")
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    for fname, declared, arrs, what in (
        ("user_list.txt", _declared_count(folder, "user_list.txt"), (tr_u, te_u), "user"),
        ("item_list.txt", _declared_count(folder, "item_list.txt"), (tr_i, te_i), "item"),
    ):
        if declared is None:
            continue
        for split_name, arr in zip(("train.txt", "test.txt"), arrs):
            if arr.max() >= declared:
                where = _line_of(folder / split_name, int(arr.max()), users=what == "user")
                raise DataError(f"{where}: {what} id {int(arr.max())} is beyond the {declared} ids declared in {fname}")
        if what == "user":
            n_users = declared
        else:
            n_items = declared
    train = interactions_to_csr(tr_u, tr_i, n_users, n_items)
    test = interactions_to_csr(te_u, te_i, n_users, n_items)
    _check_test_users(train, test, folder / "test.txt")
    return InteractionData(train=train, test=test, name=folder.name, source=str(folder))


def _check_test_users(train: sp.csr_matrix, test: sp.csr_matrix, where) -> None:
    has_test = np.diff(test.indptr) > 0
    no_train = np.diff(train.indptr) == 0
    bad = np.flatnonzero(has_test & no_train)
    if len(bad):
        raise DataError(
            f"{_line_of(where, int(bad[0]), users=True)}: test user {int(bad[0])} has no training items ({len(bad)} such users); "
            "a graph recommender cannot embed them"
        )


def _line_of(path: Path, value: int, users: bool) -> str:
    """``path:line`` of the first line holding ``value`` as its user id (users) or as an item id."""
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                parts = line.split()
                if any(int(x) == value for x in (parts[:1] if users else parts[1:])):
                    return f"{path}:{lineno}"
    except (OSError, ValueError):
        pass
    return str(path)


# ---------------------------------------------------------------- tabular formats
_USER_COLUMNS = ("user_id", "user", "userid", "uid", "user_id:token", "userId")
_ITEM_COLUMNS = ("item_id", "item", "itemid", "iid", "movie_id", "movieid", "item_id:token", "movieId")


def _pick_column(columns, wanted: Optional[str], candidates, path: Path, what: str) -> str:
    if wanted:
        if wanted not in columns:
            raise DataError(f"{path}: no column {wanted!r} (columns: {', '.join(map(str, columns))})")
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    raise DataError(
        f"{path}: cannot find the {what} column among {', '.join(map(str, columns))}; "
        f"name it with --set {what}_column=NAME"
    )


def read_table(path: Path, user_column: Optional[str] = None, item_column: Optional[str] = None):
    """Read (user, item) pairs from a RecBole .inter, CSV, TSV or Parquet file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".inter", ".tsv"):
            df = pd.read_csv(path, sep="\t", dtype=str)
        elif suffix == ".csv":
            df = pd.read_csv(path, dtype=str)
        else:
            raise DataError(f"{path}: unknown format {suffix!r} (expected a folder, .inter, .csv, .tsv or .parquet)")
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types for malformed files
        raise DataError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if suffix == ".inter":
        # RecBole headers are "name:type"; match on the name part
        df.columns = [str(c).split(":")[0] for c in df.columns]
    if len(df) == 0:
        raise DataError(f"{path}: empty file (no interactions)")
    ucol = _pick_column(df.columns, user_column, _USER_COLUMNS, path, "user")
    icol = _pick_column(df.columns, item_column, _ITEM_COLUMNS, path, "item")
    df = df[[ucol, icol]]
    missing = df.isna().any(axis=1).to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(f"{path}: row {row + 1} has an empty user or item id")
    users = df[ucol].astype(str).to_numpy()
    items = df[icol].astype(str).to_numpy()
    return users, items


def load_table(
    path: Path,
    test_fraction: float = 0.2,
    seed: int = 2020,
    user_column: Optional[str] = None,
    item_column: Optional[str] = None,
) -> InteractionData:
    users, items = read_table(path, user_column, item_column)
    user_ids, u = np.unique(users, return_inverse=True)
    item_ids, i = np.unique(items, return_inverse=True)
    full = interactions_to_csr(u, i, len(user_ids), len(item_ids))
    train, test = holdout_split(full, test_fraction, seed)
    return InteractionData(
        train=train,
        test=test,
        name=Path(path).stem,
        user_ids=_maybe_int(user_ids),
        item_ids=_maybe_int(item_ids),
        source=str(path),
        notes=[f"test split: seeded per-user hold-out of {test_fraction:.0%} (seed {seed})"],
    )


def _maybe_int(ids: np.ndarray) -> np.ndarray:
    try:
        as_int = ids.astype(np.int64)
    except ValueError:
        return ids.astype(str)
    # keep strings when the integer form is not a faithful round trip (e.g. "007")
    return as_int if np.array_equal(as_int.astype(str), ids.astype(str)) else ids.astype(str)


# ---------------------------------------------------------------- splits
def holdout_split(m: sp.csr_matrix, fraction: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Per user, move round(fraction * degree) random interactions to the held-out matrix.

    Users with a single interaction keep it in the remaining part, so that no
    held-out user is left without training items. Vectorised: one random key
    per interaction, ranked within each user's row.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"hold-out fraction must be in [0, 1), got {fraction}")
    m = m.tocsr()
    n_rows = m.shape[0]
    deg = np.diff(m.indptr)
    rows = np.repeat(np.arange(n_rows), deg)
    rng = np.random.default_rng(seed)
    keys = rng.random(m.nnz)
    # rank of each interaction inside its row by its random key
    order = np.lexsort((keys, rows))
    rank = np.empty(m.nnz, dtype=np.int64)
    rank[order] = np.arange(m.nnz) - np.repeat(m.indptr[:-1], deg)
    n_out = np.floor(deg * fraction + 0.5).astype(np.int64)
    n_out = np.minimum(n_out, np.maximum(deg - 1, 0))
    out = rank < n_out[rows]
    cols = m.indices
    keep = interactions_to_csr(rows[~out], cols[~out], *m.shape)
    held = interactions_to_csr(rows[out], cols[out], *m.shape)
    return keep, held


def with_validation(data: InteractionData, fraction: float, seed: int) -> InteractionData:
    """Carve a per-user validation split out of train (test is left untouched)."""
    if fraction <= 0:
        return data
    train, valid = holdout_split(data.train, fraction, seed)
    return InteractionData(
        train=train,
        test=data.test,
        valid=valid,
        name=data.name,
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        source=data.source,
        notes=data.notes + [f"validation split: {fraction:.0%} of each user's training items (seed {seed})"],
    )


# ---------------------------------------------------------------- synthetic default
def make_synthetic(
    n_users: int = 3000,
    n_items: int = 2000,
    mean_degree: int = 40,
    latent_dim: int = 16,
    popularity_exponent: float = 1.0,
    temperature: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> InteractionData:
    """A planted latent-factor model with power-law item popularity.

    Each user picks items without replacement with probability proportional to
    ``exp(<p_u, q_i> / temperature) * popularity_i``, popularity following a
    Zipf law ``rank^-popularity_exponent``. The preference part is learnable, so a
    model that learns beats the popularity ranking by a wide margin. Sampling
    without replacement uses the Gumbel-top-k trick, vectorised per user block.
    """
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n_users, latent_dim)) / np.sqrt(latent_dim)
    q = rng.normal(size=(n_items, latent_dim)) / np.sqrt(latent_dim)
    pop = np.arange(1, n_items + 1, dtype=np.float64) ** -popularity_exponent
    log_pop = np.log(rng.permutation(pop))
    # heavy-tailed user activity, at least 5 interactions per user
    degree = np.clip(rng.lognormal(np.log(mean_degree) - 0.5, 1.0, size=n_users).astype(np.int64), 5, n_items // 2)
    rows, cols = [], []
    block = 512
    for start in range(0, n_users, block):
        stop = min(start + block, n_users)
        logits = p[start:stop] @ q.T / temperature + log_pop
        gumbel = -np.log(-np.log(rng.random(logits.shape)))
        ranked = np.argsort(-(logits + gumbel), axis=1)
        deg = degree[start:stop]
        take = np.arange(n_items)[None, :] < deg[:, None]
        r, c = np.nonzero(take)
        rows.append(r + start)
        cols.append(ranked[r, c])
    full = interactions_to_csr(np.concatenate(rows), np.concatenate(cols), n_users, n_items)
    train, test = holdout_split(full, test_fraction, seed + 1)
    return InteractionData(
        train=train,
        test=test,
        name=SYNTHETIC,
        source=f"synthetic(n_users={n_users}, n_items={n_items}, seed={seed})",
    )


# ---------------------------------------------------------------- entry point
def load_dataset(
    spec: str,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 2020,
    user_column: Optional[str] = None,
    item_column: Optional[str] = None,
    synthetic_options: Optional[dict] = None,
) -> InteractionData:
    """Load ``spec``: a LightGCN folder, a table file, or ``synthetic``."""
    if spec == SYNTHETIC:
        return make_synthetic(**(synthetic_options or {}))
    path = Path(spec)
    if path.is_dir():
        if not (path / "train.txt").is_file():
            raise DataError(f"{path}: folder has no train.txt (expected the LightGCN train.txt / test.txt layout)")
        return load_lightgcn_folder(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (use a LightGCN folder, a .inter/.csv/.tsv/.parquet file, or 'synthetic')")
    return load_table(path, test_fraction, split_seed, user_column, item_column)


def interaction_stats(data: InteractionData) -> dict:
    full = (data.train + data.test + (data.valid if data.valid is not None else 0)).tocsr()
    n = int(full.nnz)
    udeg = np.diff(full.indptr)
    ideg = np.bincount(full.indices, minlength=data.n_items)
    q = [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
    return {
        "name": data.name,
        "users": data.n_users,
        "items": data.n_items,
        "active_items": int((ideg > 0).sum()),
        "interactions": n,
        "train": int(data.train.nnz),
        "valid": int(data.valid.nnz) if data.valid is not None else 0,
        "test": int(data.test.nnz),
        "density": n / float(data.n_users * data.n_items),
        "user_degree_quantiles": {str(k): float(v) for k, v in zip(q, np.quantile(udeg, q))},
        "item_degree_quantiles": {str(k): float(v) for k, v in zip(q, np.quantile(ideg, q))},
    }
