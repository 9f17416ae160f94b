#!/usr/bin/env python
"""Exact kernels at small dimensions: codes of equal bytes per item side by side (issue 20, part 3).

    python benchmarks/small_dims.py [--repeat 5] [--gowalla-users 8192] [--quick]

At 8 bytes per item (1 bit x 64, 2 bits x 32, 4 bits x 16, 8 bits x 8), 16 bytes (2 x 64,
4 x 32, 8 x 16), and at d = 64 for 4 and 8 bits (32 and 64 bytes), every exact kernel worth
timing runs the same exact top-50 (seen items excluded, one thread, batches of 1,024 users)
on random codes over two catalogue shapes: MovieLens-1M (6,040 users x 3,952 item ids, its
train CSR excluded) and Gowalla (29,858 users x 40,981 items; the first ``--gowalla-users``
users, its train CSR). float32 x 64 (``FloatIndex``, sgemm) is the reference. Every cell
runs in this one process, in ``--repeat`` interleaved rounds; the table gives the best round
by wall clock and by the process's CPU time (the machine is shared: CPU time is what the
search itself used, wall clock includes waiting for a core). Kernels far slower than the rest
(bit planes at 4 and 8 bits) are timed on the first ``--slow-users`` users. Every kernel's
items and raw scores are checked equal to the first kernel's of the same code.

**(default)** marks what ``QuantizedIndex(kernel="auto")`` picks on this CPU; *before* is
the default of benchmarks/results/kernels-avx2.md (bit planes for 1-2 bits, gemm for 3-8).
Writes Markdown to ``benchmarks/results/small-dims-<isa>.md`` and prints one JSON line.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/retrieval.py

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import isa  # noqa: E402
from retrieval import cpu_name  # noqa: E402

from hqgnn.data import load_lightgcn_folder  # noqa: E402
from hqgnn.index import FloatIndex, QuantizedIndex  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: (bits, dim, kernels timed); the first kernel is the reference answer of the code
CODES = [(1, 64, ("bitplane",)),
         (2, 32, ("bitplane", "gemm", "int16-dot")),
         (4, 16, ("gemm", "bitplane", "int16-dot")),
         (8, 8, ("gemm", "bitplane", "int16-dot")),
         (2, 64, ("bitplane", "gemm", "int16-dot")),
         (4, 32, ("gemm", "bitplane", "int16-dot")),
         (8, 16, ("gemm", "bitplane", "int16-dot")),
         (4, 64, ("gemm", "int16-dot")),
         (8, 64, ("gemm", "int16-dot"))]
BEFORE = {1: "bitplane", 2: "bitplane", 4: "gemm", 8: "gemm"}  # the defaults of kernels-avx2.md
SLOW = {(4, "bitplane"), (8, "bitplane")}


def timed(index, rows, k, batch):
    """Wall and CPU seconds of searching ``rows`` in batches, and the answer."""
    items, scores = [], []
    w0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, len(rows), batch):  # batches of users, like a serving loop
        it, sc = index.search(rows[lo:lo + batch], k, exclude="train", threads=1)
        items.append(it)
        scores.append(sc)
    return time.perf_counter() - w0, time.process_time() - c0, np.concatenate(items), np.concatenate(scores)


def cells_for(name, train, n_rows, slow_rows, seed):
    n_users, n_items = train.shape
    rows = np.arange(min(n_rows, n_users)) if n_rows else np.arange(n_users)
    rng = np.random.default_rng(seed)
    cells = [((name, "float32", 64, "float32 sgemm"),
              FloatIndex(rng.standard_normal((n_items, 64), dtype=np.float32),
                         user_emb=rng.standard_normal((n_users, 64), dtype=np.float32), train=train), rows)]
    for bits, dim, kernels in CODES:
        uc = rng.integers(0, 2**bits, (n_users, dim), dtype=np.uint8)
        ic = rng.integers(0, 2**bits, (n_items, dim), dtype=np.uint8)
        for kern in kernels:
            index = QuantizedIndex.from_codes(ic, bits, user_codes=uc, train=train, kernel=kern)
            cells.append(((name, bits, dim, kern), index, rows[:slow_rows] if (bits, kern) in SLOW else rows))
    return cells


def measure(cells, args):
    best, ref = {}, {}
    for key, index, rows in cells:  # warm up: numba loops, sample kernels
        index.search(rows[:64], args.k, exclude="train", threads=1)
    for rnd in range(args.repeat):
        for key, index, rows in cells:
            wall, cpu, items, scores = timed(index, rows, args.k, args.batch)
            w, c = best.get(key, (np.inf, np.inf))
            best[key] = (min(w, wall), min(c, cpu))
            code = key[:3]
            if rnd == 0 and key[1] != "float32":
                if code not in ref:
                    ref[code] = (items, scores, key[3])
                else:
                    n = len(rows)
                    assert np.array_equal(items, ref[code][0][:n]) and np.array_equal(scores, ref[code][1][:n]), \
                        f"{key} differs from {ref[code][2]}"
            print(f"  [round {rnd + 1}] {str(key):42s} {len(rows) / wall:10,.0f} q/s wall {len(rows) / cpu:10,.0f} "
                  f"q/s CPU (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--gowalla-users", type=int, default=8192)
    p.add_argument("--slow-users", type=int, default=1024)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.gowalla_users, args.slow_users = 1, 1024, 128
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"small-dims-{isa()}{'-quick' if args.quick else ''}.md")
    command = " ".join(["python benchmarks/small_dims.py", *(argv if argv is not None else sys.argv[1:])])
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    data = Path(args.data)
    ml = load_lightgcn_folder(data / "ml-1m").train
    gw = load_lightgcn_folder(data / "gowalla").train
    cells = (cells_for("ML-1M", ml, 0 if not args.quick else 1024, args.slow_users, 1)
             + cells_for("Gowalla", gw, args.gowalla_users, args.slow_users, 2))
    defaults = {key[:3]: QuantizedIndex.from_codes(np.zeros((1, key[2]), np.uint8), key[1]).kernel_name
                for key, _, _ in cells if key[1] != "float32"}
    best = measure(cells, args)
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())

    lines = [f"# Exact kernels at small dimensions on {cpu_name()} ({isa()})", "",
             f"Command: `{command}`  ",
             f"Machine: {cpu_name()}, ISA {isa()}, {os.cpu_count()} cores **shared with other jobs** (load average "
             f"1/5/15 min: {load_before} before, {load_after} after), numpy {np.__version__}, 1 search thread.  ",
             f"Data: exact top-{args.k}, each user's training items excluded, batches of {args.batch} users, random "
             f"codes; ML-1M shape ({ml.shape[0]:,} users x {ml.shape[1]:,} item ids, {ml.nnz:,} excluded), all users; "
             f"Gowalla shape ({gw.shape[0]:,} users x {gw.shape[1]:,} items, {gw.nnz:,} excluded), the first "
             f"{min(args.gowalla_users, gw.shape[0]):,} users; bit planes at 4 and 8 bits on the first "
             f"{args.slow_users:,}. Best of {args.repeat} interleaved rounds, all cells in one process. Every kernel's "
             "items and raw scores equal the first kernel's of the same code (checked).", "",
             "q/s wall: queries over wall-clock seconds. q/s CPU: queries over the CPU seconds the process used "
             "(with the cores oversubscribed, wall clock also counts time spent waiting for a core; CPU time is "
             "the steadier comparison). *before*: the default of kernels-avx2.md (bit planes for 1-2 bits, gemm "
             "for 3-8); **(default)**: what `kernel=\"auto\"` picks now. vs 1x64: CPU q/s over the 1 bit x 64 "
             "code's on the same catalogue.", ""]
    summary = {}
    for name in ("ML-1M", "Gowalla"):
        lines += [f"## {name} shape", "",
                  "| code | bytes / item | kernel | users | q/s wall | q/s CPU | vs 1x64 (CPU) |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        one_bit = next(len(rows) / best[key][1] for key, _, rows in cells if key[:3] == (name, 1, 64))
        for key, index, rows in cells:
            if key[0] != name:
                continue
            _, bits, dim, kern = key
            wall, cpu = best[key]
            qw, qc = len(rows) / wall, len(rows) / cpu
            if bits == "float32":
                code, nbytes, mark = "float32 x 64", 256, ""
            else:
                code, nbytes = f"{bits} x {dim}", bits * dim // 8
                mark = (" **(default)**" if defaults[key[:3]] == kern else "") + \
                       (" *before*" if BEFORE[bits] == kern else "")
                summary[f"{name}/{bits}x{dim}/{kern}"] = round(qc)
            lines.append(f"| {code} | {nbytes} | {kern}{mark} | {len(rows):,} | {qw:,.0f} | {qc:,.0f} | "
                         f"{qc / one_bit:.2f}x |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(json.dumps({"cpu_qps": summary, "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
