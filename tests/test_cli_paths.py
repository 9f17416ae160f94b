"""Output paths and OS errors: an empty --out (the current folder), a folder where a file goes, a
file where a folder goes, a path the OS refuses -- each one line ``hqgnn: error: ...`` naming the
flag or path, exit 2, nothing left behind; a missing teacher named before a default distill_top;
the Python API's users / k checks; ``Recommendations`` at the package root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hqgnn.cli import main
from hqgnn.errors import ConfigError, DataError
from hqgnn.index.errors import RetrievalError
from hqgnn.storage import atomic_path
from test_input_errors import ITEMS, SMALL, run_cli, trained  # noqa: F401  (trained: a module fixture)

TINY = ["synthetic_users=40", "synthetic_items=30", "ks=[5,10,20]", "dim=8", "layers=1", "threads=1"]


def _one_line(code, err):
    assert code == 2 and err.startswith("hqgnn: error: ") and len(err.splitlines()) == 1, (code, err)


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- 1. an empty output path is the cwd: refused
@pytest.mark.parametrize("blank", ["", "  "])
def test_train_refuses_a_blank_out_and_leaves_the_cwd_alone(tmp_path, monkeypatch, capsys, blank):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")  # what --overwrite would have cleared from the cwd
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(["train", "--data", "synthetic", "--epochs", "1", "--quiet", "--out", blank, *extra,
                             "--set", *TINY], capsys)
        _one_line(code, err)
        assert f"--out '{blank}'" in err and "current folder" in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("command", ["export", "demo", "recommend", "experiment"])
def test_other_commands_refuse_an_empty_output_path(trained, tmp_path, monkeypatch, capsys, command):
    run, artifact = trained
    argv = {"export": ["export", str(run), ""],
            "demo": ["demo", "--out", "", "--quiet"],
            "recommend": ["recommend", str(artifact), "--all-users", "--out", "", "--quiet"],
            "experiment": ["experiment", str(tmp_path / "grid.yaml"), "--out", ""]}[command]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code, err = run_cli(argv, capsys)
    _one_line(code, err)
    assert "''" in err and "current folder" in err, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 2. OS problems of output paths: one line
@pytest.mark.parametrize("case", ["below-a-file", "a-folder", "proc"])
def test_recommend_all_out_the_os_refuses_is_one_line(trained, tmp_path, capsys, case):
    _, artifact = trained
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "d.parquet").mkdir()
    out = {"below-a-file": tmp_path / "afile" / "x.parquet", "a-folder": tmp_path / "d.parquet",
           "proc": Path("/proc/x.parquet")}[case]
    if case == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    capsys.readouterr()
    code, err = run_cli(["recommend", str(artifact), "--all-users", "--k", "10", "--out", str(out), "--quiet"], capsys)
    _one_line(code, err)
    assert str(out) in err, err
    assert (tmp_path / "afile").read_text() == "keep" and list((tmp_path / "d.parquet").iterdir()) == []
    assert _temps(tmp_path) == [] and not out.is_file()


def test_export_to_an_existing_folder_is_one_line(trained, tmp_path, capsys):
    run, _ = trained
    target = tmp_path / "DIR"
    target.mkdir()
    capsys.readouterr()
    code, err = run_cli(["export", str(run), str(target)], capsys)
    _one_line(code, err)
    assert str(target) in err and "folder" in err, err
    assert list(target.iterdir()) == [] and _temps(tmp_path) == []


def test_train_and_demo_refuse_an_out_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for argv in (["train", "--data", "synthetic", "--epochs", "1", "--quiet", "--out", str(afile), "--set", *TINY],
                 ["train", "--data", "synthetic", "--epochs", "1", "--quiet", "--out", str(afile / "run"), "--set",
                  *TINY],
                 ["demo", "--out", str(afile), "--quiet"]):
        code, err = run_cli(argv, capsys)
        _one_line(code, err)
        assert f"--out {argv[argv.index('--out') + 1]}" in err and "not a folder" in err, err
    assert afile.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_main_turns_any_os_error_into_one_line(monkeypatch, capsys):
    import hqgnn.cli as cli

    def refused(args):
        raise PermissionError(13, "Permission denied", "/srv/out/x.parquet")

    monkeypatch.setattr(cli, "cmd_export", refused)
    code, err = run_cli(["export", "run", "out.hqgnn"], capsys)
    assert (code, err) == (2, "hqgnn: error: /srv/out/x.parquet: Permission denied")

    def unnamed(args):
        raise OSError("No space left\non device")

    monkeypatch.setattr(cli, "cmd_export", unnamed)
    code, err = run_cli(["export", "run", "out.hqgnn"], capsys)
    assert (code, err) == (2, "hqgnn: error: No space left on device")


def test_a_broken_pipe_still_exits_0_quietly():
    """BrokenPipeError is an OSError: the new clause must not catch it before its own."""
    probe = ("import sys, hqgnn.cli as c\n"
             "def gone(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
             "c.cmd_export = gone\nsys.exit(c.main(['export', 'run', 'out.hqgnn']))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr


def test_atomic_path_removes_its_temp_file_and_names_the_target(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):  # the writer fails
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []

    def refused(src, dst):
        raise IsADirectoryError(21, "Is a directory", str(src), str(dst))

    monkeypatch.setattr("hqgnn.storage.os.replace", refused)  # the rename fails
    with pytest.raises(IsADirectoryError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    monkeypatch.undo()
    assert info.value.filename == str(target), info.value  # the user's path, not the temporary one
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []

    folder = tmp_path / "d"
    folder.mkdir()
    for bad, error in ((folder, IsADirectoryError), (target / "below", NotADirectoryError)):
        with pytest.raises(error) as info:
            with atomic_path(bad) as tmp:
                pytest.fail("the writer must not run")
        assert info.value.filename == str(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "x.bin"] and list(folder.iterdir()) == []


def test_output_path_problem(tmp_path):
    from hqgnn.storage import output_path_problem

    (tmp_path / "f").write_text("")
    assert output_path_problem(" ") == output_path_problem("", folder=True) == "an empty path would mean the current folder"
    assert output_path_problem(tmp_path) == "is a folder, not a file"
    assert output_path_problem(tmp_path, folder=True) is None
    assert output_path_problem(tmp_path / "f", folder=True) == "exists and is not a folder"
    assert output_path_problem(tmp_path / "f" / "a" / "b") == f"{tmp_path / 'f'} is not a folder"
    assert output_path_problem(tmp_path / "new" / "x.parquet") is None


# ---------------------------------------------------------------- 3. a missing teacher before a default distill_top
def test_a_missing_teacher_is_named_before_a_default_distill_top(tmp_path, capsys):
    out = tmp_path / "X"
    code, err = run_cli(["train", "--data", "synthetic", "--model", "hqgnn", "--bits", "4", "--epochs", "1", "--quiet",
                         "--out", str(out), "--set", "distill_from=/no/such/run", *TINY], capsys)
    _one_line(code, err)
    assert "distill_from='/no/such/run': no such folder" in err and "distill_top" not in err, err
    assert not out.exists()


def test_teacher_rankings_checks_the_folder_before_top(tmp_path, tiny_data):
    from hqgnn.models.distill import teacher_rankings

    with pytest.raises(ConfigError, match="no such folder"):
        teacher_rankings(tmp_path / "missing", tiny_data, top=tiny_data.n_items + 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="model.pt missing"):
        teacher_rankings(tmp_path / "empty", tiny_data, top=tiny_data.n_items + 10)


# ---------------------------------------------------------------- 4. the API's users and k
def test_recommend_refuses_users_deeper_than_1d(trained):
    from hqgnn.api import Recommender
    from hqgnn.index.recommender import ArtifactRecommender

    rec = Recommender.load(trained[0])
    with pytest.raises(RetrievalError, match=r"^user_ids: expected one user id or a 1-d sequence of user ids, "
                                             r"got shape \(1, 2\)$"):
        rec.recommend([[0, 1]], k=5)
    with pytest.raises(RetrievalError, match=r"got shape \(1, 1\)$"):
        rec.recommend(np.array([[0]]), k=5)
    with pytest.raises(RetrievalError, match="ragged"):
        rec.recommend([[0, 1], [2]], k=5)
    art = ArtifactRecommender(trained[1])
    with pytest.raises(RetrievalError, match=r"^users: .* got shape \(1, 2\)$"):
        art.recommend([[0, 1]], k=5)
    assert len(rec.recommend(0, k=3)) == 1 and len(rec.recommend((u for u in [0, 1]), k=3)) == 2
    assert art.recommend("12", k=3).queries.tolist() == [12]  # a string is one id, not its characters


def test_recommend_k_not_an_integer_says_so_as_recommend_all_does(trained):
    from hqgnn.api import Recommender
    from hqgnn.index.recommender import ArtifactRecommender

    rec = Recommender.load(trained[0])
    with pytest.raises(DataError, match=rf"^k=2.5 must be an integer in 1 \.\. {ITEMS}$"):
        rec.recommend([0], k=2.5)
    with pytest.raises(RetrievalError, match=rf"^k=2.5 must be an integer in 1 \.\. {ITEMS}$"):
        ArtifactRecommender(trained[1]).recommend([0], k=2.5)
    with pytest.raises(DataError, match=rf"^k=0 is out of range: expected 1 \.\. {ITEMS}$"):
        rec.recommend([0], k=0)


# ---------------------------------------------------------------- 5. Recommendations at the root
def test_recommendations_is_a_light_root_name():
    probe = ("import sys, hqgnn\nassert 'Recommendations' in hqgnn.__all__ and 'Recommendations' in dir(hqgnn)\n"
             "from hqgnn import Recommendations\nfrom hqgnn.index.results import Recommendations as R\n"
             "assert Recommendations is R and 'torch' not in sys.modules\n"
             "assert 'for i in range(len(recs))' in ' '.join(R.__doc__.split())\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
