"""``hqgnn demo`` / ``make demo``: accuracy, memory and speed of LightGCN, 4-bit and 1-bit HQ-GNN.

On the embedded synthetic data (3,000 users x 2,000 items, ``hqgnn.data.make_synthetic``) the
demo trains three models, each with the settings measured to work for it
(``default_configs/synthetic-demo-*.yaml``, all building on ``synthetic-demo.yaml``), exports
each run to an artifact (``hqgnn.export.export_run``), times exact top-20 retrieval over all
users from every artifact on the same thread count, and prints one table: Recall@20 and
NDCG@20 (test split, the epoch chosen on the validation split), bytes per item of the
artifact's item codes, queries/s and the speed relative to float32, training seconds; then
the popularity baseline, where the run folders and artifacts are, and what to try next.

Settings measured (validation Recall@20: the best evaluation of the run, and its epoch; the
validation split is 10% of each user's training items, on which popularity scores 0.160; it
scores 0.171 on test). Every run: synthetic-demo.yaml's other settings (batch 4096,
weight_decay 1e-4, seed 2020), dim 64 and lr 0.01 unless said. "s": training seconds of the
run on 2 shared CPU cores, one thread, beside another run (about twice a run alone): for
comparing settings only.

======  =========================================================  ==============  ====
model   settings                                                   valid R@20      s
======  =========================================================  ==============  ====
1 bit   the old demo: 3 layers, 40 epochs                          0.175 (ep 40)   18
1 bit   2 layers, 40 epochs                                        0.232 (ep 40)   14
1 bit   2 layers, 80 epochs                                        0.232 (ep 40)   39
1 bit   2 layers, lr 0.03 / lr 0.1                                 0.208 / 0.162   19
1 bit   1 layer, lr 0.03 / 4 layers, lr 0.03                       0.156 / 0.222   29/50
1 bit   2 layers, lr 0.02, weight_decay 1e-3                       0.227 (ep 20)   24
1 bit   2 layers, weight_decay 1e-3, 80 epochs / 1e-5              0.230 / 0.224   33
1 bit   2 layers, lr 0.02 cosine schedule                          0.220 (ep 20)   25
1 bit   2 layers, batch 2048 / ste_window 0.75                     0.218 / 0.221   36
1 bit   2 layers, positive_sampling users                          0.203 (ep 40)   21
1 bit   2 layers, negatives 4                                      0.238 (ep 30)   26
1 bit   2 layers, dim 128, 40 epochs                               0.267 (ep 40)   51
1 bit   2 layers, dim 128, negatives 4 (chosen: 20 epochs)         0.276 (ep 20)   22
1 bit   the same, seed 2                                           0.269 (ep 20)   27
1 bit   2 layers, dim 128, negatives 8                             0.271 (ep 20)   28
1 bit   2 layers, dim 128, negatives 4, lr 0.02                    0.270 (ep 15)   29
1 bit   2 layers, dim 128, negatives 4, weight_decay 1e-3          0.277 (ep 25)   29
1 bit   3 layers, dim 128, negatives 4, 25 epochs                  0.231 (ep 25)   24
4 bits  3 layers, 40 epochs / 2 layers                             0.340 / 0.330   25
4 bits  3 layers, lr 0.02, 20 epochs                               0.328 (ep 20)   15
4 bits  3 layers, dim 128, 25 epochs                               0.346 (ep 25)   19
4 bits  3 layers, dim 128, negatives 4 (chosen: 15 epochs, 0.348)  0.350 (ep 20)   24
4 bits  the same, seed 2                                           0.348 (ep 15)   32
float   3 layers, 40 epochs / 2 layers                             0.340 / 0.334   17
float   3 layers, lr 0.02, 20 epochs                               0.333 (ep 15)   12
float   3 layers, dim 128, 25 epochs                               0.346 (ep 20)   17
float   3 layers, dim 128, negatives 4 (chosen: 15 epochs, 0.352)  0.354 (ep 20)   27
float   3 layers, dim 128, negatives 4, lr 0.02                    0.346 (ep 10)   23
======  =========================================================  ==============  ====

What moved 1-bit codes: 2 LightGCN layers instead of 3 (+0.057; the README's layer-filter
finding: LightGCN's uniform 3-layer filter has h(-1) = 0, which costs sign codes), then dim
128 (+0.035; 16 bytes per item, still 32x less than float32 at the same dim), then 4
negatives per positive (+0.004 to +0.009 for every model). Higher learning rates converge
sooner and peak lower; weight decay, the cosine schedule, smaller batches, a narrower
straight-through window and per-user sampling did not help. LightGCN and 4-bit codes prefer
3 layers. Epochs: 20 for the 1-bit codes (0.255 at 15, 0.275 at 25), 15 for the others (0.002
below their best at 20, for a quarter less training). The whole demo then took 77 s of wall
time on 2 cores beside other jobs (load average 3.5 to 3.9; training 65 s, export 2.5 s,
retrieval timing 4.6 s); 84 s with 20 epochs for every model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, TextIO

from .config import Config, parse_overrides, read_config_chain

#: cut-off of the table's metrics and of the timed retrieval
K = 20


@dataclass(frozen=True)
class DemoModel:
    slug: str  # run folder and artifact name
    label: str  # the table's row
    config: str  # file under hqgnn/default_configs/


MODELS = (
    DemoModel("lightgcn", "LightGCN", "synthetic-demo-lightgcn.yaml"),
    DemoModel("hqgnn-4bit", "HQ-GNN 4-bit", "synthetic-demo-hqgnn-4bit.yaml"),
    DemoModel("hqgnn-1bit", "HQ-GNN 1-bit", "synthetic-demo-hqgnn-1bit.yaml"),
)


def default_config_path(name: str) -> str:
    """The path of a bundled config file (``hqgnn/default_configs/NAME``)."""
    return str(resources.files("hqgnn") / "default_configs" / name)


def model_config(entry: DemoModel, config: Optional[str] = None, overrides: Sequence[str] = (),
                 device: str = "auto") -> Config:
    """The settings of one demo model: defaults < its bundled file (and the shared base) <
    ``config`` (a user's YAML file, applied to every model) < ``device`` < ``overrides``
    (``key=value``). The model and bit width stay the row's own."""
    cfg = Config.load(default_config_path(entry.config))
    model, bits = cfg.model, cfg.bits
    if config:
        for file, values in read_config_chain(config):
            cfg = cfg.updated(values, file)
    cfg = cfg.updated({"device": device}, "command line")
    if overrides:
        cfg = cfg.updated(parse_overrides(list(overrides)), "--set")
    return cfg.updated({"model": model, "bits": bits}, entry.config).validate()


_DATA_KEYS = ("data", "test_fraction", "split_seed", "user_column", "item_column", "val_fraction",
              "synthetic_users", "synthetic_items", "synthetic_seed")


def _data_key(cfg: Config) -> tuple:
    return tuple(str(getattr(cfg, key, None)) for key in _DATA_KEYS)


def time_retrieval(indexes: dict, k: int = K, threads: int = 1, rounds: int = 3,
                   min_seconds: float = 0.1) -> dict:
    """Queries/s of exact top-``k`` retrieval over all users of each index (seen items excluded).

    One warm-up search each (compilation, caches), then ``rounds`` interleaved rounds (load
    changes on a shared machine hit every index alike); a round repeats an index's search
    until ``min_seconds`` have passed. The fastest round of each index counts.
    """
    for index in indexes.values():
        index.search(None, k, exclude="train", threads=threads)
    best: dict = {}
    for _ in range(rounds):
        for name, index in indexes.items():
            n, t0 = 0, time.perf_counter()
            while True:
                index.search(None, k, exclude="train", threads=threads)
                n += 1
                seconds = time.perf_counter() - t0
                if seconds >= min_seconds:
                    break
            qps = n * index.n_users / seconds
            best[name] = max(best.get(name, 0.0), qps)
    return best


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def _kernel(index) -> str:
    return getattr(index, "kernel_name", None) or "sgemm + select"


def run_demo(out="runs/demo", config: Optional[str] = None, overrides: Sequence[str] = (), device: str = "auto",
             quiet: bool = False, threads: int = 1, stream: Optional[TextIO] = None) -> dict:
    """Train, export and time the three demo models; print the table to ``stream`` (stdout).

    Returns ``{"rows": [...], "popularity": {...}, "out": Path, "seconds": float}``; each row
    holds the model's label, slug, run folder, artifact, test metrics, ``bytes_per_item``,
    ``qps`` and ``speedup`` (against the float32 row; None without one).
    """
    from .api import Recommender, prepare_data
    from .evaluation import evaluate_popularity
    from .export import ArtifactRecommender, export_run
    from .runs import clear_run
    from .training import excluded_for

    stream = stream or sys.stdout
    t_start = time.perf_counter()
    out = Path(out)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=stream, flush=True)

    configs = [(entry, model_config(entry, config, overrides, device)) for entry in MODELS]
    datasets: dict = {}
    for _, cfg in configs:  # bad data or settings fail here, before anything is written
        key = _data_key(cfg)
        if key not in datasets:
            datasets[key] = prepare_data(cfg)
    data = datasets[_data_key(configs[0][1])]

    rows = []
    train_total = export_total = 0.0
    for entry, cfg in configs:
        run_dir = out / entry.slug
        clear_run(run_dir)  # the demo always trains afresh: no old results beside the new ones
        say(f"training {entry.label} ({cfg.layers} layers, dim {cfg.dim}, lr {cfg.lr}, up to {cfg.epochs} epochs) "
            f"-> {run_dir}")
        t0 = time.perf_counter()
        metrics = Recommender(config=cfg, model=cfg.model).fit(datasets[_data_key(cfg)], out_dir=run_dir,
                                                               progress=not quiet)
        train_total += time.perf_counter() - t0
        artifact = out / "artifacts" / f"{entry.slug}.hqgnn"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        export_run(run_dir, artifact)
        export_total += time.perf_counter() - t0
        rows.append({"label": entry.label, "slug": entry.slug, "model": cfg.model, "dim": cfg.dim,
                     "run_dir": run_dir, "artifact": artifact, "metrics": metrics})

    say(f"timing exact top-{K} retrieval over all users from each artifact ({_threads(threads)})")
    t0 = time.perf_counter()
    recommenders = {row["slug"]: ArtifactRecommender(row["artifact"]) for row in rows}
    qps = time_retrieval({slug: rec.index for slug, rec in recommenders.items()}, threads=threads)
    timing_seconds = time.perf_counter() - t0
    for row in rows:
        row["bits"] = int(recommenders[row["slug"]].index.bits)  # 32: float32 embeddings
    float_qps = next((qps[r["slug"]] for r in rows if r["bits"] == 32), None)
    for row in rows:
        index = recommenders[row["slug"]].index
        row["bytes_per_item"] = int(index.memory_bytes()["bytes_per_item"])
        row["artifact_bytes"] = row["artifact"].stat().st_size
        row["kernel"] = _kernel(index)
        row["qps"] = qps[row["slug"]]
        row["speedup"] = row["qps"] / float_qps if float_qps else None

    pop = evaluate_popularity(data.train, data.test, excluded_for("test", data), ks=sorted({K, *configs[0][1].ks}))
    seconds = time.perf_counter() - t_start
    _print_report(stream, data, rows, pop, threads, seconds, train_total, export_total, timing_seconds)
    return {"rows": rows, "popularity": pop, "out": out, "seconds": seconds}


