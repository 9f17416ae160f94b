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
    served = ArtifactRecommender(path).recommend([0, 7], k=10).to_records()
    items, scores = rec.recommend([0, 7], k=10)
    assert [r["user"] for r in served] == [0, 7]
    # one implementation: the API answers with the artifact's items and scores
    assert [r["items"] for r in served] == items.tolist() and [r["scores"] for r in served] == scores.tolist()
    # both exclude train + validation items (what the model saw)
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


# ---------------------------------------------------------------- one answer at every entry point
def _brute_force_top(rec, row, seen_row, k):
    """Reference top-k of one user: the model's ranking scores, seen items masked, ties to the lower index."""
    u, i, _ = rec.model.ranking_embeddings(rec.adj)
    s = (u[row] @ i.t()).double().numpy()
    order = np.lexsort((np.arange(len(s)), -s))
    return [int(x) for x in order if x not in set(seen_row)][:k]


@pytest.mark.parametrize("model, bits", [("hqgnn", 2), ("lightgcn", None)])
def test_api_pads_rows_with_fewer_than_k_eligible_items(model, bits, tmp_path):
    """7 items, user 0 has seen 0, 1, 2: k=7 gives the 4 unseen items best first, then padding."""
    import scipy.sparse as sp

    from hqgnn.data import InteractionData

    n_users, n_items = 6, 7
    train_pairs = [(0, 0), (0, 1), (0, 2)] + [(u, (u + j) % n_items) for u in range(1, n_users) for j in range(3)]
    test_pairs = [(0, 3)] + [(u, (u + 4) % n_items) for u in range(1, n_users)]

    def csr(pairs):
        r, c = zip(*pairs)
        return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))

    data = InteractionData(train=csr(train_pairs), test=csr(test_pairs), name="seven")
    settings = dict(dim=8, layers=1, epochs=2, batch_size=16, lr=0.01, threads=1, val_fraction=0, patience=0,
                    eval_every=1, ks=[2, 5], early_stop_metric="recall@5", eval_split="test", seed=3)
    if bits:
        settings["bits"] = bits
    Recommender(model=model, **settings).fit(data, out_dir=tmp_path / "run", progress=False)
    rec = Recommender.load(tmp_path / "run", data=data)
    result = rec.recommend([0], k=7, exclude_seen=True)
    items, scores = result  # still unpacks as the (items, scores) pair
    assert items.shape == scores.shape == (1, 7)
    want = _brute_force_top(rec, 0, [0, 1, 2], 7)
    assert sorted(want) == [3, 4, 5, 6]
    assert items[0, :4].tolist() == want
    assert items[0, 4:].tolist() == [-1, -1, -1] and np.all(np.isneginf(scores[0, 4:]))
    assert np.all(np.isfinite(scores[0, :4])) and np.all(np.diff(scores[0, :4]) <= 0)
    assert result.found.tolist() == [4] and result.valid[0].tolist() == [True] * 4 + [False] * 3
    # the model's (dequantized) scores
    u, i = rec.embeddings()
    np.testing.assert_allclose(scores[0, :4], (u[0] @ i[want].t()).numpy(), rtol=1e-4, atol=1e-5)
    # identical to the exported artifact's answer, and to the CLI's
    path = tmp_path / "seven.hqgnn"
    export_run(tmp_path / "run", path, data=data)
    served = ArtifactRecommender(path).recommend([0], k=7).to_records()[0]
    assert served["items"] == want and served["found"] == 4
    assert served["scores"] == scores[0, :4].tolist()
    # without exclusion every item comes back
    all_items, _ = rec.recommend([0], k=7, exclude_seen=False)
    assert sorted(all_items[0].tolist()) == list(range(7))
    # the in-memory index is built once, and again only when the weights change
    index = rec.index()
    rec.recommend([1, 2], k=3)
    assert rec.index() is index
    with torch.no_grad():
        rec.model.encoder.embedding.mul_(-1.0)
    assert rec.index() is not index


def test_api_and_artifact_answer_alike_for_every_user_with_validation(tmp_path, capsys):
    """val_fraction 0.2: seen = training + validation at every entry point, one ranking."""
    from hqgnn.evaluation import seen_items

    rec = Recommender(model="hqgnn", bits=1, synthetic_users=60, synthetic_items=200, epochs=2, dim=16, layers=2,
                      batch_size=256, threads=1, val_fraction=0.2, eval_every=1, patience=0)
    rec.fit("synthetic", out_dir=tmp_path / "run", progress=False)
    data = rec.data
    assert data.valid is not None and data.valid.nnz > 0
    path = tmp_path / "model.hqgnn"
    export_run(tmp_path / "run", path)
    users = data.original_user_ids().tolist()
    k = 20
    result = Recommender.load(tmp_path / "run").recommend(users, k=k)
    served = ArtifactRecommender(path).recommend(users, k=k).to_records()
    seen = (data.train + data.valid).tocsr()
    assert (seen_items(data) != (seen > 0)).nnz == 0 and set(seen_items(data).data) == {1.0}
    for row, r in enumerate(served):
        seen_row = seen[row].indices.tolist()
        assert r["items"] == result.items[row].tolist() == _brute_force_top(rec, row, seen_row, k)
        assert r["scores"] == result.scores[row].tolist()
        assert r["found"] == result.found[row] == k
        assert not set(r["items"]) & set(seen_row) and not set(r["items"]) & set(data.valid[row].indices)
    # the CLI says the same
    import json

    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(str(u) for u in users))
    capsys.readouterr()
    assert main(["recommend", str(path), "--users", str(users_file), "--k", str(k)]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [c["items"] for c in cli] == result.items.tolist() and [c["found"] for c in cli] == [k] * len(users)
