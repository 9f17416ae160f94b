"""Q_b, the GSTE backward, Hutchinson's estimator and the quantized models."""

import math

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


def test_quantizer_default_is_calibrated_as_every_config():
    """Quantizer(bits) scales as the configs do (Config.scale_mode's default): from each forward's
    statistics, no trained parameter; ``learned`` is asked for by name."""
    from hqgnn.config import Config

    q = Quantizer(2)
    assert q.scale_mode == Config().scale_mode == "calibrated" and not q.scale.requires_grad
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    q(x)
    step = q.step
    q(3 * x)
    assert q.step == pytest.approx(3 * step)  # recalibrated on every forward
    assert q.step == pytest.approx(float(q.calibrated_scale(3 * x)))
    learned = Quantizer(2, "learned")
    assert learned.scale.requires_grad
    with pytest.raises(ValueError, match="scale_mode"):
        Quantizer(2, "fixed")


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
def hutchinson_standard_error(h: torch.Tensor, probes: int) -> float:
    """The standard error of Hutchinson's mean over ``probes`` Rademacher probes of a symmetric H:
    one probe's v^T H v has variance 2 sum_{i != j} H_ij^2 (its diagonal part is exact)."""
    h = h.double()
    off_diagonal = float((h**2).sum() - (torch.diagonal(h) ** 2).sum())
    return math.sqrt(2.0 * off_diagonal / probes)


def test_hutchinson_on_quadratic_form():
    """f(x) = 0.5 x^T A x has the Hessian A everywhere: the estimate is within 5 standard errors
    of tr(A) (the error bound follows from the probe variance, not a guess), and the gradient is A x."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=gen)
    h = a @ a.t() / 20 + torch.eye(20)
    x0 = torch.randn(20, generator=gen)
    probes = 4000
    est = hutchinson_trace(lambda x: 0.5 * x @ h @ x, x0, max_probes=probes, tol=0.0,
                           generator=torch.Generator().manual_seed(1))
    assert est.probes == probes
    exact, se = float(torch.trace(h)), hutchinson_standard_error(h, probes)
    assert 5 * se < 0.02 * exact  # the bound is tight enough to catch a wrong estimator
    assert abs(est.trace - exact) <= 5 * se, (est.trace, exact, se)
    assert torch.allclose(est.grad, h @ x0, atol=1e-5)


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


def test_gste_delta_matches_exact_hessian_trace_and_gradient_std():
    """HQ-GNN's namesake step: delta = (Tr(H) / N) / (3 std(g)) per table, H and g the Hessian and
    gradient of the BPR loss w.r.t. a mini-batch's quantized rows in units of the step, averaged
    over the batches. Checked against an independent computation: the exact Hessian
    (torch.autograd.functional.hessian, float64) and the exact gradient of the same loss on the same
    rows. The tolerance is 5 standard errors of Hutchinson's mean (2 sum_{i != j} H_ij^2 per probe)."""
    from hqgnn.models import HQGNNModel, LightGCN

    n_users, n_items, d, bits, probes = 6, 8, 4, 2, 3000
    encoder = LightGCN(n_users, n_items, dim=d, layers=0, generator=torch.Generator().manual_seed(3))
    model = HQGNNModel(encoder, bits=bits, hutchinson_probes=probes, hutchinson_tol=0.0, hutchinson_batches=2)
    gen = torch.Generator().manual_seed(5)
    batches = [tuple(torch.randint(0, n, (10,), generator=gen) for n in (n_users, n_items, n_items)) for _ in range(2)]

    class Context:  # what update_deltas reads of the trainer's context: fixed batches here
        adj = None
        epoch_rng = np.random.default_rng(0)

        @staticmethod
        def sample_batches(n):
            return iter(batches[:n])

    log = model.update_deltas(Context())
    assert log["hutchinson_probes"] == 2 * 2 * probes  # every probe ran (tol 0): the error bound holds

    # independently: the quantized tables from the grid formula, then exact derivatives
    with torch.no_grad():
        u, i = (t.double() for t in encoder(None))
    su, si = model.user_quantizer.step, model.item_quantizer.step
    uq, iq = su * grid_codes(u / su, bits) / 2, si * grid_codes(i / si, bits) / 2
    exact = {"user": [], "item": []}
    for users, pos, neg in batches:
        uniq_u, inv_u = torch.unique(users, return_inverse=True)
        uniq_i, inv_i = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        inv_p, inv_n = inv_i[: len(pos)], inv_i[len(pos):]
        cases = {
            "user": (uq[uniq_u] / su, lambda y: bpr_loss((y * su)[inv_u], iq[pos], iq[neg])),
            "item": (iq[uniq_i] / si, lambda y: bpr_loss(uq[users], (y * si)[inv_p], (y * si)[inv_n])),
        }
        for name, (x, loss) in cases.items():
            flat = lambda v, x=x, loss=loss: loss(v.view(x.shape))  # noqa: E731
            h = torch.autograd.functional.hessian(flat, x.flatten())
            v = x.flatten().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(flat(v), v)
            exact[name].append((float(torch.trace(h)) / x.numel(), float(g.std()),
                                hutchinson_standard_error(h, probes) / x.numel()))
    for name in ("user", "item"):
        trace_per_entry = sum(e[0] for e in exact[name]) / 2
        grad_std = sum(e[1] for e in exact[name]) / 2
        se = math.sqrt(sum(e[2] ** 2 for e in exact[name])) / 2  # of the mean of two independent estimates
        delta = max(trace_per_entry / (3 * grad_std), 0.0)
        assert log[f"grad_std_{name}"] == pytest.approx(grad_std, rel=1e-5)
        assert abs(log[f"trace_per_entry_{name}"] - trace_per_entry) <= 5 * se + 1e-6
        assert trace_per_entry > 0 and 5 * se < 0.05 * trace_per_entry  # a meaningful, unclipped delta
        assert abs(log[f"delta_{name}"] - delta) <= 5 * se / (3 * grad_std) + 1e-6 * delta, (name, log, delta)
        # the quantizers use it: the GSTE's backward reads the buffer
        quantizer = model.user_quantizer if name == "user" else model.item_quantizer
        assert float(quantizer.delta) == pytest.approx(log[f"delta_{name}"])


