r"""Ranking distillation from a trained float LightGCN run (the teacher) into a quantized model.

Settings ``distill_from`` (the teacher's run folder; null = off), ``distill_weight``,
``distill_top`` (R) and ``distill_decay`` (lambda); docs/method.md, 'Distillation'.

The form. Once, when training starts, every user's top-R items by the teacher's scores
<e_u, e_i>, the user's training items excluded, are listed (:func:`teacher_rankings`). Then
each BPR triple (u, i, j) of a batch gets one teacher item t = T[u, r], its rank r drawn with
probability w_r proportional to exp(-r / lambda), and the loss gains

.. math::
    \mathrm{distill\_weight} \cdot \frac{1}{B} \sum_{b} m_b\,
    \big(-\log \sigma(\hat y_{u t} - \hat y_{u j})\big)

on the student's quantized scores y_hat (the ones it ranks with), j the triple's negative and
m_b = 0 where the pair contradicts the teacher (j itself in T[u] at rank <= r) or T[u] has no
r-th item (a user with fewer than R unseen items).

Why this form:

* It is Ranking Distillation (J. Tang and K. Wang, *Ranking Distillation: Learning Compact
  Ranking Models With High Performance for Recommender System*, KDD 2018,
  https://arxiv.org/abs/1809.07428): the teacher's top-R unobserved items of each user as
  extra, position-weighted positives with w_r ~ exp(-r / lambda). RD scores them pointwise
  (-log sigma(y_ut)); here the pair is taken against the BPR negative because the student is
  trained with BPR and quantized scores carry no calibrated offset: only their order means
  something, and the pair only asks for the order the teacher gives.
* BiGeaR (Y. Chen et al., *Learning Binarized Graph Representations with Multi-faceted
  Quantization Reinforcement for Top-K Recommendation*, KDD 2022,
  https://arxiv.org/abs/2206.02115) distils the same kind of signal, the teacher's top-R
  items with RD's weights, per layer of a binarized student it trains alongside its teacher.
  hqgnn's codes quantize only the final embedding, so the term acts on the final scores, and
  the teacher is a finished run, so it costs nothing per step but a gather.
* Training items are excluded from the lists: they are already BPR's positives, and what
  retrieval ranks (with seen items masked) is the rest. Validation and test items are not
  excluded: the teacher never saw them, so its lists are a prediction, not a leak.
* Sampling the rank (instead of summing over all R) keeps the term at one extra item row a
  triple, the cost of a second BPR term; its expectation is RD's weighted sum.

Determinism (exact resume): the lists are recomputed from the teacher's ``model.pt`` in
float64 on the CPU whatever the device and threads, so a resumed run gets the same lists;
ranks are drawn from torch's global generator, which the trainer seeds per epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..graph import normalized_adjacency_scipy, propagate
from .base import gathered_bpr_loss
from .encoder import propagation_layers, propagation_weights

#: the methods of a float teacher run (``config.FULL_PRECISION_MODELS``; a test keeps them equal:
#: no module of hqgnn.models but the builder reads the config)
TEACHER_MODELS = ("lightgcn", "mf")

#: users scored at once when the teacher's lists are built (a block of users x all items, float64)
BLOCK_USERS = 1024


def _teacher_error(run_dir, why: str) -> ConfigError:
    return ConfigError(f"setting distill_from={str(run_dir)!r}: {why}")


def check_teacher_folder(run_dir) -> Path:
    """The teacher's ``model.pt`` path; raises :class:`~hqgnn.errors.ConfigError` (naming
    ``distill_from`` and the value) when ``run_dir`` is no folder or holds no ``model.pt``."""
    from ..runs import MODEL
    from ..storage import folder_problem

    path = Path(run_dir) / MODEL
    problem = folder_problem(run_dir)  # a mistyped path is not a run that lacks its model
    if problem is not None:
        raise _teacher_error(run_dir, f"{problem} (no trained model there: the folder of a trained lightgcn run)")
    if not path.is_file():
        raise _teacher_error(run_dir, f"no trained model there ({MODEL} missing; train a lightgcn run first)")
    return path


def teacher_embeddings(run_dir, data) -> tuple[torch.Tensor, torch.Tensor]:
    """The final (user, item) embeddings of the float run ``run_dir``, float64 on the CPU.

    Reads ``model.pt`` (:func:`hqgnn.runs.load_checkpoint`) and propagates its E^0 with the
    run's own depth and layer weights over the normalised graph of ``data.train`` (the
    teacher's own graph: its data must be ``data``). Shapes ``(n_users, d_t)``,
    ``(n_items, d_t)``; d_t, the teacher's dims, need not be the student's.

    Raises :class:`~hqgnn.errors.ConfigError` (one line naming ``distill_from`` and the value)
    when there is no such folder (``no such folder``), the folder has no readable ``model.pt``,
    the run is not a full-precision ``lightgcn`` run, or it was trained on other data (another
    fingerprint or other sizes)."""
    path = check_teacher_folder(run_dir)
    from ..runs import load_checkpoint

    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise _teacher_error(run_dir, f"unreadable teacher ({exc})") from None
    teacher_settings = state.get("config", {})
    if teacher_settings.get("model") not in TEACHER_MODELS:
        raise _teacher_error(run_dir, f"the teacher must be a float lightgcn run, got model={teacher_settings.get('model')!r}")
    sizes = (state.get("n_users"), state.get("n_items"))
    if sizes != (data.n_users, data.n_items):
        raise _teacher_error(run_dir, f"the teacher has {sizes[0]} users x {sizes[1]} items, this data "
                                      f"{data.n_users} x {data.n_items} (another data set)")
    if state.get("data_fingerprint") != data.fingerprint():
        raise _teacher_error(run_dir, f"the teacher was trained on other data (fingerprint "
                                      f"{state.get('data_fingerprint')}, this data {data.fingerprint()})")
    emb = state["model"].get("encoder.embedding")
    if emb is None or emb.dim() != 2 or emb.shape[0] != data.n_users + data.n_items:
        raise _teacher_error(run_dir, f"the teacher's E0 has shape {None if emb is None else tuple(emb.shape)}, "
                                      f"expected ({data.n_users + data.n_items}, d)")
    layers = propagation_layers(teacher_settings.get("model"), teacher_settings.get("layers", 0))
    weights = propagation_weights(teacher_settings.get("model"), layers, teacher_settings.get("layer_weights"))
    e0 = emb.to(torch.float64)
    if layers == 0:
        out = e0 * weights[0]
    else:
        adj = normalized_adjacency_scipy(data.train).astype(np.float64)
        adj_t = torch.sparse_csr_tensor(torch.from_numpy(adj.indptr.astype(np.int64)),
                                        torch.from_numpy(adj.indices.astype(np.int64)),
                                        torch.from_numpy(adj.data), size=adj.shape)
        with torch.no_grad():
            out = propagate(adj_t, e0, weights)
    return out[: data.n_users].contiguous(), out[data.n_users :].contiguous()


def top_items(user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix, top: int,
              block: int = BLOCK_USERS) -> torch.Tensor:
    """Every user's ``top`` items by <user_emb[u], item_emb[i]>, best first, training items excluded.

    Vectorised over blocks of ``block`` users (scores of a block against every item, the
    block's training items set to -inf, ``torch.topk``). Shapes: ``user_emb`` ``(n_users, d)``,
    ``item_emb`` ``(n_items, d)``, ``train`` ``(n_users, n_items)``; returns int64
    ``(n_users, top)``, -1 where a user has fewer than ``top`` items outside training.
    Raises :class:`ValueError` when ``top`` exceeds the number of items."""
    n_users, n_items = train.shape
    if top > n_items:
        raise ValueError(f"top={top} exceeds the {n_items} items")
    train = train.tocsr()
    indptr = torch.from_numpy(train.indptr.astype(np.int64))
    indices = torch.from_numpy(train.indices.astype(np.int64))
    out = torch.empty(n_users, top, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, n_users, block):
            stop = min(start + block, n_users)
            scores = user_emb[start:stop] @ item_emb.T
            lo, hi = int(indptr[start]), int(indptr[stop])
            rows = torch.repeat_interleave(torch.arange(stop - start), indptr[start + 1 : stop + 1] - indptr[start:stop])
            scores[rows, indices[lo:hi]] = -math.inf
            values, items = torch.topk(scores, top, dim=1)
            out[start:stop] = torch.where(torch.isinf(values) & (values < 0), -1, items)
    return out


def teacher_rankings(run_dir, data, top: int) -> torch.Tensor:
    """The teacher's lists: :func:`top_items` of :func:`teacher_embeddings` (int64
    ``(n_users, top)`` on the CPU). Raises :class:`~hqgnn.errors.ConfigError` as
    :func:`teacher_embeddings` does, and when ``top`` exceeds the number of items."""
    check_teacher_folder(run_dir)  # a missing teacher is the real problem, before a (default) distill_top
    if top > data.n_items:
        raise ConfigError(f"setting distill_top={top} is out of range: the data has {data.n_items} items")
    users, items = teacher_embeddings(run_dir, data)
    return top_items(users, items, data.train, top)


def rank_probabilities(top: int, decay: float) -> torch.Tensor:
    """RD's position weights as probabilities: w_r ~ exp(-r / decay), r = 0 .. top - 1 (float64, sums to 1)."""
    w = torch.exp(-torch.arange(top, dtype=torch.float64) / decay)
    return w / w.sum()


