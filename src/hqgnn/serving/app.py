"""The FastAPI app: the endpoints, their checks and their error answers (see :mod:`hqgnn.serving`)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import numpy as np
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HQGNNError
from ..index.errors import RetrievalError
from ..index.ids import IdMap, check_k, short_repr
from .errors import ApiError, one_line, validation_response
from .metrics import CONTENT_TYPE, MetricsMiddleware
from .schemas import (ERROR_RESPONSES, BatchRecommendations, ErrorResponse, Health, Info, Ready, Recommendation,
                      RecommendRequest, ReloadRequest, ReloadResult, Similar)
from .state import LoadedModel, ServingState

_ERR = ERROR_RESPONSES


def json_response(body: Any) -> Response:
    """``body`` (JSON-ready: Python ints, floats, strings, lists) as a JSON response, built directly.

    The hot endpoints still declare their ``response_model`` (the OpenAPI page documents
    it, and the tests check bodies against it), but return this: FastAPI then skips
    validating and re-serialising through pydantic a result whose types the engine
    already fixed, which was most of a single-user request's server time."""
    return Response(json.dumps(body, separators=(",", ":"), allow_nan=False).encode(), media_type="application/json")


def max_body_bytes(max_batch: int) -> int:
    """The largest request body accepted (bytes): room for ``max_batch`` ids of up to 256 characters."""
    return 4096 + 256 * int(max_batch)


def _parse(ids: IdMap, raw: Any):
    """One id from a request as the model stores it, or a 422."""
    try:
        return ids.parse(raw)
    except RetrievalError as exc:
        raise ApiError(422, str(exc)) from None


def _k(k: int, n: int, of: str) -> int:
    """``k`` in ``1 .. n``, or a 422 saying what ``n`` counts."""
    try:
        return check_k(k, n, of=of)
    except RetrievalError as exc:
        raise ApiError(422, str(exc)) from None


def create_app(artifact=None, *, state: Optional[ServingState] = None, fallback: str = "none",
               max_batch: int = 1024, workers: int = 1, backend: str = "exact",
               backend_params: Optional[dict] = None) -> FastAPI:
    """The FastAPI app serving ``artifact`` (loaded now), or an existing ``state``.

    Raises :class:`~hqgnn.errors.HQGNNError` without either, and the loader's
    :class:`~hqgnn.errors.CheckpointError` for a bad artifact.
    """
    from .. import __version__

    if state is None:
        if artifact is None:
            raise HQGNNError("create_app: give an artifact path or a ServingState")
        state = ServingState(artifact, fallback=fallback, max_batch=max_batch, workers=workers, backend=backend,
                             backend_params=backend_params)
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
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": one_line(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # a bug: still one JSON line, logged in full
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @app.exception_handler(HQGNNError)
    async def _hqgnn_error(request: Request, exc: HQGNNError):
        # bad input that reached the engine (its ids / k checks): a client error, never a 500
        return JSONResponse({"detail": one_line(exc)}, status_code=422)

    def _popular(m: LoadedModel, k: int, users: list) -> list[dict]:
        state.metrics.count_fallback(len(users))
        return m.rec.popular(k, users=users).to_records()

    def _unknown_user(user) -> ApiError:
        hint = "" if state.fallback == "popular" else \
            " (start the server with --fallback popular to answer unknown users with the most popular items)"
        return ApiError(404, f"unknown user {short_repr(user)}: not in this model's training data{hint}")

    @app.get("/recommend", response_model=Recommendation, response_model_exclude_none=True, responses=_ERR,
             summary="Top-K items for one user")
    async def recommend(user: str = Query(..., description="original user id"),
                        k: int = Query(50, description="number of items, 1 .. number of items"),
                        exclude_seen: bool = Query(True, description="leave out the user's seen items "
                                                                     "(training + validation)")):
        m = state.require()
        uid = _parse(m.users, user)
        k = _k(k, m.n_items, "the number of items")
        if not m.users.known([uid])[0]:
            if state.fallback == "popular":
                return json_response(_popular(m, k, [uid])[0])
            raise _unknown_user(uid)
        recs = await state.call(m, 1, m.rec.recommend, [uid], k, exclude_seen)
        return json_response(recs.to_records()[0])

    @app.post("/recommend", response_model=BatchRecommendations, response_model_exclude_none=True,
              responses={**_ERR, 400: {"model": ErrorResponse, "description": "malformed JSON"},
                         413: {"model": ErrorResponse, "description": "more users than --max-batch"}},
              summary="Top-K items for a batch of users (one engine call)")
    async def recommend_batch(req: RecommendRequest):
        m = state.require()
        if len(req.users) > state.max_batch:
            raise ApiError(413, f"batch of {len(req.users)} users is over the limit of {state.max_batch} "
                                f"(--max-batch); split it")
        k = _k(req.k, m.n_items, "the number of items")
        ids = [_parse(m.users, u) for u in req.users]
        known = m.users.known(ids)
        if not known.all() and state.fallback != "popular":
            bad = [ids[i] for i in np.flatnonzero(~known)]
            more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ApiError(404, f"unknown user{'s' if len(bad) > 1 else ''} "
                                f"{', '.join(short_repr(b) for b in bad[:5])}{more}: not in this model's training data")
        known_ids = [u for u, ok in zip(ids, known) if ok]
        results = ((await state.call(m, len(known_ids), m.rec.recommend, known_ids, k, req.exclude_seen)).to_records()
                   if known_ids else [])
        if len(known_ids) == len(ids):
            return {"k": k, "results": results}
        cold = iter(_popular(m, k, [u for u, ok in zip(ids, known) if not ok]))
        warm = iter(results)
        return {"k": k, "results": [next(warm) if ok else next(cold) for ok in known]}

    @app.get("/similar", response_model=Similar, responses=_ERR, summary="Items most similar to an item")
    async def similar(item: str = Query(..., description="original item id"),
                      k: int = Query(20, description="number of neighbours, 1 .. number of items - 1")):
        m = state.require()
        iid = _parse(m.items, item)
        if m.n_items < 2:
            raise ApiError(422, "the catalogue has a single item: it has no neighbours")
        k = _k(k, m.n_items - 1, "the other items")
        if not m.items.known([iid])[0]:
            raise ApiError(404, f"unknown item {short_repr(iid)}: not in this model's catalogue")
        recs = await state.call(m, 1, m.rec.similar, iid, k)
        return json_response(recs.to_records()[0])

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
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

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
