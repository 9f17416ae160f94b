"""The accuracy-per-byte frontier: the code a budget picks, its errors, the shipped table, and
``hqgnn train --budget-bytes N`` end to end on the embedded synthetic data."""

import json
import sys
from importlib import resources
from pathlib import Path

import pytest

from hqgnn.api import Recommender
from hqgnn.cli import main
from hqgnn.config import Config
from hqgnn.errors import ConfigError
from hqgnn.frontier import apply_budget, dataset_of, load_frontier, merge_rows, pick_code


def _row(bits, dim, ratio, qps=100_000, model="hqgnn", dataset="ml-1m"):
    return {"dataset": dataset, "model": model, "bits": bits, "dim": dim, "bytes_per_item": bits * dim / 8,
            "recall@50": 0.39 * ratio, "ndcg@50": 0.38 * ratio, "ratio_to_float": ratio, "queries_per_s": qps,
            "seeds": [1, 2, 3]}


#: a hand-written table: 4, 8, 16 and 32 bytes per item, a float reference and a small float
TABLE = [
    _row(32, 64, 1.0, 60_000, model="lightgcn"),
    _row(32, 8, 0.95, 90_000, model="lightgcn"),  # 32 bytes and better than 8 x 32's codes: never picked
    _row(1, 32, 0.70), _row(2, 16, 0.78), _row(4, 8, 0.75),
    _row(1, 64, 0.82, 350_000), _row(2, 32, 0.91), _row(4, 16, 0.93),
    _row(4, 32, 0.985, 200_000), _row(2, 64, 0.985, 300_000),  # a tie: the faster one
    _row(8, 32, 0.99),
]


@pytest.mark.parametrize("budget,bits,dim", [
    (4, 2, 16), (7.5, 2, 16), (8, 4, 16), ("8", 4, 16), (12, 4, 16), (16, 2, 64), (31, 2, 64),
    (32, 8, 32), (1000, 8, 32),
])
def test_pick_for_budgets(budget, bits, dim):
    pick = pick_code(budget, rows=TABLE)
    assert (pick.bits, pick.dim) == (bits, dim)
    assert pick.bytes_per_item == bits * dim / 8


def test_ties_go_to_the_smaller_code():
    rows = [_row(4, 16, 0.9, 100_000), _row(8, 16, 0.9, 900_000)]
    assert (pick_code(16, rows=rows).bits, pick_code(16, rows=rows).dim) == (4, 16)


def test_the_line_says_what_and_why():
    assert pick_code(8, rows=TABLE).line() == ("budget 8 bytes/item: 4 bits x 16 dims "
                                               "(MovieLens-1M frontier: Recall@50 93% of float; 1 bit x 64: 82%)")
    assert pick_code(4.0, rows=TABLE).line() == ("budget 4 bytes/item: 2 bits x 16 dims "
                                                 "(MovieLens-1M frontier: Recall@50 78% of float; 1 bit x 32: 70%)")
    one_bit_only = [_row(1, 64, 0.82)]
    assert pick_code(10, rows=one_bit_only).line() == ("budget 10 bytes/item: 1 bit x 64 dims "
                                                       "(MovieLens-1M frontier: Recall@50 82% of float)")


@pytest.mark.parametrize("budget,message", [
    (3, "--budget-bytes 3: below the smallest measured code (4 bytes/item"),
    ("0", "--budget-bytes 0: expected a number of bytes per item > 0"),
    ("-8", "--budget-bytes -8: expected a number"),
    ("lots", "--budget-bytes lots: expected a number"),
    ("nan", "--budget-bytes nan: expected a number"),
])
def test_budget_errors(budget, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")) as exc:
        pick_code(budget, rows=TABLE)
    assert "\n" not in str(exc.value)


def test_apply_budget_sets_bits_dim_and_a_quantized_model():
    cfg, pick = apply_budget(Config(), 8, rows=TABLE)  # Config's default model: lightgcn
    assert (cfg.model, cfg.bits, cfg.dim) == ("hqgnn", 4, 16) and pick.row["ratio_to_float"] == 0.93
    cfg, _ = apply_budget(Config(model="ste", lr=0.02), 16, rows=TABLE)
    assert (cfg.model, cfg.bits, cfg.dim, cfg.lr) == ("ste", 2, 64, 0.02)


@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 2}, "--budget-bytes 8 picks the bit width and dims: drop --bits 2"),
    ({"overrides": ["lr=0.1", "dim=32"]}, "--budget-bytes 8 picks the bit width and dims: drop --set dim=32"),
    ({"model": "lightgcn"}, "--budget-bytes 8 picks a 4-bit code, which --model lightgcn does not train"),
    ({"model": "hashgnn"}, "--budget-bytes 8 picks a 4-bit code, which --model hashgnn does not train"),
])
def test_apply_budget_conflicts(kwargs, message):
    with pytest.raises(ConfigError, match="^" + message):
        apply_budget(Config(), "8", rows=TABLE, **kwargs)


