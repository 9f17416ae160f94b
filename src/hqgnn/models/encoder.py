"""LightGCN encoder (He et al., SIGIR 2020, arXiv:2002.02126); matrix factorisation is the L = 0 case.

The layer-0 table E0 (users then items) is the only weight. The final
embedding is E = sum_l alpha_l * A_hat^l E0 with alpha_l = 1 / (L + 1) unless
other layer weights are given (docs/method.md, 'Encoder').
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..graph import propagate


def propagation_layers(model: str, layers: int) -> int:
    """The layers a model's encoder propagates, from the settings as saved: ``mf`` (the old
    spelling of ``model: lightgcn, layers: 0``, still in version-1 run folders) propagates none."""
    return 0 if model == "mf" else layers


def uniform_layer_weights(layers: int) -> tuple[float, ...]:
    """LightGCN's default: alpha_l = 1 / (L + 1) for l = 0 ... L."""
    return tuple([1.0 / (layers + 1)] * (layers + 1))


def propagation_weights(model: str, layers: int, layer_weights: Optional[Sequence[float]] = None) -> tuple[float, ...]:
    """The weights alpha_0 ... alpha_L a model's encoder sums its layers with: the given ones,
    else uniform (``mf``: its one layer, weight 1)."""
    layers = propagation_layers(model, layers)
    if layer_weights is None or model == "mf":
        return uniform_layer_weights(layers)
    return tuple(float(w) for w in layer_weights)


class LightGCN(nn.Module):
    r"""The LightGCN encoder: one embedding table E^0, propagated without weights or nonlinearity.

    He et al., *LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation*, SIGIR 2020, https://arxiv.org/abs/2002.02126.

    .. math::
        E^{(l+1)} = \hat A E^{(l)}, \qquad
        E = \sum_{l=0}^{L} \alpha_l E^{(l)}, \qquad
        \hat A = D^{-1/2} A D^{-1/2},\; A = \begin{bmatrix} 0 & R \\ R^T & 0 \end{bmatrix}

    with R the (users x items) training interactions and alpha_l = 1 / (L + 1) by default.
    ``layers=0`` is matrix factorisation: E = E^0 (alpha_0 = 1).

    Args:
        n_users, n_items: table sizes; rows 0 .. n_users - 1 are users, then items.
        dim: embedding size d.
        layers: propagation depth L >= 0.
        layer_weights: alpha_0 .. alpha_L (L + 1 numbers); uniform when None.
        init_std: E^0 is drawn from N(0, init_std^2).
        generator: the random generator of the initialisation (torch's global one when None).

    Shapes:
        - ``embedding`` (the weight E^0): ``(n_users + n_items, dim)``
        - input ``adj``: sparse ``(n_users + n_items, n_users + n_items)`` (:func:`hqgnn.graph.normalized_adjacency`),
          or None when ``layers == 0``
        - output: ``(n_users, dim)``, ``(n_items, dim)``

    Raises:
        ValueError: ``layer_weights`` does not hold ``layers + 1`` numbers.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        layers: int = 3,
        layer_weights: Optional[Sequence[float]] = None,
        init_std: float = 0.1,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.n_users, self.n_items, self.dim, self.layers = n_users, n_items, dim, layers
        if layer_weights is not None and len(layer_weights) != layers + 1:
            raise ValueError(f"layer_weights needs {layers + 1} values, got {len(layer_weights)}")
        self.layer_weights = (
            uniform_layer_weights(layers) if layer_weights is None else tuple(float(w) for w in layer_weights)
        )
        self.embedding = nn.Parameter(torch.empty(n_users + n_items, dim))
        nn.init.normal_(self.embedding, std=init_std, generator=generator)

    def forward(self, adj: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) embeddings after propagation over ``adj``."""
        if self.layers == 0 or adj is None:
            out = self.embedding * self.layer_weights[0]
        else:
            out = propagate(adj, self.embedding, self.layer_weights)
        return out[: self.n_users], out[self.n_users :]

    def layer_embeddings(self, adj: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """The unweighted layers E^0 ... E^L (users then items in each), differentiable
        w.r.t. E^0: for models that code each layer on its own (BiGeaR)."""
        out = [self.embedding]
        for _ in range(self.layers if adj is not None else 0):
            out.append(propagate(adj, out[-1], (0.0, 1.0)))
        return out

    def l2_penalty(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """LightGCN's penalty: half the squared norm of the batch's layer-0 rows (users, positives,
        negatives, each row as often as it occurs), divided by the batch size.

        ``neg`` of shape (B, n) stands for the B n triples (u, i, j_k): users and positives
        count n times each, as in the loss (:func:`~hqgnn.models.base.gathered_bpr_loss`).
        For batches with more rows than the table it is computed from occurrence
        counts over the whole table, which reads less memory than gathering."""
        n_rows = self.embedding.shape[0]
        repeat = neg.shape[1] if neg.dim() == 2 else 1
        neg = neg.reshape(-1)
        if len(users) + len(pos) + len(neg) < n_rows:
            u0, p0 = self.layer0(users, pos)
            n0 = self.embedding[self.n_users + neg]
            total = repeat * (u0.square().sum() + p0.square().sum()) + n0.square().sum()
        else:
            counts = torch.bincount(torch.cat([users, pos + self.n_users]), minlength=n_rows) * repeat
            counts += torch.bincount(neg + self.n_users, minlength=n_rows)
            total = torch.dot(counts.to(self.embedding.dtype), self.embedding.square().sum(1))
        return 0.5 * total / (len(users) * repeat)

    def layer0(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 rows of the given users and items (for the L2 penalty)."""
        return self.embedding[users], self.embedding[self.n_users + items]
