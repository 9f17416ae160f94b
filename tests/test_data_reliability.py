"""Bad and awkward inputs that peer projects' bug reports hit, each against its right value
or its one-line error; and the preprocessing settings against hand-computed results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hqgnn.api import prepare_data
from hqgnn.cli import main
from hqgnn.config import Config
from hqgnn.data import (
    InteractionData,
    check_trainable,
    drop_duplicates,
    k_core,
    load_dataset,
    load_lightgcn_folder,
    load_table,
    with_validation,
)
from hqgnn.errors import ConfigError, DataError
from hqgnn.evaluation import evaluate_popularity, evaluate_scores, excluded_for


def folder(tmp_path: Path, train: str, test: str) -> Path:
    d = tmp_path / "ds"
    d.mkdir(exist_ok=True)
    (d / "train.txt").write_text(train)
    (d / "test.txt").write_text(test)
    return d


def pairs(m: sp.csr_matrix) -> set:
    coo = m.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist()))


def named_pairs(data: InteractionData, m: sp.csr_matrix) -> set:
    """(user id, item id) pairs of ``m`` in the file's own ids."""
    coo = m.tocoo()
    u, i = data.original_user_ids(), data.original_item_ids()
    return {(u[r].item(), i[c].item()) for r, c in zip(coo.row, coo.col)}


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


# ---------------------------------------------------------------- 1. train / test overlap
OVERLAP_TRAIN = "0 0 1 2\n1 1 2 3\n2 0 3 4\n3 2 4\n"
OVERLAP_TEST = "0 0 3\n1 4\n2 1\n3 0 1\n"


def test_overlapping_pair_is_refused_naming_file_line_user_item_and_count(tmp_path):
    d = folder(tmp_path, OVERLAP_TRAIN, OVERLAP_TEST)
    with pytest.raises(DataError) as err:
        load_lightgcn_folder(d)
    msg = str(err.value)
    assert f"{d / 'test.txt'}:1: user 0, item 0 is also in train.txt (1 such pair)" in msg
    assert "train_test_overlap=drop" in msg and "\n" not in msg


def test_overlap_drop_removes_the_pair_from_test_and_recall_reaches_one(tmp_path):
    d = folder(tmp_path, OVERLAP_TRAIN, OVERLAP_TEST)
    data = load_lightgcn_folder(d, train_test_overlap="drop")
    assert (0, 0) not in pairs(data.test) and (0, 3) in pairs(data.test)
    assert any("dropped from test" in n for n in data.notes)
    assert data.preprocessing["overlap_pairs_dropped"] == 1
    # K = 5 covers all five items: every unseen test item is found, recall@5 = 1
    res = evaluate_popularity(data.train, data.test, excluded_for("test", data), ks=[5])
    assert res["recall@5"] == pytest.approx(1.0)


def test_overlap_through_the_cli_exits_2_with_one_line(tmp_path, capsys):
    d = folder(tmp_path, OVERLAP_TRAIN, OVERLAP_TEST)
    code, err = run_cli(["train", "--data", str(d), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"], capsys)
    assert code == 2 and "user 0, item 0 is also in train.txt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()
    code, _ = run_cli(["train", "--data", str(d), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet",
                       "--set", "train_test_overlap=drop", "val_fraction=0", "eval_every=1", "ks=[5]",
                       "early_stop_metric=recall@5"], capsys)
    assert code == 0
    notes = json.loads((tmp_path / "run" / "data.json").read_text())["notes"]
    assert any("dropped from test" in n for n in notes)


def test_evaluator_never_counts_an_excluded_item_as_reachable():
    # independent answer: with every item ranked, recall is 1 for each user
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 1], [1, 0, 0, 0]], dtype=np.float32))
    scores = np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.5, 0.2]], dtype=np.float32)
    import torch

    res = evaluate_scores(lambda idx: torch.from_numpy(scores)[idx], test, [train], ks=[4])
    assert res["recall@4"] == pytest.approx(1.0) and res["users"] == 2


