"""Training loop: run folder, checkpoints, exact resume, refusals, atomic writes, seeding."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from hqgnn.config import Config
from hqgnn.data import make_synthetic, with_validation
from hqgnn.errors import CheckpointError
from hqgnn.storage import atomic_path, write_json_atomic
from hqgnn.training import Trainer, load_checkpoint

TIMING_FIELDS = {"train_seconds", "eval_seconds"}


@pytest.fixture(scope="module")
def data():
    """120 users x 80 items with a validation split, so that the best epoch is selected on it."""
    return with_validation(make_synthetic(n_users=120, n_items=80, mean_degree=10, seed=1), 0.2, seed=5)


def make_cfg(small_settings, **changes) -> Config:
    return Config.load(overrides=small_settings(**changes))


def trainer_for(cfg, data, out_dir=None):
    """A trainer of the model a new run of ``cfg`` starts from (with from_run's E0), as ``fit`` makes one."""
    from hqgnn.models import initial_model
    from hqgnn.training import Trainer

    return Trainer(cfg, initial_model(cfg, data), data, out_dir, progress=False)


def weights(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def without_timing(history: list) -> list:
    return [{k: v for k, v in h.items() if k not in TIMING_FIELDS} for h in history]


@pytest.fixture
def best_epoch_first(monkeypatch):
    """Make the monitored metric fall every epoch: the best weights are epoch 1's, never the last."""
    original = Trainer.evaluate

    def evaluate(self, split):
        res = original(self, split)
        if split == self.monitor_split and split != "test":
            res[self.cfg.early_stop_metric] = 1.0 / self.epoch
        return res

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


# ---------------------------------------------------------------- run folder
def test_run_folder_contents(tmp_path, data, small_settings):
    cfg = make_cfg(small_settings, epochs=3, eval_every=2, ks="[20,50]")
    out = tmp_path / "run"
    trainer = trainer_for(cfg, data, out)
    metrics = trainer.fit()
    for name in ("config.yaml", "history.jsonl", "metrics.json", "model.pt", "checkpoint.pt", "data.json"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary files left

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    for key in ("recall@20", "ndcg@50", "precision@20", "hit_rate@50", "train_seconds", "test_users", "selected_by"):
        assert key in on_disk, key
    assert on_disk["split"] == "test" and on_disk["epochs"] == 3 and on_disk["model"] == "lightgcn"
    assert 0 <= on_disk["recall@20"] <= on_disk["recall@50"] <= 1

    assert Config.load(out / "config.yaml") == cfg
    assert yaml.safe_load((out / "config.yaml").read_text())["dim"] == 16

    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == trainer.history
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3]
    assert [h.get("split") for h in trainer.history] == [None, "valid", "valid"]  # evaluated at 2 and at the end

    summary = json.loads((out / "data.json").read_text())
    assert summary["fingerprint"] == data.fingerprint()
    assert (summary["n_users"], summary["n_items"]) == (data.n_users, data.n_items)
    assert (summary["train"], summary["valid"], summary["test"]) == (data.train.nnz, data.valid.nnz, data.test.nnz)

    model = load_checkpoint(out / "model.pt")
    assert model["data_fingerprint"] == data.fingerprint()
    assert_same_weights(model["model"], weights(trainer))  # model.pt holds the reported weights


def test_no_out_dir_writes_nothing(tmp_path, data, small_settings, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer_for(make_cfg(small_settings, epochs=1), data).fit()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path, data, small_settings):
    cfg = make_cfg(small_settings, epochs=2)
    trainer = trainer_for(cfg, data, tmp_path)
    trainer.fit()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 2
    assert state["config"] == cfg.to_dict()
    assert state["data_fingerprint"] == data.fingerprint()
    assert state["history"] == trainer.history
    assert state["best_epoch"] == trainer.best_epoch
    # a fresh trainer restored from it holds the same training state
    fresh = trainer_for(cfg, data, tmp_path)
    assert not torch.equal(fresh.model.encoder.embedding, state["model"]["encoder.embedding"])  # untrained
    fresh.resume()
    assert fresh.epoch == 2 and fresh.history == trainer.history
    assert_same_weights(fresh.model.state_dict(), state["model"])
    assert fresh.optimizer.state_dict()["state"][0]["step"] == trainer.optimizer.state_dict()["state"][0]["step"]


@pytest.mark.parametrize("monitor", ["real", "best-first"])
def test_resume_continues_exactly(tmp_path, data, small_settings, request, monitor):
    if monitor == "best-first":
        request.getfixturevalue("best_epoch_first")
    straight = trainer_for(make_cfg(small_settings, epochs=4), data, tmp_path / "straight")
    straight_metrics = straight.fit()

    first = trainer_for(make_cfg(small_settings, epochs=2), data, tmp_path / "split")
    first.fit()
    second = trainer_for(make_cfg(small_settings, epochs=4), data, tmp_path / "split")
    second.resume()
    assert second.epoch == 2
    split_metrics = second.fit()

    assert_same_weights(weights(straight), weights(second))  # the reported (selected) weights
    # the training state too: the last weights, not the best ones, are what a resume continues from
    assert_same_weights(
        load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"],
        load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"],
    )
    assert without_timing(straight.history) == without_timing(second.history)
    assert straight.best_epoch == second.best_epoch
    if monitor == "best-first":
        assert straight.best_epoch == 1
    skip = {"train_seconds", "adjacency_seconds", "test_eval_seconds", "peak_rss_mb"}
    assert {k: v for k, v in straight_metrics.items() if k not in skip} == {
        k: v for k, v in split_metrics.items() if k not in skip
    }


def test_early_stopping_with_patience(tmp_path, data, small_settings, best_epoch_first):
    trainer = trainer_for(make_cfg(small_settings, epochs=10, patience=2), data, tmp_path)
    metrics = trainer.fit()
    # best at epoch 1, no improvement at 2 and 3 -> stop after epoch 3, report epoch 1's weights
    assert trainer.epoch == 3 and metrics["stopped_early"] is True
    assert trainer.best_epoch == 1 and "epoch 1" in metrics["selected_by"]


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, data, small_settings, damage):
    cfg = make_cfg(small_settings, epochs=1)
    trainer_for(cfg, data, tmp_path).fit()
    path = tmp_path / "checkpoint.pt"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "random bytes":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError) as err:
        trainer_for(cfg, data, tmp_path).resume()
    assert str(path) in str(err.value)


