"""``hqgnn export --format faiss``: FAISS indexes of the item codes that faiss itself loads and searches
to the engine's top-K (seen-item exclusion aside)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hqgnn.cli import main
from hqgnn.errors import ConfigError
from hqgnn.export import export_faiss, export_run
from hqgnn.index import FloatIndex, QuantizedIndex, backends, pack_codes

faiss = pytest.importorskip("faiss")

N_USERS, N_ITEMS = 60, 1500


def _index(bits, dim=64, seed=0, string_ids=False, n_items=N_ITEMS, n_users=N_USERS):
    rng = np.random.default_rng(seed)
    if string_ids:
        ids = dict(user_ids=np.array([f"user{i}" for i in range(n_users)]),
                   item_ids=np.array([f"i{i}" for i in rng.permutation(n_items)]))
    else:  # original ids that are not the item indices
        ids = dict(user_ids=np.arange(n_users) + 500, item_ids=rng.permutation(n_items) * 13 + 5)
    if bits == 32:
        return FloatIndex.from_embeddings(rng.standard_normal((n_items, dim)).astype(np.float32),
                                          user_emb=rng.standard_normal((n_users, dim)).astype(np.float32), **ids)
    top = 2**bits
    return QuantizedIndex.from_codes(rng.integers(0, top, (n_items, dim)), bits,
                                     user_codes=rng.integers(0, top, (n_users, dim)), user_scale=0.5,
                                     item_scale=1.5, **ids)


def _export(tmp_path, ix, name="items.faiss"):
    art = tmp_path / "model.hqgnn"
    ix.save(art)
    out = tmp_path / name
    info = export_faiss(art, out)
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    queries = np.load(tmp_path / f"{name}.users.npz")
    reader = faiss.read_index_binary if meta["read_with"] == "faiss.read_index_binary" else faiss.read_index
    return info, meta, queries, reader(str(out))


def _canonical(raw, items):
    """Rows re-sorted by (score desc, item index): the engine's order."""
    order = np.lexsort((items, -raw.astype(np.float64)), axis=1)
    return np.take_along_axis(raw, order, 1), np.take_along_axis(items, order, 1)


