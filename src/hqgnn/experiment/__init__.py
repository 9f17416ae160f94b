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
      - {model: hqgnn, bits: 1, name: hqgnn-kd, distill_from: lightgcn}  # that cell's run as teacher
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
``from_run``, a pre-training stage). ``distill_from: NAME`` makes that cell's run the teacher
of a trained quantized cell (setting ``distill_from``; :mod:`hqgnn.models.distill`), the
teacher's run of the same seed, or of the seed ``teacher_seed: N`` names (one teacher for every seed).

The package, imported one way (no module imports one that imports it back)::

    spec     the file: load_experiment, expand_cells -> Cell, cell_config
    stats    seed_std, paired_test, gain_with_p
    plots    the PNGs (spec, stats)
    report   results.csv, summary.md, then the plots (spec, stats, plots)
    runner   the cells of a shard, --jobs workers, then the report (spec, report)

The trainer is imported only when a cell runs (:func:`run_experiment`).
"""

from .plots import plot_kind, plot_report
from .report import collect, compare_pairs, report_dir, summarise, write_report
from .runner import parse_shard, run_experiment, run_workers
from .spec import Cell, cell_config, expand_cells, full_precision_model, load_experiment
from .stats import gain_with_p, paired_test, seed_std

__all__ = [
    "Cell", "load_experiment", "expand_cells", "full_precision_model", "cell_config",
    "parse_shard", "run_experiment", "run_workers",
    "seed_std", "paired_test", "gain_with_p",
    "collect", "summarise", "compare_pairs", "report_dir", "write_report",
    "plot_report", "plot_kind",
]
