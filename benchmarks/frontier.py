#!/usr/bin/env python
"""The bits x dimensions frontier (issue 20): frontier.json, summary.md and the plot, from the runs.

    hqgnn experiment experiments/frontier-ml-1m.yaml --jobs 2      # the runs (resumable)
    python benchmarks/frontier.py [--experiment experiments/frontier-ml-1m.yaml]
                                  [--out benchmarks/results/frontier] [--threads 1] [--repeat 10]
                                  [--no-timing] [--no-package]
                                  [--import CSV:LABEL[,LABEL...]] [--time-with LABEL=RUN]
    python benchmarks/frontier.py --experiment experiments/frontier-gowalla.yaml \
        --out benchmarks/results/frontier-gowalla \
        --import benchmarks/results/gowalla-seeds/results.csv:hqgnn-L2,lightgcn-L2 \
        --time-with hqgnn-L2=runs/gowalla-hq1

Every point of the grid (model x bits x dim) was screened at seed 1 over a few learning rate x
weight decay settings (the experiment's cells ``NAME``, ``NAME-lr.1``, ``NAME-wd1e-4``): the
pick is the setting with the best **validation** Recall@50 (the best validation epoch's, as the
trainer selects it), and the point's row is the mean test metrics of the pick's seeds.
``ratio_to_float`` is its Recall@50 over float LightGCN's at 64 dims (the reference).
A data set without a validation split (Gowalla's protocol: test only monitored, the last epoch
reported) has no screen: one setting per point (a second one is refused), untuned, and the
summary says so.

``--import CSV:LABEL[,LABEL...]`` adds the rows of models of another experiment's
``results.csv`` trained with the same config and seed numbers (Gowalla's 1 bit x 64 and float
LightGCN x 64 of experiments/gowalla-seeds.yaml), paired by seed like the others; see
``benchmarks/frontier_rows.py``. Such a row has no run folder to time: ``--time-with LABEL=RUN``
times the index of RUN instead, a run of the same code on the same data (checked), and the
table marks it; without one its queries/s is left empty.

queries/s: the seed-1 run of each pick, exported (``hqgnn export``), timed in this one process
side by side: exact top-50 of every user, seen items (training + validation) excluded, through
the package's index (``open_index(...).search``) in blocks of 2,048 users, ``--threads``
threads, best of ``--repeat`` rounds, the points interleaved within each round so that the
machine's load falls on all of them alike. ``--no-timing`` keeps the queries/s of the existing
``frontier.json``.

Writes ``OUT/frontier.json`` (one row per point: dataset, model, bits, dim, bytes_per_item,
recall@50, ndcg@50, ratio_to_float, queries_per_s, seeds, lr, weight_decay, layers, and the
screen), ``OUT/summary.md`` (the table, the screen and paired tests) and ``OUT/frontier.png``
(Recall@50 against bytes per item, one line per bit width and float), and copies
``frontier.json``'s rows into ``src/hqgnn/default_configs/frontier.json``, the table that
``hqgnn train --budget-bytes N`` reads, in place of this data set's rows there, the other data
sets' kept (``--no-package``: not).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/retrieval.py: fair to shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from hqgnn.config import FULL_PRECISION_MODELS  # noqa: E402
from hqgnn.experiment import cell_config, expand_cells, load_experiment, paired_test, seed_std  # noqa: E402
from hqgnn.frontier import DATASET_NAMES  # noqa: E402
from frontier_rows import import_rows, n_users_of, package_doc, spec_config, time_with  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRIC = "recall@50"
K = 50
#: float LightGCN x 64 at 3 layers (mean of 3 seeds, Recall@50) and where it was measured: a second,
#: stricter reference than the grid's own 2-layer float
FLOAT_3_LAYERS = {"ml-1m": (0.3899, "experiments/ml-1m-bits.yaml"), "gowalla": (0.2778, "experiments/gowalla.yaml")}


# ---------------------------------------------------------------- the runs
def validation_best(run_dir: Path, metric: str = METRIC) -> float:
    """The best validation ``metric`` of a run (what the trainer selected its epoch by)."""
    best = -1.0
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("split") == "valid" and metric in e:
            best = max(best, float(e[metric]))
    return best


def gather(spec: dict, out: Path) -> list[dict]:
    """One entry per point (dataset, model, bits, dim) with its screen and its pick's runs."""
    points: dict = {}
    for cell in expand_cells(spec):
        run = cell.run_dir(out)
        cfg = cell_config(cell, out)
        full = cell.model in FULL_PRECISION_MODELS
        key = (cell.dataset, cell.model, 32 if full else int(cfg.bits), int(cfg.dim))
        p = points.setdefault(key, {"dataset": key[0], "model": key[1], "bits": key[2], "dim": key[3],
                                    "layers": int(cfg.layers), "combos": {}, "valid": cfg.val_fraction > 0})
        combo = p["combos"].setdefault((float(cfg.lr), float(cfg.weight_decay)), {"label": cell.label, "runs": {}})
        for f in sorted(run.parent.glob("seed*/metrics.json")):  # every finished seed of the cell's settings
            combo["runs"][int(f.parent.name[4:])] = {"dir": f.parent, "metrics": json.loads(f.read_text())}
    rows = []
    for p in points.values():
        if not p["valid"] and len(p["combos"]) > 1:
            raise SystemExit(f"{code_name(p)} of {p['dataset']}: {len(p['combos'])} settings but no validation split to pick one by")
        screen = []
        for (lr, wd), combo in p["combos"].items():
            if 1 in combo["runs"] and not p["valid"]:  # no validation split: no screen, the one setting
                screen.append({"label": combo["label"], "lr": lr, "weight_decay": wd, "valid_recall@50": 0.0})
            elif 1 in combo["runs"]:
                screen.append({"label": combo["label"], "lr": lr, "weight_decay": wd,
                               "valid_recall@50": validation_best(combo["runs"][1]["dir"]),
                               "test_recall@50": combo["runs"][1]["metrics"][METRIC]})
        if len(screen) < len(p["combos"]):  # a point is reported once its whole screen has run
            continue
        best = max(screen, key=lambda s: s["valid_recall@50"])
        runs = p["combos"][(best["lr"], best["weight_decay"])]["runs"]
        seeds = sorted(runs)
        m = {k: [runs[s]["metrics"][k] for s in seeds] for k in (METRIC, "ndcg@50")}
        bytes_per_item = p["dim"] * 4 if p["bits"] == 32 else p["bits"] * p["dim"] / 8
        rows.append({"dataset": p["dataset"], "model": p["model"], "bits": p["bits"], "dim": p["dim"],
                     "bytes_per_item": int(bytes_per_item) if float(bytes_per_item).is_integer() else bytes_per_item,
                     "recall@50": float(np.mean(m[METRIC])), "recall@50_std": seed_std(m[METRIC]),
                     "ndcg@50": float(np.mean(m["ndcg@50"])), "ndcg@50_std": seed_std(m["ndcg@50"]),
                     "ratio_to_float": None, "queries_per_s": None, "seeds": seeds,
                     "per_seed": {"recall@50": m[METRIC], "ndcg@50": m["ndcg@50"]},
                     "lr": best["lr"], "weight_decay": best["weight_decay"], "layers": p["layers"],
                     "screen": sorted(screen, key=lambda s: (s["lr"], s["weight_decay"])) if p["valid"] else [],
                     "_run": runs[seeds[0]]["dir"]})
    return rows


