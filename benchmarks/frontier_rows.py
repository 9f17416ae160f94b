"""Rows of the frontier (benchmarks/frontier.py) that come from elsewhere than the experiment's runs,
and the package's table of every data set's rows.

* :func:`import_rows`: ``--import CSV:LABEL[,LABEL...]`` reads the seeds of the named models of a
  ``results.csv`` (``hqgnn experiment``'s, e.g. benchmarks/results/gowalla-seeds/results.csv)
  as frontier points: for reference rows measured by another experiment with the same config
  (so with the same seed numbers the paired tests pair them). The CSV holds no learning rate,
  weight decay or depth: the rows take the experiment's config's, and their ``epochs`` column
  must be that config's (checked).
* :func:`time_with`: ``--time-with LABEL=RUN``: an imported row has no run folder to export and
  time; RUN, a run of the same code (model family, bits, dims) on the same data (users, items,
  data fingerprint checked), stands in for the timing, and the row says so (``timed_on``).
* :func:`package_doc`: the package's table (``src/hqgnn/default_configs/frontier.json``), this
  data set's rows in place of its old ones, the other data sets' kept.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from hqgnn.config import FULL_PRECISION_MODELS, Config
from hqgnn.experiment import seed_std
from hqgnn.frontier import merge_rows

ROOT = Path(__file__).resolve().parents[1]


def rel(path) -> str:
    """``path`` relative to the repository when inside it (no machine paths in the reports)."""
    path = Path(path).resolve()
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def spec_config(spec: dict) -> tuple[str, Config]:
    """The experiment's config file (relative to the repository) and its settings."""
    path = (Path(spec["_base"]) / spec["config"]).resolve()
    return rel(path), Config.load(str(path))


def import_rows(arg: str, spec: dict, metric: str = "recall@50") -> list[dict]:
    """The frontier rows of ``CSV:LABEL[,LABEL...]`` (see the module docstring): one per label,
    the mean over its seeds, for the experiment's data sets only. Raises SystemExit naming what is
    wrong (no such file, label or column; another number of epochs than the config's)."""
    path, _, labels = arg.rpartition(":")
    if not path or not labels:
        raise SystemExit(f"--import {arg}: expected CSV:LABEL[,LABEL...]")
    file = Path(path) if Path(path).is_absolute() else ROOT / path
    if not file.is_file():
        raise SystemExit(f"--import {arg}: no file {path}")
    with open(file, newline="") as fh:
        table = list(csv.DictReader(fh))
    _, cfg = spec_config(spec)
    rows = []
    for label in labels.split(","):
        got = [r for r in table if r.get("model") == label and r.get("dataset") in spec["datasets"]]
        if not got:
            raise SystemExit(f"--import {arg}: no rows of model {label!r} for {', '.join(spec['datasets'])} in {path}")
        for dataset in sorted({r["dataset"] for r in got}):
            seeds = sorted((r for r in got if r["dataset"] == dataset), key=lambda r: int(r["seed"]))
            first = seeds[0]
            if any(int(r["epochs"]) != cfg.epochs for r in seeds):
                raise SystemExit(f"--import {arg}: {label} ran {first['epochs']} epochs, the experiment's config {cfg.epochs}")
            base = first.get("base_model") or label
            bits = 32 if base in FULL_PRECISION_MODELS else int(first["bits"])
            dim = int(first["dim"])
            m = {k: [float(r[k]) for r in seeds] for k in (metric, "ndcg@50")}
            size = dim * 4 if bits == 32 else bits * dim / 8
            rows.append({"dataset": dataset, "model": base, "bits": bits, "dim": dim,
                         "bytes_per_item": int(size) if float(size).is_integer() else size,
                         "recall@50": sum(m[metric]) / len(seeds), "recall@50_std": seed_std(m[metric]),
                         "ndcg@50": sum(m["ndcg@50"]) / len(seeds), "ndcg@50_std": seed_std(m["ndcg@50"]),
                         "ratio_to_float": None, "queries_per_s": None, "seeds": [int(r["seed"]) for r in seeds],
                         "per_seed": {"recall@50": m[metric], "ndcg@50": m["ndcg@50"]},
                         "lr": float(cfg.lr), "weight_decay": float(cfg.weight_decay), "layers": int(cfg.layers),
                         "screen": [], "imported": f"{path} ({label})", "_label": label, "_run": None})
    return rows


def time_with(rows: list[dict], arg: str) -> None:
    """``LABEL=RUN``: RUN stands in for the timing of the imported row ``LABEL`` (see the module
    docstring). Raises SystemExit when RUN is not of the same code and data."""
    label, _, run = arg.partition("=")
    row = next((r for r in rows if r.get("_label") == label), None)
    if row is None or not run:
        raise SystemExit(f"--time-with {arg}: expected LABEL=RUN with LABEL an imported model")
    folder = Path(run) if Path(run).is_absolute() else ROOT / run
    try:
        cfg = Config.load(str(folder / "config.yaml"))
        data = json.loads((folder / "data.json").read_text())
    except Exception as exc:  # no run folder
        raise SystemExit(f"--time-with {arg}: not a run folder ({exc})") from None
    bits = 32 if cfg.model in FULL_PRECISION_MODELS else int(cfg.bits)
    if (bits, int(cfg.dim), (bits == 32) == (row["bits"] == 32)) != (row["bits"], row["dim"], True):
        raise SystemExit(f"--time-with {arg}: {cfg.model} {bits} bits x {cfg.dim} is not the code of {label} "
                         f"({row['bits']} bits x {row['dim']})")
    same = [r for r in rows if r["dataset"] == row["dataset"] and r.get("_run") is not None]
    if data.get("name") != row["dataset"] or any(
            json.loads((Path(r["_run"]) / "data.json").read_text()).get("fingerprint") != data.get("fingerprint")
            for r in same):
        raise SystemExit(f"--time-with {arg}: trained on other data than the {row['dataset']} runs")
    row["_run"] = folder
    row["timed_on"] = rel(folder)
    row["n_users"] = int(data["n_users"])


def n_users_of(rows: list[dict]) -> None:
    """Each row's ``n_users`` from its run's data.json (where it has a run and none yet)."""
    for r in rows:
        if r.get("_run") is not None and "n_users" not in r:
            r["n_users"] = int(json.loads((Path(r["_run"]) / "data.json").read_text())["n_users"])


def package_doc(old_text, doc: dict) -> dict:
    """The package's table: ``doc``'s rows in place of its data sets' rows of the table
    ``old_text`` (None: none yet), the other data sets' rows and experiments kept."""
    old = json.loads(old_text) if old_text else {}
    experiments = dict(old.get("experiments") or {})
    if "experiments" not in old and old.get("rows"):  # a one-data-set table (before the merge)
        experiments[old["rows"][0]["dataset"]] = old.get("experiment")
    for r in doc["rows"]:
        experiments[r["dataset"]] = doc["experiment"]
    rows = merge_rows(old.get("rows") or [], doc["rows"])
    return {"description": doc["description"].replace(" (issue 20)", " (issue 20), one table of every measured data set "
                                                     "(hqgnn.frontier picks the run's data set's rows)"),
            "experiments": {d: experiments[d] for d in dict.fromkeys(r["dataset"] for r in rows)},
            "metric": doc["metric"], "rows": rows}