# ---------------------------------------------------------------- 3. spaces around CSV ids
def test_csv_ids_are_trimmed_and_numeric_ids_stay_integers(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id\n1,7\n1, 7\n1,8 \n2,8\n2,9\n2,7\n3,9\n3,8\n3,10\n")
    data = load_table(path, test_fraction=0.3, seed=0)
    assert data.n_items == 4 and data.n_users == 3
    assert data.item_ids.dtype.kind == "i" and sorted(data.item_ids.tolist()) == [7, 8, 9, 10]
    assert data.user_ids.dtype.kind == "i"
    everything = named_pairs(data, data.train) | named_pairs(data, data.test)
    assert everything == {(1, 7), (1, 8), (2, 7), (2, 8), (2, 9), (3, 8), (3, 9), (3, 10)}
    assert data.preprocessing["duplicate_rows_dropped"] == 1  # "1,7" and "1, 7" are one pair


@pytest.mark.parametrize("suffix", [".tsv", ".inter", ".parquet"])
def test_every_tabular_reader_trims_ids(tmp_path, suffix):
    df = pd.DataFrame({"user_id": ["a", " a", "b ", "b", "c", "c", "c"], "item_id": ["x", "y", "x ", " z", "x", "y", "z"]})
    path = tmp_path / f"r{suffix}"
    if suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t", index=False)
    data = load_table(path, test_fraction=0.4, seed=0)
    assert sorted(data.user_ids.tolist()) == ["a", "b", "c"] and sorted(data.item_ids.tolist()) == ["x", "y", "z"]


def test_an_id_of_only_spaces_is_an_empty_id(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item\n1,2\n2,  \n")
    with pytest.raises(DataError, match=r"r\.csv: data row 2 has an empty item \(column 'item'\)"):
        load_table(path)


# ---------------------------------------------------------------- 4. huge ids in a dense-id format
def test_huge_user_id_is_refused_before_allocating(tmp_path, capsys):
    d = folder(tmp_path, "0 0 1 2\n5000000000 1 2 3\n", "0 3\n")
    with pytest.raises(DataError) as err:
        load_lightgcn_folder(d)
    msg = str(err.value)
    assert msg.startswith(f"{d / 'train.txt'}:2: user id 5000000000 makes a dense id range of 5,000,000,001")
    assert "CSV/TSV/Parquet" in msg
    code, err_line = run_cli(["data", "stats", str(d)], capsys)
    assert code == 2 and "user id 5000000000" in err_line


def test_huge_item_id_in_test_is_refused_too(tmp_path):
    d = folder(tmp_path, "0 0 1 2\n1 1 2 3\n", "0 3\n1 3 2000000000\n")
    with pytest.raises(DataError, match=r"test\.txt:2: item id 2000000000 makes a dense id range"):
        load_lightgcn_folder(d)


def test_id_beyond_int64_is_named(tmp_path):
    d = folder(tmp_path, "0 0 99999999999999999999\n", "0 1\n")
    with pytest.raises(DataError, match=r"train\.txt:1: id '99999999999999999999' does not fit in 64 bits"):
        load_lightgcn_folder(d)


def test_sparse_but_reasonable_ids_still_load(tmp_path):
    # gaps are allowed (MovieLens-1M uses 3,706 of 3,952 item ids)
    d = folder(tmp_path, "0 0 10\n1 5 999\n", "0 5\n1 10\n")
    assert load_lightgcn_folder(d).n_items == 1000


def test_sparse_integer_ids_read_fine_through_the_csv_reader(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item\n5000000000,1\n5000000000,2\n5000000000,3\n7,1\n7,2\n")
    data = load_table(path, test_fraction=0.4, seed=0)
    assert data.n_users == 2 and sorted(data.user_ids.tolist()) == [7, 5000000000]


# ---------------------------------------------------------------- 5. errors name ids as the file does
def test_a_user_with_every_item_is_named_by_its_own_id_and_file(tmp_path):
    path = tmp_path / "ratings.csv"
    # zed's three interactions come first in time, so a global time cut keeps them all in train
    path.write_text("user,item,timestamp\nzed,a,1\nzed,b,2\nzed,c,3\nbob,a,4\nbob,b,5\n")
    cfg = Config.load(None, ["split_method=global_time", "val_fraction=0"], {"data": str(path)})
    with pytest.raises(DataError) as err:
        prepare_data(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{path}: user zed has every item (3) in training")


# ---------------------------------------------------------------- 6. space-separated RecBole .inter
def test_space_separated_inter_with_an_unambiguous_header_is_read(tmp_path):
    path = tmp_path / "ml.inter"
    path.write_text("user_id:token item_id:token rating:float timestamp:float\n"
                    "1 10 5 978300760\n1 20 3 978300761\n1 30 4 978300762\n2 10 4 978300763\n2 30 1 978300764\n")
    data = load_table(path, test_fraction=0.4, seed=0)
    assert data.n_users == 2 and sorted(data.item_ids.tolist()) == [10, 20, 30]


def test_inter_without_tabs_and_an_unclear_header_says_it_is_not_tab_separated(tmp_path):
    path = tmp_path / "bad.inter"
    path.write_text("user_id item_id rating\n1 10 5\n")
    with pytest.raises(DataError, match=r"bad\.inter:1: header 'user_id item_id rating' holds no tab"):
        load_table(path)


# ---------------------------------------------------------------- 7. empty test split
def test_empty_test_split_is_an_error_naming_the_split(tmp_path, capsys):
    path = tmp_path / "tiny.csv"
    path.write_text("user,item\nu1,i1\nu2,i2\nu3,i3\nu4,i1\nu5,i2\nu1,i2\n")
    with pytest.raises(DataError, match=r"tiny\.csv: the test split is empty .*user u1, has 2"):
        load_table(path)
    code, err = run_cli(["train", "--data", str(path), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and "the test split is empty" in err
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "metrics.json").exists()


def test_evaluation_over_no_users_is_an_error_naming_the_split():
    train = sp.csr_matrix(np.eye(3, dtype=np.float32))
    empty = sp.csr_matrix((3, 3), dtype=np.float32)
    with pytest.raises(DataError, match="the valid split has no user"):
        evaluate_scores(lambda idx: None, empty, [train], split="valid")


def test_empty_validation_split_is_an_error(tmp_path):
    d = folder(tmp_path, "0 0\n1 1\n", "0 1\n1 0\n")
    with pytest.raises(DataError, match=r"the validation split is empty \(val_fraction=0.1"):
        with_validation(load_lightgcn_folder(d), 0.1, 0)


# ---------------------------------------------------------------- preprocessing
def test_min_rating_keeps_rows_at_or_above_the_threshold(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\na,x,5\na,y,3\na,z,4\nb,x,4\nb,y,4.5\nb,z,1\nc,z,2\n")
    data = load_table(path, test_fraction=0.4, seed=0, min_rating=4)
    kept = named_pairs(data, data.train) | named_pairs(data, data.test)
    assert kept == {("a", "x"), ("a", "z"), ("b", "x"), ("b", "y")}
    assert data.n_users == 2  # c has no rating >= 4 and leaves the id space
    assert data.preprocessing["below_min_rating_dropped"] == 3


def test_min_rating_without_a_rating_column_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item\na,x\n")
    with pytest.raises(DataError, match=r"r\.csv: min_rating=4 needs a rating column"):
        load_table(path, min_rating=4)


def test_non_numeric_rating_names_the_row(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\na,x,5\na,y,great\n")
    with pytest.raises(DataError, match=r"data row 2: rating 'great' in column 'rating' is not a finite number"):
        load_table(path, min_rating=4)


def test_k_core_iterates_to_a_fixed_point():
    # users 0..3, items 0..3. With min 2 each: item 3 (only user 3) goes in round 1, which leaves
    # user 3 with one item, so user 3 goes in round 2, which leaves item 2 with one user (user 2),
    # so item 2 goes in round 3, leaving user 2 with one item, gone in round 4.
    u = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    i = np.array([0, 1, 0, 1, 1, 2, 2, 3])
    keep, rounds = k_core(u, i, 2, 2)
    assert set(zip(u[keep].tolist(), i[keep].tolist())) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert rounds == 5  # four rounds that remove, one that confirms


def _k_core_reference(pairs_: set, mu: int, mi: int) -> set:
    """Remove one violating node at a time until none is left (the definition)."""
    pairs_ = set(pairs_)
    while True:
        udeg, ideg = {}, {}
        for u, i in pairs_:
            udeg[u] = udeg.get(u, 0) + 1
            ideg[i] = ideg.get(i, 0) + 1
        bad = next(((u, i) for u, i in sorted(pairs_) if udeg[u] < mu or ideg[i] < mi), None)
        if bad is None:
            return pairs_
        u, i = bad
        pairs_ = {p for p in pairs_ if not ((udeg[u] < mu and p[0] == u) or (ideg[i] < mi and p[1] == i))}


@settings(max_examples=60, deadline=None)
@given(st.sets(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=40), st.integers(1, 4), st.integers(1, 4))
def test_k_core_equals_one_at_a_time_removal(pair_set, mu, mi):
    arr = np.array(sorted(pair_set), dtype=np.int64).reshape(-1, 2)
    keep, _ = k_core(arr[:, 0], arr[:, 1], mu, mi)
    assert set(map(tuple, arr[keep].tolist())) == _k_core_reference(pair_set, mu, mi)


def test_k_core_settings_apply_and_are_recorded(tmp_path):
    path = tmp_path / "r.csv"
    rows = ["user,item", "0,0", "0,1", "1,0", "1,1", "2,1", "2,2", "3,2", "3,3"]
    path.write_text("\n".join(rows) + "\n")
    data = load_table(path, test_fraction=0.5, seed=0, min_user_interactions=2, min_item_interactions=2)
    assert named_pairs(data, data.train) | named_pairs(data, data.test) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert data.preprocessing["k_core_dropped"] == 4 and data.preprocessing["k_core_rounds"] == 5


def test_duplicates_keep_first_or_last_by_timestamp():
    u = np.array([0, 0, 1, 0])
    i = np.array([5, 5, 5, 5])
    t = np.array([30.0, 10.0, 20.0, 40.0])
    assert drop_duplicates(u, i, t, "first").tolist() == [1, 2]  # user 0's earliest row (t = 10)
    assert drop_duplicates(u, i, t, "last").tolist() == [2, 3]  # its latest (t = 40)
    assert drop_duplicates(u, i, None, "first").tolist() == [0, 2]  # file order without timestamps


# ---------------------------------------------------------------- splits
def timed_log(tmp_path) -> Path:
    # user a: items 1..5 at times 5,4,3,2,1 (reverse file order); user b: items 1..3 at 10, 20, 30
    path = tmp_path / "log.csv"
    rows = ["user,item,timestamp"] + [f"a,{k},{6 - k}" for k in range(1, 6)] + [f"b,{k},{10 * k}" for k in (1, 2, 3)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_temporal_split_holds_out_each_users_latest(tmp_path):
    data = load_table(timed_log(tmp_path), test_fraction=0.4, split_method="temporal")
    # a: round(0.4 * 5) = 2 latest = items 1 (t 5) and 2 (t 4); b: round(1.2) = 1 latest = item 3
    assert named_pairs(data, data.test) == {("a", 1), ("a", 2), ("b", 3)}
    assert any("the last 40% of each user's interactions in time" in n for n in data.notes)


def test_leave_one_out_holds_out_the_last_interaction(tmp_path):
    data = load_table(timed_log(tmp_path), split_method="leave_one_out")
    assert named_pairs(data, data.test) == {("a", 1), ("b", 3)}


def test_global_time_cut_holds_out_the_latest_interactions_overall(tmp_path):
    data = load_table(timed_log(tmp_path), test_fraction=0.25, split_method="global_time")
    # 8 interactions, the 2 latest overall: b's items 2 (t 20) and 3 (t 30)
    assert named_pairs(data, data.test) == {("b", 2), ("b", 3)}


def test_global_time_cut_leaves_out_users_with_no_history(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\na,x,1\na,y,2\nb,x,3\nc,y,9\nc,x,10\nb,y,11\n")
    data = load_table(path, test_fraction=0.5, split_method="global_time")
    # the 3 latest: c's two and b's y. c has nothing before the cut, so c leaves both parts
    assert named_pairs(data, data.test) == {("b", "y")}
    assert named_pairs(data, data.train) == {("a", "x"), ("a", "y"), ("b", "x")}
    assert data.preprocessing["test_users_without_history_dropped"] == 1


def test_equal_timestamps_break_ties_in_file_order(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\na,p,7\na,q,7\na,r,7\n")
    data = load_table(path, split_method="leave_one_out")
    assert named_pairs(data, data.test) == {("a", "r")}


def test_validation_uses_the_same_split_method(tmp_path):
    data = load_table(timed_log(tmp_path), split_method="leave_one_out")
    data = with_validation(data, 0.1, 0)
    # after a's item 1 and b's item 3 went to test, the last remaining ones go to validation
    assert named_pairs(data, data.valid) == {("a", 2), ("b", 2)}
    assert named_pairs(data, data.train) == {("a", 3), ("a", 4), ("a", 5), ("b", 1)}


def test_time_split_without_timestamps_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item\na,x\na,y\n")
    with pytest.raises(DataError, match=r"r\.csv: split_method=temporal needs a timestamp column"):
        load_table(path, split_method="temporal")
    d = folder(tmp_path, "0 0 1\n", "0 2\n")
    with pytest.raises(DataError, match="split_method='leave_one_out' applies to single-file inputs"):
        load_dataset(str(d), split_method="leave_one_out")


def test_dates_are_timestamps_too(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,date\na,x,2024-01-03\na,y,2024-01-01\na,z,2024-01-02\n")
    data = load_table(path, split_method="leave_one_out")
    assert named_pairs(data, data.test) == {("a", "x")}


def test_bad_split_setting_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="split_method='latest'"):
        Config.load(None, ["split_method=latest"])


# ---------------------------------------------------------------- recorded and shown
def test_preprocessing_is_recorded_in_data_json_and_shown_by_stats(tmp_path, capsys):
    path = timed_log(tmp_path)
    code = main(["data", "stats", str(path), "--set", "split_method=temporal", "test_fraction=0.4",
                 "min_user_interactions=2"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["split_method"] == "temporal"
    assert out["preprocessing"]["min_user_interactions"] == 2 and out["preprocessing"]["k_core_dropped"] == 0
    run = tmp_path / "run"
    code = main(["train", "--data", str(path), "--out", str(run), "--epochs", "1", "--quiet", "--set",
                 "split_method=temporal", "test_fraction=0.4", "val_fraction=0", "dim=4", "layers=1", "ks=[5]",
                 "early_stop_metric=recall@5"])
    assert code == 0
    summary = json.loads((run / "data.json").read_text())
    assert summary["split_method"] == "temporal" and summary["preprocessing"]["duplicates"] == "first"


def test_table_settings_on_a_folder_are_refused(tmp_path):
    d = folder(tmp_path, "0 0 1\n", "0 2\n")
    with pytest.raises(DataError, match="setting min_rating=4.0 applies to single-file inputs"):
        load_dataset(str(d), min_rating=4.0)


def test_check_trainable_passes_ordinary_data(tmp_path):
    d = folder(tmp_path, "0 0 1\n1 1 2\n", "0 2\n1 0\n")
    check_trainable(load_lightgcn_folder(d))


def test_empty_test_split_of_a_global_time_cut_says_why(tmp_path):
    path = tmp_path / "log.csv"
    # the latest interaction is dave's only one: dave has nothing before the cut, so test is empty
    path.write_text("user,item,timestamp\nalice,a,1\nalice,b,2\nbob,a,3\nbob,b,4\ndave,c,9\n")
    with pytest.raises(DataError, match=r"log\.csv: the test split is empty \(the last 20% of all interactions in "
                                        r"time \(a global time cut\)\): every user with an interaction after the cut "
                                        r"has none before it"):
        load_table(path, split_method="global_time")
