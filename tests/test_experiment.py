"""The experiment runner: grid expansion, resumability, the report files."""

import json
import shutil

import pytest
import yaml

from hqgnn.cli import main
from hqgnn.errors import ConfigError
from hqgnn.experiment import collect, expand_cells, load_experiment, paired_test


def _write(tmp_path, **changes):
    spec = {
        "name": "tiny",
        "out": str(tmp_path / "out"),
        "datasets": {"syn": "synthetic"},
        # ks: cut-offs of at most the 80 items (training refuses more)
        "settings": {"synthetic_users": 120, "synthetic_items": 80, "ks": [20, 50], "epochs": 4, "batch_size": 256,
                     "lr": 0.02, "dim": 8, "layers": 1, "eval_every": 2, "threads": 1, "val_fraction": 0.1, "patience": 0,
                     "delta_every": 2},
        "seeds": [1, 2],
        "cells": [{"model": "lightgcn"}, {"model": "hqgnn", "bits": [1, 2]}, {"model": "hashgnn"}, {"model": "lsh"}],
        "reference": {"model": "hashgnn", "bits": 1},
    }
    spec.update(changes)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_expansion_orders_post_hoc_last(tmp_path):
    cells = expand_cells(load_experiment(_write(tmp_path)))
    assert len(cells) == (1 + 2 + 1 + 1) * 2
    assert [c.model for c in cells][-2:] == ["lsh", "lsh"]
    assert {c.label for c in cells} == {"lightgcn", "hqgnn-b1", "hqgnn-b2", "hashgnn-b1", "lsh-b1"}


def test_named_variants_get_their_own_cells_and_settings(tmp_path):
    cells = expand_cells(load_experiment(_write(tmp_path, cells=[
        {"model": "hqgnn", "bits": 1},
        {"model": "hqgnn", "bits": 1, "name": "hqgnn-wide", "settings": {"ste_window": 3}}])))
    assert sorted(c.label for c in cells) == ["hqgnn-b1", "hqgnn-b1", "hqgnn-wide-b1", "hqgnn-wide-b1"]
    wide = [c for c in cells if c.name == "hqgnn-wide"]
    assert all(c.model == "hqgnn" and dict(c.settings)["ste_window"] == 3 for c in wide)
    assert len({c.run_dir(tmp_path) for c in cells}) == 4
    one_seed = expand_cells(load_experiment(_write(tmp_path, cells=[{"model": "ste", "bits": 2, "seeds": [7]}])))
    assert [c.seed for c in one_seed] == [7]


