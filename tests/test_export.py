"""From a trained run to an artifact: the engine ranks exactly as the evaluator does."""

import numpy as np
import pytest
import torch

from hqgnn.api import Recommender
from hqgnn.cli import main
from hqgnn.evaluation import metrics_from_hits
from hqgnn.export import ArtifactRecommender, export_run
from hqgnn.index.engine import FloatIndex, QuantizedIndex
from hqgnn.index.artifact import read_artifact

SETTINGS = dict(synthetic_users=200, synthetic_items=150, epochs=6, batch_size=512, dim=16, layers=2, lr=0.02,
                threads=1, val_fraction=0.1, eval_every=3, patience=0)


@pytest.fixture(scope="module", params=[("hqgnn", 1), ("hqgnn", 3), ("lightgcn", None)])
def trained(request, tmp_path_factory):
    model, bits = request.param
    tmp = tmp_path_factory.mktemp(f"{model}{bits}")
    extra = {"bits": bits} if bits else {}
    rec = Recommender(model=model, **SETTINGS, **extra)
    metrics = rec.fit("synthetic", out_dir=tmp / "run", progress=False)
    path = tmp / "model.hqgnn"
    export_run(tmp / "run", path)
    return rec, metrics, path


def engine_metrics(path, data, ks=(20, 50, 100)):
    """Recall / NDCG on test computed from the engine's top-K (train + validation excluded)."""
    art = read_artifact(path)
    index = (FloatIndex if art.is_float else QuantizedIndex).from_artifact(art)
    users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    items, _ = index.search(users, k=max(ks), exclude="train")
    test = data.test[users].toarray().astype(bool)
    # rows with fewer than k eligible items are padded with item -1: never a hit
    hits = torch.from_numpy(np.take_along_axis(test, np.maximum(items, 0), axis=1) & (items >= 0))
    n_rel = torch.from_numpy(np.diff(data.test.indptr)[users].astype(np.float32))
    out = metrics_from_hits(hits, n_rel, ks)
    return {k: v / len(users) for k, v in out.items()}


def test_engine_metrics_equal_evaluator_metrics(trained):
    rec, metrics, path = trained
    via_engine = engine_metrics(path, rec.data)
    for key in ("recall@20", "ndcg@20", "recall@50", "ndcg@100"):
        assert via_engine[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_artifact_recommendations_match_the_python_api(trained):
    rec, _, path = trained
    served = ArtifactRecommender(path).recommend([0, 7], k=10)
    items, scores = rec.recommend([0, 7], k=10)
    assert [r["user"] for r in served] == [0, 7]
    # the artifact excludes train + validation items (what the model saw); compare the ranking
    seen = (rec.data.train + rec.data.valid).tocsr()
    for row, r in zip((0, 7), served):
        assert not set(r["items"]) & set(seen[row].indices)
        assert np.all(np.diff(r["scores"]) <= 1e-6)
    # the same scores as the model's dequantized ones: the first item's score, recomputed from embeddings
    u, i = rec.embeddings()
    first = int(np.flatnonzero(rec.data.original_item_ids() == served[0]["items"][0])[0])
    assert served[0]["scores"][0] == pytest.approx(float(u[0] @ i[first]), rel=1e-4, abs=1e-5)


def test_cli_export_recommend_similar(trained, tmp_path, capsys):
    rec, _, path = trained
    run_dir = path.parent / "run"
    out = tmp_path / "again.hqgnn"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert main(["recommend", str(out), "--user", "3", "--k", "5"]) == 0
    assert main(["similar", str(out), "--item", "4", "--k", "3"]) == 0
    users = tmp_path / "users.txt"
    users.write_text("1\n2\n")
    assert main(["recommend", str(out), "--users", str(users), "--k", "2"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(out), "--user", "100000"]) == 2
    assert "unknown user id" in capsys.readouterr().err
    out.write_bytes(out.read_bytes()[:-100])  # truncated
    assert main(["recommend", str(out), "--user", "3"]) == 2
    assert str(out) in capsys.readouterr().err
