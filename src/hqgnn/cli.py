"""Command line: ``hqgnn train | evaluate | data stats | demo | export | recommend | similar | serve | experiment``.

Bad input of any kind ends in one line on stderr (``hqgnn: error: ...``) and
exit status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from .errors import ConfigError, HQGNNError


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _check_output(value: Optional[str], flag: str, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: empty or blank (the
    current folder), a folder where a file goes (a non-folder where a folder goes), or a path
    below a file. One line naming ``flag`` and the value as written (``--out ''``)."""
    if value is None:
        return
    from .storage import output_path_problem

    problem = output_path_problem(value, folder=folder)
    if problem is not None:
        import shlex

        if value.strip():
            raise ConfigError(f"{flag} {value}: {problem}")
        raise ConfigError(f"{flag} {shlex.quote(value)}: {problem}; name the output {'folder' if folder else 'file'}")


# ---------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from .api import Recommender, prepare_data
    from .config import Config
    from .runs import BUDGET, RunFolder, clear_run

    _check_output(args.out, "--out", folder=True)  # '' would train into (and --overwrite clear) the current folder
    extra = {"model": args.model, "bits": args.bits, "seed": args.seed, "device": args.device, "from_run": args.from_run,
             "epochs": args.epochs, "data": args.data}
    out = Path(args.out)
    # a budget run's pick (budget.json): --resume trains the same code, with the flag or without it
    recorded = RunFolder(out).read_budget() if args.resume else None
    if args.resume and recorded is None and args.budget_bytes is not None and (
            (out / "checkpoint.pt").is_file() or (out / "dist_checkpoint").is_dir()):  # single-process or distributed
        raise ConfigError(f"--budget-bytes {args.budget_bytes}: {out} was trained without a budget (no {BUDGET}); "
                          f"resume it without --budget-bytes")
    # with a budget, the settings are validated once the budget has set the model, bits and dims (a
    # config's lightgcn becomes hqgnn before --from or distill_from are checked against it)
    cfg = Config.load(args.config, args.set, extra, validate=args.budget_bytes is None and recorded is None)
    record = None
    # the pick is said once: by --nproc-per-node's launcher (not its ranks: HQGNN_LAUNCHED), by rank 0 of a bare torchrun
    say = not os.environ.get("HQGNN_LAUNCHED") and os.environ.get("RANK", "0") == "0"
    if recorded is not None:
        from .frontier import apply_recorded

        cfg = apply_recorded(cfg, recorded, budget=args.budget_bytes, bits=args.bits, overrides=args.set, model=args.model)
        if say:
            print(f"hqgnn: resuming the budget run of {out / BUDGET}: {recorded.get('line', '')}", file=sys.stderr)
    elif args.budget_bytes is not None:  # the measured frontier's best code of at most N bytes per item
        from .frontier import apply_budget, budget_record

        cfg, pick = apply_budget(cfg, args.budget_bytes, bits=args.bits, overrides=args.set, model=args.model)
        record = budget_record(pick, cfg)
        if say:
            print(f"hqgnn: {pick.line()}", file=sys.stderr)
    from .distributed.launch import under_torchrun  # TorchRec itself is imported only when asked for

    if args.nproc_per_node is not None:  # torchrun this same command on this machine (hqgnn.distributed)
        from .distributed.launch import launch

        return launch(args, args.nproc_per_node, cfg)
    if under_torchrun():  # one rank of a distributed run (docs/distributed.md)
        from .distributed.launch import require_torchrec, train as train_distributed

        require_torchrec()
        import faulthandler

        faulthandler.enable()  # a rank that aborts in C++ (gloo, TorchRec) shows its Python stack, not only the signal
        args.rank_process = True  # main() leaves without the interpreter's teardown (rank_exit)
        data = prepare_data(cfg)
        from .evaluation import check_cutoffs
        from .training import KS_HINT

        check_cutoffs(cfg.ks, data.n_items, hint=KS_HINT)  # as the single-process trainer: before any file is written
        metrics = train_distributed(cfg, data, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                                    budget=record)  # rank 0 writes budget.json once its checks pass
        if metrics is not None:
            print(_json(metrics))
        return 0
    if out.exists() and (out / "metrics.json").exists() and not args.resume and not args.overwrite:
        raise HQGNNError(f"{out}: a finished run is already there (use --resume to continue it or --overwrite)")
    if out.exists() and (out / "checkpoint.pt").exists() and not args.resume and not args.overwrite:
        raise HQGNNError(f"{out}: holds a checkpoint of an unfinished run (use --resume to continue it or --overwrite)")
    if args.resume and (out / "dist_checkpoint").exists() and not (out / "checkpoint.pt").exists():
        raise HQGNNError(f"{out}: holds a distributed run's checkpoint (plan.json: its world size): resume it with "
                         "--nproc-per-node N or under torchrun")
    rec = Recommender(config=cfg)
    rec._record_applied = recorded is not None  # bits / dims / model of budget.json, explicit flags kept, are in cfg
    data = prepare_data(cfg)  # bad data or settings fail here, before --overwrite removes anything
    from .evaluation import check_cutoffs
    from .training import KS_HINT

    check_cutoffs(cfg.ks, data.n_items, hint=KS_HINT)
    if args.overwrite and not args.resume:
        clear_run(out)  # a diverged or interrupted rerun must not leave the old results beside its own
    picked = record is not None and not args.resume  # a refused resume must not leave a pick the run was not trained with
    created = not out.exists()
    if picked:
        RunFolder(out).write_budget(record)
    try:
        metrics = rec.fit(data, out_dir=out, resume=args.resume, progress=not args.quiet)
    except BaseException:  # refused before its first checkpoint (a bad teacher, ...): no pick left behind
        if picked and not (out / "checkpoint.pt").exists():
            (out / BUDGET).unlink(missing_ok=True)
            if created and not any(out.iterdir()):
                out.rmdir()
        raise
    print(_json(metrics))
    return 0


