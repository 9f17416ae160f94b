"""The HTTP server (``hqgnn serve``): a real uvicorn server on 127.0.0.1, talked to over HTTP.

Two tiny artifacts are trained and exported once per module (1-bit HQ-GNN and float
LightGCN on the same synthetic data). Servers run in a thread (``uvicorn.Server`` on a
socket bound here to a free loopback port); the CLI and SIGHUP are checked once in a
subprocess.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from hqgnn.export import ArtifactRecommender, export_run  # noqa: E402
from hqgnn.index.artifact import read_artifact  # noqa: E402
from hqgnn.serving import Recommendation, Similar, create_app  # noqa: E402

HOST = "127.0.0.1"
N_USERS, N_ITEMS, DIM = 200, 150, 16
MAX_BATCH = 8

#: faiss-cpu is an optional extra (``pip install 'hqgnn[faiss]'``; ``.[test]`` includes it)
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="faiss-cpu not installed (pip install 'hqgnn[faiss]')")


# ---------------------------------------------------------------- fixtures
def _train_and_export(root: Path, model: str, bits=None) -> Path:
    from hqgnn.api import Recommender

    settings = dict(model=model, data="synthetic", synthetic_users=N_USERS, synthetic_items=N_ITEMS, epochs=3,
                    batch_size=512, dim=DIM, threads=1, val_fraction=0, eval_split="test", patience=0)
    if bits is not None:
        settings["bits"] = bits
    run = root / f"run-{model}"
    Recommender(**settings).fit("synthetic", out_dir=run, progress=False)
    out = root / f"{model}.hqgnn"
    export_run(run, out)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    return {"quantized": _train_and_export(root, "hqgnn", bits=1), "float": _train_and_export(root, "lightgcn")}


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yield an httpx client."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        with _client(f"http://{HOST}:{port}") as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _client(base: str):
    return httpx.Client(base_url=base, timeout=10, trust_env=False)  # loopback only: never through a proxy


@pytest.fixture(scope="module")
def server(artifacts):
    with running(create_app(artifacts["quantized"], max_batch=MAX_BATCH)) as client:
        yield client


@pytest.fixture(scope="module")
def reference(artifacts):
    """The artifacts' own recommenders and ids, to check what the server answers."""
    out = {}
    for name, path in artifacts.items():
        art = read_artifact(path)
        out[name] = {"rec": ArtifactRecommender(path), "users": [int(u) for u in art.user_ids],
                     "items": [int(i) for i in art.item_ids], "art": art}
    return out


