"""The ``cascade`` backend: sign-plane candidates re-ranked exactly (index, CLI, HTTP server, Python API)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from hqgnn.cli import main
from hqgnn.errors import ConfigError
from hqgnn.index import FloatIndex, QuantizedIndex
from hqgnn.index.backends import cascade, with_backend
from hqgnn.index.packing import codes_to_levels, pack_codes, unpack_codes

from oracles import brute_force_scores, reference_topk


def _random_index(bits, n_users=40, n_items=300, dim=70, seed=0, **kwargs):
    """Random codes (``dim`` not a multiple of 64), about 10% of the items seen per user, one user
    with all but 7 items seen (fewer eligible items than the k of the tests)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 2**bits, (n_users, dim), dtype=np.uint8)
    items = rng.integers(0, 2**bits, (n_items, dim), dtype=np.uint8)
    seen = rng.random((n_users, n_items)) < 0.1
    seen[3] = True
    seen[3, rng.choice(n_items, 7, replace=False)] = False
    index = QuantizedIndex.from_codes(items, bits, user_codes=users, train=sp.csr_matrix(seen), **kwargs)
    return index, users, items, seen


def _sign_topc(users, items, bits, seen, c):
    """Oracle of stage 1: each user's ``c`` best unseen items by sign agreement (ties: lower index)."""
    su = np.where(codes_to_levels(users, bits) > 0, 1, -1)
    si = np.where(codes_to_levels(items, bits) > 0, 1, -1)
    s = brute_force_scores(su, si).astype(np.float64)
    s[seen] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :c]
    return [o[np.isfinite(s[r, o])] for r, o in enumerate(order)]


# ---------------------------------------------------------------- the sign plane
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_top_plane_is_the_one_bit_code_of_the_sign(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, (50, 70), dtype=np.uint8)
    planes = pack_codes(codes, bits)
    sign_codes = (codes_to_levels(codes, bits) > 0).astype(np.uint8)  # the 1-bit code of sign(k)
    assert np.array_equal(cascade.sign_planes(planes), pack_codes(sign_codes, 1))
    assert np.array_equal(unpack_codes(cascade.sign_planes(planes), 1, 70), codes >> (bits - 1))


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_with_every_item_a_candidate_it_is_the_exact_search_bit_for_bit(bits, monkeypatch):
    index, users, items, _ = _random_index(bits)
    exact = index.search(None, 20, exclude="train")
    view = with_backend(index, "cascade", candidates=index.n_items)
    got = view.search(None, 20, exclude="train")
    assert np.array_equal(got.items, exact.items) and np.array_equal(got.raw_scores, exact.raw_scores)
    assert (got.items[3] >= 0).sum() == 7 and (got.items[3, 7:] == -1).all()  # padding as the exact backend's
    # item-to-item, query codes, the model's scores
    for a, b in ((view.similar([0, 5], 10), index.similar([0, 5], 10)),
                 (view.search(queries=users[:4], k=10), index.search(queries=users[:4], k=10))):
        assert np.array_equal(a.items, b.items) and np.array_equal(a.raw_scores, b.raw_scores)
    r1, r2 = view.recommend([1, 2], k=15), index.recommend([1, 2], k=15)
    assert np.array_equal(r1.items, r2.items) and np.array_equal(r1.scores, r2.scores)
    # blocks of queries: each block's exclusion rows taken right
    monkeypatch.setattr(cascade, "BLOCK_BYTES", 12 * index.n_items * 3)
    blocked = view.search(None, 20, exclude="train")
    assert np.array_equal(blocked.items, exact.items) and np.array_equal(blocked.raw_scores, exact.raw_scores)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("c", [1, 20, 45])
