"""The served model: loading and checking an artifact, and swapping a new one in (hot reload).

Hot reload: the new artifact is read *next to* the old one (checksum verified by the
reader), a test query is run on it, and only then is it swapped in by one reference
assignment (``state.model = new``). A request reads ``state.model`` once, so requests in
flight finish on the model they started with; the old one is freed when the last of
them ends. A bad artifact is refused and the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from starlette.concurrency import run_in_threadpool

from ..errors import CheckpointError, HQGNNError
from ..index.recommender import ArtifactRecommender
from ..index.artifact import MAGIC, PREAMBLE
from ..index.ids import IdMap, py_value
from .errors import ApiError, one_line
from .metrics import Metrics

log = logging.getLogger("uvicorn.error")  # uvicorn configures this logger: our lines show in its output

FALLBACKS = ("none", "popular")
#: Batches whose engine call scans more than this many bytes of item codes run in a
#: worker thread, smaller ones (and every single query) inline (see ServingState.call).
INLINE_BYTES = 8 << 20


def jsonable(x: Any) -> Any:
    """numpy scalars / arrays / paths inside ``info()`` dicts as plain JSON values."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist() if x.size <= 64 else f"<array {x.dtype} {x.shape}>"
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


@dataclass
class LoadedModel:
    """One loaded, checked artifact: the unit that a reload swaps in.

    ``rec``: its :class:`~hqgnn.index.recommender.ArtifactRecommender`; ``checksum``: the sha256 in its
    preamble (hex); ``loaded_at``: unix seconds; ``load_seconds``: the load's duration;
    ``summary``: what ``/info`` reports (:func:`summary`).
    """

    rec: ArtifactRecommender
    path: Path
    checksum: str
    loaded_at: float
    load_seconds: float
    summary: dict = field(default_factory=dict)

    @property
    def users(self) -> IdMap:
        return self.rec.user_map

    @property
    def items(self) -> IdMap:
        return self.rec.item_map

    @property
    def n_items(self) -> int:
        return int(self.rec.n_items)

    @property
    def scan_bytes(self) -> int:
        """Bytes of item codes one query scans (the cost of a search, to first order)."""
        return int(self.summary.get("item_code_bytes", 0))


def stored_checksum(path: Path) -> str:
    """The sha256 stored in the artifact's preamble, unvalidated (hex; "" if unreadable): the reader checks it."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(PREAMBLE.size)
    except OSError:
        return ""
    if len(head) < PREAMBLE.size or head[: len(MAGIC)] != MAGIC:
        return ""
    return PREAMBLE.unpack(head)[3].hex()


def summary(rec: ArtifactRecommender, path: Path, checksum: str) -> dict:
    """What ``/info`` says of an artifact: model, bits, dim, counts, bytes (as served and as float32),
    compression, file size, checksum, format version, data fingerprint, the index's own description."""
    art = rec.artifact
    bits, dim = int(art.bits), int(art.dim)
    n_users, n_items = int(art.n_users), int(art.n_items)
    items, users = art.stored("item"), art.stored("user")
    item_bytes = int(np.asarray(items).nbytes)
    user_bytes = 0 if users is None else int(np.asarray(users).nbytes)
    float_bytes = (n_users + n_items) * dim * 4
    try:
        index_info = jsonable(rec.info())
    except Exception as exc:  # info() is descriptive only: never fail a load on it
        index_info = {"error": one_line(exc)}
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


