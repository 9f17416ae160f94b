"""Grids of runs (data sets x models x bits x seeds), resumable, with a report.

An experiment file::

    name: ml-1m-bits
    out: runs/ml-1m-bits                 # output folder
    datasets: {ml-1m: ../shared/data/ml-1m}
    config: configs/ml-1m-hqgnn.yaml     # base settings of every cell (optional)
    settings: {epochs: 100}              # overrides on top of it (optional)
    seeds: [1, 2, 3]
    cells:
      - {model: lightgcn, config: configs/ml-1m-lightgcn.yaml}
      - {model: hqgnn, bits: [1, 2, 4, 8]}
      - {model: ste, bits: [1, 2, 4]}
      - {model: lsh}                     # post-hoc: uses the lightgcn cell of the same seed
      - {model: hqgnn, bits: 1, name: hqgnn-w2, settings: {ste_window: 2}}   # a named variant
      - {model: ste, bits: 2, seeds: [1]}  # a cell's own seeds
      - {model: hqgnn, bits: 1, name: hqgnn-pre, start_from: lightgcn}   # starts from that cell's E0
    reference: {model: hashgnn, bits: 1} # paired tests against this cell
    compare: [[hqgnn, ste]]              # head-to-head tables: hqgnn vs ste at every shared bit width
    metrics: [recall@50, ndcg@50]

Every cell is a normal run folder ``OUT/DATASET/MODEL-bB/seedS``; a cell with
``metrics.json`` is finished and is not rerun, one with only a checkpoint is
resumed. ``--shard K/N`` runs every N-th cell (one worker of N); ``--jobs N`` starts N such
workers itself and then runs the cells they had to skip. The report, in ``OUT/reports/NAME/``: ``results.csv`` (one row per run), ``summary.md`` (mean
+- std over seeds, gain and paired t-test p-value against the reference), and
PNG plots (metric against bits with the full-precision line, model size
against bits, training curves); ``compare`` adds a paired head-to-head table per
pair of models at each bit width both were run at.

Post-hoc cells (``lsh``, ``ptq``) quantize the full-precision cell of the same
data set and seed: ``lightgcn`` when the grid has one, else ``mf``, or the one their
``start_from: NAME`` names (e.g. a 2-layer variant ``lightgcn-L2``). A trained quantized cell
with ``start_from: NAME`` starts from the trained E0 of the full-precision cell so named (its
``name``, else its model: ``lightgcn``, ``mf``) of the same data set and seed (setting
``from_run``, a pre-training stage).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from .config import FULL_PRECISION_MODELS, ONE_BIT_MODELS, POST_HOC_MODELS, QUANTIZED_MODELS, Config, read_yaml
from .errors import ConfigError, HQGNNError
from .storage import write_text_atomic

_KEYS = {"name", "out", "datasets", "config", "settings", "seeds", "cells", "reference", "compare", "metrics"}
_CELL_KEYS = {"model", "bits", "seeds", "settings", "config", "name", "start_from"}


@dataclass(frozen=True)
class Cell:
    dataset: str
    data_path: str
    model: str
    bits: Optional[int]
    seed: int
    config: Optional[str]
    settings: tuple
    name: Optional[str] = None  # a variant's display name (same model, other settings)
    start_from: Optional[str] = None  # name of the full-precision cell (same data set, seed) it starts from

    @property
    def display(self) -> str:
        return self.name or self.model

    @property
    def label(self) -> str:
        return self.display if self.bits is None else f"{self.display}-b{self.bits}"

    def run_dir(self, out: Path) -> Path:
        return out / self.dataset / self.label / f"seed{self.seed}"

    def is_finished(self, out: Path) -> bool:
        """A cell with ``metrics.json`` is finished: it is reported and never rerun."""
        return (self.run_dir(out) / "metrics.json").is_file()


def load_experiment(path) -> dict:
    spec = read_yaml(path)
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown experiment key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("datasets", "cells"):
        if not spec.get(key):
            raise ConfigError(f"{path}: experiment needs {key!r}")
    if not isinstance(spec["datasets"], dict):
        raise ConfigError(f"{path}: datasets must map names to paths, e.g. {{ml-1m: ../shared/data/ml-1m}}")
    compare = spec.setdefault("compare", [])
    if not isinstance(compare, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in compare):
        raise ConfigError(f"{path}: compare must be a list of model pairs, e.g. [[hqgnn, ste]], got {compare!r}")
    spec.setdefault("seeds", [2020])
    spec.setdefault("metrics", ["recall@50", "ndcg@50"])
    spec.setdefault("name", Path(path).stem)
    spec.setdefault("out", str(Path("runs") / spec["name"]))
    base = Path(path).resolve().parent
    spec["_base"] = base
    return spec


def _resolve(base: Path, p: Optional[str]) -> Optional[str]:
    if p is None or p == "synthetic":
        return p
    q = Path(p)
    return str(q if q.is_absolute() or q.exists() else base / q)


def expand_cells(spec: dict) -> list[Cell]:
    cells = []
    base = spec["_base"]
    full_precision = {e.get("name") or e.get("model") for e in spec["cells"] if e.get("model") in FULL_PRECISION_MODELS}
    for dataset, data_path in spec["datasets"].items():
        for entry in spec["cells"]:
            if "model" not in entry:
                raise ConfigError(f"experiment cell {entry!r} has no model")
            unknown = set(entry) - _CELL_KEYS
            if unknown:
                raise ConfigError(f"experiment cell {entry!r}: unknown key {sorted(unknown)[0]!r} "
                                  f"(known: {', '.join(sorted(_CELL_KEYS))})")
            start = entry.get("start_from")
            if start is not None and (start not in full_precision or entry["model"] not in QUANTIZED_MODELS):
                raise ConfigError(f"experiment cell {entry!r}: start_from={start!r} needs a quantized "
                                  f"model and the name of a full-precision cell of the grid "
                                  f"({', '.join(sorted(full_precision)) or 'none'})")
            bits_list = entry.get("bits")
            if entry["model"] in QUANTIZED_MODELS:
                bits_list = bits_list if isinstance(bits_list, list) else [bits_list or (1 if entry["model"] in ONE_BIT_MODELS else 4)]
            else:
                bits_list = [None]
            for bits in bits_list:
                for seed in entry.get("seeds", spec["seeds"]):
                    extra = dict(spec.get("settings") or {})
                    extra.update(entry.get("settings") or {})
                    cells.append(
                        Cell(
                            dataset=dataset,
                            data_path=_resolve(base, str(data_path)),
                            model=entry["model"],
                            bits=bits,
                            seed=int(seed),
                            config=_resolve(base, entry.get("config", spec.get("config"))),
                            settings=tuple(sorted(extra.items())),
                            name=entry.get("name"),
                            start_from=start,
                        )
                    )
    # full-precision runs first: post-hoc cells quantize them, start_from cells start from them
    return sorted(cells, key=lambda c: (c.model in POST_HOC_MODELS or c.start_from is not None, c.dataset))


def full_precision_model(cells: list[Cell], dataset: str) -> str:
    """The full-precision model whose runs a data set's post-hoc cells quantize: lightgcn, else mf."""
    present = {c.model for c in cells if c.dataset == dataset}
    return next((m for m in FULL_PRECISION_MODELS if m in present), "lightgcn")


