"""BPR training loop with evaluation, early stopping, atomic checkpoints and exact resume.

Run folder layout (all written atomically):

* ``config.yaml``      the resolved settings
* ``history.jsonl``    one JSON line per evaluation (and per GSTE delta update)
* ``checkpoint.pt``    latest state: weights, optimiser, epoch, best, history
* ``model.pt``         the weights reported in ``metrics.json`` (best on the monitored split)
* ``metrics.json``     final test metrics, ``train_seconds``, which split selected the model
* ``data.json``        data fingerprint, sizes and id maps

Every epoch draws its samples from ``numpy.random.default_rng([seed, epoch])``,
so a resumed run continues exactly as an uninterrupted one would.

Divergence: a non-finite batch loss, GSTE delta estimate, weight (or Adam state) after an
epoch, or ranking score stops training with :class:`~hqgnn.errors.TrainingDiverged` (one
line: the epoch, what went non-finite, the usual causes, the last finite checkpoint). No
checkpoint, ``model.pt`` or ``metrics.json`` holding non-finite values is ever written, and
:func:`load_checkpoint` refuses one (:class:`~hqgnn.errors.CheckpointError`).
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import FULL_PRECISION_MODELS, Config
from .data import InteractionData
from .errors import CheckpointError, NonFiniteScores, TrainingDiverged
from .evaluation import evaluate_embeddings
from .graph import normalized_adjacency
from .models import build_model
from .models.base import ScoringModel
from .models.encoder import LightGCN, propagation_layers, propagation_weights
from .sampling import TripleSampler
from .storage import atomic_path, write_json_atomic, write_text_atomic

CHECKPOINT_VERSION = 1
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"setting device={name!r}: CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


@dataclass
class TrainContext:
    """What per-epoch hooks (GSTE's Hessian estimate, schedules) may use."""

    cfg: Config
    adj: Optional[torch.Tensor]
    sampler: TripleSampler
    device: torch.device
    epoch_rng: np.random.Generator

    def sample_batches(self, n_batches: int):
        """A few fresh (users, pos, neg) batches on the device, for estimates outside the epoch."""
        u, p, n = self.sampler.epoch(self.epoch_rng)
        bs = self.cfg.batch_size
        for b in range(min(n_batches, max(1, math.ceil(len(u) / bs)))):
            sl = slice(b * bs, (b + 1) * bs)
            yield tuple(torch.from_numpy(a[sl]).to(self.device) for a in (u, p, n))


def split_for_monitoring(cfg: Config, data: InteractionData) -> str:
    if cfg.eval_split == "valid" and data.valid is not None:
        return "valid"
    return "test"


def excluded_for(split: str, data: InteractionData) -> list:
    """Items masked when ranking for ``split``: training, plus validation when scoring test."""
    if split == "test" and data.valid is not None:
        return [data.train, data.valid]
    return [data.train]


def named_tensors(obj, prefix: str = ""):
    """``(dotted name, tensor)`` of every tensor in nested dicts / lists (a state dict, an optimizer state)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for key, value in enumerate(obj):
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))


def first_nonfinite(tensors) -> Optional[str]:
    """Describe the first floating tensor of ``(name, tensor)`` pairs that holds NaN or inf
    (``"NAME holds 3 NaN and 1 inf of its 640 values"``), or None when all are finite.

    One reduction per tensor and one device sync per device when all are finite."""
    by_device: dict = {}
    for name, t in tensors:
        if t.is_floating_point() and t.numel():
            by_device.setdefault(t.device, []).append((name, t.detach()))
    for group in by_device.values():
        ok = torch.stack([torch.isfinite(t).all() for _, t in group])
        if bool(ok.all()):
            continue
        name, t = next(pair for pair, flag in zip(group, ok.tolist()) if not flag)
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        counts = " and ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
        return f"{name} holds {counts} of its {t.numel()} values"
    return None


def check_finite_state(state: dict, path) -> None:
    """Refuse a checkpoint / ``model.pt`` dict whose weights (``model``, ``best_state``) or Adam
    state (``optimizer``) hold NaN or inf: raises :class:`CheckpointError` naming ``path``, the
    tensor and how many of its values are non-finite."""
    parts = [(key, state.get(key)) for key in ("model", "best_state", "optimizer") if state.get(key) is not None]
    problem = first_nonfinite(named_tensors(dict(parts)))
    if problem:
        raise CheckpointError(f"{path}: non-finite weights: {problem} (written by a diverged run; "
                              f"retrain it with a lower lr)")


def ranking_problem(u: torch.Tensor, i: torch.Tensor) -> Optional[str]:
    """Why the scores ``u @ i.T`` could be NaN or inf, or None: a non-finite entry, or row norms
    whose product (the Cauchy-Schwarz bound of every score) exceeds the float32 maximum."""
    problem = first_nonfinite([("user embeddings", u), ("item embeddings", i)])
    if problem:
        return problem
    if not len(u) or not len(i):
        return None
    nu = float(torch.linalg.vector_norm(u.detach(), dim=1, dtype=torch.float64).max())
    ni = float(torch.linalg.vector_norm(i.detach(), dim=1, dtype=torch.float64).max())
    if nu * ni > FLOAT32_MAX:
        return (f"the scores can overflow float32 (max user norm {nu:.3g} x max item norm {ni:.3g} "
                f"> {FLOAT32_MAX:.3g})")
    return None


def evaluate_model(model: ScoringModel, adj, data: InteractionData, split: str, cfg: Config) -> dict:
    """Full-ranking metrics of ``model`` on ``split``.

    Raises :class:`~hqgnn.errors.NonFiniteScores` when the ranking scores could be NaN or inf
    (see :func:`ranking_problem`): metrics of such a ranking would be meaningless."""
    u, i, integer = model.ranking_embeddings(adj)
    problem = ranking_problem(u, i)
    if problem:
        raise NonFiniteScores(f"cannot rank the {split} split: {problem}")
    return evaluate_embeddings(u, i, data.split(split), excluded_for(split, data), ks=cfg.ks,
                               batch_size=cfg.eval_batch_size, integer_scores=integer, split=split)


class Trainer:
    def __init__(self, cfg: Config, data: InteractionData, out_dir: Optional[Path] = None, progress: bool = True,
                 start_from_run: bool = True):
        self.cfg = cfg
        self.data = data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        set_seed(cfg.seed)
        t0 = time.perf_counter()
        self.adj = normalized_adjacency(data.train, self.device) if cfg.layers > 0 else None
        self.adjacency_seconds = time.perf_counter() - t0
        self.model = build_model(cfg, data.n_users, data.n_items).to(self.device)
        if cfg.from_run and start_from_run:
            # lsh / ptq code this run's embeddings; the trained quantized models start from it
            # (a pre-training stage). Off when loading a finished run, whose model.pt holds E0.
            load_full_precision_run(cfg.from_run, self.model.encoder, data, cfg.model, self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr) if params else None
        self.sampler = TripleSampler(data.train)
        self.monitor_split = split_for_monitoring(cfg, data)
        self.epoch = 0
        self.history: list[dict] = []
        self.best_value = -math.inf
        self.best_epoch = -1
        self.best_state: Optional[dict] = None
        self.bad_evals = 0
        self.train_seconds = 0.0
        self.stopped_early = False
        self.checkpoint_epoch: Optional[int] = None  # epoch of the checkpoint this trainer wrote or resumed

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
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
        if self.out_dir is None:
            return
        state = self.state()
        problem = first_nonfinite(named_tensors({k: state[k] for k in ("model", "best_state", "optimizer")}))
        if problem:
            raise self.diverged(self.epoch, None, f"refusing to save a checkpoint: {problem}")
        with atomic_path(self.out_dir / "checkpoint.pt") as tmp:
            torch.save(state, tmp)
        self.checkpoint_epoch = self.epoch
        write_text_atomic(self.out_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def resume(self) -> None:
        path = self.out_dir / "checkpoint.pt"
        state = load_checkpoint(path)
        if state["data_fingerprint"] != self.data.fingerprint():
            raise CheckpointError(
                f"{path}: checkpoint was trained on other data (fingerprint {state['data_fingerprint']}, "
                f"this data {self.data.fingerprint()})"
            )
        mine = self.cfg.to_dict()
        theirs = state["config"]
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
            kept = (f"The last finite checkpoint, {self.out_dir / 'checkpoint.pt'} (epoch {self.checkpoint_epoch}), "
                    f"is kept; --resume requires these same settings, so train afresh (--overwrite) with a lower lr")
        else:
            old = "; its checkpoint.pt, from an earlier run, is left as it was"
            kept = (f"No checkpoint of this run was written to {self.out_dir} (one is written every "
                    f"{cfg.eval_every} epochs)" + (old if (self.out_dir / "checkpoint.pt").is_file() else ""))
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
        return evaluate_model(self.model, self.adj, self.data, split, self.cfg)

    def _set_learning_rate(self, epoch: int) -> None:
        cfg = self.cfg
        lr = cfg.lr
        if cfg.lr_schedule == "cosine" and cfg.epochs > 1:
            lo = cfg.lr * cfg.lr_min_ratio
            lr = lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * epoch / (cfg.epochs - 1)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _should_stop_for_time(self) -> bool:
        return self.cfg.max_train_seconds is not None and self.train_seconds >= self.cfg.max_train_seconds

    def fit(self) -> dict:
        cfg = self.cfg
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.yaml")
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
                ctx = TrainContext(cfg, self.adj, self.sampler, self.device, np.random.default_rng([cfg.seed, epoch, 1]))
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
                    entry.update({"split": self.monitor_split, "eval_seconds": round(time.perf_counter() - t_eval, 3)})
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
        """Pick the reported weights, evaluate them on test, write model.pt and metrics.json.

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
        if self.out_dir is not None:
            with atomic_path(self.out_dir / "model.pt") as tmp:
                torch.save(
                    {
                        "version": CHECKPOINT_VERSION,
                        "config": cfg.to_dict(),
                        "model": self.model.state_dict(),
                        "data_fingerprint": self.data.fingerprint(),
                        "n_users": self.data.n_users,
                        "n_items": self.data.n_items,
                    },
                    tmp,
                )
            write_json_atomic(self.out_dir / "metrics.json", metrics)
            write_json_atomic(self.out_dir / "data.json", data_summary(self.data))
        return metrics


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; 0 where unsupported)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return 0.0


