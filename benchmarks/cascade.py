#!/usr/bin/env python
"""Cascade search on a trained b-bit artifact: quality and speed against the exact b-bit and 1-bit searches.

    python benchmarks/cascade.py artifacts/gowalla-hq4.hqgnn [--data ../shared/data/gowalla]
        [--candidates 100 200 300 500 1000 2000] [--k 50] [--threads 2] [--rounds 3]
        [--out benchmarks/results/cascade] [--random]

For every user of the artifact (seen items -- the artifact's train CSR -- excluded), the
``cascade`` backend (top-C by Hamming distance on the sign plane, re-ranked exactly with
the full codes) is compared, for each C, with the exact b-bit search:

* overlap@k: the share of the exact top-k that the cascade returns (and a tie-aware one
  that counts an item tied with the exact k-th score as a hit);
* Recall@k / NDCG@k on the test split (``test.txt``), with :mod:`hqgnn.evaluation`'s metric
  code, and their ratio to the exact search's;
* queries/s over all users (``--threads``, the best of ``--rounds`` interleaved rounds), the
  exact b-bit search with ``kernel="auto"`` and with the fastest exact kernel, and the exact
  1-bit search of the sign plane alone, in the same rounds.

The exact kernels (bitplane, gemm, int8-mm, int32-mm; int8-dot where the CPU has AVX-512
VNNI) are first timed on ``--kernel-users`` users to find the fastest, so the speed-up is
judged against the best exact baseline of this CPU. Writes ``cascade.md``, ``cascade.png``
and ``cascade.json`` under ``--out``; ``--random`` replaces the codes by random ones of the
same shape (a dry run while no trained artifact exists: its quality figures mean nothing).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP workers must not spin on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

from hqgnn.data import read_lightgcn_file  # noqa: E402
from hqgnn.evaluation import metrics_from_hits  # noqa: E402
from hqgnn.index import QuantizedIndex, read_artifact  # noqa: E402
from hqgnn.index.engine import default_kernel  # noqa: E402
from hqgnn.index.kernels import Int8DotKernel  # noqa: E402
from retrieval import cpu_name  # noqa: E402  (the one /proc/cpuinfo reader of the benchmarks)

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("bitplane", "gemm", "int8-mm", "int32-mm")


# ---------------------------------------------------------------- inputs
def open_indexes(args):
    """``(make, test CSR, description)``: ``make(kernel=..., backend=..., **params)`` builds an index
    over the artifact's codes (or random codes of its shape with ``--random``)."""
    art = read_artifact(args.artifact, mmap=True)
    if art.is_float:
        sys.exit(f"{args.artifact}: float32 artifact; the cascade needs b-bit codes")
    user_codes = item_codes = None
    if args.random:
        rng = np.random.default_rng(0)
        user_codes = rng.integers(0, 2**art.bits, (art.n_users, art.dim), dtype=np.uint8)
        item_codes = rng.integers(0, 2**art.bits, (art.n_items, art.dim), dtype=np.uint8)

    def make(kernel="auto", backend="exact", **params):
        if args.random:
            return QuantizedIndex.from_codes(item_codes, art.bits, user_codes=user_codes, user_ids=art.user_ids,
                                             item_ids=art.item_ids, train=(art.train_indptr, art.train_indices),
                                             kernel=kernel, backend=backend, backend_params=params)
        return QuantizedIndex.from_artifact(art, kernel=kernel, backend=backend, backend_params=params)

    base = make()
    users, items = read_lightgcn_file(Path(args.data) / "test.txt")
    rows, cols = base.user_index(users), base.item_index(items)
    test = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(base.n_users, base.n_items))
    test.sum_duplicates()
    desc = {"artifact": str(args.artifact), "model": art.model, "bits": art.bits, "dim": art.dim,
            "n_users": art.n_users, "n_items": art.n_items, "random_codes": bool(args.random)}
    return make, test, desc


def sign_index(make):
    """The exact 1-bit index of the sign plane alone: the top bit of every code."""
    ix = make()
    return QuantizedIndex.from_codes(ix.item_codes() >> (ix.bits - 1), 1, user_codes=ix.user_codes() >> (ix.bits - 1),
                                     train=ix.train, kernel="bitplane")