def test_hutchinson_stops_early_when_converged():
    d = torch.ones(50)
    est = hutchinson_trace(lambda x: 0.5 * (d * x * x).sum(), torch.zeros(50), max_probes=50, tol=1e-3)
    assert est.probes == 2  # the running mean does not move for an identity Hessian


# ---------------------------------------------------------------- models on synthetic data
def trainer_for(cfg, data, out_dir=None):
    """A trainer of the model a new run of ``cfg`` starts from (with from_run's E0), as ``fit`` makes one."""
    from hqgnn.models import initial_model
    from hqgnn.training import Trainer

    return Trainer(cfg, initial_model(cfg, data), data, out_dir, progress=False)


def _fit(model, small_data, **extra):
    from hqgnn.evaluation import evaluate_scores, excluded_for

    overrides = [f"model={model}", "epochs=20", "batch_size=256", "lr=0.02", "eval_every=10", "val_fraction=0",
                 "eval_split=test", "patience=0", "threads=1", "dim=16"] + [f"{k}={v}" for k, v in extra.items()]
    cfg = Config.load(overrides=overrides)
    trainer = trainer_for(cfg, small_data)
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
    for e in events:  # the logged delta is the formula of the logged statistics, and the formula is not clipped
        for name in ("user", "item"):
            assert e[f"delta_{name}"] == pytest.approx(e[f"trace_per_entry_{name}"] / (3 * e[f"grad_std_{name}"]))
            assert e[f"delta_{name}"] > 0


def test_soft_hashgnn_probability_decays(small_data):
    trainer, _, _ = _fit("hashgnn", small_data, hashgnn_soft=True, hashgnn_soft_p0=0.8, hashgnn_soft_decay=0.5)
    probs = [h["soft_probability"] for h in trainer.history if "soft_probability" in h]
    assert probs[:3] == pytest.approx([0.8, 0.4, 0.2])


