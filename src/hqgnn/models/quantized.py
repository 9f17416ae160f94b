"""Recommenders whose scores come from quantized final embeddings, one class per method.

* :class:`HQGNNModel`   ``hqgnn``: LightGCN + Q_b trained with the GSTE, delta from Hutchinson's
  estimate of the Hessian trace (HQ-GNN, https://arxiv.org/abs/2309.01032; docs/method.md, 'GSTE').
* :class:`STEModel`     ``ste``: the same quantizer with delta = 0, the clipped straight-through
  estimator (the GSTE's ablation).
* :class:`HashGNNModel` ``hashgnn``: HashGNN (Tan et al., WWW 2020, https://arxiv.org/abs/2003.01917):
  sign codes trained with the identity STE; ``soft`` mixes continuous values in during training
  (Bernoulli, probability decaying per epoch); ranking is always on the hard codes.
* :class:`PTQModel`     ``ptq``: post-training quantization of a trained LightGCN run (no training).
* :class:`LSHModel`     ``lsh``: random-hyperplane sign codes of a trained LightGCN run (no training).

(docs/method.md, 'Baselines'.) All share the LightGCN encoder, the BPR loss and the quantizer of
``quantizer.py``: only how gradients cross the rounding differs. Each class takes plain
arguments; :func:`hqgnn.models.build_model` maps a :class:`~hqgnn.config.Config` onto them. A
trained full-precision run (``from_run``) is the start of the trained ones and the input of the
post-hoc ones (:func:`hqgnn.models.load_full_precision_run`). BiGeaR's layer-wise codes are in
``bigear.py``.
"""

from __future__ import annotations

import math
import time

import torch

from .base import ScoringModel, bpr_loss, choose_negatives, gathered_bpr_loss
from .encoder import LightGCN
from .hutchinson import hutchinson_trace
from .quantizer import Quantizer


