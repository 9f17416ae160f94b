"""Top-K of every user to Parquet (hqgnn.index.batch, ``hqgnn recommend --all-users``): each user's rows
are that user's single-user answer; shards concatenate to the whole; nothing half-written is left."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from hqgnn.cli import main
from hqgnn.errors import ConfigError
from hqgnn.index import FloatIndex, QuantizedIndex
from hqgnn.index.batch import parse_shard, recommend_all, shard_range
from hqgnn.index.errors import RetrievalError
from hqgnn.index.recommender import ArtifactRecommender

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss not installed")

N_USERS, N_ITEMS, DIM, K = 70, 400, 48, 30


def _train(rng, n_users=N_USERS, n_items=N_ITEMS):
    """~5% seen items per user; user 3 has seen all but 10 items (a short row), user 5 every item (no row)."""
    dense = rng.random((n_users, n_items)) < 0.05
    dense[3] = True
    dense[3, rng.choice(n_items, 10, replace=False)] = False
    dense[5] = True
    return sp.csr_matrix(dense.astype(np.float32))


def _artifact(path, bits, seed=0, string_ids=False):
    rng = np.random.default_rng(seed)
    ids = {}
    if string_ids:
        ids = dict(user_ids=np.array([f"u{i:03d}" for i in rng.permutation(N_USERS)]),
                   item_ids=np.array([f"item-{i}" for i in rng.permutation(N_ITEMS)]))
    else:  # integer ids that are not the dense indices
        ids = dict(user_ids=rng.permutation(N_USERS) * 5 + 1000, item_ids=rng.permutation(N_ITEMS) * 3 + 7)
    train = _train(rng)
    if bits == 32:
        ix = FloatIndex.from_embeddings(rng.standard_normal((N_ITEMS, DIM)).astype(np.float32),
                                        user_emb=rng.standard_normal((N_USERS, DIM)).astype(np.float32),
                                        train=train, **ids)
    else:
        top = 2**bits
        ix = QuantizedIndex.from_codes(rng.integers(0, top, (N_ITEMS, DIM)), bits,
                                       user_codes=rng.integers(0, top, (N_USERS, DIM)), user_scale=0.37,
                                       item_scale=1.9, train=train, **ids)
    ix.save(path)
    return path


def _check_rows_equal_single_user(path, table, k, exclude_seen=True, float_scores=False):
    rec = ArtifactRecommender(path)
    df = table.to_pandas()
    assert df["user"].tolist() == sorted(df["user"].tolist(), key=rec.user_map.to_index)  # dense user order
    for u in rec.user_map.ids:  # one single-user answer per user: the reference
        one = rec.recommend([u], k=k, exclude_seen=exclude_seen)
        n = int(one.found[0])
        rows = df[df["user"] == u]
        assert len(rows) == n
        assert rows["rank"].tolist() == list(range(1, n + 1))
        assert rows["item"].tolist() == one.items[0, :n].tolist()
        if float_scores:
            # float32 sgemm rounds alike only within one call shape: batched and single-user products
            # may differ in the last bits (a property of BLAS, not of the batch)
            np.testing.assert_allclose(rows["score"].to_numpy(), one.scores[0, :n], rtol=1e-5, atol=1e-5)
        else:
            assert rows["score"].tolist() == one.scores[0, :n].tolist()


# ---------------------------------------------------------------- rows = single-user answers
@pytest.mark.parametrize("bits", [1, 4, 32])
def test_every_users_rows_equal_their_single_user_answer(tmp_path, bits):
    path = _artifact(tmp_path / "a.hqgnn", bits)
    out = tmp_path / "top.parquet"
    info = recommend_all(path, K, out, batch_users=16, threads=2)
    table = pq.read_table(out)
    assert info["users"] == N_USERS and info["rows"] == table.num_rows == N_USERS * K - K - (K - 10)
    assert pq.ParquetFile(out).metadata.num_row_groups == -(-N_USERS // 16)  # one row group per block
    _check_rows_equal_single_user(path, table, K, float_scores=bits == 32)


def test_include_seen_gives_k_rows_for_everyone(tmp_path):
    path = _artifact(tmp_path / "a.hqgnn", 2)
    out = tmp_path / "top.parquet"
    recommend_all(path, K, out, exclude_seen=False)
    table = pq.read_table(out)
    assert table.num_rows == N_USERS * K
    assert json.loads(table.schema.metadata[b"hqgnn"])["exclude_seen"] is False
    _check_rows_equal_single_user(path, table, K, exclude_seen=False)


def test_short_rows_hold_only_the_real_items(tmp_path):
    path = _artifact(tmp_path / "a.hqgnn", 1)
    rec = ArtifactRecommender(path)
    out = tmp_path / "top.parquet"
    recommend_all(rec, K, out)
    df = pq.read_table(out).to_pandas()
    short, none = rec.user_map.ids[3], rec.user_map.ids[5]
    assert df[df["user"] == short]["rank"].tolist() == list(range(1, 11))  # 10 unseen items
    assert (df["user"] == none).sum() == 0  # every item seen: no rows, no padding
    assert (df["item"] >= 0).all() and np.isfinite(df["score"]).all()


def test_string_ids_and_parquet_types(tmp_path):
    path = _artifact(tmp_path / "s.hqgnn", 3, string_ids=True)
    out = tmp_path / "top.parquet"
    recommend_all(path, K, out, batch_users=25)
    table = pq.read_table(out)
    assert table.schema.field("user").type == pa.string() and table.schema.field("item").type == pa.string()
    assert table.schema.field("rank").type == pa.int32() and table.schema.field("score").type == pa.float64()
    _check_rows_equal_single_user(path, table, K)
    int_out = tmp_path / "int.parquet"
    recommend_all(_artifact(tmp_path / "i.hqgnn", 3), 5, int_out)
    schema = pq.read_schema(int_out)
    assert schema.field("user").type == pa.int64() and schema.field("item").type == pa.int64()


def test_metadata_names_the_artifact_checksum_k_and_shard(tmp_path):
    path = _artifact(tmp_path / "a.hqgnn", 4)
    out = tmp_path / "top.parquet"
    info = recommend_all(path, 12, out, shard="2/3")
    meta = json.loads(pq.read_schema(out).metadata[b"hqgnn"])
    raw = path.read_bytes()
    sha = hashlib.sha256(raw[48:]).hexdigest()  # what the artifact's preamble records
    assert meta["artifact_sha256"] == info["artifact_sha256"] == sha == raw[16:48].hex()
    assert meta["k"] == 12 and meta["shard"] == "2/3" and meta["users"] == list(shard_range(N_USERS, "2/3"))
    assert meta["exclude_seen"] is True and meta["bits"] == 4 and meta["backend"] == "exact"


# ---------------------------------------------------------------- shards
@pytest.mark.parametrize("bits", [1, 32])
def test_shards_concatenate_to_the_unsharded_file(tmp_path, bits):
    path = _artifact(tmp_path / "a.hqgnn", bits, seed=4)
    whole = tmp_path / "all.parquet"
    recommend_all(path, K, whole, batch_users=7)
    parts = []
    for i in (1, 2, 3):
        out = tmp_path / f"part{i}.parquet"
        recommend_all(path, K, out, shard=(i, 3), batch_users=9)
        parts.append(pq.read_table(out).replace_schema_metadata(None))
    joined, expected = pa.concat_tables(parts), pq.read_table(whole).replace_schema_metadata(None)
    if bits != 32:
        assert joined.equals(expected)
    else:  # float32 sgemm rounds alike only within one call shape: scores to the last bits
        for column in ("user", "rank", "item"):
            assert joined.column(column).equals(expected.column(column))
        np.testing.assert_allclose(joined.column("score").to_numpy(), expected.column("score").to_numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_shard_ranges_cover_the_users_once():
    for n_users in (0, 1, 7, 100):
        for n in (1, 2, 3, 8):
            ranges = [shard_range(n_users, (i, n)) for i in range(1, n + 1)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n_users
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


@pytest.mark.parametrize("bad", ["0/3", "4/3", "1/0", "a/b", "2", "1/2/3", "-1/2"])
def test_bad_shard_is_a_one_line_error(tmp_path, capsys, bad):
    with pytest.raises(ConfigError):
        parse_shard(bad)
    path = _artifact(tmp_path / "a.hqgnn", 1)
    out = tmp_path / "top.parquet"
    assert main(["recommend", str(path), "--all-users", "--out", str(out), f"--shard={bad}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqgnn: error: --shard") and "\n" not in err
    assert list(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------- the command line
def test_cli_all_users(tmp_path, capsys):
    path = _artifact(tmp_path / "a.hqgnn", 4)
    out = tmp_path / "top.parquet"
    assert main(["recommend", str(path), "--all-users", "--k", "7", "--out", str(out), "--shard", "2/2",
                 "--threads", "2", "--batch-users", "8", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    lo, hi = shard_range(N_USERS, "2/2")
    assert info["users"] == hi - lo and info["shard"] == "2/2" and info["rows"] == pq.read_table(out).num_rows
    rec = ArtifactRecommender(path)
    users = pq.read_table(out).column("user").to_numpy()
    assert set(rec.user_map.to_index(users)) <= set(range(lo, hi))


@pytest.mark.parametrize("argv,message", [
    (["--all-users"], "--all-users needs --out"),
    (["--user", "1000", "--out", "x.parquet"], "--out and --shard go with --all-users"),
    (["--users", "u.txt", "--shard", "1/2"], "--out and --shard go with --all-users"),
])
def test_cli_flag_combinations(tmp_path, capsys, argv, message):
    path = _artifact(tmp_path / "a.hqgnn", 1)
    assert main(["recommend", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_all_users_excludes_user_and_users(tmp_path, capsys):
    path = _artifact(tmp_path / "a.hqgnn", 1)
    with pytest.raises(SystemExit) as exc:
        main(["recommend", str(path), "--all-users", "--user", "1000", "--out", str(tmp_path / "x.parquet")])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


# ---------------------------------------------------------------- nothing half-written
@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_no_file_left_after_an_error(tmp_path, monkeypatch, error):
    path = _artifact(tmp_path / "a.hqgnn", 4)
    out = tmp_path / "out" / "top.parquet"
    out.parent.mkdir()
    out.write_bytes(b"an older file")
    calls = []
    real = QuantizedIndex.search

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two row groups written, then the error
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(QuantizedIndex, "search", failing)
    with pytest.raises(type(error)):
        recommend_all(path, K, out, batch_users=10)
    assert [p.name for p in out.parent.iterdir()] == ["top.parquet"] and out.read_bytes() == b"an older file"
    out.unlink()
    calls.clear()
    with pytest.raises(type(error)):
        recommend_all(path, K, out, batch_users=10)
    assert list(out.parent.iterdir()) == []


def test_no_file_left_after_a_failed_write(tmp_path, monkeypatch):
    """An error in the writer thread stops the run and leaves nothing either."""
    path = _artifact(tmp_path / "a.hqgnn", 1)
    out = tmp_path / "top.parquet"
    real = pq.ParquetWriter.write_table
    calls = []

    def failing(self, table, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    with pytest.raises(OSError, match="No space"):
        recommend_all(path, K, out, batch_users=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hqgnn"]


def test_bad_requests_write_nothing(tmp_path):
    path = _artifact(tmp_path / "a.hqgnn", 1)
    out = tmp_path / "top.parquet"
    with pytest.raises(RetrievalError, match="out of range"):
        recommend_all(path, N_ITEMS + 1, out)
    with pytest.raises(ConfigError, match="batch_users"):
        recommend_all(path, 5, out, batch_users=0)
    with pytest.raises(ConfigError, match="threads"):
        recommend_all(path, 5, out, threads=0)
    item_only = tmp_path / "items.hqgnn"
    QuantizedIndex.from_codes(np.zeros((10, 8), np.uint8), 1, user_ids=np.arange(3)).save(item_only)
    with pytest.raises(RetrievalError, match="no user vectors"):
        recommend_all(item_only, 5, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.hqgnn", "items.hqgnn"]


@needs_faiss
def test_faiss_flat_backend_writes_the_exact_rows(tmp_path):
    path = _artifact(tmp_path / "a.hqgnn", 1, seed=2)
    exact, flat = tmp_path / "exact.parquet", tmp_path / "flat.parquet"
    recommend_all(path, K, exact)
    recommend_all(path, K, flat, backend="faiss-flat")
    assert pq.read_table(flat).replace_schema_metadata(None).equals(pq.read_table(exact).replace_schema_metadata(None))
    assert json.loads(pq.read_schema(flat).metadata[b"hqgnn"])["backend"] == "faiss-flat"


def test_another_backend_searches_a_view_of_the_callers_index(tmp_path):
    """``backend=`` on an index object searches a view: the caller's index keeps its backend."""
    path = _artifact(tmp_path / "a.hqgnn", 4)
    rec = ArtifactRecommender(path)
    backends = rec.index._backends()
    if "cascade" not in backends:
        pytest.skip("no cascade backend in this tree")
    exact, cascade = tmp_path / "exact.parquet", tmp_path / "cascade.parquet"
    recommend_all(rec, K, exact)
    # every item a candidate: the cascade is exact
    recommend_all(rec, K, cascade, backend="cascade", backend_params={"candidates": N_ITEMS})
    assert rec.index.backend == "exact" and not rec.index.backend_params
    assert pq.read_table(cascade).replace_schema_metadata(None).equals(
        pq.read_table(exact).replace_schema_metadata(None))
    meta = json.loads(pq.read_schema(cascade).metadata[b"hqgnn"])
    assert meta["backend"] == "cascade" and meta["backend_params"] == {"candidates": N_ITEMS}


def test_a_large_k_gets_smaller_blocks(tmp_path, monkeypatch):
    import hqgnn.index.batch as batch

    path = _artifact(tmp_path / "a.hqgnn", 1)
    monkeypatch.setattr(batch, "MAX_BLOCK_ROWS", 5 * N_ITEMS)
    out = tmp_path / "top.parquet"
    info = recommend_all(path, N_ITEMS, out, batch_users=64, exclude_seen=False)
    assert info["rows"] == N_USERS * N_ITEMS
    assert pq.ParquetFile(out).metadata.num_row_groups == N_USERS // 5  # 5 users per block, not 64
