#!/usr/bin/env python
"""Approximate 1-bit retrieval on trained codes: faiss binary IVF / HNSW swept against exact search.

    python benchmarks/ann.py --artifact artifacts/gowalla-hq1.hqgnn [--data ../shared/data/gowalla]
                             [--threads 2] [--big-items 1000000 --big-users 5000] [--quick]

Two catalogues, each searched top-``k`` (50) for every query user with the seen items
excluded, on the same queries and thread count:

* a **trained** 1-bit artifact (``--artifact``; without it, random codes of the data's
  shape, for debugging only): recall@k of each setting against the exact 1-bit top-k
  (overlap / k, mean over users; and tie-aware, which counts an item tied with the exact
  k-th score as a hit), the end Recall@k / NDCG@k on ``test.txt`` of ``--data``
  (:func:`hqgnn.evaluation.metrics_from_hits`, the users with a test item), queries/s
  over all users;
* a **synthetic** catalogue (``--big-items`` random 1-bit codes of d = 64, ``--big-users``
  query users with random histories of mean 27): recall against exact and queries/s
  (no end metrics: no ground truth).

Backends: ``exact`` (the bit-plane kernel) and ``faiss-flat`` as references, ``faiss-ivf``
over ``--nprobe`` (nlist as :mod:`hqgnn.index.backends.faiss` sets it), ``faiss-hnsw`` over
``--ef-search`` (M and efConstruction as the backend sets them). Every row the backend
returns is full (``min(k, eligible items)``): rows the approximate search leaves short are
searched again with widened parameters, then exactly; the table counts those rows, since
widening fills lists but costs time. Writes ``benchmarks/results/ann/ann.md``, ``ann.png``
(recall@k against queries/s, one line per backend, both catalogues) and ``ann.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/retrieval.py

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import cpu_name, synthetic_train, tie_aware_recall  # noqa: E402

from hqgnn.data import load_lightgcn_folder  # noqa: E402
from hqgnn.evaluation import metrics_from_hits  # noqa: E402
from hqgnn.index import QuantizedIndex  # noqa: E402
from hqgnn.index.backends import faiss as fb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "results" / "ann"


# ---------------------------------------------------------------- widening counts
class Widening:
    """Counts, while active, what the faiss backend searched: rows per round of each ``search`` call
    (round 1: every query; later rounds: the rows left short, widened) and rows searched exactly."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.exact_rows = 0

    @contextlib.contextmanager
    def active(self):
        search, search_rows, exact = fb.search, fb._search_rows, fb.search_topk

        def counted_search(*a, **kw):
            self.calls.append([])
            return search(*a, **kw)

        def counted_rows(ix, index, xq, rows, *a, **kw):
            self.calls[-1].append(len(rows))
            return search_rows(ix, index, xq, rows, *a, **kw)

        def counted_exact(kernel, q, *a, **kw):
            self.exact_rows += q.shape[1] if q.ndim == 3 else q.shape[0]
            return exact(kernel, q, *a, **kw)

        fb.search, fb._search_rows, fb.search_topk = counted_search, counted_rows, counted_exact
        try:
            yield self
        finally:
            fb.search, fb._search_rows, fb.search_topk = search, search_rows, exact

    def summary(self) -> dict:
        widened = [r for call in self.calls for r in call[1:]]
        return {"widened_users": int(sum(call[1] for call in self.calls if len(call) > 1)),
                "widened_row_searches": int(sum(widened)),
                "max_rounds": int(max((len(c) for c in self.calls), default=0)),
                "exact_rows": int(self.exact_rows)}


# ---------------------------------------------------------------- measuring
def run_all(index, rows, k, batch, threads):
    """All ``rows`` in batches of ``batch`` users (a serving loop); returns (seconds, items, scores, widening)."""
    counter = Widening()
    items, scores = [], []
    with counter.active():
        t0 = time.perf_counter()
        for lo in range(0, len(rows), batch):  # loop over query batches
            it, sc = index.search(rows[lo:lo + batch], k, exclude="train", threads=threads)
            items.append(it)
            scores.append(sc)
        seconds = time.perf_counter() - t0
    return seconds, np.concatenate(items), np.concatenate(scores), counter.summary()


def overlap_recall(items, exact_items, n_items: int) -> float:
    """|approx top-k ∩ exact top-k| / k, mean over rows (padding -1 never counts)."""
    k = exact_items.shape[1]
    r = np.arange(len(items))[:, None]
    a = np.where(items >= 0, r * n_items + items, -1).ravel()
    e = np.where(exact_items >= 0, r * n_items + exact_items, -2).ravel()
    hit = np.isin(a, e).reshape(items.shape)
    return float(hit.sum(1).mean() / k)


