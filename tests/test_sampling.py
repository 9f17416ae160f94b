"""BPR triple sampler: valid negatives, every interaction once per epoch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hqgnn.errors import DataError
from hqgnn.sampling import TripleSampler


@st.composite
def train_matrices(draw):
    """Small random binary matrices; some rows dense with a single free item, none full."""
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(2, 15))
    seed = draw(st.integers(0, 2**31))
    density = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(seed)
    m = rng.random((n_users, n_items)) < density
    n_dense = draw(st.integers(0, n_users))
    for u in range(n_dense):  # all items but one
        m[u, :] = True
        m[u, rng.integers(n_items)] = False
    full = m.all(axis=1)
    m[full, rng.integers(n_items)] = False
    m[0, 0] = True  # at least one interaction
    if m[0].all():
        m[0, 1] = False
    return sp.csr_matrix(m.astype(np.float32))


@settings(max_examples=80, deadline=None)
@given(train=train_matrices(), seed=st.integers(0, 10_000))
def test_negatives_are_never_training_items_and_epoch_covers_each_interaction_once(train, seed):
    dense = train.toarray() > 0
    sampler = TripleSampler(train)
    users, pos, neg = sampler.epoch(np.random.default_rng(seed))
    assert len(users) == len(pos) == len(neg) == train.nnz
    # every (user, positive) is a training interaction, and each appears exactly once
    assert Counter(zip(users.tolist(), pos.tolist())) == Counter(zip(*np.nonzero(dense)))
    # negatives: in range and never one of the user's training items
    assert ((neg >= 0) & (neg < train.shape[1])).all()
    assert not dense[users, neg].any()


def test_dense_row_gets_its_only_free_item():
    m = np.ones((3, 6), dtype=bool)
    m[0, 4] = False  # user 0: only item 4 is free
    m[1, 0] = False  # user 1: only item 0 is free
    m[2, :] = False
    m[2, 5] = True  # user 2: everything but item 5 is free
    sampler = TripleSampler(sp.csr_matrix(m.astype(np.float32)))
    users, _, neg = sampler.epoch(np.random.default_rng(0))
    assert (neg[users == 0] == 4).all() and (users == 0).sum() == 5
    assert (neg[users == 1] == 0).all()
    assert (neg[users == 2] != 5).all()


def test_negatives_are_roughly_uniform_over_free_items():
    m = np.zeros((1, 5), dtype=np.float32)
    m[0, 2] = 1
    sampler = TripleSampler(sp.csr_matrix(m))
    neg = sampler.negatives(np.zeros(40_000, dtype=np.int64), np.random.default_rng(1))
    freq = np.bincount(neg, minlength=5) / len(neg)
    assert freq[2] == 0
    np.testing.assert_allclose(freq[[0, 1, 3, 4]], 0.25, atol=0.01)


def test_is_positive_against_dense_lookup():
    rng = np.random.default_rng(3)
    dense = rng.random((30, 20)) < 0.3
    sampler = TripleSampler(sp.csr_matrix(dense.astype(np.float32)))
    u, i = np.meshgrid(np.arange(30), np.arange(20), indexing="ij")
    np.testing.assert_array_equal(sampler.is_positive(u.ravel(), i.ravel()), dense.ravel())


def test_unsorted_csr_indices_still_work():
    # a CSR matrix whose column indices are not sorted within rows
    m = sp.csr_matrix((np.ones(4, dtype=np.float32), np.array([3, 0, 2, 1]), np.array([0, 2, 4])), shape=(2, 5))
    assert not m.has_sorted_indices
    sampler = TripleSampler(m)
    users, _, neg = sampler.epoch(np.random.default_rng(0))
    dense = m.toarray() > 0
    assert not dense[users, neg].any()


def test_epoch_is_reproducible_from_the_rng():
    dense = np.random.default_rng(0).random((20, 15)) < 0.3
    sampler = TripleSampler(sp.csr_matrix(dense.astype(np.float32)))
    a = sampler.epoch(np.random.default_rng([7, 3]))
    b = sampler.epoch(np.random.default_rng([7, 3]))
    c = sampler.epoch(np.random.default_rng([7, 4]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_user_with_every_item_raises():
    m = np.zeros((3, 4), dtype=np.float32)
    m[0, :2] = 1
    m[2, :] = 1
    with pytest.raises(DataError, match="user index 2 has every item"):
        TripleSampler(sp.csr_matrix(m))


def test_several_negative_candidates_per_positive_avoid_training_items():
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    train = sp.random(30, 12, density=0.4, random_state=1, format="csr")
    train.data[:] = 1
    sampler = TripleSampler(train)
    u, p, n = sampler.epoch(rng, 5)
    assert n.shape == (train.nnz, 5)
    dense = train.toarray() > 0
    assert dense[u, p].all()
    assert not dense[np.repeat(u, 5), n.reshape(-1)].any()


def test_choose_negatives_hard_picks_the_top_scored_candidate():
    import torch

    from hqgnn.models.base import choose_negatives

    U = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    I = torch.tensor([[0.1, 0.0], [0.9, 0.2], [0.5, 3.0], [0.0, -1.0]])
    users, pos = torch.tensor([0, 1]), torch.tensor([0, 0])
    cand = torch.tensor([[3, 1, 2], [1, 3, 2]])
    _, _, hard = choose_negatives(U, I, users, pos, cand, "hard")
    assert hard.tolist() == [1, 2]  # user 0 scores item 1 highest (0.9), user 1 item 2 (3.0)
    u, p, uni = choose_negatives(U, I, users, pos, cand, "uniform")
    # uniform keeps every candidate: the loss averages over the pairs of each positive
    assert u.tolist() == [0, 1] and p.tolist() == [0, 0] and uni.tolist() == cand.tolist()


@settings(max_examples=40, deadline=None)
@given(train=train_matrices(), seed=st.integers(0, 10_000))
def test_user_uniform_positives_are_training_items_of_their_user(train, seed):
    dense = train.toarray() > 0
    users, pos, neg = TripleSampler(train).epoch(np.random.default_rng(seed), positives="users")
    assert len(users) == train.nnz
    assert dense[users, pos].all() and not dense[users, neg].any()
    assert set(users.tolist()) <= set(np.flatnonzero(dense.any(axis=1)).tolist())  # users without items never drawn


def test_user_uniform_sampling_weighs_users_equally():
    """User 0 holds 300 of 400 interactions: a quarter of the draws by interaction, 1/101 by user."""
    rows = np.concatenate([np.zeros(300, int), np.arange(1, 101)])
    cols = np.concatenate([np.arange(300), np.arange(100) % 300])
    train = sp.csr_matrix((np.ones(400, np.float32), (rows, cols)), shape=(101, 400))
    sampler = TripleSampler(train)
    rng = np.random.default_rng(0)
    by_user = np.concatenate([sampler.epoch(rng, positives="users")[0] for _ in range(50)])
    by_pair = np.concatenate([sampler.epoch(rng)[0] for _ in range(50)])
    assert abs(np.mean(by_pair == 0) - 0.75) < 0.01
    assert abs(np.mean(by_user == 0) - 1 / 101) < 0.004
    # user 0's positives: drawn uniformly over its 300 items (about 2,000 draws cover them all)
    draws = [sampler.epoch(rng, positives="users") for _ in range(500)]
    items0 = np.concatenate([p[u == 0] for u, p, _ in draws])
    assert items0.max() < 300 and len(np.unique(items0)) >= 295
    with pytest.raises(ValueError, match="positives"):
        sampler.epoch(rng, positives="items")
