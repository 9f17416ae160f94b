"""Ranking distillation from a float teacher run (hqgnn.models.distill): the teacher's lists against
a brute-force ranking, the term's value by hand, weight 0 = no distillation, the one-line errors of a
teacher that does not fit, exact resume, the CLI's --set distill_from and the experiment's cell key."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hqgnn.config import Config
from hqgnn.data import make_synthetic, with_validation
from hqgnn.errors import ConfigError
from hqgnn.models import initial_model
from hqgnn.models.distill import (RankingDistillation, distillation_loss, draw_ranks, draw_teacher_pairs, rank_lookup,
                                  rank_of, rank_probabilities, teacher_embeddings, teacher_rankings, top_items)
from hqgnn.training import Trainer, load_checkpoint


@pytest.fixture(scope="module")
def data():
    return with_validation(make_synthetic(n_users=120, n_items=80, mean_degree=10, seed=1), 0.2, seed=5)


def make_cfg(small_settings, **changes) -> Config:
    return Config.load(overrides=small_settings(**changes))


def train(cfg, data, out=None) -> Trainer:
    trainer = Trainer(cfg, initial_model(cfg, data), data, out, progress=False)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data):
    """A float LightGCN run (2 layers, 3 epochs) on ``data``: the teacher of every test."""
    from conftest import _small_settings

    out = tmp_path_factory.mktemp("teacher") / "lightgcn"
    train(Config.load(overrides=_small_settings(epochs=3)), data, out)
    return out


def student(small_settings, teacher, **changes) -> Config:
    settings = {"model": "hqgnn", "bits": 2, "distill_from": str(teacher), "distill_top": 10, "epochs": 3, **changes}
    return make_cfg(small_settings, **settings)


def weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- the teacher's lists
def test_teacher_lists_equal_a_brute_force_ranking(data, teacher):
    from hqgnn.loading import load_run

    users, items = teacher_embeddings(teacher, data)
    # the float64 embeddings are the run's own final embeddings
    loaded = load_run(teacher, data)
    u32, i32 = loaded.model.eval_embeddings(loaded.adj)
    assert torch.allclose(users.float(), u32, atol=1e-5) and torch.allclose(items.float(), i32, atol=1e-5)

    lists = teacher_rankings(teacher, data, 10)
    assert lists.shape == (data.n_users, 10) and lists.dtype == torch.int64
    scores, train = (users @ items.T).numpy(), data.train.tocsr()
    for u in range(data.n_users):
        seen = set(train.indices[train.indptr[u]:train.indptr[u + 1]].tolist())
        order = [i for i in np.argsort(-scores[u], kind="stable") if i not in seen][:10]
        assert lists[u].tolist() == order, u
    # blocks change nothing
    assert torch.equal(top_items(users, items, data.train, 10, block=7), lists)


def test_lists_pad_users_with_few_unseen_items():
    train = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=np.float32))
    users = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    items = torch.tensor([[4.0], [3.0], [2.0], [1.0]], dtype=torch.float64)
    assert top_items(users, items, train, 3).tolist() == [[3, -1, -1], [0, 1, 2]]


# ---------------------------------------------------------------- the term
def test_loss_equals_a_hand_computed_value():
    user_table = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    item_table = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    users, teacher_items, neg = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 1])
    # pair 0: <u0, i1> - <u0, i0> = 1 - 2 = -1 -> softplus(1); pair 1: <u1, i2> - <u1, i1> = -1 - 0.5 = -1.5
    both = distillation_loss(user_table, item_table, users, teacher_items, neg, torch.tensor([1.0, 1.0]))
    assert both.item() == pytest.approx((math.log1p(math.e) + math.log1p(math.exp(1.5))) / 2, rel=1e-6)
    first = distillation_loss(user_table, item_table, users, teacher_items, neg, torch.tensor([1.0, 0.0]))
    assert first.item() == pytest.approx(math.log1p(math.e) / 2, rel=1e-6)  # masked pairs still count in B


def test_loss_gradients_equal_autograd():
    torch.manual_seed(0)
    ut, it = torch.randn(5, 3, requires_grad=True), torch.randn(7, 3, requires_grad=True)
    users, t, j = torch.randint(0, 5, (40,)), torch.randint(0, 7, (40,)), torch.randint(0, 7, (40,))
    mask = (torch.rand(40) > 0.3).float()
    distillation_loss(ut, it, users, t, j, mask).backward()
    fast = (ut.grad.clone(), it.grad.clone())
    ut.grad = it.grad = None
    diff = (ut[users] * (it[t] - it[j])).sum(1)
    ((torch.nn.functional.softplus(-diff) * mask).sum() / 40).backward()
    assert torch.allclose(fast[0], ut.grad, atol=1e-6) and torch.allclose(fast[1], it.grad, atol=1e-6)


def test_pairs_follow_the_drawn_rank_and_mask_contradictions():
    lists = torch.tensor([[2, 0, 1], [1, 2, -1]])
    users, neg = torch.tensor([0, 0, 1]), torch.tensor([0, 3, 0])
    for rank, items, mask in [(0, [2, 2, 1], [1, 1, 1]), (1, [0, 0, 2], [0, 1, 1]), (2, [1, 1, 0], [0, 1, 0])]:
        got_items, got_mask = draw_teacher_pairs(lists, users, neg, torch.full((3,), rank))
        assert got_items.tolist() == items and got_mask.tolist() == mask, rank


def test_rank_of_is_a_lookup():
    torch.manual_seed(1)
    n_items, top = 30, 7
    lists = torch.stack([torch.randperm(n_items)[:top] for _ in range(9)])
    lists[3, 5:] = -1
    users = torch.randint(0, 9, (500,))
    items = torch.randint(0, n_items, (500,))
    got = rank_of(rank_lookup(lists, n_items), users, items)
    want = [lists[u].tolist().index(i) if i in lists[u].tolist() else top for u, i in zip(users.tolist(), items.tolist())]
    assert got.tolist() == want


def test_ranks_follow_the_position_weights():
    p = rank_probabilities(4, 2.0)
    assert p.sum().item() == pytest.approx(1.0) and (p[1] / p[0]).item() == pytest.approx(math.exp(-0.5))
    ranks = draw_ranks(200_000, 4, 2.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ranks, minlength=4).double() / len(ranks)
    assert ranks.min() >= 0 and ranks.max() <= 3 and torch.allclose(freq, p, atol=0.005)
    term = RankingDistillation(torch.tensor([[1, 2], [0, 2]]), weight=0.5, decay=1.0, n_items=3)
    assert term.state_dict() == {}  # nothing persistent: model.pt keeps its layout


# ---------------------------------------------------------------- training
def test_weight_zero_is_exactly_no_distillation(data, teacher, small_settings):
    plain = train(make_cfg(small_settings, model="hqgnn", bits=2, epochs=3), data)
    zero = train(student(small_settings, teacher, distill_weight=0), data)
    assert "distillation" not in zero.model._modules
    assert_same_weights(weights(plain), weights(zero))
    distilled = train(student(small_settings, teacher, distill_weight=1.0), data)
    assert "distillation" in distilled.model._modules
    assert not torch.equal(weights(plain)["encoder.embedding"], weights(distilled)["encoder.embedding"])
    # model.pt keeps its layout: the teacher's lists are not part of the weights
    assert weights(distilled).keys() == weights(plain).keys()


def test_resume_with_distillation_continues_exactly(tmp_path, data, teacher, small_settings):
    straight = train(student(small_settings, teacher, epochs=4), data, tmp_path / "straight")
    train(student(small_settings, teacher, epochs=2), data, tmp_path / "split")
    cfg = student(small_settings, teacher, epochs=4)
    second = Trainer(cfg, initial_model(cfg, data), data, tmp_path / "split", progress=False)
    second.resume()
    second.fit()
    assert_same_weights(weights(straight), weights(second))
    assert_same_weights(load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"],
                        load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"])
    drop = {"train_seconds", "eval_seconds", "hessian_seconds"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in straight.history] == \
           [{k: v for k, v in h.items() if k not in drop} for h in second.history]


# ---------------------------------------------------------------- a teacher that does not fit
def test_mismatched_teacher_is_a_one_line_config_error(tmp_path, data, teacher, small_settings):
    other = with_validation(make_synthetic(n_users=120, n_items=80, mean_degree=10, seed=2), 0.2, seed=5)
    bigger = with_validation(make_synthetic(n_users=130, n_items=80, mean_degree=10, seed=1), 0.2, seed=5)
    quantized = tmp_path / "quantized"
    train(make_cfg(small_settings, model="hqgnn", bits=2, epochs=1), data, quantized)
    cases = [(other, teacher, "other data"), (bigger, teacher, "another data set"),
             (data, quantized, "must be a float lightgcn run"), (data, tmp_path / "missing", "no trained model")]
    for target, run, why in cases:
        cfg = student(small_settings, run)
        with pytest.raises(ConfigError) as err:
            Trainer(cfg, initial_model(cfg, target), target, progress=False)
        msg = str(err.value)
        assert f"distill_from={str(run)!r}" in msg and why in msg and "\n" not in msg, msg


def test_settings_are_checked(small_settings, teacher):
    for change, message in [({"distill_weight": -1}, "distill_weight=-1.0 is out of range"),
                            ({"distill_top": 0}, "distill_top=0 is out of range"),
                            ({"distill_decay": 0}, "distill_decay=0.0 is out of range"),
                            ({"model": "lightgcn"}, "does not apply to model='lightgcn'")]:
        with pytest.raises(ConfigError, match=message):
            student(small_settings, teacher, **change)


# ---------------------------------------------------------------- entry points
def test_cli_accepts_distill_from(tmp_path, teacher, capsys):
    from hqgnn.cli import main

    # the teacher was trained on the module's data; the CLI's synthetic data is another: one line
    out = tmp_path / "cli"
    args = ["train", "--data", "synthetic", "--model", "hqgnn", "--bits", "2", "--out", str(out), "--epochs", "2",
            "--quiet", "--set", "synthetic_users=150", "synthetic_items=100", "dim=16", "layers=2", "threads=1",
            "batch_size=512", "eval_every=1", "distill_top=10"]
    assert main(args + [f"distill_from={teacher}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "distill_from=" in err and "other" in err and len(err.splitlines()) == 1
    fp = tmp_path / "fp"
    assert main(["train", "--data", "synthetic", "--model", "lightgcn", "--out", str(fp), "--epochs", "2", "--quiet",
                 "--set", *args[args.index("--set") + 1 : -1]]) == 0
    capsys.readouterr()
    assert main(args + [f"distill_from={fp}"]) == 0
    assert json.loads((out / "metrics.json").read_text())["bits"] == 2
    saved = (out / "config.yaml").read_text()
    assert f"distill_from: {fp}" in saved and "distill_top: 10" in saved


def test_experiment_cell_distils_from_its_seed_teacher(tmp_path):
    from hqgnn.experiment import cell_config, expand_cells, load_experiment

    spec = tmp_path / "exp.yaml"
    spec.write_text("datasets: {syn: synthetic}\nseeds: [1, 2]\ncells:\n  - {model: lightgcn}\n"
                    "  - {model: hqgnn, bits: 2, name: kd, distill_from: lightgcn, settings: {distill_weight: 0.3}}\n")
    cells = expand_cells(load_experiment(spec))
    assert [c.model for c in cells] == ["lightgcn", "lightgcn", "hqgnn", "hqgnn"]  # teachers first
    cfg = cell_config(cells[3], tmp_path / "out")
    assert cfg.distill_from == str(tmp_path / "out" / "syn" / "lightgcn" / f"seed{cells[3].seed}")
    assert cfg.distill_weight == 0.3
    spec.write_text("datasets: {syn: synthetic}\ncells:\n  - {model: hqgnn, bits: 2, distill_from: lightgcn}\n")
    with pytest.raises(ConfigError, match="distill_from='lightgcn' needs"):
        expand_cells(load_experiment(spec))


def test_experiment_cell_with_teacher_seed_distils_every_seed_from_that_run(tmp_path):
    from hqgnn.experiment import cell_config, expand_cells, load_experiment

    spec = tmp_path / "exp.yaml"
    spec.write_text("datasets: {syn: synthetic}\nseeds: [1, 2, 3]\ncells:\n  - {model: lightgcn, seeds: [1]}\n"
                    "  - {model: hqgnn, bits: 4, name: kd, distill_from: lightgcn, teacher_seed: 1}\n")
    cells = [c for c in expand_cells(load_experiment(spec)) if c.model == "hqgnn"]
    assert [c.seed for c in cells] == [1, 2, 3]
    teacher = str(tmp_path / "out" / "syn" / "lightgcn" / "seed1")
    assert [cell_config(c, tmp_path / "out").distill_from for c in cells] == [teacher] * 3
    assert [cell_config(c, tmp_path / "out").seed for c in cells] == [1, 2, 3]
    assert {c.run_dir(tmp_path).name for c in cells} == {"seed1", "seed2", "seed3"}  # the students keep their seeds
    for bad in ("teacher_seed: 1", "distill_from: lightgcn, teacher_seed: one", "distill_from: lightgcn, teacher_seed: true"):
        spec.write_text("datasets: {syn: synthetic}\ncells:\n  - {model: lightgcn}\n"
                        f"  - {{model: hqgnn, bits: 2, {bad}}}\n")
        with pytest.raises(ConfigError, match="teacher_seed=.* needs distill_from and an integer seed"):
            expand_cells(load_experiment(spec))


def test_teacher_models_are_the_full_precision_models():
    from hqgnn.config import FULL_PRECISION_MODELS
    from hqgnn.models.distill import TEACHER_MODELS

    assert TEACHER_MODELS == FULL_PRECISION_MODELS
