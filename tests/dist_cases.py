"""Worker of tests/test_distributed.py: ``python tests/dist_cases.py WORLD_SIZE PORT WORKDIR``.

Spawns WORLD_SIZE gloo processes (torch.multiprocessing) that run the distributed trainer on toy
data and saves what rank 0 saw to WORKDIR/results-wsN.pt; the assertions (against the
single-process, dense answers) are in the test module."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TOY = ["synthetic_users=30", "synthetic_items=20", "ks=[5,10,20]", "dim=8", "layers=2", "val_fraction=0", "eval_split=test"]


def toy_config(*more):
    from hqgnn.config import Config

    return Config.load(None, TOY + list(more), {"data": "synthetic"})


def first_batch(cfg, data):
    from hqgnn.sampling import TripleSampler

    u, p, n = TripleSampler(data.train).epoch(np.random.default_rng([cfg.seed, 0]), cfg.negatives, cfg.positive_sampling)
    b = min(cfg.batch_size, len(u))
    return u[:b], p[:b], n[:b]


def one_step(cfg, data, delta=0.0, epoch=None):
    """E^0 before and after one step on the first global batch, and the summed loss (``epoch``: set
    that epoch's learning rate of the schedule first)."""
    from hqgnn.distributed import plan as planmod
    from hqgnn.distributed.trainer import DistributedTrainer
    from hqgnn.models import initial_model

    tr = DistributedTrainer(cfg, initial_model(cfg, data), data, None, progress=False)
    for name in ("user_quantizer", "item_quantizer"):
        if hasattr(tr.model, name):
            getattr(tr.model, name).delta.fill_(delta)
    lr = tr._set_learning_rate(epoch) if epoch is not None else None
    n_rows = tr.n_users + tr.n_items
    before = planmod.gather_table(tr.dmp, n_rows, tr.dim)
    u, p, n = first_batch(cfg, data)
    lu, lp, ln = tr._local((u, p, n), 0, len(u))
    loss, total = tr.batch_loss(lu, lp, ln, len(u), np.random.default_rng(0))
    value = total.detach().clone()
    dist.all_reduce(value)
    total.backward()
    after = planmod.gather_table(tr.dmp, n_rows, tr.dim)
    return {"before": before, "after": after, "total": float(value), "plan": tr.plan_record(), "lr": lr,
            "bytes": tr.memory_record()}


def run(rank, world_size, port, workdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from hqgnn.distributed.checkpoint import Checkpointer
    from hqgnn.distributed.trainer import DistributedTrainer
    from hqgnn.loading import prepare_data
    from hqgnn.models import initial_model

    out = {}
    sgd = ["sparse_optimizer=sgd", "lr=1.0", "weight_decay=0.01", "batch_size=64"]
    cfg = toy_config("model=lightgcn", *sgd)
    data = prepare_data(cfg)
    out["float"] = one_step(cfg, data)
    out["quantized"] = one_step(toy_config("model=hqgnn", "bits=4", *sgd), data, delta=0.3)
    # the cosine schedule reaches the fused optimizer: epoch 1 of 3 at lr_min_ratio 0.1 steps at 0.55
    out["cosine"] = one_step(toy_config("model=lightgcn", *sgd, "epochs=3", "lr_schedule=cosine", "lr_min_ratio=0.1"),
                             data, epoch=1)
    # the default optimizer, two negatives a positive: world size 1 and 2 must take the same step
    out["adagrad"] = one_step(toy_config("model=hqgnn", "bits=2", "lr=0.05", "negatives=2", "batch_size=64"), data)
    if world_size > 1:
        # checkpoint / resume: 2 epochs straight vs 1 epoch, then resumed to 2
        more = ["model=hqgnn", "bits=2", "lr=0.05", "batch_size=64", "delta_every=1", "eval_every=1"]
        results = {}
        for name, legs in (("straight", [2]), ("resumed", [1, 2])):
            folder = os.path.join(workdir, name)
            for i, epochs in enumerate(legs):
                cfg = toy_config(*more, f"epochs={epochs}")
                tr = DistributedTrainer(cfg, initial_model(cfg, data), data, folder, progress=False)
                ck = Checkpointer(folder)
                if i:
                    ck.resume(tr)
                results[name] = tr.fit(ck)
                results[name + "_history"] = tr.history
        out["resume"] = results
        # resuming with another setting is refused in one line
        try:
            cfg = toy_config(*more, "epochs=3", "bits=3")
            tr = DistributedTrainer(cfg, initial_model(cfg, data), data, os.path.join(workdir, "resumed"), progress=False)
            Checkpointer(os.path.join(workdir, "resumed")).resume(tr)
            out["bad_resume"] = None
        except Exception as exc:  # noqa: BLE001
            out["bad_resume"] = f"{type(exc).__name__}: {exc}"
    if rank == 0:
        torch.save(out, os.path.join(workdir, f"results-ws{world_size}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    ws, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    mp.spawn(run, args=(ws, port, workdir), nprocs=ws)
