"""Foundation benchmark: graph build, training step, evaluation, memory, and the accuracy curve.

    python benchmarks/foundation.py --data ../shared/data/gowalla --run runs/gowalla-lightgcn

Measures on this machine, side by side in one process:

* adjacency build: ``hqgnn.graph.normalized_adjacency`` against the LightGCN
  reference port's construction (a dok_matrix filled row by row, then
  D^-1/2 A D^-1/2 with scipy; reimplemented here as a baseline);
* propagation forward + backward: our symmetric-operator backward against
  torch's generic sparse backward;
* seconds per epoch (a few epochs of the given config), one full test evaluation,
  peak resident memory;
* and, from a finished run folder (``--run``), the Recall@20 / NDCG@20 curve
  over wall time of the full training, plus its final test metrics.

Prints a Markdown table and writes it to benchmarks/results/foundation-<data>.md (keeping that
file's hand-written "## Settings tried" section).
"""

from __future__ import annotations

import argparse
import sys
import json
import platform
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from hqgnn.config import Config
from hqgnn.data import load_dataset
from hqgnn.graph import normalized_adjacency, propagate
from hqgnn.models import initial_model
from hqgnn.training import Trainer, peak_rss_mb


def reference_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """The LightGCN port's construction: a dok_matrix filled through lil, then normalised."""
    n_users, n_items = train.shape
    n = n_users + n_items
    adj = sp.dok_matrix((n, n), dtype=np.float32)
    adj = adj.tolil()
    r = train.tolil()
    adj[:n_users, n_users:] = r
    adj[n_users:, :n_users] = r.T
    adj = adj.todok()
    rowsum = np.array(adj.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        d_inv = np.power(rowsum, -0.5)
    d_inv[np.isinf(d_inv)] = 0.0
    d = sp.diags(d_inv)
    return d.dot(adj).dot(d).tocsr()


def timed(fn, repeat=3):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


KEPT_SECTION = "## Settings tried"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/gowalla")
    ap.add_argument("--config", default=None, help="settings of the timed epochs (default: configs/<data>-lightgcn.yaml)")
    ap.add_argument("--run", default=None, help="a finished run folder whose curve to report")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-reference", action="store_true", help="do not time the slow reference adjacency build")
    args = ap.parse_args()

    name = Path(args.data).name
    cfg_path = args.config or f"configs/{name}-lightgcn.yaml"
    data = load_dataset(args.data)
    rows = []

    t_ours, adj = timed(lambda: normalized_adjacency(data.train))
    rows.append(("adjacency build, hqgnn (s)", f"{t_ours:.3f}"))

    x = torch.randn(adj.shape[0], 64, requires_grad=True)
    w = (0.25, 0.25, 0.25, 0.25)

    def ours():
        propagate(adj, x, w)[:1000].sum().backward()

    def generic():
        out = x * w[0]
        h = x
        for wl in w[1:]:
            h = torch.sparse.mm(adj, h)
            out = out + wl * h
        out[:1000].sum().backward()

    t_ours_p, _ = timed(ours)
    t_gen_p, _ = timed(generic)
    rows.append(("propagation fwd+bwd, symmetric backward (s)", f"{t_ours_p:.3f}"))
    rows.append(("propagation fwd+bwd, torch generic sparse backward (s)", f"{t_gen_p:.3f}"))

    cfg = Config.load(cfg_path, [f"epochs={args.epochs}", f"eval_every={args.epochs}", "max_train_seconds=null"])
    trainer = Trainer(cfg, initial_model(cfg, data), data, None, progress=False)
    trainer.fit()
    per_epoch = trainer.train_seconds / max(trainer.epoch, 1)
    rows.append((f"seconds per epoch (batch {cfg.batch_size}, {cfg.epochs} epochs)", f"{per_epoch:.2f}"))
    t_eval, res = timed(lambda: trainer.evaluate("test"), repeat=2)
    rows.append((f"full-ranking test evaluation, {res['users']} users (s)", f"{t_eval:.2f}"))
    rows.append(("peak resident memory of training + evaluation (MiB)", f"{peak_rss_mb():.0f}"))
    # last: the reference construction (a dok_matrix) needs far more memory than the trainer
    if not args.skip_reference:
        t_ref, ref = timed(lambda: reference_adjacency(data.train), repeat=1)
        same = np.allclose(ref[:200].toarray(), adj.to_dense()[:200].numpy(), atol=1e-6)
        rows.insert(1, ("adjacency build, reference port's construction (s)", f"{t_ref:.2f} (same matrix: {same})"))

    curve = []
    if args.run:
        run = Path(args.run)
        hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
        curve = [h for h in hist if "recall@20" in h]
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append(("full run: epochs / train seconds", f"{metrics['epochs']} / {metrics['train_seconds']:.0f}"))
        rows.append(("full run: test Recall@20 / NDCG@20", f"{metrics['recall@20']:.4f} / {metrics['ndcg@20']:.4f}"))
        rows.append(("full run: test Recall@50 / NDCG@50", f"{metrics['recall@50']:.4f} / {metrics['ndcg@50']:.4f}"))

    lines = [
        f"# Foundation benchmark: {name}",
        "",
        "Command: `python benchmarks/foundation.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"{data.n_users} users, {data.n_items} items, {data.train.nnz} training interactions; "
        f"{torch.get_num_threads()} torch threads; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
    ]
    if curve:
        lines += ["", f"Curve of {args.run} ({curve[0].get('split', 'test')} split, monitored only):", "",
                  "| epoch | train seconds | Recall@20 | NDCG@20 |", "|---|---|---|---|"]
        lines += [f"| {h['epoch']} | {h['train_seconds']:.0f} | {h['recall@20']:.4f} | {h['ndcg@20']:.4f} |" for h in curve]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path("benchmarks/results") / f"foundation-{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    # a hand-written "## Settings tried" section of the previous file is kept
    if out.is_file() and KEPT_SECTION in (old := out.read_text()):
        text += "\n" + old[old.index(KEPT_SECTION):]
    out.write_text(text)


if __name__ == "__main__":
    main()