def hqgnn_command() -> str:
    """How to run ``hqgnn`` from a shell in the current folder, as printed for the user to paste:
    ``hqgnn`` when that name on PATH is this environment's command (an activated venv), else
    this environment's script (``.venv/bin/hqgnn`` after ``make demo``), else ``PYTHON -m hqgnn``;
    paths under the current folder are written relative to it."""
    import os
    import shlex
    import shutil

    bindir = Path(sys.executable).parent  # the environment's bin/ (a venv's python may be a symlink: not resolved)
    script = bindir / ("hqgnn.exe" if os.name == "nt" else "hqgnn")
    found = shutil.which("hqgnn")
    if script.is_file() and found and Path(found).resolve() == script.resolve():
        return "hqgnn"

    def shell(path: Path) -> str:
        try:
            rel = path.absolute().relative_to(Path.cwd())
            text = str(rel) if rel.parent != Path(".") else f"./{rel}"
        except ValueError:
            text = str(path)
        return shlex.quote(text)

    if script.is_file() and os.access(script, os.X_OK):
        return shell(script)
    return f"{shell(Path(sys.executable))} -m hqgnn"


def _print_report(stream, data, rows, pop, threads, seconds, train_total, export_total, timing_seconds) -> None:
    def p(line: str = "") -> None:
        print(line, file=stream)

    n_valid = data.valid.nnz if data.valid is not None else 0
    n_test = int((data.test.getnnz(axis=1) > 0).sum())
    picked = (f"{n_valid:,} of them the validation split that picked each model's epoch" if n_valid
              else "no validation split: each model's last epoch")
    p()
    p(f"{data.name} data: {data.n_users:,} users x {data.n_items:,} items, {data.train.nnz + n_valid:,} training "
      f"interactions ({picked}); metrics on the test split ({n_test:,} users)")
    p(f"bytes/item: the artifact's item codes; queries/s: exact top-{K} over all {data.n_users:,} users, "
      f"seen items excluded, {_threads(threads)}, best of 3 rounds")
    p()
    head = f"{'model':<14}{'Recall@20':>10}{'NDCG@20':>9}{'bytes/item':>12}{'queries/s':>11}{'vs float32':>12}{'train s':>9}"
    p(head)
    p("-" * len(head))
    for r in rows:
        m = r["metrics"]
        speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
        p(f"{r['label']:<14}{m['recall@20']:>10.4f}{m['ndcg@20']:>9.4f}{r['bytes_per_item']:>12,}"
          f"{r['qps']:>11,.0f}{speed:>12}{m.get('train_seconds', 0.0):>9.1f}")
    p(f"{'popularity':<14}{pop['recall@20']:>10.4f}{pop['ndcg@20']:>9.4f}{'-':>12}{'-':>11}{'-':>12}{'-':>9}")
    p()
    fp = next((r for r in rows if r["bits"] == 32), None)
    if fp is not None:
        fp_recall = fp["metrics"]["recall@20"]
        for r in rows:
            if r is fp:
                continue
            p(f"{r['label']}: {fp['bytes_per_item'] / r['bytes_per_item']:.0f}x less memory per item than float32, "
              f"{100 * r['metrics']['recall@20'] / fp_recall:.0f}% of LightGCN's Recall@20 "
              f"({r['metrics']['recall@20'] / pop['recall@20']:.2f}x popularity's), "
              f"{r['speedup']:.2f}x float32's queries/s (kernel {r['kernel']})")
        slow = [r for r in rows if 2 <= r["bits"] <= 8 and r["speedup"] < 1]
        if slow:
            p(f"  ({', '.join(r['label'] for r in slow)} slower than float32 here: codes of 2 to 8 bits run fastest "
              "on the int8-dot kernel (CPUs with AVX-512 VNNI, 3-4x float32, see the README's retrieval row) or "
              f"int16-dot (AVX2); this CPU uses {', '.join(sorted({r['kernel'] for r in slow}))})")
        p()
    p("run folders (config.yaml, history.jsonl, metrics.json, model.pt):")
    for r in rows:
        p(f"  {r['run_dir']}")
    p("artifacts (packed codes + id maps + seen items, checksummed):")
    for r in rows:
        p(f"  {r['artifact']}  ({r['artifact_bytes'] / 1024:,.0f} KiB)")
    one_bit = next((r for r in rows if r["bits"] == 1), rows[-1])
    user = data.original_user_ids()[0]
    hq = hqgnn_command()  # runnable as printed: .venv/bin/hqgnn after `make demo` without an activated venv
    tries = [
        (f"{hq} recommend {one_bit['artifact']} --user {user} --k 10", f"top-10 items for user {user}, from the 1-bit codes"),
        (f"{hq} serve {one_bit['artifact']} --port 8000", "HTTP service; OpenAPI page at /docs"),
        (f"{hq} evaluate {one_bit['run_dir']} --k 20 50 100", "the run's test metrics at more cut-offs"),
    ]
    width = max(len(cmd) for cmd, _ in tries)
    p()
    p("what to try next:")
    for cmd, why in tries:
        p(f"  {cmd:<{width}}   # {why}")
    p("  # real data, with the settings behind the README's numbers (configs/: MovieLens-1M and Gowalla):")
    p(f"  {hq} train --data ../shared/data/ml-1m --model hqgnn --bits 1 --config configs/ml-1m-hqgnn-1bit.yaml "
      "--out runs/ml1m-hq1")
    p()
    p(f"demo took {seconds:.0f} s: training {train_total:.0f} s, export {export_total:.1f} s, "
      f"retrieval timing {timing_seconds:.1f} s")
