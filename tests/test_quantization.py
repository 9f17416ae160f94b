"""Q_b, the GSTE backward, Hutchinson's estimator and the quantized models."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hqgnn.config import Config
from hqgnn.errors import CheckpointError
from hqgnn.models.base import bpr_loss
from hqgnn.models.hutchinson import hutchinson_trace
from hqgnn.models.quantizer import GSTEQuantize, Quantizer, codes_to_unsigned, grid_codes, unsigned_to_codes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_data():
    from hqgnn.data import make_synthetic

    return make_synthetic(n_users=300, n_items=200, mean_degree=15, seed=0)


# ---------------------------------------------------------------- Q_b
def test_one_bit_is_sign():
    x = torch.randn(200, 16)
    q = Quantizer(1)
    out = q(x)
    s = q.step
    assert torch.equal(torch.sign(out), torch.sign(x))
    assert torch.allclose(out.abs(), torch.full_like(out, s / 2))
    assert torch.equal(q.levels(x), torch.sign(x).to(torch.int32))


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_in_range_and_roundtrip(bits):
    x = torch.randn(500, 8) * 3
    q = Quantizer(bits)
    xq = q(x)
    k = q.levels(x)
    top = 2**bits - 1
    assert int(k.abs().max()) <= top and bool((k % 2 != 0).all())  # odd levels in range
    c = q.unsigned_codes(x)
    assert c.dtype == torch.uint8 and int(c.max()) <= top
    assert torch.equal(unsigned_to_codes(c, bits), k)
    # the forward value is exactly s * k / 2: training and export agree
    assert torch.allclose(xq, q.scale.detach() * k.float() / 2)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_dequantized_ranking_equals_integer_ranking(bits):
    torch.manual_seed(bits)
    qu, qi = Quantizer(bits), Quantizer(bits)
    u, i = torch.randn(30, 16), torch.randn(200, 16) * 0.5
    float_scores = qu(u) @ qi(i).t()
    int_scores = qu.levels(u).long() @ qi.levels(i).long().t()
    assert torch.allclose(float_scores, qu.scale.detach() * qi.scale.detach() / 4 * int_scores.float(), rtol=1e-5, atol=1e-5)
    # identical ordering: sorting by the integer score sorts the float score too
    order = torch.argsort(int_scores, dim=1, descending=True, stable=True)
    sorted_float = torch.gather(float_scores, 1, order)
    assert bool((sorted_float[:, :-1] >= sorted_float[:, 1:] - 1e-5).all())


def test_mid_rise_grid_by_hand():
    # step 1, 2 bits: levels k/2 in {-1.5, -0.5, 0.5, 1.5}, clip range |z| <= 2
    z = torch.tensor([-5.0, -1.2, -0.1, 0.0, 0.4, 0.99, 1.0, 7.0])
    assert grid_codes(z, 2).tolist() == [-3, -3, -1, 1, 1, 1, 3, 3]
    assert codes_to_unsigned(grid_codes(z, 2), 2).tolist() == [0, 0, 1, 2, 2, 2, 3, 3]


# ---------------------------------------------------------------- GSTE
@given(st.integers(1, 8), st.floats(0.0, 2.0), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_gste_backward_matches_formula(bits, delta, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(64, generator=gen) * 2).requires_grad_(True)
    scale = torch.tensor(0.7)
    g = torch.randn(64, generator=gen)
    out = GSTEQuantize.apply(x, scale, bits, delta, True, 1.0)
    out.backward(g)
    z = x.detach() / scale
    k = grid_codes(z, bits)
    inside = (z.abs() <= 2 ** (bits - 1)).float()
    expected = g * (1 + delta * torch.sign(g) * (z - k / 2)) * inside
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_gste_with_zero_delta_is_clipped_ste():
    x = torch.tensor([-3.0, -0.3, 0.2, 0.9, 2.5], requires_grad=True)
    g = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0])
    GSTEQuantize.apply(x, torch.tensor(1.0), 1, 0.0, True, 1.0).backward(g)
    # 1 bit, step 1: clipping range |x| <= 1
    assert x.grad.tolist() == [0.0, -2.0, 3.0, -4.0, 0.0]


def test_gste_by_hand():
    # x = 0.2 with step 1 (1 bit): level +0.5, error z - k/2 = -0.3
    x = torch.tensor([0.2, 0.2], requires_grad=True)
    g = torch.tensor([1.0, -1.0])
    GSTEQuantize.apply(x, torch.tensor(1.0), 1, 0.5, True, 1.0).backward(g)
    # g=+1: 1 * (1 + 0.5 * (+1) * (-0.3)) = 0.85 ; g=-1: -1 * (1 + 0.5 * (-1) * (-0.3)) = -1.15
    assert torch.allclose(x.grad, torch.tensor([0.85, -1.15]))


def test_wider_ste_window_passes_gradient_with_bounded_error_term():
    # 1 bit, step 1, window 3: gradient passes for |x| <= 3; beyond the grid the error
    # term z - k/2 is held at +-1/2
    x = torch.tensor([-3.5, -2.0, 0.2, 2.9], requires_grad=True)
    g = torch.tensor([1.0, 1.0, 1.0, -1.0])
    GSTEQuantize.apply(x, torch.tensor(1.0), 1, 0.4, True, 1.0, 3.0).backward(g)
    # -2.0: k=-1, error -1.5 -> -0.5: 1 * (1 + 0.4 * (-0.5)) = 0.8
    # 0.2: error -0.3: 1 + 0.4 * (-0.3) = 0.88 ; 2.9: error 2.4 -> 0.5, g=-1: -(1 - 0.4 * 0.5) = -0.8
    assert torch.allclose(x.grad, torch.tensor([0.0, 0.8, 0.88, -0.8]))


def test_narrow_ste_window_clips_inside_the_grid():
    # 1 bit, step 1, window 0.5: the gradient passes only for |x| <= 0.5, delta 0 (plain STE)
    x = torch.tensor([-0.7, -0.5, 0.1, 0.6], requires_grad=True)
    GSTEQuantize.apply(x, torch.tensor(1.0), 1, 0.0, True, 1.0, 0.5).backward(torch.ones(4))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_delta_scale_multiplies_the_estimated_delta(small_data):
    deltas = {}
    for scale in (1.0, 3.0, -1.0):
        trainer, _, _ = _fit("hqgnn", small_data, bits=1, delta_every=4, epochs=2, delta_scale=scale)
        deltas[scale] = [h for h in trainer.history if h.get("event") == "epoch_start"][0]
    # the same seed gives the same weights at the first estimate, so the same formula value
    assert deltas[1.0]["delta_user"] > 0
    assert deltas[3.0]["delta_formula_user"] == pytest.approx(deltas[1.0]["delta_user"])
    assert deltas[3.0]["delta_user"] == pytest.approx(3 * deltas[1.0]["delta_user"])
    # a negative scale reverses the correction (the diagnostic of its direction)
    assert deltas[-1.0]["delta_item"] == pytest.approx(-deltas[1.0]["delta_item"])


def test_hashgnn_estimator_is_identity_ste_through_tanh():
    x = torch.tensor([-9.0, 0.1, 2.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0])
    GSTEQuantize.apply(x, torch.tensor(1.0), 1, 0.7, False, 1.0).backward(g)
    # no clipping and no delta: g * (1 - tanh(x)^2)
    assert torch.allclose(x.grad, g * (1 - torch.tanh(x.detach()) ** 2))


def test_lsq_scale_gradient_matches_finite_difference_of_smooth_part():
    # inside the range, d x_hat / d s = k/2 - z (straight-through on the rounding)
    x = torch.tensor([0.3, -1.7, 5.0])
    s = torch.tensor(1.0, requires_grad=True)
    GSTEQuantize.apply(x, s, 2, 0.0, True, 1.0).sum().backward()
    z = x / 1.0
    k = grid_codes(z, 2)
    inside = (z.abs() <= 2).float()
    assert torch.allclose(s.grad, (k / 2 - z * inside).sum())


# ---------------------------------------------------------------- Hutchinson
def test_hutchinson_on_quadratic_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=gen)
    h = a @ a.t() + torch.eye(20)  # f(x) = 0.5 x^T H x has Hessian H
    est = hutchinson_trace(lambda x: 0.5 * x @ h @ x, torch.randn(20, generator=gen), max_probes=4000, tol=0.0,
                           generator=torch.Generator().manual_seed(1))
    assert est.probes == 4000
    assert est.trace == pytest.approx(float(torch.trace(h)), rel=0.05)


def test_hutchinson_on_diagonal_hessian_is_exact():
    # Rademacher probes give v^T D v = tr(D) exactly for a diagonal Hessian
    d = torch.linspace(0.5, 3.0, 10)
    est = hutchinson_trace(lambda x: 0.5 * (d * x * x).sum(), torch.zeros(10), max_probes=3, tol=0.0)
    assert est.trace == pytest.approx(float(d.sum()), rel=1e-6)


def test_hutchinson_matches_exact_hessian_of_bpr_on_tiny_graph():
    gen = torch.Generator().manual_seed(3)
    items = torch.randn(6, 4, generator=gen)
    users = torch.randint(0, 5, (12,), generator=gen)
    pos = torch.randint(0, 6, (12,), generator=gen)
    neg = torch.randint(0, 6, (12,), generator=gen)
    u0 = torch.randn(5, 4, generator=gen)

    def loss(flat):
        return bpr_loss(flat.view(5, 4)[users], items[pos], items[neg])

    exact = torch.autograd.functional.hessian(loss, u0.flatten())
    est = hutchinson_trace(loss, u0.flatten(), max_probes=3000, tol=0.0, generator=torch.Generator().manual_seed(4))
    assert est.trace == pytest.approx(float(torch.trace(exact)), rel=0.05)
    x = u0.flatten().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    assert torch.allclose(est.grad, grad)  # the gradient returned for the delta statistics


def test_hutchinson_stops_early_when_converged():
    d = torch.ones(50)
    est = hutchinson_trace(lambda x: 0.5 * (d * x * x).sum(), torch.zeros(50), max_probes=50, tol=1e-3)
    assert est.probes == 2  # the running mean does not move for an identity Hessian


# ---------------------------------------------------------------- models on synthetic data
def _fit(model, small_data, **extra):
    from hqgnn.evaluation import evaluate_scores
    from hqgnn.training import Trainer, excluded_for

    overrides = [f"model={model}", "epochs=20", "batch_size=256", "lr=0.02", "eval_every=10", "val_fraction=0",
                 "eval_split=test", "patience=0", "threads=1", "dim=16"] + [f"{k}={v}" for k, v in extra.items()]
    cfg = Config.load(overrides=overrides)
    trainer = Trainer(cfg, small_data, None, progress=False)
    metrics = trainer.fit()
    gen = torch.Generator().manual_seed(0)
    random = evaluate_scores(lambda idx: torch.rand(len(idx), small_data.n_items, generator=gen), small_data.test,
                             excluded_for("test", small_data), ks=[20])
    return trainer, metrics, random


@pytest.mark.parametrize("model,bits", [("hqgnn", 1), ("hqgnn", 4), ("ste", 2), ("hashgnn", 1), ("bigear", 4)])
def test_quantized_models_beat_random(small_data, model, bits):
    trainer, metrics, random = _fit(model, small_data, bits=bits, delta_every=4)
    # an untrained or broken model ranks like random (ratio ~1); 20 epochs on this tiny set
    # give 1.9x (1-bit, 16 dims) to 3x
    assert metrics["recall@20"] > 1.5 * random["recall@20"]
    assert metrics["bits"] == (1 if model in ("hashgnn", "bigear") else bits)


def test_hqgnn_logs_delta_and_trace(small_data):
    trainer, metrics, _ = _fit("hqgnn", small_data, bits=2, delta_every=4)
    events = [h for h in trainer.history if h.get("event") == "epoch_start"]
    assert [e["epoch"] for e in events] == [0, 4, 8, 12, 16]
    assert all(e["delta_user"] >= 0 and "trace_per_entry_item" in e for e in events)


def test_soft_hashgnn_probability_decays(small_data):
    trainer, _, _ = _fit("hashgnn", small_data, hashgnn_soft=True, hashgnn_soft_p0=0.8, hashgnn_soft_decay=0.5)
    probs = [h["soft_probability"] for h in trainer.history if "soft_probability" in h]
    assert probs[:3] == pytest.approx([0.8, 0.4, 0.2])


def test_post_hoc_models_from_a_trained_run(small_data, tmp_path):
    from hqgnn.training import Trainer

    base = Config.load(overrides=["epochs=20", "batch_size=256", "lr=0.02", "val_fraction=0", "eval_split=test",
                                  "patience=0", "threads=1", "dim=16", "eval_every=10"])
    fp = Trainer(base, small_data, tmp_path / "fp", progress=False).fit()
    results = {}
    for model, bits in (("ptq", 4), ("lsh", 1), ("ptq", 8)):
        cfg = Config.load(overrides=[f"model={model}", f"bits={bits}", f"from_run={tmp_path / 'fp'}", "threads=1",
                                     "dim=16", "val_fraction=0", "eval_split=test"])
        m = results[model, bits] = Trainer(cfg, small_data, None, progress=False).fit()
        assert m["bits"] == bits
        assert m["recall@20"] > 0.3 * fp["recall@20"]
    # 8-bit post-training quantization is nearly lossless
    assert m["recall@20"] == pytest.approx(fp["recall@20"], rel=0.05)
    # codes of embeddings propagated otherwise than the run was trained are refused, not made
    cfg = Config.load(overrides=["model=ptq", "bits=4", f"from_run={tmp_path / 'fp'}", "threads=1", "dim=16", "layers=1",
                                 "val_fraction=0", "eval_split=test"])
    with pytest.raises(CheckpointError, match=r"fp.model\.pt: from_run propagates 3 layers, this ptq run 1 \(set layers=3\)"):
        Trainer(cfg, small_data, None, progress=False).fit()
    # nor are other layer weights; the source's default weights written out are the same weights
    common = ["model=ptq", "bits=4", f"from_run={tmp_path / 'fp'}", "threads=1", "dim=16", "val_fraction=0",
              "eval_split=test"]
    cfg = Config.load(overrides=common + ["layer_weights=[0.4,0.2,0.2,0.2]"])
    with pytest.raises(CheckpointError, match=r"fp.model\.pt: from_run sums its layers with weights \[0\.25, 0\.25, 0\.25, 0\.25\], "
                                              r"this ptq run with \[0\.4, 0\.2, 0\.2, 0\.2\]"):
        Trainer(cfg, small_data, None, progress=False).fit()
    cfg = Config.load(overrides=common + ["layer_weights=[0.25,0.25,0.25,0.25]"])
    assert Trainer(cfg, small_data, None, progress=False).fit()["recall@20"] == pytest.approx(results["ptq", 4]["recall@20"])
    # and a quantized run is no source of full-precision embeddings
    (tmp_path / "hq").mkdir()
    from hqgnn.training import CHECKPOINT_VERSION

    torch.save({"version": CHECKPOINT_VERSION, "config": {"model": "hqgnn", "layers": 3}, "model": {}},
               tmp_path / "hq" / "model.pt")
    cfg = Config.load(overrides=["model=lsh", f"from_run={tmp_path / 'hq'}", "threads=1", "dim=16", "val_fraction=0",
                                 "eval_split=test"])
    with pytest.raises(CheckpointError, match=r"hq.model\.pt: from_run must be a full-precision lightgcn or mf run, got 'hqgnn'"):
        Trainer(cfg, small_data, None, progress=False).fit()
    # a damaged or foreign model.pt is named as such, as any checkpoint is
    (tmp_path / "hq" / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"hq.model\.pt: corrupt checkpoint"):
        Trainer(cfg, small_data, None, progress=False)
    torch.save({"config": {"model": "lightgcn"}}, tmp_path / "hq" / "model.pt")
    with pytest.raises(CheckpointError, match=r"hq.model\.pt: not an hqgnn checkpoint"):
        Trainer(cfg, small_data, None, progress=False)


def test_export_codes_equal_training_quantizer(small_data):
    trainer, _, _ = _fit("hqgnn", small_data, bits=3)
    model = trainer.model
    codes = model.export_codes(trainer.adj)
    u, i = model.eval_embeddings(trainer.adj)
    k_u = 2 * torch.from_numpy(codes["user_codes"]).int() - 7
    assert torch.allclose(u, codes["user_scale"] * k_u.float() / 2, atol=1e-6)
    assert codes["item_codes"].max() <= 7


# ---------------------------------------------------------------- BiGeaR
def test_bigear_scores_are_its_layerwise_formula():
    """<q_u, q_i> = sum_l alpha_l^2 a_u^l a_i^l (d - 2 Hamming(b_u^l, b_i^l)), with the layers
    E^l = A_hat^l E^0 computed here from a dense adjacency, independently of the encoder."""
    import scipy.sparse as sp

    from hqgnn.graph import normalized_adjacency
    from hqgnn.models import build_model

    rng = np.random.default_rng(0)
    n_users, n_items, d, layers = 7, 9, 8, 2
    dense = rng.random((n_users, n_items)) < 0.4
    dense[0, 0] = dense[6, 8] = True  # no isolated corner
    train = sp.csr_matrix(dense.astype(np.float32))
    cfg = Config.load(overrides=["model=bigear", f"dim={d}", f"layers={layers}", "layer_weights=[0.5,0.3,0.2]"])
    model = build_model(cfg, n_users, n_items)
    adj = normalized_adjacency(train)
    u, i = model.eval_embeddings(adj)
    a_dense = adj.to_dense().double().numpy()
    e = [model.encoder.embedding.detach().double().numpy()]
    for _ in range(layers):
        e.append(a_dense @ e[-1])
    expect = np.zeros((n_users, n_items))
    for w, el in zip((0.5, 0.3, 0.2), e):
        scale = np.abs(el).mean(axis=1)
        bits = el >= 0
        hamming = (bits[:n_users, None, :] != bits[None, n_users:, :]).sum(-1)
        expect += w * w * scale[:n_users, None] * scale[None, n_users:] * (d - 2 * hamming)
    np.testing.assert_allclose((u @ i.T).double().numpy(), expect, rtol=1e-5, atol=1e-7)
    info = model.describe()
    assert info["code_bits_per_node"] == 3 * d and info["bytes_per_user"] == 3 + 12  # 24 bits + 3 float32 scales


def test_bigear_sign_gradient_is_hashgnn_identity_ste():
    from hqgnn.models.bigear import sign_with_identity_ste

    x = torch.tensor([-0.9, 0.05, 0.3, 1.6], requires_grad=True)
    g = torch.tensor([1.0, -2.0, 3.0, 0.5])
    out = sign_with_identity_ste(x)
    assert torch.equal(out.detach(), torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    out.backward(g)
    s = 2 * x.detach().abs().mean()
    assert torch.allclose(x.grad, g * (1 - torch.tanh(x.detach() / s) ** 2) / (s / 2))


def test_bigear_is_not_exported(tmp_path, capsys):
    from hqgnn.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--model", "bigear", "--out", str(run), "--set", "epochs=1",
                 "synthetic_users=100", "synthetic_items=80", "dim=8", "threads=1", "eval_every=1"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "out.hqgnn")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqgnn: error: model 'bigear' cannot be exported") and "\n" not in err
    assert not (tmp_path / "out.hqgnn").exists()


def test_trained_quantized_models_start_from_a_full_precision_run(small_data, tmp_path):
    import shutil

    from hqgnn.api import Recommender
    from hqgnn.training import Trainer

    common = ["batch_size=256", "lr=0.02", "val_fraction=0", "eval_split=test", "patience=0", "threads=1", "dim=16",
              "eval_every=5"]
    fp_cfg = Config.load(overrides=common + ["epochs=20", "data=synthetic"])
    Trainer(fp_cfg, small_data, tmp_path / "fp", progress=False).fit()
    source = torch.load(tmp_path / "fp" / "model.pt", weights_only=False)["model"]["encoder.embedding"]
    for model in ("hqgnn", "bigear"):
        cfg = Config.load(overrides=common + [f"model={model}", "bits=1", "epochs=0", f"from_run={tmp_path / 'fp'}"])
        started = Trainer(cfg, small_data, None, progress=False)
        assert torch.equal(started.model.encoder.embedding.detach(), source)
        cold = Trainer(Config.load(overrides=common + [f"model={model}", "bits=1", "epochs=0"]), small_data, None,
                       progress=False)
        assert not torch.equal(cold.model.encoder.embedding.detach(), source)
        # before any quantized training, the codes of the trained run already rank far above random ones
        assert started.fit()["recall@20"] > 2 * cold.fit()["recall@20"]
    # a finished run holds its own E0: it loads without the run it started from
    cfg = Config.load(overrides=common + ["model=hqgnn", "bits=1", "epochs=2", f"from_run={tmp_path / 'fp'}",
                                          "data=synthetic"])
    trained = Trainer(cfg, small_data, tmp_path / "hq", progress=False)
    metrics = trained.fit()
    shutil.rmtree(tmp_path / "fp")
    rec = Recommender.load(tmp_path / "hq", data=small_data)
    assert rec.evaluate(split="test", ks=[20])["recall@20"] == pytest.approx(metrics["recall@20"])
    # ... and resumes without it: E0 comes from its checkpoint
    longer = Recommender(config=cfg.updated({"epochs": 3}, "test"), model="hqgnn")
    assert longer.fit(small_data, out_dir=tmp_path / "hq", resume=True, progress=False)["epochs"] == 3
