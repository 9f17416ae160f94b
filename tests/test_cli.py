"""The command line end to end on small synthetic data, and its one-line errors."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from hqgnn.api import Recommender
from hqgnn.cli import main

#: faiss-cpu is an optional extra (``pip install 'hqgnn[faiss]'``; ``.[test]`` includes it)
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="faiss-cpu not installed (pip install 'hqgnn[faiss]')")

SMALL = ["synthetic_users=150", "synthetic_items=100", "dim=16", "layers=2", "batch_size=512", "lr=0.02",
         "eval_every=2", "threads=1", "patience=0"]


def _train(tmp_path, name="run", *extra, epochs=4):
    out = tmp_path / name
    code = main(["train", "--data", "synthetic", "--out", str(out), "--epochs", str(epochs), "--quiet", "--set", *SMALL, *extra])
    return code, out


def test_train_evaluate_stats(tmp_path, capsys):
    code, out = _train(tmp_path, "run", "--model", "hqgnn", "--bits", "2")
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bits"] == 2 and "recall@20" in printed and printed["split"] == "test"
    for f in ("config.yaml", "history.jsonl", "metrics.json", "model.pt", "checkpoint.pt", "data.json"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"recall@20", "ndcg@50", "train_seconds", "compression_ratio"} <= set(metrics)
    assert main(["evaluate", str(out), "--k", "10", "20"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert "recall@10" in ev and ev["recall@20"] == pytest.approx(metrics["recall@20"], abs=1e-6)
    assert main(["data", "stats", "synthetic", "--set", "synthetic_users=150", "synthetic_items=100"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 150 and stats["items"] == 100 and 0 < stats["density"] < 1


def test_resume_a_finished_run_with_more_epochs(tmp_path, capsys):
    code, out = _train(tmp_path, "run", epochs=2)
    assert code == 0
    code, _ = _train(tmp_path, "run", epochs=2)
    assert code == 2 and "already there" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "4", "--resume", "--quiet", "--set", *SMALL]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 4


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "lr=-1"], "lr=-1.0 is out of range"),
        (["--set", "colour=red"], "unknown setting 'colour'"),
        (["--bits", "9", "--model", "hqgnn"], "bits=9 is out of range"),
        (["--model", "lsh"], "needs from_run"),
        (["--data", "no/such/folder"], "no/such/folder: no such file or folder"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path, capsys, args, message):
    argv = ["train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--quiet", "--set", *SMALL]
    # a later --data overrides the earlier one; --set values extend the list
    argv = argv + (args[1:] if args[0] == "--set" else args)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqgnn: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_malformed_data_file(tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.txt").write_text("0 1 2\n1 2 x\n")
    (folder / "test.txt").write_text("0 3\n")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.txt:2: id 'x' is not an integer" in err


def test_corrupt_model_file(tmp_path, capsys):
    code, out = _train(tmp_path, "run", epochs=2)
    (out / "model.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(out)]) == 2
    assert "model.pt: corrupt checkpoint" in capsys.readouterr().err


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hqgnn.cli", "evaluate", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "not a run folder" in proc.stderr


def test_python_api_fit_recommend_load(tmp_path):
    rec = Recommender(model="lightgcn", epochs=4, **{s.split("=")[0]: _num(s.split("=")[1]) for s in SMALL})
    metrics = rec.fit("synthetic", out_dir=tmp_path / "api", progress=False)
    items, scores = rec.recommend([0, 5], k=10)
    assert items.shape == (2, 10) and np.all(np.diff(scores, axis=1) <= 1e-6)
    seen = set(rec.data.train[0].indices)
    assert not seen & set(items[0].tolist())
    loaded = Recommender.load(tmp_path / "api")
    items2, _ = loaded.recommend([0, 5], k=10)
    assert np.array_equal(items, items2)
    assert loaded.evaluate()["recall@20"] == pytest.approx(metrics["recall@20"], abs=1e-6)
    with pytest.raises(Exception, match="unknown user id 999"):
        loaded.recommend([999], k=5)


def _num(v):
    try:
        return int(v)
    except ValueError:
        return float(v)


def test_repeated_set_flags_all_apply():
    from hqgnn.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "synthetic", "--out", "x", "--set", "lr=0.1", "dim=8",
                                      "--set", "epochs=3", "--set", "batch_size=64"])
    assert args.set == ["lr=0.1", "dim=8", "epochs=3", "batch_size=64"]


def _short_list_artifact(path, n_items=2000, dim=64, seed=3):
    """A 1-bit artifact of random codes: user 0 has seen 30 items, user 1 all but 7."""
    import scipy.sparse as sp

    from hqgnn.index import QuantizedIndex

    rng = np.random.default_rng(seed)
    users = rng.integers(0, 2, (2, dim)).astype(np.uint8)
    items = rng.integers(0, 2, (n_items, dim)).astype(np.uint8)
    counts = [30, n_items - 7]
    rows = np.repeat([0, 1], counts)
    cols = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(2, n_items))
    QuantizedIndex.from_codes(items, 1, user_codes=users, train=train).save(path)
    return train.toarray() > 0


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs_faiss) for b in ("faiss-ivf", "faiss-hnsw")]
                         + ["exact"])
def test_recommend_fills_k_and_says_how_many(tmp_path, capsys, backend):
    """hqgnn recommend --k 1500 on a 2,000-item 1-bit artifact: 1,500 items, or all the user may get."""
    path = tmp_path / "short.hqgnn"
    seen = _short_list_artifact(path)
    capsys.readouterr()
    assert main(["recommend", str(path), "--user", "0", "--k", "1500", "--backend", backend]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["found"] == 1500 == len(out["items"]) == len(set(out["items"]))
    assert not seen[0, out["items"]].any() and out["scores"] == sorted(out["scores"], reverse=True)
    users = tmp_path / "users.txt"
    users.write_text("0\n1\n")
    assert main(["recommend", str(path), "--users", str(users), "--k", "1500", "--backend", backend]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [r["found"] for r in both] == [1500, 7]  # user 1 has 7 unseen items: found < k, stated
    assert sorted(both[1]["items"]) == np.flatnonzero(~seen[1]).tolist()