def test_post_hoc_models_from_a_trained_run(small_data, tmp_path):

    base = Config.load(overrides=["epochs=20", "batch_size=256", "lr=0.02", "val_fraction=0", "eval_split=test",
                                  "patience=0", "threads=1", "dim=16", "eval_every=10"])
    fp = trainer_for(base, small_data, tmp_path / "fp").fit()
    results = {}
    for model, bits in (("ptq", 4), ("lsh", 1), ("ptq", 8)):
        cfg = Config.load(overrides=[f"model={model}", f"bits={bits}", f"from_run={tmp_path / 'fp'}", "threads=1",
                                     "dim=16", "val_fraction=0", "eval_split=test"])
        m = results[model, bits] = trainer_for(cfg, small_data).fit()
        assert m["bits"] == bits
        assert m["recall@20"] > 0.3 * fp["recall@20"]
    # 8-bit post-training quantization is nearly lossless
    assert m["recall@20"] == pytest.approx(fp["recall@20"], rel=0.05)
    # codes of embeddings propagated otherwise than the run was trained are refused, not made
    cfg = Config.load(overrides=["model=ptq", "bits=4", f"from_run={tmp_path / 'fp'}", "threads=1", "dim=16", "layers=1",
                                 "val_fraction=0", "eval_split=test"])
    with pytest.raises(CheckpointError, match=r"fp.model\.pt: from_run propagates 3 layers, this ptq run 1 \(set layers=3\)"):
        trainer_for(cfg, small_data).fit()
    # nor are other layer weights; the source's default weights written out are the same weights
    common = ["model=ptq", "bits=4", f"from_run={tmp_path / 'fp'}", "threads=1", "dim=16", "val_fraction=0",
              "eval_split=test"]
    cfg = Config.load(overrides=common + ["layer_weights=[0.4,0.2,0.2,0.2]"])
    with pytest.raises(CheckpointError, match=r"fp.model\.pt: from_run sums its layers with weights \[0\.25, 0\.25, 0\.25, 0\.25\], "
                                              r"this ptq run with \[0\.4, 0\.2, 0\.2, 0\.2\]"):
        trainer_for(cfg, small_data).fit()
    cfg = Config.load(overrides=common + ["layer_weights=[0.25,0.25,0.25,0.25]"])
    assert trainer_for(cfg, small_data).fit()["recall@20"] == pytest.approx(results["ptq", 4]["recall@20"])
    # and a quantized run is no source of full-precision embeddings
    (tmp_path / "hq").mkdir()
    from hqgnn.training import CHECKPOINT_VERSION

    torch.save({"version": CHECKPOINT_VERSION, "config": {"model": "hqgnn", "layers": 3}, "model": {}},
               tmp_path / "hq" / "model.pt")
    cfg = Config.load(overrides=["model=lsh", f"from_run={tmp_path / 'hq'}", "threads=1", "dim=16", "val_fraction=0",
                                 "eval_split=test"])
    with pytest.raises(CheckpointError, match=r"hq.model\.pt: from_run must be a full-precision lightgcn run, got 'hqgnn'"):
        trainer_for(cfg, small_data).fit()
    # a damaged or foreign model.pt is named as such, as any checkpoint is
    (tmp_path / "hq" / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"hq.model\.pt: corrupt checkpoint"):
        trainer_for(cfg, small_data)
    torch.save({"config": {"model": "lightgcn"}}, tmp_path / "hq" / "model.pt")
    with pytest.raises(CheckpointError, match=r"hq.model\.pt: not an hqgnn checkpoint"):
        trainer_for(cfg, small_data)


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
                 "synthetic_users=100", "synthetic_items=80", "dim=8", "threads=1", "eval_every=1", "ks=[20,50]"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "out.hqgnn")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqgnn: error: model 'bigear' cannot be exported") and "\n" not in err
    assert not (tmp_path / "out.hqgnn").exists()


