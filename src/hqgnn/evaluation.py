"""Full-ranking evaluation and its protocol (docs/method.md, 'Protocol').

For every user with at least one held-out item: score all items, mask the
items the user already has (:func:`excluded_for`: training, and validation when
scoring test), take the top max(K), and compute Recall / NDCG / Precision /
HitRate at each K. Users are processed in batches on the device; the caller
computes the final embeddings once per evaluation, so propagation is never
repeated per batch.

The protocol lives here, in one place: which split a run monitors
(:func:`monitor_split`), which items each split masks (:func:`excluded_for`),
which items a recommendation leaves out (:func:`seen_items`), and how a model
is scored (:func:`evaluate_model`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .errors import ConfigError, DataError, NonFiniteScores

METRICS = ("recall", "ndcg", "precision", "hit_rate")


def csr_rows_to_dense_mask(m: sp.csr_matrix, rows: np.ndarray, device) -> torch.Tensor:
    """Boolean (len(rows), n_cols) mask of the nonzeros of the given CSR rows."""
    sub = m[rows]
    counts = np.diff(sub.indptr)
    r = np.repeat(np.arange(len(rows)), counts)
    mask = torch.zeros((len(rows), m.shape[1]), dtype=torch.bool, device=device)
    if sub.nnz:
        mask[torch.from_numpy(r).to(device), torch.from_numpy(sub.indices.astype(np.int64)).to(device)] = True
    return mask


def exclusion_mask(exclude: Sequence[sp.csr_matrix], rows: np.ndarray, device) -> Optional[torch.Tensor]:
    """Boolean (len(rows), n_cols) union of the nonzeros of ``exclude``'s rows; None without any."""
    mask = None
    for e in exclude:
        m = csr_rows_to_dense_mask(e, rows, device)
        mask = m if mask is None else mask | m
    return mask


def check_cutoffs(ks: Sequence[int], n_items: int, shown: Optional[str] = None, hint: str = "") -> None:
    """Refuse cut-offs above the data's ``n_items`` (metrics@K of K > n_items are meaningless) with
    a one-line :class:`~hqgnn.errors.ConfigError` that starts with ``shown``, the values as the user
    wrote them (``"--k 20 500"``; default ``"setting ks=[...]"``), and ends with ``hint``."""
    over = [int(k) for k in ks if int(k) > n_items]
    if over:
        shown = shown or f"setting ks={list(ks)!r}"
        raise ConfigError(f"{shown}: cut-off {max(over)} is above the data's {n_items} items "
                          f"(expected cut-offs 1 .. {n_items}{'; ' + hint if hint else ''})")


def monitor_split(eval_split: str, data) -> str:
    """The split a run monitors (early stopping, best epoch): ``"valid"`` when the setting
    ``eval_split`` asks for it and the data has a validation split, else ``"test"``."""
    if eval_split == "valid" and data.valid is not None:
        return "valid"
    return "test"


def excluded_for(split: str, data) -> list:
    """The interaction matrices whose items are masked when ranking for ``split``:
    training, plus validation when scoring test (a model never gets credit for an item it
    was fit on or selected on). ``split``: ``"test"`` or ``"valid"``."""
    if split == "test" and data.valid is not None:
        return [data.train, data.valid]
    return [data.train]


def evaluate_model(model, adj: Optional[torch.Tensor], data, split: str, ks: Sequence[int] = (20, 50, 100),
                   batch_size: int = 4096) -> dict:
    """Full-ranking metrics of a model on ``split`` of ``data`` (:func:`excluded_for` masked).

    ``model``: a :class:`hqgnn.models.ScoringModel`, ranked by its ``ranking_embeddings(adj)``
    (integer code levels for quantized models, so evaluation ranks as the integer index does);
    ``adj``: its graph (:func:`hqgnn.models.build_graph`). Returns ``{"recall@K", "ndcg@K",
    "precision@K", "hit_rate@K" for K in ks, "users"}``, averaged over the users with a
    ``split`` item.

    Raises :class:`~hqgnn.errors.NonFiniteScores` when the scores could be NaN or inf
    (:func:`hqgnn.finite.ranking_problem`): metrics of such a ranking would be meaningless;
    :class:`~hqgnn.errors.DataError` when no user has a ``split`` item.
    """
    from .finite import ranking_problem

    u, i, integer = model.ranking_embeddings(adj)
    problem = ranking_problem(u, i)
    if problem:
        raise NonFiniteScores(f"cannot rank the {split} split: {problem}")
    return evaluate_embeddings(u, i, data.split(split), excluded_for(split, data), ks=ks, batch_size=batch_size,
                               integer_scores=integer, split=split)