def cell_config(cell: Cell, out: Path, source: str = "lightgcn") -> Config:
    extra = {"model": cell.model, "seed": cell.seed, "data": cell.data_path}
    if cell.bits is not None:
        extra["bits"] = cell.bits
    if cell.model in POST_HOC_MODELS or cell.start_from:
        fp_name = cell.start_from or source  # a full-precision cell's display name, which is its folder
        extra["from_run"] = str(Cell(cell.dataset, cell.data_path, fp_name, None, cell.seed, None, ()).run_dir(out))
    cfg = Config.load(cell.config, None, extra)
    return cfg.updated(dict(cell.settings), "experiment settings").validate()


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    """``"K/N"`` (1-based) to (K - 1, N); None is the whole grid."""
    if not text:
        return 0, 1
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {text!r}: K must be in 1..N")
    return k - 1, n


def run_experiment(path, out_dir: Optional[str] = None, progress: bool = True, shard: Optional[str] = None,
                   seeds: Optional[list[int]] = None, report_only: bool = False, jobs: int = 1,
                   report: bool = True) -> Path:
    """Run the unfinished cells (of one shard, for parallel workers; of some seeds only, for a
    first look; none with ``report_only``) and write the report of every finished cell.

    ``jobs > 1`` runs the grid in that many worker processes, one shard each, then the cells
    they had to skip (a cell whose source cell another worker was still training) here."""
    from .api import Recommender, prepare_data

    spec = load_experiment(path)
    out = Path(out_dir or spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    all_cells = expand_cells(spec)
    # validate every cell before running any
    sources = {d: full_precision_model(all_cells, d) for d in {c.dataset for c in all_cells}}
    configs = [cell_config(c, out, sources[c.dataset]) for c in all_cells]
    index, count = parse_shard(shard)
    chosen = [(c, cfg) for c, cfg in zip(all_cells, configs) if seeds is None or c.seed in seeds]
    if not chosen:
        raise ConfigError(f"--seeds {' '.join(map(str, seeds or []))}: no cell of {path} has these seeds")
    if jobs < 1 or (jobs > 1 and (shard or report_only)):
        raise ConfigError(f"--jobs {jobs}: must be >= 1, and alone (not with --shard or --report-only)")
    if jobs > 1:
        run_workers(path, out, jobs, seeds, [c for c, _ in chosen], progress)
    mine = [] if report_only else [pair for j, pair in enumerate(chosen) if j % count == index]
    mine = [(c, cfg) for c, cfg in mine if not c.is_finished(out)]
    data_cache: dict = {}
    bar = tqdm(total=len(mine), desc=f"experiment {spec['name']}", unit="run", disable=not progress or not mine)
    for cell, cfg in mine:
        run_dir = cell.run_dir(out)
        bar.set_postfix_str(f"{cell.dataset} {cell.label} seed {cell.seed}")
        if cfg.from_run and not (Path(cfg.from_run) / "model.pt").is_file():
            bar.write(f"skipped {cell.dataset} {cell.label} seed {cell.seed}: {cfg.from_run} is not finished (another shard?)")
        elif not cell.is_finished(out):  # another shard may have finished it meanwhile
            key = (cfg.data, cfg.val_fraction, cfg.split_seed)
            if key not in data_cache:
                data_cache[key] = prepare_data(cfg)
            rec = Recommender(config=cfg, model=cfg.model)
            rec.fit(data_cache[key], out_dir=run_dir, resume=(run_dir / "checkpoint.pt").is_file(), progress=False)
        bar.update(1)
    bar.close()
    if report:
        write_report(spec, all_cells, out)
    return out


def run_workers(path, out: Path, jobs: int, seeds: Optional[list[int]], cells: list[Cell], progress: bool) -> None:
    """``jobs`` processes of ``hqgnn experiment --shard K/jobs``, each logging to
    ``OUT/logs/shard-K.log``; a bar counts finished cells until all have exited. Cells run in
    processes rather than threads: each trains with its own torch threads and memory."""
    import subprocess
    import sys
    import time

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workers = []
    for k in range(1, jobs + 1):
        cmd = [sys.executable, "-m", "hqgnn", "experiment", str(path), "--out", str(out), "--shard", f"{k}/{jobs}",
               "--quiet", "--no-report"] + (["--seeds", *map(str, seeds)] if seeds else [])
        log = logs / f"shard-{k}.log"
        with open(log, "w") as fh:
            workers.append((k, log, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)))

    def finished() -> int:
        return sum(c.is_finished(out) for c in cells)

    bar = tqdm(total=len(cells), initial=finished(), desc=f"experiment ({jobs} workers)", unit="run",
               disable=not progress)
    try:
        while any(p.poll() is None for _, _, p in workers):
            time.sleep(2)
            bar.update(finished() - bar.n)
    finally:
        for _, _, p in workers:  # interrupted: stop the workers too (their cells resume later)
            if p.poll() is None:
                p.terminate()
        bar.close()
    failed = [(k, log, p.returncode) for k, log, p in workers if p.returncode != 0]
    if failed:
        k, log, rc = failed[0]
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise HQGNNError(f"experiment worker {k}/{jobs} exited with {rc} ({len(failed)} of {jobs} failed): "
                          f"{lines[-1] if lines else 'no output'} (log: {log})")


