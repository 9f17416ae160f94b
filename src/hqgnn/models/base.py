"""What every trainable recommender shares: the LightGCN encoder and the BPR loss.

BPR: Rendle et al., *BPR: Bayesian Personalized Ranking from Implicit Feedback*, UAI 2009,
https://arxiv.org/abs/1205.2618 (docs/method.md, 'Training').

A model turns the encoder's final embeddings into *scoring embeddings*
(quantized and dequantized for the quantized models), whose inner product is
the score used in training, in evaluation and, as integer codes, in retrieval.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import LightGCN


def bpr_loss(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(<u, i> - <u, j>) over the batch."""
    diff = (user * pos).sum(-1) - (user * neg).sum(-1)
    return F.softplus(-diff).mean()


class _GatheredBPR(torch.autograd.Function):
    """BPR over rows gathered from the (user, item) tables, with a hand-written backward.

    Autograd's composition of the same loss keeps six batch-sized tensors and
    scatters the row gradients back three times through ``index_put``; at
    the large batches that make full-graph training cheap the step is bound
    by memory traffic over those tensors. This version keeps two, reuses them
    in place and scatters with ``index_add_``: twice as fast on a 2-core CPU
    for Gowalla batches, the same value and gradients (tested). It is
    differentiable once; Hutchinson's double back-propagation uses
    :func:`bpr_loss`."""

    @staticmethod
    def forward(ctx, user_table, item_table, users, pos, neg, weight=None):
        u = user_table.index_select(0, users)
        d = item_table.index_select(0, pos).sub_(item_table.index_select(0, neg))
        x = torch.linalg.vecdot(u, d)
        ctx.save_for_backward(u, d, x, users, pos, neg, weight)
        ctx.table_shapes = (user_table.shape, item_table.shape)
        if weight is None:
            return F.softplus(-x).mean()
        return (F.softplus(-x) * weight).sum() / max(len(x), 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        u, d, x, users, pos, neg, weight = ctx.saved_tensors
        user_shape, item_shape = ctx.table_shapes
        # d loss / d x = -w sigmoid(-x) / B
        g = torch.sigmoid(-x)
        if weight is not None:
            g.mul_(weight)
        g = g.mul_(grad_out * (-1.0 / max(len(x), 1))).unsqueeze(1)
        grad_users = grad_items = None
        if ctx.needs_input_grad[0]:
            grad_users = u.new_zeros(user_shape).index_add_(0, users, d.mul(g))
        if ctx.needs_input_grad[1]:
            gi = u.mul_(g)
            grad_items = u.new_zeros(item_shape).index_add_(0, pos, gi).index_add_(0, neg, gi, alpha=-1)
        return grad_users, grad_items, None, None, None, None


class _GatheredBPRCandidates(torch.autograd.Function):
    """BPR over ``n`` negatives per positive (``neg`` of shape (B, n)): the mean over the B n
    pairs (u, i, j_k), without repeating the user and positive rows n times.

    Gathering (and later scattering) the user and positive rows once per positive
    instead of once per pair moves half the rows of the repeated form: with four
    negatives, a Gowalla epoch runs in about 3.5 s instead of 5.3 s on a 2-core CPU
    (``benchmarks/foundation.py``)."""

    @staticmethod
    def forward(ctx, user_table, item_table, users, pos, neg):
        b, n = neg.shape
        u = user_table.index_select(0, users)
        p = item_table.index_select(0, pos)
        cand = item_table.index_select(0, neg.reshape(-1)).view(b, n, -1)
        # x[b, k] = <u_b, p_b> - <u_b, j_bk>
        x = torch.linalg.vecdot(u, p).unsqueeze(1) - torch.bmm(cand, u.unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(u, p, cand, x, users, pos, neg)
        ctx.table_shapes = (user_table.shape, item_table.shape)
        return F.softplus(-x).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        u, p, cand, x, users, pos, neg = ctx.saved_tensors
        user_shape, item_shape = ctx.table_shapes
        g = torch.sigmoid(-x).mul_(grad_out * (-1.0 / x.numel()))  # d loss / d x, (B, n)
        g_sum = g.sum(1, keepdim=True)
        grad_users = grad_items = None
        if ctx.needs_input_grad[0]:
            gu = p.mul(g_sum).sub_(torch.bmm(g.unsqueeze(1), cand).squeeze(1))
            grad_users = u.new_zeros(user_shape).index_add_(0, users, gu)
        if ctx.needs_input_grad[1]:
            g_cand = torch.mul(g.unsqueeze(2), u.unsqueeze(1), out=cand).view(-1, u.shape[1])  # reuses the buffer
            grad_items = u.new_zeros(item_shape).index_add_(0, pos, u.mul(g_sum))
            grad_items.index_add_(0, neg.reshape(-1), g_cand, alpha=-1)
        return grad_users, grad_items, None, None, None


def gathered_bpr_loss(user_table, item_table, users, pos, neg, weight=None) -> torch.Tensor:
    """``bpr_loss(user_table[users], item_table[pos], item_table[neg])``, computed faster.

    ``neg`` of shape (B, n) holds n negatives per positive: the loss is then the mean
    over the B n pairs, as if users and positives were repeated n times. ``weight`` ``(B,)``
    (one negative per positive only) weighs each pair: ``sum(w softplus(-x)) / B``."""
    if neg.dim() == 2:
        if weight is not None:
            raise ValueError("weight applies to one negative per positive (neg of shape (B,))")
        return _GatheredBPRCandidates.apply(user_table, item_table, users, pos, neg)
    return _GatheredBPR.apply(user_table, item_table, users, pos, neg, weight)


def choose_negatives(user_table, item_table, users, pos, neg, mode: str = "uniform"):
    """The (users, pos, neg) triples the BPR loss runs on, from ``neg`` of shape (B,) or (B, n).

    One negative per positive passes through. With ``n`` candidates per positive,
    ``uniform`` keeps them all as a (B, n) array (the loss averages over the n pairs of
    each positive: :func:`gathered_bpr_loss`) and
    ``hard`` keeps the candidate the model currently scores highest (dynamic negative
    sampling, Zhang et al., SIGIR 2013), chosen without gradient."""
    if neg.dim() == 1:
        return users, pos, neg
    if mode == "hard":
        with torch.no_grad():
            scores = torch.einsum("bd,bnd->bn", user_table.detach()[users], item_table.detach()[neg])
            neg = neg.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
        return users, pos, neg
    return users, pos, neg


class ScoringModel(nn.Module):
    """``lightgcn``: full-precision scores <e_u, e_i> of the encoder's final embeddings, trained with
    BPR (matrix factorisation when the encoder has 0 layers). The base class of every method:
    the quantized ones override :meth:`scoring_embeddings` (and export codes).

    Args: ``encoder`` (:class:`~hqgnn.models.encoder.LightGCN`), ``negative_sampling``
    (``"uniform"`` | ``"hard"``, :func:`choose_negatives`).

    The graph ``adj`` every method takes is the encoder's (:func:`hqgnn.models.build_graph`;
    None for 0 layers). Shapes: scoring embeddings ``(n_users, d')`` and ``(n_items, d')``.
    """

    quantized = False
    uses_hessian = False

    def __init__(self, encoder: LightGCN, negative_sampling: str = "uniform"):
        super().__init__()
        self.encoder = encoder
        self.negative_sampling = negative_sampling

    @property
    def n_users(self) -> int:
        return self.encoder.n_users

    @property
    def n_items(self) -> int:
        return self.encoder.n_items

    # -- training
    def scoring_embeddings(self, adj: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) embeddings whose inner products are the scores, with gradients."""
        return self.encoder(adj)

    def loss(self, adj, users, pos, neg) -> tuple[torch.Tensor, dict]:
        """BPR loss of a batch and ``{"triples": (users, pos, neg)}``, the triples it ran on
        (``neg`` may hold several candidates per positive: :func:`choose_negatives`)."""
        u_all, i_all = self.scoring_embeddings(adj)
        users, pos, neg = choose_negatives(u_all, i_all, users, pos, neg, self.negative_sampling)
        return gathered_bpr_loss(u_all, i_all, users, pos, neg), {"triples": (users, pos, neg)}

    def on_epoch_start(self, epoch: int, context) -> dict:
        """Hook for per-epoch schedules (GSTE delta, HashGNN's soft probability); returns log entries."""
        return {}

    # -- evaluation / export
    @torch.no_grad()
    def eval_embeddings(self, adj: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        was = self.training
        self.eval()
        try:
            u, i = self.scoring_embeddings(adj)
        finally:
            self.train(was)
        return u.detach(), i.detach()

    def ranking_embeddings(self, adj) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(users, items, integer): embeddings whose inner products rank items like the scores do.

        Quantized models return their integer code levels (``integer`` True),
        so evaluation ranks exactly as the integer retrieval engine does."""
        u, i = self.eval_embeddings(adj)
        return u, i, False

    def describe(self) -> dict:
        d, n = self.encoder.dim, self.n_users + self.n_items
        return {"bits": 32, "dim": d, "bytes_per_user": 4 * d, "bytes_per_item": 4 * d, "total_bytes": 4 * d * n,
                "float32_bytes": 4 * d * n, "compression_ratio": 1.0}
