"""The report of an experiment, in ``OUT/reports/NAME/``: ``results.csv`` (one row per finished
run), ``summary.md`` (mean +- std over seeds, gains and paired tests against the reference, the
``compare`` head-to-head tables) and the plots (:mod:`.plots`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import FULL_PRECISION_MODELS
from ..storage import write_text_atomic
from .plots import plot_report
from .spec import Cell
from .stats import gain_with_p, seed_std


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