def test_load_frontier_checks_rows(tmp_path):
    bad = tmp_path / "f.json"
    bad.write_text(json.dumps({"rows": [_row(4, 16, 0.9) | {"bytes_per_item": 16}]}))
    with pytest.raises(ConfigError, match="row 0 .4 bits x 16 dims. has bytes_per_item=16, expected bits . dim / 8 = 8"):
        load_frontier(bad)
    bad.write_text(json.dumps([{"dataset": "ml-1m", "bits": 4}]))
    with pytest.raises(ConfigError, match="row 0 has no 'model'"):
        load_frontier(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not a readable frontier table"):
        load_frontier(bad)


# ---------------------------------------------------------------- the shipped table
def _shipped() -> dict:
    return json.loads(resources.files("hqgnn").joinpath("default_configs/frontier.json").read_text())


def test_shipped_table_parses_and_its_bytes_are_bits_times_dim():
    doc = _shipped()
    rows = load_frontier()
    assert rows == doc["rows"] and rows
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    assert "ml-1m" in datasets and set(doc["experiments"]) == set(datasets)
    assert all(doc["experiments"][d] == f"experiments/frontier-{d}.yaml" for d in datasets)
    for r in rows:
        assert r["bytes_per_item"] == r["bits"] * r["dim"] / 8
        assert {"recall@50", "ndcg@50", "ratio_to_float", "queries_per_s", "seeds", "lr", "weight_decay"} <= set(r)
        assert 0 < r["recall@50"] < 1 and 0 < r["ndcg@50"] < 1 and r["seeds"]
    for d in datasets:
        floats = [r for r in rows if r["dataset"] == d and r["model"] == "lightgcn" and r["dim"] == 64]
        assert len(floats) == 1 and floats[0]["ratio_to_float"] == pytest.approx(1.0)
        for r in rows:  # ratio_to_float is recall@50 over its data set's float reference's
            if r["dataset"] == d:
                assert r["ratio_to_float"] == pytest.approx(r["recall@50"] / floats[0]["recall@50"])
    codes = {(r["bits"], r["bytes_per_item"]) for r in rows if r["model"] != "lightgcn" and r["dataset"] == "ml-1m"}
    assert {(b, 8) for b in (1, 2, 4, 8)} <= codes  # the 8-byte budget of every bit width


def _best_shipped(budget: float, dataset: str = "ml-1m") -> dict:
    codes = [r for r in _shipped()["rows"] if r["model"] != "lightgcn" and r["bytes_per_item"] <= budget
             and r["dataset"] == dataset]
    top = max(r["ratio_to_float"] for r in codes)
    return min((r for r in codes if r["ratio_to_float"] == top), key=lambda r: r["bytes_per_item"])


@pytest.mark.parametrize("budget", [4, 8, 16, 32])
def test_shipped_pick_is_the_best_measured_code_within_the_budget(budget):
    best = _best_shipped(budget)
    pick = pick_code(budget)  # no data set: MovieLens-1M's rows
    assert (pick.bits, pick.dim) == (best["bits"], best["dim"]) and pick.row["dataset"] == "ml-1m"
    assert pick_code(budget, dataset="synthetic").row == pick.row


# ---------------------------------------------------------------- the command line
SMALL = ["synthetic_users=150", "synthetic_items=100", "layers=2", "batch_size=512", "lr=0.02",
         "eval_every=2", "threads=1", "patience=0"]


def test_train_with_a_budget_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "2", "--quiet",
                 "--budget-bytes", "8", "--set", *SMALL]) == 0
    captured = capsys.readouterr()
    best = _best_shipped(8)
    unit = "bit" if best["bits"] == 1 else "bits"
    lines = [ln for ln in captured.err.splitlines() if "bytes/item" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"hqgnn: budget 8 bytes/item: {best['bits']} {unit} x {best['dim']} dims (")
    assert f"Recall@50 {best['ratio_to_float']:.0%} of float" in lines[0]
    metrics = json.loads(captured.out)
    assert (metrics["model"], metrics["bits"], metrics["dim"]) == ("hqgnn", best["bits"], best["dim"])
    assert json.loads((out / "metrics.json").read_text())["bytes_per_item"] == 8


