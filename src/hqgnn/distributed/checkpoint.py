"""Checkpoints of a distributed run: the sharded state by ``torch.distributed.checkpoint``, the rest as JSON.

``RUN/dist_checkpoint/`` holds ``shards/`` (DCP: each rank writes its rows of E^0 and of the fused
optimizer's state, no rank ever holds the whole table) and ``meta.pt`` (rank 0: the settings, the
data's fingerprint, the world size and the sharding plan, the epoch, the history, the early-stopping
state and the model's small buffers: the quantizers' steps and GSTE deltas). A save goes to a fresh
folder that replaces the old one only once every rank has written (so an interrupted save leaves the
previous checkpoint whole).

Resume (``--resume``) requires the same world size and the same plan (the shards are laid out per
rank), the same data and the same settings but the budgets and bookkeeping; each mismatch is a
one-line :class:`~hqgnn.errors.CheckpointError`. With them, a resumed run continues exactly as an
uninterrupted one (tested): every epoch's samples are seeded by (seed, epoch) and the fused
optimizer's state is restored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..config import Config
from ..errors import CheckpointError, ConfigError

FOLDER = "dist_checkpoint"
META = "meta.pt"
VERSION = 1
#: settings that may change on resume (as in :meth:`hqgnn.training.Trainer.resume`)
FREE = {"epochs", "max_train_seconds", "device", "threads", "patience", "eval_batch_size", "data"}


def read_meta(run_dir) -> dict:
    """The checkpoint's ``meta.pt`` (no process group needed); CheckpointError when missing or damaged."""
    path = Path(run_dir) / FOLDER / META
    if not path.is_file():
        raise CheckpointError(f"{path}: no distributed checkpoint to resume (train without --resume first)")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a version-{VERSION} distributed checkpoint")
    return meta


def check_world(meta: dict, world_size: int, path) -> None:
    """One line when the checkpoint was written by another world size."""
    if meta["world_size"] != world_size:
        raise CheckpointError(f"{path}: checkpoint was written by {meta['world_size']} ranks, this run has {world_size}: "
                              f"resume with --nproc-per-node {meta['world_size']} (the shards are laid out per rank)")


def check_compatible(meta: dict, cfg: Config, data, world_size: int, plan: dict, path) -> None:
    """Raise CheckpointError (one line) unless the checkpoint fits this run."""
    check_world(meta, world_size, path)
    if meta["data_fingerprint"] != data.fingerprint():
        raise CheckpointError(f"{path}: checkpoint was trained on other data (fingerprint {meta['data_fingerprint']})")
    mine = cfg.to_dict()
    try:
        theirs = Config().updated(meta["config"], str(path)).validate().to_dict()
    except ConfigError as exc:
        raise CheckpointError(f"{path}: unreadable settings: {exc}") from None
    for key, value in theirs.items():
        if key not in FREE and mine.get(key) != value:
            raise CheckpointError(f"{path}: checkpoint has {key}={value!r} but this run asks for {key}={mine.get(key)!r}")
    if meta["plan"] != plan:
        old = {t: p["sharding_type"] for t, p in meta["plan"].items()}
        new = {t: p["sharding_type"] for t, p in plan.items()}
        raise CheckpointError(f"{path}: checkpoint was sharded as {old} with other row blocks, this run as {new}: "
                              f"resume with the same world size and sharding")


class Checkpointer:
    """Saves and restores a :class:`~hqgnn.distributed.trainer.DistributedTrainer` in ``run_dir``."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / FOLDER

    @staticmethod
    def _state(trainer) -> dict:
        return {"model": trainer.dmp.state_dict(), "optim": trainer.dmp.fused_optimizer.state_dict()}

    def save(self, trainer) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        tmp = self.run_dir / f".{FOLDER}.tmp"
        if trainer.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        dcp.save(self._state(trainer), checkpoint_id=str(tmp / "shards"))
        if trainer.rank == 0:
            small = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items() if k != "encoder.embedding"}
            torch.save({
                "version": VERSION, "config": trainer.cfg.to_dict(), "data_fingerprint": trainer.data.fingerprint(),
                "world_size": trainer.world_size, "plan": trainer.plan_record()["tables"], "epoch": trainer.epoch,
                "history": trainer.history, "best_value": trainer.best_value, "best_epoch": trainer.best_epoch,
                "best_state": trainer.best_state, "bad_evals": trainer.bad_evals, "train_seconds": trainer.train_seconds,
                "epoch_seconds": trainer.epoch_seconds, "stopped_early": trainer.stopped_early, "buffers": small,
            }, tmp / META)
            old = self.run_dir / f".{FOLDER}.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.folder.exists():
                self.folder.rename(old)
            tmp.rename(self.folder)
            shutil.rmtree(old, ignore_errors=True)
            trainer.history and trainer.out_dir and _write_history(trainer)
        dist.barrier()

    def resume(self, trainer) -> None:
        import torch.distributed.checkpoint as dcp

        meta = read_meta(self.run_dir)
        check_compatible(meta, trainer.cfg, trainer.data, trainer.world_size, trainer.plan_record()["tables"],
                         self.folder / META)
        state = self._state(trainer)
        dcp.load(state, checkpoint_id=str(self.folder / "shards"))
        trainer.dmp.load_state_dict(state["model"])
        trainer.dmp.fused_optimizer.load_state_dict(state["optim"])
        buffers = {k: v.to(trainer.device) for k, v in meta["buffers"].items()}
        trainer.model.load_state_dict(buffers, strict=False)
        for key in ("epoch", "history", "best_value", "best_epoch", "best_state", "bad_evals", "train_seconds",
                    "epoch_seconds", "stopped_early"):
            setattr(trainer, key, meta[key])


def _write_history(trainer) -> None:
    from ..runs import RunFolder

    RunFolder(trainer.out_dir).write_history(trainer.history)
