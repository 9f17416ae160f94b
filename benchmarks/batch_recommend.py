#!/usr/bin/env python
"""Top-K of every user to Parquet (``hqgnn recommend --all-users``): users/s and file size.

    python benchmarks/batch_recommend.py [--artifacts A.hqgnn B.hqgnn] [--float F.hqgnn] [--random]
                                         [--data ../shared/data/gowalla] [--k 100] [--threads 2]

For each artifact, :func:`hqgnn.index.batch.recommend_all` writes the top-``k`` of every user
(seen items excluded) to a Parquet file in a temporary folder, end to end: opening the
artifact (sha256 check included), the batched exact searches, the rows and the Parquet
writing. Beside it, the same searches without writing ("search only"), so the table shows
what the file costs. Best of ``--repeat`` runs.

Artifacts: ``--artifacts`` (default ``artifacts/gowalla-hq1.hqgnn`` and
``artifacts/gowalla-hq4.hqgnn``, the trained Gowalla runs, where they exist). Float32:
``--float`` (a trained LightGCN artifact), else one built from the first multi-bit artifact's
dequantized embeddings (user ``s_u k_u / 2``, item ``s_i k_i / 2``: the same scores in float32,
the same ids and seen items). ``--random`` (or no trained artifacts): random codes and random
float32 embeddings, d = 64, of the shape of ``--data`` (its ``train.txt`` as the seen items).

Prints a Markdown table and writes it to ``benchmarks/results/batch_recommend.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/retrieval.py: fair to shared cores

import argparse  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow  # noqa: E402

from hqgnn.index import FloatIndex, QuantizedIndex, read_artifact  # noqa: E402
from hqgnn.index.batch import recommend_all  # noqa: E402
from hqgnn.index.engine import open_index  # noqa: E402
from retrieval import cpu_name  # noqa: E402  (the one /proc/cpuinfo reader of the benchmarks)

ROOT = Path(__file__).resolve().parents[1]
TRAINED = [ROOT / "artifacts" / "gowalla-hq1.hqgnn", ROOT / "artifacts" / "gowalla-hq4.hqgnn"]
DIM = 64


def load_avg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- artifacts
def dequantized_float(src: Path, out: Path) -> Path:
    """A float32 artifact of ``src``'s dequantized embeddings (same ids, seen items, scores)."""
    art = read_artifact(src, mmap=True)
    m = 2**art.bits - 1
    user = (2.0 * art.user_codes().astype(np.float32) - m) * np.float32(art.user_scale / 2)
    item = (2.0 * art.item_codes().astype(np.float32) - m) * np.float32(art.item_scale / 2)
    FloatIndex.from_embeddings(item, user_emb=user, user_ids=art.user_ids, item_ids=art.item_ids,
                               train=(art.train_indptr, art.train_indices), model=f"{art.model}-dequantized",
                               data_fingerprint=art.data_fingerprint).save(out)
    return out


def random_artifacts(data: Path, folder: Path) -> list[tuple[str, Path]]:
    from hqgnn.data import load_lightgcn_folder

    train = load_lightgcn_folder(data).train
    n_users, n_items = train.shape
    rng = np.random.default_rng(0)
    out = []
    for bits in (1, 4):
        path = folder / f"random-{bits}bit.hqgnn"
        QuantizedIndex.from_codes(rng.integers(0, 2**bits, (n_items, DIM)), bits,
                                  user_codes=rng.integers(0, 2**bits, (n_users, DIM)), train=train,
                                  user_scale=0.1, item_scale=0.1, model="random").save(path)
        out.append((f"random {bits}-bit", path))
    path = folder / "random-float32.hqgnn"
    FloatIndex.from_embeddings(rng.standard_normal((n_items, DIM)).astype(np.float32),
                               user_emb=rng.standard_normal((n_users, DIM)).astype(np.float32), train=train,
                               model="random").save(path)
    out.append(("random float32", path))
    return out


# ---------------------------------------------------------------- timing
def search_only(path: Path, k: int, threads: int, batch_users: int) -> float:
    """Seconds of the batched searches alone (no rows, no file), artifact already open."""
    ix = open_index(path)
    ix.search(np.arange(min(256, ix.n_users)), k, exclude="train", threads=threads)  # warm-up: kernels, caches
    start = time.perf_counter()
    for lo in range(0, ix.n_users, batch_users):
        ix.search(np.arange(lo, min(ix.n_users, lo + batch_users)), k, exclude="train", threads=threads)
    return time.perf_counter() - start


