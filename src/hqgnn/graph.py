"""The user-item graph: symmetric normalised adjacency and LightGCN propagation.

``normalized_adjacency`` builds D^-1/2 A D^-1/2 of A = [[0, R], [R^T, 0]] in
one vectorised pass (no Python loop over edges) and returns a torch sparse CSR
tensor, the layout whose CPU matmul is multi-threaded.

``propagate`` runs E_final = sum_l alpha_l * A_hat^l E0 with a hand-written
backward: A_hat is symmetric, so the gradient is the same operator applied to
the incoming gradient. torch's generic sparse backward would transpose the
matrix on every step, which is about 3x slower on CPU (measured in
``benchmarks/foundation.py``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def normalized_adjacency_scipy(train: sp.csr_matrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 over n_users + n_items nodes as a scipy CSR matrix (float32)."""
    n_users, n_items = train.shape
    coo = train.tocoo()
    rows = np.concatenate([coo.row, coo.col + n_users]).astype(np.int64)
    cols = np.concatenate([coo.col + n_users, coo.row]).astype(np.int64)
    n = n_users + n_items
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    with np.errstate(divide="ignore"):
        dinv = np.where(deg > 0, deg ** -0.5, 0.0)
    vals = (dinv[rows] * dinv[cols]).astype(np.float32)
    adj = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    adj.sort_indices()
    return adj


def normalized_adjacency(train: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """D^-1/2 A D^-1/2 as a torch sparse CSR tensor on ``device``."""
    adj = normalized_adjacency_scipy(train)
    return torch.sparse_csr_tensor(
        torch.from_numpy(adj.indptr.astype(np.int64)),
        torch.from_numpy(adj.indices.astype(np.int64)),
        torch.from_numpy(adj.data),
        size=adj.shape,
        device=device,
    )


def _apply_operator(adj: torch.Tensor, x: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    out = x * weights[0]
    h = x
    for w in weights[1:]:
        h = torch.sparse.mm(adj, h)
        out = out + w * h
    return out


class _Propagate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, adj, weights):
        ctx.adj = adj
        ctx.weights = weights
        return _apply_operator(adj, x, weights)

    @staticmethod
    def backward(ctx, grad):
        # the operator sum_l w_l A^l is symmetric because A_hat is
        return _apply_operator(ctx.adj, grad.contiguous(), ctx.weights), None, None


def propagate(adj: torch.Tensor, x: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """sum_l weights[l] * adj^l @ x, differentiable w.r.t. ``x`` (adj must be symmetric)."""
    weights = tuple(float(w) for w in weights)
    if len(weights) == 1:
        return x * weights[0]
    return _Propagate.apply(x, adj, weights)
