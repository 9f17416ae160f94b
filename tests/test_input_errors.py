"""Bad input is refused in one line naming the flag / setting / file and the value as written,
with exit status 2 and nothing half-written: cut-offs above the items, distillation settings
without a teacher, an --all-users output that is not Parquet, an artifact given as a run folder;
and the demo's closing commands run as printed."""

from __future__ import annotations

import io
import shlex
import subprocess

import pytest

from hqgnn.cli import main
from hqgnn.config import Config
from hqgnn.errors import CheckpointError, ConfigError

ITEMS = 100
SMALL = ["synthetic_users=150", f"synthetic_items={ITEMS}", "dim=8", "layers=1", "batch_size=512", "lr=0.02",
         "eval_every=1", "patience=0", "threads=1", "ks=[5,20]", "early_stop_metric=recall@20"]


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch 1-bit run folder on 100 synthetic items and its exported artifact."""
    root = tmp_path_factory.mktemp("input-errors")
    run, artifact = root / "run", root / "run.hqgnn"
    assert main(["train", "--data", "synthetic", "--model", "hqgnn", "--bits", "1", "--out", str(run), "--epochs", "1",
                 "--quiet", "--set", *SMALL]) == 0
    assert main(["export", str(run), str(artifact)]) == 0
    return run, artifact


# ---------------------------------------------------------------- 1. cut-offs above the items
def test_evaluate_refuses_k_above_the_items_naming_the_flag_and_the_count(trained, capsys):
    run, _ = trained
    capsys.readouterr()
    code, err = run_cli(["evaluate", str(run), "--k", "20", "500"], capsys)
    assert code == 2 and "--k 20 500" in err and f"{ITEMS} items" in err and len(err.splitlines()) == 1, err
    code, err = run_cli(["evaluate", str(run), "--k", "0"], capsys)
    assert code == 2 and "--k 0" in err and len(err.splitlines()) == 1, err
    code, _ = run_cli(["evaluate", str(run), "--k", "5", str(ITEMS)], capsys)
    assert code == 0  # K = the number of items is still a ranking of every item


def test_api_evaluate_refuses_ks_above_the_items(trained):
    from hqgnn.api import Recommender

    rec = Recommender.load(trained[0])
    with pytest.raises(ConfigError, match=rf"ks=\[20, 500\]: cut-off 500 is above the data's {ITEMS} items"):
        rec.evaluate(ks=[20, 500])
    assert set(rec.evaluate(ks=[ITEMS])) >= {f"recall@{ITEMS}", "users", "split"}


def test_train_refuses_ks_above_the_items_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    settings = [s for s in SMALL if not s.startswith("ks=")] + ["ks=[20,500]"]
    code, err = run_cli(["train", "--data", "synthetic", "--out", str(out), "--epochs", "1", "--quiet", "--set",
                         *settings], capsys)
    assert code == 2 and "setting ks=[20, 500]" in err and f"{ITEMS} items" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


# ---------------------------------------------------------------- 2. distillation settings without a teacher
@pytest.mark.parametrize("pair, shown", [("distill_weight=0.3", "distill_weight=0.3"), ("distill_top=10", "distill_top=10"),
                                         ("distill_decay=5", "distill_decay=5.0")])
def test_distill_settings_without_distill_from_are_refused(tmp_path, capsys, pair, shown):
    with pytest.raises(ConfigError, match=rf"setting {shown} needs distill_from"):
        Config.load(overrides=["model=hqgnn", pair])
    out = tmp_path / "run"
    code, err = run_cli(["train", "--data", "synthetic", "--model", "hqgnn", "--out", str(out), "--epochs", "1",
                         "--quiet", "--set", *SMALL, pair], capsys)
    assert code == 2 and shown in err and "distill_from" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    assert Config.load(overrides=["distill_weight=1.0"]).distill_weight == 1.0  # the default: nothing to refuse


def test_run_folders_with_ignored_distill_settings_still_load(trained, tmp_path):
    import shutil

    from hqgnn.api import Recommender

    run = tmp_path / "old"
    shutil.copytree(trained[0], run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("distill_weight: 1.0",
                                                                               "distill_weight: 0.3"))
    assert Recommender.load(run).cfg.distill_weight == 1.0  # it did nothing when that run trained


# ---------------------------------------------------------------- 3. --all-users writes Parquet only
@pytest.mark.parametrize("name, suffix", [("x.txt", "'.txt'"), ("x.csv", "'.csv'"), ("x", "no .parquet suffix")])
def test_all_users_refuses_an_output_that_is_not_parquet(tmp_path, capsys, name, suffix):
    out = tmp_path / name
    # the artifact does not exist: the suffix is checked before any work
    code, err = run_cli(["recommend", str(tmp_path / "missing.hqgnn"), "--all-users", "--out", str(out), "--quiet"],
                        capsys)
    assert code == 2 and f"--out {out}" in err and suffix in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_all_users_writes_a_parquet_file(trained, tmp_path, capsys):
    out = tmp_path / "top.PARQUET"
    assert main(["recommend", str(trained[1]), "--all-users", "--k", "5", "--out", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:4] == b"PAR1"


# ---------------------------------------------------------------- 4. the demo's commands run as printed
def test_demo_try_next_commands_run_without_an_activated_venv(tiny_data, tmp_path, monkeypatch):
    from hqgnn.demo import _print_report

    monkeypatch.setenv("PATH", str(tmp_path))  # no hqgnn on PATH: the shell of a fresh clone after `make demo`
    metrics = {"recall@20": 0.2, "ndcg@20": 0.1, "train_seconds": 1.0}
    rows = [{"label": label, "slug": slug, "bits": bits, "metrics": metrics, "bytes_per_item": 8, "qps": 1.0,
             "speedup": 1.0, "run_dir": tmp_path / slug, "artifact": tmp_path / f"{slug}.hqgnn", "artifact_bytes": 1024,
             "kernel": "k"} for label, slug, bits in (("LightGCN", "lightgcn", 32), ("HQ-GNN 1-bit", "hqgnn-1bit", 1))]
    stream = io.StringIO()
    _print_report(stream, tiny_data, rows, {"recall@20": 0.1, "ndcg@20": 0.05}, 1, 1.0, 1.0, 1.0, 1.0)
    tries = stream.getvalue().split("what to try next:")[1].splitlines()
    commands = [line.split("#")[0].strip() for line in tries
                if line.startswith("  ") and not line.strip().startswith("#")]
    assert len(commands) == 4 and all(" recommend " in c or " serve " in c or " evaluate " in c or " train " in c
                                      for c in commands), commands
    for command in commands:
        words = shlex.split(command)
        sub = next(i for i, w in enumerate(words) if w in ("recommend", "serve", "evaluate", "train"))
        prefix = words[:sub]
        done = subprocess.run(prefix + ["--version"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "hqgnn" in done.stdout, (command, done.stderr)


# ---------------------------------------------------------------- 5. an artifact is not a run folder
def test_load_of_an_artifact_names_it_and_what_to_use(trained, capsys):
    from hqgnn.api import Recommender

    _, artifact = trained
    with pytest.raises(CheckpointError) as err:
        Recommender.load(artifact)
    msg = str(err.value)
    assert msg.startswith(f"{artifact}: an exported artifact") and "ArtifactRecommender" in msg and "\n" not in msg
    capsys.readouterr()
    code, err = run_cli(["evaluate", str(artifact)], capsys)
    assert code == 2 and str(artifact) in err and "ArtifactRecommender" in err and len(err.splitlines()) == 1, err


def test_recommend_from_a_run_folder_says_to_export_it(trained, capsys):
    run, _ = trained
    code, err = run_cli(["recommend", str(run), "--user", "0"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{run}: a run folder, not an exported artifact" in err and f"hqgnn export {run}" in err


def test_api_fit_refuses_a_folder_with_a_run_unless_resumed_or_overwritten(trained, tmp_path):
    import shutil

    from hqgnn.api import Recommender

    run, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    settings = dict(s.split("=", 1) for s in SMALL)
    cfg = Config.load(overrides=[f"{k}={v}" for k, v in settings.items()] + ["model=hqgnn", "bits=1", "epochs=1"])
    with pytest.raises(CheckpointError, match=r"holds a finished run \(metrics.json\).*overwrite=True") as err:
        Recommender(config=cfg).fit("synthetic", out_dir=copy, progress=False)
    assert "\n" not in str(err.value)
    before = (copy / "metrics.json").read_text()
    assert (copy / "metrics.json").read_text() == before  # nothing was trained over it
    metrics = Recommender(config=cfg.updated({"seed": 7}, "test")).fit("synthetic", out_dir=copy, progress=False,
                                                                      overwrite=True)
    assert (copy / "metrics.json").read_text() != before and metrics["epochs"] == 1