def test_few_candidates_give_the_exact_top_k_of_the_sign_plane_candidates(bits, c):
    """C below n_items: the answer is the oracle's top-k of the C best sign-plane items
    (k when C < k), every score the exact <k_u, k_i>, best first, ties to the lower index."""
    index, users, items, seen = _random_index(bits)
    k = 20
    got = with_backend(index, "cascade", candidates=c).search(None, k, exclude="train")
    scores = brute_force_scores(codes_to_levels(users, bits), codes_to_levels(items, bits))
    for r, cand in enumerate(_sign_topc(users, items, bits, seen, max(c, k))):
        s = np.full(index.n_items, -np.inf)
        s[cand] = scores[r, cand]
        want, want_scores = reference_topk(s[None], k)
        assert np.array_equal(got.items[r], want[0]), r
        ok = got.items[r] >= 0
        assert np.array_equal(got.raw_scores[r, ok], scores[r, got.items[r, ok]])
        assert not seen[r, got.items[r, ok]].any()
    assert (got.items[3, 7:] == -1).all() and (got.raw_scores[3, 7:] == np.iinfo(np.int32).min).all()


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_compiled_and_numpy_reranking_agree(dtype):
    rng = np.random.default_rng(2)
    levels = (2 * rng.integers(0, 16, (500, 33)) - 15).astype(dtype)
    user = (2 * rng.integers(0, 16, (30, 33)) - 15).astype(dtype)
    cand = np.stack([rng.choice(500, 60, replace=False) for _ in range(30)])
    cand[5, 10:] = -1  # a short row: padding past it
    cand[6, :] = -1
    cand[7, :4] = [4, 3, 2, 1]  # ties: four items with the same levels, listed high index first
    cand[7, 4:] = rng.choice(np.arange(5, 500), 56, replace=False)
    levels[[1, 2, 3]] = levels[4]
    for k in (1, 25, 60):
        a = cascade.rerank(user, levels, cand, k, compiled=True)
        b = cascade.rerank(user, levels, cand, k, compiled=False)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert (a[0][6] == -1).all() and (a[0][5, 10:] == -1).all()
        ref = brute_force_scores(user, levels)
        ok = a[0] >= 0
        assert np.array_equal(a[1][ok], ref[np.nonzero(ok)[0], a[0][ok]])


def test_one_bit_cascade_is_the_exact_search():
    index, *_ = _random_index(1)
    a = index.search(None, 20, exclude="train")
    b = with_backend(index, "cascade", candidates=25).search(None, 20, exclude="train")
    assert np.array_equal(a.items, b.items) and np.array_equal(a.raw_scores, b.raw_scores)


def test_bad_settings_are_refused_in_one_line():
    index, *_ = _random_index(2, n_items=80)
    for bad in (0, -3, 2.5, "100", True):
        with pytest.raises(ConfigError, match="candidates="):
            with_backend(index, "cascade", candidates=bad)
    with pytest.raises(ConfigError, match="no parameter 'nprobe'"):
        with_backend(index, "cascade", nprobe=4)
    floats = FloatIndex.from_embeddings(np.ones((5, 4), np.float32))
    with pytest.raises(ConfigError, match="float32 embeddings"):
        floats.with_backend("cascade", candidates=3)
    with pytest.raises(ConfigError, match="'cascade' is not available"):
        FloatIndex.from_embeddings(np.ones((5, 4), np.float32), backend="cascade")
    with pytest.raises(ConfigError, match="candidates=0"):  # refused when the index is built (the
        QuantizedIndex.from_codes(np.zeros((3, 4), np.uint8), 2, backend="cascade",  # all-users job: before
                                  backend_params={"candidates": 0})                  # its first batch)
    unchecked = QuantizedIndex.from_codes(np.zeros((3, 4), np.uint8), 2, backend="cascade")
    unchecked.backend_params = {"candidates": 0}
    with pytest.raises(ConfigError, match="candidates=0"):  # changed after the index was built: refused at the search
        unchecked.search(queries=np.zeros((1, 4), np.uint8), k=2)
    assert with_backend(index, "cascade", candidates=10**9).search([0], 5).items.shape == (1, 5)  # C > n_items: all
    assert index.backend == "exact"  # a view leaves the index as it was
    assert QuantizedIndex.from_codes(np.zeros((3, 4), np.uint8), 2, backend="cascade").backend_params == {}


# ---------------------------------------------------------------- CLI, server, Python API
@pytest.fixture
def artifact(tmp_path):
    index, users, items, seen = _random_index(4, n_items=120)
    path = tmp_path / "four.hqgnn"
    index.save(path)
    return path, index


