"""Settings layering (defaults < YAML < command line < --set) and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hqgnn.config import Config, parse_overrides, read_yaml
from hqgnn.errors import ConfigError


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults():
    cfg = Config.load()
    assert cfg.model == "lightgcn" and cfg.dim == 64 and cfg.lr == 1e-3 and cfg.ks == [20, 50, 100]


def test_layering_defaults_yaml_extra_set(tmp_path):
    path = write(tmp_path, "dim: 32\nlr: 0.01\nepochs: 7\nbits: 2\n")
    cfg = Config.load(path, overrides=["lr=0.05", "ks=[10, 20]"], extra={"epochs": 9, "seed": None})
    assert cfg.dim == 32  # yaml over default
    assert cfg.lr == 0.05  # --set over yaml
    assert cfg.epochs == 9  # command-line flag over yaml
    assert cfg.seed == 2020  # a None flag leaves the value alone
    assert cfg.bits == 2
    assert cfg.ks == [10, 20]
    assert cfg.layers == Config().layers  # untouched default
    # --set wins over a named command-line flag as well
    assert Config.load(path, overrides=["epochs=3"], extra={"epochs": 9}).epochs == 3


def test_set_values_are_typed(tmp_path):
    cfg = Config.load(overrides=["lr=1e-2", "dim=16", "max_train_seconds=2.5", "ks=5", "early_stop_metric=hit_rate@5", "hashgnn_soft=true", "data=synthetic"])
    assert cfg.lr == 0.01 and isinstance(cfg.lr, float)
    assert cfg.dim == 16 and isinstance(cfg.dim, int)
    assert cfg.max_train_seconds == 2.5
    assert cfg.ks == [5]  # a scalar becomes a one-element list
    assert cfg.hashgnn_soft is True
    assert cfg.data == "synthetic"


def test_scalar_ks_then_metric_must_follow():
    # the default early_stop_metric recall@20 is not among ks = [5]
    with pytest.raises(ConfigError, match="early_stop_metric='recall@20'"):
        Config.load(overrides=["ks=[5]"])
    assert Config.load(overrides=["ks=[5]", "early_stop_metric=ndcg@5"]).early_stop_metric == "ndcg@5"


def test_scientific_notation_without_dot(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string; a float setting must still take it
    cfg = Config.load(write(tmp_path, "weight_decay: 1e-4\n"), overrides=["lr=5E-3", "init_std=.05"])
    assert cfg.weight_decay == 1e-4 and cfg.lr == 5e-3 and cfg.init_std == 0.05
    with pytest.raises(ConfigError, match="must be a number"):
        Config.load(overrides=["lr=1e-x"])


def test_float_lr_accepts_integer_and_int_accepts_integral_float():
    cfg = Config.load(overrides=["lr=1", "dim=32.0", "max_train_seconds=null"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.dim == 32 and isinstance(cfg.dim, int)
    assert cfg.max_train_seconds is None


def test_unknown_key_names_key_and_origin(tmp_path):
    with pytest.raises(ConfigError) as err:
        Config.load(overrides=["learning_rate=0.1"])
    assert "'learning_rate'" in str(err.value) and "--set" in str(err.value)
    path = write(tmp_path, "dim: 8\nlayerz: 2\n")
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    assert "'layerz'" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "pair, key, value",
    [
        ("bits=9", "bits", "9"),
        ("bits=0", "bits", "0"),
        ("lr=-1", "lr", "-1"),
        ("ks=[0]", "ks", "[0]"),
        ("ks=[]", "ks", "[]"),
        ("model=foo", "model", "'foo'"),
        ("early_stop_metric=bad", "early_stop_metric", "'bad'"),
        ("early_stop_metric=recall@7", "early_stop_metric", "'recall@7'"),
        ("val_fraction=1", "val_fraction", "1"),
        ("eval_split=train", "eval_split", "'train'"),
        ("device=tpu", "device", "'tpu'"),
        ("dim=0", "dim", "0"),
        ("layer_weights=[0.5,0.5]", "layer_weights", "[0.5, 0.5]"),
        ("delta_scale=.nan", "delta_scale", "nan"),
    ],
)
def test_out_of_range_names_key_and_value(pair, key, value):
    with pytest.raises(ConfigError) as err:
        Config.load(overrides=[pair])
    msg = str(err.value)
    assert f"{key}=" in msg and value in msg, msg


def test_post_hoc_model_needs_a_run():
    with pytest.raises(ConfigError, match="from_run"):
        Config.load(overrides=["model=ptq"])
    assert Config.load(overrides=["model=ptq", "from_run=runs/fp"]).from_run == "runs/fp"
    assert Config.load(overrides=["model=hqgnn", "from_run=runs/fp"]).from_run == "runs/fp"  # optional start
    # a run folder that a model would silently ignore is refused
    with pytest.raises(ConfigError, match=r"from_run='runs/fp' does not apply to model='lightgcn'"):
        Config.load(overrides=["model=lightgcn", "from_run=runs/fp"])


@pytest.mark.parametrize(
    "pair, key",
    [("lr=abc", "lr"), ("dim=abc", "dim"), ("dim=1.5", "dim"), ("ks=abc", "ks"), ("hashgnn_soft=3", "hashgnn_soft"), ("epochs=true", "epochs")],
)
def test_type_errors(pair, key):
    with pytest.raises(ConfigError) as err:
        Config.load(overrides=[pair])
    msg = str(err.value)
    assert key in msg and pair.split("=", 1)[1] in msg.lower() and "--set" in msg, msg


def test_null_for_a_required_setting():
    with pytest.raises(ConfigError, match="dim cannot be null"):
        Config.load(overrides=["dim="])


def test_malformed_set_pairs():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["=3"])
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_overrides(["ks=[1, 2"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "dim: 32\nlr: 0.01\nks: [20, 50\nepochs: 3\n")
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:")
    line = int(msg[len(str(path)) + 1 :].split(":")[0])
    assert line in (3, 4)  # the unclosed list opens on line 3; the parser notices on line 4
    assert "invalid YAML" in msg


def test_yaml_must_be_a_mapping_and_exist(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(write(tmp_path, "- 1\n- 2\n"))
    assert read_yaml(write(tmp_path, "", name="empty.yaml")) == {}
    with pytest.raises(ConfigError, match="not found") as err:
        Config.load(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)


def test_save_and_load_round_trip(tmp_path):
    cfg = Config.load(overrides=["dim=24", "ks=[5,10]", "early_stop_metric=ndcg@10", "layer_weights=[0.5,0.25,0.25]", "layers=2"])
    cfg.save(tmp_path / "config.yaml")
    again = Config.load(tmp_path / "config.yaml")
    assert again == cfg


def test_bundled_demo_config_is_valid():
    from importlib import resources

    path = resources.files("hqgnn") / "default_configs" / "synthetic-demo.yaml"
    cfg = Config.load(str(path))
    assert cfg.data == "synthetic"


def test_config_file_builds_on_its_base(tmp_path):
    (tmp_path / "shared").mkdir()
    write(tmp_path / "shared", "dim: 32\nlayers: 3\nlr: 0.01\n", name="base.yaml")
    one_bit = write(tmp_path, "base: shared/base.yaml\nlayers: 2\nbits: 1\n", name="one-bit.yaml")
    cfg = Config.load(one_bit, ["lr=0.02"], {"seed": 5})
    # the base's settings, the file's over them, then the command line's over both
    assert (cfg.dim, cfg.layers, cfg.bits, cfg.lr, cfg.seed) == (32, 2, 1, 0.02, 5)
    # a setting of the base is checked and named with the base's file
    write(tmp_path / "shared", "dim: 32\nlayrs: 3\n", name="base.yaml")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown setting 'layrs'"):
        Config.load(one_bit)


def test_config_base_errors_name_the_file(tmp_path):
    missing = write(tmp_path, "base: nope.yaml\n", name="a.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        Config.load(missing)
    write(tmp_path, "base: c.yaml\n", name="b.yaml")
    write(tmp_path, "base: b.yaml\n", name="c.yaml")
    with pytest.raises(ConfigError, match=r"cycle"):
        Config.load(tmp_path / "b.yaml")
    bad = write(tmp_path, "base: 3\n", name="d.yaml")
    with pytest.raises(ConfigError, match=r"d\.yaml: setting 'base' must be the path"):
        Config.load(bad)


# ---------------------------------------------------------------- one spelling each
def test_mf_is_lightgcn_with_zero_layers():
    """``model: mf`` (old configs, experiment cells, version-1 run folders) reads as lightgcn with 0
    layers; its layers / layer_weights were always ignored, and still are."""
    mf = Config.load(overrides=["model=mf", "layers=3", "layer_weights=[0.4,0.2,0.2,0.2]"])
    assert (mf.model, mf.layers, mf.layer_weights) == ("lightgcn", 0, None)
    assert mf == Config.load(overrides=["layers=0"])


def test_mf_config_is_saved_in_the_one_spelling(tmp_path):
    path = write(tmp_path, "model: mf\nlayers: 3\ndim: 8\n")
    cfg = Config.load(path)
    cfg.save(tmp_path / "saved.yaml")
    saved = read_yaml(tmp_path / "saved.yaml")
    assert (saved["model"], saved["layers"]) == ("lightgcn", 0) and "estimator" not in saved


def test_the_ste_has_one_spelling(tmp_path):
    assert Config.load(overrides=["model=ste"]).model == "ste"
    # estimator: ste, the old spelling, reads as model: ste ... even when the model comes later
    assert Config.load(overrides=["model=hqgnn", "estimator=ste"]).model == "ste"
    assert Config.load(write(tmp_path, "estimator: ste\n"), extra={"model": "hqgnn"}).model == "ste"
    # estimator: gste (the old default, in every old config.yaml) reads as nothing
    cfg = Config.load(overrides=["model=hqgnn", "estimator=gste"])
    assert cfg.model == "hqgnn" and cfg == Config.load(overrides=["model=hqgnn"])
    assert "estimator" not in cfg.to_dict()
    with pytest.raises(ConfigError) as err:
        Config.load(overrides=["estimator=exact"])
    msg = str(err.value)
    assert "estimator='exact'" in msg and "write model: ste" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"model='foo' is out of range: expected lightgcn \| hqgnn"):
        Config.load(overrides=["model=foo"])


def test_delta_scale_zero_trains_exactly_as_ste(tiny_data):
    """``delta_scale: 0`` stays an ablation knob of hqgnn; its 0 trains the same weights as ``ste``."""
    from hqgnn.models import initial_model
    from hqgnn.training import Trainer

    common = ["dim=8", "layers=2", "bits=1", "epochs=3", "batch_size=128", "lr=0.02", "eval_every=3", "patience=0",
              "val_fraction=0", "eval_split=test", "threads=1", "delta_every=1", "ks=[5,20]"]
    runs = {}
    for name, extra in (("ste", ["model=ste"]), ("hqgnn0", ["model=hqgnn", "delta_scale=0"])):
        cfg = Config.load(overrides=common + extra)
        trainer = Trainer(cfg, initial_model(cfg, tiny_data), tiny_data, None, progress=False)
        runs[name] = (trainer, trainer.fit())
    (ste, m_ste), (hq, m_hq) = runs["ste"], runs["hqgnn0"]
    assert [h["event"] for h in hq.history if "event" in h] == ["epoch_start"] * 3  # it still estimates
    assert all(h["delta_user"] == 0.0 and h["delta_formula_user"] > 0 for h in hq.history if "event" in h)
    a, b = ste.model.state_dict(), hq.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    skip = {"model", "train_seconds", "adjacency_seconds", "test_eval_seconds", "peak_rss_mb"}
    assert {k: v for k, v in m_ste.items() if k not in skip} == {k: v for k, v in m_hq.items() if k not in skip}


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_config_loads(path):
    from hqgnn.config import MODELS

    assert Config.load(path).model in MODELS


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_experiment_expands_to_valid_configs(path, tmp_path):
    from hqgnn.experiment import cell_config, expand_cells, full_precision_model, load_experiment

    cells = expand_cells(load_experiment(path))
    assert cells
    for cell in cells:
        cfg = cell_config(cell, tmp_path, full_precision_model(cells, cell.dataset))
        assert cfg.model == ("lightgcn" if cell.model == "mf" else cell.model)
        if cell.model == "mf":
            assert cfg.layers == 0