# ---------------------------------------------------------------- measures
def quality(items: np.ndarray, test: sp.csr_matrix, k: int) -> dict:
    """Recall@k and NDCG@k of ``(n_users, k)`` top lists against ``test``, over the users with a test item
    (:func:`hqgnn.evaluation.metrics_from_hits`)."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    it = items[users]
    n = test.shape[1]
    tr, tc = test.nonzero()
    keys = np.sort(tr.astype(np.int64) * n + tc)
    q = users[:, None].astype(np.int64) * n + np.where(it >= 0, it, 0)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    hits = (keys[pos] == q) & (it >= 0)
    n_rel = torch.from_numpy(np.diff(test.indptr)[users].astype(np.float32))
    sums = metrics_from_hits(torch.from_numpy(hits.astype(np.float32)), n_rel, [k])
    return {"recall": sums[f"recall@{k}"] / len(users), "ndcg": sums[f"ndcg@{k}"] / len(users), "users": len(users)}


def overlap(items: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top list that ``items`` holds (padding ignored)."""
    n = max(int(exact.max()), int(items.max())) + 2
    rows = np.arange(len(exact))[:, None] * n
    e = (rows + exact)[exact >= 0]
    a = (rows + items)[items >= 0]
    return float(np.isin(e, a).sum() / max(1, (exact >= 0).sum()))


def tie_aware_overlap(scores: np.ndarray, exact_scores: np.ndarray) -> float:
    """Overlap that counts any item tied with the exact k-th score as a hit (up to the number of such slots)."""
    k = exact_scores.shape[1]
    kth = exact_scores[:, k - 1:k]
    hits = (np.minimum((scores > kth).sum(1), (exact_scores > kth).sum(1))
            + np.minimum((scores == kth).sum(1), (exact_scores == kth).sum(1)))
    return float(np.mean(hits / k))


def timed(index, k: int, threads: int, users=None):
    t0 = time.perf_counter()
    res = index.search(users, k, exclude="train", threads=threads)
    return time.perf_counter() - t0, res


class CandidatesOnly:
    """Stage 1 of the cascade alone: the top-C of every user by Hamming distance on the sign plane (in blocks of
    users, results dropped): what the candidates cost before any re-ranking."""

    def __init__(self, sign, c: int):
        self.sign, self.c = sign, c

    def search(self, users, k, exclude="train", threads=None):
        n = self.sign.n_users
        for lo in range(0, n, 2048):
            self.sign.search(np.arange(lo, min(n, lo + 2048)), self.c, exclude=exclude, threads=threads)
        return None


def interleaved(methods: dict, rounds: int, fn) -> dict:
    """``{name: (best seconds, result)}``: every method once per round, rounds interleaved (the machine is
    shared: load changes fall on all methods alike)."""
    best: dict = {}
    for _ in range(rounds):
        for name, index in methods.items():
            sec, res = fn(index)
            if name not in best or sec < best[name][0]:
                best[name] = (sec, res)
    return best


