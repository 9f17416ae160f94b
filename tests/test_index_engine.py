"""QuantizedIndex / FloatIndex: exact rankings, exclusion, faiss backends, ids and bad requests."""

import importlib.util
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hqgnn.errors import ConfigError, HQGNNError
from hqgnn.index import FloatIndex, QuantizedIndex, RetrievalError
from hqgnn.index import kernels as K
from hqgnn.index.packing import codes_to_levels

torch.set_num_threads(1)

N_USERS, N_ITEMS, DIM = 60, 700, 24

# the compiled int8 dot-product kernel runs only on CPUs with AVX-512 VNNI
VNNI = ("int8-dot",) if K.Int8DotKernel.available() else ()
# the compiled int16 multiply-add kernel on CPUs with AVX2 (elsewhere it searches as gemm)
AVX2 = K.Int16DotKernel.available()

#: faiss-cpu is an optional extra (``pip install 'hqgnn[faiss]'``; ``.[test]`` includes it)
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="faiss-cpu not installed (pip install 'hqgnn[faiss]')")


def make_train(seed=0, n_users=N_USERS, n_items=N_ITEMS, density=0.04):
    return sp.random(n_users, n_items, density=density, format="csr", random_state=seed, dtype=np.float32)


def make_codes(bits, seed=0, n_users=N_USERS, n_items=N_ITEMS, dim=DIM):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2**bits, (n_users, dim)).astype(np.uint8),
            rng.integers(0, 2**bits, (n_items, dim)).astype(np.uint8))


def dequantized_ranking(users, items, bits, su, si, k, train=None):
    """Reference: rank by the float scores of the dequantized embeddings x_hat = s k / 2 (stable sort)."""
    xu = su * codes_to_levels(users, bits).astype(np.float64) / 2
    xi = si * codes_to_levels(items, bits).astype(np.float64) / 2
    S = xu @ xi.T
    if train is not None:
        S[train.nonzero()] = -np.inf
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, 1), S


@pytest.mark.parametrize("bits", range(1, 9))
def test_topk_equals_dequantized_float_ranking(bits):
    users, items = make_codes(bits, seed=bits)
    train = make_train(bits)
    su, si = 0.37, 1.9
    index = QuantizedIndex.from_codes(items, bits, user_codes=users, user_scale=su, item_scale=si, train=train)
    got, scores = index.search(k=25, exclude="train")
    want, want_values, S = dequantized_ranking(users, items, bits, su, si, 25, train)
    values = index.dequantize(scores)
    tol = 1e-9 * np.abs(want_values).max()
    # sorted best first; the same score multiset as the float ranking; each returned item's
    # float score is the value reported; and the items above the k-th score are the same set
    # (float rounding of the dequantized sums may reorder exact ties, so ties are set aside)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.allclose(values, want_values, rtol=0, atol=tol)
    assert np.allclose(np.take_along_axis(S, got, 1), values, rtol=0, atol=tol)
    for r in range(N_USERS):
        kth = values[r, -1]
        assert set(got[r][values[r] > kth + tol]) == set(want[r][want_values[r] > kth + tol])
    # seen items are never returned
    assert not np.any(np.asarray(train[np.arange(N_USERS)[:, None], got].todense()))


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_all_kernels_agree(bits):
    users, items = make_codes(bits, seed=10 + bits)
    train = make_train(3)
    results = []
    for kernel in ("bitplane", "bitplane-numpy", "gemm", "int16-dot", "int8-mm", "int32-mm") + VNNI:
        index = QuantizedIndex.from_codes(items, bits, user_codes=users, train=train, kernel=kernel)
        results.append(index.search(k=30, exclude="train"))
    for items_k, scores_k in results[1:]:
        assert np.array_equal(items_k, results[0][0]) and np.array_equal(scores_k, results[0][1])


def test_search_by_query_codes_and_explicit_exclusion():
    users, items = make_codes(3, seed=4)
    train = make_train(4)
    index = QuantizedIndex.from_codes(items, 3, user_codes=users, train=train)
    by_user, s1 = index.search([5, 9], k=10, exclude="train")
    by_code, s2 = index.search(k=10, queries=users[[5, 9]], exclude=train[[5, 9]])
    assert np.array_equal(by_user, by_code) and np.array_equal(s1, s2)
    # a matrix with one row per user is indexed by the users asked for
    by_full, _ = index.search([5, 9], k=10, exclude=train)
    assert np.array_equal(by_user, by_full)
    no_excl, _ = index.search([5, 9], k=10)
    assert not np.array_equal(no_excl, by_user) or train[[5, 9]].nnz == 0