@pytest.mark.parametrize("args,message", [
    (["--budget-bytes", "8", "--bits", "2"], "--budget-bytes 8 picks the bit width and dims: drop --bits 2"),
    (["--budget-bytes", "8", "--set", "dim=32"], "--budget-bytes 8 picks the bit width and dims: drop --set dim=32"),
    (["--budget-bytes", "0.5"], "--budget-bytes 0.5: below the smallest measured code"),
    (["--budget-bytes", "eight"], "--budget-bytes eight: expected a number of bytes per item > 0"),
    (["--budget-bytes", "8", "--model", "lightgcn"], "--budget-bytes 8 picks a"),
])
def test_train_budget_errors_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqgnn: error: " + message) and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("existing", [False, True])
def test_a_budget_run_refused_by_its_teacher_leaves_no_pick(tmp_path, capsys, existing):
    """The teacher is read once training starts, after budget.json: a refused run takes its pick
    back (and the folder it created), so no later --resume finds a pick with nothing to resume."""
    out = tmp_path / "run"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    code = main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "1", "--quiet", "--budget-bytes", "8",
                 "--set", *SMALL, f"distill_from={tmp_path / 'no-teacher'}", "distill_weight=0.3"])
    assert code == 2 and "no such folder" in capsys.readouterr().err
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not out.exists()


def test_recommender_budget_bytes():
    best = _best_shipped(16)
    rec = Recommender(budget_bytes=16, epochs=1)
    assert (rec.cfg.model, rec.cfg.bits, rec.cfg.dim) == ("hqgnn", best["bits"], best["dim"])
    assert rec.budget_pick.line().startswith("budget 16 bytes/item: ")
    assert Recommender().budget_pick is None
    with pytest.raises(ConfigError, match=r"^budget_bytes=16 picks the bit width and dims: drop bits=2"):
        Recommender(budget_bytes=16, bits=2)
    with pytest.raises(ConfigError, match=r"^budget_bytes=16 picks the bit width and dims: drop dim=8"):
        Recommender(budget_bytes=16, dim=8)


def test_the_budget_sets_the_model_before_settings_that_depend_on_it_are_checked():
    """A config's default lightgcn becomes hqgnn first: distill_from / from_run then fit it."""
    from hqgnn.config import Config
    from hqgnn.errors import ConfigError
    from hqgnn.frontier import apply_budget

    with pytest.raises(ConfigError, match="distill_from"):
        Config.load(overrides=["distill_from=teacher-run"])  # lightgcn: refused without a budget
    cfg, pick = apply_budget(Config.load(overrides=["distill_from=teacher-run"], validate=False), 8)
    assert (cfg.model, cfg.bits, cfg.dim) == ("hqgnn", pick.bits, pick.dim) and cfg.distill_from == "teacher-run"


# ---------------------------------------------------------------- several data sets
GOWALLA = [_row(32, 64, 1.0, model="lightgcn", dataset="gowalla"), _row(1, 64, 0.71, dataset="gowalla"),
           _row(2, 32, 0.80, dataset="gowalla"), _row(4, 32, 0.88, dataset="gowalla")]


@pytest.mark.parametrize("dataset,bits,dim,name", [
    ("gowalla", 2, 32, "Gowalla"), ("ml-1m", 4, 16, "MovieLens-1M"), (None, 4, 16, "MovieLens-1M"),
    ("synthetic", 4, 16, "MovieLens-1M"), ("never-measured", 4, 16, "MovieLens-1M"),
])
def test_the_pick_uses_the_rows_of_the_runs_data_set(dataset, bits, dim, name):
    pick = pick_code(8, rows=GOWALLA + TABLE, dataset=dataset)  # gowalla first: the default is ml-1m, not the first row
    assert (pick.bits, pick.dim) == (bits, dim)
    if dataset in ("gowalla", "ml-1m", None):
        assert f"({name} frontier: " in pick.line()
    else:  # a data set the table has no frontier of: the line says so before naming the one used
        assert f"(no frontier measured on {dataset}; {name} frontier: " in pick.line()


def test_a_table_without_the_default_data_set_uses_its_first():
    assert pick_code(8, rows=GOWALLA, dataset="synthetic").row["dataset"] == "gowalla"
    with pytest.raises(ConfigError, match="^--budget-bytes 4: below the smallest measured code .8 bytes/item"):
        pick_code(4, rows=GOWALLA, dataset="gowalla")  # no data set of the table measured a 4-byte code