def cpu_flags() -> str:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq") if f in flags) or "none"


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", nargs="?", help="the b-bit artifact (not needed with --from-json)")
    p.add_argument("--from-json", help="redraw the table and plot of an earlier run's cascade.json (no timing)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gowalla"), help="folder of test.txt")
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 300, 500, 1000, 2000, 3000, 4000])
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kernel-users", type=int, default=4096, help="users the exact kernels are first timed on")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cascade"))
    p.add_argument("--random", action="store_true", help="random codes of the artifact's shape (a dry run)")
    args = p.parse_args(argv)
    if args.from_json:
        summary = json.loads(Path(args.from_json).read_text())
        casc = [r for r in summary["rows"] if r["candidates"] is not None]
        exact_name = summary["rows"][0]["method"]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cascade.md").write_text(report(summary))
        plot(casc, summary["rows"], exact_name, out / "cascade.png", summary["data"], summary["env"])
        return 0
    if not args.artifact:
        p.error("give the artifact (or --from-json)")
    k, T = args.k, args.threads
    load_before = os.getloadavg()
    make, test, desc = open_indexes(args)
    bits = desc["bits"]
    auto = default_kernel(bits)
    kernels = KERNELS + (("int8-dot",) if Int8DotKernel.available() else ())
    print(f"{desc}; auto kernel: {auto}", flush=True)

    # 1. the exact kernels on a subset of users: which is fastest here
    sub = np.arange(min(args.kernel_users, desc["n_users"]))
    exact_ix = {kern: make(kernel=kern) for kern in kernels}
    for ix in exact_ix.values():
        ix.search(sub[:64], k, exclude="train", threads=T)  # build the kernel, compile
    kbest = interleaved(exact_ix, args.rounds, lambda ix: timed(ix, k, T, sub))
    kernel_qps = {kern: len(sub) / sec for kern, (sec, _) in kbest.items()}
    ref = kbest[kernels[0]][1]
    for kern, (_, res) in kbest.items():  # every exact kernel gives the same answer
        assert np.array_equal(res.items, ref.items) and np.array_equal(res.raw_scores, ref.raw_scores), kern
    fastest = max(kernel_qps, key=kernel_qps.get)
    print("exact kernels (q/s, subset):", {kk: round(v) for kk, v in kernel_qps.items()}, "fastest:", fastest,
          flush=True)

    # 2. every user: exact (auto, fastest), exact 1-bit of the sign plane, cascade at each C
    methods = {f"exact {bits}-bit ({fastest})": exact_ix[fastest]}
    if auto != fastest:
        methods[f"exact {bits}-bit ({auto}, auto)"] = exact_ix[auto]
    sign = methods["exact 1-bit sign plane (bitplane)"] = sign_index(make)
    for c in args.candidates:
        methods[f"cascade C={c}"] = make(backend="cascade", candidates=c)
        methods[f"stage 1 C={c}"] = CandidatesOnly(sign, c)
    for ix in methods.values():
        ix.search(np.arange(64), k, exclude="train", threads=T)  # warm: kernels built, numba compiled
    best = interleaved(methods, args.rounds, lambda ix: timed(ix, k, T))
    load_after = os.getloadavg()
    n = desc["n_users"]
    exact_name = f"exact {bits}-bit ({fastest})"
    exact = best[exact_name][1]
    exact_q = quality(exact.items, test, k)
    rows = []
    stage1 = {int(name.split("=")[1]): n / sec for name, (sec, _) in best.items() if name.startswith("stage 1")}
    for name, (sec, res) in best.items():
        if res is None:
            continue
        q = quality(res.items, test, k)
        rows.append({"method": name, "candidates": int(name.split("=")[1]) if "C=" in name else None,
                     "overlap": overlap(res.items, exact.items), "tie_overlap": tie_aware_overlap(
                         res.raw_scores, exact.raw_scores) if "sign" not in name else None,
                     "recall": q["recall"], "ndcg": q["ndcg"], "recall_ratio": q["recall"] / exact_q["recall"],
                     "ndcg_ratio": q["ndcg"] / exact_q["ndcg"], "qps": n / sec, "seconds": sec})
        if rows[-1]["candidates"] is not None:
            rows[-1]["stage1_qps"] = stage1[rows[-1]["candidates"]]
    exact_qps = n / best[exact_name][0]
    auto_qps = n / best[f"exact {bits}-bit ({auto}, auto)"][0] if auto != fastest else exact_qps
    for r in rows:
        r["speedup"] = r["qps"] / exact_qps
        r["speedup_auto"] = r["qps"] / auto_qps
        if "stage1_qps" in r:
            r["stage1_speedup"] = r["stage1_qps"] / exact_qps
    casc = [r for r in rows if r["candidates"] is not None]
    met = [r for r in casc if r["recall_ratio"] >= 0.99 and r["speedup"] >= 2.0]
    env = {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(), "threads": T,
           "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
           "numpy": np.__version__, "torch": torch.__version__, "auto_kernel": auto, "fastest_kernel": fastest,
           "kernel_qps_subset": {kk: round(v) for kk, v in kernel_qps.items()}, "kernel_users": len(sub),
           "rounds": args.rounds, "k": k, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python benchmarks/cascade.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"env": env, "data": desc, "exact": exact_q, "rows": rows,
               "goal_met_at": [r["candidates"] for r in met]}
    (out / "cascade.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "cascade.md").write_text(report(summary))
    plot(casc, rows, exact_name, out / "cascade.png", desc, env)
    print(report(summary))
    print(json.dumps({"goal_met_at": summary["goal_met_at"], "fastest_kernel": fastest, "auto": auto}))
    return 0


def report(s: dict) -> str:
    env, d, rows, k = s["env"], s["data"], s["rows"], s["env"]["k"]
    pct = lambda x: "" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [
        f"# Cascade search: sign-plane candidates, exact {d['bits']}-bit re-ranking",
        "",
        f"`{env['command']}`",
        "",
        f"* artifact: `{d['artifact']}` ({d['model']}, {d['bits']} bits, d = {d['dim']}, {d['n_users']:,} users, "
        f"{d['n_items']:,} items){' -- RANDOM CODES: quality figures are meaningless' if d['random_codes'] else ''}",
        f"* CPU: {env['cpu']} ({env['cores']} cores; {env['flags']}); {env['threads']} search threads; "
        f"load average before {env['load_before']}, after {env['load_after']} (a shared machine); {env['date']}",
        f"* queries/s: all {d['n_users']:,} users, top-{k}, seen items excluded, best of {env['rounds']} "
        "interleaved rounds (every method once per round)",
        f"* exact kernels on {env['kernel_users']:,} users (q/s): "
        + ", ".join(f"{kk} {v:,}" for kk, v in env["kernel_qps_subset"].items())
        + f"; `kernel=\"auto\"` picks **{env['auto_kernel']}** here, the fastest is **{env['fastest_kernel']}**: "
          "the speed-up column is against the fastest",
        f"* Recall@{k} / NDCG@{k}: test split, {s['exact']['users']:,} users with a test item, "
        "`hqgnn.evaluation.metrics_from_hits`; ratios (/ exact) against the exact search",
        "* speed-up: queries/s over the fastest exact kernel's; vs auto: over `kernel=\"auto\"`'s; stage 1 alone: "
        "queries/s of the sign-plane top-C search by itself (the candidates, no re-ranking) and its speed-up: "
        "what bounds the cascade's",
        "",
        f"| method | overlap@{k} | tie-aware | Recall@{k} | / exact | NDCG@{k} | / exact | queries/s | speed-up "
        "| vs auto | stage 1 alone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {pct(r['overlap'])} | {pct(r['tie_overlap'])} | {r['recall']:.4f} | "
                     f"{pct(r['recall_ratio'])} | {r['ndcg']:.4f} | {pct(r['ndcg_ratio'])} | {r['qps']:,.0f} | "
                     f"{r['speedup']:.2f}x | {r['speedup_auto']:.2f}x | "
                     + (f"{r['stage1_qps']:,.0f} ({r['stage1_speedup']:.2f}x) |" if "stage1_qps" in r else " |"))
    met = s["goal_met_at"]
    lines += ["", f"Goal (at least 99% of the exact Recall@{k} at no less than 2x its queries/s, against the "
                  f"fastest exact kernel): " + (f"**met** at C = {', '.join(map(str, met))}." if met else
                                                "**not met** at any C measured."), ""]
    return "\n".join(lines)


def plot(casc, rows, exact_name, path: Path, desc, env) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["candidates"] for r in casc]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(c, [100 * r["recall_ratio"] for r in casc], "o-", color="C0", label=f"Recall@{env['k']} / exact")
    ax.plot(c, [100 * r["overlap"] for r in casc], "s--", color="C2", label=f"overlap@{env['k']} with exact")
    ax.axhline(99, color="C0", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks(c)
    ax.set_xticklabels([str(x) for x in c])
    ax.minorticks_off()
    ax.set_xlabel("candidates C (sign-plane Hamming top-C)")
    ax.set_ylabel("% of exact")
    ax2 = ax.twinx()
    ax2.plot(c, [r["speedup"] for r in casc], "^-", color="C3", label=f"speed-up over {exact_name}")
    if all("stage1_speedup" in r for r in casc):
        ax2.plot(c, [r["stage1_speedup"] for r in casc], "v:", color="C1", label="speed-up of stage 1 alone")
    one_bit = next((r for r in rows if "sign plane" in r["method"]), None)
    if one_bit is not None:
        ax2.axhline(one_bit["speedup"], color="C3", lw=0.8, ls="--",
                    label=f"exact 1-bit sign plane ({one_bit['speedup']:.1f}x, Recall {100 * one_bit['recall_ratio']:.0f}%)")
    ax2.axhline(2.0, color="C3", lw=0.8, ls=":", label="goal: 2x (right), 99% (left)")
    ax2.set_ylabel("speed-up over exact")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower center")
    ax.set_title(f"Cascade on {Path(desc['artifact']).name} ({desc['bits']} bits), {env['threads']} threads",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