def measure(label: str, path: Path, args, folder: Path) -> dict:
    ix = open_index(path)
    kernel = getattr(ix, "kernel_name", "sgemm")
    best = None
    for r in range(args.repeat):
        out = folder / f"{path.stem}-{r}.parquet"
        info = recommend_all(path, args.k, out, threads=args.threads, batch_users=args.batch_users)
        if best is None or info["seconds"] < best["seconds"]:
            best = info
        if r:
            out.unlink()
    search_s = min(search_only(path, args.k, args.threads, args.batch_users) for _ in range(args.repeat))
    return {"label": label, "bits": ix.bits, "kernel": kernel, "model": ix.model, "n_users": ix.n_users,
            "n_items": ix.n_items, "rows": best["rows"], "seconds": best["seconds"],
            "users_per_s": ix.n_users / best["seconds"], "search_users_per_s": ix.n_users / search_s,
            "mb": best["bytes"] / 1e6, "bytes_per_row": best["bytes"] / max(1, best["rows"]),
            "artifact_mb": path.stat().st_size / 1e6}


# ---------------------------------------------------------------- report
def report(rows: list[dict], args, notes: list[str], load_before: str, load_after: str) -> str:
    first = rows[0]
    lines = [
        "# Top-K of every user to Parquet (`hqgnn recommend --all-users`)", "",
        f"Command: `{args.command}`  ",
        f"Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores (shared; load average {load_before} before, "
        f"{load_after} after, 1 / 5 / 15 min), threads={args.threads}, OMP_WAIT_POLICY=PASSIVE, "
        f"numpy {np.__version__}, pyarrow {pyarrow.__version__}, Python {platform.python_version()}.  ",
        f"Data: {first['n_users']:,} users x {first['n_items']:,} items, top-{args.k}, seen items excluded, "
        f"blocks of {args.batch_users} users (one Parquet row group each), zstd, best of {args.repeat} run(s).  ",
        *[f"{n}  " for n in notes], "",
        "| artifact | codes | kernel | rows | seconds | users/s | search only, users/s | file MB | bytes/row |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        codes = "float32" if r["bits"] == 32 else f"{r['bits']}-bit"
        lines.append(f"| {r['label']} | {codes} | {r['kernel']} | {r['rows']:,} | {r['seconds']:.2f} | "
                     f"{r['users_per_s']:,.0f} | {r['search_users_per_s']:,.0f} | {r['mb']:.2f} | "
                     f"{r['bytes_per_row']:.2f} |")
    lines += ["",
              "Seconds / users/s: end to end (open and sha256-check the artifact, search, build the rows, write "
              "and rename the file). Search only: the same batched searches with nothing written. File: long "
              "format `user` (int64), `rank` (int32), `item` (int64), `score` (float64, the model's score); "
              "users, ranks and b-bit scores dictionary-encoded, float32 scores byte-stream-split."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", nargs="*", type=Path, help="quantized (or any) artifacts to measure")
    p.add_argument("--float", dest="float_artifact", type=Path, help="a float32 artifact (trained LightGCN)")
    p.add_argument("--random", action="store_true", help="random codes / embeddings of --data's shape")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "gowalla")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-users", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_recommend.md")
    p.add_argument("--note", action="append", default=[], help="a line to print under the table's header")
    args = p.parse_args(argv)
    args.command = "python benchmarks/batch_recommend.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    load_before = load_avg()
    notes = list(args.note)
    with tempfile.TemporaryDirectory(prefix="batch-recommend-") as tmp:
        folder = Path(tmp)
        given = args.artifacts if args.artifacts else [p for p in TRAINED if p.exists()]
        if args.random or not given:
            if not args.random:
                notes.append("No trained artifacts found: random codes and embeddings.")
            todo = random_artifacts(args.data, folder)
            notes.append(f"Artifacts: **random** codes (1, 4 bits) and float32 embeddings, d = {DIM}, with "
                         f"`{args.data.name}/train.txt` as the seen items (throughput does not depend on trained "
                         "values; file sizes do a little: trained top-K lists repeat popular items).")
        else:
            todo = [(p.stem, p) for p in given]
            if args.float_artifact:
                todo.append((args.float_artifact.stem, args.float_artifact))
                notes.append(f"Float32: `{args.float_artifact}`.")
            else:
                src = next((p for p in given if 2 <= read_artifact(p).bits <= 8), None)
                if src is not None:
                    todo.append((f"{src.stem} dequantized", dequantized_float(src, folder / "dequantized.hqgnn")))
                    notes.append(f"Float32: no trained LightGCN artifact; built from `{src.name}`'s dequantized "
                                 f"embeddings (user s_u k_u / 2, item s_i k_i / 2: the same shape, ids, seen items "
                                 f"and, up to float32 rounding, scores).")
        rows = []
        for label, path in todo:
            print(f"{label}: {path}", file=sys.stderr, flush=True)
            rows.append(measure(label, path, args, folder))
    text = report(rows, args, notes, load_before, load_avg())
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
