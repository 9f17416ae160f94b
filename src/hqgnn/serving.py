"""HTTP serving of an exported artifact (quantized or float): ``hqgnn serve ARTIFACT``.

FastAPI + uvicorn. Endpoints (JSON; the generated OpenAPI page at ``/docs`` documents
every request and response model):

* ``GET /recommend?user=ID&k=50&exclude_seen=true`` -- top-K items of one user;
* ``POST /recommend`` ``{"users": [...], "k": 50, "exclude_seen": true}`` -- a batch,
  answered with one engine call (at most ``--max-batch`` users);
* ``GET /similar?item=ID&k=20`` -- item-to-item neighbours;
* ``GET /health`` (liveness), ``GET /ready`` (an artifact is loaded), ``GET /info``
  (model, bits, dimension, counts, memory of the codes, artifact checksum),
  ``GET /metrics`` (Prometheus text format);
* ``POST /admin/reload`` (optional body ``{"path": ...}``) -- hot reload; SIGHUP does
  the same for the path being served.

Every recommendation carries ``found``: how many items it holds, ``k`` unless the user
has fewer eligible items (seen items -- training + validation -- are not eligible while
``exclude_seen``); approximate backends widen their search rather than answer short.

Ids are the original ids of the data set, in and out. Where the artifact's ids are
integers, a query id must be an integer (``"42"`` in a query string, ``42`` or
``"42"`` in JSON); otherwise ids are strings.

Errors: every bad request is answered with a 4xx and a one-line reason,
``{"detail": "..."}``, and the server keeps serving:

==========================================================  ======
unknown user / item (without ``--fallback popular``)         404
``k`` out of ``1 .. n_items``, non-numeric id, bad field      422
malformed JSON body                                           400
batch over ``--max-batch`` users (or a body far too large)   413
reload refused (bad / missing artifact, or several workers)   409
no artifact loaded yet (``/ready`` and the query endpoints)   503
==========================================================  ======

Hot reload: the new artifact is read *next to* the old one (checksum verified by the
reader), a test query is run on it, and only then is it swapped in by one reference
assignment (``state.model = new``). A request reads ``state.model`` once, so requests
in flight finish on the model they started with; the old one is freed when the last
of them ends. A bad artifact is refused (409, with the reader's reason) and the old
model keeps serving. Replace artifact files by renaming a new file over the old path
(``export_run`` does), never by rewriting in place: the served file is memory-mapped.

Workers: ``--workers 1`` runs the app in-process. ``--workers N > 1`` hands uvicorn an
import string and the factory :func:`worker_app` (:func:`app_from_env`: settings pass through
``HQGNN_SERVE_*`` environment variables); each worker loads the artifact itself, and its counters in
``/metrics`` are its own. With several workers, ``POST /admin/reload`` would only reach
one of them, so it is refused (409); send SIGHUP to the parent process instead, which
makes uvicorn restart the workers one by one (each new worker loads the artifact at the
served path; a worker that fails to start is abandoned and the old one keeps serving).

The admin endpoint has no authentication: keep the default ``--host 127.0.0.1`` or put
the server behind a proxy that blocks ``/admin/``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .errors import CheckpointError, HQGNNError

try:  # the web stack is a declared dependency, but keep ``import hqgnn.serving`` cheap to diagnose
    from fastapi import Body, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover
    raise HQGNNError(f"serving needs fastapi and uvicorn ({exc}); pip install 'fastapi>=0.100' 'uvicorn>=0.23'") from None

log = logging.getLogger("uvicorn.error")  # uvicorn configures this logger: our lines show in its output

FALLBACKS = ("none", "popular")
ENV_ARTIFACT = "HQGNN_SERVE_ARTIFACT"
ENV_FALLBACK = "HQGNN_SERVE_FALLBACK"
ENV_MAX_BATCH = "HQGNN_SERVE_MAX_BATCH"
ENV_WORKERS = "HQGNN_SERVE_WORKERS"
ENV_BACKEND = "HQGNN_SERVE_BACKEND"
ENV_INLINE_BYTES = "HQGNN_SERVE_INLINE_BYTES"

#: Batches whose engine call scans more than this many bytes of item codes run in a
#: worker thread, smaller ones (and every single query) inline (see ServingState.call).
INLINE_BYTES = 8 << 20
#: Seconds a ``--workers N`` process may take to start (import, load the artifact) or answer a ping.
WORKER_HEALTHCHECK_S = 60
_INT64 = np.iinfo(np.int64)
_INT_RE = re.compile(r"-?[0-9]+")


def json_response(body: dict) -> "Response":
    """``body`` (JSON-ready: Python ints, floats, strings, lists) as a JSON response, built directly.

    The hot endpoints still declare their ``response_model`` (the OpenAPI page documents
    it, and the tests check bodies against it), but return this: FastAPI then skips
    validating and re-serialising through pydantic a result whose types the engine
    already fixed, which was most of a single-user request's server time."""
    return Response(json.dumps(body, separators=(",", ":"), allow_nan=False).encode(), media_type="application/json")


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = _one_line(detail)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _short(x: Any, limit: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _jsonable(x: Any) -> Any:
    """numpy scalars / arrays / paths inside ``info()`` dicts as plain JSON values."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist() if x.size <= 64 else f"<array {x.dtype} {x.shape}>"
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


# ---------------------------------------------------------------- ids
class IdMap:
    """Membership and parsing of original ids (int64 or strings) without Python-object tables.

    A sorted copy of the id column (8 bytes per id for integer ids) answers "is this id
    known" by binary search, vectorised over a batch.
    """

    def __init__(self, ids: np.ndarray, what: str):
        ids = np.asarray(ids)
        self.what = what
        self.numeric = ids.dtype.kind in "iub"
        self.sorted = np.sort(ids.astype(np.int64) if self.numeric else ids.astype(str))

    def __len__(self) -> int:
        return len(self.sorted)

    def parse(self, raw: Any) -> Union[int, str]:
        """An id as the artifact stores it; a non-numeric id where ids are integers is a 422."""
        if self.numeric:
            if isinstance(raw, bool):
                raise ApiError(422, f"{self.what} id {_short(raw)} is not an integer: this model's {self.what} ids are integers")
            if isinstance(raw, (int, np.integer)):
                return int(raw)
            if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
                return int(raw.strip())
            raise ApiError(422, f"{self.what} id {_short(raw)} is not an integer: this model's {self.what} ids are integers")
        if isinstance(raw, bool) or not isinstance(raw, (str, int, np.integer)):
            raise ApiError(422, f"{self.what} id {_short(raw)} must be a string")
        return str(raw)

    def known(self, ids: list) -> np.ndarray:
        """Boolean mask: which of the (parsed) ids are in the artifact."""
        out = np.zeros(len(ids), dtype=bool)
        if not len(self.sorted) or not ids:
            return out
        if self.numeric:
            in_range = np.array([_INT64.min <= int(u) <= _INT64.max for u in ids], dtype=bool)
            q = np.array([int(u) if ok else 0 for u, ok in zip(ids, in_range)], dtype=np.int64)
        else:
            in_range = np.ones(len(ids), dtype=bool)
            q = np.asarray(ids, dtype=str)  # own width: never truncated to the table's width
        pos = np.minimum(np.searchsorted(self.sorted, q), len(self.sorted) - 1)
        return in_range & (self.sorted[pos] == q)


# ---------------------------------------------------------------- loaded model
@dataclass
class LoadedModel:
    """One loaded, checked artifact: the unit that a reload swaps in."""

    rec: Any  # hqgnn.export.ArtifactRecommender
    path: Path
    checksum: str
    loaded_at: float
    load_seconds: float
    users: IdMap
    items: IdMap
    summary: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.rec.n_items)

    @property
    def scan_bytes(self) -> int:
        """Bytes of item codes one query scans (the cost of a search, to first order)."""
        return int(self.summary.get("item_code_bytes", 0))

    def check_k(self, k: int, what: str = "k") -> int:
        if not 1 <= k <= self.n_items:
            raise ApiError(422, f"{what}={k} is out of range: expected 1 .. {self.n_items} (the number of items)")
        return int(k)


def _stored_checksum(path: Path) -> str:
    """The sha256 stored in the artifact's preamble, unvalidated ("" if unreadable): the reader checks it."""
    from .index.artifact import MAGIC, PREAMBLE

    try:
        with open(path, "rb") as fh:
            head = fh.read(PREAMBLE.size)
    except OSError:
        return ""
    if len(head) < PREAMBLE.size or head[: len(MAGIC)] != MAGIC:
        return ""
    return PREAMBLE.unpack(head)[3].hex()


def _summary(rec, path: Path, checksum: str) -> dict:
    art = rec.artifact
    bits, dim = int(art.bits), int(art.dim)
    n_users, n_items = int(art.n_users), int(art.n_items)
    item_bytes = int(np.asarray(art.item_codes).nbytes)
    user_bytes = 0 if art.user_codes is None else int(np.asarray(art.user_codes).nbytes)
    float_bytes = (n_users + n_items) * dim * 4
    try:
        index_info = _jsonable(rec.info())
    except Exception as exc:  # info() is descriptive only: never fail a load on it
        index_info = {"error": _one_line(exc)}
    return {
        "model": str(art.model), "bits": bits, "dim": dim, "n_users": n_users, "n_items": n_items,
        "code_bytes": item_bytes + user_bytes, "item_code_bytes": item_bytes, "user_code_bytes": user_bytes,
        "float32_bytes": float_bytes,
        "compression": round(float_bytes / max(1, item_bytes + user_bytes), 2),
        "file_bytes": int(path.stat().st_size), "checksum": checksum, "path": str(path),
        "format_version": int(getattr(art, "format_version", 1)),
        "data_fingerprint": str(getattr(art, "data_fingerprint", "")),
        "index": index_info if isinstance(index_info, dict) else {"info": index_info},
    }


def load_model(path, backend: str = "exact") -> LoadedModel:
    """Read an artifact, run a test query on it, and return it ready to serve.

    Raises :class:`~hqgnn.errors.CheckpointError` (one line, naming the file) when the
    file is missing, corrupt (the reader verifies the checksum) or cannot answer a query.
    """
    from .export import ArtifactRecommender

    path = Path(path)
    t0 = time.perf_counter()
    checksum = _stored_checksum(path)
    try:
        rec = ArtifactRecommender(path, backend=backend)  # verifies magic, version, sizes and the sha256
    except HQGNNError:
        raise
    except Exception as exc:  # an unexpected reader failure is still a refused artifact, not a crash
        raise CheckpointError(f"{path}: cannot load artifact ({type(exc).__name__}: {_one_line(exc)})") from None
    if not checksum or _stored_checksum(path) != checksum:
        raise CheckpointError(f"{path}: the file was replaced while it was being loaded; try again")
    art = rec.artifact
    users, items = IdMap(art.user_ids, "user"), IdMap(art.item_ids, "item")
    if not len(items):
        raise CheckpointError(f"{path}: artifact has no items")
    try:  # a test query on each entry point before the model may serve
        k = min(10, len(items))
        if len(users):
            rec.recommend([users.parse(_py(art.user_ids[0]))], k=k, exclude_seen=True)
        if len(items) > 1:
            rec.similar(items.parse(_py(art.item_ids[0])), k=min(k, len(items) - 1))
        rec.popular(k)
    except Exception as exc:
        raise CheckpointError(f"{path}: artifact loaded but a test query failed "
                              f"({type(exc).__name__}: {_one_line(exc)})") from None
    return LoadedModel(rec=rec, path=path, checksum=checksum, loaded_at=time.time(),
                       load_seconds=time.perf_counter() - t0, users=users, items=items,
                       summary=_summary(rec, path, checksum))


def _py(x):
    return x.item() if isinstance(x, np.generic) else x


# ---------------------------------------------------------------- metrics
class Metrics:
    """Request counters and a latency histogram, rendered in the Prometheus text format.

    Written by hand rather than with ``prometheus_client``: the format is a few lines
    of text, the server needs only counters and one histogram, and it keeps the
    package's dependencies to what ``pyproject.toml`` already lists. (With
    ``--workers N`` every worker counts its own requests, as ``prometheus_client``
    would without its multiprocess mode.)
    """

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.hist: dict[str, list] = {}  # route -> [bucket counts..., +Inf count, sum]
        self.reloads = {"ok": 0, "refused": 0}
        self.fallbacks = 0
        self.started = time.time()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.hist.get(route)
            if h is None:
                h = self.hist[route] = [0] * (len(self.BUCKETS) + 1) + [0.0]
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[len(self.BUCKETS)] += 1
            h[-1] += seconds

    def count_reload(self, ok: bool) -> None:
        with self._lock:
            self.reloads["ok" if ok else "refused"] += 1

    def count_fallback(self, n: int = 1) -> None:
        with self._lock:
            self.fallbacks += n

    def render(self, model: Optional[LoadedModel]) -> str:
        with self._lock:
            requests = dict(self.requests)
            hist = {r: list(h) for r, h in self.hist.items()}
            reloads, fallbacks = dict(self.reloads), self.fallbacks
        lines = [
            "# HELP hqgnn_http_requests_total HTTP requests answered, by method, route and status code.",
            "# TYPE hqgnn_http_requests_total counter",
        ]
        for (method, route, status), n in sorted(requests.items()):
            lines.append(f'hqgnn_http_requests_total{{method="{_esc(method)}",route="{_esc(route)}",'
                         f'status="{status}"}} {n}')
        lines += ["# HELP hqgnn_http_request_duration_seconds Time from request to the end of the response, by route.",
                  "# TYPE hqgnn_http_request_duration_seconds histogram"]
        for route, h in sorted(hist.items()):
            r = _esc(route)
            for b, n in zip(self.BUCKETS, h):
                lines.append(f'hqgnn_http_request_duration_seconds_bucket{{route="{r}",le="{_fmt(b)}"}} {n}')
            total = h[len(self.BUCKETS)]
            lines.append(f'hqgnn_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {total}')
            lines.append(f'hqgnn_http_request_duration_seconds_sum{{route="{r}"}} {_fmt(h[-1])}')
            lines.append(f'hqgnn_http_request_duration_seconds_count{{route="{r}"}} {total}')
        lines += ["# HELP hqgnn_reloads_total Artifact reloads, by result (ok, refused).",
                  "# TYPE hqgnn_reloads_total counter"]
        lines += [f'hqgnn_reloads_total{{result="{k}"}} {v}' for k, v in sorted(reloads.items())]
        lines += ["# HELP hqgnn_fallback_recommendations_total Unknown users answered with the popular items.",
                  "# TYPE hqgnn_fallback_recommendations_total counter",
                  f"hqgnn_fallback_recommendations_total {fallbacks}",
                  "# HELP hqgnn_process_start_time_seconds Start time of this server process (unix seconds).",
                  "# TYPE hqgnn_process_start_time_seconds gauge",
                  f"hqgnn_process_start_time_seconds {_fmt(self.started)}"]
        if model is not None:
            s = model.summary
            lines += ["# HELP hqgnn_model_info The artifact being served (value 1).",
                      "# TYPE hqgnn_model_info gauge",
                      f'hqgnn_model_info{{model="{_esc(s["model"])}",bits="{s["bits"]}",dim="{s["dim"]}",'
                      f'checksum="{s["checksum"]}"}} 1',
                      "# HELP hqgnn_model_loaded_timestamp_seconds When the served artifact was loaded.",
                      "# TYPE hqgnn_model_loaded_timestamp_seconds gauge",
                      f"hqgnn_model_loaded_timestamp_seconds {_fmt(model.loaded_at)}",
                      "# HELP hqgnn_model_code_bytes Bytes of the served user and item codes.",
                      "# TYPE hqgnn_model_code_bytes gauge",
                      f"hqgnn_model_code_bytes {s['code_bytes']}",
                      "# HELP hqgnn_model_items Items in the served catalogue.",
                      "# TYPE hqgnn_model_items gauge",
                      f"hqgnn_model_items {s['n_items']}",
                      "# HELP hqgnn_model_users Users known to the served model.",
                      "# TYPE hqgnn_model_users gauge",
                      f"hqgnn_model_users {s['n_users']}"]
        return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else ("+Inf" if x > 0 else "-Inf")


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than ``BaseHTTPMiddleware``): counts and times every request.

    It also refuses (413) a request whose ``Content-Length`` is over ``max_body`` before its
    body is read or parsed. (A chunked body without a length is parsed, then refused by the
    ``--max-batch`` check.)
    """

    def __init__(self, app, metrics: Metrics, max_body: Optional[int] = None):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    def _too_large(self, scope) -> Optional[int]:
        if self.max_body is None:
            return None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    return None
                return n if n > self.max_body else None
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            size = self._too_large(scope)
            if size is not None:
                detail = (f"request body of {size} bytes is over the limit of {self.max_body} bytes "
                          f"(--max-batch ids); split the batch")
                await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", ""), route, status[0], time.perf_counter() - t0)


# ---------------------------------------------------------------- state
class ServingState:
    """The model being served, and its hot reload."""

    def __init__(self, path, fallback: str = "none", max_batch: int = 1024, workers: int = 1,
                 backend: str = "exact", inline_bytes: Optional[int] = None):
        if fallback not in FALLBACKS:
            raise HQGNNError(f"fallback={fallback!r}: expected one of {', '.join(FALLBACKS)}")
        if int(max_batch) < 1:
            raise HQGNNError(f"max_batch={max_batch}: expected at least 1")
        self.path = Path(path)
        self.fallback = fallback
        self.max_batch = int(max_batch)
        self.workers = int(workers)
        self.backend = backend
        self.inline_bytes = INLINE_BYTES if inline_bytes is None else int(inline_bytes)
        self.model: Optional[LoadedModel] = None
        self.metrics = Metrics()
        self.reloads = 0
        self.last_reload_error: Optional[str] = None
        self._reload_lock = threading.Lock()

    def load(self) -> LoadedModel:
        self.model = load_model(self.path, backend=self.backend)
        return self.model

    def require(self) -> LoadedModel:
        m = self.model  # one read: the request keeps this model even if a reload swaps another in
        if m is None:
            raise ApiError(503, "no artifact loaded yet; see /ready")
        return m

    async def call(self, model: LoadedModel, n_queries: int, fn, *args):
        """Run an engine call for ``n_queries`` queries on ``model``.

        One query, and small batches, run inline on the event loop; a batch that scans
        more than ``inline_bytes`` of codes goes to a worker thread, so it does not stall
        ``/health`` and the other requests for its whole duration. Inline is the fast
        path on a small, busy machine: a worker-thread round trip costs two thread
        wake-ups, and concurrent BLAS calls from several threads fight over 2 cores
        (measured with benchmarks/serve_load.py on a loaded 2-core box, Gowalla-sized
        catalogue, top-50: 1 bit at concurrency 1, p50 2.7 ms inline vs 10.1 ms in a
        thread; float32 at concurrency 8, 71 vs 19 requests/s).
        """
        if n_queries <= 1 or n_queries * model.scan_bytes <= self.inline_bytes:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    def reload(self, path=None) -> tuple[LoadedModel, Optional[LoadedModel]]:
        """Load ``path`` (default: the path being served) beside the current model, check it, swap it in.

        Raises :class:`CheckpointError` when refused; the current model is untouched then.
        Reloads are serialised; requests are never blocked by one.
        """
        with self._reload_lock:
            target = Path(path) if path is not None else self.path
            try:
                new = load_model(target, backend=self.backend)
            except HQGNNError as exc:
                self.metrics.count_reload(False)
                self.last_reload_error = _one_line(exc)
                log.warning("hqgnn: reload of %s refused: %s", target, self.last_reload_error)
                raise CheckpointError(_one_line(exc)) from None
            old = self.model
            self.model = new  # the atomic swap: one reference assignment
            self.path = target
            self.reloads += 1
            self.last_reload_error = None
            self.metrics.count_reload(True)
            log.info("hqgnn: now serving %s (sha256 %s, loaded in %.2f s)", target, new.checksum[:12],
                     new.load_seconds)
            return new, old

    def reload_in_background(self) -> threading.Thread:
        """SIGHUP: reload off the event loop, so serving never stalls on the load."""

        def run():
            try:
                self.reload()
            except HQGNNError:
                pass  # counted and logged by reload(); the old model keeps serving
            except Exception:  # pragma: no cover - a bug must not kill the server
                log.exception("hqgnn: reload failed")

        t = threading.Thread(target=run, name="hqgnn-reload", daemon=True)
        t.start()
        return t


# ---------------------------------------------------------------- API models
Id = Union[int, str]


class ErrorResponse(BaseModel):
    detail: str = Field(..., description="one-line reason")


class Recommendation(BaseModel):
    user: Id = Field(..., description="the original user id")
    items: list[Id] = Field(..., description="original item ids, best first")
    scores: list[float] = Field(..., description="model scores (popularity counts for a fallback)")
    found: int = Field(..., description="how many items the answer holds: k, or fewer when the user has fewer "
                                        "than k eligible items (seen items excluded); never silently short")
    fallback: Optional[str] = Field(None, description='"popular" when the user is unknown and the server '
                                                      "answers with the most popular items; absent otherwise")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"users": [0, 1, 2], "k": 50, "exclude_seen": True}]})

    users: list[Union[StrictInt, StrictStr]] = Field(..., min_length=1, description="original user ids")
    k: int = Field(50, description="items per user, 1 .. number of items")
    exclude_seen: bool = Field(True, description="leave out each user's seen items (training + validation)")


class BatchRecommendations(BaseModel):
    k: int
    results: list[Recommendation] = Field(..., description="one per requested user, in request order")


class Similar(BaseModel):
    item: Id
    items: list[Id] = Field(..., description="original item ids, most similar first (the item itself excluded)")
    scores: list[float]


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    ready: bool
    checksum: Optional[str] = None
    path: Optional[str] = None
    detail: Optional[str] = None


class Info(BaseModel):
    model: str
    bits: int = Field(..., description="bits per dimension; 32 for float32 embeddings")
    dim: int
    n_users: int
    n_items: int
    code_bytes: int = Field(..., description="bytes of the user + item codes as served")
    item_code_bytes: int
    user_code_bytes: int
    float32_bytes: int = Field(..., description="bytes the same embeddings take as float32")
    compression: float
    file_bytes: int
    checksum: str = Field(..., description="sha256 of the artifact (as stored in its preamble)")
    path: str
    format_version: int
    data_fingerprint: str
    loaded_at: float
    load_seconds: float
    reloads: int
    fallback: str
    max_batch: int
    workers: int
    pid: int
    index: dict = Field(default_factory=dict, description="the retrieval engine's own description")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Optional[str] = Field(None, description="artifact to load; default: the path being served")


class ReloadResult(BaseModel):
    reloaded: bool
    path: str
    checksum: str
    previous_checksum: Optional[str]
    seconds: float


_ERR = {404: {"model": ErrorResponse, "description": "unknown id"},
        422: {"model": ErrorResponse, "description": "bad parameter (k out of range, non-numeric id, ...)"},
        503: {"model": ErrorResponse, "description": "no artifact loaded"}}


# ---------------------------------------------------------------- app
def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            loc = e.get("loc") or ()
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = (e.get("ctx") or {}).get("error") or e.get("msg", "")
            return JSONResponse({"detail": _one_line(f"malformed JSON body: {reason}{where}")}, status_code=400)
    parts = []
    for e in errors[:3]:
        loc = [str(x) for x in (e.get("loc") or ())]
        kind, name = (loc[0], ".".join(loc[1:])) if loc else ("", "")
        if kind == "query":
            label = f"query parameter '{name}'"
        elif kind == "body":
            label = f"body field '{name}'" if name else "request body"
        else:
            label = ".".join(loc) or "request"
        got = ""
        if "input" in e and not isinstance(e["input"], (dict, list)) and e.get("type") != "missing":
            got = f" (got {_short(e['input'])})"
        parts.append(f"{label}: {e.get('msg', 'invalid')}{got}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return JSONResponse({"detail": _one_line("; ".join(parts) + more)}, status_code=422)


def max_body_bytes(max_batch: int) -> int:
    """The largest request body accepted: room for ``max_batch`` ids of up to 256 characters."""
    return 4096 + 256 * int(max_batch)


def create_app(artifact=None, *, state: Optional[ServingState] = None, fallback: str = "none",
               max_batch: int = 1024, workers: int = 1, backend: str = "exact") -> FastAPI:
    """The FastAPI app serving ``artifact`` (loaded now), or an existing ``state``."""
    from . import __version__

    if state is None:
        if artifact is None:
            raise HQGNNError("create_app: give an artifact path or a ServingState")
        state = ServingState(artifact, fallback=fallback, max_batch=max_batch, workers=workers, backend=backend)
    if state.model is None and artifact is not None:
        state.load()

    app = FastAPI(
        title="hqgnn recommendation server",
        version=__version__,
        description="Top-K recommendations and item neighbours from an exported HQ-GNN (quantized or float) "
                    "artifact. Ids are the data set's original ids. Errors are `{\"detail\": \"...\"}` with a 4xx.",
    )
    app.state.hqgnn = state
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, max_body=max_body_bytes(state.max_batch))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": _one_line(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # a bug: still one JSON line, logged in full
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @app.exception_handler(HQGNNError)
    async def _hqgnn_error(request: Request, exc: HQGNNError):
        # bad input that reached the engine (its ids / k checks): a client error, never a 500
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    def _popular(m: LoadedModel, k: int, user) -> dict:
        state.metrics.count_fallback()
        p = m.rec.popular(k)
        return {"user": user, "items": p["items"], "scores": p["scores"], "found": p["found"], "fallback": "popular"}

    def _unknown_user(user) -> ApiError:
        hint = "" if state.fallback == "popular" else \
            " (start the server with --fallback popular to answer unknown users with the most popular items)"
        return ApiError(404, f"unknown user {_short(user)}: not in this model's training data{hint}")

    @app.get("/recommend", response_model=Recommendation, response_model_exclude_none=True, responses=_ERR,
             summary="Top-K items for one user")
    async def recommend(user: str = Query(..., description="original user id"),
                        k: int = Query(50, description="number of items, 1 .. number of items"),
                        exclude_seen: bool = Query(True, description="leave out the user's seen items "
                                                                     "(training + validation)")):
        m = state.require()
        uid = m.users.parse(user)
        k = m.check_k(k)
        if not m.users.known([uid])[0]:
            if state.fallback == "popular":
                return _popular(m, k, uid)
            raise _unknown_user(uid)
        return json_response((await state.call(m, 1, m.rec.recommend, [uid], k, exclude_seen))[0])

    @app.post("/recommend", response_model=BatchRecommendations, response_model_exclude_none=True,
              responses={**_ERR, 400: {"model": ErrorResponse, "description": "malformed JSON"},
                         413: {"model": ErrorResponse, "description": "more users than --max-batch"}},
              summary="Top-K items for a batch of users (one engine call)")
    async def recommend_batch(req: RecommendRequest):
        m = state.require()
        if len(req.users) > state.max_batch:
            raise ApiError(413, f"batch of {len(req.users)} users is over the limit of {state.max_batch} "
                                f"(--max-batch); split it")
        k = m.check_k(req.k)
        ids = [m.users.parse(u) for u in req.users]
        known = m.users.known(ids)
        if not known.all():
            if state.fallback != "popular":
                bad = [ids[i] for i in np.flatnonzero(~known)]
                more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
                raise ApiError(404, f"unknown user{'s' if len(bad) > 1 else ''} "
                                    f"{', '.join(_short(b) for b in bad[:5])}{more}: not in this model's training data")
        known_ids = [u for u, ok in zip(ids, known) if ok]
        results = (await state.call(m, len(known_ids), m.rec.recommend, known_ids, k, req.exclude_seen)
                   if known_ids else [])
        if len(known_ids) == len(ids):
            return {"k": k, "results": results}
        pop = m.rec.popular(k)
        state.metrics.count_fallback(int((~known).sum()))
        it = iter(results)
        out = [next(it) if ok else {"user": u, "items": pop["items"], "scores": pop["scores"], "found": pop["found"],
                                    "fallback": "popular"}
               for u, ok in zip(ids, known)]
        return {"k": k, "results": out}

    @app.get("/similar", response_model=Similar, responses=_ERR, summary="Items most similar to an item")
    async def similar(item: str = Query(..., description="original item id"),
                      k: int = Query(20, description="number of neighbours, 1 .. number of items - 1")):
        m = state.require()
        iid = m.items.parse(item)
        if m.n_items < 2:
            raise ApiError(422, "the catalogue has a single item: it has no neighbours")
        if not 1 <= k < m.n_items:
            raise ApiError(422, f"k={k} is out of range: expected 1 .. {m.n_items - 1} (the other items)")
        if not m.items.known([iid])[0]:
            raise ApiError(404, f"unknown item {_short(iid)}: not in this model's catalogue")
        return json_response(await state.call(m, 1, m.rec.similar, iid, k))

    @app.get("/health", response_model=Health, summary="Liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", response_model=Ready, responses={503: {"model": Ready, "description": "not ready"}},
             summary="Readiness: an artifact is loaded and checked")
    async def ready():
        m = state.model
        if m is None:
            return JSONResponse({"ready": False, "detail": "no artifact loaded yet"}, status_code=503)
        return {"ready": True, "checksum": m.checksum, "path": str(m.path)}

    @app.get("/info", response_model=Info, responses={503: _ERR[503]}, summary="The model being served")
    async def info():
        m = state.require()
        return {**m.summary, "loaded_at": m.loaded_at, "load_seconds": round(m.load_seconds, 4),
                "reloads": state.reloads, "fallback": state.fallback, "max_batch": state.max_batch,
                "workers": state.workers, "pid": os.getpid()}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)")
    async def metrics():
        return PlainTextResponse(state.metrics.render(state.model),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/admin/reload", response_model=ReloadResult,
              responses={409: {"model": ErrorResponse, "description": "reload refused; the old model keeps serving"},
                         400: {"model": ErrorResponse, "description": "malformed JSON"}},
              summary="Load an artifact beside the current one, check it, and swap it in")
    def admin_reload(req: Optional[ReloadRequest] = Body(None)):
        if state.workers > 1:
            raise ApiError(409, f"reload refused: this server runs {state.workers} worker processes and a request "
                                f"reaches only one; send SIGHUP to the parent process to reload all of them")
        t0 = time.perf_counter()
        try:
            new, old = state.reload(req.path if req is not None else None)
        except HQGNNError as exc:
            current = state.model
            keep = f"; still serving {current.path} (sha256 {current.checksum[:12]})" if current else ""
            raise ApiError(409, f"reload refused: {exc}{keep}") from None
        return {"reloaded": True, "path": str(new.path), "checksum": new.checksum,
                "previous_checksum": old.checksum if old is not None else None,
                "seconds": round(time.perf_counter() - t0, 4)}

    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` / ``--workers N``: settings from ``HQGNN_SERVE_*``."""
    path = os.environ.get(ENV_ARTIFACT)
    if not path:
        raise HQGNNError(f"app_from_env: set {ENV_ARTIFACT} to the artifact path")
    try:
        max_batch = int(os.environ.get(ENV_MAX_BATCH, "1024"))
        workers = int(os.environ.get(ENV_WORKERS, "1"))
        inline = int(os.environ[ENV_INLINE_BYTES]) if os.environ.get(ENV_INLINE_BYTES) else None
    except ValueError as exc:
        raise HQGNNError(f"app_from_env: {exc}") from None
    state = ServingState(path, fallback=os.environ.get(ENV_FALLBACK, "none"), max_batch=max_batch,
                         workers=workers, backend=os.environ.get(ENV_BACKEND, "exact"), inline_bytes=inline)
    return create_app(path, state=state)


