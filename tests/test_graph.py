"""Normalised adjacency and LightGCN propagation against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hqgnn.graph import normalized_adjacency, normalized_adjacency_scipy, propagate
from hqgnn.models.encoder import LightGCN


def random_bipartite(seed: int = 0, n_users: int = 7, n_items: int = 6) -> sp.csr_matrix:
    """Random binary user x item matrix with an isolated user (row 2) and an isolated item (column 4)."""
    rng = np.random.default_rng(seed)
    r = rng.random((n_users, n_items)) < 0.45
    r[2, :] = False
    r[:, 4] = False
    r[0, 0] = r[1, 1] = True  # not empty
    return sp.csr_matrix(r.astype(np.float32))


def dense_reference(train: sp.csr_matrix) -> np.ndarray:
    """D^-1/2 A D^-1/2 of A = [[0, R], [R^T, 0]], isolated nodes (degree 0) giving zero rows."""
    r = train.toarray().astype(np.float64)
    n_users, n_items = r.shape
    a = np.zeros((n_users + n_items,) * 2)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    deg = a.sum(1)
    dinv = np.zeros_like(deg)
    dinv[deg > 0] = deg[deg > 0] ** -0.5
    return dinv[:, None] * a * dinv[None, :]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalized_adjacency_matches_dense_reference(seed):
    train = random_bipartite(seed)
    expected = dense_reference(train)
    n_users = train.shape[0]
    # the isolated user and item have degree 0: their rows and columns are all zero
    assert not expected[2].any() and not expected[n_users + 4].any()
    got_scipy = normalized_adjacency_scipy(train).toarray()
    got_torch = normalized_adjacency(train).to_dense().numpy()
    assert np.isfinite(got_torch).all()
    np.testing.assert_allclose(got_scipy, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_torch, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got_torch, got_torch.T)  # symmetric


def test_normalized_adjacency_hand_example():
    # one user with two items: degrees user 2, items 1 and 1 -> edge weight 1/sqrt(2 * 1)
    train = sp.csr_matrix(np.array([[1.0, 1.0]], dtype=np.float32))
    got = normalized_adjacency(train).to_dense().numpy()
    w = 1 / np.sqrt(2)
    expected = np.array([[0, w, w], [w, 0, 0], [w, 0, 0]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def dense_propagate(a: torch.Tensor, x: torch.Tensor, weights) -> torch.Tensor:
    """sum_l w_l A^l x with explicit dense matrix powers."""
    out = torch.zeros_like(x)
    power = torch.eye(a.shape[0], dtype=a.dtype)
    for w in weights:
        out = out + w * (power @ x)
        power = power @ a
    return out


@pytest.mark.parametrize("weights", [(0.25, 0.25, 0.25, 0.25), (1.0, 0.5), (0.1, 0.2, 0.3), (0.7,)])
def test_propagate_forward_matches_dense_formula(weights):
    train = random_bipartite(3)
    adj = normalized_adjacency(train)
    a = torch.from_numpy(dense_reference(train)).float()
    x = torch.randn(a.shape[0], 5, generator=torch.Generator().manual_seed(0))
    got = propagate(adj, x, weights)
    torch.testing.assert_close(got, dense_propagate(a, x, weights), rtol=1e-5, atol=1e-6)


def test_propagate_gradient_matches_autograd_through_dense_formula():
    train = random_bipartite(4)
    adj = normalized_adjacency(train)
    a = torch.from_numpy(dense_reference(train)).float()
    weights = (0.4, 0.3, 0.2, 0.1)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(a.shape[0], 4, generator=g)
    upstream = torch.randn(a.shape[0], 4, generator=g)  # a non-trivial incoming gradient

    x_custom = x0.clone().requires_grad_(True)
    (propagate(adj, x_custom, weights) * upstream).sum().backward()
    x_dense = x0.clone().requires_grad_(True)
    (dense_propagate(a, x_dense, weights) * upstream).sum().backward()
    torch.testing.assert_close(x_custom.grad, x_dense.grad, rtol=1e-5, atol=1e-6)


def test_propagate_gradcheck_double():
    """Finite differences against the hand-written backward, in float64."""
    adj64 = normalized_adjacency_scipy(random_bipartite(5)).astype(np.float64)
    adj = torch.sparse_csr_tensor(
        torch.from_numpy(adj64.indptr.astype(np.int64)),
        torch.from_numpy(adj64.indices.astype(np.int64)),
        torch.from_numpy(adj64.data),
        size=adj64.shape,
    )
    x = torch.randn(adj64.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: propagate(adj, t, (0.5, 0.3, 0.2)), (x,), eps=1e-6, atol=1e-6)


def test_lightgcn_forward_matches_dense_formula():
    train = random_bipartite(6)
    n_users, n_items = train.shape
    adj = normalized_adjacency(train)
    a = torch.from_numpy(dense_reference(train)).float()
    torch.manual_seed(0)
    model = LightGCN(n_users, n_items, dim=8, layers=3)
    users, items = model(adj)
    expected = dense_propagate(a, model.embedding.detach(), [0.25] * 4)
    torch.testing.assert_close(users.detach(), expected[:n_users], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items.detach(), expected[n_users:], rtol=1e-5, atol=1e-6)


def test_lightgcn_with_zero_layers_is_matrix_factorisation():
    train = random_bipartite(7)
    n_users, n_items = train.shape
    adj = normalized_adjacency(train)
    torch.manual_seed(0)
    model = LightGCN(n_users, n_items, dim=8, layers=0, layer_weights=[0.5])
    e0 = model.embedding.detach()
    for graph in (adj, None):  # the graph is ignored without layers
        users, items = model(graph)
        torch.testing.assert_close(users, e0[:n_users] * 0.5, rtol=0, atol=0)
        torch.testing.assert_close(items, e0[n_users:] * 0.5, rtol=0, atol=0)
    # default weight for L = 0 is 1 / (0 + 1): the output is E0 itself
    mf = LightGCN(n_users, n_items, dim=8, layers=0)
    u, i = mf(adj)
    assert torch.equal(torch.cat([u, i]), mf.embedding)


def test_lightgcn_rejects_wrong_number_of_layer_weights():
    with pytest.raises(ValueError, match="layer_weights"):
        LightGCN(3, 3, dim=2, layers=2, layer_weights=[0.5, 0.5])


@pytest.mark.parametrize(
    "layers, weights, h_minus_one",
    [(1, None, 0.0), (3, None, 0.0), (2, [0.25, 0.5, 0.25], 0.0), (2, None, 1 / 3), (4, None, 0.2), (0, None, 1.0)],
)
def test_degree_weighted_user_and_item_sums_differ_by_filter_at_minus_one(layers, weights, h_minus_one):
    """On a bipartite graph w = D^1/2 (1 on users, -1 on items) is an eigenvector of A_hat with
    eigenvalue -1, so w^T E = h(-1) w^T E0 for E = sum_l alpha_l A_hat^l E0, h(x) = sum_l alpha_l x^l.
    With h(-1) = 0 (uniform weights and odd L) the sqrt-degree-weighted sums of the final user
    and item embeddings are equal whatever E0 is: the constraint behind the 1-bit layer-filter
    finding (benchmarks/code_diagnostics.py)."""
    train = random_bipartite(3)
    n_users, n_items = train.shape
    adj = normalized_adjacency(train)
    torch.manual_seed(0)
    model = LightGCN(n_users, n_items, dim=5, layers=layers, layer_weights=weights)
    users, items = model(adj)
    sqrt_user_deg = torch.from_numpy(np.sqrt(np.asarray(train.sum(1)).ravel())).float()
    sqrt_item_deg = torch.from_numpy(np.sqrt(np.asarray(train.sum(0)).ravel())).float()
    gap = sqrt_user_deg @ users.detach() - sqrt_item_deg @ items.detach()
    e0 = model.embedding.detach()
    gap0 = sqrt_user_deg @ e0[:n_users] - sqrt_item_deg @ e0[n_users:]
    torch.testing.assert_close(gap, h_minus_one * gap0, rtol=1e-4, atol=1e-5)
    assert gap0.abs().max() > 0.1  # the identity is not trivially 0 = 0
