"""The BPR training loop: evaluation, early stopping, atomic checkpoints and exact resume.

:class:`Trainer` only trains. The model comes built (:func:`hqgnn.models.build_model`, or
:func:`hqgnn.models.initial_model` with its pre-trained start); the run folder's files and
formats are :mod:`hqgnn.runs`'s; what is evaluated, and with which items masked, is
:mod:`hqgnn.evaluation`'s (docs/method.md, 'Training' and 'Protocol').

Every epoch draws its samples from ``numpy.random.default_rng([seed, epoch])``,
so a resumed run continues exactly as an uninterrupted one would.

Divergence: a non-finite batch loss, GSTE delta estimate, weight (or Adam state) after an
epoch, or ranking score stops training with :class:`~hqgnn.errors.TrainingDiverged` (one
line: the epoch, what went non-finite, the usual causes, the last finite checkpoint). No
checkpoint, ``model.pt`` or ``metrics.json`` holding non-finite values is ever written, and
:func:`~hqgnn.runs.load_checkpoint` refuses one (:class:`~hqgnn.errors.CheckpointError`).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config
from .data import InteractionData
from .errors import CheckpointError, ConfigError, NonFiniteScores, TrainingDiverged
from .evaluation import check_cutoffs, evaluate_model, excluded_for, monitor_split
from .finite import first_nonfinite, named_tensors, ranking_problem
from .models import build_graph, load_full_precision_run, resolve_device, use_threads
from .models.base import ScoringModel
from .models.distill import attach_distillation
from .runs import CHECKPOINT, CHECKPOINT_VERSION, RunFolder, check_finite_state, data_summary, load_checkpoint
from .runs import nonfinite_weights
from .sampling import TripleSampler

# names that lived here before the run folder, the evaluation protocol and the builder had
# their own modules; still importable from hqgnn.training
__all__ = ["Trainer", "TrainContext", "learning_rate", "peak_rss_mb", "CHECKPOINT_VERSION", "load_checkpoint", "check_finite_state",
           "data_summary", "excluded_for", "split_for_monitoring", "named_tensors", "first_nonfinite",
           "ranking_problem", "resolve_device", "load_full_precision_run"]


def split_for_monitoring(cfg: Config, data: InteractionData) -> str:
    """The split a run of ``cfg`` monitors (:func:`hqgnn.evaluation.monitor_split`)."""
    return monitor_split(cfg.eval_split, data)


def learning_rate(cfg: Config, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): ``cfg.lr``, or with ``lr_schedule: cosine`` the
    cosine from ``lr`` at epoch 0 down to ``lr * lr_min_ratio`` at the last epoch. Every trainer
    (single-process and :mod:`hqgnn.distributed`) follows it."""
    lr = cfg.lr
    if cfg.lr_schedule == "cosine" and cfg.epochs > 1:
        lo = cfg.lr * cfg.lr_min_ratio
        lr = lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * epoch / (cfg.epochs - 1)))
    return lr


@dataclass
class TrainContext:
    """What per-epoch hooks (GSTE's Hessian estimate, schedules) may use: the graph ``adj``, the
    ``sampler``, the ``device``, a generator ``epoch_rng`` of their own (seeded by the seed and
    the epoch) and the ``batch_size`` of :meth:`sample_batches`."""

    adj: Optional[torch.Tensor]
    sampler: TripleSampler
    device: torch.device
    epoch_rng: np.random.Generator
    batch_size: int

    def sample_batches(self, n_batches: int):
        """A few fresh (users, pos, neg) batches on the device, for estimates outside the epoch."""
        u, p, n = self.sampler.epoch(self.epoch_rng)
        bs = self.batch_size
        for b in range(min(n_batches, max(1, math.ceil(len(u) / bs)))):
            sl = slice(b * bs, (b + 1) * bs)
            yield tuple(torch.from_numpy(a[sl]).to(self.device) for a in (u, p, n))


#: how to fix ks above the data's items (the error of :func:`hqgnn.evaluation.check_cutoffs`)
KS_HINT = "set ks, and early_stop_metric to one of them, e.g. --set ks=[5,10] early_stop_metric=recall@10"


