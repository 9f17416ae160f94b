"""HTTP serving of an exported artifact (quantized or float): ``hqgnn serve ARTIFACT``.

FastAPI + uvicorn. Endpoints (JSON; the generated OpenAPI page at ``/docs`` documents
every request and response model):

* ``GET /recommend?user=ID&k=50&exclude_seen=true`` -- top-K items of one user;
* ``POST /recommend`` ``{"users": [...], "k": 50, "exclude_seen": true}`` -- a batch,
  answered with one engine call (at most ``--max-batch`` users);
* ``GET /similar?item=ID&k=20`` -- item-to-item neighbours;
* ``GET /health`` (liveness), ``GET /ready`` (an artifact is loaded), ``GET /info``
  (model, bits, dimension, counts, memory of the codes, artifact checksum),
  ``GET /metrics`` (Prometheus text format, :mod:`~hqgnn.serving.metrics`);
* ``POST /admin/reload`` (optional body ``{"path": ...}``) -- hot reload; SIGHUP does
  the same for the path being served.

Every answer carries ``found``: how many items it holds, ``k`` unless the user
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

Hot reload (:mod:`~hqgnn.serving.state`): the new artifact is read *next to* the old one,
checked with a test query, and swapped in by one reference assignment; requests in flight
finish on the model they started with. A bad artifact is refused (409, with the reader's
reason) and the old model keeps serving. Replace artifact files by renaming a new file over
the old path (``export_run`` does), never by rewriting in place: the served file is
memory-mapped.

Workers (:mod:`~hqgnn.serving.launcher`): ``--workers 1`` runs the app in-process;
``--workers N > 1`` starts N processes, each loading the artifact, with ``/metrics`` summed
over all of them (prometheus_client's multiprocess mode). HTTP reload is then refused (409):
send SIGHUP to the parent process instead.

The admin endpoint has no authentication: keep the default ``--host 127.0.0.1`` or put
the server behind a proxy that blocks ``/admin/``.

Modules: :mod:`~hqgnn.serving.schemas` (request / response models),
:mod:`~hqgnn.serving.errors` (one-line 4xx answers), :mod:`~hqgnn.serving.state` (load,
check, reload), :mod:`~hqgnn.serving.metrics`, :mod:`~hqgnn.serving.app` (the endpoints),
:mod:`~hqgnn.serving.launcher` (``hqgnn serve``). Ids are mapped and ``k`` is checked by
:mod:`hqgnn.index.ids`, as everywhere else.
"""

from __future__ import annotations

from ..errors import CheckpointError, HQGNNError

try:  # the web stack is a declared dependency, but keep ``import hqgnn.serving`` cheap to diagnose
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover
    raise HQGNNError(f"serving needs fastapi, uvicorn and prometheus_client ({exc}); "
                     "pip install 'fastapi>=0.100' 'uvicorn>=0.23' prometheus_client") from None

from .app import create_app, json_response, max_body_bytes  # noqa: E402
from .errors import ApiError  # noqa: E402
from .launcher import (ENV_ARTIFACT, ENV_BACKEND, ENV_FALLBACK, ENV_INLINE_BYTES, ENV_MAX_BATCH,  # noqa: E402
                       ENV_WORKERS, WORKER_HEALTHCHECK_S, app_from_env, install_sighup, serve, worker_app)
from .metrics import Metrics, MetricsMiddleware  # noqa: E402
from .schemas import (BatchRecommendations, ErrorResponse, Health, Info, Ready, Recommendation,  # noqa: E402
                      RecommendRequest, ReloadRequest, ReloadResult, Similar)
from .state import FALLBACKS, INLINE_BYTES, LoadedModel, ServingState, load_model  # noqa: E402

__all__ = [
    "ApiError", "BatchRecommendations", "CheckpointError", "ENV_ARTIFACT", "ENV_BACKEND", "ENV_FALLBACK",
    "ENV_INLINE_BYTES", "ENV_MAX_BATCH", "ENV_WORKERS", "ErrorResponse", "FALLBACKS", "HQGNNError", "Health",
    "INLINE_BYTES", "Info", "LoadedModel", "Metrics", "MetricsMiddleware", "Ready", "Recommendation",
    "RecommendRequest", "ReloadRequest", "ReloadResult", "ServingState", "Similar", "WORKER_HEALTHCHECK_S",
    "app_from_env", "create_app", "install_sighup", "json_response", "load_model", "max_body_bytes", "serve",
    "worker_app",
]
