#!/usr/bin/env python
"""Full-ranking evaluation of integer scores: the exact top-k with ties by the lower item index.

    python benchmarks/eval_rank.py [--users 4096] [--items 40981] [--repeat 3] [--threads 1]

What is timed: one evaluation batch of the Gowalla shape (4,096 users x 40,981 items, the
default ``eval_batch_size``), integer scores of the range 4-bit x 16-dim codes give
(``|score| < 2,000``), about 20 training items per user excluded, top-100 (the largest default
cut-off). Two ways, side by side in one process, best of ``--repeat`` interleaved rounds:

* *int64 key* (before): ``score * n + (n - 1 - column)`` over the whole block, masked, then
  ``torch.topk`` -- exact, but five passes over a (users x items) int64 block;
* *threshold* (:func:`hqgnn.evaluation.rank_top_k`, now): a float top-k for the k-th score, then
  the int64 key only for the columns scoring at least that.

Both answers are checked equal. Writes ``benchmarks/results/eval_rank.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from hqgnn.evaluation import rank_top_k

ROOT = Path(__file__).resolve().parents[1]


def key_top_k(scores: torch.Tensor, exclude: torch.Tensor, k: int) -> torch.Tensor:
    """The int64-key ranking evaluation used before (the reference)."""
    n = scores.shape[1]
    key = scores.to(torch.int64) * n + torch.arange(n - 1, -1, -1)
    key = key.masked_fill(exclude, torch.iinfo(torch.int64).min)
    return torch.topk(key, k=k, dim=1).indices


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=4096, help="users in the batch (default 4,096)")
    p.add_argument("--items", type=int, default=40981, help="items (default 40,981: Gowalla)")
    p.add_argument("--k", type=int, default=100, help="cut-off (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds, the best kept (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_rank.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(-2000, 2000, (args.users, args.items), generator=gen).float()
    exclude = torch.rand(args.users, args.items, generator=gen) < 20 / args.items
    ways = {"int64 key (before)": lambda: key_top_k(scores, exclude, args.k),
            "threshold (now)": lambda: rank_top_k(scores, exclude, args.k, integer_scores=True)}
    best = {name: float("inf") for name in ways}
    answers = {}
    for _ in range(args.repeat):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            answers[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    first, second = answers.values()
    if not torch.equal(first, second):
        raise SystemExit("the two rankings differ")
    base = best["int64 key (before)"]
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    lines = ["# Ranking integer scores for evaluation", "",
             f"`python benchmarks/eval_rank.py{''.join(' ' + a for a in (argv if argv is not None else sys.argv[1:]))}`: "
             f"{args.users:,} users x {args.items:,} items, top-{args.k}, {args.threads} thread(s), best of "
             f"{args.repeat} interleaved rounds ({cpu}, {len(os.sched_getaffinity(0))} shared cores, load "
             f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}, torch {torch.__version__}, "
             f"Python {platform.python_version()}). Both give the same items in the same order.", "",
             "| way | seconds per batch | speed-up |", "|---|---:|---:|"]
    lines += [f"| {name} | {t:.2f} | {base / t:.2f}x |" for name, t in best.items()]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