# ---------------------------------------------------------------- report
def collect(cells: list[Cell], out: Path) -> list[dict]:
    rows = []
    for c in cells:
        f = c.run_dir(out) / "metrics.json"
        if not f.is_file():
            continue
        m = json.loads(f.read_text())
        # the cell's own fields last: metrics.json also names the model (a variant's base model)
        rows.append({**m, "dataset": c.dataset, "model": c.display, "base_model": c.model,
                     "bits": c.bits if c.bits is not None else 32, "seed": c.seed})
    return rows


def seed_std(values) -> float:
    """The spread over seeds the reports show: the sample standard deviation (0 for one seed)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_test(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value (nan with fewer than 2 pairs or no variance)."""
    from scipy import stats

    if len(a) < 2 or len(a) != len(b):
        return float("nan")
    diff = np.asarray(a) - np.asarray(b)
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] != 0 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def gain_with_p(mine: list[float], theirs: list[float]) -> str:
    """Relative gain of the mean of ``mine`` over ``theirs`` (paired by seed), with the p-value."""
    gain = (np.mean(mine) / np.mean(theirs) - 1) * 100
    p = paired_test(mine, theirs)
    return f"{gain:+.1f}% (p={p:.3g})" if not math.isnan(p) else f"{gain:+.1f}% ({len(mine)} seed)"