def test_similar_excludes_the_item_itself():
    _, items = make_codes(1, seed=6)
    items[7] = items[3]  # an exact duplicate: the best neighbour of 3 is 7, never 3 itself
    index = QuantizedIndex.from_codes(items, 1)
    got, scores = index.similar([3, 7], k=5)
    assert got[0, 0] == 7 and got[1, 0] == 3
    assert 3 not in got[0] and 7 not in got[1]
    assert scores[0, 0] == DIM


def test_float_index_equals_torch_brute_force():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    v = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    train = make_train(5)
    index = FloatIndex.from_embeddings(v, user_emb=u, train=train)
    got, scores = index.search(k=20, exclude="train")
    S = torch.from_numpy(u) @ torch.from_numpy(v).T
    S[torch.from_numpy(train.toarray() > 0)] = -float("inf")
    ref_scores, ref_items = torch.topk(S, 20, dim=1)
    assert np.allclose(scores, ref_scores.numpy(), rtol=1e-5, atol=1e-5)
    # continuous scores: no ties, so the items agree exactly
    assert np.array_equal(got, ref_items.numpy())
    if importlib.util.find_spec("faiss") is None:
        return
    index.backend = "faiss-flat"
    got_f, scores_f = index.search(k=20, exclude="train")
    assert np.array_equal(got_f, got) and np.allclose(scores_f, scores, rtol=1e-5, atol=1e-5)


@needs_faiss
def test_faiss_backends_for_one_bit():
    users, items = make_codes(1, seed=8, dim=64)
    train = make_train(8)
    index = QuantizedIndex.from_codes(items, 1, user_codes=users, train=train)
    exact_items, exact_scores = index.search(k=20, exclude="train")
    index.backend = "faiss-flat"
    flat_items, flat_scores = index.search(k=20, exclude="train")
    # faiss-flat is exact: same scores; items agree up to ties at the k-th score
    assert np.array_equal(flat_scores, exact_scores)
    for r in range(N_USERS):
        kth = exact_scores[r, -1]
        assert set(flat_items[r][flat_scores[r] > kth]) == set(exact_items[r][exact_scores[r] > kth])
    assert not np.any(np.asarray(train[np.arange(N_USERS)[:, None], flat_items].todense()))
    for backend in ("faiss-hnsw", "faiss-ivf"):
        index.backend = backend
        approx_items, approx_scores = index.search(k=20, exclude="train")
        assert approx_items.shape == (N_USERS, 20) and np.all(np.diff(approx_scores, axis=1) <= 0)
        seen = np.asarray(train[np.arange(N_USERS)[:, None], np.maximum(approx_items, 0)].todense()) > 0
        assert not np.any(seen & (approx_items >= 0))
    with pytest.raises(ConfigError, match="1-bit"):
        QuantizedIndex.from_codes(make_codes(2)[1], 2, backend="faiss-flat")


def test_recommendations_map_original_ids():
    users, items = make_codes(2, seed=9)
    train = make_train(9)
    user_ids = np.array([f"user-{i}" for i in range(N_USERS)])
    item_ids = np.arange(N_ITEMS) * 3 + 1000
    index = QuantizedIndex.from_codes(items, 2, user_codes=users, user_ids=user_ids, item_ids=item_ids,
                                      train=train, user_scale=0.5, item_scale=2.0)
    rec = index.recommend(["user-4", "user-11"], k=7)
    dense, scores = index.search([4, 11], k=7, exclude="train")
    assert np.array_equal(rec.items, item_ids[dense]) and np.array_equal(rec.raw_scores, scores)
    assert np.allclose(rec.scores, scores * 0.5 * 2.0 / 4)  # the model's scores; raw ones under their own name
    records = rec.to_records()
    assert records[0]["user"] == "user-4" and len(records[0]["items"]) == 7
    assert all(isinstance(x, int) for x in records[0]["items"])
    assert records[0]["scores"] == rec.scores[0].tolist() and records[0]["found"] == 7
    sim = index.similar_items([1000 + 3 * 5], k=4)
    assert sim.kind == "item" and len(sim.items[0]) == 4 and 1015 not in sim.items[0]
    assert np.array_equal(index.user_index(["user-11", "user-0"]), [11, 0])


