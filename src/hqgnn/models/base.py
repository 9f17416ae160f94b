"""What every trainable recommender shares: the LightGCN encoder and the BPR loss.

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


class ScoringModel(nn.Module):
    """Base class: full-precision LightGCN scoring (subclasses quantize)."""

    quantized = False

    def __init__(self, encoder: LightGCN):
        super().__init__()
        self.encoder = encoder

    @property
    def n_users(self) -> int:
        return self.encoder.n_users

    @property
    def n_items(self) -> int:
        return self.encoder.n_items

    def prepare(self, adj, data, device) -> None:
        """Called once before training with the graph and data (calibration, post-hoc fitting)."""

    # -- training
    def scoring_embeddings(self, adj: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) embeddings whose inner products are the scores, with gradients."""
        return self.encoder(adj)

    def loss(self, adj, users, pos, neg) -> tuple[torch.Tensor, dict]:
        u_all, i_all = self.scoring_embeddings(adj)
        return bpr_loss(u_all[users], i_all[pos], i_all[neg]), {}

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