def test_missing_foreign_and_newer_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as err:
        load_checkpoint(tmp_path / "none.pt")
    assert "none.pt" in str(err.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an hqgnn checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"version": 99, "model": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_resume_refuses_other_data(tmp_path, data, small_settings):
    cfg = make_cfg(small_settings, epochs=1)
    trainer_for(cfg, data, tmp_path).fit()
    other = with_validation(make_synthetic(n_users=120, n_items=80, mean_degree=10, seed=2), 0.2, seed=5)
    assert other.fingerprint() != data.fingerprint()
    with pytest.raises(CheckpointError, match="other data") as err:
        trainer_for(cfg, other, tmp_path).resume()
    assert str(tmp_path / "checkpoint.pt") in str(err.value)


@pytest.mark.parametrize("change", [{"dim": 8}, {"lr": 0.02}, {"model": "hqgnn"}, {"layers": 0}, {"seed": 8}])
def test_resume_refuses_other_settings(tmp_path, data, small_settings, change):
    trainer_for(make_cfg(small_settings, epochs=1), data, tmp_path).fit()
    (key, value), = change.items()
    with pytest.raises(CheckpointError) as err:
        trainer_for(make_cfg(small_settings, epochs=3, **change), data, tmp_path).resume()
    msg = str(err.value)
    assert str(tmp_path / "checkpoint.pt") in msg and f"this run asks for {key}={value!r}" in msg


def test_resume_accepts_a_new_budget(tmp_path, data, small_settings):
    trainer_for(make_cfg(small_settings, epochs=1), data, tmp_path).fit()
    t = trainer_for(make_cfg(small_settings, epochs=5, patience=3, eval_batch_size=7), data, tmp_path)
    t.resume()
    assert t.epoch == 1


# ---------------------------------------------------------------- atomic writes
def test_atomic_path_failure_leaves_target_untouched(tmp_path):
    target = tmp_path / "out" / "model.pt"
    target.parent.mkdir()
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp != target
            tmp.write_bytes(b"half written")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]  # no temporary file left