class QuantizedModel(ScoringModel):
    """Scores from Q_b of the final user and item embeddings (one :class:`Quantizer` per table).

    The base of the quantized methods: the GSTE's delta stays 0 (the clipped STE) unless a
    subclass sets it. Args: ``encoder``; ``bits`` (1 .. 8); ``scale_mode``, ``clip_gradient``,
    ``window`` (of both quantizers, see :class:`Quantizer`); ``fp_loss_weight``: the weight of an
    extra BPR term on the full-precision embeddings (an ablation; 0 = none); ``sign_loss_weight``:
    the weight of a BPR term on the codes' sign plane, 1-bit codes of the same embeddings (the
    nested loss of a cascade search; 0 = none);
    ``negative_sampling`` (:func:`~hqgnn.models.base.choose_negatives`).
    """

    quantized = True
    uses_hessian = False

    def __init__(self, encoder: LightGCN, bits: int, scale_mode: str = "calibrated", clip_gradient: bool = True,
                 window: float = 1.0, fp_loss_weight: float = 0.0, negative_sampling: str = "uniform",
                 sign_loss_weight: float = 0.0):
        super().__init__(encoder, negative_sampling)
        self.bits = bits
        self.fp_loss_weight = float(fp_loss_weight)
        self.user_quantizer = Quantizer(bits, scale_mode, clip_gradient, window)
        self.item_quantizer = Quantizer(bits, scale_mode, clip_gradient, window)
        self.soft_probability = 0.0
        # the nested loss: BPR on the sign plane of the b-bit codes (the top bit plane, which is
        # sign(x) for the mid-rise grid), so that the codes' own 1-bit prefix ranks well for a
        # cascade search; its quantizers exist only when it is on (model.pt keeps its layout)
        self.sign_loss_weight = float(sign_loss_weight)
        if self.sign_loss_weight > 0:
            self.user_sign_quantizer = Quantizer(1, "calibrated", clip_gradient, window)
            self.item_sign_quantizer = Quantizer(1, "calibrated", clip_gradient, window)

    # ------------------------------------------------------------ forward
    def quantize(self, u: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uq, iq = self.user_quantizer(u), self.item_quantizer(i)
        if self.training and self.soft_probability > 0:
            # HashGNN-soft: each entry keeps its continuous value with probability p
            keep_u = torch.rand(u.shape, device=u.device) < self.soft_probability
            keep_i = torch.rand(i.shape, device=i.device) < self.soft_probability
            uq = torch.where(keep_u, u, uq)
            iq = torch.where(keep_i, i, iq)
        return uq, iq

    def scoring_embeddings(self, adj):
        return self.quantize(*self.encoder(adj))

    def loss(self, adj, users, pos, neg):
        u, i = self.encoder(adj)
        uq, iq = self.quantize(u, i)
        users, pos, neg = choose_negatives(uq, iq, users, pos, neg, self.negative_sampling)
        loss = gathered_bpr_loss(uq, iq, users, pos, neg)
        if self.fp_loss_weight > 0:
            loss = loss + self.fp_loss_weight * gathered_bpr_loss(u, i, users, pos, neg)
        if self.sign_loss_weight > 0:
            us, is_ = self.user_sign_quantizer(u), self.item_sign_quantizer(i)
            loss = loss + self.sign_loss_weight * gathered_bpr_loss(us, is_, users, pos, neg)
        distillation = self._modules.get("distillation")  # the teacher's term (models.distill), when attached
        if distillation is not None:
            loss = loss + distillation(uq, iq, users, neg)
        return loss, {"triples": (users, pos, neg)}

    # ------------------------------------------------------------ export
    @torch.no_grad()
    def export_codes(self, adj) -> dict:
        """Unsigned codes c in [0, 2^b - 1] (uint8, ``(n_users, d)`` and ``(n_items, d)``) and the
        scales (floats): exactly the training-time Q_b."""
        was = self.training
        self.eval()
        try:
            u, i = self._tables_to_quantize(adj)
            return {
                "bits": self.bits,
                "user_codes": self.user_quantizer.unsigned_codes(u).cpu().numpy(),
                "item_codes": self.item_quantizer.unsigned_codes(i).cpu().numpy(),
                "user_scale": self.user_quantizer.step,
                "item_scale": self.item_quantizer.step,
            }
        finally:
            self.train(was)

    def _pre_quantize(self, u, i):
        return u, i

    def _tables_to_quantize(self, adj):
        """The (users, items) tables that Q_b codes, with the scales fixed on them (calibrated mode)."""
        u, i = self._pre_quantize(*self.encoder(adj))
        self.user_quantizer(u), self.item_quantizer(i)
        return u, i

    @torch.no_grad()
    def ranking_embeddings(self, adj):
        """Integer levels k (as float32: |<k_u, k_i>| <= d (2^b - 1)^2 is exact below 2^24 for d <= 256).

        <x_hat_u, x_hat_i> = (s_u s_i / 4) <k_u, k_i> with s_u, s_i > 0, so both rank alike."""
        was = self.training
        self.eval()
        try:
            u, i = self._tables_to_quantize(adj)
            return self.user_quantizer.levels(u).float(), self.item_quantizer.levels(i).float(), True
        finally:
            self.train(was)

    def describe(self) -> dict:
        d = self.encoder.dim
        return quantized_size(self.bits, d, self.n_users, self.n_items) | {
            "user_scale": self.user_quantizer.step,
            "item_scale": self.item_quantizer.step,
            "delta_user": float(self.user_quantizer.delta),
            "delta_item": float(self.item_quantizer.delta),
        }


class STEModel(QuantizedModel):
    """``ste``: Q_b trained through the clipped straight-through estimator (GSTE with delta = 0).

    The GSTE's ablation (docs/method.md, 'Baselines'). HQ-GNN with ``delta_scale: 0``
    trains the same weights (tested), at the cost of the trace estimates it still makes."""


class HQGNNModel(QuantizedModel):
    r"""``hqgnn``: Q_b trained with the GSTE, delta from the curvature of the BPR loss.

    HQ-GNN: Chen et al., *Hessian-aware Quantized Node Embeddings for Recommendation*,
    RecSys 2023, https://arxiv.org/abs/2309.01032 (docs/method.md, 'GSTE'). Per table
    (users, items), every ``delta_every`` epochs from epoch ``delta_warmup`` on:

    .. math::
        \delta = \mathrm{delta\_scale} \cdot \max\Big(0, \frac{\mathrm{Tr}(H) / N}{3\, \mathrm{std}(g)}\Big)

    with H and g the Hessian and gradient of the BPR loss (arXiv:1205.2618) with respect to the
    quantized rows of a mini-batch in units of the step (x_hat / s), N their number of entries,
    Tr(H) from Hutchinson's estimator (:func:`~hqgnn.models.hutchinson.hutchinson_trace`), both
    averaged over ``hutchinson_batches`` mini-batches. ``delta_scale`` = 1 is the formula, 0
    equals :class:`STEModel` (an ablation knob; a negative value reverses the correction).

    Args (besides :class:`QuantizedModel`'s): ``delta_every`` (epochs between estimates),
    ``delta_warmup`` (epochs with delta = 0 first), ``delta_scale``, ``hutchinson_probes``
    (most probes per estimate), ``hutchinson_tol`` (relative change of the running mean that
    stops the probes), ``hutchinson_batches``.
    """

    uses_hessian = True

    def __init__(self, encoder: LightGCN, bits: int, scale_mode: str = "calibrated", window: float = 1.0,
                 fp_loss_weight: float = 0.0, negative_sampling: str = "uniform", delta_every: int = 10,
                 delta_warmup: int = 0, delta_scale: float = 1.0, hutchinson_probes: int = 50,
                 hutchinson_tol: float = 1e-3, hutchinson_batches: int = 3, sign_loss_weight: float = 0.0):
        super().__init__(encoder, bits, scale_mode, True, window, fp_loss_weight, negative_sampling,
                         sign_loss_weight=sign_loss_weight)
        self.delta_every, self.delta_warmup, self.delta_scale = int(delta_every), int(delta_warmup), float(delta_scale)
        self.hutchinson_probes, self.hutchinson_tol = int(hutchinson_probes), float(hutchinson_tol)
        self.hutchinson_batches = int(hutchinson_batches)

    def on_epoch_start(self, epoch: int, context) -> dict:
        if epoch >= self.delta_warmup and (epoch - self.delta_warmup) % self.delta_every == 0:
            return self.update_deltas(context)
        return {}

    @torch.no_grad()
    def _quantized_tables(self, adj):
        u, i = self.encoder(adj)
        return self.user_quantizer(u), self.item_quantizer(i)

    def update_deltas(self, context) -> dict:
        """Set delta = (Tr(H)/N) / (3 std(g)) (times ``delta_scale``; the formula clipped at 0)
        on both quantizers; returns the log entry (``delta_user``, ``trace_per_entry_user``,
        ``grad_std_user``, the same for items, ``hutchinson_probes``, ``hessian_seconds``).

        ``context``: :class:`hqgnn.training.TrainContext` (its graph ``adj``, a generator
        ``epoch_rng`` that seeds the probes, and ``sample_batches(n)``, the mini-batches)."""
        t0 = time.perf_counter()
        was = self.training
        self.train(False)
        uq, iq = self._quantized_tables(context.adj)
        self.train(was)
        gen = torch.Generator().manual_seed(int(context.epoch_rng.integers(2**62)))
        stats = self.delta_statistics(uq, iq, context.sample_batches(self.hutchinson_batches), gen)
        return self.apply_delta_statistics(stats, t0)

    def delta_statistics(self, uq, iq, batches, gen) -> dict:
        """Sums over ``batches`` of (users, pos, neg) rows of the quantized tables ``uq``, ``iq``
        (at the quantizers' current steps): ``{"user": [sum Tr(H)/N, sum std(g), batches], "item":
        [...], "probes": n}``; summable over batches and ranks (:mod:`hqgnn.distributed` all-reduces them)."""
        su, si = self.user_quantizer.step, self.item_quantizer.step
        stats = {"user": [0.0, 0.0, 0], "item": [0.0, 0.0, 0], "probes": 0}
        probes = 0
        for users, pos, neg in batches:
            uniq_u, inv_u = torch.unique(users, return_inverse=True)
            items = torch.cat([pos, neg])
            uniq_i, inv_i = torch.unique(items, return_inverse=True)
            inv_p, inv_n = inv_i[: len(pos)], inv_i[len(pos) :]
            u_rows, p_rows, n_rows = uq[users], iq[pos], iq[neg]

            def user_loss(y):  # y: normalised quantized user rows
                return bpr_loss((y * su)[inv_u], p_rows, n_rows)

            def item_loss(y):
                rows = y * si
                return bpr_loss(u_rows, rows[inv_p], rows[inv_n])

            for name, fn, x in (("user", user_loss, uq[uniq_u] / su), ("item", item_loss, iq[uniq_i] / si)):
                est = hutchinson_trace(fn, x, self.hutchinson_probes, self.hutchinson_tol, generator=gen)
                probes += est.probes
                stats[name][0] += est.trace / x.numel()
                stats[name][1] += float(est.grad.std())
                stats[name][2] += 1
        stats["probes"] = probes
        return stats

    def apply_delta_statistics(self, stats: dict, t0: float) -> dict:
        """Set delta on both quantizers from :meth:`delta_statistics`' sums; returns the log entry."""
        probes = stats["probes"]
        log = {}
        for name, quantizer in (("user", self.user_quantizer), ("item", self.item_quantizer)):
            tr, sd, n = stats[name]
            tr, sd = tr / max(n, 1), sd / max(n, 1)
            formula = max(tr / (3.0 * sd), 0.0) if sd > 0 else 0.0
            delta = formula * self.delta_scale
            quantizer.delta.fill_(delta)
            log[f"delta_{name}"] = delta
            if self.delta_scale != 1.0:
                log[f"delta_formula_{name}"] = formula
            log[f"trace_per_entry_{name}"] = tr
            log[f"grad_std_{name}"] = sd
        log["hutchinson_probes"] = probes
        log["hessian_seconds"] = round(time.perf_counter() - t0, 4)
        return log


class HashGNNModel(QuantizedModel):
    """``hashgnn``: HashGNN's sign codes (Tan et al., *Learning to Hash with Graph Neural Networks
    for Recommender Systems*, WWW 2020, https://arxiv.org/abs/2003.01917).

    1-bit Q_b with the identity straight-through gradient through tanh (no clipping). With
    ``soft``, each entry keeps its continuous value during training with probability
    ``soft_p0 * soft_decay ** epoch`` (HashGNN-soft); ranking always uses the hard codes.
    """

    def __init__(self, encoder: LightGCN, scale_mode: str = "calibrated", window: float = 1.0,
                 fp_loss_weight: float = 0.0, negative_sampling: str = "uniform", soft: bool = False,
                 soft_p0: float = 1.0, soft_decay: float = 0.9):
        super().__init__(encoder, 1, scale_mode, False, window, fp_loss_weight, negative_sampling)
        self.soft, self.soft_p0, self.soft_decay = bool(soft), float(soft_p0), float(soft_decay)

    def on_epoch_start(self, epoch: int, context) -> dict:
        if not self.soft:
            return {}
        self.soft_probability = self.soft_p0 * self.soft_decay**epoch
        return {"soft_probability": self.soft_probability}


class PTQModel(QuantizedModel):
    """``ptq``: post-training quantization: calibrated Q_b of the frozen final embeddings of a
    trained LightGCN run (no training; docs/method.md, 'Baselines').

    ``seed`` draws the buffer ``hyperplanes`` (``dim x dim``), which :class:`LSHModel` projects
    on; PTQ keeps it unused so that both keep the version-1 layout of ``model.pt``."""

    def __init__(self, encoder: LightGCN, bits: int, seed: int = 0, negative_sampling: str = "uniform"):
        super().__init__(encoder, bits, "calibrated", True, 1.0, 0.0, negative_sampling)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("hyperplanes", torch.randn(encoder.dim, encoder.dim, generator=generator))
        self.encoder.embedding.requires_grad_(False)

    def scoring_embeddings(self, adj):
        u, i = self.encoder(adj)
        return self.quantize(*self._pre_quantize(u, i))


class LSHModel(PTQModel):
    """``lsh``: sign codes of the frozen final embeddings of a trained LightGCN run projected on
    ``dim`` random hyperplanes drawn from ``seed`` (codes as long as the embeddings; no training)."""

    def __init__(self, encoder: LightGCN, seed: int = 0, negative_sampling: str = "uniform"):
        super().__init__(encoder, 1, seed, negative_sampling)

    def _pre_quantize(self, u, i):
        return u @ self.hyperplanes, i @ self.hyperplanes


def quantized_size(bits: int, dim: int, n_users: int, n_items: int) -> dict:
    """Bytes of the deployed codes (packed bits, rows padded to whole bytes) vs float32."""
    row = math.ceil(bits * dim / 8)
    total = row * (n_users + n_items) + 8  # plus two float32 scales
    fp = 4 * dim * (n_users + n_items)
    return {
        "bits": bits,
        "dim": dim,
        "bytes_per_user": row,
        "bytes_per_item": row,
        "total_bytes": total,
        "float32_bytes": fp,
        "compression_ratio": fp / total,
    }