def cmd_evaluate(args) -> int:
    from .api import Recommender

    from .errors import ConfigError
    from .evaluation import check_cutoffs

    flag = f"--k {' '.join(str(k) for k in args.k)}" if args.k else ""
    if args.k and any(k < 1 for k in args.k):  # before the run is read
        raise ConfigError(f"{flag}: expected cut-offs >= 1")
    rec = Recommender.load(args.run_dir, data=args.data, device=args.device)
    if args.k:
        check_cutoffs(args.k, rec.data.n_items, flag)
    else:
        check_cutoffs(rec.cfg.ks, rec.data.n_items, f"the run's setting ks={rec.cfg.ks!r}", "pass --k")
    print(_json(rec.evaluate(split=args.split, ks=args.k)))
    return 0


def cmd_data_stats(args) -> int:
    from .api import prepare_data
    from .config import Config

    cfg = Config.load(None, args.set, {"data": args.path, "val_fraction": 0.0})
    print(_json(prepare_data(cfg, check=False).stats()))
    return 0


def cmd_demo(args) -> int:
    """Train, export and time LightGCN, 4-bit and 1-bit HQ-GNN on the embedded synthetic data; print a table."""
    from .demo import run_demo

    _check_output(args.out, "--out", folder=True)
    run_demo(args.out, config=args.config, overrides=args.set, device=args.device, quiet=args.quiet)
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    _check_output(args.out_file, "out_file")  # before the run is read and quantized
    info = export_run(args.run_dir, args.out_file, data=args.data, format=args.format)
    if info.get("note"):
        print(f"hqgnn: note: {info['note']}", file=sys.stderr)
    print(_json(info))
    return 0


def cmd_recommend(args) -> int:
    from .index.recommender import recommend_from_artifact

    params = _backend_params(args)
    if args.all_users or args.out is not None or args.shard:
        return _recommend_all(args, params)
    print(_json(recommend_from_artifact(args.artifact, user=args.user, users_file=args.users, k=args.k,
                                        include_seen=args.include_seen, backend=args.backend, backend_params=params)))
    return 0


def _recommend_all(args, backend_params: dict) -> int:
    """``hqgnn recommend --all-users --out FILE.parquet``: every user's top-K, streamed to Parquet."""
    from .errors import ConfigError
    from .index.batch import check_parquet_out, parse_shard, recommend_all

    if not args.all_users:
        raise ConfigError("--out and --shard go with --all-users (the top-K of every user, to a Parquet file)")
    if args.out is None:
        raise ConfigError("--all-users needs --out FILE.parquet")
    _check_output(args.out, "--out")  # '', a folder, a path below a file: before the artifact is read
    check_parquet_out(args.out, flag="--out")  # the only format written: refused before the artifact is read
    shard = parse_shard(args.shard)  # a bad --shard fails before the artifact is read
    print(_json(recommend_all(args.artifact, args.k, args.out, shard=shard, backend=args.backend,
                              backend_params=backend_params, batch_users=args.batch_users, threads=args.threads,
                              exclude_seen=not args.include_seen, progress=not args.quiet)))
    return 0


