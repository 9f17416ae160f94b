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

import gc
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
        if not (out / FOLDER).exists() and (out / "checkpoint.pt").exists():
            raise HQGNNError(f"{out}: holds a single-process run's checkpoint.pt, no distributed checkpoint: "
                             "resume it without --nproc-per-node / torchrun")
        meta = read_meta(out)
        check_world(meta, world_size, out / FOLDER)


#: the first line of the block torchrun prints when a rank fails (its own traceback), and where it
#: names the rank's exit code
_FAILED = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"


def relay(stream, sink) -> Optional[int]:
    """Copy the ranks' output from ``stream`` to ``sink`` as it comes, keeping each error one line.

    A rank that fails with an hqgnn error prints one line (``hqgnn: error: ...``) and exits 2; each
    rank prints it, and torchrun then adds its own traceback and failure summary
    (``ChildFailedError``, ~40 lines) and exits 1. The user should see the one line, once, and the
    rank's exit code. So a repeated error line is dropped; a traceback is held until its exception
    line and passed on whole unless it is torchrun's ``ChildFailedError`` (a rank's own crash keeps
    its traceback); torchrun's block and the summary after it are dropped, and the failed rank's
    exit code is read from it. Returns that exit code, or None."""
    import re

    seen: set = set()
    block: list = []
    codes: dict = {}  # exit codes of torchrun's summary: the first listed, and the root cause's
    swallowing = root_cause = False
    for line in stream:
        if swallowing:  # torchrun's failure summary: "Failures:" may list ranks torchrun itself
            # stopped (SIGTERM: -15) before the "Root Cause" rank, whose exit code is the one to report
            root_cause = root_cause or line.startswith("Root Cause")
            found = re.match(r"\s*exitcode\s*:\s*(-?\d+)", line)
            if found:
                codes.setdefault("root" if root_cause else "first", int(found.group(1)))
            continue
        if block:
            block.append(line)
            if _FAILED in line:
                swallowing, block = True, []
            elif line.strip() and not line[0].isspace() and not line.startswith(("Traceback", "During handling",
                                                                                 "The above exception")):
                sink.write("".join(block))  # a traceback of the ranks' own: passed on whole
                sink.flush()
                block = []
            continue
        if line.startswith("Traceback (most recent call last):"):
            block.append(line)
            continue
        if line.startswith("hqgnn: error:"):
            if line in seen:
                continue
            seen.add(line)
        sink.write(line)
        sink.flush()
    if block:
        sink.write("".join(block))
    code = codes.get("root", codes.get("first"))
    return None if code is None else (code if code > 0 else 1)  # a rank killed by a signal: 1


def launch(args, nproc: int, cfg=None) -> int:
    """``hqgnn train --nproc-per-node N ...``: torchrun the same command on this machine; its exit status.

    What can be checked here is checked before any process starts (one line each): already
    under torchrun, N < 1, the extra missing, the run folder, a resume's world size, and, with
    ``cfg``, the settings the distributed trainer refuses and a data path that does not exist.
    A rank's own error then reaches the user as its one line, once, with the rank's exit code
    (:func:`relay`)."""
    if under_torchrun():
        raise HQGNNError(f"--nproc-per-node {nproc}: this is already a rank of a torchrun job (WORLD_SIZE="
                         f"{os.environ.get('WORLD_SIZE')}); drop --nproc-per-node, torchrun starts the ranks")
    if nproc < 1:
        raise HQGNNError(f"--nproc-per-node {nproc}: expected >= 1")
    require_torchrec()
    if cfg is not None:
        from .trainer import check_supported

        check_supported(cfg)
        if cfg.data and cfg.data != "synthetic" and not Path(cfg.data).exists():
            raise HQGNNError(f"--data {cfg.data}: no such file or folder")
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
    env["HQGNN_LAUNCHED"] = "1"  # the ranks leave what this process already said (the budget's pick) unsaid
    env["PYTHONUNBUFFERED"] = "1"  # progress and errors arrive as they happen through the relay
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                          bufsize=1) as proc:
        rank_code = relay(proc.stderr, sys.stderr)
        status = proc.wait()
    return rank_code if status != 0 and rank_code else status


#: the loggers whose warnings the ranks leave unsaid under ``--quiet``: TorchRec's planner (a topology
#: constructed directly, the storage reservation's known issue) and torch.fx's ``is_fx_tracing`` note
QUIET_LOGGERS = ("torchrec", "torch.fx._symbolic_trace")
#: the modules whose Python warnings (``warnings.warn``) the ranks leave unsaid under ``--quiet``:
#: TorchRec's planner (HeuristicalStorageReservation's FutureWarning) and torch.distributed.checkpoint
#: (ShardedTensor's deprecation), printed at every start and resume
QUIET_WARNINGS = r"(torchrec|fbgemm_gpu|torch)(\.|$)"


def quiet_libraries() -> None:
    """Raise :data:`QUIET_LOGGERS` to ERROR and ignore the warnings of :data:`QUIET_WARNINGS` in
    this process: ``--quiet`` ranks print errors only (hqgnn's own warnings still show)."""
    import logging
    import warnings

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=QUIET_WARNINGS)


def train(cfg, data, out, resume: bool = False, overwrite: bool = False, progress: bool = True,
          budget: Optional[dict] = None) -> Optional[dict]:
    """Train ``cfg`` on ``data`` in this torchrun process; rank 0 returns metrics.json, others None.

    ``budget``: the pick of ``--budget-bytes`` (:func:`hqgnn.frontier.budget_record`), which rank 0
    writes to the run folder (``budget.json``) once its checks have passed, as the single-process
    ``hqgnn train`` does; not on ``--resume`` (the folder's own record stays). Rank 0 covers both
    ``--nproc-per-node`` and a torchrun the user started. ``progress=False`` (``--quiet``) also
    silences the libraries' warnings (:func:`quiet_libraries`)."""
    if not progress:
        quiet_libraries()
    require_torchrec()
    import torch
    import torch.distributed as dist

    from ..models import initial_model
    from ..runs import RunFolder, clear_run
    from .checkpoint import Checkpointer
    from .trainer import DistributedTrainer, check_supported

    check_supported(cfg)
    out = Path(out)
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if rank == 0:
        precheck(out, resume, overwrite, world_size)
    from ..models import resolve_device

    cuda = resolve_device(cfg.device).type == "cuda"  # device=cuda without CUDA: refused, not ignored
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if rank == 0 and overwrite and not resume:
            clear_run(out)  # the run files and the distributed ones (plan, sharded checkpoint, graph)
        if rank == 0 and budget is not None and not resume:  # after the checks: a refused run writes no pick
            RunFolder(out).write_budget(budget)
        dist.barrier()
        trainer = DistributedTrainer(cfg, initial_model(cfg, data), data, out, progress=progress)
        checkpoint = Checkpointer(out)
        if resume:
            checkpoint.resume(trainer)
        metrics = trainer.fit(checkpoint)
        # the ranks leave together, once rank 0 has written the run: a rank that tore its process
        # group down while rank 0 still evaluated aborted once at exit in CI (SIGABRT; 50 local runs did not)
        dist.barrier()
        del trainer, checkpoint
        return metrics
    finally:
        if owned:
            dist.destroy_process_group()
        gc.collect()  # free the sharded model's C++ state while the interpreter is whole, not at its teardown