def test_bad_requests_raise_clear_errors():
    users, items = make_codes(1)
    index = QuantizedIndex.from_codes(items, 1, user_codes=users, user_ids=np.arange(N_USERS) + 100)
    for bad_k in (0, -3, N_ITEMS + 1, 2.5, "10"):
        with pytest.raises(RetrievalError, match="k="):
            index.search([0], k=bad_k)
    with pytest.raises(RetrievalError, match=f"out of range: expected 1 .. {N_ITEMS}"):
        index.recommend([100], k=N_ITEMS + 1)
    with pytest.raises(RetrievalError, match="unknown user id 99"):
        index.recommend([100, 99], k=5)
    with pytest.raises(RetrievalError, match="unknown item id 'abc'"):
        index.similar_items(["abc"], k=5)
    with pytest.raises(RetrievalError, match="out of range"):
        index.search([N_USERS], k=5)
    with pytest.raises(RetrievalError, match="shape"):
        index.search(k=5, queries=np.zeros((2, DIM + 1), np.uint8))
    with pytest.raises(RetrievalError, match="rows"):
        index.search([1, 2], k=5, exclude=(np.array([0, 0, 0, 0]), np.array([], np.int64)))
    with pytest.raises(ConfigError, match="backend"):
        index.backend = "annoy"
    assert issubclass(RetrievalError, HQGNNError)
    item_only = QuantizedIndex.from_codes(items, 1)
    with pytest.raises(RetrievalError, match="no user codes"):
        item_only.search([0], k=3)
    for message in [str(e) for e in (RetrievalError("x"),)]:
        assert "\n" not in message


def test_int8_dot_kernel_is_refused_without_vnni_and_chosen_with_it(monkeypatch):
    users, items = make_codes(4, seed=2)
    without_vnni = "int16-dot" if AVX2 else "gemm"
    assert QuantizedIndex.from_codes(items, 4, user_codes=users).kernel_name == ("int8-dot" if VNNI else without_vnni)
    assert QuantizedIndex.from_codes(items % 2, 1, user_codes=users % 2).kernel_name == "bitplane"
    monkeypatch.setattr(K.Int8DotKernel, "available", staticmethod(lambda: False))
    with pytest.raises(ConfigError, match="int8-dot.*VNNI"):
        QuantizedIndex.from_codes(items, 4, user_codes=users, kernel="int8-dot")
    assert QuantizedIndex.from_codes(items, 4, user_codes=users).kernel_name == without_vnni


def test_default_kernels_without_and_with_vnni(monkeypatch):
    """Without AVX-512 VNNI: int16-dot from 2 bits up to 1,024 bits per item on AVX2
    (benchmarks/results/small-dims-avx2.md); without AVX2 either, or beyond, the fastest exact
    kernel of benchmarks/results/kernels-avx2.md per width (XOR + popcount for 1-2 bits, float
    sgemm of the levels for 3-8); with VNNI, int8-dot from 2 bits."""
    from hqgnn.index.engine import DEFAULT_KERNEL, INT16_DOT_MAX_BITS, default_kernel

    monkeypatch.setattr(K.Int8DotKernel, "available", staticmethod(lambda: False))
    monkeypatch.setattr(K.Int16DotKernel, "available", staticmethod(lambda: True))
    assert INT16_DOT_MAX_BITS == 1024
    for dim in (8, 16, 32, 64):
        assert {b: default_kernel(b, dim) for b in range(1, 9)} == {1: "bitplane",
                                                                  **{b: "int16-dot" for b in range(2, 9)}}
    assert default_kernel(8, 128) == "int16-dot" and default_kernel(8, 129) == "gemm"
    assert default_kernel(2, 512) == "int16-dot" and default_kernel(2, 513) == "bitplane"
    users, items = make_codes(4, n_users=4, n_items=50, dim=16)
    assert QuantizedIndex.from_codes(items, 4, user_codes=users).kernel_name == "int16-dot"
    users, items = make_codes(8, n_users=4, n_items=50, dim=200)  # the dimension is the index's
    assert QuantizedIndex.from_codes(items, 8, user_codes=users).kernel_name == "gemm"
    monkeypatch.setattr(K.Int16DotKernel, "available", staticmethod(lambda: False))
    want = {1: "bitplane", 2: "bitplane", **{b: "gemm" for b in range(3, 9)}}
    assert DEFAULT_KERNEL == want
    assert {b: default_kernel(b) for b in range(1, 9)} == want
    for bits in (1, 2, 3, 8):
        users, items = make_codes(bits, seed=bits, n_users=4, n_items=50)
        assert QuantizedIndex.from_codes(items, bits, user_codes=users).kernel_name == want[bits]
    # never the int8 matrix product: 0.04-0.05x float32 sgemm on AVX2 (kernels-avx2.md)
    assert "int8-mm" not in want.values()
    monkeypatch.setattr(K.Int8DotKernel, "available", staticmethod(lambda: True))
    assert {b: default_kernel(b) for b in range(1, 9)} == {1: "bitplane", **{b: "int8-dot" for b in range(2, 9)}}


