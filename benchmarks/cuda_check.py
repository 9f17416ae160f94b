"""The CUDA path end to end, next to the CPU path, on the embedded synthetic data.

For each model (lightgcn, hqgnn 4-bit with the GSTE's Hessian-trace updates, hqgnn
1-bit, hashgnn) it trains the same seeded run on the CPU and on the GPU, evaluates
both, checks that the GPU run's ranking by integer codes equals its ranking by
dequantized scores, round-trips the run through save / load on the GPU, and prints
a table: metrics on each device and seconds per run. Floating-point sums run in a
different order on the GPU, so the two devices' metrics agree closely, not bit for bit.

    python benchmarks/cuda_check.py            (needs a CUDA device; exits 0 with a note without one)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hqgnn import Recommender

CASES = [("lightgcn", 1), ("hqgnn", 4), ("hqgnn", 1), ("hashgnn", 1)]


def train(model: str, bits: int, device: str, out: Path, epochs: int):
    rec = Recommender(model=model, bits=bits, epochs=epochs, eval_every=epochs, device=device, seed=7,
                      batch_size=4096, lr=0.01, delta_every=2, val_fraction=0.0, eval_split="test", patience=0)
    t0 = time.perf_counter()
    metrics = rec.fit("synthetic", out_dir=out, progress=False)
    return rec, metrics, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (cpu checks this script itself)")
    args = ap.parse_args()
    gpu = args.device
    if gpu.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device on this machine: nothing to check")
            return 0
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model, bits in CASES:
            name = f"{model}-{bits}b" if model != "lightgcn" else model
            res = {}
            for device in ("cpu", gpu):
                rec, metrics, secs = train(model, bits, device, Path(tmp) / f"{name}-{device}", args.epochs)
                res[device] = (rec, metrics, secs)
            rec, m_gpu, _ = res[gpu]
            m_cpu = res["cpu"][1]
            # the GPU model really lives on the GPU
            if rec.model.encoder.embedding.device.type != torch.device(gpu).type:
                failures.append(f"{name}: embedding not on cuda")
            # integer ranking == dequantized ranking (quantized models), on the GPU
            if model != "lightgcn":
                ru, ri, integer = rec.model.ranking_embeddings(rec.adj)
                u, i = rec.embeddings()
                users = torch.arange(min(200, u.shape[0]), device=u.device)
                int_scores = ru[users] @ ri.t()
                top_int = int_scores.topk(20, dim=1).values
                by_float = (u[users] @ i.t()).topk(20, dim=1).indices
                # ties may order differently: the integer scores of both top-20 lists must be equal
                if not integer or not torch.equal(top_int, int_scores.gather(1, by_float)):
                    failures.append(f"{name}: integer and dequantized rankings differ on cuda")
            # save / load on the GPU gives the same recommendations
            items, _ = rec.recommend([0, 1, 2], k=10)
            again = Recommender.load(Path(tmp) / f"{name}-{gpu}", device=gpu)
            items2, _ = again.recommend([0, 1, 2], k=10)
            if not np.array_equal(items, items2):
                failures.append(f"{name}: recommendations change after save/load on cuda")
            gap = abs(m_gpu["recall@20"] - m_cpu["recall@20"])
            if gap > 0.02:
                failures.append(f"{name}: recall@20 cpu {m_cpu['recall@20']:.4f} vs cuda {m_gpu['recall@20']:.4f}")
            rows.append((name, m_cpu["recall@20"], m_gpu["recall@20"], m_cpu["ndcg@20"], m_gpu["ndcg@20"],
                         res["cpu"][2], res[gpu][2]))
    print(f"\n| model | recall@20 cpu | recall@20 {gpu} | ndcg@20 cpu | ndcg@20 {gpu} | s cpu | s {gpu} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.1f} | {r[6]:.1f} |")
    for f in failures:
        print("FAIL:", f)
    print("cuda check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
