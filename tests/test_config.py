"""Settings layering (defaults < YAML < command line < --set) and validation messages."""

from __future__ import annotations

import pytest

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
