"""The cost of the GSTE's Hessian-trace estimate, and how it grows with the graph.

    python benchmarks/hessian_cost.py [--gowalla ../shared/data/gowalla] [--sizes 10000 100000 1000000]
    python benchmarks/hessian_cost.py --device cuda --sizes 100000 1000000 4000000   (on a GPU)

For each graph: the time of one training step (propagation forward + backward
and the BPR batch), of one epoch, and of one delta update (Hutchinson's
estimate for the user and the item quantizer over ``hutchinson_batches``
mini-batches), and the update's share of training time when it runs every
``delta_every`` epochs. Synthetic graphs are random bipartite graphs with
Zipf item popularity, ``--degree`` interactions per user, half users half
items. Prints a Markdown table and writes benchmarks/results/hessian_cost.md (on the CPU)
or benchmarks/results/hessian_cost-cuda.md (``--device cuda``; every timed span ends with
a CUDA synchronisation, so the seconds are the GPU's work, not its queueing).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from hqgnn.config import Config
from hqgnn.data import InteractionData, interactions_to_csr, load_dataset
from hqgnn.models import initial_model, resolve_device
from hqgnn.training import TrainContext, Trainer


def hardware(device_name: str) -> str:
    device = resolve_device(device_name)
    if device.type == "cuda":
        return f"one {torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{torch.get_num_threads()} torch threads, CPU"


def random_graph(n_nodes: int, degree: int, seed: int = 0) -> InteractionData:
    rng = np.random.default_rng(seed)
    n_users = n_nodes // 2
    n_items = n_nodes - n_users
    pop = np.arange(1, n_items + 1, dtype=np.float64) ** -0.8
    pop /= pop.sum()
    users = np.repeat(np.arange(n_users), degree)
    items = rng.choice(n_items, size=len(users), p=pop)
    train = interactions_to_csr(users, items, n_users, n_items)
    test = interactions_to_csr(np.arange(n_users), rng.integers(0, n_items, n_users), n_users, n_items)
    return InteractionData(train=train, test=test, name=f"random-{n_nodes}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(data: InteractionData, cfg: Config, steps: int) -> dict:
    trainer = Trainer(cfg, initial_model(cfg, data), data, None, progress=False)
    model, adj, device = trainer.model, trainer.adj, trainer.device
    rng = np.random.default_rng(0)
    u, p, n = trainer.sampler.epoch(rng)
    bs = cfg.batch_size
    times = []
    for s in range(steps + 1):
        sl = slice((s * bs) % max(len(u) - bs, 1), (s * bs) % max(len(u) - bs, 1) + bs)
        bu, bp, bn = (torch.from_numpy(a[sl]).to(device) for a in (u, p, n))
        _sync(device)
        t = time.perf_counter()
        loss, _ = model.loss(adj, bu, bp, bn)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        _sync(device)
        if s:  # the first step initialises the quantizer scales
            times.append(time.perf_counter() - t)
    step = float(np.median(times))
    steps_per_epoch = math.ceil(data.train.nnz / bs)
    ctx = TrainContext(adj, trainer.sampler, trainer.device, np.random.default_rng(1), cfg.batch_size)
    _sync(device)
    t = time.perf_counter()
    log = model.update_deltas(ctx)
    _sync(device)
    hess = time.perf_counter() - t
    epoch = step * steps_per_epoch
    return {
        "nodes": data.n_users + data.n_items,
        "edges": int(data.train.nnz),
        "step_s": step,
        "epoch_s": epoch,
        "hessian_s": hess,
        "probes": log["hutchinson_probes"],
        "share": hess / (hess + cfg.delta_every * epoch),
        "delta_user": log["delta_user"],
        "delta_item": log["delta_item"],
    }


def _secs(x: float) -> str:
    """Seconds with three significant digits (a GPU step is milliseconds, a CPU epoch an hour)."""
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def render(rows: list[tuple[str, dict]], cfg: Config, hardware_text: str) -> str:
    lines = [
        "# Cost of the Hessian-trace estimate (GSTE delta update)",
        "",
        f"hqgnn {cfg.bits}-bit, batch {cfg.batch_size}, {cfg.hutchinson_batches} mini-batches x up to "
        f"{cfg.hutchinson_probes} Rademacher probes (tolerance {cfg.hutchinson_tol}), delta every {cfg.delta_every} epochs; "
        f"{hardware_text}.",
        "",
        "| graph | nodes | edges | step (s) | epoch (s) | one delta update (s) | probes | share of training | delta user / item |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['nodes']:,} | {r['edges']:,} | {_secs(r['step_s'])} | {_secs(r['epoch_s'])} | {_secs(r['hessian_s'])} | "
            f"{r['probes']} | {100 * r['share']:.2f}% | {r['delta_user']:.2e} / {r['delta_item']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gowalla", default="../shared/data/gowalla")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--degree", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = ap.parse_args()
    cfg = Config.load(None, [f"model=hqgnn", f"bits={args.bits}", f"batch_size={args.batch_size}", "val_fraction=0",
                             "eval_split=test", "lr=0.01", f"device={args.device}"])
    graphs = []
    if args.gowalla and Path(args.gowalla).is_dir():
        graphs.append(("gowalla", lambda: load_dataset(args.gowalla)))
    for n in args.sizes:
        graphs.append((f"random {n:,} nodes", lambda n=n: random_graph(n, args.degree)))
    rows = []
    for name, make in graphs:
        data = make()
        r = measure(data, cfg, args.steps)
        rows.append((name, r))
        print(name, r, flush=True)
    text = render(rows, cfg, hardware(cfg.device))
    print(text)
    cuda = resolve_device(cfg.device).type == "cuda"
    out = Path("benchmarks/results/hessian_cost-cuda.md" if cuda else "benchmarks/results/hessian_cost.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