def draw_ranks(n: int, top: int, decay: float, generator: Optional[torch.Generator] = None,
               device=None) -> torch.Tensor:
    """``n`` ranks in 0 .. top - 1 with P(r) = :func:`rank_probabilities` (int64 ``(n,)``).

    The floor of an exponential variable of mean ``decay`` truncated to [0, top), drawn by
    inverse CDF from one uniform each (``generator``, or torch's global one): P(floor = r) is
    proportional to exp(-r / decay) exactly, at the cost of a log per draw."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    x = -decay * torch.log1p(-u * -math.expm1(-top / decay))
    return x.floor_().clamp_(0, top - 1).to(torch.int64)


def rank_lookup(lists: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's listed items sorted by id (empty slots as ``n_items``, last) and their
    ranks, both ``(n_users, R)``: what :func:`rank_of` binary-searches."""
    filled = torch.where(lists >= 0, lists, n_items)
    items, order = torch.sort(filled, dim=1)
    return items.contiguous(), order.contiguous()


def rank_of(lookup: tuple[torch.Tensor, torch.Tensor], users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The rank of ``items[b]`` in ``users[b]``'s teacher list, or R where it is not listed
    (``(B,)``): a binary search in each user's sorted row of :func:`rank_lookup`, vectorised
    over the batch (ceil(log2(R + 1)) gathers of B values; no (B, R) array)."""
    sorted_items, sorted_ranks = lookup
    top = sorted_items.shape[1]
    flat_items, base = sorted_items.reshape(-1), users * top
    lo = torch.zeros_like(users)
    hi = torch.full_like(users, top)
    for _ in range(max(1, math.ceil(math.log2(top + 1)))):  # index_select: ~10x faster than [] here
        mid = (lo + hi) >> 1
        right = (flat_items.index_select(0, base + mid.clamp_max(top - 1)) < items) & (mid < hi)
        lo = torch.where(right, mid + 1, lo)
        hi = torch.where(right, hi, mid)
    at = base + lo.clamp_max(top - 1)
    found = (lo < top) & (flat_items.index_select(0, at) == items)
    return torch.where(found, sorted_ranks.reshape(-1).index_select(0, at), top)


def draw_teacher_pairs(lists: torch.Tensor, users: torch.Tensor, neg: torch.Tensor, ranks: torch.Tensor,
                       lookup: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher item at rank ``ranks[b]`` of ``users[b]``'s list and whether its pair
    against ``neg[b]`` counts.

    ``lists`` ``(n_users, R)`` (:func:`teacher_rankings`); ``users``, ``neg``, ``ranks``
    ``(B,)`` (:func:`draw_ranks`); ``lookup``: :func:`rank_lookup` of ``lists`` (built here
    when None). Returns ``items`` ``(B,)`` (0 where the slot is empty) and the float mask
    ``(B,)``: 0 where the list has no item at that rank, or holds ``neg`` at a rank <= it."""
    if lookup is None:
        lookup = rank_lookup(lists, max(int(lists.max()), int(neg.max())) + 1)
    items = lists.reshape(-1).index_select(0, users * lists.shape[1] + ranks)
    valid = (items >= 0) & (rank_of(lookup, users, neg) > ranks)
    return items.clamp_min(0), valid.to(torch.float32)


def distillation_loss(user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor,
                      teacher_items: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1 / B) sum_b mask_b softplus(-(<u_b, t_b> - <u_b, j_b>)): BPR of the teacher's items over the
    negatives on the student's scoring tables ``(n_users, d)`` / ``(n_items, d)``; indices and
    ``mask`` ``(B,)``. Differentiable (once) in both tables; a scalar."""
    # the hand-written backward of hqgnn.models.base (rows gathered once, index_add_ scatters)
    return gathered_bpr_loss(user_table, item_table, users, teacher_items, neg, mask.to(user_table.dtype))


class RankingDistillation(nn.Module):
    """The distillation term of a model: ``weight`` times :func:`distillation_loss` on pairs
    drawn by :func:`draw_teacher_pairs` from the teacher's ``lists`` ``(n_users, R)`` over
    ``n_items`` items, ranks by :func:`draw_ranks` of ``decay`` (torch's global generator).

    The lists and the rank probabilities are non-persistent buffers: they move with the model
    (``.to(device)``) and stay out of its state dict, so ``model.pt`` keeps its layout and a
    distilled run loads, exports and serves as any other. ``neg`` of shape (B, n) uses its
    first column."""

    def __init__(self, lists: torch.Tensor, weight: float, decay: float, n_items: int):
        super().__init__()
        self.weight, self.decay = float(weight), float(decay)
        lists = lists.to(torch.int64)
        sorted_items, sorted_ranks = rank_lookup(lists, int(n_items))
        self.register_buffer("lists", lists, persistent=False)
        self.register_buffer("sorted_items", sorted_items, persistent=False)
        self.register_buffer("sorted_ranks", sorted_ranks, persistent=False)

    def forward(self, user_table, item_table, users, neg) -> torch.Tensor:
        neg = neg[:, 0] if neg.dim() == 2 else neg
        ranks = draw_ranks(len(users), self.lists.shape[1], self.decay, device=users.device)
        items, mask = draw_teacher_pairs(self.lists, users, neg, ranks, (self.sorted_items, self.sorted_ranks))
        return self.weight * distillation_loss(user_table, item_table, users, items, neg, mask)

    def extra_repr(self) -> str:
        return f"users={self.lists.shape[0]}, top={self.lists.shape[1]}, weight={self.weight:g}, decay={self.decay:g}"


def attach_distillation(model: nn.Module, teacher_run, data, weight: float, top: int = 50,
                        decay: float = 25.0) -> Optional[RankingDistillation]:
    """Give ``model`` (a trained quantized model) the distillation term of the teacher run
    ``teacher_run`` on ``data``, on the model's device, as ``model.distillation``; the model's
    loss adds it. ``teacher_run`` None or ``weight`` 0 detaches any term instead (training is
    then exactly the undistilled one). Returns the term (or None).

    Raises :class:`~hqgnn.errors.ConfigError` for a teacher that does not fit (see
    :func:`teacher_embeddings`) or a model without the hook."""
    if not teacher_run or weight == 0:
        if "distillation" in model._modules:
            del model._modules["distillation"]
        return None
    if not getattr(model, "quantized", False) or not hasattr(model, "quantize"):
        raise ConfigError(f"setting distill_from={str(teacher_run)!r} applies to trained quantized models "
                          f"(hqgnn, ste, hashgnn), not to {type(model).__name__}")
    term = RankingDistillation(teacher_rankings(teacher_run, data, top), weight, decay, data.n_items)
    model.distillation = term.to(next(model.parameters()).device)
    return term
