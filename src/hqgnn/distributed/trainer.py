"""The distributed trainer: E^0 sharded by TorchRec, mini-batches on their L-hop subgraphs, BPR.

One process per rank (torchrun). Every rank builds the same model (:func:`hqgnn.models.initial_model`:
the encoder's seeded E^0 or a ``from_run`` start, its quantizers, its GSTE), copies its rows of E^0
into its shard of the TorchRec table (:mod:`.plan`) and drops its dense copy. Then, per epoch:

* the epoch's triples are the single-process trainer's (``default_rng([seed, epoch])``, the same
  :class:`~hqgnn.sampling.TripleSampler`), cut into the same global batches of ``batch_size``;
  rank r takes the r-th of ``world_size`` equal slices of each;
* a rank's targets (its users, positives, negatives) and their L-hop neighbourhood
  (:mod:`.subgraph`, fan-out ``fanout``, GLOBAL degrees) give the rows of E^0 it looks up in the
  sharded table (TorchRec's all-to-all), propagated to the targets' final embeddings;
* the quantizer's calibrated step comes from the statistics of the global batch's rows (sums
  all-reduced over ranks), so a batch quantizes alike at every world size; the single-process
  trainer calibrates on the whole table, which no rank holds (docs/distributed.md says what it costs);
* the loss is the single-process BPR (:func:`~hqgnn.models.base.gathered_bpr_loss`, with
  :func:`~hqgnn.models.base.choose_negatives`) plus the L2 penalty, each scaled by the rank's share
  of the global batch, so that the gradients TorchRec sums into the table rows are those of the
  global batch: world size 1 and 2 take the same step (tested);
* the optimizer is fused into the table's backward (only touched rows update);
* HQ-GNN's delta: each rank estimates the Hessian-trace statistics on its slices of the
  mini-batches (:meth:`~hqgnn.models.quantized.HQGNNModel.delta_statistics`), the sums are
  all-reduced, and every rank sets the same delta.

Evaluation, ``model.pt`` and ``metrics.json``: rank 0 gathers E^0 (``ShardedTensor.gather``) and runs
the ordinary full-neighbour, layer-by-layer propagation and evaluation, so the run folder is an
ordinary one (``hqgnn evaluate / export / recommend / serve`` need no change).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import Config
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..evaluation import evaluate_model, monitor_split
from ..models import build_graph
from ..models.base import choose_negatives, gathered_bpr_loss
from ..models.quantizer import GSTEQuantize
from ..runs import RunFolder
from ..sampling import TripleSampler
from ..training import learning_rate, peak_rss_mb
from . import plan as planmod
from .subgraph import propagate_blocks, sample_blocks, shared_graph

#: the methods that train through this trainer (post-hoc lsh / ptq take a distributed run as --from)
DISTRIBUTED_MODELS = ("lightgcn", "hqgnn", "ste", "hashgnn")
PLAN_FILE = "plan.json"


def check_supported(cfg: Config) -> None:
    """Raise :class:`ConfigError` (one line) for settings the distributed trainer does not run."""
    if cfg.model not in DISTRIBUTED_MODELS:
        hint = " (post-hoc: train lightgcn distributed, then run it single-process with --from RUN)" \
            if cfg.model in ("lsh", "ptq") else ""
        raise ConfigError(f"setting model={cfg.model!r}: the distributed trainer runs {' | '.join(DISTRIBUTED_MODELS)}{hint}")
    if cfg.model != "lightgcn" and cfg.scale_mode != "calibrated":
        raise ConfigError(f"setting scale_mode={cfg.scale_mode!r}: the distributed trainer calibrates the step "
                          "from the global batch (use scale_mode calibrated)")
    if getattr(cfg, "distill_from", None):
        raise ConfigError("setting distill_from: ranking distillation is single-process only")
    from ..models import resolve_device

    device = resolve_device(cfg.device)  # device=cuda without CUDA: the single-process trainer's one line
    _, cpu_ok, _ = planmod.OPTIMIZERS[cfg.sparse_optimizer]
    if device.type == "cpu" and not cpu_ok:
        raise ConfigError(f"setting sparse_optimizer={cfg.sparse_optimizer!r}: FBGEMM has no fused "
                          f"{cfg.sparse_optimizer} on CPU (use rowwise_adagrad, adagrad or sgd, or train on CUDA)")


def _batch_stats(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[sum x, sum x^2, sum |x|, entries] over the rows of ``x`` repeated ``counts`` times (float64)."""
    c = counts.to(torch.float64).unsqueeze(1)
    x = x.detach().to(torch.float64)
    return torch.stack([(x * c).sum(), (x * x * c).sum(), (x.abs() * c).sum(), c.sum() * x.shape[1]])


