"""`hqgnn demo`: three trained, exported and timed models in one table, on tiny synthetic data."""

from __future__ import annotations

import io
import json
import re

import pytest

from hqgnn.cli import main
from hqgnn.demo import MODELS, model_config, run_demo
from hqgnn.export import ArtifactRecommender

DIM = 64  # a multiple of 64: packed codes fill whole 8-byte words, so bytes per item are exact
TINY = ["synthetic_users=200", "synthetic_items=150", "epochs=2", "eval_every=1", f"dim={DIM}"]
LABELS = ("LightGCN", "HQ-GNN 4-bit", "HQ-GNN 1-bit", "popularity")
ROW = re.compile(r"^(" + "|".join(re.escape(x) for x in LABELS) + r")\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$")


def table_rows(text: str) -> dict:
    rows = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = m.groups()[1:]
    return rows


def test_demo_prints_accuracy_memory_and_speed_and_writes_loadable_artifacts(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--set", *TINY]) == 0
    text = capsys.readouterr().out
    rows = table_rows(text)
    assert list(rows) == list(LABELS), text

    # Recall@20, NDCG@20: the test metrics of each run folder
    for entry, label in zip(MODELS, LABELS):
        metrics = json.loads((out / entry.slug / "metrics.json").read_text())
        recall, ndcg = rows[label][:2]
        assert float(recall) == pytest.approx(metrics["recall@20"], abs=1e-4)
        assert float(ndcg) == pytest.approx(metrics["ndcg@20"], abs=1e-4)
        assert 0 <= float(recall) <= 1

    # bytes per item of the artifacts' item codes: float32 4 d, 4 bits d / 2 (8x less), 1 bit d / 8 (32x less)
    per_item = {label: int(rows[label][2].replace(",", "")) for label in LABELS[:3]}
    assert per_item == {"LightGCN": 4 * DIM, "HQ-GNN 4-bit": DIM // 2, "HQ-GNN 1-bit": DIM // 8}
    assert per_item["LightGCN"] == 8 * per_item["HQ-GNN 4-bit"] == 32 * per_item["HQ-GNN 1-bit"]

    # queries/s of every artifact and its speed against float32; the baseline has none
    for label in LABELS[:3]:
        assert float(rows[label][3].replace(",", "")) > 0
        assert float(rows[label][4].rstrip("x")) > 0
    assert rows["LightGCN"][4] == "1.00x"
    assert rows["popularity"][2:5] == ("-", "-", "-")

    # where things are, and what to try next
    for entry in MODELS:
        assert str(out / entry.slug) in text
        assert str(out / "artifacts" / f"{entry.slug}.hqgnn") in text
    assert "hqgnn recommend" in text and "hqgnn serve" in text and "hqgnn evaluate" in text and "hqgnn train" in text

    # the artifacts exist, load, and answer
    for entry, bits in zip(MODELS, (32, 4, 1)):
        path = out / "artifacts" / f"{entry.slug}.hqgnn"
        assert path.is_file()
        rec = ArtifactRecommender(path)
        info = rec.info()
        assert (info["bits"], info["dim"], info["n_users"], info["n_items"]) == (bits, DIM, 200, 150)
        items, _ = rec.index.search([0], 5, exclude="train")
        assert items.shape == (1, 5) and (items >= 0).all()


def test_demo_reruns_into_the_same_folder(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out, overrides=TINY, quiet=True, stream=io.StringIO())
    again = run_demo(out, overrides=TINY + ["epochs=1"], quiet=True, stream=io.StringIO())
    assert [r["label"] for r in again["rows"]] == [r["label"] for r in first["rows"]] == list(LABELS[:3])
    for row in again["rows"]:
        assert row["metrics"]["epochs"] == 1  # trained afresh, not the old run's results
        assert row["artifact"].is_file()


def test_each_demo_model_keeps_its_own_settings():
    cfgs = {entry.slug: model_config(entry, overrides=["bits=2", "model=mf", "epochs=3"]) for entry in MODELS}
    assert (cfgs["lightgcn"].model, cfgs["hqgnn-4bit"].bits, cfgs["hqgnn-1bit"].bits) == ("lightgcn", 4, 1)
    assert cfgs["hqgnn-4bit"].model == cfgs["hqgnn-1bit"].model == "hqgnn"
    assert all(cfg.epochs == 3 and cfg.data == "synthetic" for cfg in cfgs.values())  # --set reaches every model
    assert len({cfg.dim for cfg in cfgs.values()}) == 1  # one dim: bytes per item compare like for like
    assert cfgs["hqgnn-1bit"].layers == 2 and cfgs["hqgnn-4bit"].layers == cfgs["lightgcn"].layers == 3