@pytest.mark.parametrize("dim", [1, 64, 258, 259, 300])
@pytest.mark.parametrize("bits", [2, 3, 8])
def test_default_kernel_equals_the_oracle_at_every_width_and_dim(monkeypatch, bits, dim):
    """The default without VNNI is exact however large d m^2 gets: at 8 bits and d > 258 the
    sums pass 2^24, where float32 is no longer guaranteed exact and the gemm kernel runs in float64.
    Extreme codes (all 0 / all 2^b - 1) make the largest sums."""
    from oracles import brute_force_scores, reference_topk

    monkeypatch.setattr(K.Int8DotKernel, "available", staticmethod(lambda: False))
    m = 2**bits - 1
    users, items = make_codes(bits, seed=dim + bits, n_users=12, n_items=300, dim=dim)
    users[0], items[0], items[1], items[2] = m, m, 0, m
    items[2, : dim // 2] = 0
    users[1] = 0
    train = make_train(dim, n_users=12, n_items=300, density=0.05).tolil()
    train[0, 0] = 0  # user 0 may be recommended item 0: the largest possible score
    train = train.tocsr()
    train.eliminate_zeros()
    index = QuantizedIndex.from_codes(items, bits, user_codes=users, train=train)
    if index.kernel_name == "gemm":
        assert index._kernel().dtype == (np.float32 if dim * m**2 < 2**24 else np.float64)
    got, scores = index.search(k=40, exclude="train")
    S = brute_force_scores(codes_to_levels(users, bits), codes_to_levels(items, bits))
    want, want_scores = reference_topk(S, 40, (train.indptr, train.indices))
    assert np.array_equal(got, want)
    assert np.array_equal(scores.astype(np.int64), want_scores.astype(np.int64))
    assert scores[0, 0] == dim * m * m  # the largest score, exactly: all-top user and item


def test_int8_kernel_at_eight_bits_uses_shifted_levels():
    """8-bit levels (-255 .. 255) do not fit int8: the kernel multiplies c - 128 and adds
    the per-user and per-item terms; extreme codes (all 0, all 255) are where it would overflow."""
    users, items = make_codes(8, seed=1)
    users[0], items[0], items[1] = 255, 255, 0
    want = QuantizedIndex.from_codes(items, 8, user_codes=users, kernel="gemm").search(k=20)
    for kernel in ("int8-mm",) + VNNI:
        got = QuantizedIndex.from_codes(items, 8, user_codes=users, kernel=kernel).search(k=20)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), kernel
    levels = lambda c: 2 * c.astype(np.int64) - 255  # noqa: E731
    assert got[1][0, 0] == levels(users[0]) @ levels(items[0])