def _scale_from_stats(bits: int, s: torch.Tensor) -> torch.Tensor:
    """The calibrated step of :meth:`hqgnn.models.quantizer.Quantizer.calibrated_scale`, from sums."""
    from ..models.quantizer import GAUSSIAN_CLIP_SIGMAS

    total, sq, absolute, n = (float(v) for v in s)
    n = max(n, 1.0)
    if bits == 1:
        return torch.tensor(2.0 * max(absolute / n, 1e-8), dtype=torch.float32)
    var = max((sq - total * total / n) / max(n - 1.0, 1.0), 0.0)
    std = max(math.sqrt(var), 1e-8)
    return torch.tensor(GAUSSIAN_CLIP_SIGMAS[bits] * std / 2 ** (bits - 1), dtype=torch.float32)


class DistributedTrainer:
    """BPR on the sharded E^0 (see the module docstring). Call inside an initialised process group.

    Args: ``cfg``, ``model`` (:func:`hqgnn.models.initial_model` on every rank), ``data``,
    ``out_dir`` (the run folder; rank 0 writes it), ``progress`` (a line per epoch on rank 0).
    Raises :class:`ConfigError` for unsupported settings (:func:`check_supported`)."""

    def __init__(self, cfg: Config, model, data, out_dir=None, progress: bool = True):
        import torch.distributed as dist
        from torchrec.distributed.model_parallel import DistributedModelParallel

        from torchrec.distributed.comm_ops import set_gradient_division

        check_supported(cfg)
        # each rank's loss is its share of the global batch's mean, so the row gradients TorchRec
        # sums over ranks are the global batch's; its default divides them by the world size
        # (DDP's averaging), which would shrink every step by 1 / world_size (measured: tests)
        set_gradient_division(False)
        self.cfg, self.model, self.data = cfg, model, data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = torch.device(f"cuda:{self.local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        enc = model.encoder
        self.n_users, self.n_items, self.dim = enc.n_users, enc.n_items, enc.dim
        self.fanout = list(cfg.fanout) if cfg.fanout is not None else [-1] * enc.layers
        folder = self.out_dir / "graph" if self.out_dir is not None else None
        self.graph = shared_graph(data.train, folder, self.local_rank, barrier=dist.barrier)
        module = planmod.table_module(self.n_users + self.n_items, self.dim)
        sharder = planmod.sharder(cfg.sparse_optimizer, cfg.lr, self.device)
        self.plan = planmod.make_plan(module, [sharder], self.world_size, self.device)
        self.dmp = DistributedModelParallel(module, device=self.device, plan=self.plan, sharders=[sharder])
        planmod.load_rows(self.dmp, enc.embedding.detach())
        enc.embedding.requires_grad_(False)
        enc.embedding.data = torch.empty(0, self.dim)  # the rank's dense copy goes: its shard is the weight
        self.model.to(self.device)
        self.sampler = TripleSampler(data.train)
        self.monitor_split = monitor_split(cfg.eval_split, data)
        self.epoch, self.history = 0, []
        self.best_value, self.best_epoch, self.best_state, self.bad_evals = -math.inf, -1, None, 0
        self.train_seconds, self.stopped_early = 0.0, False
        self.epoch_seconds: list[float] = []
        self._adj = None

    # ------------------------------------------------------------ one step
    def _global_scale(self, quantizer, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        s = _batch_stats(x, counts)
        dist.all_reduce(s)
        scale = _scale_from_stats(quantizer.bits, s).to(x.device)
        with torch.no_grad():
            quantizer.scale.copy_(scale)
            quantizer.initialized.fill_(True)
        return scale

    def _quantize(self, quantizer, x, counts, ids):
        """Q_b of the local rows ``x`` (global node ids ``ids``, sorted) with the global batch's step.

        The GSTE's correction takes sign(g) (docs/method.md, 'GSTE'), which is not linear in g: a
        row that several ranks hold gets the sign of the sum of their gradients, as one process
        would see it (:meth:`_sum_over_ranks`), so that world sizes agree for delta != 0 too."""
        scale = self._global_scale(quantizer, x, counts)
        delta = float(quantizer.delta)
        source = (lambda g: self._sum_over_ranks(ids, g)) if delta != 0.0 and self.world_size > 1 else None
        return GSTEQuantize.apply(x, scale, quantizer.bits, delta, quantizer.clip_gradient, 1.0, quantizer.window, source)

    def _sum_over_ranks(self, ids: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """For each local row (sorted global ``ids``), the sum of ``g`` over every rank holding that row."""
        import torch.distributed as dist

        n = torch.tensor([len(ids)], device=g.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        m = int(max(int(s) for s in sizes))
        pad_ids = torch.full((m,), -1, dtype=torch.int64, device=g.device)
        pad_ids[: len(ids)] = ids
        pad_g = torch.zeros(m, g.shape[1], dtype=g.dtype, device=g.device)
        pad_g[: len(ids)] = g
        all_ids = [torch.empty_like(pad_ids) for _ in range(self.world_size)]
        all_g = [torch.empty_like(pad_g) for _ in range(self.world_size)]
        dist.all_gather(all_ids, pad_ids)
        dist.all_gather(all_g, pad_g)
        all_ids, all_g = torch.cat(all_ids), torch.cat(all_g)
        if len(ids) == 0:
            return g
        pos = torch.searchsorted(ids, all_ids).clamp_max(len(ids) - 1)
        match = (all_ids >= 0) & (ids[pos] == all_ids)
        return torch.zeros_like(g).index_add_(0, pos[match], all_g[match])

    def _forward(self, users: np.ndarray, pos: np.ndarray, neg: np.ndarray, rng):
        """Final (users, items) embeddings of the local targets, E^0 of the targets, and the local ids."""
        u_uniq, u_inv = np.unique(users, return_inverse=True)
        items = np.concatenate([pos, neg.reshape(-1)])
        i_uniq, i_inv = np.unique(items, return_inverse=True)
        targets = np.concatenate([u_uniq, i_uniq + self.n_users])
        if targets.size == 0:  # an empty slice (a last batch smaller than the world): look up one row, add 0
            targets = np.zeros(1, dtype=np.int64)
        blocks = sample_blocks(self.graph, targets, self.fanout, rng)
        x0 = self.dmp(torch.from_numpy(blocks.nodes).to(self.device))
        final = propagate_blocks(x0, blocks, self.model.encoder.layer_weights)
        nu = len(u_uniq)
        dev = self.device
        lu = torch.from_numpy(u_inv.reshape(-1)).to(dev)
        lp = torch.from_numpy(i_inv[: len(pos)]).to(dev)
        ln = torch.from_numpy(i_inv[len(pos):].reshape(neg.shape)).to(dev)
        self._ids = (torch.from_numpy(u_uniq).to(dev), torch.from_numpy(i_uniq + self.n_users).to(dev))
        return final[:nu], final[nu: nu + len(i_uniq)], x0, nu, (lu, lp, ln)

    def _tables(self, u, i, lu, lp, ln):
        """The scoring tables of the local rows: Q_b with the global batch's step, or the floats."""
        m = self.model
        if not getattr(m, "quantized", False):
            return u, i
        cu = torch.bincount(lu, minlength=len(u))
        ci = torch.bincount(torch.cat([lp, ln.reshape(-1)]), minlength=len(i))
        uq, iq = self._quantize(m.user_quantizer, u, cu, self._ids[0]), self._quantize(m.item_quantizer, i, ci, self._ids[1])
        if m.training and m.soft_probability > 0:  # HashGNN-soft
            uq = torch.where(torch.rand(u.shape, device=u.device) < m.soft_probability, u, uq)
            iq = torch.where(torch.rand(i.shape, device=i.device) < m.soft_probability, i, iq)
        return uq, iq

    def batch_loss(self, users, pos, neg, n_global: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's share of the global batch's BPR loss, its share of loss + L2 penalty)."""
        m, cfg = self.model, self.cfg
        u, i, x0, nu, (lu, lp, ln) = self._forward(users, pos, neg, rng)
        uq, iq = self._tables(u, i, lu, lp, ln)
        share = len(users) / max(n_global, 1)
        if len(users) == 0:  # keep every node of the graph (the GSTE's exchange runs in backward on all ranks)
            zero = x0.sum() * 0.0 + uq.sum() * 0.0 + iq.sum() * 0.0
            return zero, zero
        tu, tp, tn = choose_negatives(uq, iq, lu, lp, ln, m.negative_sampling)
        loss = gathered_bpr_loss(uq, iq, tu, tp, tn)
        if getattr(m, "fp_loss_weight", 0) > 0:
            loss = loss + m.fp_loss_weight * gathered_bpr_loss(u, i, tu, tp, tn)
        if getattr(m, "sign_loss_weight", 0) > 0:
            cu = torch.bincount(lu, minlength=len(u))
            ci = torch.bincount(torch.cat([lp, ln.reshape(-1)]), minlength=len(i))
            us = self._quantize(m.user_sign_quantizer, u, cu, self._ids[0])
            is_ = self._quantize(m.item_sign_quantizer, i, ci, self._ids[1])
            loss = loss + m.sign_loss_weight * gathered_bpr_loss(us, is_, tu, tp, tn)
        # LightGCN's L2 penalty (LightGCN.l2_penalty) on the E^0 rows of the triples, over the global batch
        repeat = tn.shape[1] if tn.dim() == 2 else 1
        e_u, e_i = x0[:nu], x0[nu: nu + len(i)]
        reg = 0.5 * (repeat * (e_u[tu].square().sum() + e_i[tp].square().sum()) + e_i[tn.reshape(-1)].square().sum())
        reg = reg / (n_global * repeat)
        loss = loss * share
        return loss, loss + cfg.weight_decay * reg

    # ------------------------------------------------------------ schedules
    def _set_learning_rate(self, epoch: int) -> float:
        lr = learning_rate(self.cfg, epoch)  # the single-process trainer's schedule
        for group in self.dmp.fused_optimizer.param_groups:
            group["lr"] = lr
        self.dmp.fused_optimizer.step()  # a fused optimizer's step only passes the lr on to the kernels
        return lr

    def _local(self, arrays, start: int, stop: int):
        """This rank's slice of the global batch [start, stop)."""
        bounds = np.linspace(start, stop, self.world_size + 1).round().astype(np.int64)
        sl = slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))
        return tuple(a[sl] for a in arrays)

    def _epoch_start(self, epoch: int) -> dict:
        m, cfg = self.model, self.cfg
        if getattr(m, "uses_hessian", False):
            if epoch >= m.delta_warmup and (epoch - m.delta_warmup) % m.delta_every == 0:
                return self.update_deltas(epoch)
            return {}
        return m.on_epoch_start(epoch, None)

    def update_deltas(self, epoch: int) -> dict:
        """HQ-GNN's delta from Hutchinson statistics estimated per rank and summed by an all-reduce."""
        import torch.distributed as dist

        m, cfg = self.model, self.cfg
        t0 = time.perf_counter()
        ctx_rng = np.random.default_rng([cfg.seed, epoch, 1])
        u, p, n = self.sampler.epoch(ctx_rng)
        gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, epoch, 3, self.rank]).integers(2**62)))
        total = {"user": [0.0, 0.0, 0], "item": [0.0, 0.0, 0], "probes": 0}
        bs = cfg.batch_size
        for b in range(min(m.hutchinson_batches, max(1, math.ceil(len(u) / bs)))):
            lu_, lp_, ln_ = self._local((u, p, n), b * bs, min((b + 1) * bs, len(u)))
            rng = np.random.default_rng([cfg.seed, epoch, 4, b, self.rank])
            was = m.training
            m.train(False)
            with torch.no_grad():
                uf, i_f, _, _, (lu, lp, ln) = self._forward(lu_, lp_, ln_, rng)
                uq, iq = self._tables(uf, i_f, lu, lp, ln)
            m.train(was)
            if len(lu_):
                s = m.delta_statistics(uq, iq, [(lu, lp, ln)], gen)
                for key in ("user", "item"):
                    total[key] = [a + b_ for a, b_ in zip(total[key], s[key])]
                total["probes"] += s["probes"]
        vec = torch.tensor(total["user"] + total["item"] + [total["probes"]], dtype=torch.float64, device=self.device)
        dist.all_reduce(vec)  # NCCL reduces tensors on the GPU only
        v = vec.tolist()
        stats = {"user": [v[0], v[1], int(v[2])], "item": [v[3], v[4], int(v[5])], "probes": int(v[6])}
        return m.apply_delta_statistics(stats, t0)

    # ------------------------------------------------------------ the loop
    def train_epoch(self, epoch: int) -> float:
        """One epoch of global batches; returns the mean BPR loss (the same on every rank)."""
        import torch.distributed as dist

        cfg = self.cfg
        users, pos, neg = self.sampler.epoch(np.random.default_rng([cfg.seed, epoch]), cfg.negatives,
                                             cfg.positive_sampling)
        torch.manual_seed(cfg.seed * 100003 + epoch * 1009 + self.rank)
        self.model.train()
        loss_sum, n_batches = 0.0, 0
        for b, start in enumerate(range(0, len(users), cfg.batch_size)):
            stop = min(start + cfg.batch_size, len(users))
            lu, lp, ln = self._local((users, pos, neg), start, stop)
            rng = np.random.default_rng([cfg.seed, epoch, 2, b, self.rank])
            loss, total = self.batch_loss(lu, lp, ln, stop - start, rng)
            values = torch.stack([loss.detach(), total.detach()]).to(torch.float64)
            dist.all_reduce(values)
            loss_value, total_value = values.tolist()
            if not math.isfinite(total_value):
                raise TrainingDiverged(f"epoch {epoch + 1} (batch {b + 1}): the loss is {total_value}; training "
                                       f"diverged. Usual causes: a learning rate too high (lr={cfg.lr:g}); lower lr")
            total.backward()  # the fused optimizer updates the touched rows here
            loss_sum += loss_value
            n_batches += 1
        return loss_sum / max(n_batches, 1)

    def gather_model(self):
        """Rank 0: the dense model with the gathered E^0 (None on other ranks)."""
        full = planmod.gather_table(self.dmp, self.n_users + self.n_items, self.dim)
        if full is None:
            return None
        self.model.encoder.embedding.data = full.to(self.device)
        return self.model

    def evaluate(self, split: str) -> Optional[dict]:
        """Rank 0: full-ranking metrics of the gathered weights (full-neighbour propagation)."""
        model = self.gather_model()
        if model is None:
            return None
        if self._adj is None:
            self._adj = build_graph(model, self.data.train, self.device)
        res = evaluate_model(model, self._adj, self.data, split, ks=self.cfg.ks, batch_size=self.cfg.eval_batch_size)
        model.encoder.embedding.data = torch.empty(0, self.dim)
        return res

    def fit(self, checkpoint=None) -> Optional[dict]:
        """Train to ``epochs`` (or early stopping / ``max_train_seconds``); rank 0 returns metrics.json.

        ``checkpoint``: a :class:`hqgnn.distributed.checkpoint.Checkpointer` saving at each evaluation."""
        import torch.distributed as dist

        cfg = self.cfg
        if self.rank == 0 and self.out_dir is not None:
            RunFolder(self.out_dir).write_config(cfg)
            (self.out_dir / PLAN_FILE).write_text(_json(self.plan_record()))
        metric = cfg.early_stop_metric
        while self.epoch < cfg.epochs and not self.stopped_early and not (
                cfg.max_train_seconds is not None and self.train_seconds >= cfg.max_train_seconds):
            t0 = time.perf_counter()
            epoch = self.epoch
            self._set_learning_rate(epoch)
            hook = self._epoch_start(epoch)
            if hook:
                self.history.append({"epoch": epoch, "event": "epoch_start", **hook})
            loss = self.train_epoch(epoch)
            self.epoch += 1
            seconds = time.perf_counter() - t0
            self.epoch_seconds.append(seconds)
            self.train_seconds += seconds
            entry = {"epoch": self.epoch, "loss": loss, "train_seconds": round(self.train_seconds, 3)}
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                res = self.evaluate(self.monitor_split)
                flag = [None]
                if res is not None:
                    entry.update({"split": self.monitor_split, **{k: v for k, v in res.items() if k != "users"}})
                    value = res[metric]
                    if value > self.best_value:
                        self.best_value, self.best_epoch, self.bad_evals = value, self.epoch, 0
                    else:
                        self.bad_evals += 1
                        if cfg.patience and self.bad_evals >= cfg.patience:
                            self.stopped_early = True
                    flag = [(self.best_value, self.best_epoch, self.bad_evals, self.stopped_early)]
                dist.broadcast_object_list(flag, src=0)
                self.best_value, self.best_epoch, self.bad_evals, self.stopped_early = flag[0]
                if self.best_epoch == self.epoch and self.monitor_split == "valid":
                    best = self.gather_model()
                    if best is not None:
                        self.best_state = {k: v.detach().clone() for k, v in best.state_dict().items()}
                        best.encoder.embedding.data = torch.empty(0, self.dim)
                self.history.append(entry)
                if checkpoint is not None:
                    checkpoint.save(self)
            else:
                self.history.append(entry)
            if self.progress and self.rank == 0:
                print(f"epoch {self.epoch}/{cfg.epochs} loss {loss:.4f} {seconds:.2f}s"
                      + (f" {metric} {entry[metric]:.4f}" if metric in entry else ""), file=sys.stderr, flush=True)
        return self.finish(checkpoint)

    def plan_record(self) -> dict:
        """What ``plan.json`` holds: the world, the backend, the optimizer and the plan per table."""
        import torch.distributed as dist

        return {"world_size": self.world_size, "backend": dist.get_backend(), "sparse_optimizer": self.cfg.sparse_optimizer,
                "fanout": self.fanout, "tables": planmod.plan_summary(self.plan)}

    def memory_record(self) -> dict:
        """Per rank: bytes of the table shard and of the optimizer state, peak RSS (MiB)."""
        import torch.distributed as dist

        mine = {**planmod.state_bytes(self.dmp), "peak_rss_mb": round(peak_rss_mb(), 1)}
        if self.device.type == "cuda":
            mine["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        return {k: [r[k] for r in everyone] for k in mine}

    def finish(self, checkpoint=None) -> Optional[dict]:
        """Rank 0 writes model.pt, metrics.json, data.json, history.jsonl; returns the metrics (None elsewhere)."""
        cfg = self.cfg
        if checkpoint is not None:
            checkpoint.save(self)
        memory = self.memory_record()
        model = self.gather_model()
        if model is None:
            return None
        selected_by = "last epoch"
        if self.best_state is not None and self.monitor_split == "valid":
            model.load_state_dict(self.best_state)
            selected_by = f"best {cfg.early_stop_metric} on the validation split (epoch {self.best_epoch})"
        elif self.monitor_split == "test":
            selected_by = "last epoch (no validation split; test was only monitored)"
        if self._adj is None:
            self._adj = build_graph(model, self.data.train, self.device)
        t0 = time.perf_counter()
        test = evaluate_model(model, self._adj, self.data, "test", ks=cfg.ks, batch_size=cfg.eval_batch_size)
        metrics = {k: v for k, v in test.items() if k != "users"}
        metrics.update({
            "split": "test", "test_users": test["users"], "model": cfg.model, "epochs": self.epoch,
            "train_seconds": round(self.train_seconds, 3), "test_eval_seconds": round(time.perf_counter() - t0, 3),
            "seconds_per_epoch": round(float(np.mean(self.epoch_seconds)), 3) if self.epoch_seconds else None,
            "selected_by": selected_by, "stopped_early": self.stopped_early, "peak_rss_mb": round(peak_rss_mb(), 1),
            "device": str(self.device), "world_size": self.world_size, "trainer": "distributed",
            "sparse_optimizer": cfg.sparse_optimizer, "fanout": self.fanout,
            "sharding": {t: p["sharding_type"] for t, p in planmod.plan_summary(self.plan).items()},
            "memory_per_rank": memory, **model.describe(),
        })
        if self.out_dir is not None:
            run = RunFolder(self.out_dir)
            run.write_model(cfg.to_dict(), {k: v.cpu() for k, v in model.state_dict().items()}, self.data)
            run.write_metrics(metrics)
            run.write_data(self.data)
            run.write_history(self.history)
        return metrics


def _json(obj) -> str:
    import json

    return json.dumps(obj, indent=2)


__all__ = ["DistributedTrainer", "check_supported", "DISTRIBUTED_MODELS", "CheckpointError", "PLAN_FILE"]
