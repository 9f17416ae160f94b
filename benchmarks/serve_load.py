"""Bounded load test of ``hqgnn serve``: single-user top-K over HTTP at a few concurrency levels.

    python benchmarks/serve_load.py ARTIFACT [ARTIFACT ...] [--requests 2000] [--concurrency 1 8 64] [--k 50]

For each artifact it starts its own server (``python -m hqgnn.cli serve ARTIFACT`` on a
free 127.0.0.1 port, in a subprocess, so client and server do not share a GIL), waits for
``/ready``, then for each concurrency level C sends a fixed number of
``GET /recommend?user=U&k=K`` requests from C client threads (one keep-alive
``http.client.HTTPConnection`` per thread; users drawn uniformly from the artifact's users
with a fixed seed), after a short unmeasured warm-up. Then it stops the server and moves on. Nothing
runs unbounded.

Reported per (artifact, concurrency): requests, throughput (requests / wall second),
client-side latency p50 / p99 / max (ms: from sending the request to the parsed JSON),
the server's own mean time per request (ms, from the ``/metrics`` histogram sum / count:
what the server spends, without the client's share of the CPU), and errors (any non-200
or transport error; must be 0). Client and server share the machine's cores, so at high
concurrency the client's threads take CPU from the server: the client latencies are an
upper bound on what a remote client would see.

The issue's target: p99 under 20 ms at concurrency 8 for single-user top-50 on a 2-core
machine (Gowalla at 1 bit and float32). The table goes to stdout and to ``--out``
(default ``benchmarks/results/serve_load.md``).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 20.0
TARGET_CONCURRENCY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=30, trust_env=False,
                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


class Server:
    """``hqgnn serve`` in a subprocess on a free loopback port; stopped on exit."""

    def __init__(self, artifact: Path, workers: int = 1, startup_s: float = 120.0):
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        cmd = [sys.executable, "-m", "hqgnn.cli", "serve", str(artifact), "--host", HOST, "--port", str(self.port),
               "--workers", str(workers)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + startup_s
        with client(self.base) as c:
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
                try:
                    if c.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline:
                    self.stop()
                    raise SystemExit(f"server not ready after {startup_s:.0f} s")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def server_recommend_totals(c: httpx.Client) -> tuple[float, int]:
    """(sum of seconds, count) of the ``/recommend`` route in the server's latency histogram."""
    text = c.get("/metrics").text
    s = re.search(r'^hqgnn_http_request_duration_seconds_sum\{route="/recommend"\} (\S+)$', text, re.M)
    n = re.search(r'^hqgnn_http_request_duration_seconds_count\{route="/recommend"\} (\S+)$', text, re.M)
    return (float(s.group(1)) if s else 0.0, int(float(n.group(1))) if n else 0)


def run_level(base: str, users: np.ndarray, requests: int, concurrency: int, k: int, seed: int) -> dict:
    """``requests`` GETs from ``concurrency`` threads; returns latencies (s), errors and wall time."""
    rng = np.random.default_rng(seed)
    picks = users[rng.integers(0, len(users), size=requests)]
    latencies = np.zeros(requests)
    errors: list[str] = []
    counter = itertools.count()  # next() on it is atomic under the GIL
    start = threading.Barrier(concurrency + 1)

    host, port = base.rsplit("/", 1)[-1].rsplit(":", 1)

    def worker():
        # the standard library's keep-alive connection: a request costs the client a fraction
        # of what an httpx.Client request does, and client and server share the cores
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        start.wait()
        while (i := next(counter)) < requests:
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/recommend?user={quote(str(picks[i]))}&k={k}")
                r = conn.getresponse()
                body = r.read()
                ok = r.status == 200 and len(json.loads(body)["items"]) > 0
                if not ok:
                    errors.append(f"{r.status}: {body[:120]!r}")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                errors.append(repr(exc)[:120])
                conn.close()  # reconnects on the next request
            latencies[i] = time.perf_counter() - t0
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall": wall}


