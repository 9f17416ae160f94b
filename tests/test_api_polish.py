"""User-facing polish: a Recommendations result indexes and measures by query row; recommend_all
refuses an output that is not Parquet; a missing from_run / distill_from folder says so; the
package's dir() shows its public names only."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import hqgnn
from hqgnn.api import Recommender
from hqgnn.errors import CheckpointError, ConfigError
from hqgnn.index import QuantizedIndex, Recommendations
from hqgnn.index.batch import recommend_all

N_USERS, N_ITEMS, DIM, K = 9, 30, 16, 4


def _index() -> QuantizedIndex:
    """4-bit codes with integer ids that are not the dense indices; user 2 has seen all but 2 items."""
    rng = np.random.default_rng(3)
    seen = rng.random((N_USERS, N_ITEMS)) < 0.1
    seen[2] = True
    seen[2, [4, 11]] = False
    return QuantizedIndex.from_codes(rng.integers(0, 16, (N_ITEMS, DIM)), 4,
                                     user_codes=rng.integers(0, 16, (N_USERS, DIM)), user_scale=0.5, item_scale=1.5,
                                     train=sp.csr_matrix(seen.astype(np.float32)),
                                     user_ids=np.arange(N_USERS) * 10 + 100, item_ids=np.arange(N_ITEMS) * 7 + 1)


@pytest.fixture(scope="module")
def recs() -> Recommendations:
    return _index().recommend([100, 120, 130, 170, 180], k=K)


# ---------------------------------------------------------------- 1. Recommendations rows
def test_len_is_the_number_of_query_rows(recs):
    assert len(recs) == 5 == recs.items.shape[0]


@pytest.mark.parametrize("i", [0, 1, 4, -1, -5, np.int64(3)])
def test_an_integer_index_is_that_row_alone(recs, i):
    row = recs[i]
    assert isinstance(row, Recommendations) and len(row) == 1
    r = int(i) % 5
    assert row.queries.tolist() == [recs.queries[r]]
    for name in ("items", "scores", "raw_scores", "valid"):
        got, whole = getattr(row, name), getattr(recs, name)
        assert got.shape == (1, K)
        np.testing.assert_array_equal(got, whole[r:r + 1])
    assert (row.kind, row.fallback) == (recs.kind, recs.fallback)
    assert row.to_records() == [recs.to_records()[r]]


def test_the_short_row_keeps_its_padding(recs):
    row = recs[1]  # user 120: dense index 2, two unseen items only
    assert row.found.tolist() == [2] and row.items[0, 2:].tolist() == [-1, -1]
    assert np.isneginf(row.scores[0, 2:]).all()


@pytest.mark.parametrize("rows", [slice(1, 3), slice(None, None, 2), slice(-2, None), slice(4, 1)])
def test_a_slice_keeps_those_rows(recs, rows):
    part = recs[rows]
    expected = list(range(5))[rows]
    assert len(part) == len(expected)
    assert part.queries.tolist() == [recs.queries[r] for r in expected]
    np.testing.assert_array_equal(part.items, recs.items[expected].reshape(len(expected), K))
    np.testing.assert_array_equal(part.scores, recs.scores[expected].reshape(len(expected), K))
    np.testing.assert_array_equal(part.valid, recs.valid[expected].reshape(len(expected), K))


@pytest.mark.parametrize("i", [5, -6, 100])
def test_an_index_out_of_range_names_it_and_q(recs, i):
    with pytest.raises(IndexError) as err:
        recs[i]
    msg = str(err.value)
    assert f"index {i}" in msg and "q=5" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("bad", ["0", 1.0, True, None])
def test_an_index_of_another_type_is_a_type_error(recs, bad):
    with pytest.raises(TypeError, match=f"integers or slices, not {type(bad).__name__}"):
        recs[bad]


def test_unpacking_still_gives_items_then_scores(recs):
    items, scores = recs
    assert items is recs.items and scores is recs.scores


# ---------------------------------------------------------------- 2. recommend_all writes Parquet only
@pytest.mark.parametrize("name, why", [("top.csv", "suffix '.csv' is not supported"), ("top.txt", "suffix '.txt'"),
                                       ("top", "no .parquet suffix")])
def test_recommend_all_refuses_an_output_that_is_not_parquet(tmp_path, name, why):
    out = tmp_path / name
    with pytest.raises(ConfigError) as err:
        recommend_all(_index(), 3, out)  # a valid source: without the check the file would be written
    msg = str(err.value)
    assert f"out={str(out)!r}" in msg and why in msg and "Parquet" in msg and "\n" not in msg, msg
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_recommend_all_takes_parquet_in_any_case(tmp_path):
    out = tmp_path / "top.PARQUET"
    info = recommend_all(_index(), 3, out, threads=1)
    assert info["users"] == N_USERS and out.read_bytes()[:4] == b"PAR1"


# ---------------------------------------------------------------- 3. a missing from_run / distill_from folder
SMALL = dict(dim=8, layers=1, epochs=1, batch_size=256, threads=1, device="cpu", ks=[5, 20],
             early_stop_metric="recall@20", eval_every=1, patience=0)


@pytest.mark.parametrize("setting, more, error", [("from_run", {}, CheckpointError),
                                                   ("distill_from", {"distill_top": 10}, ConfigError)])
def test_a_missing_run_folder_says_no_such_folder(tiny_data, tmp_path, setting, more, error):
    missing = tmp_path / "no-run-here"
    rec = Recommender(model="hqgnn", bits=1, **{setting: str(missing)}, **more, **SMALL)
    with pytest.raises(error) as err:
        rec.fit(tiny_data, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"setting {setting}={str(missing)!r}: no such folder") and "\n" not in msg, msg
    assert "model.pt" not in msg


def test_a_from_run_folder_without_its_model_still_says_so(tiny_data, tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(CheckpointError) as err:
        Recommender(model="hqgnn", bits=1, from_run=str(empty), **SMALL).fit(tiny_data, progress=False)
    msg = str(err.value)
    assert msg == f"{empty / 'model.pt'}: from_run has no trained model (train a lightgcn run first)", msg


def test_a_distill_from_folder_without_its_model_still_says_so(tiny_data, tmp_path):
    empty = tmp_path / "empty-teacher"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        Recommender(model="hqgnn", bits=1, distill_from=str(empty), distill_top=10,
                    **SMALL).fit(tiny_data, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"setting distill_from={str(empty)!r}: no trained model there (model.pt missing"), msg
    assert "no such folder" not in msg


# ---------------------------------------------------------------- 4. dir(hqgnn)
def test_dir_of_the_package_shows_its_public_names_not_its_helpers():
    shown = set(dir(hqgnn))
    assert not {"TYPE_CHECKING", "importlib", "annotations"} & shown
    assert set(hqgnn.__all__) <= shown
    for name in hqgnn.__all__:
        assert getattr(hqgnn, name) is not None
    assert hqgnn.Recommender is Recommender