# ---------------------------------------------------------------- approximate backends: full lists
def short_list_case(seed=11, n_users=12, n_items=2000, dim=64):
    """1-bit codes of 2,000 items; users 0..9 have seen 40 items, user 10 has seen 600 (1,400
    eligible), user 11 all but 10. Returns codes, the seen CSR and the brute-force scores d - 2 Hamming."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 2, (n_users, dim)).astype(np.uint8)
    items = rng.integers(0, 2, (n_items, dim)).astype(np.uint8)
    seen_counts = [40] * (n_users - 2) + [600, n_items - 10]
    rows = np.repeat(np.arange(n_users), seen_counts)
    cols = np.concatenate([rng.choice(n_items, c, replace=False) for c in seen_counts])
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    levels = lambda c: 2 * c.astype(np.int64) - 1  # noqa: E731
    return users, items, train, levels(users) @ levels(items).T


def brute_force_order(S, seen):
    """Every eligible item per user, best first, ties to the lower index (the reference ranking)."""
    n = S.shape[1]
    return [[int(i) for i in np.lexsort((np.arange(n), -S[u])) if not seen[u, i]] for u in range(len(S))]


@needs_faiss
@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_backends_fill_k_or_say_how_many(backend, tmp_path):
    from hqgnn.export import ArtifactRecommender
    from hqgnn.index.backends import faiss as faiss_backend

    users, items, train, S = short_list_case()
    seen = train.toarray() > 0
    eligible = (~seen).sum(axis=1)
    path = tmp_path / "short.hqgnn"
    QuantizedIndex.from_codes(items, 1, user_codes=users, train=train).save(path)
    index = QuantizedIndex.from_artifact(path, backend=backend)
    k = 1500
    if backend == "faiss-ivf":  # the premise: IVF's default probing alone comes back short
        import faiss

        planes = faiss_backend.queries(index, index._user_queries(np.arange(len(users))))
        _, raw_ids = faiss_backend.index_of(index).search(planes, k, params=faiss.SearchParametersIVF(nprobe=16))
        assert (raw_ids >= 0).sum(axis=1).max() < k
    got, scores = index.search(k=k, exclude="train")
    want_found = np.minimum(k, eligible)
    assert want_found.tolist() == [k] * 10 + [1400, 10]
    assert np.array_equal((got >= 0).sum(axis=1), want_found)
    for u in range(len(users)):
        row = got[u, : want_found[u]]
        assert len(set(row.tolist())) == len(row) and not seen[u, row].any()
        assert np.array_equal(scores[u, : want_found[u]], S[u, row])  # the true scores
        assert np.all(np.diff(scores[u, : want_found[u]]) <= 0)
        assert np.all(got[u, want_found[u]:] == -1)
    # a user with fewer eligible items than k gets them all, exactly ranked
    assert got[11, :10].tolist() == brute_force_order(S[11:], seen[11:])[0]
    # k = the eligible count: full coverage, the exact backend's answer (items and order)
    full = int(eligible[10])
    approx_items, _ = index.search([10], k=full, exclude="train")
    exact_items, _ = QuantizedIndex.from_artifact(path).search([10], k=full, exclude="train")
    assert approx_items[0].tolist() == exact_items[0].tolist() == brute_force_order(S[10:11], seen[10:11])[0]
    # every answer says how many items it holds
    recs = ArtifactRecommender(path, backend=backend).recommend([0, 11], k=k).to_records()
    assert [r["found"] for r in recs] == [k, 10] and [len(r["items"]) for r in recs] == [k, 10]
    rec = index.recommend([0, 11], k=k)
    assert rec.found.tolist() == [k, 10]


@needs_faiss
def test_faiss_rows_still_short_at_the_widest_setting_get_an_exact_search(monkeypatch):
    """No widening at all (as if the widest setting were reached): the short rows are searched
    exactly, so the answer is the exact backend's."""
    from hqgnn.index.backends import faiss as faiss_backend

    users, items, train, S = short_list_case(seed=5)
    index = QuantizedIndex.from_codes(items, 1, user_codes=users, train=train, backend="faiss-ivf")
    monkeypatch.setattr(faiss_backend, "_widened", lambda *args, **kwargs: None)
    got, scores = index.search(k=1500, exclude="train")
    index.backend = "exact"
    want, want_scores = index.search(k=1500, exclude="train")
    assert np.array_equal(got, want) and np.array_equal(scores, want_scores)
    ref = brute_force_order(S, train.toarray() > 0)
    assert all(got[u][got[u] >= 0].tolist() == ref[u][:1500] for u in range(len(S)))


@needs_faiss
def test_faiss_batches_group_queries_of_similar_over_fetch():
    """One heavy user no longer sets the over-fetch (and HNSW's efSearch) of a whole call:
    a batch's largest k + excluded count is at most FETCH_SPREAD times its smallest."""
    from hqgnn.index.backends import faiss as faiss_backend

    rng = np.random.default_rng(0)
    deg = np.minimum(rng.geometric(1 / 27, 3000), 800)
    deg[5] = 800
    rows = rng.permutation(3000)[:2500]
    k = 50
    batches = faiss_backend._batches(rows, k, deg)
    assert sorted(np.concatenate(batches).tolist()) == sorted(rows.tolist())
    for b in batches:
        assert 1 <= len(b) <= faiss_backend.BATCH
        assert (k + deg[b]).max() <= faiss_backend.FETCH_SPREAD * (k + deg[b]).min()
    order = np.concatenate(batches)
    assert np.all(np.diff(deg[order]) >= 0)
    # users without excluded items share batches of at most BATCH
    assert [len(b) for b in faiss_backend._batches(np.arange(2500), k, np.zeros(2500, np.int64))] == [1024, 1024, 452]


