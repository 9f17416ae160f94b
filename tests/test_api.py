"""The Python API's contract: the config's model wins, inference never builds a trainer, saving
never evaluates, recommend propagates at most once, and run folders of the old spellings load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hqgnn.api import Recommender
from hqgnn.config import Config
from hqgnn.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(synthetic_users=80, synthetic_items=60, epochs=2, batch_size=256, dim=8, layers=2, lr=0.02, threads=1,
             eval_every=1, patience=0, ks=[5, 20], device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-bit HQ-GNN run folder and the recommender that wrote it."""
    run = tmp_path_factory.mktemp("api") / "run"
    rec = Recommender(model="hqgnn", bits=2, **SMALL)
    metrics = rec.fit("synthetic", out_dir=run, progress=False)
    return rec, metrics, run


# ---------------------------------------------------------------- the config's model wins
def test_recommender_keeps_the_config_files_model(tmp_path):
    assert Recommender(config=str(REPO / "configs" / "ml-1m-hqgnn.yaml")).cfg.model == "hqgnn"
    assert Recommender(config=str(REPO / "configs" / "ml-1m-hqgnn.yaml"), model="ste").cfg.model == "ste"
    assert Recommender(config=Config.load(overrides=["model=bigear"])).cfg.model == "bigear"
    assert Recommender().cfg.model == "lightgcn"  # no file: Config's default
    assert Recommender(model="mf").cfg.layers == 0  # the old spelling of layers 0


# ---------------------------------------------------------------- inference builds no trainer
def test_load_evaluate_recommend_export_import_no_trainer(trained, tmp_path):
    rec, metrics, run = trained
    items, scores = rec.recommend([0, 3], k=5)
    probe = f"""
import json, sys
from hqgnn.api import Recommender
from hqgnn.export import export_run
rec = Recommender.load({str(run)!r})
out = {{"recall@20": rec.evaluate()["recall@20"], "items": rec.recommend([0, 3], k=5).items.tolist(),
        "metrics": rec.metrics, "trainer": rec.trainer}}
export_run({str(run)!r}, {str(tmp_path / "a.hqgnn")!r})
out["training_imported"] = sorted({{"hqgnn.training", "hqgnn.sampling"}} & set(sys.modules))
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["training_imported"] == []  # neither the trainer nor its sampler
    assert out["trainer"] is None and out["metrics"] == metrics  # the run's metrics.json, not a re-evaluation
    assert out["recall@20"] == pytest.approx(metrics["recall@20"], abs=1e-7)
    assert out["items"] == items.tolist()


def test_saving_writes_and_never_evaluates(trained, tmp_path, monkeypatch):
    import hqgnn.evaluation

    rec, metrics, _ = trained

    def no_evaluation(*args, **kwargs):
        raise AssertionError("save() evaluated")

    monkeypatch.setattr(hqgnn.evaluation, "evaluate_embeddings", no_evaluation)
    monkeypatch.setattr(hqgnn.evaluation, "evaluate_model", no_evaluation)
    rec.save(tmp_path / "saved")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.yaml", "data.json", "metrics.json",
                                                                     "model.pt"]
    assert json.loads((tmp_path / "saved" / "metrics.json").read_text()) == metrics
    again = Recommender.load(tmp_path / "saved", data=rec.data)
    assert again.evaluate()["recall@20"] == pytest.approx(rec.evaluate()["recall@20"], abs=1e-7)
    # a model with NaN weights is refused, and no weights are written
    broken = Recommender.load(tmp_path / "saved", data=rec.data)
    with torch.no_grad():
        broken.model.encoder.embedding[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite weights: model.encoder.embedding holds 1 NaN"):
        broken.save(tmp_path / "broken")
    assert not (tmp_path / "broken" / "model.pt").exists()
    with pytest.raises(ConfigError, match="not trained"):
        Recommender().save(tmp_path / "untrained")


def test_recommend_propagates_once_then_answers_from_its_index(trained, monkeypatch):
    from hqgnn.models import LightGCN

    rec = Recommender.load(trained[2], data=trained[0].data)
    calls = []
    real = LightGCN.forward

    def counted(self, adj):
        calls.append(adj)
        return real(self, adj)

    monkeypatch.setattr(LightGCN, "forward", counted)
    first = rec.recommend([0, 1], k=5)
    assert len(calls) == 1  # the index is built from one propagation
    second = rec.recommend([2, 1], k=5)
    assert len(calls) == 1  # ... and answers every later call
    assert np.array_equal(first.items[1], second.items[1])
    with torch.no_grad():
        rec.model.encoder.embedding.mul_(1.5)  # edited weights: the index is rebuilt, once
    rec.recommend([0], k=5)
    rec.recommend([1], k=5)
    assert len(calls) == 2


def test_one_result_type_from_the_api_to_the_artifact(trained, tmp_path):
    """The Python API answers with the engine's Recommendations, equal to the exported artifact's."""
    from hqgnn.export import export_run
    from hqgnn.index import Recommendations
    from hqgnn.index.recommender import ArtifactRecommender

    rec, _, run = trained
    api = rec.recommend([0, 3, 7], k=6)
    export_run(run, tmp_path / "a.hqgnn")
    art = ArtifactRecommender(tmp_path / "a.hqgnn").recommend([0, 3, 7], k=6)
    assert type(api) is Recommendations and type(art) is Recommendations
    for name in ("queries", "items", "scores", "raw_scores", "valid"):
        assert np.array_equal(getattr(api, name), getattr(art, name)), name
    items, scores = api  # unpacks as items, scores (items first, like SearchResult)
    assert items is api.items and scores is api.scores and api.n_queries == 3
    # scores are the model's: the raw integer inner products dequantized, never equal to them here
    assert api.raw_scores.dtype == np.int32 and not np.array_equal(api.scores, api.raw_scores.astype(np.float64))


# ---------------------------------------------------------------- the trainer only trains
def test_trainer_takes_a_built_model(tiny_data):
    from hqgnn.models import build_model
    from hqgnn.training import Trainer

    cfg = Config.load(overrides=["dim=8", "layers=1", "threads=1"])
    with pytest.raises(TypeError, match=r"initial_model\(cfg, data\)"):
        Trainer(cfg, tiny_data, None)
    with pytest.raises(ConfigError, match="the model is for 10 users x 12 items, the data has 60 x 40"):
        Trainer(cfg, build_model(cfg, 10, 12), tiny_data)


def test_old_training_names_still_import():
    import hqgnn.evaluation
    import hqgnn.models
    import hqgnn.runs
    from hqgnn.training import (  # noqa: F401
        CHECKPOINT_VERSION,
        TrainContext,
        Trainer,
        data_summary,
        excluded_for,
        load_checkpoint,
        load_full_precision_run,
        named_tensors,
        peak_rss_mb,
        resolve_device,
    )

    assert excluded_for is hqgnn.evaluation.excluded_for and load_checkpoint is hqgnn.runs.load_checkpoint
    assert resolve_device is hqgnn.models.resolve_device and CHECKPOINT_VERSION == 1


def test_run_folder_reads_and_refusals(tmp_path):
    from hqgnn.runs import RunFolder

    run = RunFolder(tmp_path)
    with pytest.raises(CheckpointError, match="not a run folder"):
        run.read_config()
    assert run.read_metrics() is None
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        run.read_model()


# ---------------------------------------------------------------- version-1 run folders, old spellings
def _respell(run: Path, **values) -> None:
    """Rewrite a run folder's settings (config.yaml and the weights files') as older code spelled them."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(values)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in ("model.pt", "checkpoint.pt"):
        state = torch.load(run / name, weights_only=False)
        state["config"].update(values)
        torch.save(state, run / name)