def test_atomic_path_success_replaces_target(tmp_path):
    target = tmp_path / "new" / "metrics.json"  # the folder is created
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with atomic_path(target) as tmp:
        tmp.write_text("replaced")
    assert target.read_text() == "replaced"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_ordinary_permissions(tmp_path, umask):
    """Not mkstemp's owner-only 0600: what open() would give under the process's umask."""
    import os
    import stat

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "metrics.json", {"a": 1})
        with open(tmp_path / "plain.json", "w") as fh:  # the independent answer
            fh.write("{}")
    finally:
        os.umask(old)
    got = stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode)
    assert got == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o666 & ~umask


def test_checkpoint_write_failure_keeps_previous_checkpoint(tmp_path, data, small_settings, monkeypatch):
    trainer = trainer_for(make_cfg(small_settings, epochs=1), data, tmp_path)
    trainer.fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # leave a half-written file behind, then crash
            fh.truncate(100)
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(torch, "save", failing_save)
    trainer.epoch += 1
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save_checkpoint()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


# ---------------------------------------------------------------- seeding
def test_same_seed_same_run_other_seed_other_run(data, small_settings):
    a = trainer_for(make_cfg(small_settings, epochs=2), data)
    ma = a.fit()
    b = trainer_for(make_cfg(small_settings, epochs=2), data)
    mb = b.fit()
    assert_same_weights(weights(a), weights(b))
    assert without_timing(a.history) == without_timing(b.history)
    assert ma["recall@20"] == mb["recall@20"]
    c = trainer_for(make_cfg(small_settings, epochs=2, seed=8), data)
    c.fit()
    assert not torch.equal(weights(a)["encoder.embedding"], weights(c)["encoder.embedding"])


def test_training_reduces_the_loss(data, small_settings):
    trainer = trainer_for(make_cfg(small_settings, epochs=6, lr=0.02), data)
    trainer.fit()
    losses = [h["loss"] for h in trainer.history]
    assert losses[-1] < losses[0] * 0.9


def _assert_gathered_bpr_matches_composition(seed, users, pos, neg, ref_rows, weight):
    """gathered_bpr_loss(U, I, users, pos, neg) against autograd's bpr_loss over the rows
    ``ref_rows = (user rows, positive rows, negative rows)``: value and gradients, float64."""
    from hqgnn.models.base import bpr_loss, gathered_bpr_loss

    g = torch.Generator().manual_seed(seed)
    U = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    I = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ru, rp, rn = ref_rows
    ref = bpr_loss(U[ru], I[rp], I[rn])
    ref_gu, ref_gi = torch.autograd.grad(weight * ref, (U, I))
    got = gathered_bpr_loss(U, I, users, pos, neg)
    gu, gi = torch.autograd.grad(weight * got, (U, I))
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(gu, ref_gu)
    torch.testing.assert_close(gi, ref_gi)


def test_gathered_bpr_matches_autograd_composition():
    users = torch.tensor([0, 3, 3, 6, 1, 0])  # repeated rows must accumulate
    pos = torch.tensor([2, 2, 8, 0, 5, 5])
    neg = torch.tensor([1, 4, 2, 2, 0, 8])  # an item both positive and negative in the batch
    _assert_gathered_bpr_matches_composition(0, users, pos, neg, (users, pos, neg), 2.5)


def test_gathered_bpr_with_several_negatives_equals_repeated_pairs():
    users = torch.tensor([0, 3, 3, 6])  # a repeated user
    pos = torch.tensor([2, 2, 8, 0])
    neg = torch.tensor([[1, 4, 2], [2, 2, 0], [8, 8, 8], [0, 5, 1]])  # repeats, and item 2 both pos and neg
    n = neg.shape[1]
    repeated = (users.repeat_interleave(n), pos.repeat_interleave(n), neg.reshape(-1))
    _assert_gathered_bpr_matches_composition(1, users, pos, neg, repeated, 1.5)


