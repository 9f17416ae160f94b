"""Summary statistics of a data set (``hqgnn data stats``)."""

from __future__ import annotations

import numpy as np

from .core import InteractionData


def interaction_stats(data: InteractionData) -> dict:
    """Sizes, density, degree quantiles (over all splits), and the preprocessing applied."""
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
        "split_method": data.split_method,
        "preprocessing": data.preprocessing,
        "notes": data.notes,
    }