def bench_artifact(path: Path, args) -> list[dict]:
    from hqgnn.index.artifact import read_artifact

    art = read_artifact(path)
    users = np.asarray(art.user_ids)
    rows = []
    with Server(path, workers=args.workers) as srv, client(srv.base) as c:
        info = c.get("/info").json()
        k = min(args.k, info["n_items"])
        for level in args.concurrency:
            run_level(srv.base, users, min(args.warmup, args.requests), level, k, seed=1000 + level)  # warm-up
            s0, n0 = server_recommend_totals(c)
            res = run_level(srv.base, users, args.requests, level, k, seed=level)
            s1, n1 = server_recommend_totals(c)
            lat_ms = res["latencies"] * 1e3
            row = {
                "artifact": path.name, "model": info["model"], "bits": info["bits"], "n_users": info["n_users"],
                "n_items": info["n_items"], "dim": info["dim"], "k": k, "concurrency": level,
                "requests": args.requests, "throughput": args.requests / res["wall"],
                "p50": float(np.percentile(lat_ms, 50)), "p99": float(np.percentile(lat_ms, 99)),
                "max": float(lat_ms.max()),
                "server_mean": (s1 - s0) / max(1, n1 - n0) * 1e3, "errors": len(res["errors"]),
            }
            rows.append(row)
            print(f"  {path.name} c={level}: {row['throughput']:.0f} req/s, p50 {row['p50']:.2f} ms, "
                  f"p99 {row['p99']:.2f} ms, errors {row['errors']}", file=sys.stderr, flush=True)
            if res["errors"]:
                print(f"  first errors: {res['errors'][:3]}", file=sys.stderr)
    return rows


def markdown(rows: list[dict], args) -> str:
    bits = lambda b: "float32" if b == 32 else f"{b}-bit"  # noqa: E731
    lines = [
        "# Serving load test (`benchmarks/serve_load.py`)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.platform()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable); "
        f"load average before the run {args.load_before}; "
        f"server `hqgnn serve --workers {args.workers}`, client threads with one keep-alive http.client connection each, "
        f"on the same machine.",
        "",
        f"Command: `python benchmarks/serve_load.py {' '.join(str(a) for a in args.artifacts)} --requests {args.requests} "
        f"--concurrency {' '.join(map(str, args.concurrency))} --k {args.k} --workers {args.workers}`",
        "",
        f"Single-user `GET /recommend?user=U&k={args.k}` (seen items excluded), users drawn uniformly. "
        "Latency is client-side (request sent to JSON parsed); *server ms* is the server's own mean time per "
        "request from its `/metrics` histogram.",
        "",
        "| artifact | model | bits | users x items (d) | concurrency | requests | throughput (req/s) | p50 ms | p99 ms "
        "| max ms | server ms (mean) | errors |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['model']} | {bits(r['bits'])} | {r['n_users']} x {r['n_items']} "
                     f"({r['dim']}) | {r['concurrency']} | {r['requests']} | {r['throughput']:.0f} | {r['p50']:.2f} "
                     f"| {r['p99']:.2f} | {r['max']:.2f} | {r['server_mean']:.2f} | {r['errors']} |")
    lines.append("")
    for r in rows:
        if r["concurrency"] == TARGET_CONCURRENCY:
            met = "met" if r["p99"] < TARGET_P99_MS and r["errors"] == 0 else "NOT met"
            lines.append(f"- {r['artifact']}: p99 {r['p99']:.2f} ms at concurrency {TARGET_CONCURRENCY} "
                         f"(target < {TARGET_P99_MS:.0f} ms): {met}")
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", type=Path, help="exported artifacts (hqgnn export)")
    p.add_argument("--requests", type=int, default=2000, help="measured requests per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each level")
    p.add_argument("--workers", type=int, default=1, help="hqgnn serve --workers")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.md")
    p.add_argument("--note", default="", help="a line appended under the table")
    args = p.parse_args(argv)
    if args.requests < 1 or min(args.concurrency) < 1 or args.k < 1:
        p.error("--requests, --concurrency and --k must be positive")
    for a in args.artifacts:
        if not a.is_file():
            p.error(f"{a}: artifact not found")
    args.load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    rows = []
    for a in args.artifacts:
        rows += bench_artifact(a, args)
    text = markdown(rows, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}", file=sys.stderr)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
