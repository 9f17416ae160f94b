#!/usr/bin/env python
"""Exact-kernel table: every QuantizedIndex kernel side by side, per bit width and thread count.

    python benchmarks/kernels.py [--bits 1,2,3,4,8] [--kernels bitplane,gemm,int8-mm,int32-mm]
                                 [--threads 1,2] [--repeat 3] [--quick]

Exact top-50 with the seen items excluded, on a catalogue of the shape of a LightGCN
folder (Gowalla: 29,858 users x 40,981 items; its real ``train`` CSR is the exclusion),
d = 64 random codes (throughput does not depend on trained values), float32 sgemm
(``FloatIndex``) as the reference. Each (bits, kernel, threads) cell is timed in
``--repeat`` interleaved rounds and its fastest round counts (the machine is shared).
Kernels slower than a few thousand queries/s (``--subset-kernels``, torch's integer
matrix products on CPUs without fast int8 GEMM) are timed on the first ``--subset-users``
users instead of all of them; queries/s is comparable either way. Every kernel's answer
(items and raw scores) is checked equal to the first kernel's on the same users.

A second table (``--wide-dim``, default 300) times 8-bit codes where ``d m^2 >= 2^24``:
there ``gemm`` runs in float64 (float32 would no longer be exact), so the default's choice
at large ``d`` is measured too.

This table is what :data:`hqgnn.index.engine.DEFAULT_KERNEL` (the non-VNNI defaults) is
chosen from. Writes Markdown to ``benchmarks/results/kernels-<isa>.md`` and prints one
JSON line of the fastest kernel per (bits, threads).
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
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import cpu_name, run_queries  # noqa: E402

from hqgnn.data import load_lightgcn_folder  # noqa: E402
from hqgnn.index import FloatIndex, QuantizedIndex  # noqa: E402
from hqgnn.index import kernels as K  # noqa: E402
from hqgnn.index.engine import default_kernel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARITH = {"bitplane": "XOR + popcount over bit planes (integer, compiled, fused selection)",
         "bitplane-numpy": "XOR + popcount (integer, numpy ufuncs)",
         "gemm": "float sgemm of the odd levels (exact: float32 while d m^2 < 2^24, else float64)",
         "int8-mm": "int8 x int8 -> int32 (torch._int_mm)",
         "int32-mm": "int32 matmul (torch.mm)",
         "int8-dot": "uint8 x int8 -> int32 (AVX-512 VNNI, compiled, fused selection)",
         "float32": "float32 embeddings, sgemm + exact selection (FloatIndex): the reference"}


def isa() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if "avx512_vnni" in flags:
        return "avx512-vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "generic"


def build(kind: str, bits: int, dim: int, train, n_users: int, n_items: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "float32":
        return FloatIndex(rng.standard_normal((n_items, dim), dtype=np.float32),
                          user_emb=rng.standard_normal((n_users, dim), dtype=np.float32), train=train)
    uc = rng.integers(0, 2**bits, (n_users, dim), dtype=np.uint8)
    ic = rng.integers(0, 2**bits, (n_items, dim), dtype=np.uint8)
    return QuantizedIndex.from_codes(ic, bits, user_codes=uc, train=train, kernel=kind)


def measure(cells, args, label):
    """Time every cell ``(key, index, rows, threads)`` in ``args.repeat`` interleaved rounds; check answers.

    Float32 cells (key ``("float32", ..., threads)``) recur before every bit width: each
    other cell's speed is also taken relative to the float32 run just before it with the
    same threads (the machine's load drifts within a round). Returns ``(best, ratios)``:
    ``{key: fastest seconds}`` and ``{key: [qps / float32 qps of that moment, one per round]}``.
    The reference answer of a bit width is its first kernel's."""
    best, ratios, ref = {}, {}, {}
    for key, index, rows, threads in cells:  # warm up: compile the numba loops, build the sample kernels
        torch.set_num_threads(threads)
        index.search(rows[:64], args.k, exclude="train", threads=threads)
    for rnd in range(args.repeat):
        last_float = {}
        for key, index, rows, threads in cells:
            torch.set_num_threads(threads)
            seconds, items, scores = run_queries(index, rows, args.k, args.batch, threads)
            best[key] = min(best.get(key, np.inf), seconds)
            bits, qps = key[0], len(rows) / seconds
            if bits == "float32":
                last_float[threads] = qps
            else:
                ratios.setdefault(key, []).append(qps / last_float[threads])
            if rnd == 0 and bits != "float32":
                if bits not in ref:
                    ref[bits] = (items, scores, rows)
                else:
                    r_items, r_scores, r_rows = ref[bits]
                    pos = np.searchsorted(r_rows, rows)
                    assert np.array_equal(r_rows[pos], rows), "subset users must be among the reference users"
                    assert np.array_equal(items, r_items[pos]) and np.array_equal(scores, r_scores[pos]), \
                        f"{label}: {key} differs from {ref_name(cells, bits)}"
            print(f"  [{label} round {rnd + 1}] {str(key):40s} {qps:10.0f} q/s "
                  f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    return best, ratios


def ref_name(cells, bits):
    return next(key for key, *_ in cells if key[0] == bits)


def table(cells, best, ratios, defaults) -> list[str]:
    lines = ["| bits | kernel | threads | users timed | queries/s (best) | vs float32 sgemm (median of rounds) |",
             "|---|---|---:|---:|---:|---:|"]
    done = set()
    for key, index, rows, threads in cells:
        if key in done:
            continue
        done.add(key)
        bits, kernel, t = key
        qps = len(rows) / best[key]
        ratio = "1.00x" if bits == "float32" else f"{np.median(ratios[key]):.2f}x"
        mark = " **(default)**" if defaults.get(bits) == kernel else ""
        lines.append(f"| {bits} | {kernel}{mark} | {t} | {len(rows):,} | {qps:,.0f} | {ratio} |")
    return lines


def fastest_of(cells, ratios) -> dict:
    """The kernel with the highest median ratio to float32, per (bits, threads)."""
    out = {}
    for key, *_ in cells:
        if key[0] != "float32":
            out.setdefault((key[0], key[2]), []).append((float(np.median(ratios[key])), key[1]))
    return {bt: max(v)[1] for bt, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gowalla"))
    p.add_argument("--bits", default="1,2,3,4,8")
    p.add_argument("--kernels", default="bitplane,gemm,int8-mm,int32-mm")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--users", type=int, default=0, help="query users (default: all)")
    p.add_argument("--subset-kernels", default="int8-mm,int32-mm")
    p.add_argument("--subset-users", type=int, default=1024)
    p.add_argument("--wide-dim", type=int, default=300, help="8-bit table at this d (0: skip)")
    p.add_argument("--wide-users", type=int, default=4096)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.subset_users, args.wide_users, args.repeat = args.users or 1024, 256, 256, 1
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"kernels-{isa()}{'-quick' if args.quick else ''}.md")
    bits_list = [int(b) for b in args.bits.split(",")]
    kernels = args.kernels.split(",")
    threads_list = [int(t) for t in args.threads.split(",")]
    subset = set(args.subset_kernels.split(",")) if args.subset_kernels else set()
    env = {"command": " ".join(["python benchmarks/kernels.py", *(argv if argv is not None else sys.argv[1:])]),
           "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg())}

    train = load_lightgcn_folder(Path(args.data)).train
    n_users, n_items = train.shape
    all_rows = np.arange(n_users) if not args.users else np.arange(min(args.users, n_users))
    sub_rows = all_rows[: args.subset_users]

    def grid(bits_list, kernels, dim, rows_main, rows_sub, tag):
        cells = []
        ref = build("float32", 0, dim, train, n_users, n_items, 0)
        for b in bits_list:
            for t in threads_list:  # the float32 reference again before every bit width
                cells.append((("float32", "float32 sgemm", t), ref, rows_main, t))
            for kern in kernels:
                index = build(kern, b, dim, train, n_users, n_items, seed=b)  # same codes for every kernel of b
                for t in threads_list:
                    cells.append(((b, kern, t), index, rows_sub if kern in subset else rows_main, t))
        print(f"{tag}: {len(cells)} cells", file=sys.stderr)
        return cells

    cells = grid(bits_list, kernels, args.dim, all_rows, sub_rows, "main")
    best, ratios = measure(cells, args, "main")
    wide_cells = []
    if args.wide_dim:
        wide_rows = all_rows[: args.wide_users]
        wide_cells = grid([8], kernels, args.wide_dim, wide_rows, wide_rows[: args.subset_users], "wide")
        wide_best, wide_ratios = measure(wide_cells, args, f"d={args.wide_dim}")
    env["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())

    fastest = fastest_of(cells, ratios)
    defaults = {b: default_kernel(b) for b in bits_list}
    lines = [
        f"# Exact kernels on {cpu_name()} ({isa()})",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {cpu_name()}, ISA {isa()} (AVX-512 VNNI: {K.Int8DotKernel.available()}), {os.cpu_count()} cores, "
        f"shared with other jobs (load average, 1/5/15 min: {env['load_before']} before, {env['load_after']} after; "
        "with the load above the core count the 2-thread rows cannot show a parallel speedup), "
        f"numpy {np.__version__}, torch {torch.__version__} (torch threads = search threads), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}.  ",
        f"Data: `{os.path.relpath(args.data, ROOT)}` ({n_users:,} users x {n_items:,} items; its train CSR, "
        f"{train.nnz:,} interactions, excluded). Random codes, d = {args.dim}, exact top-{args.k}, batches of "
        f"{args.batch} users, best of {args.repeat} interleaved rounds. {', '.join(sorted(subset))} timed on the "
        f"first {len(sub_rows):,} users, the rest on {len(all_rows):,}. Every kernel's items and raw scores equal "
        "the first kernel's (checked).",
        "",
        "queries/s: the fastest of the rounds. vs float32: the ratio to the float32 run timed just before the "
        "bit width's kernels in the same round, median over the rounds (robust to the load drifting between "
        "rounds); the fastest kernel below is chosen by it. **(default)**: what `default_kernel(bits)` picks "
        "on this CPU.",
        "",
    ]
    lines += table(cells, best, ratios, defaults)
    lines += ["", "Fastest exact kernel per bit width: "
              + "; ".join(f"{b} bits: " + ", ".join(f"{fastest[(b, t)]} ({t} thr.)" for t in threads_list)
                          for b in bits_list) + "."]
    if wide_cells:
        wdef = {8: default_kernel(8)}
        lines += ["", f"## 8 bits at d = {args.wide_dim} (d m^2 = {args.wide_dim * 255**2:,} >= 2^24: gemm in float64)",
                  "", f"First {len(wide_rows):,} users ({', '.join(sorted(subset))}: first "
                  f"{min(len(wide_rows), args.subset_users):,}); **(default)**: `default_kernel(8)`.",
                  ""]
        lines += table(wide_cells, wide_best, wide_ratios, wdef)
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(json.dumps({"fastest": {f"{b}-bit/{t}thr": k for (b, t), k in fastest.items()},
                      "qps": {"/".join(map(str, key)): round(len(rows) / best[key]) for key, _, rows, _ in cells},
                      "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
