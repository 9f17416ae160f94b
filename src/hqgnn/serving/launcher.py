"""``hqgnn serve``: checks, then uvicorn -- in-process (``--workers 1``) or as N worker processes.

``--workers N > 1`` hands uvicorn an import string and the factory :func:`worker_app`
(:func:`app_from_env`: settings pass through ``HQGNN_SERVE_*`` environment variables);
each worker loads the artifact itself. Before the workers start, the launcher creates a
temporary directory and sets ``PROMETHEUS_MULTIPROC_DIR`` to it, so ``/metrics`` sums the
counts of every worker (:mod:`hqgnn.serving.metrics`); the directory is removed when the
server stops. With several workers ``POST /admin/reload`` would only reach one of them, so
it is refused (409); SIGHUP to the parent process makes uvicorn restart the workers one
by one (each new worker loads the artifact at the served path; a worker that fails to
start is abandoned and the old one keeps serving).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

from fastapi import FastAPI

from ..errors import HQGNNError
from .app import create_app
from .errors import one_line
from .metrics import MULTIPROC_ENV
from .state import FALLBACKS, ServingState, log

ENV_ARTIFACT = "HQGNN_SERVE_ARTIFACT"
ENV_FALLBACK = "HQGNN_SERVE_FALLBACK"
ENV_MAX_BATCH = "HQGNN_SERVE_MAX_BATCH"
ENV_WORKERS = "HQGNN_SERVE_WORKERS"
ENV_BACKEND = "HQGNN_SERVE_BACKEND"
ENV_BACKEND_PARAMS = "HQGNN_SERVE_BACKEND_PARAMS"  # a JSON object, e.g. {"candidates": 500}
ENV_INLINE_BYTES = "HQGNN_SERVE_INLINE_BYTES"

#: Seconds a ``--workers N`` process may take to start (import, load the artifact) or answer a ping.
WORKER_HEALTHCHECK_S = 60


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` / ``--workers N``: settings from ``HQGNN_SERVE_*``.

    Raises :class:`~hqgnn.errors.HQGNNError` when ``HQGNN_SERVE_ARTIFACT`` is unset or a
    number is malformed, and the loader's errors for a bad artifact."""
    path = os.environ.get(ENV_ARTIFACT)
    if not path:
        raise HQGNNError(f"app_from_env: set {ENV_ARTIFACT} to the artifact path")
    try:
        max_batch = int(os.environ.get(ENV_MAX_BATCH, "1024"))
        workers = int(os.environ.get(ENV_WORKERS, "1"))
        inline = int(os.environ[ENV_INLINE_BYTES]) if os.environ.get(ENV_INLINE_BYTES) else None
        params = json.loads(os.environ.get(ENV_BACKEND_PARAMS) or "{}")
    except ValueError as exc:
        raise HQGNNError(f"app_from_env: {exc}") from None
    if not isinstance(params, dict):
        raise HQGNNError(f"app_from_env: {ENV_BACKEND_PARAMS} must hold a JSON object, got {params!r}")
    state = ServingState(path, fallback=os.environ.get(ENV_FALLBACK, "none"), max_batch=max_batch,
                         workers=workers, backend=os.environ.get(ENV_BACKEND, "exact"), inline_bytes=inline,
                         backend_params=params)
    return create_app(path, state=state)


def worker_app() -> FastAPI:
    """The factory ``serve(workers > 1)`` gives uvicorn: :func:`app_from_env`, but a bad artifact ends
    the worker with one log line (uvicorn's startup-failure code) instead of a traceback; uvicorn then
    keeps the old worker (SIGHUP restart) or stops (first start)."""
    try:
        return app_from_env()
    except HQGNNError as exc:
        log.error("hqgnn: worker %d cannot serve: %s", os.getpid(), one_line(exc))
        raise SystemExit(3) from None  # uvicorn.config.STARTUP_FAILURE


def install_sighup(state: ServingState) -> bool:
    """SIGHUP reloads the served path in a background thread (main thread only; not on Windows).
    Returns whether the handler was installed."""
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


@contextlib.contextmanager
def multiprocess_metrics_dir() -> Iterator[str]:
    """A fresh temporary directory as ``PROMETHEUS_MULTIPROC_DIR`` for the worker processes started
    inside the block (they inherit the environment); removed, and the variable restored, after."""
    previous = os.environ.get(MULTIPROC_ENV)
    path = tempfile.mkdtemp(prefix="hqgnn-prometheus-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def serve(artifact, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, fallback: str = "none",
          max_batch: int = 1024, backend: str = "exact", log_level: str = "info", access_log: bool = False,
          backend_params: Optional[dict] = None) -> None:
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
                         inline_bytes=int(inline) if inline else None, backend_params=backend_params)
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
                       ENV_WORKERS: str(int(workers)), ENV_BACKEND: backend,
                       ENV_BACKEND_PARAMS: json.dumps(state.backend_params)})
    extra = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:  # uvicorn >= 0.36
        # a worker answers uvicorn's health pings only once it has imported hqgnn: on a busy
        # small machine that takes longer than uvicorn's default 5 s, and a worker that misses
        # it is killed and restarted, or a SIGHUP reload is abandoned
        extra["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
    with multiprocess_metrics_dir():
        uvicorn.run("hqgnn.serving.launcher:worker_app", factory=True, host=host, port=int(port),
                    workers=int(workers), log_level=log_level, access_log=access_log, **extra)