def set_ratios(rows: list[dict]) -> None:
    """Sorts the rows and sets each one's ratios to its data set's float reference."""
    rows.sort(key=lambda r: (r["dataset"], r["model"] in FULL_PRECISION_MODELS, r["bits"], r["bytes_per_item"]))
    for r in rows:
        ref = reference(rows, r["dataset"])
        if ref is not None:
            r["ratio_to_float"] = r["recall@50"] / ref["recall@50"]
            r["ndcg_ratio_to_float"] = r["ndcg@50"] / ref["ndcg@50"]


def reference(rows: list[dict], dataset: str):
    """Float LightGCN at 64 dims of ``dataset`` (None if not run)."""
    return next((r for r in rows if r["dataset"] == dataset and r["model"] in FULL_PRECISION_MODELS
                 and r["dim"] == 64), None)


# ---------------------------------------------------------------- timing
def time_points(rows: list[dict], threads: int, repeat: int, batch: int = 2048) -> str:
    """Sets each row's ``queries_per_s`` (see the module docstring); returns the index kernels used."""
    from hqgnn.export import export_run
    from hqgnn.index.engine import open_index

    with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:
        indexes = []
        for i, r in enumerate(r for r in rows if r["_run"] is not None):
            path = Path(tmp) / f"point{i}.hqgnn"
            export_run(r["_run"], path)
            ix = open_index(path)
            users = np.arange(ix.n_users)
            ix.search(users[:256], K, exclude="train", threads=threads)  # warm-up: kernels, caches
            indexes.append((r, ix, users))
        best = {id(r): float("inf") for r, _, _ in indexes}
        for _ in range(repeat):
            for r, ix, users in indexes:
                start = time.perf_counter()
                for lo in range(0, len(users), batch):
                    ix.search(users[lo:lo + batch], K, exclude="train", threads=threads)
                best[id(r)] = min(best[id(r)], time.perf_counter() - start)
        kernels = {}
        for r, ix, users in indexes:
            r["queries_per_s"] = round(len(users) / best[id(r)])
            r["n_users"] = int(ix.n_users)
            kernels[f"{r['bits']}"] = getattr(ix, "kernel_name", "sgemm")
    return ", ".join(f"{'float32' if b == '32' else b + '-bit'}: {k}" for b, k in sorted(kernels.items(), key=lambda x: int(x[0])))


