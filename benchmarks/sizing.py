#!/usr/bin/env python
"""Sizing: bytes per item, queries/s per core and p99 latency per code and backend, extrapolated, and replicas.

    python benchmarks/sizing.py [--repeat 3] [--quick]
    python benchmarks/sizing.py --from-json benchmarks/results/sizing.json --rates 500,5000 --p99-ms 20

Measures, on one core (``threads=1``) and in one process, every configuration side by side on
two catalogues: the Gowalla shape (29,858 users x 40,981 items, its train CSR excluded) and a
synthetic 1,000,000-item catalogue (2,000 users, random histories of mean length 27,
excluded). Per configuration and catalogue:

* **bytes / item**: the item codes as stored (the artifact's packed planes or float32), and the
  bytes per item the index holds in memory once searched (``tracemalloc``: the codes, the
  kernel's own layout of them and its threshold sample; faiss's C++ memory is not traced, its
  row gives faiss's layout: the codes plus an 8-byte id);
* **queries/s per core**: batches of users (``--batch`` users per call), the best round by the
  process's CPU time (the machine is shared; wall clock is printed beside it);
* **single-query latency**: one user per call, as a server answers a request: mean, p50 and p99
  of CPU time and the p99 of wall time (wall includes waiting for a core on a busy machine).

Then, with the model of docs/sizing.md, extrapolates to 10^7 and 10^8 items (exact scans: time
linear in items, from the 1M-item measurement; memory = resident bytes / item x items + 8-byte
ids) and sizes a deployment: for each request rate (``--rates``) and p99 target (``--p99-ms``),
the cores and replicas (``--cores-per-replica``) it needs, with a per-request serving overhead
(``--overhead-ms``, the HTTP server's own time per request: benchmarks/results/serve_load.md),
sharding the catalogue where one replica cannot meet the target.

Writes benchmarks/results/sizing.md and sizing.json; ``--from-json`` redoes only the
extrapolation and the replica tables from a previous JSON (your own rates and targets, no
measuring). Codes are random: search time does not depend on trained values (cascade and IVF
recall do: see benchmarks/results/cascade/ and ann/).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/retrieval.py

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import isa  # noqa: E402
from retrieval import cpu_name, load_train, synthetic_train  # noqa: E402

from hqgnn.index import FloatIndex, QuantizedIndex  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ID_BYTES = 8  # one int64 original id per item (the artifact's id map, memory-mapped)
LN100 = math.log(100.0)  # p99 of an exponential response time: ln(100) x its mean

#: (name, bits or 32 for float32, dim, backend, kernel, backend params, exact?)
CONFIGS = [
    ("1-bit x 64 bitplane", 1, 64, "exact", "auto", {}, True),
    ("2-bit x 64 int16-dot", 2, 64, "exact", "auto", {}, True),
    ("2-bit x 64 bitplane", 2, 64, "exact", "bitplane", {}, True),
    ("4-bit x 16 int16-dot", 4, 16, "exact", "auto", {}, True),
    ("4-bit x 64 int16-dot", 4, 64, "exact", "auto", {}, True),
    ("4-bit x 64 gemm", 4, 64, "exact", "gemm", {}, True),
    ("8-bit x 64 int16-dot", 8, 64, "exact", "auto", {}, True),
    ("8-bit x 64 gemm", 8, 64, "exact", "gemm", {}, True),
    ("float32 x 64 sgemm", 32, 64, "exact", "auto", {}, True),
    ("4-bit x 64 cascade C=1000", 4, 64, "cascade", "auto", {"candidates": 1000}, False),
    ("1-bit x 64 faiss-flat", 1, 64, "faiss-flat", "auto", {}, True),
    ("1-bit x 64 faiss-ivf nprobe=16", 1, 64, "faiss-ivf", "auto", {"nprobe": 16}, False),
]


def build(cfg, train, seed):
    name, bits, dim, backend, kernel, params, _ = cfg
    n_users, n_items = train.shape
    rng = np.random.default_rng(seed)
    if bits == 32:
        return FloatIndex(rng.standard_normal((n_items, dim), dtype=np.float32),
                          user_emb=rng.standard_normal((n_users, dim), dtype=np.float32), train=train)
    return QuantizedIndex.from_codes(rng.integers(0, 2**bits, (n_items, dim), dtype=np.uint8), bits,
                                     user_codes=rng.integers(0, 2**bits, (n_users, dim), dtype=np.uint8),
                                     train=train, kernel=kernel, backend=backend, backend_params=params)


def code_bytes(bits, dim):
    return 4 * dim if bits == 32 else bits * (-(-dim // 64)) * 8  # packed planes of 64-bit words / float32


def prepare(cfg, train, seed, warm_rows):
    """The index, built and searched once under tracemalloc; returns (index, resident bytes per item)."""
    tracemalloc.start()
    index = build(cfg, train, seed)
    index.search(warm_rows, 50, exclude="train", threads=1)  # builds the kernel's layout and sample
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if cfg[3].startswith("faiss"):  # C++ memory, not traced: faiss's layout
        return index, code_bytes(cfg[1], cfg[2]) + ID_BYTES
    # the user side and the seen-item CSR are held too: small next to 1M items (see render)
    return index, held / train.shape[1]


def throughput(index, rows, k, batch):
    w0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, len(rows), batch):  # batches of users, like an offline job
        index.search(rows[lo:lo + batch], k, exclude="train", threads=1)
    return time.perf_counter() - w0, time.process_time() - c0


def latencies(index, rows, k):
    wall, cpu = np.empty(len(rows)), np.empty(len(rows))
    for i, u in enumerate(rows):  # one user per call, as a request
        w0, c0 = time.perf_counter(), time.process_time()
        index.search(rows[i:i + 1], k, exclude="train", threads=1)
        wall[i], cpu[i] = time.perf_counter() - w0, time.process_time() - c0
    return wall, cpu


def measure(args):
    sizes = []
    gowalla = load_train(Path(args.data))
    sizes.append(("41k (Gowalla shape)", gowalla, args.users_small, args.latency_small))
    if args.big:
        sizes.append((f"{args.big / 1e6:g}M (synthetic)", synthetic_train(2000, args.big, 27, 0),
                      args.users_big, args.latency_big))
    out = []
    for label, train, n_rows, n_lat in sizes:
        n_users, n_items = train.shape
        rng = np.random.default_rng(7)
        rows = np.sort(rng.choice(n_users, min(n_rows, n_users), replace=False))
        lat_rows = rng.choice(n_users, n_lat, replace=True)
        built = []
        for i, cfg in enumerate(CONFIGS):
            if cfg[3].startswith("faiss") and not args.faiss:
                continue
            t0 = time.perf_counter()
            index, resident = prepare(cfg, train, i, rows[:64])
            print(f"  [{label}] built {cfg[0]} in {time.perf_counter() - t0:.1f}s, {resident:.1f} B/item",
                  file=sys.stderr, flush=True)
            built.append((cfg, index, resident))
        res = {cfg[0]: {"wall": np.inf, "cpu": np.inf, "lat_wall": [], "lat_cpu": []} for cfg, _, _ in built}
        for rnd in range(args.repeat):  # interleaved rounds: load changes hit every configuration alike
            for cfg, index, _ in built:
                wall, cpu = throughput(index, rows, args.k, args.batch)
                lw, lc = latencies(index, lat_rows, args.k)
                r = res[cfg[0]]
                r["wall"], r["cpu"] = min(r["wall"], wall), min(r["cpu"], cpu)
                r["lat_wall"].append(lw)
                r["lat_cpu"].append(lc)
                print(f"  [{label} round {rnd + 1}] {cfg[0]:32s} {len(rows) / cpu:9,.0f} q/s CPU "
                      f"{len(rows) / wall:9,.0f} wall; single p99 {1e3 * np.percentile(lc, 99):.2f} ms CPU "
                      f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        for cfg, index, resident in built:
            r = res[cfg[0]]
            # per round p50 / p99, then the median over rounds (robust to a busy round)
            p = lambda xs, q: float(np.median([np.percentile(x, q) for x in xs]))  # noqa: E731
            out.append({"size": label, "n_items": n_items, "config": cfg[0], "bits": cfg[1], "dim": cfg[2],
                        "backend": cfg[3], "kernel": getattr(index, "kernel_name", "sgemm"), "exact": cfg[6],
                        "code_bytes_per_item": code_bytes(cfg[1], cfg[2]), "resident_bytes_per_item": resident,
                        "qps_cpu": len(rows) / r["cpu"], "qps_wall": len(rows) / r["wall"],
                        "single_cpu_mean_ms": 1e3 * float(np.median([x.mean() for x in r["lat_cpu"]])),
                        "single_cpu_p50_ms": 1e3 * p(r["lat_cpu"], 50), "single_cpu_p99_ms": 1e3 * p(r["lat_cpu"], 99),
                        "single_wall_p99_ms": 1e3 * p(r["lat_wall"], 99)})
        del built
    # resident bytes per item: the largest catalogue's (where users and histories are negligible)
    largest = max(r["n_items"] for r in out)
    per_item = {r["config"]: r["resident_bytes_per_item"] for r in out if r["n_items"] == largest}
    for r in out:
        r["resident_bytes_per_item"] = per_item[r["config"]]
    return out


# ---------------------------------------------------------------- the model
def extrapolate(row, n_items):
    """A measured row scaled to ``n_items``: exact scans take time linear in the items."""
    f = n_items / row["n_items"]
    return {"n_items": n_items, "memory_gb": (row["resident_bytes_per_item"] + ID_BYTES) * n_items / 1e9,
            "single_cpu_mean_ms": row["single_cpu_mean_ms"] * f, "single_cpu_p99_ms": row["single_cpu_p99_ms"] * f,
            "qps_per_core": row["qps_cpu"] / f}


def plan(mean_ms, p99_ms, rate, target_ms, overhead_ms, max_shards=4096):
    """Fewest cores that serve ``rate`` req/s with p99 <= ``target_ms`` (docs/sizing.md's model).

    Each core is an M/M/1 queue (a conservative bound for a shared queue and near-constant
    service times): a request's CPU time is ``s = mean + overhead``, its p99 response time
    ``ln(100) s / (1 - rho)`` at utilisation ``rho``, so ``rho <= 1 - ln(100) s / T``; and one
    request alone must already finish in time (``p99 + overhead <= T``). Where one copy of the
    catalogue cannot, it is split in ``S`` shards: each request fans out to all of them (each
    scans ``1 / S`` of the items, ``s = mean / S + overhead``) and waits for the slowest, so
    each shard answers within ``T`` with probability ``1 - 0.01 / S`` (a union bound:
    ``ln(100 S)`` for ``ln(100)``). Returns ``(shards, cores)`` or None."""
    best = None
    shards = 1
    while shards <= max_shards:
        s = mean_ms / shards + overhead_ms
        rho = 1.0 - (LN100 + math.log(shards)) * s / target_ms
        if p99_ms / shards + overhead_ms <= target_ms and rho > 0:
            cores = math.ceil(rate * shards * s / 1e3 / rho)
            if best is None or cores < best[1]:
                best = (shards, cores)
        shards *= 2
    return best


def render(rows, meta, args) -> str:
    lines = [f"# Sizing: bytes, queries/s per core, p99 latency and replicas on {meta['cpu']} ({meta['isa']})", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['cpu']}, ISA {meta['isa']}, {meta['cores']} cores **shared with other jobs** (load "
             f"average 1/5/15 min: {meta['load_before']} before, {meta['load_after']} after), numpy {meta['numpy']}, "
             "1 search thread per configuration (per-core figures).  ",
             f"Data: {meta['data']}  ",
             "How to read and use it: [docs/sizing.md](../../docs/sizing.md). Exact rows return the exact top-50; "
             "cascade (C = 1000) and faiss-ivf (nprobe = 16) are approximate (their recall on trained codes: "
             "benchmarks/results/cascade/, ann/).", "",
             "## Measured (top-50, seen items excluded, one core)", "",
             "| items | configuration | kernel | code B / item | resident B / item | q/s per core (batch, CPU) | "
             "q/s (batch, wall) | single query CPU ms: mean / p50 / p99 | single p99 wall ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['config']} | {r['kernel'] if r['backend'] == 'exact' else r['backend']} | "
                     f"{r['code_bytes_per_item']} | {r['resident_bytes_per_item']:.1f} | {r['qps_cpu']:,.0f} | "
                     f"{r['qps_wall']:,.0f} | {r['single_cpu_mean_ms']:.3f} / {r['single_cpu_p50_ms']:.3f} / "
                     f"{r['single_cpu_p99_ms']:.3f} | {r['single_wall_p99_ms']:.2f} |")
    big = [r for r in rows if r["n_items"] == max(x["n_items"] for x in rows)]
    lines += ["", "code B / item: the stored codes (packed bit planes of 64-bit words, or float32). Resident: what the "
              "index holds per item once searched (codes plus the kernel's own layout and 1-in-16 threshold sample; "
              "int16-dot keeps the uint8 codes and int8 or int16 levels, bitplane a transposed copy of the planes, "
              "gemm the uint8 codes; faiss rows: faiss's layout, codes + 8-byte id), from the largest catalogue. "
              "Single query: one user per call (`search([u], k=50, exclude='train', threads=1)`), as a request; "
              "mean and percentiles of CPU time per call (median over the rounds); wall p99 includes waiting for a "
              "core on this shared machine.", "",
              f"## Extrapolated from the {big[0]['n_items']:,}-item row (time linear in items; memory = resident B / "
              f"item x items + {ID_BYTES}-byte ids)", "",
              "| configuration | items | memory GB | single query CPU ms: mean / p99 | q/s per core (batch) |",
              "|---|---:|---:|---:|---:|"]
    for r in big:
        for n in args.extrapolate:
            e = extrapolate(r, n)
            lines.append(f"| {r['config']} | {n:.0e} | {e['memory_gb']:,.2f} | {e['single_cpu_mean_ms']:,.2f} / "
                         f"{e['single_cpu_p99_ms']:,.2f} | {e['qps_per_core']:,.1f} |")
    lines += ["", "Exact scans are linear in the items. The approximate rows are bounds from above: IVF at 1M items "
              "costs about what it costs at 41k (a scan of 4,096 centroids and nprobe / nlist of the items, nlist = "
              "min(4096, 4 sqrt(n)) fixed from 1M items on, so the list scans grow linearly beyond, from a small "
              "base); the cascade is a 1-bit scan (linear) plus the re-ranking of C candidates (constant).", "",
              f"## Replicas at p99 <= {args.p99_ms:g} ms ({args.cores_per_replica} cores per replica, "
              f"{args.overhead_ms:g} ms serving overhead per request)", "",
              "Cores = ceil(rate x S x s / rho) with s = single-query CPU mean / S + overhead and rho = 1 - ln(100 S) "
              "s / p99 target (one M/M/1 queue per core; a request waits for the slowest of its S shards); S = "
              "catalogue shards (each request fans out to all S), the fewest cores over S = 1, 2, 4, ...; a layout is "
              "allowed only where one request's p99 (CPU p99 / S + overhead) meets the target. Replicas = ceil(cores "
              "/ cores per replica); each replica holds 1 / S of the catalogue (memory / replica: at the larger "
              "rate's S).", "",
              "| configuration | items | " + " | ".join(f"{rate:,.0f} req/s: shards, cores, replicas"
                                                       for rate in args.rates) + " | memory / replica MB |",
              "|---|---:|" + "---:|" * len(args.rates) + "---:|"]
    sized = [r for r in rows if r["n_items"] != big[0]["n_items"]] + big
    for r in sized:
        scaled = [(r["n_items"], r)] if r not in big else [(r["n_items"], r)] + [(n, None) for n in args.extrapolate]
        for n, measured in scaled:
            e = extrapolate(r, n)
            cells, shards_used = [], 1
            for rate in args.rates:
                got = plan(e["single_cpu_mean_ms"], e["single_cpu_p99_ms"], rate, args.p99_ms, args.overhead_ms)
                if got is None:
                    cells.append("not reachable")
                    continue
                shards, cores = got
                shards_used = max(shards_used, shards)
                cells.append(f"{shards}, {cores:,}, {math.ceil(cores / args.cores_per_replica):,}")
            mem = 1e3 * e["memory_gb"] / shards_used
            lines.append(f"| {r['config']} | {n:,.0f}{'' if measured else ' (extrap.)'} | " + " | ".join(cells)
                         + f" | {mem:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gowalla"))
    p.add_argument("--big", type=int, default=1_000_000, help="items of the synthetic catalogue (0: skip)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--users-small", type=int, default=2048)
    p.add_argument("--users-big", type=int, default=256)
    p.add_argument("--latency-small", type=int, default=400)
    p.add_argument("--latency-big", type=int, default=100)
    p.add_argument("--no-faiss", dest="faiss", action="store_false")
    p.add_argument("--rates", default="1000,10000")
    p.add_argument("--p99-ms", type=float, default=50.0)
    p.add_argument("--overhead-ms", type=float, default=0.55,
                   help="serving overhead per request (serve_load.md: 0.54-0.62 ms server time per 1-bit request "
                        "at 41k items, of which the search is ~0.1 ms)")
    p.add_argument("--cores-per-replica", type=int, default=4)
    p.add_argument("--extrapolate", default="1e7,1e8")
    p.add_argument("--from-json", default=None, help="reuse these measurements: only the model's tables")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = p.parse_args(argv)
    args.rates = [float(x) for x in args.rates.split(",")]
    args.extrapolate = [int(float(x)) for x in args.extrapolate.split(",")]
    if args.quick:
        args.big, args.repeat, args.users_small, args.users_big = 100_000, 1, 256, 64
        args.latency_small, args.latency_big = 50, 20
    out = Path(args.out or RESULTS / f"sizing{'-quick' if args.quick else ''}.md")
    command = " ".join(["python benchmarks/sizing.py", *(argv if argv is not None else sys.argv[1:])])
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows, meta = saved["rows"], saved["meta"]
        meta["command"] = f"{meta['command']}` (measured), then `{command}"
    else:
        meta = {"command": command, "cpu": cpu_name(), "isa": isa(), "cores": os.cpu_count(), "numpy": np.__version__,
                "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                "data": f"Gowalla shape ({os.path.relpath(args.data, ROOT)}: its train CSR excluded, the first "
                        f"{args.users_small:,} sampled users batched, {args.latency_small} single queries per round); "
                        + (f"a synthetic {args.big:,}-item catalogue (2,000 users, mean history 27 excluded, "
                           f"{args.users_big} users batched, {args.latency_big} single queries per round); "
                           if args.big else "")
                        + f"random codes, top-{args.k}, batches of {args.batch}, best (throughput) / median "
                          f"(latency) of {args.repeat} interleaved rounds."}
        rows = measure(args)
        meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    text = render(rows, meta, args)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