def seen_items(data) -> sp.csr_matrix:
    """The items each user has *seen*: training plus validation interactions, as a 0/1 CSR.

    Every interaction the model was fit on or selected on (early stopping) is seen. This
    is the one rule of ``exclude_seen`` everywhere: the exported artifact stores this
    matrix (:func:`hqgnn.export.export_run`), so the artifact engine, the CLI, the HTTP
    server and :meth:`hqgnn.api.Recommender.recommend` all leave out the same items.
    Test interactions are never seen (they are what the model is judged on).
    """
    seen = data.train.tocsr() if data.valid is None else (data.train + data.valid).tocsr()
    seen = seen.astype(np.float32)
    seen.sum_duplicates()
    seen.data[:] = 1.0
    seen.sort_indices()
    return seen


def metrics_from_hits(hits: torch.Tensor, n_relevant: torch.Tensor, ks: Sequence[int]) -> dict:
    """Sum over users of each metric, from a (users, max_k) 0/1 hit matrix in rank order."""
    hits = hits.float()
    max_k = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(2, max_k + 2, device=hits.device, dtype=torch.float32))
    out = {}
    for k in ks:
        kk = min(k, max_k)
        h = hits[:, :kk]
        n_hit = h.sum(1)
        dcg = (h * discounts[:kk]).sum(1)
        ideal_len = torch.clamp(n_relevant, max=kk).long()
        idcg_table = torch.cat([torch.zeros(1, device=hits.device), torch.cumsum(discounts[:kk], 0)])
        idcg = idcg_table[ideal_len]
        out[f"recall@{k}"] = (n_hit / n_relevant).sum().item()
        out[f"ndcg@{k}"] = (dcg / idcg).sum().item()
        out[f"precision@{k}"] = (n_hit / k).sum().item()
        out[f"hit_rate@{k}"] = (n_hit > 0).float().sum().item()
    return out


def rank_top_k(scores: torch.Tensor, exclude: Optional[torch.Tensor], k: int, integer_scores: bool = False) -> torch.Tensor:
    """Indices of the top-k columns per row, excluded columns never returned.

    With ``integer_scores`` (quantized models: integer inner products of the
    codes, held exactly in float32) ties are broken by the lower item index,
    through the int64 key score * n + (n - 1 - index): the order then does not
    depend on k or on the top-k kernel, and equals the retrieval engine's.
    Float scores rarely tie; their ties are left to torch.topk.
    """
    k = min(k, scores.shape[1])
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    if not integer_scores or k == 0:
        return torch.topk(scores, k=k, dim=1).indices
    return _integer_top_k(scores, k)


