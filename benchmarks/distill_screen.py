#!/usr/bin/env python
"""The distillation screen and grid read by their VALIDATION numbers (issue 20, part 2).

    python benchmarks/distill_screen.py [experiments/ml-1m-distill-screen.yaml ...]
        [--metric recall@50] [--out benchmarks/results/ml-1m-distill]

For every finished cell of the given experiment files (default: the screen and the main grid of
``experiments/ml-1m-distill*.yaml``): the best value of ``--metric`` on the validation split over
the run's evaluations (``history.jsonl``, the epoch whose weights the run reports) beside the
test value (``metrics.json``). The screen's weight is picked by the validation column; test is
only reported. Writes ``validation.md`` under ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hqgnn.experiment import expand_cells, load_experiment

DEFAULT = ["experiments/ml-1m-distill-screen.yaml", "experiments/ml-1m-distill.yaml"]


def best_validation(run: Path, metric: str) -> float:
    """The best ``metric`` over the run's validation evaluations (nan when it has none)."""
    values = [h[metric] for h in map(json.loads, (run / "history.jsonl").read_text().splitlines())
              if h.get("split") == "valid" and metric in h]
    return max(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*", default=DEFAULT)
    ap.add_argument("--metric", default="recall@50")
    ap.add_argument("--out", default="benchmarks/results/ml-1m-distill")
    args = ap.parse_args()
    rows, seen = [], set()
    for path in args.specs:
        spec = load_experiment(path)
        for cell in expand_cells(spec):
            run = cell.run_dir(Path(spec["out"]))
            if (run, cell.seed) in seen or not cell.is_finished(Path(spec["out"])):
                continue
            seen.add((run, cell.seed))
            weight = dict(cell.settings).get("distill_weight", 1.0) if cell.distill_from else 0.0
            test = json.loads((run / "metrics.json").read_text())[args.metric]
            rows.append((cell.label, cell.seed, weight, best_validation(run, args.metric), test))
    lines = [f"| cell | seed | distill_weight | validation {args.metric} (best epoch) | test {args.metric} |",
             "|---|---|---|---|---|"]
    lines += [f"| {label} | {seed} | {w:g} | {v:.4f} | {t:.4f} |" for label, seed, w, v, t in sorted(rows)]
    text = "# Distillation: validation and test, per run\n\n" + "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
