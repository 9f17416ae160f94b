"""Full-ranking metrics against hand-computed numbers and a brute-force numpy reference."""

from __future__ import annotations

from math import log2

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hqgnn.data import InteractionData
from hqgnn.errors import DataError
from hqgnn.evaluation import (
    evaluate_embeddings,
    evaluate_popularity,
    evaluate_scores,
    excluded_for,
    popularity_scores,
    rank_top_k,
)


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary users x items matrix from per-user item lists."""
    m = np.zeros((len(rows), n_items), dtype=np.float32)
    for u, items in enumerate(rows):
        m[u, items] = 1.0
    return sp.csr_matrix(m)


def table_scores(table: np.ndarray):
    t = torch.as_tensor(table, dtype=torch.float32)
    return lambda idx: t[idx]


# ---------------------------------------------------------------- hand-computed example
# 4 users, 6 items. Scores rank the items 0,1,2,3,4,5 for users 0, 2 and 3, and 5,4,3,2,1,0 for user 1.
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    ]
)
TRAIN = csr([[0], [4], [3], [0]], 6)
TEST = csr([[2, 5], [5], [0, 1, 4, 5], []], 6)  # user 3 has no test item: skipped

# After masking the training item, the rankings are
#   user 0: 1 2 3 4 5    (test {2, 5})        -> hit at rank 2
#   user 1: 5 3 2 1 0    (test {5})           -> hit at rank 1
#   user 2: 0 1 2 4 5    (test {0, 1, 4, 5})  -> hits at ranks 1, 2
# DCG = sum over hits of 1 / log2(rank + 1); ideal DCG over min(K, |test|) positions.
D2 = 1 / log2(3)  # discount of rank 2 = 0.6309
D3 = 1 / log2(4)  # discount of rank 3 = 0.5
EXPECTED = {
    # K = 1: user 0 misses (0/2), user 1 hits (1/1), user 2 hits (1/4)
    "recall@1": (0 + 1 + 1 / 4) / 3,  # 0.41667
    "precision@1": (0 + 1 + 1) / 3,  # 0.66667
    "hit_rate@1": (0 + 1 + 1) / 3,
    "ndcg@1": (0 + 1 / 1 + 1 / 1) / 3,  # ideal DCG at K=1 is 1 for everybody
    # K = 3: tops are [1 2 3], [5 3 2], [0 1 2]
    "recall@3": (1 / 2 + 1 / 1 + 2 / 4) / 3,  # 0.66667
    "precision@3": (1 / 3 + 1 / 3 + 2 / 3) / 3,  # 0.44444
    "hit_rate@3": (1 + 1 + 1) / 3,
    # user 0: DCG = D2, ideal over min(3, 2) = 2 hits: 1 + D2      -> 0.38685
    # user 1: DCG = 1,  ideal over min(3, 1) = 1 hit:  1           -> 1
    # user 2: DCG = 1 + D2, ideal over min(3, 4) = 3: 1 + D2 + D3  -> 0.76536
    "ndcg@3": (D2 / (1 + D2) + 1 + (1 + D2) / (1 + D2 + D3)) / 3,  # 0.71740
}


def test_hand_computed_metrics():
    out = evaluate_scores(table_scores(SCORES), TEST, [TRAIN], ks=[3, 1])
    assert out["users"] == 3
    assert set(out) == set(EXPECTED) | {"users"}
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key
    # the decimal values, written out, as a guard against a mistake in the expressions above
    assert out["ndcg@3"] == pytest.approx(0.717405, abs=1e-5)
    assert out["recall@1"] == pytest.approx(0.416667, abs=1e-5)


def test_hand_computed_metrics_with_embeddings_and_batches():
    """Same example through the embedding path: 1-d users (+1 / -1) times items (their score)."""
    # a user embedding of [1] scores items by their value; [-1] reverses the order
    item_emb = torch.tensor([[6.0], [5.0], [4.0], [3.0], [2.0], [1.0]])
    user_emb = torch.tensor([[1.0], [-1.0], [1.0], [1.0]])
    for batch_size in (1, 2, 4096):
        out = evaluate_embeddings(user_emb, item_emb, TEST, [TRAIN], ks=[1, 3], batch_size=batch_size)
        for key, value in EXPECTED.items():
            assert out[key] == pytest.approx(value, abs=1e-6), (batch_size, key)


def test_users_without_test_items_are_skipped():
    base = evaluate_scores(table_scores(SCORES), TEST, [TRAIN], ks=[3])
    # append 3 users with training items but no test item, scored adversarially
    scores = np.vstack([SCORES, np.tile(SCORES[1], (3, 1))])
    train = sp.vstack([TRAIN, csr([[0, 1], [2], [5]], 6)]).tocsr()
    test = sp.vstack([TEST, sp.csr_matrix((3, 6), dtype=np.float32)]).tocsr()
    more = evaluate_scores(table_scores(scores), test, [train], ks=[3])
    assert more["users"] == base["users"] == 3
    for key in EXPECTED:
        if key.endswith("@3"):
            assert more[key] == pytest.approx(base[key], abs=1e-7)


def test_no_target_users_is_an_error_naming_the_split():
    # an average over no users is undefined: not 0.0
    empty = sp.csr_matrix((4, 6), dtype=np.float32)
    with pytest.raises(DataError, match="the test split has no user with a test item"):
        evaluate_scores(table_scores(SCORES), empty, [TRAIN], ks=[3], split="test")


# ---------------------------------------------------------------- masking
def test_masked_training_item_is_never_ranked_or_counted():
    # item 0 is both a training and a test item (LightGCN files may overlap) and the best-scored item
    train = csr([[0]], 3)
    test = csr([[0, 1]], 3)
    scores = np.array([[3.0, 2.0, 1.0]])
    out = evaluate_scores(table_scores(scores), test, [train], ks=[1, 2])
    # ranking without item 0: 1, 2 -> only item 1 can hit: recall 1/2 at every K
    assert out["recall@1"] == pytest.approx(0.5)
    assert out["recall@2"] == pytest.approx(0.5)
    # K = 20 exceeds the 2 unmasked items: topk must not bring the masked item back as a hit
    out = evaluate_scores(table_scores(scores), test, [train], ks=[20])
    assert out["recall@20"] == pytest.approx(0.5)
    assert out["precision@20"] == pytest.approx(1 / 20)
    # ideal DCG over min(20, 2) = 2 positions: 1 + 1/log2(3); DCG: item 1 at rank 1 -> 1
    assert out["ndcg@20"] == pytest.approx(1 / (1 + D2), abs=1e-6)


def test_rank_top_k_never_returns_excluded_columns():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.normal(size=(20, 30)))
    exclude = torch.from_numpy(rng.random((20, 30)) < 0.5)
    exclude[:, :5] = True  # the first columns get the best scores but are all excluded
    scores[:, :5] += 100.0
    top = rank_top_k(scores, exclude, 10)
    assert top.shape == (20, 10)
    for row in range(20):
        allowed = (~exclude[row]).sum().item()
        assert not exclude[row, top[row, : min(10, allowed)]].any()


def test_validation_items_masked_when_scoring_test():
    # item 0 is user 0's validation item and the top-scored one; the test item is item 1
    train = csr([[3]], 4)
    valid = csr([[0]], 4)
    test = csr([[1]], 4)
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    data = InteractionData(train=train, test=test, valid=valid)
    assert len(excluded_for("test", data)) == 2
    assert len(excluded_for("valid", data)) == 1
    with_valid_masked = evaluate_scores(table_scores(scores), test, excluded_for("test", data), ks=[1])
    assert with_valid_masked["recall@1"] == 1.0  # ranking 1, 2 -> hit at rank 1
    only_train = evaluate_scores(table_scores(scores), test, [train], ks=[1])
    assert only_train["recall@1"] == 0.0  # ranking 0, 1, 2 -> the validation item takes rank 1
    # scoring the validation split masks training only
    v = evaluate_scores(table_scores(scores), valid, excluded_for("valid", data), ks=[1])
    assert v["recall@1"] == 1.0
    # without a validation split, test masks training only
    no_valid = InteractionData(train=train, test=test)
    assert len(excluded_for("test", no_valid)) == 1


# ---------------------------------------------------------------- brute force reference
def reference_metrics(user_emb: np.ndarray, item_emb: np.ndarray, target, exclude, ks) -> dict:
    """Plain per-user loop: score, mask, sort, count."""
    target = target.toarray() > 0
    masked = np.zeros_like(target)
    for e in exclude:
        masked |= e.toarray() > 0
    sums = {f"{m}@{k}": 0.0 for m in ("recall", "ndcg", "precision", "hit_rate") for k in ks}
    n_users = 0
    for u in range(target.shape[0]):
        relevant = set(np.flatnonzero(target[u]).tolist())
        if not relevant:
            continue
        n_users += 1
        scores = item_emb @ user_emb[u]
        ranking = [i for i in np.argsort(-scores, kind="stable") if not masked[u, i]]
        for k in ks:
            top = ranking[:k]
            hits = [1.0 if i in relevant else 0.0 for i in top]
            dcg = sum(h / log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / log2(r + 2) for r in range(min(k, len(relevant))))
            sums[f"recall@{k}"] += sum(hits) / len(relevant)
            sums[f"precision@{k}"] += sum(hits) / k
            sums[f"hit_rate@{k}"] += float(sum(hits) > 0)
            sums[f"ndcg@{k}"] += dcg / idcg
    return {key: v / n_users for key, v in sums.items()} | {"users": n_users}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_embeddings_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, dim = 37, 53, 5
    user_emb = rng.normal(size=(n_users, dim))
    item_emb = rng.normal(size=(n_items, dim))
    train = sp.csr_matrix(rng.random((n_users, n_items)) < 0.2)
    valid = sp.csr_matrix((rng.random((n_users, n_items)) < 0.05) & ~train.toarray())
    test = (rng.random((n_users, n_items)) < 0.1) & ~train.toarray() & ~valid.toarray()
    test[::6] = False  # some users have no test item
    test = sp.csr_matrix(test)
    ks = [1, 5, 20]
    expected = reference_metrics(user_emb, item_emb, test, [train, valid], ks)
    got = evaluate_embeddings(
        torch.from_numpy(user_emb), torch.from_numpy(item_emb), test, [train, valid], ks=ks, batch_size=8
    )
    assert got["users"] == expected["users"]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


# ---------------------------------------------------------------- popularity baseline
def test_popularity_baseline_hand_computed():
    # training counts: item 0 -> 3, item 1 -> 1, item 2 -> 2, item 3 -> 0; global ranking 0, 2, 1, 3
    train = csr([[0], [0, 2], [0, 1, 2]], 4)
    test = csr([[2], [3], [3]], 4)
    assert popularity_scores(train).tolist() == [3.0, 1.0, 2.0, 0.0]
    out = evaluate_popularity(train, test, [train], ks=[1, 2])
    # after masking: user 0 ranks 2 1 3 (hit @1); user 1 ranks 1 3 (hit @2); user 2 ranks 3 (hit @1)
    assert out["users"] == 3
    assert out["recall@1"] == pytest.approx(2 / 3)
    assert out["recall@2"] == pytest.approx(1.0)
    assert out["ndcg@2"] == pytest.approx((1 + D2 + 1) / 3, abs=1e-6)
    assert out["precision@2"] == pytest.approx((1 + 1 + 1) / 2 / 3)


def test_popularity_equals_embedding_reference():
    """Popularity is the rank-1 model user = [1], item = [count]: compare with the brute force."""
    rng = np.random.default_rng(5)
    n_users, n_items = 40, 30
    counts = rng.permutation(np.arange(1, n_items + 1))  # distinct counts: no ties in the ranking
    dense = np.zeros((n_users, n_items), dtype=bool)
    for j, c in enumerate(counts):
        dense[rng.choice(n_users, size=c, replace=False), j] = True
    train = sp.csr_matrix(dense)
    test = sp.csr_matrix((rng.random((n_users, n_items)) < 0.15) & ~dense)
    assert popularity_scores(train).tolist() == counts.astype(float).tolist()
    expected = reference_metrics(np.ones((n_users, 1)), counts[:, None].astype(float), test, [train], [5, 10])
    got = evaluate_popularity(train, test, [train], ks=[5, 10])
    assert got["users"] == expected["users"]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_the_monitored_split_is_validation_when_there_is_one(tiny_data):
    from hqgnn.data import with_validation
    from hqgnn.evaluation import monitor_split

    with_valid = with_validation(tiny_data, 0.2, seed=1)
    assert monitor_split("valid", with_valid) == "valid"
    assert monitor_split("test", with_valid) == "test"
    assert monitor_split("valid", tiny_data) == "test"  # no validation split: test is only monitored


@pytest.mark.parametrize("seed", range(6))
def test_integer_top_k_equals_the_full_key_order(seed):
    """Integer scores rank by (score desc, column asc): against a numpy lexsort of every column,
    with many ties at the k-th score, excluded columns, and rows with fewer allowed columns than k."""
    rng = np.random.default_rng(seed)
    n_rows, n_cols, k = 40, 300, 25
    scores = rng.integers(-6, 7, size=(n_rows, n_cols)).astype(np.float32) * (10 ** seed)
    exclude = rng.random((n_rows, n_cols)) < 0.3
    exclude[0, 10:] = True  # 10 allowed columns for k = 25
    exclude[1, :] = True  # none allowed
    top = rank_top_k(torch.from_numpy(scores), torch.from_numpy(exclude), k, integer_scores=True).numpy()
    assert top.shape == (n_rows, k)
    for row in range(n_rows):
        allowed = np.flatnonzero(~exclude[row])
        order = allowed[np.lexsort((allowed, -scores[row, allowed]))]
        m = min(k, len(order))
        assert top[row, :m].tolist() == order[:m].tolist()
        assert len(set(top[row].tolist())) == k  # excluded columns only fill the rest, never twice