def test_apply_budget_reads_the_data_set_from_the_data_setting(tmp_path):
    cfg, pick = apply_budget(Config(data="../shared/data/gowalla/"), 16, rows=TABLE + GOWALLA)
    assert (cfg.bits, cfg.dim, pick.row["dataset"]) == (4, 32, "gowalla")
    table = tmp_path / "gowalla.csv"
    table.write_text("user,item\n1,2\n")
    assert dataset_of(table) == "gowalla" and dataset_of(None) == dataset_of("synthetic") == "synthetic"
    assert dataset_of("../shared/data/ml-1m") == "ml-1m"
    _, pick = apply_budget(Config(data=str(table)), 16, rows=TABLE + GOWALLA)
    assert pick.row["dataset"] == "gowalla"
    _, pick = apply_budget(Config(), 16, rows=TABLE + GOWALLA)  # synthetic: MovieLens-1M's rows
    assert (pick.bits, pick.dim, pick.row["dataset"]) == (2, 64, "ml-1m")


def test_merge_rows_keeps_the_other_data_sets():
    new_gowalla = [_row(8, 8, 0.9, dataset="gowalla")]
    merged = merge_rows(TABLE + GOWALLA, new_gowalla)
    assert merged == TABLE + new_gowalla
    new_ml = [_row(4, 16, 0.5)]
    assert merge_rows(TABLE + GOWALLA, new_ml) == new_ml + GOWALLA  # ml-1m first, as before
    assert merge_rows(TABLE, GOWALLA) == TABLE + GOWALLA and merge_rows([], GOWALLA) == GOWALLA


# ---------------------------------------------------------------- benchmarks/frontier.py
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import frontier as bench_frontier
        import frontier_rows
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_frontier, frontier_rows


def test_package_doc_replaces_only_its_data_sets_rows(bench):
    _, rows_mod = bench
    old = json.dumps({"description": "d (issue 20)", "experiment": "experiments/frontier-ml-1m.yaml", "rows": TABLE})
    doc = {"description": "d (issue 20)", "experiment": "experiments/frontier-gowalla.yaml", "metric": "recall@50",
           "rows": GOWALLA, "paired_tests": []}
    pkg = rows_mod.package_doc(old, doc)
    assert pkg["rows"] == TABLE + GOWALLA
    assert pkg["experiments"] == {"ml-1m": "experiments/frontier-ml-1m.yaml", "gowalla": "experiments/frontier-gowalla.yaml"}
    again = rows_mod.package_doc(json.dumps(pkg), {**doc, "experiment": "experiments/frontier-ml-1m.yaml", "rows": TABLE[:3]})
    assert again["rows"] == TABLE[:3] + GOWALLA and list(again["experiments"]) == ["ml-1m", "gowalla"]


CSV_HEAD = "dataset,model,bits,seed,base_model,dim,epochs,recall@50,ndcg@50\n"


def _spec():
    return {"_base": ROOT / "experiments", "config": "../configs/gowalla-hqgnn-1bit.yaml",
            "datasets": {"gowalla": "../../shared/data/gowalla"}}


def test_import_rows_from_a_results_csv(bench, tmp_path):
    _, rows_mod = bench
    csv = tmp_path / "results.csv"
    csv.write_text(CSV_HEAD + "gowalla,hq-L2,1,2,hqgnn,64,360,0.30,0.10\n"
                   "gowalla,hq-L2,1,1,hqgnn,64,360,0.20,0.12\n"
                   "gowalla,hq-L2,1,3,hqgnn,64,360,0.10,0.08\n"
                   "ml-1m,hq-L2,1,1,hqgnn,64,360,0.90,0.90\n"  # another data set: not this experiment's
                   "gowalla,other,1,1,hqgnn,64,360,0.90,0.90\n"
                   "gowalla,lgn-L2,32,1,lightgcn,64,360,0.40,0.20\n"
                   "gowalla,lgn-L2,32,2,lightgcn,64,360,0.50,0.30\n")
    hq, lgn = rows_mod.import_rows(f"{csv}:hq-L2,lgn-L2", _spec())
    assert (hq["dataset"], hq["model"], hq["bits"], hq["dim"], hq["bytes_per_item"]) == ("gowalla", "hqgnn", 1, 64, 8)
    assert hq["seeds"] == [1, 2, 3] and hq["per_seed"]["recall@50"] == [0.2, 0.3, 0.1]
    assert hq["recall@50"] == pytest.approx(0.2) and hq["ndcg@50"] == pytest.approx(0.1)
    assert hq["recall@50_std"] == pytest.approx(0.1)  # sample std of 0.1, 0.2, 0.3
    assert (hq["lr"], hq["weight_decay"], hq["layers"]) == (0.015, 0.0001, 2)  # the config's
    assert (lgn["model"], lgn["bits"], lgn["bytes_per_item"], lgn["seeds"]) == ("lightgcn", 32, 256, [1, 2])
    assert lgn["recall@50"] == pytest.approx(0.45) and hq["queries_per_s"] is None and hq["_run"] is None
    csv.write_text(CSV_HEAD + "gowalla,hq-L2,1,1,hqgnn,64,40,0.2,0.1\n")
    with pytest.raises(SystemExit, match="ran 40 epochs, the experiment's config 360"):
        rows_mod.import_rows(f"{csv}:hq-L2", _spec())
    with pytest.raises(SystemExit, match="no rows of model 'nope'"):
        rows_mod.import_rows(f"{csv}:nope", _spec())


