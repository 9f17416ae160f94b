"""Packing round trips and the exact scoring / top-K kernels of hqgnn.index."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqgnn.index import SearchResult
from hqgnn.index import kernels as K
from hqgnn.index.packing import (code_sums, codes_to_levels, levels_to_codes, pack_bits, pack_codes, pad_bits,
                                 unpack_bits, unpack_codes, words_per_row)
from hqgnn.index.search import all_scores, search_topk
from hqgnn.index.select import csr_rows, select_topk, sentinel
from oracles import brute_force_scores, reference_topk

FAST = settings(max_examples=40, deadline=None)


def random_codes(rng, n, d, bits):
    return rng.integers(0, 2**bits, size=(n, d)).astype(np.uint8)


def random_csr(rng, n_rows, n_cols, max_len):
    """A CSR of distinct random column indices per row (test fixture; a loop over a few rows)."""
    lens = np.minimum(rng.integers(0, max_len + 1, size=n_rows), n_cols)
    indices = np.concatenate([rng.choice(n_cols, size=n, replace=False) for n in lens]
                             + [np.zeros(0, np.int64)]).astype(np.int64)
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), indices


# ---------------------------------------------------------------- packing
@FAST
@given(bits=st.integers(1, 8), n=st.integers(0, 12), d=st.integers(1, 200), seed=st.integers(0, 2**31))
def test_pack_unpack_round_trip(bits, n, d, seed):
    codes = random_codes(np.random.default_rng(seed), n, d, bits)
    planes = pack_codes(codes, bits)
    assert planes.shape == (bits, n, words_per_row(d)) and planes.dtype == np.uint64
    assert np.array_equal(unpack_codes(planes, bits, d), codes)
    if pad_bits(d) and n:
        # the padding bits of the last word are zero in every plane
        assert not np.any(planes[:, :, -1] >> np.uint64(64 - pad_bits(d)))


@FAST
@given(n=st.integers(1, 10), d=st.integers(1, 150), seed=st.integers(0, 2**31))
def test_pack_bits_layout(n, d, seed):
    bits = np.random.default_rng(seed).integers(0, 2, size=(n, d)).astype(np.uint8)
    words = pack_bits(bits)
    assert np.array_equal(unpack_bits(words, d), bits)
    # dimension t is bit t % 64 of word t // 64
    t = d - 1
    assert np.array_equal((words[:, t // 64] >> np.uint64(t % 64)) & np.uint64(1), bits[:, t].astype(np.uint64))


def test_levels_codes_helpers():
    for bits in range(1, 9):
        c = np.arange(2**bits, dtype=np.uint8)[None, :]
        k = codes_to_levels(c, bits)
        assert k.min() == -(2**bits - 1) and k.max() == 2**bits - 1 and np.all(k % 2 == 1)
        assert np.array_equal(levels_to_codes(k, bits), c)
    assert np.array_equal(code_sums(np.array([[1, 2], [3, 4]], np.uint8)), [3, 7])
    with pytest.raises(ValueError):
        pack_codes(np.array([[4]]), 2)
    with pytest.raises(ValueError):
        levels_to_codes(np.array([2]), 2)


# ---------------------------------------------------------------- scores
def kernels_for(codes, bits):
    return {
        "bitplane": (K.PlaneKernel(pack_codes(codes, bits), bits, codes.shape[1]), lambda q: pack_codes(q, bits)),
        "bitplane-numpy": (K.PlaneKernel(pack_codes(codes, bits), bits, codes.shape[1], compiled=False),
                           lambda q: pack_codes(q, bits)),
        "gemm": (K.CodeGemmKernel(codes, bits), lambda q: q),
        "int16-dot": (K.Int16DotKernel(codes, bits), lambda q: q),
        "int32-mm": (K.IntMatmulKernel(codes, bits), lambda q: q),
        "int8-mm": (K.Int8MatmulKernel(codes, bits), lambda q: q),
        **({"int8-dot": (K.Int8DotKernel(codes, bits), lambda q: q)} if K.Int8DotKernel.available() else {}),
    }


@FAST
@given(bits=st.integers(1, 8), d=st.integers(1, 130), nq=st.integers(1, 9), ni=st.integers(1, 60),
       seed=st.integers(0, 2**31))
def test_kernel_scores_equal_brute_force(bits, d, nq, ni, seed):
    rng = np.random.default_rng(seed)
    users, items = random_codes(rng, nq, d, bits), random_codes(rng, ni, d, bits)
    ref = codes_to_levels(users, bits).astype(np.float64) @ codes_to_levels(items, bits).astype(np.float64).T
    for name, (kernel, prep) in kernels_for(items, bits).items():
        got = all_scores(kernel, prep(users))
        assert got.dtype == np.int32
        assert np.array_equal(got, ref), name


def test_extreme_codes_are_exact():
    """All-max codes: the largest |<k_u, k_i>| = d m^2 for every width, float32 and float64 GEMM."""
    for bits, d in [(8, 64), (8, 300), (4, 200), (1, 200)]:
        top = np.full((3, d), 2**bits - 1, np.uint8)
        low = np.zeros((2, d), np.uint8)
        items = np.concatenate([top, low])
        for name, (kernel, prep) in kernels_for(items, bits).items():
            got = all_scores(kernel, prep(top))
            m2d = d * (2**bits - 1) ** 2
            assert np.all(got[:, :3] == m2d) and np.all(got[:, 3:] == -m2d), (bits, d, name)


# ---------------------------------------------------------------- selection
@FAST
@given(n_rows=st.integers(1, 6), n=st.integers(1, 3000), k=st.integers(1, 60), dtype=st.sampled_from(
    ["uint8", "uint16", "int32", "float32"]), largest=st.booleans(), seed=st.integers(0, 2**31))
def test_select_topk_matches_stable_sort(n_rows, n, k, dtype, largest, seed):
    rng = np.random.default_rng(seed)
    hi = 20 if dtype != "float32" else 5
    S = rng.integers(0, hi, size=(n_rows, n)).astype(dtype)  # many ties
    worst = sentinel(S.dtype, largest)
    S[rng.random(S.shape) < 0.3] = worst  # excluded entries
    cols, vals = select_topk(S, k, largest, sample_stride=4)
    key = -S.astype(np.float64) if largest else S.astype(np.float64)
    order = np.argsort(key, axis=1, kind="stable")
    for r in range(n_rows):
        eligible = order[r][S[r][order[r]] != worst][:k]
        m = len(eligible)
        assert np.array_equal(cols[r, :m], eligible)
        assert np.array_equal(vals[r, :m], S[r, eligible])
        assert np.all(cols[r, m:] == -1)


def test_search_topk_excludes_and_breaks_ties_by_index():
    rng = np.random.default_rng(3)
    items = random_codes(rng, 5000, 64, 1)
    users = random_codes(rng, 70, 64, 1)
    indptr, indices = random_csr(rng, 70, 5000, 300)
    ref = codes_to_levels(users, 1).astype(np.int64) @ codes_to_levels(items, 1).astype(np.int64).T
    want_items, want_scores = reference_topk(ref, 50, (indptr, indices))
    for name, (kernel, prep) in kernels_for(items, 1).items():
        for threads in (1, 2):
            got_items, got_scores = search_topk(kernel, prep(users), 50, exclude=(indptr, indices), threads=threads)
            assert np.array_equal(got_items, want_items), name
            assert np.array_equal(got_scores, want_scores), name
            rows = np.repeat(np.arange(70), np.diff(indptr))
            seen = set(zip(rows.tolist(), indices.tolist()))
            assert not any((r, int(i)) in seen for r in range(70) for i in got_items[r])


def test_search_topk_pads_rows_with_too_few_eligible_items():
    rng = np.random.default_rng(0)
    items = random_codes(rng, 30, 8, 2)
    users = random_codes(rng, 2, 8, 2)
    indptr = np.array([0, 27, 27])
    indices = np.arange(27)
    for name, (kernel, prep) in kernels_for(items, 2).items():
        got, scores = search_topk(kernel, prep(users), 5, exclude=(indptr, indices))
        assert set(got[0, :3].tolist()) == {27, 28, 29} and np.all(got[0, 3:] == -1), name
        assert np.all(scores[0, 3:] == np.iinfo(np.int32).min)
        assert np.all(got[1] >= 0)


def test_float_kernel_matches_numpy():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((2000, 32)).astype(np.float32)
    users = rng.standard_normal((40, 32)).astype(np.float32)
    got, scores = search_topk(K.GemmKernel(items), users, 20)
    ref = users @ items.T
    want = np.argsort(-ref, axis=1, kind="stable")[:, :20]
    assert np.array_equal(got, want)
    assert np.allclose(scores, np.take_along_axis(ref, want, 1), rtol=1e-5, atol=1e-5)


def test_streaming_search_is_exact_when_the_sample_misleads():
    """Catalogue large enough for sampled thresholds; rows built to defeat the sample."""
    rng = np.random.default_rng(5)
    n, d, k = 4096, 64, 60
    users = random_codes(rng, 6, d, 1)
    items = random_codes(rng, n, d, 1)
    items[0: 16 * 40: 16] = users[0]  # 40 perfect items, all in the 1-in-16 sample: too few pass
    items[7: 16 * 90: 16] = users[1]  # 90 perfect items, none in the sample
    users[5] = users[0]               # ... and user 5 has seen 30 of user 0's 40 perfect items
    lens = [0, 0, n - 10, n // 16, 0, 30]
    indices = [np.zeros(0, np.int64), np.zeros(0, np.int64),
               rng.choice(n, n - 10, replace=False),           # only 10 eligible items: padded
               np.arange(0, n, 16),                            # the whole sample is excluded
               np.zeros(0, np.int64),
               np.arange(0, 16 * 30, 16)]
    indptr = np.concatenate([[0], np.cumsum(lens)])
    indices = np.concatenate(indices)
    ref = codes_to_levels(users, 1).astype(np.int64) @ codes_to_levels(items, 1).astype(np.int64).T
    want_items, want_scores = reference_topk(ref, k, (indptr, indices))
    for name, (kernel, prep) in kernels_for(items, 1).items():
        got_items, got_scores = search_topk(kernel, prep(users), k, exclude=(indptr, indices), threads=1)
        assert np.array_equal(got_items, want_items), name
        assert np.array_equal(got_scores[got_items >= 0], want_scores[want_items >= 0].astype(np.int32)), name
        assert np.sum(got_items[2] >= 0) == 10


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([1, 2, 3, 8]), d=st.integers(1, 80), nq=st.integers(1, 40), n=st.integers(1, 5000),
       k=st.integers(1, 70), max_seen=st.integers(0, 400), threads=st.integers(1, 2), seed=st.integers(0, 2**31))
def test_search_topk_matches_reference_on_random_inputs(bits, d, nq, n, k, max_seen, threads, seed):
    rng = np.random.default_rng(seed)
    k = min(k, n)
    users, items = random_codes(rng, nq, d, bits), random_codes(rng, n, d, bits)
    indptr, indices = random_csr(rng, nq, n, max_seen)
    ref = codes_to_levels(users, bits).astype(np.int64) @ codes_to_levels(items, bits).astype(np.int64).T
    want_items, want_scores = reference_topk(ref, k, (indptr, indices))
    for name, (kernel, prep) in kernels_for(items, bits).items():
        got_items, got_scores = search_topk(kernel, prep(users), k, exclude=(indptr, indices), threads=threads)
        assert np.array_equal(got_items, want_items), name
        ok = want_items >= 0
        assert np.array_equal(got_scores[ok], want_scores[ok].astype(np.int32)), name
        assert np.all(got_scores[~ok] == np.iinfo(np.int32).min), name


def test_compiled_plane_kernel_is_used_and_sorts_exclusions():
    from hqgnn.index.kernels import compiled_planes, compiled_select

    assert compiled_planes.available(), "numba is a dependency: the compiled kernel must load"
    kernel = K.PlaneKernel(pack_codes(np.zeros((4, 8), np.uint8), 1), 1, 8)
    assert kernel.name == "bitplane" and kernel.fused() is not None
    assert K.PlaneKernel(kernel.items, 1, 8, compiled=False).fused() is None
    indptr = np.array([0, 3, 3, 5])
    got = compiled_select.sorted_exclusion(indptr, np.array([9, 2, 5, 7, 1]))
    assert got.tolist() == [2, 5, 9, 1, 7]
    already = np.array([2, 5, 9, 1, 7])
    assert compiled_select.sorted_exclusion(indptr, already).tolist() == already.tolist()


def test_compiled_search_from_several_python_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    items, users = random_codes(rng, 3000, 64, 1), random_codes(rng, 40, 64, 1)
    kernel = K.PlaneKernel(pack_codes(items, 1), 1, 64)
    want = search_topk(kernel, pack_codes(users, 1), 20, threads=2)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: search_topk(kernel, pack_codes(users, 1), 20, threads=2), range(8)))
    for items_k, scores_k in got:
        assert np.array_equal(items_k, want[0]) and np.array_equal(scores_k, want[1])


def test_every_kernel_implements_the_protocol_and_the_driver_names_its_result():
    """The kernel interface is written down (a Protocol); the driver returns (items, raw_scores) by name."""
    rng = np.random.default_rng(2)
    items, users = random_codes(rng, 300, 20, 3), random_codes(rng, 4, 20, 3)
    kernels = [kernel for kernel, _ in kernels_for(items, 3).values()]
    kernels.append(K.GemmKernel(rng.standard_normal((300, 20)).astype(np.float32)))
    for kernel in kernels:
        assert isinstance(kernel, K.Kernel), type(kernel).__name__
        assert isinstance(kernel.subset(np.arange(0, 300, 16)), K.Kernel)
        fused = kernel.fused()
        assert fused is None or isinstance(fused, K.FusedSearch)
    plane = K.PlaneKernel(pack_codes(items, 3), 3, 20)
    result = search_topk(plane, pack_codes(users, 3), 7)
    assert isinstance(result, SearchResult) and result._fields == ("items", "raw_scores")
    got_items, got_scores = result
    assert got_items is result.items and got_scores is result.raw_scores
    want_items, want_scores = reference_topk(brute_force_scores(codes_to_levels(users, 3), codes_to_levels(items, 3)), 7)
    assert np.array_equal(result.items, want_items) and np.array_equal(result.raw_scores, want_scores)


@pytest.mark.skipif(not K.Int16DotKernel.available(), reason="the int16 multiply-add loop needs AVX2 and numba")
@pytest.mark.parametrize("bits, d", [(2, 32), (4, 16), (4, 288), (5, 68), (5, 69), (7, 8), (8, 8), (8, 300), (1, 64)])
def test_int16_dot_fused_search_is_exact_in_both_forms(bits, d):
    """The compiled AVX2 loop: narrow (uint8 x int8, int16 lane sums) up to 2 ceil(d/4) m^2 < 2^15,
    wide (int16 x int16, int32 sums) beyond. Extreme codes (all 0 / all 2^b - 1) make the largest
    sums, at the edge of the narrow form too (4 x 288: 32,400; 5 x 68: 32,674); a heavy exclusion
    list, single queries and batches that are not a multiple of 8 run the other paths."""
    from hqgnn.index.kernels import compiled_madd

    rng = np.random.default_rng(bits * 1000 + d)
    m = 2**bits - 1
    items, users = random_codes(rng, 700, d, bits), random_codes(rng, 19, d, bits)
    items[:3], items[3:5], users[0], users[1] = m, 0, m, 0
    users[2, : d // 2], users[2, d // 2:] = m, 0
    kernel = K.Int16DotKernel(items, bits)
    fused = kernel.fused()
    assert isinstance(fused, compiled_madd.FusedMaddSearch)
    assert fused.narrow == (bits <= 7 and 2 * -(-d // 4) * m * m < 2**15)
    indptr, indices = random_csr(rng, 19, 700, 60)
    heavy = np.sort(rng.choice(700, 650, replace=False))  # user 3 has seen all but 50 items
    lens = np.diff(indptr)
    lens[3] = len(heavy)
    indices = np.concatenate([indices[: indptr[3]], heavy, indices[indptr[4]:]])
    indptr = np.concatenate([[0], np.cumsum(lens)])
    ref = brute_force_scores(codes_to_levels(users, bits), codes_to_levels(items, bits))
    for k, rows in [(40, np.arange(19)), (50, np.arange(19)), (7, np.array([2])), (700, np.arange(9))]:
        sub = csr_rows(indptr, indices, rows)
        want_items, want_scores = reference_topk(ref[rows], k, sub)
        for threads in (1, 2):
            got_items, got_scores = search_topk(kernel, users[rows], k, exclude=sub, threads=threads)
            assert np.array_equal(got_items, want_items), (k, threads)
            ok = want_items >= 0
            assert np.array_equal(got_scores[ok], want_scores[ok].astype(np.int32)), (k, threads)
            assert np.all(got_scores[~ok] == np.iinfo(np.int32).min)
    got_items, got_scores = search_topk(kernel, users[:1], 3)
    assert got_scores[0, 0] == d * m * m and got_items[0].tolist() == [0, 1, 2]  # all-top user and items


def test_int16_dot_falls_back_to_gemm_where_the_fused_loop_cannot_run(monkeypatch):
    """8 bits at d m^2 >= 2^30 (d = 16,513): the int32 sums could overflow, so the search is gemm's
    (float64, exact); so is it where AVX2 is missing."""
    rng = np.random.default_rng(4)
    items, users = random_codes(rng, 6, 16513, 8), random_codes(rng, 2, 16513, 8)
    items[0], users[0] = 255, 255
    kernel = K.Int16DotKernel(items, 8)
    assert kernel.fused() is None and kernel.dtype == np.float64
    got, scores = search_topk(kernel, users, 6)
    want, want_scores = reference_topk(brute_force_scores(codes_to_levels(users, 8), codes_to_levels(items, 8)), 6)
    assert np.array_equal(got, want) and np.array_equal(scores, want_scores.astype(np.int64))
    monkeypatch.setattr(K.Int16DotKernel, "available", staticmethod(lambda: False))
    small = K.Int16DotKernel(items[:, :8], 8)
    assert small.fused() is None