@pytest.mark.parametrize("batch", [2, 40])  # the gathering branch and the counting branch
def test_l2_penalty_with_several_negatives_counts_users_and_positives_per_pair(batch):
    from hqgnn.models.encoder import LightGCN

    enc = LightGCN(6, 8, dim=4, layers=1).double()
    g = torch.Generator().manual_seed(batch + 1)
    users, pos = torch.randint(0, 6, (batch,), generator=g), torch.randint(0, 8, (batch,), generator=g)
    neg = torch.randint(0, 8, (batch, 3), generator=g)
    got = enc.l2_penalty(users, pos, neg)
    expected = enc.l2_penalty(users.repeat_interleave(3), pos.repeat_interleave(3), neg.reshape(-1))
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    (ge,) = torch.autograd.grad(got, enc.embedding)
    (gx,) = torch.autograd.grad(expected, enc.embedding)
    torch.testing.assert_close(ge, gx)


@pytest.mark.parametrize("batch", [2, 40])  # the gathering branch and the counting branch
def test_l2_penalty_equals_sum_over_batch_rows(batch):
    from hqgnn.models.encoder import LightGCN

    enc = LightGCN(6, 8, dim=4, layers=1).double()
    g = torch.Generator().manual_seed(batch)
    users = torch.randint(0, 6, (batch,), generator=g)
    pos, neg = torch.randint(0, 8, (batch,), generator=g), torch.randint(0, 8, (batch,), generator=g)
    E = enc.embedding
    expected = 0.5 * (E[users].pow(2).sum() + E[6 + pos].pow(2).sum() + E[6 + neg].pow(2).sum()) / batch
    got = enc.l2_penalty(users, pos, neg)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    (ge,) = torch.autograd.grad(got, E)
    (gx,) = torch.autograd.grad(expected, E)
    torch.testing.assert_close(ge, gx)


# ---------------------------------------------------------------- divergence
#: cut-offs within the tiny folder's 5 items (training refuses more)
TINY_KS = ["ks=[5]", "early_stop_metric=recall@5"]


def _tiny_folder(root):
    """The four-user LightGCN folder of the divergence report."""
    root.mkdir()
    (root / "train.txt").write_text("0 0 1 2\n1 1 2 3\n2 0 3 4\n3 2 4\n")
    (root / "test.txt").write_text("0 3\n1 4\n2 1\n3 0 1\n")
    return root


def _all_finite(state) -> bool:
    from hqgnn.training import named_tensors

    return all(bool(torch.isfinite(t).all()) for _, t in named_tensors(state) if t.is_floating_point())


@pytest.mark.parametrize("model, bits, eval_every, kept", [
    ("hqgnn", 4, 5, None), ("lightgcn", None, 5, None), ("hashgnn", None, 5, None),
    ("hqgnn", 1, 1, 1), ("ste", 2, 1, 1)])
def test_lr_1e30_fails_with_one_line_and_writes_no_results(tmp_path, capsys, model, bits, eval_every, kept):
    from hqgnn.cli import main

    data = _tiny_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", model, "--out", str(run), "--quiet", "--set", "lr=1e30",
            "epochs=20", f"eval_every={eval_every}", "val_fraction=0", "threads=1", "device=cpu", *TINY_KS]
    args += ["--bits", str(bits)] if bits else []
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("hqgnn: error: epoch 2 (batch 1): the BPR loss is nan; training diverged."), line
    assert "a learning rate too high (lr=1e+30)" in line and "weight_decay=0.0001" in line and "init_std=0.1" in line
    assert ("delta_scale=1" in line) == (model == "hqgnn")
    assert not (run / "metrics.json").exists() and not (run / "model.pt").exists()
    if kept is None:
        assert not (run / "checkpoint.pt").exists()
        assert f"No checkpoint of this run was written to {run} (one is written every 5 epochs)" in line
        return
    assert f"The last finite checkpoint, {run / 'checkpoint.pt'} (epoch {kept}), is kept" in line
    state = load_checkpoint(run / "checkpoint.pt")  # refuses non-finite tensors itself
    assert state["epoch"] == kept and _all_finite(state)
    assert [h["epoch"] for h in map(json.loads, (run / "history.jsonl").read_text().splitlines())
            if "loss" in h] == [1]
    # a resume replays the same settings from the kept checkpoint: the same divergence, nothing written
    assert main(args + ["--resume"]) == 2
    assert "epoch 2 (batch 1): the BPR loss is nan" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == kept and not (run / "model.pt").exists()


