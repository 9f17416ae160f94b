"""The distributed trainer (hqgnn.distributed) on 2 gloo processes, against single-process answers.

The processes run in tests/dist_cases.py (spawned once per world size, module-scoped); the
answers they are held to come from the single-process, dense code path (graph.propagate over the
full normalised adjacency, the model's own loss and autograd)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

needs_torchrec = pytest.mark.skipif(importlib.util.find_spec("torchrec") is None,
                                    reason="the distributed extra is not installed (pip install 'hqgnn[distributed]')")

from dist_cases import first_batch, toy_config  # noqa: E402

SGD = ["sparse_optimizer=sgd", "lr=1.0", "weight_decay=0.01", "batch_size=64"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _spawn(world_size: int, workdir: Path) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "dist_cases.py"), str(world_size), str(_port()), str(workdir)],
                          capture_output=True, text=True, timeout=400, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(workdir / f"results-ws{world_size}.pt", weights_only=False)


@pytest.fixture(scope="module")
def ws2(tmp_path_factory):
    return _spawn(2, tmp_path_factory.mktemp("ws2"))


@pytest.fixture(scope="module")
def ws1(tmp_path_factory):
    return _spawn(1, tmp_path_factory.mktemp("ws1"))


def dense_step(cfg, delta: float = 0.0):
    """E^0, its gradient and the loss of one single-process step on the first batch (full graph)."""
    from hqgnn.loading import prepare_data
    from hqgnn.models import build_graph, initial_model
    from hqgnn.models.base import gathered_bpr_loss
    from hqgnn.models.quantizer import GSTEQuantize

    data = prepare_data(cfg)
    model = initial_model(cfg, data)
    adj = build_graph(model, data.train)
    u, p, n = (torch.from_numpy(a) for a in first_batch(cfg, data))
    e0 = model.encoder.embedding.detach().clone()
    if cfg.model == "lightgcn":
        loss, _ = model.loss(adj, u, p, n)  # the single-process trainer's own loss
    else:
        # the same Q_b and GSTE on the full-graph embeddings, with the step calibrated on the
        # batch's rows (users once per triple; positives and negatives), as the distributed trainer does
        ua, ia = model.encoder(adj)
        qs = []
        for q, x, rows in ((model.user_quantizer, ua, ua[u]), (model.item_quantizer, ia, torch.cat([ia[p], ia[n]]))):
            qs.append(GSTEQuantize.apply(x, q.calibrated_scale(rows), q.bits, delta, True, 1.0, 1.0))
        loss = gathered_bpr_loss(qs[0], qs[1], u, p, n)
    total = loss + cfg.weight_decay * model.encoder.l2_penalty(u, p, n)
    total.backward()
    return e0, model.encoder.embedding.grad.clone(), float(total.detach())


@needs_torchrec
def test_plan_splits_the_table_over_both_ranks(ws2):
    plan = ws2["float"]["plan"]
    table = plan["tables"]["nodes"]
    assert plan["world_size"] == 2 and table["sharding_type"] == "row_wise"
    shards = sorted(table["shards"], key=lambda s: s["rows"][0])
    assert [s["rank"] for s in shards] == [0, 1]
    assert shards[0]["rows"][0] == 0 and shards[0]["rows"][1] == shards[1]["rows"][0] and shards[1]["rows"][1] == 50
    # and each rank really holds only its half: table bytes per rank halve from world size 1 to 2
    assert ws2["float"]["bytes"]["table_bytes"] == [25 * 8 * 4, 25 * 8 * 4]


@needs_torchrec
@pytest.mark.parametrize("key,cfg_args,delta", [("float", ["model=lightgcn"], 0.0),
                                                ("quantized", ["model=hqgnn", "bits=4"], 0.3)])
def test_full_fanout_equals_dense_lightgcn(ws2, ws1, key, cfg_args, delta):
    e0, grad, total = dense_step(toy_config(*cfg_args, *SGD), delta)
    assert grad.abs().max() > 1e-4  # a step that moves something
    for res in (ws1[key], ws2[key]):
        assert torch.equal(res["before"], e0)  # the same seeded start as the single-process model
        # fused SGD at lr 1: E0 before - after is the gradient
        torch.testing.assert_close(res["before"] - res["after"], grad, rtol=0, atol=1e-6)
        assert res["total"] == pytest.approx(total, rel=1e-6)


@needs_torchrec
def test_the_learning_rate_schedule_reaches_the_fused_optimizer(ws2):
    # fused SGD: the step is lr x the gradient; cosine from 1.0 to 0.1 over 3 epochs is 0.55 at epoch 1
    full, cosine = ws2["float"], ws2["cosine"]
    assert cosine["lr"] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    torch.testing.assert_close(cosine["before"] - cosine["after"], 0.55 * (full["before"] - full["after"]),
                               rtol=0, atol=1e-6)


@needs_torchrec
def test_world_size_1_and_2_take_the_same_step(ws2, ws1):
    a, b = ws2["adagrad"], ws1["adagrad"]
    assert (a["after"] - a["before"]).abs().max() > 1e-3
    torch.testing.assert_close(a["after"], b["after"], rtol=0, atol=1e-6)
    # row-wise Adagrad: one float per row, split over the ranks like the table
    assert a["bytes"]["optimizer_bytes"] == [25 * 4, 25 * 4] and b["bytes"]["optimizer_bytes"] == [50 * 4]


@needs_torchrec
def test_sharded_checkpoint_resumes_exactly(ws2):
    r = ws2["resume"]
    losses = [h["loss"] for h in r["straight_history"] if "loss" in h]
    assert len(losses) == 2
    assert losses == [h["loss"] for h in r["resumed_history"] if "loss" in h]
    for key in ("recall@20", "ndcg@20", "delta_user", "delta_item", "user_scale", "item_scale"):
        assert r["resumed"][key] == r["straight"][key]
    assert r["resumed"]["world_size"] == 2 and r["resumed"]["delta_user"] > 0


@needs_torchrec
def test_resume_with_other_settings_is_one_line(ws2):
    msg = ws2["bad_resume"]
    assert msg.startswith("CheckpointError") and "bits=2" in msg and "bits=3" in msg and "\n" not in msg


def test_resume_with_another_world_size_is_one_line(tmp_path):
    from hqgnn.distributed.checkpoint import FOLDER, META, VERSION
    from hqgnn.distributed.launch import precheck
    from hqgnn.errors import CheckpointError

    (tmp_path / FOLDER).mkdir()
    torch.save({"version": VERSION, "world_size": 2}, tmp_path / FOLDER / META)
    with pytest.raises(CheckpointError, match=r"written by 2 ranks, this run has 1: resume with --nproc-per-node 2") as e:
        precheck(tmp_path, resume=True, overwrite=False, world_size=1)
    assert "\n" not in str(e.value)


def test_checkpoint_of_another_sharding_is_refused():
    from hqgnn.distributed.checkpoint import check_compatible
    from hqgnn.errors import CheckpointError
    from hqgnn.loading import prepare_data

    cfg = toy_config()
    data = prepare_data(cfg)
    plan = {"nodes": {"sharding_type": "row_wise", "shards": [{"rank": 0, "rows": [0, 50]}]}}
    meta = {"world_size": 1, "data_fingerprint": data.fingerprint(), "config": cfg.to_dict(),
            "plan": {"nodes": {"sharding_type": "table_wise", "shards": [{"rank": 0, "rows": [0, 50]}]}}}
    with pytest.raises(CheckpointError, match=r"sharded as \{'nodes': 'table_wise'\}.*row_wise"):
        check_compatible(meta, cfg, data, 1, plan, "x")


def test_fanout_of_the_wrong_length_is_one_line():
    from hqgnn.config import Config
    from hqgnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"setting fanout=\[10, 5\] is out of range: expected a list of layers = 3"):
        Config.load(None, ["fanout=[10, 5]"])
    assert Config.load(None, ["fanout=[10, 5, -1]"]).fanout == [10, 5, -1]
    with pytest.raises(ConfigError, match="fanout"):
        Config.load(None, ["fanout=[10, 0, -1]"])


def test_sampled_fanout_is_unbiased_and_full_fanout_exact():
    """The subgraph alone (no processes): full fan-out equals dense propagation exactly; the mean
    of sampled fan-outs approaches it."""
    import scipy.sparse as sp

    from hqgnn.distributed.subgraph import propagate_blocks, sample_blocks, shared_graph
    from hqgnn.graph import normalized_adjacency, propagate

    r = sp.random(30, 20, density=0.25, random_state=1, format="csr")
    r.data[:] = 1
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    dense = propagate(normalized_adjacency(r), x, (0.25,) * 4)
    g = shared_graph(r, None)
    t = np.array([3, 7, 35, 40, 0])
    rng = np.random.default_rng(0)
    b = sample_blocks(g, t, [-1, -1, -1], rng)
    torch.testing.assert_close(propagate_blocks(x[torch.from_numpy(b.nodes)], b, (0.25,) * 4), dense[t], rtol=1e-5, atol=1e-6)
    acc = torch.zeros(len(t), 4)
    for _ in range(400):
        b = sample_blocks(g, t, [2, 2, 2], rng)
        acc += propagate_blocks(x[torch.from_numpy(b.nodes)], b, (0.25,) * 4)
    err = (acc / 400 - dense[t]).abs().max()
    assert err < 0.1 * dense[t].abs().max()


def test_sampled_blocks_propagate_as_their_edge_lists_say():
    """A sampled neighbourhood (duplicates, unsorted rows) propagates, forward and backward, as a
    plain loop over its edges does; the position-array and binary-search id maps build the same blocks."""
    import scipy.sparse as sp

    import hqgnn.distributed.subgraph as sg

    r = sp.random(300, 200, density=0.05, random_state=1, format="csr")
    r.data[:] = 1
    g = sg.shared_graph(r, None)
    t = np.array([3, 7, 350, 400, 0, 299])
    b = sg.sample_blocks(g, t, [3, 2, 4], np.random.default_rng(5))
    old, sg.DENSE_LOOKUP = sg.DENSE_LOOKUP, 0
    try:
        b2 = sg.sample_blocks(g, t, [3, 2, 4], np.random.default_rng(5))
    finally:
        sg.DENSE_LOOKUP = old
    assert np.array_equal(b.nodes, b2.nodes)
    assert all(np.array_equal(x, y) for h1, h2 in zip(b.hops, b2.hops) for x, y in zip(h1[:3], h2[:3]))

    def loop(x):
        h, out = x, x[: len(t)] * 0.25
        for l in range(3):
            rows, cols, w, n_rows, _ = b.hops[2 - l]
            nxt = np.zeros((n_rows, x.shape[1]))
            np.add.at(nxt, rows, w[:, None] * h[cols])
            h, out = nxt, out + 0.25 * nxt[: len(t)]
        return out

    x = torch.randn(len(b.nodes), 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = sg.propagate_blocks(x, b, (0.25,) * 4)
    xn = x.detach().double().numpy()
    np.testing.assert_allclose(out.detach().numpy(), loop(xn), atol=1e-6)
    # the propagation is linear: its gradient is the loop's transpose, checked on a random direction
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(gout)
    v = np.random.default_rng(0).normal(size=xn.shape)
    assert (x.grad.double().numpy() * v).sum() == pytest.approx((loop(v) * gout.double().numpy()).sum(), rel=1e-5)


@needs_torchrec
def test_cli_nproc_per_node_writes_a_run_that_evaluate_reads(tmp_path):
    out = tmp_path / "run"

    def cmd(nproc, *more):
        return [sys.executable, "-m", "hqgnn", "train", "--nproc-per-node", str(nproc), "--data", "synthetic", "--model",
                "hqgnn", "--bits", "2", "--out", str(out), "--quiet", "--set", "synthetic_users=40", "synthetic_items=30", "ks=[5,10,20]",
                "dim=8", "layers=2", "lr=0.05", "eval_every=1", "fanout=[4, -1]", *more]

    proc = subprocess.run(cmd(2, "--epochs", "2"), capture_output=True, text=True, timeout=400, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics["world_size"] == 2 and metrics["fanout"] == [4, -1] and metrics["sharding"] == {"nodes": "row_wise"}
    plan = json.loads((out / "plan.json").read_text())
    assert {s["rank"] for s in plan["tables"]["nodes"]["shards"]} == {0, 1}
    ev = subprocess.run([sys.executable, "-m", "hqgnn", "evaluate", str(out)], capture_output=True, text=True,
                        timeout=200, env=_env())
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["recall@20"] == pytest.approx(metrics["recall@20"], abs=1e-6)
    again = subprocess.run(cmd(1, "--resume", "--epochs", "3"), capture_output=True, text=True, timeout=200, env=_env())
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("hqgnn: error: ") and "written by 2 ranks" in again.stderr
    # an error raised inside the ranks (another fan-out on resume): one line, once, the rank's exit code
    other = [a if a != "fanout=[4, -1]" else "fanout=[3, -1]" for a in cmd(2, "--resume", "--epochs", "3")]
    ranks = subprocess.run(other, capture_output=True, text=True, timeout=400, env=_env())
    assert ranks.returncode == 2, ranks.stderr[-3000:]
    errors = [line for line in ranks.stderr.splitlines() if line.startswith("hqgnn: error:")]
    assert len(errors) == 1 and "fanout" in errors[0], ranks.stderr[-3000:]
    assert "ChildFailedError" not in ranks.stderr and "Traceback" not in ranks.stderr
    # nested launches and a single-process resume of this folder are refused in one line
    env = _env()
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    nested = subprocess.run(cmd(2, "--epochs", "2", "--overwrite"), capture_output=True, text=True, timeout=200, env=env)
    assert nested.returncode == 2 and len(nested.stderr.strip().splitlines()) == 1
    assert "already a rank of a torchrun job" in nested.stderr
    single = subprocess.run(cmd(2, "--resume")[:4] + cmd(2, "--resume")[6:], capture_output=True, text=True,
                            timeout=200, env=_env())
    assert single.returncode == 2 and "resume it with --nproc-per-node" in single.stderr, single.stderr


def test_relay_keeps_rank_errors_one_line_and_rank_tracebacks_whole():
    """torchrun's own ChildFailedError block is dropped (its exit code kept); a rank's crash is not."""
    import io

    from hqgnn.distributed.launch import relay

    torchrun_block = [
        "Traceback (most recent call last):\n", '  File "<frozen runpy>", line 198, in _run_module_as_main\n',
        "    raise ChildFailedError(\n",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
        "============================================================\n", "hqgnn FAILED\n",
        "Root Cause (first observed failure):\n", "[0]:\n", "  rank      : 0 (local_rank: 0)\n",
        "  exitcode  : 2 (pid: 123)\n", "============================================================\n"]
    crash = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in <module>\n',
             "ZeroDivisionError: division by zero\n"]
    text = ["train hqgnn: 50%\n", "hqgnn: error: setting fanout=[3, -1]: differs\n",
            "hqgnn: error: setting fanout=[3, -1]: differs\n", *crash, *torchrun_block]
    sink = io.StringIO()
    assert relay(iter(text), sink) == 2
    assert sink.getvalue() == "train hqgnn: 50%\nhqgnn: error: setting fanout=[3, -1]: differs\n" + "".join(crash)
    sink = io.StringIO()
    assert relay(iter(["all well\n"]), sink) is None and sink.getvalue() == "all well\n"
    # torchrun lists a rank it stopped itself (SIGTERM) under "Failures:" before the root cause
    stopped = torchrun_block[:6] + ["Failures:\n", "[1]:\n", "  exitcode  : -15 (pid: 124)\n"] + torchrun_block[6:]
    assert relay(iter(stopped), io.StringIO()) == 2
    killed = [line.replace("exitcode  : 2", "exitcode  : -9") for line in torchrun_block]
    assert relay(iter(killed), io.StringIO()) == 1  # a rank killed by a signal: a plain failure


def test_overwrite_removes_a_distributed_runs_files(tmp_path):
    from hqgnn.runs import RunFolder

    (tmp_path / "dist_checkpoint" / "0").mkdir(parents=True)
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "indptr.npy").write_bytes(b"x")
    for name in ("plan.json", "metrics.json", "model.pt", "notes.txt"):
        (tmp_path / name).write_text("{}")
    RunFolder(tmp_path).clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # only the run's files go


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of device=cuda on a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_not_ignored():
    from hqgnn.config import Config
    from hqgnn.distributed.trainer import check_supported
    from hqgnn.errors import ConfigError

    with pytest.raises(ConfigError, match="device='cuda': CUDA is not available"):
        check_supported(Config.load(overrides=["model=hqgnn", "device=cuda"]))
    with pytest.raises(ConfigError, match="sparse_optimizer='adam': FBGEMM has no fused adam on CPU"):
        check_supported(Config.load(overrides=["model=hqgnn", "device=cpu", "sparse_optimizer=adam"]))


def test_without_the_extra_torchrun_says_what_to_install(tmp_path):
    fake = tmp_path / "torchrec"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named torchrec')\n")
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    env.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
    proc = subprocess.run([sys.executable, "-m", "hqgnn", "train", "--data", "synthetic", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'hqgnn[distributed]'" in lines[0]
    env.pop("WORLD_SIZE"), env.pop("RANK"), env.pop("LOCAL_RANK")
    proc = subprocess.run([sys.executable, "-m", "hqgnn", "train", "--nproc-per-node", "2", "--data", "synthetic",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "pip install 'hqgnn[distributed]'" in proc.stderr


@needs_torchrec
def test_distributed_budget_run_records_its_pick_and_resumes_it_quietly(tmp_path):
    """--nproc-per-node with --budget-bytes writes budget.json as a single-process run does (once, not
    when refused, kept on --resume), a resume without the flag trains the recorded code, and --quiet
    ranks print none of TorchRec's planner or torch.fx's warnings."""
    from hqgnn.frontier import pick_code

    out = tmp_path / "run"
    pick = pick_code(8, dataset="synthetic")  # no synthetic frontier: MovieLens-1M's rows (4 bits x 16 dims)

    def cmd(*more, where=out):
        return [sys.executable, "-m", "hqgnn", "train", "--nproc-per-node", "2", "--data", "synthetic", "--out",
                str(where), "--quiet", "--set", "synthetic_users=40", "synthetic_items=30", "ks=[5,10,20]", "layers=2",
                "lr=0.05", "eval_every=1", "fanout=[4, -1]", *more]

    loud = {k: v for k, v in _env().items() if k != "PYTHONWARNINGS"}  # the libraries' warnings as a user sees them
    proc = subprocess.run(cmd("--budget-bytes", "8", "--epochs", "1"), capture_output=True, text=True, timeout=400,
                          env=loud)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "budget.json").read_text())
    assert (record["budget_bytes"], record["bits"], record["dim"], record["model"]) == (8, pick.bits, pick.dim, "hqgnn")
    metrics = json.loads(proc.stdout)
    assert (metrics["bits"], metrics["dim"], metrics["world_size"]) == (record["bits"], record["dim"], 2)
    assert proc.stderr.count(pick.line()) == 1, proc.stderr[-3000:]  # said once, by the launcher
    noises = ("WARNING:torchrec", "is_fx_tracing", "The topology was constructed", "storage_reservations", "Warning:")
    for noise in noises:
        assert noise not in proc.stderr, proc.stderr[-3000:]
    # a resume without the flag trains the recorded code and keeps the record
    again = subprocess.run(cmd("--resume", "--epochs", "2"), capture_output=True, text=True, timeout=400, env=loud)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(again.stdout)
    assert (resumed["bits"], resumed["dim"], resumed["epochs"]) == (record["bits"], record["dim"], 2)
    assert json.loads((out / "budget.json").read_text()) == record
    assert again.stderr.count("resuming the budget run") == 1, again.stderr[-3000:]
    for noise in noises:  # the resume loads a sharded checkpoint: torch.distributed.checkpoint's deprecations
        assert noise not in again.stderr, again.stderr[-3000:]
    # refused in one line before any process starts, writing nothing: another budget on resume, a budget
    # for a distributed run trained without one, a finished run without --overwrite
    other = subprocess.run(cmd("--resume", "--budget-bytes", "16", "--epochs", "3"), capture_output=True, text=True,
                           timeout=200, env=_env())
    assert other.returncode == 2 and "this run was trained with --budget-bytes 8" in other.stderr, other.stderr
    assert json.loads((out / "budget.json").read_text()) == record
    plain = tmp_path / "plain"
    (plain / "dist_checkpoint").mkdir(parents=True)
    refused = subprocess.run(cmd("--resume", "--budget-bytes", "8", where=plain), capture_output=True, text=True,
                             timeout=200, env=_env())
    assert refused.returncode == 2 and "was trained without a budget" in refused.stderr, refused.stderr
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    done = subprocess.run(cmd("--budget-bytes", "8", where=finished), capture_output=True, text=True, timeout=200,
                          env=_env())
    assert done.returncode == 2 and "a finished run is already there" in done.stderr, done.stderr
    assert not (plain / "budget.json").exists() and not (finished / "budget.json").exists()