class Trainer:
    """Trains ``model`` on ``data.train`` with BPR and Adam, as the training settings of ``cfg`` say.

    Args:
        cfg: the run's :class:`~hqgnn.config.Config`; the trainer reads its training,
            evaluation and device settings (``epochs``, ``lr``, ``batch_size``, ``eval_every``,
            ``patience``, ...), never its model settings.
        model: the model to train (:func:`hqgnn.models.initial_model`); moved to ``cfg.device``.
        data: the :class:`~hqgnn.data.InteractionData` whose sizes the model was built for.
        out_dir: the run folder (:class:`hqgnn.runs.RunFolder`) to write, or None for none.
        progress: show a progress bar.

    :meth:`fit` trains from the current epoch (0, or the checkpoint's after :meth:`resume`)
    and returns the test metrics of the reported weights (:meth:`finish`). Afterwards
    ``model`` holds those weights, ``history`` the log of every evaluation, ``epoch``,
    ``best_epoch`` and ``stopped_early`` the run's course.

    Raises:
        TypeError: ``model`` is not a model (e.g. the old ``Trainer(cfg, data, out_dir)``).
        ConfigError: the model was built for another number of users or items.
        TrainingDiverged: from :meth:`fit`, when a loss, delta, weight or score goes NaN / inf.
    """

    def __init__(self, cfg: Config, model: ScoringModel, data: InteractionData, out_dir=None, progress: bool = True):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Trainer(cfg, model, data, ...): model must be a model, got {type(model).__name__} "
                            f"(build one with hqgnn.models.initial_model(cfg, data))")
        if (model.n_users, model.n_items) != (data.n_users, data.n_items):
            raise ConfigError(f"the model is for {model.n_users} users x {model.n_items} items, the data has "
                              f"{data.n_users} x {data.n_items}")
        check_cutoffs(cfg.ks, data.n_items, hint=KS_HINT)  # metrics@K need K <= the items
        self.cfg = cfg
        self.data = data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = resolve_device(cfg.device)
        use_threads(cfg.threads)
        t0 = time.perf_counter()
        self.adj = build_graph(model, data.train, self.device)
        self.adjacency_seconds = time.perf_counter() - t0
        self.model = model.to(self.device)
        # the ranking-distillation term of a teacher run (distill_*; hqgnn.models.distill): the
        # teacher's lists are rebuilt here, deterministically, for a new and a resumed run alike
        attach_distillation(self.model, cfg.distill_from, data, cfg.distill_weight, cfg.distill_top, cfg.distill_decay)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr) if params else None
        self.sampler = TripleSampler(data.train)
        self.monitor_split = monitor_split(cfg.eval_split, data)
        self.epoch = 0
        self.history: list[dict] = []
        self.best_value = -math.inf
        self.best_epoch = -1
        self.best_state: Optional[dict] = None
        # (epoch, split, metrics, seconds) of the last evaluation: finish() reuses a test evaluation of the
        # weights it reports instead of ranking every user again (37 s on Gowalla, one thread)
        self.last_eval: Optional[tuple] = None
        self.bad_evals = 0
        self.train_seconds = 0.0
        self.stopped_early = False
        self.checkpoint_epoch: Optional[int] = None  # epoch of the checkpoint this trainer wrote or resumed

    @property
    def run(self) -> Optional[RunFolder]:
        """The run folder written, or None."""
        return RunFolder(self.out_dir) if self.out_dir is not None else None

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """The training state that ``checkpoint.pt`` holds (version :data:`~hqgnn.runs.CHECKPOINT_VERSION`)."""
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "data_fingerprint": self.data.fingerprint(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_evals": self.bad_evals,
            "train_seconds": self.train_seconds,
            "stopped_early": self.stopped_early,
        }

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` and ``history.jsonl``; raises :class:`TrainingDiverged` (writing
        nothing) when the weights, the best weights or the Adam state hold NaN or inf."""
        run = self.run
        if run is None:
            return
        state = self.state()
        problem = nonfinite_weights(state)
        if problem:
            raise self.diverged(self.epoch, None, f"refusing to save a checkpoint: {problem}")
        run.write_checkpoint(state)
        self.checkpoint_epoch = self.epoch
        run.write_history(self.history)

    def resume(self) -> None:
        """Continue from the run folder's ``checkpoint.pt``: weights, Adam state, epoch, history, best.

        Raises :class:`CheckpointError` (naming the file) when it is missing, damaged, from
        other data, or from other settings than the budgets and bookkeeping (``epochs``,
        ``max_train_seconds``, ``patience``, ``device``, ``threads``, ``eval_batch_size``, ``data``)."""
        if self.out_dir is None:
            raise CheckpointError("nothing to resume: the trainer has no run folder")
        path = self.out_dir / CHECKPOINT
        state = load_checkpoint(path)
        if state["data_fingerprint"] != self.data.fingerprint():
            raise CheckpointError(
                f"{path}: checkpoint was trained on other data (fingerprint {state['data_fingerprint']}, "
                f"this data {self.data.fingerprint()})"
            )
        mine = self.cfg.to_dict()
        try:  # the checkpoint's settings in today's spelling (a version-1 file may say model: mf)
            theirs = Config().updated(state["config"], str(path)).validate().to_dict()
        except ConfigError as exc:
            raise CheckpointError(f"{path}: unreadable settings: {exc}") from None
        # settings that may change on resume: budgets and bookkeeping
        free = {"epochs", "max_train_seconds", "device", "threads", "patience", "eval_batch_size", "data"}
        for key, value in theirs.items():
            if key not in free and mine.get(key) != value:
                raise CheckpointError(f"{path}: checkpoint has {key}={value!r} but this run asks for {key}={mine.get(key)!r}")
        try:
            self.model.load_state_dict(state["model"])
            if self.optimizer and state["optimizer"]:
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: does not match the model: {str(exc).splitlines()[0]}") from None
        self.epoch = state["epoch"]
        self.history = state["history"]
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]
        self.bad_evals = state["bad_evals"]
        self.train_seconds = state["train_seconds"]
        self.stopped_early = state["stopped_early"]
        self.checkpoint_epoch = self.epoch

    # ------------------------------------------------------------ divergence
    def diverged(self, epoch: int, batch: Optional[int], what: str) -> TrainingDiverged:
        """The one-line error of a diverged run: where, what, the usual causes, the last finite checkpoint."""
        cfg = self.cfg
        causes = [f"a learning rate too high (lr={cfg.lr:g})", f"weight_decay={cfg.weight_decay:g}",
                  f"init_std={cfg.init_std:g}"]
        if getattr(self.model, "uses_hessian", False):
            causes.append(f"delta_scale={cfg.delta_scale:g}")
        if getattr(self.model, "quantized", False) and cfg.scale_mode == "learned":
            causes.append("scale_mode=learned")
        if cfg.fp_loss_weight > 0:
            causes.append(f"fp_loss_weight={cfg.fp_loss_weight:g}")
        where = f"epoch {epoch}" + (f" (batch {batch})" if batch is not None else "")
        if self.out_dir is None:
            kept = "No checkpoint is kept (no run folder)"
        elif self.checkpoint_epoch is not None:
            kept = (f"The last finite checkpoint, {self.out_dir / CHECKPOINT} (epoch {self.checkpoint_epoch}), "
                    f"is kept; --resume requires these same settings, so train afresh (--overwrite) with a lower lr")
        else:
            old = "; its checkpoint.pt, from an earlier run, is left as it was"
            kept = (f"No checkpoint of this run was written to {self.out_dir} (one is written every "
                    f"{cfg.eval_every} epochs)" + (old if (self.out_dir / CHECKPOINT).is_file() else ""))
        return TrainingDiverged(f"{where}: {what}; training diverged. Usual causes: {', '.join(causes)}; "
                                f"lower lr. {kept}")

    def _check_weights(self, epoch: int, when: str) -> None:
        """Raise :class:`TrainingDiverged` when a weight, buffer or Adam state tensor holds NaN or inf."""
        tensors = named_tensors({"model": self.model.state_dict(),
                                 "optimizer": self.optimizer.state_dict()["state"] if self.optimizer else {}})
        problem = first_nonfinite(tensors)
        if problem:
            raise self.diverged(epoch, None, f"non-finite weights {when}: {problem}")

    def _evaluate_finite(self, split: str, epoch: int) -> dict:
        try:
            return self.evaluate(split)
        except NonFiniteScores as exc:
            raise self.diverged(epoch, None, str(exc)) from None

    # ------------------------------------------------------------ loop
    def _epoch_samples(self, epoch: int):
        rng = np.random.default_rng([self.cfg.seed, epoch])
        return self.sampler.epoch(rng, self.cfg.negatives, self.cfg.positive_sampling)

    def _log(self, entry: dict) -> None:
        self.history.append(entry)

    def evaluate(self, split: str) -> dict:
        """Full-ranking metrics of the current weights on ``split`` (:func:`hqgnn.evaluation.evaluate_model`)."""
        return evaluate_model(self.model, self.adj, self.data, split, ks=self.cfg.ks, batch_size=self.cfg.eval_batch_size)

    def _set_learning_rate(self, epoch: int) -> None:
        lr = learning_rate(self.cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _should_stop_for_time(self) -> bool:
        return self.cfg.max_train_seconds is not None and self.train_seconds >= self.cfg.max_train_seconds

    def fit(self) -> dict:
        """Train until ``epochs`` (or early stopping, or ``max_train_seconds``), evaluating every
        ``eval_every`` epochs and checkpointing each evaluation; then :meth:`finish`.

        Returns the test metrics (``metrics.json``). Raises :class:`TrainingDiverged`."""
        cfg = self.cfg
        if self.out_dir is not None:
            self.run.write_config(cfg)
        trainable = self.optimizer is not None and cfg.epochs > 0
        pool = ThreadPoolExecutor(max_workers=1)  # draws the next epoch's samples while this one trains
        pending = pool.submit(self._epoch_samples, self.epoch) if trainable and self.epoch < cfg.epochs else None
        bar = tqdm(
            total=cfg.epochs,
            initial=self.epoch,
            desc=f"train {cfg.model}",
            unit="epoch",
            disable=not self.progress or not trainable,
            dynamic_ncols=True,
        )
        metric = cfg.early_stop_metric
        try:
            while trainable and self.epoch < cfg.epochs and not self.stopped_early and not self._should_stop_for_time():
                t_epoch = time.perf_counter()
                epoch = self.epoch
                users, pos, neg = pending.result()
                pending = pool.submit(self._epoch_samples, epoch + 1) if epoch + 1 < cfg.epochs else None
                ctx = TrainContext(self.adj, self.sampler, self.device, np.random.default_rng([cfg.seed, epoch, 1]),
                                   cfg.batch_size)
                torch.manual_seed(cfg.seed * 100003 + epoch)
                self._set_learning_rate(epoch)
                hook_log = self.model.on_epoch_start(epoch, ctx)
                bad = [f"{k}={v}" for k, v in (hook_log or {}).items() if isinstance(v, float) and not math.isfinite(v)]
                if bad:  # GSTE's Hutchinson estimate on huge (finite) weights: a NaN delta would poison every gradient
                    raise self.diverged(epoch + 1, None, f"the epoch-start estimate is non-finite ({', '.join(bad)})")
                if hook_log:
                    self._log({"epoch": epoch, "event": "epoch_start", **hook_log})
                self.model.train()
                loss_sum, n_batches = 0.0, 0
                u_t = torch.from_numpy(users).to(self.device)
                p_t = torch.from_numpy(pos).to(self.device)
                n_t = torch.from_numpy(neg).to(self.device)
                for start in range(0, len(users), cfg.batch_size):
                    sl = slice(start, start + cfg.batch_size)
                    bu, bp, bn = u_t[sl], p_t[sl], n_t[sl]
                    loss, info = self.model.loss(self.adj, bu, bp, bn)
                    reg = self.model.encoder.l2_penalty(*info["triples"])
                    total = loss + cfg.weight_decay * reg
                    # the one sync per batch the loop always had, now before the step it guards
                    loss_value, total_value = torch.stack([loss.detach(), total.detach()]).tolist()
                    if not math.isfinite(total_value):
                        what = (f"the BPR loss is {loss_value}" if not math.isfinite(loss_value) else
                                f"the L2 penalty is {total_value - loss_value} (weight_decay={cfg.weight_decay:g})")
                        raise self.diverged(epoch + 1, n_batches + 1, what)
                    self.optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    self.optimizer.step()
                    loss_sum += loss_value
                    n_batches += 1
                self._check_weights(epoch + 1, "after the epoch's updates")  # one reduction per tensor, per epoch
                self.epoch += 1
                self.train_seconds += time.perf_counter() - t_epoch
                bar.update(1)
                entry = {"epoch": self.epoch, "loss": loss_sum / max(n_batches, 1), "train_seconds": round(self.train_seconds, 3)}
                if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs or self._should_stop_for_time():
                    t_eval = time.perf_counter()
                    res = self._evaluate_finite(self.monitor_split, self.epoch)
                    self.last_eval = (self.epoch, self.monitor_split, res, time.perf_counter() - t_eval)
                    entry.update({"split": self.monitor_split, "eval_seconds": round(self.last_eval[3], 3)})
                    entry.update({k: v for k, v in res.items() if k != "users"})
                    value = res[metric]
                    if value > self.best_value:
                        self.best_value, self.best_epoch, self.bad_evals = value, self.epoch, 0
                        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    else:
                        self.bad_evals += 1
                        if cfg.patience and self.bad_evals >= cfg.patience:
                            self.stopped_early = True
                    bar.set_postfix({metric: f"{value:.4f}", "loss": f"{entry['loss']:.4f}"})
                    self._log(entry)
                    self.save_checkpoint()
                else:
                    self._log(entry)
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
        return self.finish()

    def finish(self) -> dict:
        """Pick the reported weights, evaluate them on test, write model.pt, metrics.json and data.json.

        Raises :class:`TrainingDiverged` (writing neither) when the weights, the test ranking's
        scores or a reported number (a quantizer's scale) are not finite."""
        cfg = self.cfg
        self._check_weights(self.epoch, "at the end of training")
        if self.out_dir is not None:
            # before the best weights replace the last ones: a resume continues the training state
            self.save_checkpoint()
        selected_by = "last epoch"
        if self.best_state is not None and self.monitor_split == "valid":
            self.model.load_state_dict(self.best_state)
            selected_by = f"best {cfg.early_stop_metric} on the validation split (epoch {self.best_epoch})"
        elif self.monitor_split == "test":
            selected_by = "last epoch (no validation split; test was only monitored)"
        if self.monitor_split == "test" and self.last_eval is not None and self.last_eval[:2] == (self.epoch, "test"):
            _, _, test, eval_seconds = self.last_eval  # these very weights were just ranked on test
        else:
            t_eval = time.perf_counter()
            test = self._evaluate_finite("test", self.epoch)
            eval_seconds = time.perf_counter() - t_eval
        metrics = {k: v for k, v in test.items() if k != "users"}
        metrics.update(
            {
                "split": "test",
                "test_users": test["users"],
                "model": cfg.model,
                "epochs": self.epoch,
                "train_seconds": round(self.train_seconds, 3),
                "adjacency_seconds": round(self.adjacency_seconds, 3),
                "test_eval_seconds": round(eval_seconds, 3),
                "selected_by": selected_by,
                "stopped_early": self.stopped_early,
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "device": str(self.device),
                **self.model.describe(),
            }
        )
        bad = [f"{k}={v}" for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise self.diverged(self.epoch, None, f"non-finite results ({', '.join(bad)})")
        run = self.run
        if run is not None:
            run.write_model(cfg.to_dict(), self.model.state_dict(), self.data)
            run.write_metrics(metrics)
            run.write_data(self.data)
        return metrics


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; 0 where unsupported)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return 0.0
