"""Entry points: ``hqgnn train`` under torchrun, and ``hqgnn train --nproc-per-node N`` (launches torchrun).

* Under torchrun (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` set), :func:`train` initialises the
  process group (NCCL on CUDA, gloo on CPU), builds the model through the registry
  (:func:`hqgnn.models.initial_model`), trains with :class:`.trainer.DistributedTrainer` and has rank 0
  write the run folder. Several machines: torchrun's ``--nnodes`` and rendezvous flags.
* :func:`launch` runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m hqgnn train
  ...`` (the same flags) on this machine, after the checks that can fail in one line first.

Without the ``distributed`` extra both say, in one line, what to install
(:func:`require_torchrec`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..errors import HQGNNError

INSTALL = ("pip install 'hqgnn[distributed]' (CPU: fbgemm-gpu-cpu, then torchrec --no-deps; CUDA: the "
           "fbgemm-gpu build matching torch; docs/distributed.md)")


class DistributedUnavailable(HQGNNError):
    """TorchRec / FBGEMM are not installed."""


def under_torchrun() -> bool:
    """True inside a process that torchrun started."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def require_torchrec() -> None:
    """Import TorchRec and FBGEMM, or raise :class:`DistributedUnavailable` (one line)."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA build's OSError
        raise DistributedUnavailable(f"distributed training needs TorchRec and FBGEMM ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else 'not installed'}): {INSTALL}") from None


def precheck(out: Path, resume: bool, overwrite: bool, world_size: int) -> None:
    """The run-folder checks of ``hqgnn train``, plus a resume's world size, before any process starts."""
    from .checkpoint import FOLDER, check_world, read_meta

    if out.exists() and (out / "metrics.json").exists() and not resume and not overwrite:
        raise HQGNNError(f"{out}: a finished run is already there (use --resume to continue it or --overwrite)")
    if out.exists() and ((out / FOLDER).exists() or (out / "checkpoint.pt").exists()) and not resume and not overwrite:
        raise HQGNNError(f"{out}: holds a checkpoint of an unfinished run (use --resume to continue it or --overwrite)")
    if resume:
        meta = read_meta(out)
        check_world(meta, world_size, out / FOLDER)


def launch(args, nproc: int, cfg=None) -> int:
    """``hqgnn train --nproc-per-node N ...``: torchrun the same command on this machine; its exit status."""
    if nproc < 1:
        raise HQGNNError(f"--nproc-per-node {nproc}: expected >= 1")
    require_torchrec()
    precheck(Path(args.out), args.resume, args.overwrite, nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "hqgnn", "train", "--out", str(args.out)]
    for flag, value in (("--data", args.data), ("--model", args.model), ("--bits", args.bits), ("--config", args.config),
                        ("--seed", args.seed), ("--epochs", args.epochs), ("--device", args.device),
                        ("--from", args.from_run), ("--budget-bytes", getattr(args, "budget_bytes", None))):
        if value is not None:
            cmd += [flag, str(value)]
    if args.set:
        cmd += ["--set", *args.set]
    cmd += [f for f, on in (("--resume", args.resume), ("--overwrite", args.overwrite), ("--quiet", args.quiet)) if on]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(cmd, env=env).returncode


def train(cfg, data, out, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Optional[dict]:
    """Train ``cfg`` on ``data`` in this torchrun process; rank 0 returns metrics.json, others None."""
    require_torchrec()
    import torch
    import torch.distributed as dist

    from ..models import initial_model
    from ..runs import clear_run
    from .checkpoint import Checkpointer
    from .trainer import DistributedTrainer, check_supported

    check_supported(cfg)
    out = Path(out)
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if rank == 0:
        precheck(out, resume, overwrite, world_size)
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if rank == 0 and overwrite and not resume:
            import shutil

            clear_run(out)
            shutil.rmtree(out / "dist_checkpoint", ignore_errors=True)
        dist.barrier()
        trainer = DistributedTrainer(cfg, initial_model(cfg, data), data, out, progress=progress)
        checkpoint = Checkpointer(out)
        if resume:
            checkpoint.resume(trainer)
        return trainer.fit(checkpoint)
    finally:
        if owned:
            dist.destroy_process_group()