@needs_faiss
def test_faiss_widening_rounds():
    from hqgnn.index.backends.faiss import _widened

    class IVF:
        nlist = 51

    class HNSW:
        hnsw = object()

    assert _widened(IVF, {"nprobe": 16}, 2000) == {"nprobe": 32}
    assert _widened(IVF, {"nprobe": 32}, 2000) == {"nprobe": 51}
    assert _widened(IVF, {"nprobe": 51}, 2000) is None  # every list scanned: exhaustive
    assert _widened(HNSW, {"efSearch": 128}, 2000, floor=1510) == {"efSearch": 2000}
    assert _widened(HNSW, {"efSearch": 128}, 2000, floor=100) == {"efSearch": 256}
    assert _widened(HNSW, {"efSearch": 2000}, 2000) is None


# ---------------------------------------------------------------- one vocabulary
def test_search_returns_items_then_raw_scores_by_name():
    """The search signature says its order: a SearchResult (items, raw_scores), not faiss's (D, I)."""
    from hqgnn.index import SearchResult

    users, items = make_codes(2, seed=12)
    index = QuantizedIndex.from_codes(items, 2, user_codes=users, user_scale=0.5, item_scale=3.0)
    result = index.search([0, 1], k=5)
    assert isinstance(result, SearchResult) and result._fields == ("items", "raw_scores")
    assert result.items.dtype == np.int64 and result.raw_scores.dtype == np.int32
    assert isinstance(index.similar([2], k=3), SearchResult)
    rec = index.recommend([0, 1], k=5)
    assert np.array_equal(rec.items, result.items) and np.array_equal(rec.raw_scores, result.raw_scores)
    assert np.array_equal(rec.scores, index.dequantize(result.raw_scores))
    # planes are packed, codes unpacked
    assert index.item_planes.shape == (2, N_ITEMS, 1) and index.item_planes.dtype == np.uint64
    assert np.array_equal(index.item_codes(), items) and np.array_equal(index.user_codes(), users)


def test_one_id_map_and_one_k_check():
    """The engine, the artifact recommender and the server share hqgnn.index.ids."""
    from hqgnn.index import IdMap, check_k
    from hqgnn.index.engine import IdMap as EngineIdMap

    assert EngineIdMap is IdMap
    ids = IdMap(np.array([10, 30, 20]), 3, "user")
    assert ids.to_index(["30", 10]).tolist() == [1, 0] and ids.to_ids(np.array([2, -1])).tolist() == [20, -1]
    assert ids.parse("20") == 20 and ids.parse(np.int64(7)) == 7
    assert ids.known([10, 11, 2**70, -(2**70)]).tolist() == [True, False, False, False]
    for bad in ("abc", True, 1.5):
        with pytest.raises(RetrievalError, match="is not an integer"):
            ids.parse(bad)
    names = IdMap(np.array(["b", "a"]), 2, "item")
    assert names.parse(5) == "5" and names.known(["a", "c", "ab"]).tolist() == [True, False, False]
    with pytest.raises(RetrievalError, match="must be a string"):
        names.parse([1])
    identity = IdMap(None, 4, "user")
    assert identity.identity and identity.known([0, 3, 4, -1]).tolist() == [True, True, False, False]
    assert check_k(np.int64(3), 5) == 3
    with pytest.raises(RetrievalError, match=r"^k=6 is out of range: expected 1 \.\. 5 \(the number of items\)$"):
        check_k(6, 5, of="the number of items")
    with pytest.raises(RetrievalError, match="must be an integer"):
        check_k(True, 5)


@needs_faiss
def test_faiss_is_imported_only_when_a_faiss_backend_is_asked_for():
    import subprocess
    import sys

    code = ("import sys; import numpy as np; import hqgnn.index as I; print('faiss' in sys.modules); "
            "ix = I.QuantizedIndex.from_codes(np.zeros((70, 8), np.uint8), 1); ix.search(queries=np.zeros((1, 8), "
            "np.uint8), k=3); print('faiss' in sys.modules); ix.backend = 'faiss-flat'; print('faiss' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]