def summarise(rows: list[dict], metrics: list[str], reference: Optional[dict]) -> str:
    lines = []
    for dataset in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == dataset]
        groups: dict = {}
        for r in rs:
            groups.setdefault((r["model"], r["bits"]), []).append(r)
        ref_key = (reference["model"], int(reference.get("bits", 32))) if reference else None
        ref = {r["seed"]: r for r in groups.get(ref_key, [])} if ref_key else {}
        lines.append(f"### {dataset}\n")
        head = ["model", "bits", "seeds"] + [f"{m} (mean ± std)" for m in metrics]
        if ref:
            head += [f"{m} gain vs {ref_key[0]}-{ref_key[1]}b (p)" for m in metrics]
        head += ["train s", "size (MB)", "compression"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for (model, bits), grp in sorted(groups.items(), key=lambda kv: (kv[0][0] not in FULL_PRECISION_MODELS, kv[0][0], kv[0][1])):
            cells = [model, str(bits), str(len(grp))]
            for m in metrics:
                v = np.array([g[m] for g in grp])
                cells.append(f"{v.mean():.4f} ± {seed_std(v):.4f}")
            if ref:
                for m in metrics:
                    seeds = [g["seed"] for g in grp if g["seed"] in ref]
                    mine = [next(g[m] for g in grp if g["seed"] == s) for s in seeds]
                    theirs = [ref[s][m] for s in seeds]
                    if (model, bits) == ref_key or not seeds:
                        cells.append("—")
                    else:
                        cells.append(gain_with_p(mine, theirs))
            cells.append(f"{np.mean([g.get('train_seconds', 0) for g in grp]):.0f}")
            size = grp[0].get("total_bytes", grp[0].get("float32_bytes"))
            cells.append(f"{size / 1e6:.3g}" if size else "—")
            cells.append(f"{grp[0].get('compression_ratio', 1.0):.1f}x")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def compare_pairs(rows: list[dict], metrics: list[str], pairs: list[list[str]]) -> str:
    """Head-to-head tables: model a against model b at each bit width both have, over the
    seeds both finished (gain of a's mean over b's, paired t-test)."""
    lines = []
    for a, b in pairs:
        lines.append(f"### {a} vs {b}\n")
        table = []
        for dataset in sorted({r["dataset"] for r in rows}):
            runs = {(r["model"], r["bits"], r["seed"]): r for r in rows if r["dataset"] == dataset}
            for bits in sorted({k[1] for k in runs if k[0] == a} & {k[1] for k in runs if k[0] == b}):
                seeds = sorted({k[2] for k in runs if k[:2] == (a, bits)} & {k[2] for k in runs if k[:2] == (b, bits)})
                if not seeds:
                    continue
                means, gains = [], []
                for m in metrics:
                    mine = [runs[(a, bits, s)][m] for s in seeds]
                    theirs = [runs[(b, bits, s)][m] for s in seeds]
                    means.append(f"{np.mean(mine):.4f} / {np.mean(theirs):.4f}")
                    gains.append(gain_with_p(mine, theirs))
                table.append("| " + " | ".join([dataset, str(bits), str(len(seeds))] + means + gains) + " |")
        if not table:
            lines += [f"No bit width has finished runs of both {a} and {b} with a common seed.", ""]
            continue
        head = ["dataset", "bits", "seeds"] + [f"{m}: {a} / {b}" for m in metrics] + [f"{m} gain (p)" for m in metrics]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *table, ""]
    return "\n".join(lines)