def _metrics(text: str) -> dict:
    """Every sample of a ``/metrics`` text, parsed by prometheus_client's own parser (which refuses
    malformed text): ``{(sample name, frozenset of label items): value}``, in text order."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _metric(text: str, name: str, **labels):
    """The value of one sample of a ``/metrics`` text (None when absent)."""
    return _metrics(text).get((name, frozenset(labels.items())))


def _assert_one_line_error(r, status=None):
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert body["detail"] and "\n" not in body["detail"]
    return body["detail"]


# ---------------------------------------------------------------- endpoints
def test_health_ready_info(server, artifacts, reference):
    assert server.get("/health").json() == {"status": "ok"}
    ready = server.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    info = server.get("/info").json()
    assert (info["model"], info["bits"], info["dim"], info["n_users"], info["n_items"]) == \
        ("hqgnn", 1, DIM, N_USERS, N_ITEMS)
    assert info["code_bytes"] == (N_USERS + N_ITEMS) * 8  # one 64-bit word per row for 16 dims at 1 bit
    assert info["float32_bytes"] == (N_USERS + N_ITEMS) * DIM * 4
    raw = Path(artifacts["quantized"]).read_bytes()
    assert re.fullmatch(r"[0-9a-f]{64}", info["checksum"]) and info["checksum"] == raw[16:48].hex()
    assert ready.json()["checksum"] == info["checksum"]
    assert info["fallback"] == "none" and info["max_batch"] == MAX_BATCH


def test_recommend_get_matches_engine_and_excludes_seen(server, reference):
    ref = reference["quantized"]
    art = ref["art"]
    for row in (0, 7, N_USERS - 1):
        user = ref["users"][row]
        r = server.get("/recommend", params={"user": user, "k": 10})
        assert r.status_code == 200, r.text
        body = r.json()
        assert r.headers["content-type"] == "application/json"
        assert Recommendation.model_validate(body).model_dump(exclude_none=True) == body  # the documented schema
        assert body["user"] == user and "fallback" not in body
        assert len(body["items"]) == 10 == len(set(body["items"])) == body["found"]
        assert body["scores"] == sorted(body["scores"], reverse=True)
        seen = {ref["items"][i] for i in art.train_indices[art.train_indptr[row]:art.train_indptr[row + 1]]}
        assert not seen & set(body["items"])
        expect = ref["rec"].recommend([user], k=10, exclude_seen=True).to_records()[0]
        assert body["items"] == expect["items"]
        np.testing.assert_allclose(body["scores"], expect["scores"])
    with_seen = server.get("/recommend", params={"user": ref["users"][0], "k": N_ITEMS, "exclude_seen": "false"})
    assert with_seen.status_code == 200 and sorted(with_seen.json()["items"]) == sorted(ref["items"])


def test_recommend_post_batch(server, reference):
    users = reference["quantized"]["users"][:5]
    r = server.post("/recommend", json={"users": users, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 7 and [x["user"] for x in body["results"]] == users
    for u, res in zip(users, body["results"]):
        single = server.get("/recommend", params={"user": u, "k": 7}).json()
        assert res["items"] == single["items"]
    # numeric strings are accepted where ids are integers
    assert server.post("/recommend", json={"users": [str(users[0])], "k": 3}).json()["results"][0]["user"] == users[0]


def test_similar(server, reference):
    item = reference["quantized"]["items"][3]
    r = server.get("/similar", params={"item": item, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert Similar.model_validate(body).model_dump() == body
    assert body["item"] == item and len(body["items"]) == 5 and item not in body["items"]
    assert body["items"] == reference["quantized"]["rec"].similar(item, k=5).to_records()[0]["items"]
    assert body["found"] == 5


def test_openapi_documents_every_endpoint(server):
    spec = server.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/recommend"]) == {"get", "post"}
    for p in ("/similar", "/health", "/ready", "/info", "/metrics", "/admin/reload"):
        assert p in paths
    assert {"Recommendation", "BatchRecommendations", "Similar", "Info", "ErrorResponse"} <= set(spec["components"]["schemas"])
    assert server.get("/docs").status_code == 200


BAD_REQUESTS = [
    # (method, url, params / body, expected status, text in the reason)
    ("GET", "/recommend", {"user": "999999"}, 404, "unknown user"),
    ("GET", "/recommend", {"user": "-1"}, 404, "unknown user"),
    ("GET", "/recommend", {"user": "9" * 30}, 404, "unknown user"),
    ("GET", "/recommend", {"user": "abc"}, 422, "not an integer"),
    ("GET", "/recommend", {"user": ""}, 422, "not an integer"),
    ("GET", "/recommend", {}, 422, "user"),
    ("GET", "/recommend", {"user": "0", "k": "0"}, 422, "k=0"),
    ("GET", "/recommend", {"user": "0", "k": "-5"}, 422, "k=-5"),
    ("GET", "/recommend", {"user": "0", "k": str(N_ITEMS + 1)}, 422, "out of range"),
    ("GET", "/recommend", {"user": "0", "k": "ten"}, 422, "'k'"),
    ("GET", "/recommend", {"user": "0", "k": "1.5"}, 422, "'k'"),
    ("GET", "/recommend", {"user": "0", "exclude_seen": "maybe"}, 422, "exclude_seen"),
    ("GET", "/similar", {"item": "99999"}, 404, "unknown item"),
    ("GET", "/similar", {"item": "x1"}, 422, "not an integer"),
    ("GET", "/similar", {"item": "0", "k": "0"}, 422, "k=0"),
    ("GET", "/similar", {"item": "0", "k": str(N_ITEMS)}, 422, "out of range"),
    ("POST", "/recommend", b'{"users": [1, 2', 400, "malformed JSON"),
    ("POST", "/recommend", b"not json at all", 400, "malformed JSON"),
    ("POST", "/recommend", b"[1, 2]", 422, "body"),
    ("POST", "/recommend", b"", 422, "body"),
    ("POST", "/recommend", {"users": []}, 422, "users"),
    ("POST", "/recommend", {"users": list(range(MAX_BATCH + 1))}, 413, "max-batch"),
    ("POST", "/recommend", {"users": ["abc"]}, 422, "not an integer"),
    ("POST", "/recommend", {"users": [True]}, 422, "users"),
    ("POST", "/recommend", {"users": [1.5]}, 422, "users"),
    ("POST", "/recommend", {"users": [[1]]}, 422, "users"),
    ("POST", "/recommend", {"users": [0, 99999, 123456]}, 404, "99999"),
    ("POST", "/recommend", {"users": [0], "k": 0}, 422, "k=0"),
    ("POST", "/recommend", {"users": [0], "k": N_ITEMS + 1}, 422, "out of range"),
    ("POST", "/recommend", {"users": [0], "k": "many"}, 422, "'k'"),
    ("POST", "/recommend", {"users": [0], "colour": "red"}, 422, "colour"),
    ("POST", "/admin/reload", b'{"path": ', 400, "malformed JSON"),
    ("POST", "/admin/reload", {"path": 3}, 422, "path"),
    ("GET", "/no/such/endpoint", {}, 404, "Not Found"),
    ("DELETE", "/recommend", {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("method,url,payload,status,reason", BAD_REQUESTS,
                         ids=[f"{m} {u} {p!r:.40}" for m, u, p, *_ in BAD_REQUESTS])
def test_bad_input_is_a_one_line_4xx_and_the_server_keeps_serving(server, method, url, payload, status, reason):
    if method == "GET":
        r = server.get(url, params=payload)
    elif isinstance(payload, bytes):
        r = server.request(method, url, content=payload, headers={"content-type": "application/json"})
    else:
        r = server.request(method, url, json=payload)
    detail = _assert_one_line_error(r, status)
    assert reason in detail, detail
    assert server.get("/health").status_code == 200
    assert server.get("/recommend", params={"user": 0, "k": 3}).status_code == 200


def test_huge_body_is_refused_before_parsing(server):
    from hqgnn.serving import max_body_bytes

    body = json.dumps({"users": [0] * max_body_bytes(MAX_BATCH), "k": 5}).encode()
    detail = _assert_one_line_error(
        server.post("/recommend", content=body, headers={"content-type": "application/json"}), 413)
    assert "over the limit" in detail
    assert server.get("/health").status_code == 200


def test_metrics_prometheus_text(server):
    for _ in range(3):
        server.get("/recommend", params={"user": 1, "k": 5})
    server.get("/recommend", params={"user": 999999})
    r = server.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
                        r'(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    samples = _metrics(text)  # prometheus_client's parser reads every line
    ok = _metric(text, "hqgnn_http_requests_total", method="GET", route="/recommend", status="200")
    assert ok is not None and ok >= 3
    assert _metric(text, "hqgnn_http_requests_total", method="GET", route="/recommend", status="404") >= 1
    assert "# TYPE hqgnn_http_request_duration_seconds histogram" in text
    buckets = [(dict(labels)["le"], v) for (name, labels), v in samples.items()
               if name == "hqgnn_http_request_duration_seconds_bucket" and dict(labels)["route"] == "/recommend"]
    counts = [v for _, v in buckets]
    count = _metric(text, "hqgnn_http_request_duration_seconds_count", route="/recommend")
    assert buckets and buckets[-1][0] == "+Inf" and counts == sorted(counts) and counts[-1] == count >= 4
    info = [(dict(labels), v) for (name, labels), v in samples.items() if name == "hqgnn_model_info"]
    assert len(info) == 1 and info[0][1] == 1
    assert {k: v for k, v in info[0][0].items() if k != "checksum"} == {"model": "hqgnn", "bits": "1", "dim": "16"}
    assert re.fullmatch(r"[0-9a-f]{64}", info[0][0]["checksum"])


def test_metrics_count_every_request_exactly(server):
    """The counter and the histogram count each answered request once, by route and status."""
    def counts():
        text = server.get("/metrics").text
        return (_metric(text, "hqgnn_http_requests_total", method="GET", route="/similar", status="200") or 0,
                _metric(text, "hqgnn_http_requests_total", method="GET", route="/similar", status="422") or 0,
                _metric(text, "hqgnn_http_request_duration_seconds_count", route="/similar") or 0)

    before = counts()
    for _ in range(5):
        assert server.get("/similar", params={"item": 0, "k": 3}).status_code == 200
    for _ in range(2):
        assert server.get("/similar", params={"item": 0, "k": 0}).status_code == 422
    assert tuple(a - b for a, b in zip(counts(), before)) == (5, 2, 7)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs_faiss) for b in ("faiss-ivf", "faiss-hnsw")])
def test_approximate_backend_answers_are_full_or_say_how_many(tmp_path, backend):
    """A 2,000-item 1-bit artifact served with an approximate backend: k=1500 gives 1,500 items,
    and a user with fewer eligible items than k gets them all with ``found`` < k."""
    import scipy.sparse as sp

    from hqgnn.index import QuantizedIndex

    rng = np.random.default_rng(4)
    n_items, dim = 2000, 64
    users = rng.integers(0, 2, (2, dim)).astype(np.uint8)
    items = rng.integers(0, 2, (n_items, dim)).astype(np.uint8)
    counts = [25, n_items - 9]
    rows = np.repeat([0, 1], counts)
    cols = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(2, n_items)).toarray() > 0
    path = tmp_path / "short.hqgnn"
    QuantizedIndex.from_codes(items, 1, user_codes=users, train=sp.csr_matrix(seen)).save(path)
    with running(create_app(path, backend=backend)) as client:
        body = client.get("/recommend", params={"user": 0, "k": 1500}).json()
        assert Recommendation.model_validate(body).model_dump(exclude_none=True) == body
        assert body["found"] == 1500 == len(body["items"]) == len(set(body["items"]))
        assert not seen[0, body["items"]].any() and body["scores"] == sorted(body["scores"], reverse=True)
        batch = client.post("/recommend", json={"users": [0, 1], "k": 1500}).json()
        assert [r["found"] for r in batch["results"]] == [1500, 9]
        assert sorted(batch["results"][1]["items"]) == np.flatnonzero(~seen[1]).tolist()


# ---------------------------------------------------------------- cold start
def test_fallback_popular(artifacts, reference):
    ref = reference["quantized"]
    art = ref["art"]
    counts = np.bincount(np.asarray(art.train_indices), minlength=N_ITEMS)
    popular = [ref["items"][i] for i in np.lexsort((np.arange(N_ITEMS), -counts))[:6]]
    with running(create_app(artifacts["quantized"], fallback="popular")) as client:
        cold = client.get("/recommend", params={"user": 424242, "k": 6})
        assert cold.status_code == 200, cold.text
        body = cold.json()
        assert body["fallback"] == "popular" and body["user"] == 424242
        assert body["items"] == popular and body["found"] == 6
        assert body["scores"] == sorted(body["scores"], reverse=True)
        warm = client.get("/recommend", params={"user": ref["users"][0], "k": 6}).json()
        assert "fallback" not in warm
        batch = client.post("/recommend", json={"users": [ref["users"][0], 424242, ref["users"][1]], "k": 6}).json()
        assert [x.get("fallback") for x in batch["results"]] == [None, "popular", None]
        assert batch["results"][0]["items"] == warm["items"]
        assert batch["results"][1]["items"] == popular
        # still a 422 for an id that cannot be a user id at all
        _assert_one_line_error(client.get("/recommend", params={"user": "abc"}), 422)
        assert _metric(client.get("/metrics").text, "hqgnn_fallback_recommendations_total") == 2
        assert client.get("/info").json()["fallback"] == "popular"


# ---------------------------------------------------------------- reload
def test_reload_under_concurrent_requests(artifacts, reference):
    q_path, f_path = artifacts["quantized"], artifacts["float"]
    users = reference["quantized"]["users"][:20]
    answers = {name: {u: reference[name]["rec"].recommend([u], k=10).to_records()[0]["items"] for u in users}
               for name in ("quantized", "float")}
    with running(create_app(q_path)) as client:
        base = str(client.base_url)
        q_sum = client.get("/info").json()["checksum"]
        done = []
        failures = []
        lock = threading.Lock()

        def hammer(seed):
            rng = np.random.default_rng(seed)
            with _client(base) as c:
                for _ in range(50):
                    u = users[int(rng.integers(len(users)))]
                    try:
                        r = c.get("/recommend", params={"user": u, "k": 10})
                        items = r.json().get("items") if r.status_code == 200 else None
                        if items not in (answers["quantized"][u], answers["float"][u]):
                            failures.append((u, r.status_code, r.text[:200]))
                    except httpx.HTTPError as exc:  # pragma: no cover - reported below
                        failures.append((u, "exception", repr(exc)))
                    with lock:
                        done.append(1)

        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()

        def wait_for(n):
            deadline = time.time() + 30
            while len(done) < n and time.time() < deadline:
                time.sleep(0.005)

        wait_for(20)
        r1 = client.post("/admin/reload", json={"path": str(f_path)})
        wait_for(100)
        r2 = client.post("/admin/reload")  # no body: reloads the path now served (the float one)
        r3 = client.post("/admin/reload", json={"path": str(q_path)})
        for t in threads:
            t.join(60)
        assert not failures, failures[:5]
        assert len(done) == 200
        assert r1.status_code == 200 and r1.json()["previous_checksum"] == q_sum, r1.text
        assert r2.status_code == 200 and r2.json()["path"] == str(f_path), r2.text
        assert r3.status_code == 200 and r3.json()["checksum"] == q_sum, r3.text
        info = client.get("/info").json()
        assert info["checksum"] == q_sum and info["bits"] == 1 and info["reloads"] == 3
        assert _metric(client.get("/metrics").text, "hqgnn_reloads_total", result="ok") == 3


def test_bad_reload_is_refused_and_the_old_model_keeps_serving(artifacts, tmp_path, reference):
    q_path = artifacts["quantized"]
    corrupt = tmp_path / "corrupt.hqgnn"
    data = bytearray(Path(q_path).read_bytes())
    data[-10] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.hqgnn"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    text = tmp_path / "notes.txt"
    text.write_text("not an artifact\n")
    user = reference["quantized"]["users"][2]
    with running(create_app(q_path)) as client:
        before = client.get("/recommend", params={"user": user, "k": 10}).json()
        checksum = client.get("/info").json()["checksum"]
        for bad, reason in [(corrupt, "checksum"), (truncated, "truncated"), (text, "not an hqgnn"),
                            (tmp_path / "missing.hqgnn", "not found"), (tmp_path, "not a file")]:
            r = client.post("/admin/reload", json={"path": str(bad)})
            detail = _assert_one_line_error(r, 409)
            assert "reload refused" in detail and reason in detail and "still serving" in detail, detail
            assert client.get("/recommend", params={"user": user, "k": 10}).json() == before
        info = client.get("/info").json()
        assert info["checksum"] == checksum and info["reloads"] == 0
        assert client.get("/ready").json()["ready"] is True
        assert _metric(client.get("/metrics").text, "hqgnn_reloads_total", result="refused") == 5


def test_worker_factory_from_env(artifacts, monkeypatch, reference):
    """What each ``--workers N`` process runs: the app factory, settings from the environment.

    Its engine calls all go to worker threads here (``inline_bytes=0``), the path a large
    batch takes; answers are the same. A multi-worker server refuses an HTTP reload.
    """
    from hqgnn import serving

    monkeypatch.setenv(serving.ENV_ARTIFACT, str(artifacts["quantized"]))
    monkeypatch.setenv(serving.ENV_FALLBACK, "popular")
    monkeypatch.setenv(serving.ENV_MAX_BATCH, "3")
    monkeypatch.setenv(serving.ENV_WORKERS, "2")
    monkeypatch.setenv(serving.ENV_INLINE_BYTES, "0")
    users = reference["quantized"]["users"][:3]
    with running(serving.app_from_env()) as client:
        info = client.get("/info").json()
        assert (info["fallback"], info["max_batch"], info["workers"]) == ("popular", 3, 2)
        batch = client.post("/recommend", json={"users": users, "k": 5})
        assert batch.status_code == 200, batch.text
        for u, res in zip(users, batch.json()["results"]):
            assert res["items"] == reference["quantized"]["rec"].recommend([u], k=5).to_records()[0]["items"]
        _assert_one_line_error(client.post("/recommend", json={"users": users + users, "k": 5}), 413)
        assert "SIGHUP" in _assert_one_line_error(client.post("/admin/reload"), 409)
        assert client.get("/recommend", params={"user": users[0], "k": 3}).status_code == 200
    monkeypatch.delenv(serving.ENV_ARTIFACT)
    with pytest.raises(serving.HQGNNError, match=serving.ENV_ARTIFACT):
        serving.app_from_env()


# ---------------------------------------------------------------- CLI, SIGHUP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX only")
def test_cli_serve_and_sighup_reload(artifacts, tmp_path):
    served = tmp_path / "served.hqgnn"
    shutil.copyfile(artifacts["quantized"], served)
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hqgnn.cli", "serve", str(served), "--host", HOST, "--port", str(port),
                             "--fallback", "popular"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with _client(f"http://{HOST}:{port}") as client:
            deadline = time.time() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.time() < deadline, "server did not become ready"
                time.sleep(0.1)
            assert client.get("/info").json()["bits"] == 1
            assert client.get("/recommend", params={"user": 999999, "k": 3}).json()["fallback"] == "popular"
            # a corrupt file at the served path: SIGHUP is refused, the old model keeps serving
            bad = tmp_path / "bad.tmp"
            data = bytearray(served.read_bytes())
            data[-3] ^= 0x01
            bad.write_bytes(bytes(data))
            os.replace(bad, served)
            proc.send_signal(signal.SIGHUP)
            _wait_metric(client, "hqgnn_reloads_total", 1, result="refused")
            assert client.get("/info").json()["bits"] == 1
            assert client.get("/recommend", params={"user": 0, "k": 3}).status_code == 200
            # a good new artifact renamed over the path: SIGHUP swaps it in
            tmp = tmp_path / "new.tmp"
            shutil.copyfile(artifacts["float"], tmp)
            os.replace(tmp, served)
            proc.send_signal(signal.SIGHUP)
            _wait_metric(client, "hqgnn_reloads_total", 1, result="ok")
            assert client.get("/info").json()["bits"] == 32
            assert client.get("/recommend", params={"user": 0, "k": 3}).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM), proc.stdout.read()


def _start_cli_server(args: list, timeout: float = 120.0):
    """``hqgnn serve ARGS`` in a subprocess on a free port, once ``/ready``; returns (process, base url)."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "hqgnn.cli", "serve", *args, "--host", HOST, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://{HOST}:{port}"
    deadline = time.time() + timeout
    with _client(base) as client:
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if client.get("/ready").status_code == 200:
                    return proc, base
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not become ready"
            time.sleep(0.2)


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()
        proc.wait()