def _integer_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k columns of integer-valued float scores (excluded: -inf), ties by the lower column.

    The key ``score * n + (n - 1 - column)`` orders exactly, but an int64 key of the whole
    (batch, n) block costs ~4x the ranking itself (Gowalla, 4,096 users x 40,981 items, one
    thread: 4.0 s a batch against 1.5 s this way, the same order; ``benchmarks/eval_rank.py``). Only the columns scoring at least the
    k-th best float score can be in the top k, so the key is built for those alone: the
    k-th score's ties, usually a handful per row, are all that torch.topk may order
    arbitrarily."""
    n = scores.shape[1]
    threshold = torch.topk(scores, k=k, dim=1).values[:, -1:]
    rows, cols = (scores >= threshold).nonzero(as_tuple=True)  # row-major: columns ascend in a row
    counts = torch.bincount(rows, minlength=scores.shape[0])
    width = int(counts.max())
    pos = torch.arange(len(rows), device=scores.device) - (torch.cumsum(counts, 0) - counts)[rows]
    values = scores[rows, cols]
    lowest = torch.iinfo(torch.int64).min
    key = torch.where(torch.isinf(values), torch.full_like(cols, lowest),
                      values.to(torch.int64) * n + (n - 1 - cols))
    keys = torch.full((scores.shape[0], width), lowest, dtype=torch.int64, device=scores.device)
    columns = torch.zeros((scores.shape[0], width), dtype=torch.int64, device=scores.device)
    keys[rows, pos] = key
    columns[rows, pos] = cols
    return torch.gather(columns, 1, torch.topk(keys, k=k, dim=1).indices)


@torch.no_grad()
def evaluate_scores(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    target: sp.csr_matrix,
    exclude: Iterable[sp.csr_matrix],
    ks: Sequence[int] = (20, 50, 100),
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
    users: Optional[np.ndarray] = None,
    integer_scores: bool = False,
    split: str = "target",
) -> dict:
    """Average metrics over users with at least one target item.

    ``score_fn(user_index_tensor) -> (batch, n_items) scores``. ``exclude``
    holds the interaction matrices whose items are masked (training, and
    validation when ``target`` is the test split). Raises :class:`DataError` naming
    ``split`` when no user has a target item.
    """
    target = target.tocsr()
    exclude = [e.tocsr() for e in exclude]
    if users is None:
        users = np.flatnonzero(np.diff(target.indptr) > 0)
    if len(users) == 0:
        # an average over no users is undefined, not 0
        raise DataError(f"the {split} split has no user with a {split} item: no metric can be averaged")
    ks = sorted(set(int(k) for k in ks))
    max_k = max(ks)
    totals = {f"{m}@{k}": 0.0 for m in METRICS for k in ks}
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        idx = torch.from_numpy(batch.astype(np.int64)).to(device)
        scores = score_fn(idx)
        mask = exclusion_mask(exclude, batch, device)
        top = rank_top_k(scores, mask, max_k, integer_scores)
        relevant = csr_rows_to_dense_mask(target, batch, device)
        hits = torch.gather(relevant, 1, top)
        if mask is not None:
            # when max(K) exceeds the unmasked items, topk also returns masked ones: never count them
            hits &= ~torch.gather(mask, 1, top)
        n_rel = torch.from_numpy(np.diff(target.indptr)[batch].astype(np.float32)).to(device)
        for key, val in metrics_from_hits(hits, n_rel, ks).items():
            totals[key] += val
    n = max(len(users), 1)
    out = {key: val / n for key, val in totals.items()}
    out["users"] = int(len(users))
    return out


def evaluate_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    target: sp.csr_matrix,
    exclude: Iterable[sp.csr_matrix],
    ks: Sequence[int] = (20, 50, 100),
    batch_size: int = 4096,
    integer_scores: bool = False,
    split: str = "target",
) -> dict:
    """Full-ranking metrics when the score is the inner product of user and item embeddings.

    ``integer_scores``: the embeddings are integer code levels (quantized
    models), so scores are exact integers and ties break by item index."""
    item_t = item_emb.t().contiguous()
    return evaluate_scores(
        lambda idx: user_emb[idx] @ item_t,
        target,
        exclude,
        ks=ks,
        batch_size=batch_size,
        device=user_emb.device,
        integer_scores=integer_scores,
        split=split,
    )


def popularity_scores(train: sp.csr_matrix) -> np.ndarray:
    """Item training counts: the popularity baseline every learned model must beat."""
    return np.asarray(train.sum(axis=0)).ravel().astype(np.float32)


def evaluate_popularity(train: sp.csr_matrix, target: sp.csr_matrix, exclude, ks=(20, 50, 100)) -> dict:
    pop = torch.from_numpy(popularity_scores(train))
    return evaluate_scores(lambda idx: pop.expand(len(idx), -1), target, exclude, ks=ks)
