"""Accuracy against the size of the GSTE's correction: delta = K times the estimate of docs/method.md ('GSTE').

    hqgnn experiment experiments/ml-1m-delta.yaml
    python benchmarks/delta_sweep.py experiments/ml-1m-delta.yaml

Reads the experiment's report (``results.csv``) and the K of each cell (``ste`` is K = 0,
``hqgnn`` K = 1 unless its settings name ``delta_scale``), prints a Markdown table of
mean +- std over seeds per bit width with the change against the STE, and writes
``delta-sweep.png`` and ``delta-sweep.md`` beside the report (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from hqgnn.experiment import expand_cells, load_experiment, report_dir, seed_std


def delta_scale_of(cell) -> float | None:
    """The K a cell trains with, or None for a cell that is not an hqgnn / ste cell."""
    if cell.model == "ste":
        return 0.0
    if cell.model == "hqgnn":
        return float(dict(cell.settings).get("delta_scale", 1.0))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", help="experiment YAML whose cells vary delta_scale")
    ap.add_argument("--metrics", nargs="+", default=["recall@50", "ndcg@50"])
    ap.add_argument("--out", default=None, help="folder for delta-sweep.md / .png (default: the report's)")
    args = ap.parse_args()

    spec = load_experiment(args.experiment)
    report = report_dir(spec, Path(spec["out"]))
    k_of = {c.display: delta_scale_of(c) for c in expand_cells(spec)}
    results = report / "results.csv"
    if not results.is_file():
        raise SystemExit(f"{results}: no report yet (run: hqgnn experiment {args.experiment})")
    # (bits, K) -> metric -> values over seeds
    cells: dict = defaultdict(lambda: defaultdict(list))
    with open(results, newline="") as fh:
        for row in csv.DictReader(fh):
            k = k_of.get(row["model"])
            if k is None:
                continue
            for m in args.metrics:
                cells[int(row["bits"]), k][m].append(float(row[m]))

    def vs_ste(bits, k, m):
        """Relative change of the mean against the STE (K = 0) at the same bit width, in percent."""
        base = cells.get((bits, 0.0), {}).get(m)
        return (np.mean(cells[bits, k][m]) / np.mean(base) - 1) * 100 if base else float("nan")

    lines = ["| bits | K | seeds | " + " | ".join(f"{m} (mean ± std) | vs STE" for m in args.metrics) + " |",
             "|---|---|---|" + "---|---|" * len(args.metrics)]
    for (bits, k), vals in sorted(cells.items()):
        n = len(vals[args.metrics[0]])
        lines.append(f"| {bits} | {k:g} | {n} | "
                     + " | ".join(f"{np.mean(vals[m]):.4f} ± {seed_std(vals[m]):.4f} | {vs_ste(bits, k, m):+.1f}%"
                                  for m in args.metrics) + " |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out) if args.out else report
    out.mkdir(parents=True, exist_ok=True)
    (out / "delta-sweep.md").write_text(f"# {spec['name']}: accuracy against K (delta = K x estimate)\n\n"
                                        "K = 0 is the STE, K = 1 the delta of docs/method.md ('GSTE'), K < 0 reverses the correction.\n\n"
                                        + table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.metrics), figsize=(6 * len(args.metrics), 4.2))
    for ax, m in zip(np.atleast_1d(axes), args.metrics):
        for bits in sorted({b for b, _ in cells}):
            if (bits, 0.0) not in cells:
                continue
            ks = sorted(k for b, k in cells if b == bits)
            base = np.mean(cells[bits, 0.0][m])
            ax.errorbar(ks, [vs_ste(bits, k, m) for k in ks],
                        yerr=[seed_std(cells[bits, k][m]) / base * 100 for k in ks],
                        marker="o", capsize=3, label=f"{bits} bit{'s' if bits > 1 else ''}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.axvline(1, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("K (delta = K x Hutchinson estimate; 0 = STE, 1 = HQ-GNN)")
        ax.set_ylabel(f"{m}: change against the STE (%)")
        ax.set_title(f"{m} against K (mean, std over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "delta-sweep.png", dpi=110)
    print(f"wrote {out / 'delta-sweep.md'} and {out / 'delta-sweep.png'}")


if __name__ == "__main__":
    main()
