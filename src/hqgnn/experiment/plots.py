"""The report's PNG plots: each metric against bits (or a bar per model when the grid has one
quantized bit width), the size of the codes, and training curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import FULL_PRECISION_MODELS
from .spec import Cell
from .stats import seed_std


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
        bars = []
        for model in models:
            vals = [r[m] for r in rs if r["model"] == model and m in r]
            if vals:
                fp = _is_full_precision(next(r for r in rs if r["model"] == model))
                bars.append((float(np.mean(vals)), seed_std(vals), model, fp))
        bars.sort()
        y = np.arange(len(bars))
        scale = 1e6 if m == "total_bytes" else 1.0
        ax.barh(y, [s[0] / scale for s in bars], xerr=[s[1] / scale for s in bars], capsize=3,
                color=["0.6" if s[3] else "C0" for s in bars])
        ax.set_yticks(y, [s[2] for s in bars], fontsize=8)
        if m == "total_bytes":
            ax.set_xscale("log")
            ax.set_xlabel("codes size (MB; float32 for full precision)")
            ax.set_title(f"{dataset}: model size")
        else:
            # the axis spans the error bars, not zero: 1-bit models differ by a fraction of a percent
            lo, hi = min(s[0] - s[1] for s in bars), max(s[0] + s[1] for s in bars)
            pad = 0.1 * (hi - lo) if hi > lo else 0.01
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
            ax.xaxis.set_major_locator(plt.MaxNLocator(4))
            ax.set_xlabel(f"{m} (mean +- std over seeds; grey: float32; axis not from 0)")
            ax.set_title(f"{dataset}: {m}")
    return fig