def end_metrics(items, rows, test: sp.csr_matrix, user_ids, item_ids, k: int) -> dict:
    """Recall@k / NDCG@k of the top-k lists on the test split (users with a test item), by the evaluation code."""
    data_users = np.asarray(user_ids)[rows].astype(np.int64)
    keep = np.diff(test.indptr)[data_users] > 0
    items, data_users = items[keep], data_users[keep]
    data_items = np.where(items >= 0, np.asarray(item_ids)[np.maximum(items, 0)].astype(np.int64), -1)
    rel = test[data_users]
    hits = np.asarray(rel[np.arange(len(data_users))[:, None], np.maximum(data_items, 0)].todense()) > 0
    hits &= data_items >= 0
    n_rel = torch.from_numpy(np.diff(rel.indptr).astype(np.float32))
    sums = metrics_from_hits(torch.from_numpy(hits), n_rel, [k])
    return {"recall": sums[f"recall@{k}"] / len(data_users), "ndcg": sums[f"ndcg@{k}"] / len(data_users),
            "users": int(len(data_users))}


def sweep(base: QuantizedIndex, rows, args, label: str, test=None) -> list[dict]:
    """Exact, faiss-flat, faiss-ivf over nprobe, faiss-hnsw over efSearch on ``base``'s codes; one dict per row."""
    k, threads = args.k, args.threads
    settings = [("exact", {}, None), ("faiss-flat", {}, None)]
    settings += [("faiss-ivf", {"nprobe": p}, "nprobe") for p in args.nprobe]
    settings += [("faiss-hnsw", {"efSearch": e}, "efSearch") for e in args.ef_search]
    indexes, builds = {}, {}
    for backend in dict.fromkeys(s[0] for s in settings):  # one index (one faiss build) per backend
        ix = QuantizedIndex(None, 1, user_ids=base.user_map.ids, item_ids=base.item_map.ids, train=base.train,
                            _planes=(base.item_planes, base.user_planes, base.dim), backend=backend,
                            kernel="bitplane", backend_params={})
        t0 = time.perf_counter()
        if backend != "exact":
            fb.index_of(ix)
        builds[backend] = time.perf_counter() - t0
        indexes[backend] = ix
        print(f"  [{label}] built {backend} in {builds[backend]:.1f} s (load {os.getloadavg()[0]:.1f})",
              file=sys.stderr, flush=True)
        ix.search(rows[:64], k, exclude="train", threads=threads)  # warm up (numba compile, faiss pools)
    ivf, hnsw = fb.index_of(indexes["faiss-ivf"]), fb.index_of(indexes["faiss-hnsw"])
    structure = {"nlist": int(ivf.nlist), "M": int(hnsw.hnsw.nb_neighbors(1)),
                 "efConstruction": int(hnsw.hnsw.efConstruction)}
    out, exact = {}, None
    for rnd in range(args.repeat):
        for backend, params, name in settings:
            ix = indexes[backend]
            ix.backend_params = dict(params)
            seconds, items, scores, widening = run_all(ix, rows, k, args.batch, threads)
            key = (backend, tuple(params.items()))
            if backend == "exact" and exact is None:
                exact = (items, scores)
            if key not in out or seconds < out[key]["seconds"]:
                row = {"catalogue": label, "backend": backend, "param": name, "value": params.get(name),
                       "seconds": seconds, "qps": len(rows) / seconds, "build_s": builds[backend], **widening}
                if rnd == 0 or key not in out:
                    row["recall"] = overlap_recall(items, exact[0], base.n_items)
                    row["recall_ties"] = tie_aware_recall(scores, exact[1], k)
                    if test is not None:
                        m = end_metrics(items, rows, test, base.user_map.ids, base.item_map.ids, k)
                        row.update(end_recall=m["recall"], end_ndcg=m["ndcg"], eval_users=m["users"])
                else:
                    row.update({f: out[key][f] for f in ("recall", "recall_ties", "end_recall", "end_ndcg",
                                                          "eval_users") if f in out[key]})
                out[key] = row
            r = out[key]
            print(f"  [{label} round {rnd + 1}] {backend:10s} {str(params):18s} {len(rows) / seconds:9.0f} q/s "
                  f"recall {r['recall']:.4f} (ties {r['recall_ties']:.4f})"
                  + (f" end R@{k} {r['end_recall']:.4f}" if "end_recall" in r else "")
                  + f" widened {widening['widened_users']} exact {widening['exact_rows']}"
                  f" (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    rows_out = [out[(b, tuple(p.items()))] for b, p, _ in settings]
    for r in rows_out:
        r.update(structure)
    return rows_out


# ---------------------------------------------------------------- catalogues
def trained_index(args):
    """The trained artifact (or random codes of the data's shape) and the test split."""
    data = load_lightgcn_folder(Path(args.data))
    if args.artifact:
        index = QuantizedIndex.from_artifact(args.artifact, bits=1)
        return index, data.test, f"trained `{os.path.relpath(args.artifact, ROOT)}`"
    rng = np.random.default_rng(0)
    n_users, n_items = data.train.shape
    index = QuantizedIndex.from_codes(rng.integers(0, 2, (n_items, 64), dtype=np.uint8), 1,
                                      user_codes=rng.integers(0, 2, (n_users, 64), dtype=np.uint8), train=data.train)
    return index, data.test, "RANDOM codes of the data's shape (debugging only: no --artifact)"


def big_index(args):
    rng = np.random.default_rng(2)
    train = synthetic_train(args.big_users, args.big_items, 27, seed=1)
    return QuantizedIndex.from_codes(rng.integers(0, 2, (args.big_items, 64), dtype=np.uint8), 1,
                                     user_codes=rng.integers(0, 2, (args.big_users, 64), dtype=np.uint8), train=train)


# ---------------------------------------------------------------- report
def plot(rows, path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(dict.fromkeys(r["catalogue"] for r in rows))
    fig, axes = plt.subplots(1, len(cats), figsize=(6.2 * len(cats), 4.6), squeeze=False)
    style = {"faiss-ivf": ("tab:blue", "o-"), "faiss-hnsw": ("tab:orange", "s-"),
             "faiss-flat": ("tab:green", "D"), "exact": ("black", "*")}
    for ax, cat in zip(axes[0], cats):
        for backend, (color, fmt) in style.items():
            pts = [r for r in rows if r["catalogue"] == cat and r["backend"] == backend]
            if not pts:
                continue
            x, y = [r["qps"] for r in pts], [r["recall"] for r in pts]
            ax.plot(x, y, fmt, color=color, label=backend, markersize=8 if backend == "exact" else 5)
            groups: dict = {}  # settings with the same recall (efSearch raised to the over-fetch): one label
            for r in pts:
                if r["param"]:
                    groups.setdefault(round(r["recall"], 2), []).append(r)
            for same in groups.values():
                ax.annotate("/".join(str(r["value"]) for r in same), (min(r["qps"] for r in same), same[0]["recall"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("queries/s (all query users, log scale)")
        ax.set_ylabel(f"recall@{k} vs exact 1-bit top-{k} (overlap / {k})")
        ax.set_title(cat, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"faiss binary IVF (labels: nprobe) and HNSW (labels: efSearch), top-{k}, seen items excluded",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def md_table(rows, k: int, end: bool) -> list[str]:
    head = ["backend", "setting", "queries/s", f"recall@{k} vs exact", "tie-aware"]
    head += [f"Recall@{k} (test)", f"NDCG@{k} (test)"] if end else []
    head += ["rows widened", "widened row-searches", "max rounds", "rows searched exactly", "build s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        setting = f"{r['param']}={r['value']}" if r["param"] else "-"
        cells = [r["backend"], setting, f"{r['qps']:,.0f}", f"{r['recall']:.4f}", f"{r['recall_ties']:.4f}"]
        if end:
            cells += [f"{r['end_recall']:.4f}", f"{r['end_ndcg']:.4f}"]
        widened = r["backend"].startswith("faiss")
        cells += [f"{r['widened_users']:,}" if widened else "-", f"{r['widened_row_searches']:,}" if widened else "-",
                  str(r["max_rounds"]) if widened else "-", f"{r['exact_rows']:,}" if widened else "-",
                  f"{r['build_s']:.1f}" if r["backend"] != "exact" else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", default=None, help="a 1-bit .hqgnn artifact (default: random codes, debugging)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gowalla"))
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds; each setting's fastest counts")
    p.add_argument("--users", type=int, default=0, help="query users of the trained catalogue (default: all)")
    p.add_argument("--nprobe", default="1,2,4,8,16,32,64")
    p.add_argument("--ef-search", default="16,32,64,128,256")
    p.add_argument("--big-items", type=int, default=1_000_000)
    p.add_argument("--big-users", type=int, default=5000)
    p.add_argument("--out-dir", default=str(OUT_DIR))
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--plot-only", action="store_true", help="redraw ann.png from the out-dir's ann.json")
    args = p.parse_args(argv)
    if args.plot_only:
        saved = json.loads((Path(args.out_dir) / "ann.json").read_text())
        plot(saved["rows"], Path(args.out_dir) / "ann.png", args.k)
        return 0
    if args.quick:
        args.users, args.big_items, args.big_users = args.users or 2048, 50_000, 500
        if args.out_dir == str(OUT_DIR):
            args.out_dir = str(OUT_DIR / "quick")
    args.nprobe = [int(x) for x in args.nprobe.split(",")]
    args.ef_search = [int(x) for x in args.ef_search.split(",")]
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    command = " ".join(["python benchmarks/ann.py", *(argv if argv is not None else sys.argv[1:])])
    load = {"before": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    t_start = time.perf_counter()

    index, test, what = trained_index(args)
    rows = np.arange(index.n_users) if not args.users else np.arange(min(args.users, index.n_users))
    print(f"{what}: {index.n_users} users x {index.n_items} items, {len(rows)} queries", file=sys.stderr)
    trained_label = f"{'trained' if args.artifact else 'random'} 1-bit, {index.n_users:,} x {index.n_items:,}"
    trained_rows = sweep(index, rows, args, trained_label, test)
    load["after trained"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    big_rows = []
    if args.big_items:
        big = big_index(args)
        big_label = f"synthetic random 1-bit, {args.big_users:,} x {args.big_items:,}"
        big_rows = sweep(big, np.arange(big.n_users), args, big_label)
        load["after synthetic"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    total = time.perf_counter() - t_start

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(trained_rows + big_rows, out_dir / "ann.png", args.k)
    s = trained_rows[0]
    meta = index.extra
    lines = [
        "# Approximate 1-bit retrieval: faiss binary IVF / HNSW against exact search",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, shared (load average, 1/5/15 min: "
        + "; ".join(f"{k} {v}" for k, v in load.items()) + f"); threads={args.threads}, "
        f"faiss {faiss.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"whole script {total / 60:.1f} min.  ",
        f"Queries: every query user, top-{args.k}, seen items excluded, batches of {args.batch} users, "
        f"best of {args.repeat} round(s). Structure as the backend builds it: faiss-ivf nlist = "
        f"min(4096, 4 sqrt(n_items), n_items / 39) = {s['nlist']} on the trained catalogue"
        + (f", {big_rows[0]['nlist']} on the synthetic one" if big_rows else "")
        + f"; faiss-hnsw M = {s['M']}, efConstruction = {s['efConstruction']}. faiss knows no exclusion: the backend "
        f"over-fetches k + seen count per user, in batches of users whose over-fetch is within a factor "
        f"{fb.FETCH_SPREAD} (`FETCH_SPREAD`), and searches HNSW with max(efSearch, the batch's over-fetch): an "
        f"efSearch below k + seen count (>= {args.k}) is raised to it, so the smallest efSearch values search alike.",
        "",
        f"recall@{args.k} vs exact: |approximate top-{args.k} ∩ exact 1-bit top-{args.k}| / {args.k}, mean over "
        f"users; with 1-bit codes (integer scores in -64..64) many items tie at the {args.k}-th score and the exact "
        "list keeps the lowest item indices among them, so *tie-aware* also counts an item tied with the exact "
        f"{args.k}-th score as a hit. Rows widened: users whose row the first search left short of "
        f"min({args.k}, eligible items), searched again with nprobe / efSearch doubled (widened row-searches: "
        "all such repeat searches, max rounds: the most rounds one batch took); rows searched exactly: "
        "still short at the widest setting.",
        "",
        f"## {what}: {index.n_users:,} users x {index.n_items:,} items"
        + (f" (model {index.model})" if index.model else ""),
        "",
        f"End metrics: `{os.path.relpath(args.data, ROOT)}/test.txt`, the {s.get('eval_users', 0):,} users with a "
        "test item, seen (training) items excluded, by `hqgnn.evaluation.metrics_from_hits`.",
        "",
    ]
    lines += md_table(trained_rows, args.k, end=True)
    run_dir = (meta or {}).get("run_dir")
    run_metrics = (ROOT / str(run_dir) / "metrics.json") if args.artifact and run_dir else None
    if run_metrics is not None and run_metrics.is_file():
        m = json.loads(run_metrics.read_text())
        lines += ["", f"Check: the run's own evaluation (`{os.path.relpath(run_metrics, ROOT)}`, split "
                  f"{m.get('split')}, {int(m.get('test_users', 0)):,} users): "
                  f"Recall@{args.k} {m.get(f'recall@{args.k}', float('nan')):.4f}, "
                  f"NDCG@{args.k} {m.get(f'ndcg@{args.k}', float('nan')):.4f} -- to compare with the exact row."]
    if big_rows:
        lines += ["", f"## Synthetic catalogue: random 1-bit codes, d = 64, {args.big_items:,} items, "
                  f"{args.big_users:,} query users (random histories, mean 27)", "",
                  "No end metrics (no ground truth). Random codes have no cluster or neighbourhood structure: "
                  "a pessimistic bound for IVF and HNSW.", ""]
        lines += md_table(big_rows, args.k, end=False)
    lines += ["", f"![recall@{args.k} against queries/s](ann.png)", ""]
    text = "\n".join(lines)
    (out_dir / "ann.md").write_text(text)
    (out_dir / "ann.json").write_text(json.dumps({"command": command, "cpu": cpu_name(), "load": load,
                                                  "model_extra": {k: str(v) for k, v in (meta or {}).items()},
                                                  "rows": trained_rows + big_rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