def test_trained_quantized_models_start_from_a_full_precision_run(small_data, tmp_path):
    import shutil

    from hqgnn.api import Recommender

    common = ["batch_size=256", "lr=0.02", "val_fraction=0", "eval_split=test", "patience=0", "threads=1", "dim=16",
              "eval_every=5"]
    fp_cfg = Config.load(overrides=common + ["epochs=20", "data=synthetic"])
    trainer_for(fp_cfg, small_data, tmp_path / "fp").fit()
    source = torch.load(tmp_path / "fp" / "model.pt", weights_only=False)["model"]["encoder.embedding"]
    for model in ("hqgnn", "bigear"):
        cfg = Config.load(overrides=common + [f"model={model}", "bits=1", "epochs=0", f"from_run={tmp_path / 'fp'}"])
        started = trainer_for(cfg, small_data)
        assert torch.equal(started.model.encoder.embedding.detach(), source)
        cold = trainer_for(Config.load(overrides=common + [f"model={model}", "bits=1", "epochs=0"]), small_data)
        assert not torch.equal(cold.model.encoder.embedding.detach(), source)
        # before any quantized training, the codes of the trained run already rank far above random ones
        assert started.fit()["recall@20"] > 2 * cold.fit()["recall@20"]
    # a finished run holds its own E0: it loads without the run it started from
    cfg = Config.load(overrides=common + ["model=hqgnn", "bits=1", "epochs=2", f"from_run={tmp_path / 'fp'}",
                                          "data=synthetic"])
    trained = trainer_for(cfg, small_data, tmp_path / "hq")
    metrics = trained.fit()
    shutil.rmtree(tmp_path / "fp")
    rec = Recommender.load(tmp_path / "hq", data=small_data)
    assert rec.evaluate(split="test", ks=[20])["recall@20"] == pytest.approx(metrics["recall@20"])
    # ... and resumes without it: E0 comes from its checkpoint
    longer = Recommender(config=cfg.updated({"epochs": 3}, "test"), model="hqgnn")
    assert longer.fit(small_data, out_dir=tmp_path / "hq", resume=True, progress=False)["epochs"] == 3


# ---------------------------------------------------------------- the nested (sign-plane) loss
@pytest.mark.parametrize("model", ["hqgnn", "ste"])
def test_sign_loss_is_bpr_on_the_codes_sign_plane(small_data, model):
    from hqgnn.models import build_model
    from hqgnn.models.base import gathered_bpr_loss

    torch.manual_seed(0)
    cfg = Config().updated({"model": model, "bits": 4, "dim": 8, "layers": 1, "sign_loss_weight": 0.5}, "test").validate()
    net = build_model(cfg, small_data.n_users, small_data.n_items)
    plain = build_model(cfg.updated({"sign_loss_weight": 0.0}, "test"), small_data.n_users, small_data.n_items)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "sign_quantizer" not in k})
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
    with_sign, _ = net.loss(None, users, pos, neg)
    without, _ = plain.loss(None, users, pos, neg)
    # independent answer: the sign plane of the 4-bit codes is sign(x) (mid-rise grid, 0 -> +1),
    # scaled to 1-bit levels +-E|x| per table
    u, i = net.encoder(None)
    su, si = torch.where(u >= 0, 1.0, -1.0) * u.abs().mean(), torch.where(i >= 0, 1.0, -1.0) * i.abs().mean()
    assert torch.equal(torch.sign(net.user_quantizer.levels(u).float()), torch.where(u >= 0, 1.0, -1.0))
    expected = without + 0.5 * gathered_bpr_loss(su, si, users, pos, neg)
    assert torch.allclose(with_sign, expected, rtol=1e-5, atol=1e-6)
    with_sign.backward()
    assert net.encoder.embedding.grad.abs().sum() > 0


def test_sign_loss_off_keeps_the_model_layout():
    from hqgnn.models import build_model

    cfg = Config().updated({"model": "hqgnn", "bits": 4}, "test").validate()
    assert not any("sign_quantizer" in k for k in build_model(cfg, 5, 7).state_dict())


@pytest.mark.parametrize("settings_", [{"model": "hqgnn", "bits": 1}, {"model": "lightgcn"}, {"model": "hashgnn"}])
def test_sign_loss_where_there_is_no_sign_plane_of_its_own_is_refused(settings_):
    from hqgnn.errors import ConfigError

    with pytest.raises(ConfigError, match="sign_loss_weight=0.5 applies to hqgnn and ste at bits >= 2"):
        Config().updated({**settings_, "sign_loss_weight": 0.5}, "test").validate()