def cmd_similar(args) -> int:
    from .index.recommender import similar_from_artifact

    print(_json(similar_from_artifact(args.artifact, item=args.item, k=args.k, backend=args.backend,
                                      backend_params=_backend_params(args))))
    return 0


def cmd_serve(args) -> int:
    from .serving import serve

    serve(args.artifact, host=args.host, port=args.port, workers=args.workers, fallback=args.fallback,
          max_batch=args.max_batch, backend=args.backend, backend_params=_backend_params(args))
    return 0


def _backend_params(args) -> dict:
    """The index backend's settings from the flags: ``--candidates C`` (``--backend cascade`` only)."""
    if args.candidates is None:
        return {}
    if args.backend != "cascade":
        raise HQGNNError(f"--candidates goes with --backend cascade, not --backend {args.backend}")
    return {"candidates": args.candidates}


def _backend_flags(parser, default_help: str) -> None:
    parser.add_argument("--backend", default="exact", help=default_help + "; cascade (b bits): the top --candidates "
                        "items by Hamming distance on the sign bit plane, re-ranked exactly")
    parser.add_argument("--candidates", type=int, metavar="C",
                        help="with --backend cascade: sign-plane candidates per query (default 1000; at least k are used)")


def cmd_experiment(args) -> int:
    from .experiment import run_experiment

    _check_output(args.out, "--out", folder=True)
    run_experiment(args.file, out_dir=args.out, progress=not args.quiet, shard=args.shard, seeds=args.seeds,
                   report_only=args.report_only, jobs=args.jobs, report=not args.no_report)
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hqgnn", description="Hessian-aware quantized graph recommenders (HQ-GNN).")
    from . import __version__

    p.add_argument("--version", action="version", version=f"hqgnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write a run folder")
    t.add_argument("--data", help="LightGCN folder (train.txt/test.txt), .inter/.csv/.tsv/.parquet file, or 'synthetic'")
    t.add_argument("--model", help="lightgcn | hqgnn | ste | hashgnn | bigear | lsh | ptq (matrix factorisation: "
                                   "--set layers=0; mf reads as lightgcn with layers 0)")
    t.add_argument("--bits", type=int, help="bit width 1..8 of the quantized models")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--config", help="YAML file of settings")
    t.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="override settings, e.g. --set lr=0.01 dim=32")
    t.add_argument("--seed", type=int)
    t.add_argument("--budget-bytes", metavar="N", help="memory per item in bytes: train the code (bits x dims) that "
                   "the measured frontier of the data set (else MovieLens-1M's; benchmarks/results/frontier*/) "
                   "ranks best within N; not with --bits or --set dim=...; --resume of such a run needs no flag")
    t.add_argument("--epochs", type=int)
    t.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="train on N processes of this machine with the distributed trainer (launches torchrun; "
                        "needs pip install 'hqgnn[distributed]'; docs/distributed.md)")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--from", dest="from_run", help="trained full-precision (lightgcn) run folder: what lsh and ptq quantize; the trained quantized models start from it")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (written at every evaluation: "
                                                         "every eval_every epochs)")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="full-ranking metrics of a trained run, as JSON")
    e.add_argument("run_dir")
    e.add_argument("--data", help="data to evaluate on (default: the run's own)")
    e.add_argument("--k", type=int, nargs="+", help="cut-offs 1 .. the number of items, e.g. --k 20 50 100 "
                   "(default: the run's setting ks)")
    e.add_argument("--split", default="test", choices=["test", "valid"])
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("data", help="data set tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", help="users, items, interactions, density, degree quantiles")
    ds.add_argument("path")
    ds.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    ds.set_defaults(func=cmd_data_stats)

    m = sub.add_parser("demo", help="train, export and time LightGCN and 4-/1-bit HQ-GNN on the embedded synthetic data")
    m.add_argument("--out", default="runs/demo", help="folder of the run folders and artifacts/ (default: runs/demo)")
    m.add_argument("--config", help="YAML file of settings applied to every model over its bundled ones "
                                    "(default_configs/synthetic-demo-*.yaml); the model and bit width stay each row's own")
    m.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override settings of every model, e.g. --set epochs=5 synthetic_users=500")
    m.add_argument("--device", default="auto")
    m.add_argument("--quiet", action="store_true", help="no progress lines or bars: only the table")
    m.set_defaults(func=cmd_demo)

    x = sub.add_parser("export", help="write a self-describing artifact of a trained run")
    x.add_argument("run_dir")
    x.add_argument("out_file")
    x.add_argument("--data", help="the run's data, if it moved")
    x.add_argument("--format", choices=["hqgnn", "faiss"], default="hqgnn",
                   help="hqgnn: the artifact; faiss: a FAISS index of the item codes (1 bit: binary; 2..8 bits: "
                        "scalar quantizer of the codes; float32: flat inner product) with OUT.json and "
                        "OUT.users.npz; RUN may then also be an .hqgnn artifact")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("recommend", help="top-K items for users, from an exported artifact")
    r.add_argument("artifact")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="an original user id")
    who.add_argument("--users", help="a file with one original user id per line")
    who.add_argument("--all-users", action="store_true",
                     help="every user's top-K, streamed to --out FILE.parquet (long format: user, rank, item, score)")
    r.add_argument("--out", help="with --all-users: the Parquet file to write (atomically); its name must end in "
                   ".parquet (Parquet is the only format written; one user alone prints JSON to stdout)")
    r.add_argument("--shard", metavar="I/N", help="with --all-users: only the I-th of N user ranges (1 <= I <= N)")
    r.add_argument("--batch-users", type=int, default=2048, help="with --all-users: users per search and row group")
    r.add_argument("--threads", type=int, help="with --all-users: search threads (default: every CPU)")
    r.add_argument("--quiet", action="store_true", help="with --all-users: no progress bar")
    r.add_argument("--k", type=int, default=50)
    r.add_argument("--include-seen", action="store_true", help="do not exclude the user's seen items (training + validation interactions)")
    _backend_flags(r, "exact | cascade | faiss-flat | faiss-hnsw | faiss-ivf (1 bit)")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser("similar", help="item-to-item neighbours from an exported artifact")
    s.add_argument("artifact")
    s.add_argument("--item", required=True, help="an original item id")
    s.add_argument("--k", type=int, default=20)
    _backend_flags(s, "exact | cascade | faiss-flat | faiss-hnsw | faiss-ivf (1 bit)")
    s.set_defaults(func=cmd_similar)

    v = sub.add_parser("serve", help="serve an exported artifact over HTTP")
    v.add_argument("artifact")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--workers", type=int, default=1)
    v.add_argument("--fallback", choices=["none", "popular"], default="none")
    v.add_argument("--max-batch", type=int, default=1024)
    _backend_flags(v, "exact | cascade | faiss-flat | faiss-hnsw | faiss-ivf (1 bit)")
    v.set_defaults(func=cmd_serve)

    g = sub.add_parser("experiment", help="run a grid of data sets x models x bits x seeds (resumable)")
    g.add_argument("file", help="experiment YAML")
    g.add_argument("--out", help="output folder (default: from the file)")
    g.add_argument("--shard", help="K/N: run every N-th cell starting at the K-th (parallel workers; rerun without it to finish)")
    g.add_argument("--seeds", type=int, nargs="+", help="run only the cells of these seeds (a first look; rerun without it to finish)")
    g.add_argument("--jobs", type=int, default=1,
                   help="N worker processes, a shard each, then the cells they skipped (set threads in the grid's settings, e.g. threads: 1)")
    g.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report of the cells already finished (e.g. copied from another machine)")
    g.add_argument("--no-report", action="store_true", help="train only; leave the report to a later run (what --jobs workers do)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_experiment)
    return p


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except HQGNNError as exc:
        print(f"hqgnn: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("hqgnn: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `hqgnn ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as exc:  # a path the OS refused (read-only, a file where a folder goes, ...): one line
        print(f"hqgnn: error: {_os_error(exc)}", file=sys.stderr)
        code = 2
    if getattr(args, "rank_process", False):
        rank_exit(code)
    return code


def _os_error(exc: OSError) -> str:
    """``path: reason`` of an OS error (both paths of a rename), else its message, on one line."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return " ".join(str(exc).split())
    paths = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    return " ".join(f"{paths}: {reason}".split())


def rank_exit(code: int) -> None:
    """End a torchrun rank of ``hqgnn train`` with ``code`` once its output is flushed, skipping the
    interpreter's teardown: the run is written and the process group destroyed by then, and C++
    threads of gloo / TorchRec destroyed during that teardown can abort a finished rank (SIGABRT,
    'terminate called without an active exception')."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
