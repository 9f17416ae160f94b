"""Running a grid: the unfinished cells of one shard (``--shard K/N``), of some seeds, or in
``--jobs N`` worker processes (a shard each) followed by the cells they had to skip; then the
report of every finished cell."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from ..errors import ConfigError, HQGNNError
from .report import write_report
from .spec import Cell, cell_config, expand_cells, full_precision_model, load_experiment


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
    from ..api import Recommender, prepare_data

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
        source = next((r for r in (cfg.from_run, cfg.distill_from) if r and not (Path(r) / "model.pt").is_file()), None)
        if source:
            bar.write(f"skipped {cell.dataset} {cell.label} seed {cell.seed}: {source} is not finished (another shard?)")
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