def report_dir(spec: dict, out: Path) -> Path:
    """Reports live apart from the cells, so experiments may share cells (and their runs)."""
    return out / "reports" / spec["name"]


def write_report(spec: dict, cells: list[Cell], out: Path) -> None:
    rows = collect(cells, out)
    if not rows:
        return
    cells_root, out = out, report_dir(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["dataset", "model", "bits", "seed"] + sorted({k for r in rows for k in r} - {"dataset", "model", "bits", "seed"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_text_atomic(out / "results.csv", buf.getvalue())
    metrics = list(spec["metrics"])
    text = f"# {spec['name']}\n\n{summarise(rows, metrics, spec.get('reference'))}"
    if spec.get("compare"):
        text += "\n" + compare_pairs(rows, metrics, spec["compare"])
    write_text_atomic(out / "summary.md", text)
    plot_report(rows, cells, metrics, out, cells_root)


def plot_report(rows: list[dict], cells: list[Cell], metrics: list[str], out: Path, cells_root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == dataset]
        if plot_kind(rs) == "bars":
            fig = _plot_models_as_bars(plt, rs, metrics, dataset)
        else:
            fig = _plot_against_bits(plt, rs, metrics, dataset)
        fig.tight_layout()
        fig.savefig(out / f"{dataset}-bits.png", dpi=110)
        plt.close(fig)

        # training curves of the first seed of every cell
        fig, ax = plt.subplots(figsize=(7, 4.5))
        first_seed = min(c.seed for c in cells)
        for c in cells:
            if c.dataset != dataset or c.seed != first_seed:
                continue
            hist = c.run_dir(cells_root) / "history.jsonl"
            if not hist.is_file():
                continue
            pts = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
            key = metrics[0] if any(metrics[0] in p for p in pts) else "recall@20"
            pts = [p for p in pts if key in p]
            if pts:
                ax.plot([p["train_seconds"] for p in pts], [p[key] for p in pts], marker=".", label=c.label)
        ax.set_xlabel("training seconds")
        ax.set_ylabel(f"{metrics[0]} (monitored split)")
        ax.set_title(f"{dataset}: training curves (seed {first_seed})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / f"{dataset}-curves.png", dpi=110)
        plt.close(fig)


def _is_full_precision(row: dict) -> bool:
    return row.get("base_model", row["model"]) in FULL_PRECISION_MODELS


def plot_kind(rows: list[dict]) -> str:
    """``bits`` (metrics against bit width) when the quantized cells span several bit widths,
    else ``bars`` (one bar per model): against a single bit width a bits axis says nothing."""
    quantized_bits = {r["bits"] for r in rows if not _is_full_precision(r)}
    return "bits" if len(quantized_bits) > 1 else "bars"


_MARKERS = "osD^vP*Xh<>p"


def _plot_against_bits(plt, rs: list[dict], metrics: list[str], dataset: str):
    """Each metric against bits (1..8), one line per model, full-precision cells as dashed lines;
    and the size of the codes against bits."""
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 4))
    models = sorted({r["model"] for r in rs})
    for ax, m in zip(axes, metrics):
        for j, model in enumerate(models):
            mine = [r for r in rs if r["model"] == model]
            pts: dict = {}
            for r in mine:
                pts.setdefault(r["bits"], []).append(r[m])
            bits = sorted(pts)
            means = [np.mean(pts[b]) for b in bits]
            stds = [seed_std(pts[b]) for b in bits]
            if _is_full_precision(mine[0]):
                ax.axhline(means[0], color="k", ls=("--", ":", "-.")[j % 3], label=f"{model} (float32)")
            else:
                ax.errorbar(bits, means, yerr=stds, marker=_MARKERS[j % len(_MARKERS)], capsize=3, label=model)
        ax.set_xlabel("bits")
        ax.set_ylabel(m)
        ax.set_title(f"{dataset}: {m}")
        ax.set_xticks(range(1, 9))
        ax.legend(fontsize=8)
    ax = axes[-1]
    for j, model in enumerate(sorted({r["model"] for r in rs if "total_bytes" in r and r["bits"] <= 8})):
        pts = sorted({(r["bits"], r["total_bytes"]) for r in rs if r["model"] == model})
        ax.plot([p[0] for p in pts], [p[1] / 1e6 for p in pts], marker=_MARKERS[j % len(_MARKERS)], label=model)
    fp = [r.get("float32_bytes") for r in rs if r.get("float32_bytes")]
    if fp:
        ax.axhline(fp[0] / 1e6, color="k", ls="--", label="float32")
    ax.set_yscale("log")
    ax.set_xticks(range(1, 9))
    ax.set_xlabel("bits")
    ax.set_ylabel("codes size (MB)")
    ax.set_title(f"{dataset}: model size")
    ax.legend(fontsize=8)
    return fig


def _plot_models_as_bars(plt, rs: list[dict], metrics: list[str], dataset: str):
    """Grids at one bit width (e.g. a 1-bit study): each metric as a horizontal bar per model
    (mean +- std over seeds, sorted), full-precision cells in grey; and the size of each model."""
    models = sorted({r["model"] for r in rs})
    height = max(3.0, 0.35 * len(models) + 1.2)
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), height))
    for ax, m in zip(axes, metrics + ["total_bytes"]):
        stats = []
        for model in models:
            vals = [r[m] for r in rs if r["model"] == model and m in r]
            if vals:
                fp = _is_full_precision(next(r for r in rs if r["model"] == model))
                stats.append((float(np.mean(vals)), seed_std(vals), model, fp))
        stats.sort()
        y = np.arange(len(stats))
        scale = 1e6 if m == "total_bytes" else 1.0
        ax.barh(y, [s[0] / scale for s in stats], xerr=[s[1] / scale for s in stats], capsize=3,
                color=["0.6" if s[3] else "C0" for s in stats])
        ax.set_yticks(y, [s[2] for s in stats], fontsize=8)
        if m == "total_bytes":
            ax.set_xscale("log")
            ax.set_xlabel("codes size (MB; float32 for full precision)")
            ax.set_title(f"{dataset}: model size")
        else:
            # the axis spans the error bars, not zero: 1-bit models differ by a fraction of a percent
            lo, hi = min(s[0] - s[1] for s in stats), max(s[0] + s[1] for s in stats)
            pad = 0.1 * (hi - lo) if hi > lo else 0.01
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
            ax.xaxis.set_major_locator(plt.MaxNLocator(4))
            ax.set_xlabel(f"{m} (mean +- std over seeds; grey: float32; axis not from 0)")
            ax.set_title(f"{dataset}: {m}")
    return fig