def test_nan_loss_stops_before_its_step_and_keeps_the_last_checkpoint(tmp_path, data, small_settings, monkeypatch):
    from hqgnn.errors import TrainingDiverged

    trainer = trainer_for(make_cfg(small_settings, epochs=5, eval_every=2), data, tmp_path)
    real_loss = trainer.model.loss

    def loss(*args):
        value, info = real_loss(*args)
        return (value * float("nan") if trainer.epoch == 2 else value), info

    monkeypatch.setattr(trainer.model, "loss", loss)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    msg = str(err.value)
    assert msg.startswith("epoch 3 (batch 1): the BPR loss is nan; training diverged.") and "\n" not in msg
    assert f"The last finite checkpoint, {tmp_path / 'checkpoint.pt'} (epoch 2), is kept" in msg
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 2
    assert_same_weights(state["model"], weights(trainer))  # the NaN batch never stepped
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.pt").exists()
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2


def test_nonfinite_weights_after_an_epoch_stop_training(tmp_path, data, small_settings, monkeypatch):
    from hqgnn.errors import TrainingDiverged

    # one batch per epoch: the poisoned weight is seen by the end-of-epoch check, not by a later loss
    trainer = trainer_for(make_cfg(small_settings, epochs=4, batch_size=100000), data, tmp_path)
    real_step = trainer.optimizer.step

    def step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        if trainer.epoch == 1:
            with torch.no_grad():
                trainer.model.encoder.embedding[3, 5] = float("inf")
        return out

    monkeypatch.setattr(trainer.optimizer, "step", step)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    n = trainer.model.encoder.embedding.numel()
    assert str(err.value).startswith("epoch 2: non-finite weights after the epoch's updates: "
                                     f"model.encoder.embedding holds 1 inf of its {n} values; training diverged.")
    assert "(epoch 1), is kept" in str(err.value)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.pt").exists()


def test_nonfinite_gste_delta_estimate_stops_training(tmp_path, data, small_settings, monkeypatch):
    from hqgnn.errors import TrainingDiverged

    trainer = trainer_for(make_cfg(small_settings, model="hqgnn", bits=2, epochs=2), data)
    monkeypatch.setattr(trainer.model, "update_deltas", lambda ctx: {"delta_user": float("nan"), "delta_item": 0.1})
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    msg = str(err.value)
    assert msg.startswith("epoch 1: the epoch-start estimate is non-finite (delta_user=nan); training diverged.")
    assert "delta_scale=1" in msg and msg.endswith("No checkpoint is kept (no run folder)")