# ---------------------------------------------------------------- report
def code_name(r: dict) -> str:
    if r["model"] in FULL_PRECISION_MODELS:
        return f"float32 x {r['dim']}"
    return f"{r['bits']} bit{'s' if r['bits'] > 1 else ''} x {r['dim']}"


def paired(a: dict, b: dict) -> dict:
    """Paired (by seed) comparison of two rows: gains of the means and t-test p-values."""
    seeds = [s for s in a["seeds"] if s in b["seeds"]]
    out = {"a": code_name(a), "b": code_name(b), "seeds": seeds}
    for m in (METRIC, "ndcg@50"):
        x = [a["per_seed"][m][a["seeds"].index(s)] for s in seeds]
        y = [b["per_seed"][m][b["seeds"].index(s)] for s in seeds]
        p = paired_test(x, y)
        out[m] = {"a": float(np.mean(x)), "b": float(np.mean(y)), "gain": float(np.mean(x) / np.mean(y) - 1),
                  "p": None if np.isnan(p) else p}
    return out


def tests(rows: list[dict], planned: set = frozenset()) -> list[dict]:
    """The best code of each budget against the 1-bit code of as many bytes (where the grid
    ``planned``, its (bits, dim), has none: against the largest measured 1-bit code below, and
    the test says so), and each code against float LightGCN of its own dims (quantization's cost
    apart from fewer dims)."""
    out = []
    codes = [r for r in rows if r["model"] not in FULL_PRECISION_MODELS]
    for b in sorted({r["bytes_per_item"] for r in codes}):
        at = [r for r in codes if r["bytes_per_item"] == b]
        best = max(at, key=lambda r: r["recall@50"])
        one = next((r for r in at if r["bits"] == 1), None)
        kind = f"best {b}-byte code vs 1 bit"
        lower = [r for r in codes if r["bits"] == 1 and r["bytes_per_item"] < b]
        if one is None and (1, int(b * 8)) not in planned and lower:
            one = max(lower, key=lambda r: r["bytes_per_item"])
            kind += f" (no 1 bit x {int(b * 8)} in the grid: the largest 1-bit code measured)"
        if one is not None and best is not one:
            out.append({"kind": kind, **paired(best, one)})
    for r in codes:
        fl = next((f for f in rows if f["model"] in FULL_PRECISION_MODELS and f["dim"] == r["dim"]), None)
        if fl is not None:
            out.append({"kind": "code vs float of its dims", **paired(r, fl)})
    return out


def pval(p) -> str:
    return "one seed" if p is None else f"p={p:.3g}"