def _meta(bench_frontier, rows_mod, valid):
    cfg = rows_mod.spec_config(_spec())
    return {"experiment": "experiments/x.yaml", "command": "python benchmarks/frontier.py", "threads": 1, "repeat": 1,
            "machine": "m", "kernels": "k", "config": cfg, "valid": valid, "missing": []}


def test_summary_without_a_validation_split_says_so_and_has_no_screen(bench, tmp_path):
    bench_frontier, rows_mod = bench
    csv = tmp_path / "results.csv"
    csv.write_text(CSV_HEAD + "".join(f"gowalla,hq-L2,1,{s},hqgnn,64,360,0.{s}1,0.1\n" for s in (1, 2, 3))
                   + "".join(f"gowalla,lgn-L2,32,{s},lightgcn,64,360,0.5{s},0.2\n" for s in (1, 2, 3)))
    rows = rows_mod.import_rows(f"{csv}:hq-L2,lgn-L2", _spec())
    bench_frontier.set_ratios(rows)
    assert rows[0]["ratio_to_float"] == pytest.approx(0.21 / 0.52)
    text = bench_frontier.summary(rows, [], None, _meta(bench_frontier, rows_mod, valid=False))
    assert "no validation split; last epoch; untuned, one setting for every point" in text
    assert "## The screen" not in text and "best validation epoch" not in text
    assert "360 epochs" in text and "`configs/gowalla-hqgnn-1bit.yaml`" in text
    assert "| 8 | **1 bit x 64** | 3 |" in text and "0.2100 ± 0.1000" in text
    assert "Recall@50 0.5200" in text and "At 3 layers" in text and "0.2778" in text
    with_screen = bench_frontier.summary(rows, [], None, _meta(bench_frontier, rows_mod, valid=True))
    assert "## The screen" in with_screen and "no validation split" not in with_screen


def test_paired_tests_fall_back_to_a_smaller_one_bit_code_only_off_the_grid(bench):
    bench_frontier, _ = bench
    def row(bits, dim, vals):
        return {"dataset": "gowalla", "model": "hqgnn", "bits": bits, "dim": dim, "bytes_per_item": bits * dim // 8,
                "recall@50": sum(vals) / len(vals), "seeds": [1, 2, 3],
                "per_seed": {"recall@50": vals, "ndcg@50": vals}}
    one, four = row(1, 64, [0.1, 0.2, 0.3]), row(4, 32, [0.3, 0.4, 0.5])
    kinds = [t["kind"] for t in bench_frontier.tests([one, four], {(1, 64), (4, 32)})]
    assert kinds == ["best 16-byte code vs 1 bit (no 1 bit x 128 in the grid: the largest 1-bit code measured)"]
    t = bench_frontier.tests([one, four], {(1, 64), (4, 32)})[0]
    assert (t["a"], t["b"], t["seeds"]) == ("4 bits x 32", "1 bit x 64", [1, 2, 3])
    assert t["recall@50"]["gain"] == pytest.approx(0.4 / 0.2 - 1)
    assert bench_frontier.tests([one, four], {(1, 64), (4, 32), (1, 128)}) == []  # in the grid, not run: no stand-in