# ---------------------------------------------------------------- 1 bit: binary index
@pytest.mark.parametrize("dim", [64, 20])
def test_bit_order_is_faiss_own(dim):
    """faiss packs bit j into byte j // 8 at position j % 8, LSB first: the byte view of a bit plane."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2, (50, dim)).astype(np.uint8)
    ours = np.ascontiguousarray(pack_codes(codes, 1)[0]).view(np.uint8)[:, : -(-dim // 8)]
    levels = np.ascontiguousarray(2.0 * codes - 1, dtype=np.float32)  # sign bits: level +1 <-> bit 1
    theirs = np.zeros((50, -(-dim // 8)), np.uint8)
    faiss.fvecs2bitvecs(faiss.swig_ptr(levels), faiss.swig_ptr(theirs), dim, 50)  # bit set where x >= 0
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("dim,k", [(64, 10), (16, 10), (16, 400), (20, 50)])
def test_binary_index_searches_to_the_engine_top_k(tmp_path, dim, k):
    """Ids, scores (d - 2h) and tie order equal the engine's -- dim 16 ties almost everything."""
    ix = _index(1, dim=dim)
    info, meta, queries, index = _export(tmp_path, ix)
    assert isinstance(index, faiss.IndexBinaryIDMap) and index.ntotal == N_ITEMS and index.d == 8 * -(-dim // 8)
    assert info["read_with"] == "faiss.read_index_binary" and meta["bits"] == 1 and meta["dim"] == dim
    dist, ids = index.search(queries["queries"], k)
    items, raw = ix.search(None, k)
    assert np.array_equal(ids, ix.item_map.ids[items])  # original item ids, engine order, ties included
    assert np.array_equal(dim - 2 * dist, raw)
    assert np.array_equal(queries["user_ids"], ix.user_map.ids)


# ---------------------------------------------------------------- 2..7 bits: scalar quantizer of the levels
@pytest.mark.parametrize("bits", [2, 3, 4, 7])
def test_scalar_quantizer_inner_products_are_the_engine_raw_scores(tmp_path, bits):
    ix = _index(bits, seed=bits)
    info, meta, queries, index = _export(tmp_path, ix)
    assert "QT_8bit_direct_signed" in meta["faiss_index"] and meta["read_with"] == "faiss.read_index"
    sq = faiss.downcast_index(index.index)
    assert sq.sa_code_size() == ix.dim  # one byte per dimension
    # the stored values are the odd levels, exactly
    levels = 2 * ix.item_codes().astype(np.float32) - (2**bits - 1)
    assert np.array_equal(sq.reconstruct_n(0, N_ITEMS), levels)
    # every inner product faiss computes is the integer <k_u, k_i>: ask for every item, then the
    # engine's tie order, and compare whole rankings
    dist, ids = index.search(queries["queries"], N_ITEMS)
    assert np.array_equal(dist, np.round(dist))
    items, raw = ix.search(None, N_ITEMS)
    pos = ix.item_map.to_index(ids.ravel()).reshape(ids.shape)
    c_raw, c_items = _canonical(dist.astype(np.int64), pos)
    assert np.array_equal(c_items, items) and np.array_equal(c_raw, raw)
    # a top-20: the engine's scores; items equal up to the order of tied scores
    dist, ids = index.search(queries["queries"], 20)
    items, raw = ix.search(None, 21)
    assert np.array_equal(dist.astype(np.int64), raw[:, :20])
    alone = np.ones((len(raw), 20), bool)  # items whose score no neighbour shares
    alone[:, 1:] &= raw[:, 1:20] != raw[:, :19]
    alone &= raw[:, :20] != raw[:, 1:21]
    assert alone.mean() > 0.3 and np.array_equal(ids[alone], ix.item_map.ids[items[:, :20]][alone])


def test_scalar_quantizer_model_scores(tmp_path):
    ix = _index(4)
    _, meta, queries, index = _export(tmp_path, ix)
    dist, _ = index.search(queries["queries"][:3], 5)
    rec = ix.recommend(ix.user_map.ids[:3], 5, exclude_seen=False)
    assert np.array_equal(dist * meta["user_scale"] * meta["item_scale"] / 4, rec.scores)


def test_eight_bits_and_overflowing_dims_are_refused(tmp_path):
    for ix, message in ((_index(8, n_items=50), "8-bit levels"), (_index(7, dim=1100, n_items=50), r"2\^24")):
        art = tmp_path / "m.hqgnn"
        ix.save(art)
        with pytest.raises(ConfigError, match=message):
            export_faiss(art, tmp_path / "x.faiss")
        assert not (tmp_path / "x.faiss").exists()


# ---------------------------------------------------------------- float32
def test_float_flat_index(tmp_path):
    ix = _index(32)
    _, meta, queries, index = _export(tmp_path, ix)
    assert isinstance(index, faiss.IndexIDMap) and meta["faiss_index"] == "IndexIDMap(IndexFlatIP)"
    dist, ids = index.search(queries["queries"], 25)
    items, raw = ix.search(None, 25)
    np.testing.assert_allclose(dist, raw, rtol=1e-5, atol=1e-5)  # faiss's own float32 rounding
    # the same ranking, up to scores that float32 rounding alone tells apart
    same = ids == ix.item_map.ids[items]
    assert same.mean() > 0.95
    pos = ix.item_map.to_index(ids[~same])
    exact = np.einsum("ij,ij->i", ix.user_emb[np.nonzero(~same)[0]].astype(np.float64), ix.item_emb[pos])
    np.testing.assert_allclose(exact, raw[~same], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- ids, the command line, a run folder
def test_string_item_ids_map_to_indices_in_the_sidecar(tmp_path, capsys):
    ix = _index(1, string_ids=True)
    art = tmp_path / "model.hqgnn"
    ix.save(art)
    out = tmp_path / "s.faiss"
    assert main(["export", str(art), "--format", "faiss", str(out)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqgnn: note: item ids are strings") and "\n" not in err
    meta = json.loads((tmp_path / "s.faiss.json").read_text())
    index = faiss.read_index_binary(str(out))
    queries = np.load(tmp_path / "s.faiss.users.npz")
    _, ids = index.search(queries["queries"], 10)
    items, _ = ix.search(None, 10)
    assert np.array_equal(ids, items)  # faiss ids are item indices ...
    assert np.array_equal(np.array(meta["item_ids"])[ids], ix.item_map.ids[items])  # ... named in OUT.json
    assert queries["user_ids"].tolist() == ix.user_map.ids.tolist()


def test_missing_faiss_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    ix = _index(1)
    art = tmp_path / "model.hqgnn"
    ix.save(art)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.delitem(sys.modules, "hqgnn.index.backends.faiss_export", raising=False)
    monkeypatch.delattr(backends, "faiss_export", raising=False)  # as if never imported
    assert main(["export", str(art), "--format", "faiss", str(tmp_path / "x.faiss")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs faiss" in err and "hqgnn[faiss]" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.hqgnn"]


def test_export_of_a_trained_run(tmp_path, capsys):
    """``hqgnn export RUN --format faiss OUT`` on a trained 1-bit run: faiss's top-K is the artifact's."""
    from hqgnn.api import Recommender
    from hqgnn.index.recommender import ArtifactRecommender

    rec = Recommender(model="hqgnn", bits=1, synthetic_users=80, synthetic_items=120, epochs=2, batch_size=512,
                      dim=32, layers=1, threads=1, eval_every=2, patience=0)
    rec.fit("synthetic", out_dir=tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tmp_path / "m.hqgnn")
    out = tmp_path / "m.faiss"
    assert main(["export", str(tmp_path / "run"), "--format", "faiss", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "faiss" and info["bits"] == 1
    queries = np.load(tmp_path / "m.faiss.users.npz")
    dist, ids = faiss.read_index_binary(str(out)).search(queries["queries"], 15)
    served = ArtifactRecommender(tmp_path / "m.hqgnn").recommend(queries["user_ids"], 15, exclude_seen=False)
    assert np.array_equal(ids, served.items)
    assert np.array_equal((32 - 2 * dist) * info_scale(tmp_path / "m.faiss.json"), served.scores)


def info_scale(meta_path):
    meta = json.loads(meta_path.read_text())
    return meta["user_scale"] * meta["item_scale"] / 4
