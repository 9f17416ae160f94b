"""Interaction data: readers for the standard formats, preprocessing, splits, statistics,
synthetic data.

Supported inputs (:func:`load_dataset`):

* a folder with ``train.txt`` / ``test.txt`` in the LightGCN format
  (:mod:`hqgnn.data.lightgcn`; one line per user: ``user item item ...``; 0-based dense ids);
* a RecBole atomic ``.inter`` file, a CSV / TSV / Parquet file with a user and an item
  column, optionally rating and timestamp columns (:mod:`hqgnn.data.table`: ids trimmed
  and remapped to dense indices, the mapping kept in ``user_ids`` / ``item_ids``;
  duplicates, rating threshold, k-core and split settings);
* ``synthetic``: the embedded default, a planted latent-factor model
  (:mod:`hqgnn.data.synthetic`).

Single-file inputs carry no split: ``split_method`` makes one (:mod:`hqgnn.data.splits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError
from .core import SPLIT_METHODS, SYNTHETIC, InteractionData, check_trainable, interactions_to_csr, show_id
from .lightgcn import OVERLAP_POLICIES, load_lightgcn_folder, read_lightgcn_file
from .preprocess import DUPLICATE_POLICIES, drop_duplicates, k_core
from .splits import holdout_split, split_matrix, with_validation
from .stats import interaction_stats
from .synthetic import make_synthetic
from .table import load_table, read_table

#: settings that only single-file inputs (which the project splits itself) accept
_TABLE_ONLY = {"min_rating": None, "min_user_interactions": 0, "min_item_interactions": 0, "split_method": "random"}


def load_dataset(
    spec: str,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 2020,
    user_column: Optional[str] = None,
    item_column: Optional[str] = None,
    rating_column: Optional[str] = None,
    timestamp_column: Optional[str] = None,
    min_rating: Optional[float] = None,
    min_user_interactions: int = 0,
    min_item_interactions: int = 0,
    duplicates: str = "first",
    split_method: str = "random",
    train_test_overlap: str = "error",
    synthetic_options: Optional[dict] = None,
) -> InteractionData:
    """Load ``spec``: a LightGCN folder, a table file, or ``synthetic``.

    The preprocessing settings (``min_rating``, ``min_*_interactions``) apply to single-file
    inputs only; ``train_test_overlap`` to inputs that come with their own test split.
    Raises :class:`DataError` naming the file, line and value for bad input, and for a
    setting given to an input it does not apply to."""
    given = {"min_rating": min_rating, "min_user_interactions": min_user_interactions,
             "min_item_interactions": min_item_interactions, "split_method": split_method}
    path = Path(spec)
    if spec == SYNTHETIC or path.is_dir():
        for key, default in _TABLE_ONLY.items():
            if given[key] != default:
                raise DataError(f"setting {key}={given[key]!r} applies to single-file inputs (CSV/TSV/Parquet/.inter); "
                                f"{spec} comes split already, without ratings or timestamps")
    if spec == SYNTHETIC:
        return make_synthetic(**(synthetic_options or {}))
    if path.is_dir():
        if not (path / "train.txt").is_file():
            raise DataError(f"{path}: folder has no train.txt (expected the LightGCN train.txt / test.txt layout)")
        return load_lightgcn_folder(path, train_test_overlap=train_test_overlap)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (use a LightGCN folder, a .inter/.csv/.tsv/.parquet file, or 'synthetic')")
    return load_table(path, test_fraction, split_seed, user_column, item_column, rating_column=rating_column,
                      timestamp_column=timestamp_column, min_rating=min_rating,
                      min_user_interactions=min_user_interactions, min_item_interactions=min_item_interactions,
                      duplicates=duplicates, split_method=split_method)


__all__ = [
    "DUPLICATE_POLICIES", "OVERLAP_POLICIES", "SPLIT_METHODS", "SYNTHETIC", "DataError", "InteractionData",
    "check_trainable", "drop_duplicates", "holdout_split", "interaction_stats", "interactions_to_csr", "k_core",
    "load_dataset", "load_lightgcn_folder", "load_table", "make_synthetic", "read_lightgcn_file", "read_table",
    "show_id", "split_matrix", "with_validation",
]