def pct(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def summary(rows: list[dict], pairs: list[dict], args, meta: dict) -> str:
    ds = rows[0]["dataset"]
    ref = reference(rows, ds)
    cfg, valid = meta["config"], meta["valid"]
    layers = " or ".join(str(n) for n in sorted({r["layers"] for r in rows}))
    imported = [r for r in rows if r.get("imported")]
    n_users = next((r["n_users"] for r in rows if r.get("n_users")), None)
    protocol = (f"the test metrics of the best validation epoch ({cfg[1].val_fraction:.0%} of each user's training "
                "items held out)" if valid else "no validation split; last epoch; untuned, one setting for every "
                f"point (the config's lr {cfg[1].lr:g}, weight decay {cfg[1].weight_decay:g}; test is only monitored)")
    lines = [f"# The bits x dimensions frontier: {DATASET_NAMES.get(ds, ds)}", "",
             f"Runs: `hqgnn experiment {meta['experiment']} --jobs 2`; this report: `{meta['command']}`.  ",
             f"HQ-GNN (GSTE), {cfg[1].epochs} epochs, {protocol}; {layers} layers for every point, codes and float "
             f"(`{cfg[0]}`)." + (" Each point's lr and weight decay: the best validation Recall@50 at seed 1 of the "
                                 "screen below, then the seeds listed.  " if valid else "  "),
             *([f"Imported (the same config and seed numbers, another experiment): "
                + "; ".join(f"{code_name(r)} from `{r['imported']}`" for r in imported) + ".  "] if imported else []),
             f"queries/s: exact top-{K} of all {n_users or 0:,} users, seen items excluded, through the "
             f"index of the exported seed-1 run, {meta['threads']} thread, blocks of 2,048 users, best of "
             f"{meta['repeat']} interleaved rounds, every point in one process ({meta['machine']}; kernels "
             f"{meta['kernels']})." + (" An imported row: the index of the run the note names, of the same code and "
                                       "data (—: no run folder, not timed)." if imported else "") + "  ",
             (f"Float reference: LightGCN x 64 ({layers} layers, {'tuned as' if valid else 'the settings of'} every point), "
              f"Recall@50 {ref['recall@50']:.4f} / NDCG@50 {ref['ndcg@50']:.4f}." if ref else "Float reference: not run yet.") +
             (f" At 3 layers (its best depth, `{FLOAT_3_LAYERS[ds][1]}`) float LightGCN x 64 reaches "
              f"{FLOAT_3_LAYERS[ds][0]:.4f}: the column 'of 3-layer float' divides by that." if ds in FLOAT_3_LAYERS else ""),
             "",
             "| bytes / item | code | seeds | lr / wd | Recall@50 | NDCG@50 | of float (R / N) | of 3-layer float (R) | "
             "float x the same dims, of float (R) | queries/s |", "|---:|---|---:|---|---|---|---|---|---|---:|"]
    floats = {r["dim"]: r for r in rows if r["model"] in FULL_PRECISION_MODELS}
    codes = [r for r in rows if r["model"] not in FULL_PRECISION_MODELS]
    for r in sorted(codes, key=lambda r: (r["bytes_per_item"], r["bits"])) + sorted(floats.values(), key=lambda r: r["dim"]):
        best_at = max((c for c in codes if c["bytes_per_item"] == r["bytes_per_item"]),
                      key=lambda c: c["recall@50"], default=None)
        name = code_name(r)
        if r is best_at:
            name = f"**{name}**"
        fl = floats.get(r["dim"]) if r["model"] not in FULL_PRECISION_MODELS else None
        lines.append(f"| {r['bytes_per_item']:g} | {name} | {len(r['seeds'])} | {r['lr']:g} / {r['weight_decay']:g} | "
                     f"{spread(r, 'recall@50')} | {spread(r, 'ndcg@50')} | "
                     f"{pct(r['ratio_to_float'])} / {pct(r.get('ndcg_ratio_to_float'))} | "
                     f"{pct(r['recall@50'] / FLOAT_3_LAYERS[ds][0]) if ds in FLOAT_3_LAYERS else '—'} | "
                     f"{pct(fl['ratio_to_float']) if fl else '—'} | "
                     f"{format(r['queries_per_s'], ',') if r['queries_per_s'] else '—'}"
                     f"{' (timed on `' + r['timed_on'] + '`)' if r.get('timed_on') and r['queries_per_s'] else ''} |")
    few = [code_name(r) for r in codes + list(floats.values()) if len(r["seeds"]) < 3]
    lines += ["", "Bold: the best code of its budget (what `hqgnn train --budget-bytes N` picks). ± is the standard "
              "deviation over seeds." + (f" One seed only ({'the screen' + chr(39) + 's pick; ' if valid else ''}the "
              f"CPU time went to the seeds of the budgets' best codes first): {', '.join(few)}." if few else "") +
              (f" In the grid but not run (out of CPU time): {', '.join(meta['missing'])}." if meta.get("missing") else ""),
              "", "## Paired tests (by seed)", "",
              "| test | a | b | seeds | Recall@50 a / b | gain (p) | NDCG@50 a / b | gain (p) |",
              "|---|---|---|---|---|---|---|---|"]
    for t in pairs:
        rr, nn = t[METRIC], t["ndcg@50"]
        lines.append(f"| {t['kind']} | {t['a']} | {t['b']} | {', '.join(map(str, t['seeds']))} | "
                     f"{rr['a']:.4f} / {rr['b']:.4f} | {rr['gain']:+.1%} ({pval(rr['p'])}) | "
                     f"{nn['a']:.4f} / {nn['b']:.4f} | {nn['gain']:+.1%} ({pval(nn['p'])}) |")
    if not valid:
        return "\n".join(lines + ["", "No screen: no validation split; last epoch; untuned, one setting for every point."]) + "\n"
    lines += ["", "## The screen (seed 1): validation Recall@50 of each lr / weight decay", "",
              "| code | " + " | ".join(f"lr {lr:g}, wd {wd:g}" for lr, wd in screen_combos(rows)) + " | pick |",
              "|---|" + "---|" * (len(screen_combos(rows)) + 1)]
    for r in sorted(codes, key=lambda r: (r["bits"], r["dim"])) + sorted(floats.values(), key=lambda r: r["dim"]):
        by = {(s["lr"], s["weight_decay"]): s for s in r["screen"]}
        cells = [f"{by[c]['valid_recall@50']:.4f}" if c in by else "—" for c in screen_combos(rows)]
        lines.append(f"| {code_name(r)} | " + " | ".join(cells) + f" | {r['lr']:g} / {r['weight_decay']:g} |")
    return "\n".join(lines) + "\n"


def screen_combos(rows: list[dict]) -> list[tuple]:
    return sorted({(s["lr"], s["weight_decay"]) for r in rows for s in r["screen"]})


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ref = reference(rows, rows[0]["dataset"])
    for bits, marker in ((1, "o"), (2, "s"), (4, "^"), (8, "D"), (32, "x")):
        rs = sorted((r for r in rows if r["bits"] == bits), key=lambda r: r["bytes_per_item"])
        if not rs:
            continue
        label = "float32 LightGCN" if bits == 32 else f"{bits} bit{'s' if bits > 1 else ''}"
        ax.errorbar([r["bytes_per_item"] for r in rs], [r["recall@50"] for r in rs],
                    yerr=[r["recall@50_std"] for r in rs], marker=marker, capsize=3, label=label,
                    linestyle="--" if bits == 32 else "-")
        for r in rs:
            ax.annotate(f"d{r['dim']}", (r["bytes_per_item"], r["recall@50"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    if ref is not None:
        ax.axhline(ref["recall@50"], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["bytes_per_item"] for r in rows})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("bytes per item (bits x dims / 8; float32: 4 x dims)")
    ax.set_ylabel("Recall@50 (test, mean over seeds)")
    ax.set_title(f"{DATASET_NAMES.get(rows[0]['dataset'], rows[0]['dataset'])}: accuracy per byte")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spread(r: dict, metric: str) -> str:
    """``mean ± std`` over seeds, or ``mean (1 seed)``."""
    return f"{r[metric]:.4f} ± {r[metric + '_std']:.4f}" if len(r["seeds"]) > 1 else f"{r[metric]:.4f} (1 seed)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "frontier-ml-1m.yaml",
                   help="the grid's experiment file (default: experiments/frontier-ml-1m.yaml)")
    p.add_argument("--runs", type=Path, help="the experiment's output folder (default: the file's out)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "frontier",
                   help="where frontier.json, summary.md and frontier.png go (default: benchmarks/results/frontier)")
    p.add_argument("--threads", type=int, default=1, help="threads of the timed searches (default 1)")
    p.add_argument("--repeat", type=int, default=10, help="interleaved timing rounds, the best kept (default 10)")
    p.add_argument("--no-timing", action="store_true", help="keep the queries/s of the existing frontier.json")
    p.add_argument("--no-package", action="store_true", help="do not copy frontier.json into the package")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="CSV:LABEL[,LABEL...]",
                   help="add these models' rows of a results.csv (same config and seeds; benchmarks/frontier_rows.py)")
    p.add_argument("--time-with", action="append", default=[], metavar="LABEL=RUN",
                   help="time the imported row LABEL through the index of RUN (same code and data)")
    args = p.parse_args(argv)
    spec = load_experiment(args.experiment)
    runs = args.runs or Path(spec["out"])
    rows = gather(spec, runs)
    for arg in args.imports:
        rows += import_rows(arg, spec)
    for arg in args.time_with:
        time_with(rows, arg)
    if not rows:
        print(f"no finished runs under {runs}", file=sys.stderr)
        return 1
    set_ratios(rows)
    n_users_of(rows)
    from retrieval import cpu_name

    timing = {"threads": args.threads, "repeat": args.repeat, "kernels": "as measured before",
              "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} shared cores, load "
                         f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}, numpy {np.__version__}, "
                         f"Python {platform.python_version()}"}
    if args.no_timing:  # the queries/s, and the machine and kernels they were measured on, of the last timing
        old_file = args.out / "frontier.json"
        old_doc = json.loads(old_file.read_text()) if old_file.is_file() else {"rows": []}
        old = {(r["dataset"], r["bits"], r["dim"]): r for r in old_doc["rows"]}
        for r in rows:
            r["queries_per_s"] = old.get((r["dataset"], r["bits"], r["dim"]), {}).get("queries_per_s")
        timing = old_doc.get("timing", timing)
    else:
        timing["kernels"] = time_points(rows, args.threads, args.repeat)

    rel = os.path.relpath(args.experiment.resolve(), ROOT)
    meta = {"experiment": rel, **timing, "config": spec_config(spec), "valid": spec_config(spec)[1].val_fraction > 0,
            "command": "python benchmarks/frontier.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))}
    planned = {(32 if c.model in FULL_PRECISION_MODELS else c.bits, dict(c.settings).get("dim", 64)) for c in expand_cells(spec)}
    pairs = tests(rows, planned | {(r["bits"], r["dim"]) for r in rows})
    measured = {(r["bits"], r["dim"]) for r in rows}
    meta["missing"] = sorted({code_name({"model": c.model, "bits": 32 if c.model in FULL_PRECISION_MODELS else c.bits,
                                         "dim": dict(c.settings).get("dim", 64)})
                              for c in expand_cells(spec)
                              if (32 if c.model in FULL_PRECISION_MODELS else c.bits, dict(c.settings).get("dim", 64))
                              not in measured})
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    doc = {"description": "Accuracy per byte: HQ-GNN codes of bits x dims against float LightGCN (issue 20). "
                          "bytes_per_item = bits * dim / 8 (float32: 4 * dim); ratio_to_float = recall@50 / float "
                          "LightGCN x 64's; queries_per_s: exact top-50 of every user, seen items excluded, 1 thread.",
           "experiment": rel, "metric": METRIC, "timing": timing, "rows": public, "paired_tests": pairs}
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1) + "\n"
    (args.out / "frontier.json").write_text(text)
    (args.out / "summary.md").write_text(summary(rows, pairs, args, meta))
    plot(rows, args.out / "frontier.png")
    if not args.no_package:  # this data set's rows in place of its old ones; the other data sets' kept
        shipped = ROOT / "src" / "hqgnn" / "default_configs" / "frontier.json"
        shipped.write_text(json.dumps(package_doc(shipped.read_text() if shipped.is_file() else None, doc), indent=1) + "\n")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