# ---------------------------------------------------------------- resume of a budget run
def test_resume_of_a_budget_run_needs_no_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "2", "--quiet",
                 "--budget-bytes", "8", "--set", *SMALL]) == 0
    best = _best_shipped(8)
    record = json.loads((out / "budget.json").read_text())
    assert (record["budget_bytes"], record["bits"], record["dim"], record["model"]) == (8, best["bits"], best["dim"], "hqgnn")
    capsys.readouterr()
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "4", "--quiet", "--resume",
                 "--set", *SMALL]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert (metrics["model"], metrics["bits"], metrics["dim"], metrics["epochs"]) == ("hqgnn", best["bits"], best["dim"], 4)
    assert "resuming the budget run" in captured.err
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "6", "--quiet", "--resume",
                 "--budget-bytes", "16", "--set", *SMALL]) == 2
    assert "--budget-bytes 16: this run was trained with --budget-bytes 8" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "6", "--quiet", "--resume",
                 "--bits", "2", "--set", *SMALL]) == 2  # an explicit setting is kept, and the checkpoint refuses it
    assert "checkpoint has bits=" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "2", "--quiet", "--overwrite",
                 "--model", "hqgnn", "--bits", "1", "--set", *SMALL]) == 0
    assert not (out / "budget.json").exists()  # a run over it without a budget leaves no stale record


def test_time_points_skips_rows_without_a_run(bench, tmp_path):
    bench_frontier, _ = bench
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "1", "--quiet", "--model", "hqgnn",
                 "--bits", "2", "--set", *SMALL]) == 0
    rows = [{"bits": 2, "_run": out, "queries_per_s": None}, {"bits": 32, "_run": None, "queries_per_s": None}]
    kernels = bench_frontier.time_points(rows, threads=1, repeat=1)
    assert rows[0]["queries_per_s"] > 0 and rows[0]["n_users"] == 150
    assert rows[1]["queries_per_s"] is None and "n_users" not in rows[1] and kernels.startswith("2-bit: ")


def test_a_refused_resume_writes_no_budget_record(tmp_path, capsys):
    """--resume --budget-bytes of a run trained without a budget is refused before anything is
    written, and the run still resumes as it was trained."""
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "2", "--quiet", "--model", "hqgnn",
                 "--bits", "1", "--set", *SMALL]) == 0
    capsys.readouterr()
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "4", "--quiet", "--resume",
                 "--budget-bytes", "8", "--model", "hqgnn", "--set", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"hqgnn: error: --budget-bytes 8: {out} was trained without a budget (no budget.json); resume it without --budget-bytes"
    assert not (out / "budget.json").exists()
    assert main(["train", "--data", "synthetic", "--out", str(out), "--epochs", "4", "--quiet", "--resume",
                 "--model", "hqgnn", "--bits", "1", "--set", *SMALL]) == 0


def test_api_resume_of_a_budget_run_without_the_budget(tmp_path):
    """fit(resume=True) of a budget run trains its recorded code, given no budget (as hqgnn train --resume);
    another budget is refused naming both as numbers."""
    import yaml

    out = tmp_path / "run"
    settings = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in SMALL)}
    Recommender(budget_bytes=8, epochs=2, **settings).fit("synthetic", out_dir=out, progress=False)
    best = _best_shipped(8)
    metrics = Recommender(epochs=4, **settings).fit("synthetic", out_dir=out, resume=True, progress=False)
    assert (metrics["model"], metrics["bits"], metrics["dim"], metrics["epochs"]) == ("hqgnn", best["bits"], best["dim"], 4)
    with pytest.raises(ConfigError) as err:
        Recommender(budget_bytes=16, epochs=6, **settings).fit("synthetic", out_dir=out, resume=True, progress=False)
    assert "budget_bytes=16: this run was trained with budget_bytes=8 (its budget.json)" in str(err.value)


@pytest.mark.parametrize("budget,bits,dim,why", [
    (4, 2, 16, "(no Gowalla code measured at 4 bytes/item; MovieLens-1M frontier: "),  # Gowalla has no 4-byte code
    (8, 2, 32, "(Gowalla frontier: "), (12, 2, 32, "(Gowalla frontier: "), (16, 4, 32, "(Gowalla frontier: "),
    (32, 8, 32, "(no Gowalla code measured at 32 bytes/item; MovieLens-1M frontier: "),  # not a 16-byte Gowalla code
])
def test_a_budget_beyond_the_runs_measured_sizes_uses_the_default_frontier(budget, bits, dim, why):
    pick = pick_code(budget, rows=GOWALLA + TABLE, dataset="gowalla")
    assert (pick.bits, pick.dim) == (bits, dim)
    assert why in pick.line()