def test_workers_metrics_are_the_total_of_every_worker(artifacts):
    """``--workers 2``: every scrape reports both workers' requests (prometheus_client's multiprocess
    mode in a directory the launcher creates), not the answering worker's share; the directory
    goes when the server stops."""
    proc, base = _start_cli_server([str(artifacts["quantized"]), "--workers", "2"])
    multiproc_dir = None
    try:
        pids, sent = set(), 0
        while len(pids) < 2 and sent < 400:  # a new connection per request: the kernel hands each to either worker
            with _client(base) as c:
                r = c.get("/info")
            assert r.status_code == 200, r.text
            pids.add(r.json()["pid"])
            sent += 1
        assert len(pids) == 2, f"only one worker answered {sent} requests"
        environ = Path(f"/proc/{min(pids)}/environ")
        if environ.exists():
            env = dict(kv.split("=", 1) for kv in environ.read_text().split("\0") if "=" in kv)
            multiproc_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
            assert multiproc_dir.is_dir() and list(multiproc_dir.glob("*.db"))
        for _ in range(6):  # several scrapes, answered by either worker
            deadline = time.time() + 10
            while True:
                with _client(base) as c:
                    text = c.get("/metrics").text
                got = _metric(text, "hqgnn_http_requests_total", method="GET", route="/info", status="200")
                assert got is not None and got <= sent, (got, sent)
                if got == sent:
                    break
                assert time.time() < deadline, f"the scrape counts {got} of {sent} /info requests"
                time.sleep(0.05)
            assert _metric(text, "hqgnn_http_request_duration_seconds_count", route="/info") == sent
    finally:
        _stop(proc)
    if multiproc_dir is not None:
        assert not multiproc_dir.exists(), proc.stdout.read()