def test_nonfinite_weights_are_refused_at_load(tmp_path, data, small_settings, capsys):
    from hqgnn.api import Recommender
    from hqgnn.cli import main

    cfg = make_cfg(small_settings, epochs=1)
    trainer_for(cfg, data, tmp_path).fit()
    n = trainer_for(cfg, data).model.encoder.embedding.numel()
    for name in ("model.pt", "checkpoint.pt"):
        path = tmp_path / name
        state = torch.load(path, weights_only=False)
        state["model"]["encoder.embedding"][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        torch.save(state, path)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert str(err.value) == (f"{path}: non-finite weights: model.encoder.embedding holds 1 NaN and 2 inf of "
                                  f"its {n} values (written by a diverged run; retrain it with a lower lr)")
    with pytest.raises(CheckpointError, match="checkpoint.pt: non-finite weights: model.encoder.embedding"):
        trainer_for(cfg, data, tmp_path).resume()
    with pytest.raises(CheckpointError, match="model.pt: non-finite weights: model.encoder.embedding"):
        Recommender.load(tmp_path, data=data)
    # the CLI: one line, exit 2, no artifact
    assert main(["export", str(tmp_path), str(tmp_path / "model.hqgnn")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.pt: non-finite weights: model.encoder.embedding holds 1 NaN" in lines[0]
    assert not (tmp_path / "model.hqgnn").exists()
    # the Adam state is checked too (a resume would step with it)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["model"]["encoder.embedding"].nan_to_num_(0.0, 0.0, 0.0)
    state["optimizer"]["state"][0]["exp_avg_sq"][1, 1] = float("inf")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"optimizer\.state\.0\.exp_avg_sq holds 1 inf of its"):
        load_checkpoint(path)


def test_finish_refuses_nonfinite_weights_and_overflowing_scores(tmp_path, data, small_settings):
    from hqgnn.errors import NonFiniteScores, TrainingDiverged

    trainer = trainer_for(make_cfg(small_settings, epochs=1), data, tmp_path)
    trainer.fit()
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.json", "model.pt", "checkpoint.pt")}
    with torch.no_grad():
        trainer.model.encoder.embedding[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="epoch 1: non-finite weights at the end of training: "
                                               "model.encoder.embedding holds 1 NaN"):
        trainer.finish()  # what fit() ends with
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    # finite but huge: every score overflows float32, so no ranking (and no metrics) from it
    with torch.no_grad():
        trainer.model.encoder.embedding.fill_(1e20)
    with pytest.raises(NonFiniteScores, match=r"cannot rank the valid split: the scores can overflow float32 "
                                              r"\(max user norm .* x max item norm .* > 3\.4e\+38\)"):
        trainer.evaluate("valid")
    trainer.best_state = None  # report the last (huge) weights, not the best epoch's
    with pytest.raises(TrainingDiverged, match="epoch 1: cannot rank the test split: the scores can overflow"):
        trainer.finish()
    assert all((tmp_path / name).read_bytes() == before[name] for name in ("metrics.json", "model.pt"))


def test_overwrite_removes_the_old_results_before_training(tmp_path, capsys):
    from hqgnn.cli import main

    d = _tiny_folder(tmp_path / "ds")
    run = tmp_path / "run"
    ok = ["train", "--data", str(d), "--out", str(run), "--quiet", "--set", "epochs=2", "eval_every=1", "val_fraction=0",
          "dim=4", "layers=1", *TINY_KS]
    assert main(ok) == 0
    (run / "notes.txt").write_text("mine")
    # a diverging rerun over it: the old metrics.json / model.pt must not stay beside the new config
    assert main(ok + ["lr=1e30", "--overwrite"]) == 2
    assert not (run / "metrics.json").exists() and not (run / "model.pt").exists()
    assert (run / "notes.txt").read_text() == "mine"  # files that are not run files stay
    # bad settings fail before anything is removed
    assert main(ok) == 0
    assert main(ok + ["train_test_overlap=sometimes", "--overwrite"]) == 2
    assert (run / "metrics.json").exists()
    capsys.readouterr()


@pytest.mark.parametrize("eval_split, calls", [("test", ["test", "test"]), ("valid", ["valid", "valid", "test"])])
def test_finish_ranks_test_once(tmp_path, data, small_settings, monkeypatch, eval_split, calls):
    """Without a validation split the last epoch's test evaluation is the reported one (not
    ranked again); with one, the selected weights are ranked on test at the end."""
    seen = []
    original = Trainer.evaluate

    def evaluate(self, split):
        seen.append(split)
        return original(self, split)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    cfg = make_cfg(small_settings, epochs=4, eval_every=2, eval_split=eval_split)
    trainer = trainer_for(cfg, data, tmp_path / "run")
    metrics = trainer.fit()
    assert seen == calls
    fresh = original(trainer, "test")
    assert {k: metrics[k] for k in fresh if k != "users"} == {k: v for k, v in fresh.items() if k != "users"}