def load_model(path, backend: str = "exact", backend_params: Optional[dict] = None) -> LoadedModel:
    """Read an artifact, run a test query on it, and return it ready to serve.

    Raises :class:`~hqgnn.errors.CheckpointError` (one line, naming the file) when the
    file is missing, corrupt (the reader verifies the checksum), replaced while loading,
    empty, or cannot answer a query.
    """
    path = Path(path)
    t0 = time.perf_counter()
    checksum = stored_checksum(path)
    try:
        # verifies magic, version, sizes and the sha256
        rec = ArtifactRecommender(path, backend=backend, backend_params=backend_params)
    except HQGNNError:
        raise
    except Exception as exc:  # an unexpected reader failure is still a refused artifact, not a crash
        raise CheckpointError(f"{path}: cannot load artifact ({type(exc).__name__}: {one_line(exc)})") from None
    if not checksum or stored_checksum(path) != checksum:
        raise CheckpointError(f"{path}: the file was replaced while it was being loaded; try again")
    art = rec.artifact
    if not art.n_items:
        raise CheckpointError(f"{path}: artifact has no items")
    try:  # a test query on each entry point before the model may serve
        k = min(10, art.n_items)
        if art.n_users:
            rec.recommend([py_value(art.user_ids[0])], k=k, exclude_seen=True)
        if art.n_items > 1:
            rec.similar(py_value(art.item_ids[0]), k=min(k, art.n_items - 1))
        rec.popular(k)
    except Exception as exc:
        raise CheckpointError(f"{path}: artifact loaded but a test query failed "
                              f"({type(exc).__name__}: {one_line(exc)})") from None
    return LoadedModel(rec=rec, path=path, checksum=checksum, loaded_at=time.time(),
                       load_seconds=time.perf_counter() - t0, summary=summary(rec, path, checksum))


class ServingState:
    """The model being served, its settings, metrics and hot reload.

    ``path``: the artifact; ``fallback``: ``"none"`` or ``"popular"`` (unknown users get the
    most popular items); ``max_batch``: users per ``POST /recommend``; ``workers``: server
    processes (HTTP reload is refused when > 1); ``backend``: the index backend and
    ``backend_params`` its settings (``{"candidates": C}`` for ``"cascade"``);
    ``inline_bytes``: see :meth:`call`. Raises :class:`~hqgnn.errors.HQGNNError` for a bad
    ``fallback`` or ``max_batch``.
    """

    def __init__(self, path, fallback: str = "none", max_batch: int = 1024, workers: int = 1,
                 backend: str = "exact", inline_bytes: Optional[int] = None, backend_params: Optional[dict] = None):
        if fallback not in FALLBACKS:
            raise HQGNNError(f"fallback={fallback!r}: expected one of {', '.join(FALLBACKS)}")
        if int(max_batch) < 1:
            raise HQGNNError(f"max_batch={max_batch}: expected at least 1")
        self.path = Path(path)
        self.fallback = fallback
        self.max_batch = int(max_batch)
        self.workers = int(workers)
        self.backend = backend
        self.backend_params = dict(backend_params or {})
        self.inline_bytes = INLINE_BYTES if inline_bytes is None else int(inline_bytes)
        self.model: Optional[LoadedModel] = None
        self.metrics = Metrics(model=lambda: self.model)
        self.reloads = 0
        self.last_reload_error: Optional[str] = None
        self._reload_lock = threading.Lock()

    def load(self) -> LoadedModel:
        """Load :attr:`path` now (:func:`load_model`; raises its errors)."""
        self.model = load_model(self.path, backend=self.backend, backend_params=self.backend_params)
        return self.model

    def require(self) -> LoadedModel:
        """The model a request works with (read once), or :class:`ApiError` 503 when none is loaded."""
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

        Returns ``(new, old)``. Raises :class:`CheckpointError` when refused; the current
        model is untouched then. Reloads are serialised; requests are never blocked by one.
        """
        with self._reload_lock:
            target = Path(path) if path is not None else self.path
            try:
                new = load_model(target, backend=self.backend, backend_params=self.backend_params)
            except HQGNNError as exc:
                self.metrics.count_reload(False)
                self.last_reload_error = one_line(exc)
                log.warning("hqgnn: reload of %s refused: %s", target, self.last_reload_error)
                raise CheckpointError(one_line(exc)) from None
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