def _wait_metric(client, name, value, timeout=20.0, **labels):
    deadline = time.time() + timeout
    while _metric(client.get("/metrics").text, name, **labels) != value:
        assert time.time() < deadline, f"metric {name}{labels} = {value} not seen"
        time.sleep(0.05)


def test_cli_serve_refuses_a_bad_artifact(tmp_path, capsys):
    """``hqgnn serve`` checks the artifact before it binds the port: one error line, exit status 2."""
    from hqgnn.cli import main

    bad = tmp_path / "bad.hqgnn"
    bad.write_bytes(b"HQGNNIDX" + b"\0" * 10)
    assert main(["serve", str(bad), "--port", str(_free_port())]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hqgnn: error: ") and "truncated" in lines[0], lines
    assert main(["serve", str(tmp_path / "missing.hqgnn")]) == 2
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------- non-finite artifacts
def _sealed_nan_copy(src: Path, dst: Path) -> Path:
    """A copy of a float artifact with one NaN embedding value and a *valid* checksum."""
    import hashlib

    from hqgnn.index import artifact as A

    raw = bytearray(Path(src).read_bytes())
    meta, payload = A.read_header(src)
    spec = meta["arrays"]["item_codes"]
    at = payload + spec["offset"] + 5 * 4  # item 0, dimension 5 (float32)
    raw[at: at + 4] = np.array([np.nan], np.float32).tobytes()
    raw[16:48] = hashlib.sha256(bytes(raw[48:])).digest()
    dst.write_bytes(bytes(raw))
    return dst


def test_reload_of_a_nan_artifact_is_refused_and_startup_fails(artifacts, reference, tmp_path, capsys):
    from hqgnn.cli import main

    bad = _sealed_nan_copy(artifacts["float"], tmp_path / "nan.hqgnn")
    reason = f"{bad}: unusable artifact: item_codes (float32 embeddings) holds 1 NaN of its {N_ITEMS * DIM} values"
    user = reference["float"]["users"][3]
    with running(create_app(artifacts["float"])) as client:
        before = client.get("/recommend", params={"user": user, "k": 10}).json()
        checksum = client.get("/info").json()["checksum"]
        detail = _assert_one_line_error(client.post("/admin/reload", json={"path": str(bad)}), 409)
        assert detail.startswith(f"reload refused: {reason}; still serving"), detail
        assert client.get("/recommend", params={"user": user, "k": 10}).json() == before
        info = client.get("/info").json()
        assert info["checksum"] == checksum and info["reloads"] == 0
        assert _metric(client.get("/metrics").text, "hqgnn_reloads_total", result="refused") == 1
    capsys.readouterr()  # the server's own log of the refusal
    # a server started on it never binds: one error line, exit status 2
    assert main(["serve", str(bad), "--port", str(_free_port())]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"hqgnn: error: {reason}"], lines
    # and the CLI's other readers refuse it the same way
    assert main(["recommend", str(bad), "--user", str(user)]) == 2
    assert capsys.readouterr().err.strip() == f"hqgnn: error: {reason}"
