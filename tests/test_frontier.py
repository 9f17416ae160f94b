"""The accuracy-per-byte frontier: the code a budget picks, its errors, the shipped table, and
``hqgnn train --budget-bytes N`` end to end on the embedded synthetic data."""

import json
from importlib import resources

import pytest

from hqgnn.api import Recommender
from hqgnn.cli import main
from hqgnn.config import Config
from hqgnn.errors import ConfigError
from hqgnn.frontier import apply_budget, load_frontier, pick_code


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
    for r in rows:
        assert r["bytes_per_item"] == r["bits"] * r["dim"] / 8
        assert {"recall@50", "ndcg@50", "ratio_to_float", "queries_per_s", "seeds", "lr", "weight_decay"} <= set(r)
        assert 0 < r["recall@50"] < 1 and 0 < r["ndcg@50"] < 1 and r["seeds"]
    floats = [r for r in rows if r["model"] == "lightgcn" and r["dim"] == 64]
    assert len(floats) == 1 and floats[0]["ratio_to_float"] == pytest.approx(1.0)
    for r in rows:  # ratio_to_float is recall@50 over the float reference's
        assert r["ratio_to_float"] == pytest.approx(r["recall@50"] / floats[0]["recall@50"])
    codes = {(r["bits"], r["bytes_per_item"]) for r in rows if r["model"] != "lightgcn"}
    assert {(b, 8) for b in (1, 2, 4, 8)} <= codes  # the 8-byte budget of every bit width


def _best_shipped(budget: float) -> dict:
    codes = [r for r in _shipped()["rows"] if r["model"] != "lightgcn" and r["bytes_per_item"] <= budget]
    top = max(r["ratio_to_float"] for r in codes)
    return min((r for r in codes if r["ratio_to_float"] == top), key=lambda r: r["bytes_per_item"])


@pytest.mark.parametrize("budget", [4, 8, 16, 32])
def test_shipped_pick_is_the_best_measured_code_within_the_budget(budget):
    best = _best_shipped(budget)
    pick = pick_code(budget)
    assert (pick.bits, pick.dim) == (best["bits"], best["dim"])


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