def data_summary(data: InteractionData) -> dict:
    out = {
        "name": data.name,
        "source": data.source,
        "fingerprint": data.fingerprint(),
        "n_users": data.n_users,
        "n_items": data.n_items,
        "train": int(data.train.nnz),
        "valid": int(data.valid.nnz) if data.valid is not None else 0,
        "test": int(data.test.nnz),
        "notes": data.notes,
        "split_method": data.split_method,
        "preprocessing": data.preprocessing,
    }
    if data.user_ids is not None:
        out["user_ids"] = data.user_ids.tolist()
    if data.item_ids is not None:
        out["item_ids"] = data.item_ids.tolist()
    return out


def load_full_precision_run(run_dir, encoder: LightGCN, data, model: str, device) -> None:
    """Copy E0 of a trained full-precision (lightgcn / mf) run into ``encoder``, after checking
    that the run propagated the same layers with the same weights on the same data."""
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: from_run has no trained model (train a lightgcn run first)")
    state = load_checkpoint(path)
    run_cfg = state.get("config", {})
    if run_cfg.get("model") not in FULL_PRECISION_MODELS:
        raise CheckpointError(f"{path}: from_run must be a full-precision lightgcn or mf run, got {run_cfg.get('model')!r}")
    # the codes must quantize the embeddings the run was trained to produce
    run_layers = propagation_layers(run_cfg.get("model"), run_cfg.get("layers"))
    if run_layers != encoder.layers:
        raise CheckpointError(f"{path}: from_run propagates {run_layers} layers, this {model} run "
                              f"{encoder.layers} (set layers={run_layers})")
    run_weights = propagation_weights(run_cfg.get("model"), run_layers, run_cfg.get("layer_weights"))
    if not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(run_weights, encoder.layer_weights)):
        raise CheckpointError(f"{path}: from_run sums its layers with weights {list(run_weights)}, this "
                              f"{model} run with {list(encoder.layer_weights)} (set layer_weights to the run's)")
    if state.get("data_fingerprint") != data.fingerprint():
        raise CheckpointError(f"{path}: from_run was trained on other data (fingerprint {state.get('data_fingerprint')})")
    emb = state["model"].get("encoder.embedding")
    if emb is None or tuple(emb.shape) != tuple(encoder.embedding.shape):
        raise CheckpointError(f"{path}: embedding shape {tuple(emb.shape) if emb is not None else None} does not match dim={encoder.dim}")
    with torch.no_grad():
        encoder.embedding.copy_(emb.to(device))


def load_checkpoint(path: Path) -> dict:
    """Read a ``checkpoint.pt`` / ``model.pt``. Raises :class:`CheckpointError` (naming ``path``) when it
    is missing, corrupt, foreign, newer, or holds non-finite weights (:func:`check_finite_state`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or "version" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not an hqgnn checkpoint")
    if state["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state['version']} is newer than this hqgnn ({CHECKPOINT_VERSION})")
    check_finite_state(state, path)
    return state
