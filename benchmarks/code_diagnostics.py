"""Why some LightGCN layer filters cost accuracy at 1 bit: statistics of trained codes.

    python benchmarks/code_diagnostics.py runs/exp-ml-1m-v2/ml-1m/hqgnn-L2-b1/seed* \\
        runs/exp-ml-1m-v2/ml-1m/hqgnn-b1/seed* --out benchmarks/results/ml-1m-depth/code-diagnostics.md

For each trained run folder (grouped by its parent folder, the experiment cell; mean over
seeds) it prints a Markdown row with:

- ``h(-1)``: the layer filter h(lambda) = sum_l alpha_l lambda^l at lambda = -1 (from the
  run's layers and layer weights);
- ``cos(users, items)``: cosine between the mean user and the mean item ranking embedding
  (integer code levels for quantized runs, floats otherwise);
- ``popular sim``: mean pairwise cosine among the ranking embeddings of the most popular items
  (``--popular``, by training count); for sign codes this is 1 - 2 Hamming / d;
- Recall@K on all test items, on the popular ones and on the others. The ranking is the usual
  full ranking over all items (training and validation items masked); only the test items
  counted as relevant differ, so each user's recall is over the test items of that group.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from hqgnn import Recommender
from hqgnn.api import prepare_data
from hqgnn.config import Config
from hqgnn.errors import HQGNNError
from hqgnn.evaluation import csr_rows_to_dense_mask, exclusion_mask, popularity_scores, rank_top_k
from hqgnn.models.encoder import propagation_weights
from hqgnn.storage import write_text_atomic


def filter_at_minus_one(cfg: Config) -> float:
    """h(-1) = sum_l alpha_l (-1)^l of the run's encoder."""
    weights = propagation_weights(cfg.model, cfg.layers, cfg.layer_weights)
    return float(sum(w * (-1) ** layer for layer, w in enumerate(weights)))


def mean_cosine(x: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct rows of ``x``."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    n = x.shape[0]
    total = x.sum(0).pow(2).sum() - n  # sum over ordered pairs i != j of <x_i, x_j>
    return float(total / (n * (n - 1)))


@torch.no_grad()
def group_recall(u: torch.Tensor, i: torch.Tensor, integer: bool, data, groups: dict, k: int,
                 batch_size: int = 4096) -> dict:
    """Recall@k of the usual full ranking, counting as relevant only the test items of each group
    (a boolean item mask), averaged over the users with a test item in that group. One ranking
    pass serves every group; it masks and breaks ties as the evaluator does."""
    test = data.test.tocsr()
    exclude = [m.tocsr() for m in (data.train, data.valid) if m is not None]
    masks = {g: torch.from_numpy(m) for g, m in groups.items()}
    totals = {g: 0.0 for g in groups}
    counts = {g: 0 for g in groups}
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    item_t = i.t().contiguous()
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = u[torch.from_numpy(batch.astype(np.int64))] @ item_t
        top = rank_top_k(scores, exclusion_mask(exclude, batch, "cpu"), k, integer)
        relevant = csr_rows_to_dense_mask(test, batch, "cpu")
        for g, keep in masks.items():
            rel = relevant & keep
            n_rel = rel.sum(1)
            hits = torch.gather(rel, 1, top).sum(1)
            has = n_rel > 0
            totals[g] += float((hits[has] / n_rel[has]).sum())
            counts[g] += int(has.sum())
    return {g: totals[g] / max(counts[g], 1) for g in groups}


def diagnose(run: Path, data_cache: dict, popular: float, k: int) -> dict:
    cfg = Config.load(run / "config.yaml")
    key = (cfg.data, cfg.test_fraction, cfg.split_seed, cfg.val_fraction, cfg.user_column, cfg.item_column)
    if key not in data_cache:
        data_cache[key] = prepare_data(cfg)
    data = data_cache[key]
    rec = Recommender.load(run, data=data)
    u, i, integer = rec.model.ranking_embeddings(rec.adj)
    counts = popularity_scores(data.train)
    n_pop = max(1, int(round(popular * data.n_items)))
    is_pop = np.zeros(data.n_items, dtype=bool)
    is_pop[np.argsort(-counts, kind="stable")[:n_pop]] = True
    recall = group_recall(u, i, integer, data, {"all": np.ones_like(is_pop), "popular": is_pop, "others": ~is_pop}, k)
    return {
        "h(-1)": filter_at_minus_one(cfg),
        "cos(users, items)": float(torch.nn.functional.cosine_similarity(u.mean(0), i.mean(0), dim=0)),
        "popular sim": mean_cosine(i[torch.from_numpy(is_pop)]),
        f"recall@{k}": recall["all"],
        f"recall@{k} popular": recall["popular"],
        f"recall@{k} others": recall["others"],
    }


def compact(runs: list[Path]) -> list[str]:
    """Run folders for the command line, ``CELL/seed*`` where a cell's seed folders are all given."""
    out, done = [], set()
    for run in runs:
        if run.parent in done:
            continue
        given = {r for r in runs if r.parent == run.parent}
        seeds = set(run.parent.glob("seed*"))
        if run.name.startswith("seed") and given == seeds:
            out.append(f"{run.parent}/seed*")
            done.add(run.parent)
        else:
            out.append(str(run))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (each with config.yaml and model.pt)")
    ap.add_argument("--popular", type=float, default=0.1, help="fraction of items, by training count, called popular")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--note", default="", help="text for the Markdown file, above the table (e.g. how the runs were trained)")
    args = ap.parse_args()
    if not 0 < args.popular < 1:
        raise SystemExit(f"--popular={args.popular}: expected a fraction between 0 and 1")
    torch.set_num_threads(args.threads)

    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / "model.pt").is_file():
            raise SystemExit(f"{run}: not a finished run folder (no model.pt)")
    # a cell is a run's parent folder, named by it; by its experiment too where names repeat
    parents = {run.parent for run in runs}
    repeated = {p.name for p in parents if sum(q.name == p.name for q in parents) > 1}
    cells: dict = defaultdict(lambda: defaultdict(list))
    data_cache: dict = {}
    for run in runs:
        cell = run.parent.name if run.parent.name not in repeated else f"{run.parent.parent.parent.name}/{run.parent.name}"
        try:
            stats = diagnose(run, data_cache, args.popular, args.k)
        except HQGNNError as exc:
            raise SystemExit(f"error: {exc}") from None
        for name, value in stats.items():
            cells[cell][name].append(value)

    names = list(next(iter(cells.values())))
    lines = [
        f"Popular: the {args.popular:.0%} most-trained items. Mean over the seeds given.",
        "",
        "| cell | seeds | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for cell, vals in cells.items():
        n = len(vals[names[0]])
        lines.append(f"| {cell} | {n} | " + " | ".join(f"{np.mean(vals[m]):+.3f}" if m in ("h(-1)", "cos(users, items)")
                                                     else f"{np.mean(vals[m]):.4f}" for m in names) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/code_diagnostics.py " + " ".join(compact(runs))
        write_text_atomic(out, "# Statistics of trained codes against the layer filter\n\n"
                          + (args.note.strip() + "\n\n" if args.note.strip() else "")
                          + f"    {command} --out {args.out}\n\n" + table + "\n")


if __name__ == "__main__":
    main()