@pytest.mark.parametrize("model, old", [("lightgcn", {"model": "mf", "layers": 3, "estimator": "gste"}),
                                        ("ste", {"model": "hqgnn", "estimator": "ste"})])
def test_version_1_run_folders_of_the_old_spellings_load_and_resume(tmp_path, model, old):
    settings = {**SMALL, "layers": 0} if model == "lightgcn" else dict(SMALL)
    run = tmp_path / "run"
    metrics = Recommender(model=model, **settings).fit("synthetic", out_dir=run, progress=False)
    _respell(run, **old)
    rec = Recommender.load(run)
    assert rec.cfg.model == model and rec.cfg.layers == settings["layers"]
    assert rec.evaluate()["recall@20"] == pytest.approx(metrics["recall@20"], abs=1e-7)
    resumed = Recommender(config=str(run / "config.yaml"), epochs=3).fit("synthetic", out_dir=run, resume=True,
                                                                         progress=False)
    assert resumed["epochs"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == model  # rewritten in the one spelling


@pytest.mark.parametrize("bad", [[1.5], [True], [float("nan")], [float("inf")]])
def test_recommend_refuses_user_ids_that_are_not_integers(trained, bad):
    """1.5 or True is not user 1 (the CLI refuses --user 1.5 too); 3.0 from a float column is user 3."""
    from hqgnn.index import RetrievalError

    rec = trained[0]
    with pytest.raises(RetrievalError, match="is not an integer"):
        rec.recommend(bad, k=5)
    assert np.array_equal(rec.recommend([3.0], k=5).items, rec.recommend([3], k=5).items)