def test_experiment_runs_reports_and_resumes(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["experiment", str(path), "--quiet"]) == 0
    out = tmp_path / "out"
    report = out / "reports" / "tiny"
    rows = (report / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 10
    summary = (report / "summary.md").read_text()
    assert "hqgnn" in summary and "gain vs hashgnn-1b" in summary and "p=" in summary
    assert (report / "syn-bits.png").stat().st_size > 1000 and (report / "syn-curves.png").is_file()
    done = out / "syn" / "hqgnn-b2" / "seed1" / "metrics.json"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert main(["experiment", str(path), "--quiet"]) == 0  # nothing to recompute
    after = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert before == after
    # a removed cell is the only one recomputed
    done.unlink()
    assert main(["experiment", str(path), "--quiet"]) == 0
    assert done.is_file() and json.loads(done.read_text())["bits"] == 2
    changed = [p for p in out.rglob("metrics.json") if p.stat().st_mtime_ns != before[p]]
    assert changed == [done]
    # --report-only trains nothing: a missing cell stays missing and leaves the report
    shutil.rmtree(done.parent)
    (report / "results.csv").unlink()
    assert main(["experiment", str(path), "--quiet", "--report-only"]) == 0
    assert not done.parent.exists()
    rows = (report / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 9


def test_bad_experiment_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment key 'colour'"):
        load_experiment(_write(tmp_path, colour="red"))
    with pytest.raises(ConfigError, match="needs 'cells'"):
        load_experiment(_write(tmp_path, cells=[]))
    path = _write(tmp_path, settings={"lr": -1})
    assert main(["experiment", str(path), "--quiet"]) == 2


def test_paired_test():
    assert paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    p = paired_test([0.30, 0.31, 0.32, 0.305], [0.20, 0.22, 0.21, 0.2])
    assert p < 0.01
    assert paired_test([0.3], [0.2]) != paired_test([0.3], [0.2])  # nan with a single pair


def test_shards_split_the_grid_and_a_plain_run_finishes_it(tmp_path):
    from hqgnn.experiment import parse_shard

    assert parse_shard("2/3") == (1, 3) and parse_shard(None) == (0, 1)
    with pytest.raises(ConfigError, match="K must be in 1..N"):
        parse_shard("4/3")
    path = _write(tmp_path, seeds=[1], cells=[{"model": "lightgcn"}, {"model": "hqgnn", "bits": 1}, {"model": "lsh"}])
    assert main(["experiment", str(path), "--quiet", "--shard", "2/2"]) == 0
    out = tmp_path / "out" / "syn"
    # shard 2/2 holds hqgnn (index 1); lsh (index 2) belongs to shard 1/2
    assert (out / "hqgnn-b1" / "seed1" / "metrics.json").is_file()
    assert not (out / "lightgcn" / "seed1").exists()
    assert main(["experiment", str(path), "--quiet"]) == 0
    assert all((out / d / "seed1" / "metrics.json").is_file() for d in ("lightgcn", "hqgnn-b1", "lsh-b1"))


def test_seeds_option_runs_only_those_seeds(tmp_path):
    path = _write(tmp_path, seeds=[1, 2], cells=[{"model": "hqgnn", "bits": 1}])
    out = tmp_path / "out" / "syn" / "hqgnn-b1"
    assert main(["experiment", str(path), "--quiet", "--seeds", "2"]) == 0
    assert (out / "seed2" / "metrics.json").is_file() and not (out / "seed1").exists()
    assert main(["experiment", str(path), "--quiet", "--seeds", "9"]) == 2  # no such cell: one-line error
    assert main(["experiment", str(path), "--quiet"]) == 0
    assert (out / "seed1" / "metrics.json").is_file()


def test_report_keeps_named_variants_apart(tmp_path):
    path = _write(tmp_path, seeds=[1], cells=[{"model": "hqgnn", "bits": 1},
                                             {"model": "hqgnn", "bits": 1, "name": "hqgnn-wide",
                                              "settings": {"ste_window": 2}}])
    assert main(["experiment", str(path), "--quiet"]) == 0
    report = tmp_path / "out" / "reports" / "tiny"
    rows = (report / "results.csv").read_text().splitlines()
    assert sorted(r.split(",")[1] for r in rows[1:]) == ["hqgnn", "hqgnn-wide"]
    summary = (report / "summary.md").read_text()
    assert "| hqgnn-wide | 1 | 1 |" in summary and "| hqgnn | 1 | 1 |" in summary


def test_summary_names_single_seed_gains_instead_of_a_p_value():
    from hqgnn.experiment import summarise

    rows = [{"dataset": "d", "model": "hashgnn", "bits": 1, "seed": s, "recall@50": 0.2 + s / 100} for s in (1, 2)]
    rows += [{"dataset": "d", "model": "lsh", "bits": 1, "seed": 1, "recall@50": 0.11}]
    rows += [{"dataset": "d", "model": "hqgnn", "bits": 1, "seed": s, "recall@50": 0.22 + s / 100} for s in (1, 2)]
    text = summarise(rows, ["recall@50"], {"model": "hashgnn", "bits": 1})
    lsh = next(line for line in text.splitlines() if line.startswith("| lsh"))
    hq = next(line for line in text.splitlines() if line.startswith("| hqgnn"))
    assert "-47.6% (1 seed)" in lsh and "nan" not in text
    assert "(p=0)" in hq  # a constant paired difference: p = 0


def test_post_hoc_cells_quantize_mf_when_the_grid_has_no_lightgcn(tmp_path):
    from hqgnn.experiment import cell_config, full_precision_model

    path = _write(tmp_path, cells=[{"model": "mf"}, {"model": "ptq", "bits": 4}],
                  settings={"synthetic_users": 60, "synthetic_items": 50, "ks": [20, 50], "epochs": 2, "batch_size": 128,
                            "dim": 8, "layers": 0, "threads": 1, "val_fraction": 0.0, "eval_split": "test", "patience": 0})
    cells = expand_cells(load_experiment(path))
    assert full_precision_model(cells, "syn") == "mf"
    ptq = [c for c in cells if c.model == "ptq"][0]
    assert cell_config(ptq, tmp_path / "out", "mf").from_run.endswith("mf/seed1")
    assert main(["experiment", str(path), "--quiet"]) == 0
    rows = (tmp_path / "out" / "reports" / "tiny" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # mf and ptq-b4 for both seeds: ptq found its mf runs
    # with a lightgcn cell as well, lightgcn is the source
    both = expand_cells(load_experiment(_write(tmp_path, cells=[{"model": "mf"}, {"model": "lightgcn"}])))
    assert full_precision_model(both, "syn") == "lightgcn"


def test_compare_table_pairs_seeds_at_each_shared_bit_width():
    from hqgnn.experiment import compare_pairs

    def row(model, bits, seed, r):
        return {"dataset": "d", "model": model, "bits": bits, "seed": seed, "recall@50": r}

    rows = [row("hqgnn", 1, 1, 0.30), row("hqgnn", 1, 2, 0.32), row("hqgnn", 1, 3, 0.34),
            row("ste", 1, 1, 0.20), row("ste", 1, 2, 0.23), row("ste", 1, 3, 0.25),
            row("hqgnn", 2, 1, 0.5), row("ste", 2, 2, 0.4),  # no common seed at 2 bits
            row("hqgnn", 4, 1, 0.6)]  # no ste at 4 bits
    text = compare_pairs(rows, ["recall@50"], [["hqgnn", "ste"], ["hqgnn", "hashgnn"]])
    table = [line for line in text.splitlines() if line.startswith("| d |")]
    # means 0.32 / 0.2267: +41.2%; differences 0.10, 0.09, 0.09 -> t = 0.0933 / (0.00577 / sqrt 3) = 28.0, p = 0.00127
    assert table == ["| d | 1 | 3 | 0.3200 / 0.2267 | +41.2% (p=0.00127) |"]
    assert "No bit width has finished runs of both hqgnn and hashgnn" in text


def test_compare_must_name_pairs(tmp_path):
    with pytest.raises(ConfigError, match="compare must be a list of model pairs"):
        load_experiment(_write(tmp_path, compare=["hqgnn", "ste"]))


def test_start_from_cells_start_from_the_full_precision_cell_of_their_seed(tmp_path):
    from hqgnn.experiment import cell_config

    settings = {"synthetic_users": 60, "synthetic_items": 50, "ks": [20, 50], "epochs": 2, "batch_size": 128, "dim": 8,
                "threads": 1, "val_fraction": 0.0, "eval_split": "test", "patience": 0}
    cells_spec = [{"model": "hqgnn", "bits": 1, "name": "hqgnn-pre", "start_from": "lightgcn"}, {"model": "lightgcn"},
                  {"model": "lightgcn", "name": "lgn-d4", "settings": {"dim": 4}},
                  {"model": "hashgnn", "name": "hashgnn-d4-pre", "start_from": "lgn-d4", "settings": {"dim": 4}},
                  {"model": "lsh", "name": "lsh-d4", "start_from": "lgn-d4", "settings": {"dim": 4}},
                  {"model": "lsh"}]
    path = _write(tmp_path, cells=cells_spec, settings=settings)
    cells = expand_cells(load_experiment(path))
    assert [c.model for c in cells[:4]] == ["lightgcn"] * 4  # sources first
    pre = [c for c in cells if c.start_from == "lightgcn"]
    assert [cell_config(c, tmp_path / "out").from_run for c in pre] == [
        str(tmp_path / "out" / "syn" / "lightgcn" / f"seed{s}") for s in (1, 2)]
    named = [c for c in cells if c.start_from == "lgn-d4"]
    assert cell_config(named[0], tmp_path / "out").from_run == str(tmp_path / "out" / "syn" / "lgn-d4" / "seed1")
    assert main(["experiment", str(path), "--quiet"]) == 0
    for seed in (1, 2):
        cfg = (tmp_path / "out" / "syn" / "hqgnn-pre-b1" / f"seed{seed}" / "config.yaml").read_text()
        assert f"lightgcn{'/'}seed{seed}" in cfg.replace("\\", "/")
        assert (tmp_path / "out" / "syn" / "hashgnn-d4-pre-b1" / f"seed{seed}" / "metrics.json").is_file()
    # a post-hoc cell quantizes the full-precision cell it names, else the grid's lightgcn
    lsh = {c.display: cell_config(c, tmp_path / "out").from_run for c in cells if c.model == "lsh" and c.seed == 2}
    assert lsh == {"lsh-d4": str(tmp_path / "out" / "syn" / "lgn-d4" / "seed2"),
                   "lsh": str(tmp_path / "out" / "syn" / "lightgcn" / "seed2")}
    rows = {r["model"]: r for r in collect(cells, tmp_path / "out") if r["seed"] == 2}
    assert rows["lsh-d4"]["dim"] == 4 and rows["lsh"]["dim"] == 8


@pytest.mark.parametrize("cell,message", [
    ({"model": "hqgnn", "start_from": "hashgnn"}, "start_from='hashgnn' needs"),
    ({"model": "hqgnn", "start_from": "mf"}, r"start_from='mf' needs .* \(lightgcn\)"),  # no mf cell
    ({"model": "lightgcn", "start_from": "lightgcn"}, "start_from='lightgcn' needs"),
    ({"model": "ptq", "start_from": "lgn"}, r"start_from='lgn' needs .* \(lightgcn\)"),
    ({"model": "hqgnn", "start-from": "lightgcn"}, "unknown key 'start-from'"),
])
def test_bad_experiment_cells_are_named(tmp_path, cell, message):
    with pytest.raises(ConfigError, match=message):
        expand_cells(load_experiment(_write(tmp_path, cells=[{"model": "lightgcn"}, cell])))


def test_one_bit_width_grids_plot_bars_and_full_precision_variants_are_lines(tmp_path):
    from hqgnn.experiment import Cell, plot_kind, plot_report

    def row(model, base, bits, seed, value):
        return {"dataset": "d", "model": model, "base_model": base, "bits": bits, "seed": seed, "recall@50": value,
                "total_bytes": 1000 * bits, "float32_bytes": 32000}

    one_bit = [row("hqgnn", "hqgnn", 1, s, 0.2) for s in (1, 2)] + [row("lightgcn-d16", "lightgcn", 32, s, 0.3) for s in (1, 2)]
    # a renamed full-precision cell is still full precision: the grid has one quantized bit width
    assert plot_kind(one_bit) == "bars"
    assert plot_kind(one_bit + [row("hqgnn", "hqgnn", 4, 1, 0.25)]) == "bits"
    for rows, name in ((one_bit, "bars"), (one_bit + [row("hqgnn", "hqgnn", 4, 1, 0.25)], "bits")):
        out = tmp_path / name
        out.mkdir()
        cells = [Cell("d", "", "hqgnn", 1, 1, None, ())]  # no run folder: an empty curves plot
        plot_report(rows, cells, ["recall@50"], out, tmp_path)
        assert (out / "d-bits.png").stat().st_size > 1000


def test_jobs_run_the_grid_in_worker_processes_then_the_skipped_cells(tmp_path):
    path = _write(tmp_path)
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--jobs", "3", "--quiet"]) == 0
    cells = expand_cells(load_experiment(path))
    assert all((c.run_dir(out) / "metrics.json").is_file() for c in cells)
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["shard-1.log", "shard-2.log", "shard-3.log"]
    assert not any("Traceback" in p.read_text() for p in (out / "logs").iterdir())
    rows = (out / "reports" / "tiny" / "summary.md").read_text()
    assert "| lsh | 1 | 2 |" in rows and "| hqgnn | 2 | 2 |" in rows  # every cell of both seeds reported


def test_no_report_trains_without_writing_the_report(tmp_path):
    path = _write(tmp_path, cells=[{"model": "lightgcn"}], seeds=[1])
    assert main(["experiment", str(path), "--no-report", "--quiet"]) == 0
    assert (tmp_path / "out" / "syn" / "lightgcn" / "seed1" / "metrics.json").is_file()
    assert not (tmp_path / "out" / "reports").exists()


def test_a_failing_worker_is_named_with_its_log(tmp_path, capsys):
    path = _write(tmp_path, datasets={"gone": str(tmp_path / "no-such-folder")}, cells=[{"model": "lightgcn"}])
    assert main(["experiment", str(path), "--jobs", "2", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "experiment worker 1/2 exited with 2" in err and "no-such-folder" in err and "shard-1.log" in err
    assert err.count("\n") == 1
    with pytest.raises(ConfigError, match="--jobs 2: must be >= 1, and alone"):
        from hqgnn.experiment import run_experiment
        run_experiment(path, shard="1/2", jobs=2)


def test_the_experiment_package_imports_one_way():
    """spec, stats <- plots <- report <- runner: no module imports one later in this order
    (so no cycles), and none grows past ~600 lines."""
    import ast
    from pathlib import Path

    import hqgnn.experiment as package

    order = ["spec", "stats", "plots", "report", "runner"]
    root = Path(package.__file__).parent
    assert sorted(p.stem for p in root.glob("*.py")) == sorted(order + ["__init__"])
    for name in order:
        source = (root / f"{name}.py").read_text()
        assert source.count("\n") <= 600, f"{name}.py has {source.count(chr(10))} lines"
        siblings = {node.module for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        later = siblings - set(order[:order.index(name)])
        assert not later, f"experiment/{name}.py imports {sorted(later)}, which come after it"