def test_cli_recommend_and_similar_take_backend_cascade_and_candidates(artifact, capsys):
    path, index = artifact
    capsys.readouterr()
    out = {}
    for name, extra in (("exact", []), ("cascade", ["--backend", "cascade", "--candidates", str(index.n_items)])):
        assert main(["recommend", str(path), "--user", "3", "--k", "10", *extra]) == 0
        assert main(["similar", str(path), "--item", "4", "--k", "5", *extra]) == 0
        out[name] = capsys.readouterr().out
    assert out["exact"] == out["cascade"]
    assert main(["recommend", str(path), "--user", "0", "--backend", "cascade", "--candidates", "30"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["found"] == 50 and rec["scores"] == sorted(rec["scores"], reverse=True)
    assert main(["recommend", str(path), "--user", "0", "--candidates", "30"]) == 2
    assert "--candidates goes with --backend cascade" in capsys.readouterr().err
    assert main(["recommend", str(path), "--user", "0", "--backend", "cascade", "--candidates", "0"]) == 2
    err = capsys.readouterr().err
    assert "candidates=0" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_the_cascade_for_a_float_artifact(tmp_path, capsys):
    path = tmp_path / "float.hqgnn"
    FloatIndex.from_embeddings(np.ones((6, 4), np.float32), user_emb=np.ones((3, 4), np.float32)).save(path)
    capsys.readouterr()
    assert main(["recommend", str(path), "--user", "0", "--k", "2", "--backend", "cascade"]) == 2
    err = capsys.readouterr().err.strip()
    assert "float32 embeddings" in err and len(err.splitlines()) == 1


def test_cli_serve_passes_the_backend_and_its_candidates(artifact, monkeypatch, capsys):
    import hqgnn.serving

    path, _ = artifact
    calls = []
    monkeypatch.setattr(hqgnn.serving, "serve", lambda *a, **kw: calls.append(kw))
    assert main(["serve", str(path), "--backend", "cascade", "--candidates", "64"]) == 0
    assert calls[-1]["backend"] == "cascade" and calls[-1]["backend_params"] == {"candidates": 64}
    assert main(["serve", str(path)]) == 0
    assert calls[-1]["backend"] == "exact" and calls[-1]["backend_params"] == {}
    assert main(["serve", str(path), "--candidates", "64"]) == 2 and len(calls) == 2
    assert "--candidates goes with --backend cascade" in capsys.readouterr().err


def test_server_answers_with_the_cascade(artifact, monkeypatch):
    from fastapi.testclient import TestClient

    from hqgnn.serving import create_app
    from hqgnn.serving.launcher import ENV_ARTIFACT, ENV_BACKEND, ENV_BACKEND_PARAMS, app_from_env

    path, index = artifact
    full = {"candidates": index.n_items}
    answers = {}
    apps = {"exact": create_app(path), "cascade": create_app(path, backend="cascade", backend_params=full)}
    for name, app in apps.items():
        with TestClient(app) as client:
            answers[name] = (client.get("/recommend", params={"user": 3, "k": 10}).json(),
                             client.post("/recommend", json={"users": [0, 1], "k": 10}).json(),
                             client.get("/similar", params={"item": 4, "k": 5}).json())
            info = client.get("/info").json()
    assert answers["exact"] == answers["cascade"]
    assert info["index"]["backend_params"] == full and "cascade" in info["index"]["index"]
    monkeypatch.setenv(ENV_ARTIFACT, str(path))  # --workers N: the settings travel through the environment
    monkeypatch.setenv(ENV_BACKEND, "cascade")
    monkeypatch.setenv(ENV_BACKEND_PARAMS, json.dumps({"candidates": 7}))
    served = app_from_env().state.hqgnn.model.rec.index
    assert served.backend == "cascade" and served.backend_params == {"candidates": 7}
    with pytest.raises(ConfigError, match="candidates=0"):
        create_app(path, backend="cascade", backend_params={"candidates": 0})


def test_python_api_recommends_through_the_cascade():
    from hqgnn.api import Recommender

    rec = Recommender(model="hqgnn", bits=2, synthetic_users=60, synthetic_items=50, epochs=1, batch_size=256, dim=8,
                      layers=1, threads=1, eval_every=1, patience=0, ks=[5, 20], device="cpu")
    rec.fit("synthetic", progress=False)
    exact = rec.recommend([0, 1, 2], k=10)
    full = rec.recommend([0, 1, 2], k=10, backend="cascade", candidates=rec.data.n_items)
    assert np.array_equal(exact.items, full.items) and np.array_equal(exact.scores, full.scores)
    few = rec.recommend([0, 1, 2], k=10, backend="cascade", candidates=12)
    assert (np.diff(few.scores, axis=1) <= 0).all()
    view = rec.index("cascade", candidates=12)
    assert view is rec.index("cascade", candidates=12) and view.backend == "cascade"
    assert rec.index() is not view and rec.index().backend == "exact"
    with pytest.raises(ConfigError, match="candidates="):
        rec.index("cascade", candidates=0)
