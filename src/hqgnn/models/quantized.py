"""Recommenders whose scores come from quantized final embeddings.

* ``hqgnn``   LightGCN + Q_b trained with the GSTE, delta from Hutchinson's trace (METHOD.md 4).
* ``ste``     the same quantizer with delta = 0 (the GSTE ablation).
* ``hashgnn`` HashGNN (Tan et al., WWW 2020): sign codes trained with the identity
  STE; ``hashgnn_soft`` mixes continuous values in during training (Bernoulli,
  probability decaying per epoch); ranking is always on the hard codes.
* ``ptq``     post-training quantization of a trained LightGCN run (no training).
* ``lsh``     random-hyperplane sign codes of a trained LightGCN run (no training).

All share the LightGCN encoder, the BPR trainer and the quantizer of
``quantizer.py``: only how gradients cross the rounding differs. Given ``from_run`` (a trained
full-precision run), the trainer starts them from its E0 (``hqgnn.training.load_full_precision_run``).
BiGeaR's layer-wise codes are in ``bigear.py``.
"""

from __future__ import annotations

import math
import time

import torch

from ..config import Config
from .base import ScoringModel, bpr_loss, choose_negatives, gathered_bpr_loss
from .encoder import LightGCN
from .hutchinson import hutchinson_trace
from .quantizer import Quantizer


class QuantizedModel(ScoringModel):
    quantized = True

    def __init__(self, encoder: LightGCN, cfg: Config, bits: int, clip_gradient: bool = True):
        super().__init__(encoder, cfg.negative_sampling)
        self.cfg = cfg
        self.bits = bits
        self.user_quantizer = Quantizer(bits, cfg.scale_mode, clip_gradient, cfg.ste_window)
        self.item_quantizer = Quantizer(bits, cfg.scale_mode, clip_gradient, cfg.ste_window)
        self.uses_hessian = cfg.model == "hqgnn" and cfg.estimator == "gste"
        self.soft_probability = 0.0

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
        if self.cfg.fp_loss_weight > 0:
            loss = loss + self.cfg.fp_loss_weight * gathered_bpr_loss(u, i, users, pos, neg)
        return loss, {"triples": (users, pos, neg)}

    # ------------------------------------------------------------ schedules
    def on_epoch_start(self, epoch: int, context) -> dict:
        log = {}
        if self.cfg.model == "hashgnn" and self.cfg.hashgnn_soft:
            self.soft_probability = self.cfg.hashgnn_soft_p0 * self.cfg.hashgnn_soft_decay**epoch
            log["soft_probability"] = self.soft_probability
        if self.uses_hessian:
            warm = self.cfg.delta_warmup
            if epoch >= warm and (epoch - warm) % self.cfg.delta_every == 0:
                log.update(self.update_deltas(context))
        return log

    @torch.no_grad()
    def _quantized_tables(self, adj):
        u, i = self.encoder(adj)
        return self.user_quantizer(u), self.item_quantizer(i)

    def update_deltas(self, context) -> dict:
        """delta = (Tr(H)/N) / (3 std(g)) per quantizer, H and g taken w.r.t. the
        quantized embeddings in units of the step (x_hat / s), over the rows of
        a few mini-batches (the entries the loss depends on); clipped at 0."""
        t0 = time.perf_counter()
        cfg = self.cfg
        was = self.training
        self.train(False)
        uq, iq = self._quantized_tables(context.adj)
        self.train(was)
        su, si = self.user_quantizer.step, self.item_quantizer.step
        gen = torch.Generator().manual_seed(int(context.epoch_rng.integers(2**62)))
        stats = {"user": [0.0, 0.0, 0], "item": [0.0, 0.0, 0]}
        probes = 0
        for users, pos, neg in context.sample_batches(cfg.hutchinson_batches):
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
                est = hutchinson_trace(fn, x, cfg.hutchinson_probes, cfg.hutchinson_tol, generator=gen)
                probes += est.probes
                stats[name][0] += est.trace / x.numel()
                stats[name][1] += float(est.grad.std())
                stats[name][2] += 1
        log = {}
        for name, quantizer in (("user", self.user_quantizer), ("item", self.item_quantizer)):
            tr, sd, n = stats[name]
            tr, sd = tr / max(n, 1), sd / max(n, 1)
            formula = max(tr / (3.0 * sd), 0.0) if sd > 0 else 0.0
            delta = formula * cfg.delta_scale
            quantizer.delta.fill_(delta)
            log[f"delta_{name}"] = delta
            if cfg.delta_scale != 1.0:
                log[f"delta_formula_{name}"] = formula
            log[f"trace_per_entry_{name}"] = tr
            log[f"grad_std_{name}"] = sd
        log["hutchinson_probes"] = probes
        log["hessian_seconds"] = round(time.perf_counter() - t0, 4)
        return log

    # ------------------------------------------------------------ export
    @torch.no_grad()
    def export_codes(self, adj) -> dict:
        """Unsigned codes c in [0, 2^b - 1] (uint8) and the scales: exactly the training-time Q_b."""
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


class PostHocModel(QuantizedModel):
    """PTQ / LSH on the frozen final embeddings of a trained LightGCN run."""

    def __init__(self, encoder: LightGCN, cfg: Config):
        bits = 1 if cfg.model == "lsh" else cfg.bits
        post_cfg = Config(**{**cfg.to_dict(), "scale_mode": "calibrated"})
        super().__init__(encoder, post_cfg, bits)
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        # LSH: d random hyperplanes (codes of the same length as the embeddings)
        self.register_buffer("hyperplanes", torch.randn(encoder.dim, encoder.dim, generator=generator))
        self.encoder.embedding.requires_grad_(False)

    def _pre_quantize(self, u, i):
        if self.cfg.model == "lsh":
            return u @ self.hyperplanes, i @ self.hyperplanes
        return u, i

    def scoring_embeddings(self, adj):
        u, i = self.encoder(adj)
        return self.quantize(*self._pre_quantize(u, i))

    def on_epoch_start(self, epoch, context) -> dict:
        return {}


def build_quantized_model(cfg: Config, encoder: LightGCN) -> ScoringModel:
    if cfg.model in ("hqgnn", "ste"):
        model = QuantizedModel(encoder, cfg, cfg.bits)
        if cfg.model == "ste":
            model.uses_hessian = False
        return model
    if cfg.model == "hashgnn":
        return QuantizedModel(encoder, cfg, 1, clip_gradient=False)
    if cfg.model in ("ptq", "lsh"):
        return PostHocModel(encoder, cfg)
    raise ValueError(f"model {cfg.model!r} is not available")