def worker_app() -> FastAPI:
    """The factory ``serve(workers > 1)`` gives uvicorn: :func:`app_from_env`, but a bad artifact ends
    the worker with one log line (uvicorn's startup-failure code) instead of a traceback; uvicorn then
    keeps the old worker (SIGHUP restart) or stops (first start)."""
    try:
        return app_from_env()
    except HQGNNError as exc:
        log.error("hqgnn: worker %d cannot serve: %s", os.getpid(), _one_line(exc))
        raise SystemExit(3) from None  # uvicorn.config.STARTUP_FAILURE


def install_sighup(state: ServingState) -> bool:
    """SIGHUP reloads the served path in a background thread (main thread only; not on Windows)."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGHUP, lambda signum, frame: state.reload_in_background())
    return True


def _check_port(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise HQGNNError(f"--host {host}: cannot resolve ({exc})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise HQGNNError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server running?") from None


def serve(artifact, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, fallback: str = "none",
          max_batch: int = 1024, backend: str = "exact", log_level: str = "info", access_log: bool = False) -> None:
    """Serve ``artifact`` until interrupted (``hqgnn serve``); bad settings or artifact raise HQGNNError first.

    The request log is off by default (``access_log``): ``/metrics`` counts every
    request, and a log line per request costs measurable latency on a small machine.
    """
    import uvicorn

    if fallback not in FALLBACKS:
        raise HQGNNError(f"--fallback {fallback}: expected one of {', '.join(FALLBACKS)}")
    if int(workers) < 1:
        raise HQGNNError(f"--workers {workers}: expected at least 1")
    if int(max_batch) < 1:
        raise HQGNNError(f"--max-batch {max_batch}: expected at least 1")
    if not 0 <= int(port) <= 65535:
        raise HQGNNError(f"--port {port}: expected 0 .. 65535")
    path = Path(artifact).resolve()
    inline = os.environ.get(ENV_INLINE_BYTES)  # a tuning knob, not a CLI flag
    if inline and not inline.isdigit():
        raise HQGNNError(f"{ENV_INLINE_BYTES}={inline!r}: expected a number of bytes")
    state = ServingState(path, fallback=fallback, max_batch=max_batch, workers=workers, backend=backend,
                         inline_bytes=int(inline) if inline else None)
    state.load()  # fail fast on a bad artifact, before binding the port
    _check_port(host, int(port))
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("hqgnn: serving on %s: /admin/reload has no authentication", host)
    if workers == 1:
        app = create_app(state=state)
        install_sighup(state)
        uvicorn.run(app, host=host, port=int(port), log_level=log_level, access_log=access_log)
        return
    state.model = None  # each worker loads its own copy
    os.environ.update({ENV_ARTIFACT: str(path), ENV_FALLBACK: fallback, ENV_MAX_BATCH: str(int(max_batch)),
                       ENV_WORKERS: str(int(workers)), ENV_BACKEND: backend})
    extra = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:  # uvicorn >= 0.36
        # a worker answers uvicorn's health pings only once it has imported hqgnn (and torch):
        # on a busy small machine that takes longer than uvicorn's default 5 s, and a worker
        # that misses it is killed and restarted, or a SIGHUP reload is abandoned
        extra["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
    uvicorn.run("hqgnn.serving:worker_app", factory=True, host=host, port=int(port), workers=int(workers),
                log_level=log_level, access_log=access_log, **extra)
