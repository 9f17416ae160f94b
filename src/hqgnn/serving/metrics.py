"""``/metrics``: request counters, a latency histogram and the served model, with ``prometheus_client``.

Metrics (Prometheus text format 0.0.4):

* ``hqgnn_http_requests_total{method, route, status}`` -- counter of answered requests;
* ``hqgnn_http_request_duration_seconds{route}`` -- histogram, request to end of response;
* ``hqgnn_reloads_total{result}`` -- artifact reloads, ``ok`` / ``refused``;
* ``hqgnn_fallback_recommendations_total`` -- unknown users answered with the popular items;
* ``hqgnn_process_start_time_seconds``, ``hqgnn_model_info{model, bits, dim, checksum}`` (1),
  ``hqgnn_model_loaded_timestamp_seconds``, ``hqgnn_model_code_bytes``, ``hqgnn_model_items``,
  ``hqgnn_model_users`` -- gauges of the process answering the scrape.

With ``--workers N`` the launcher sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory
before the workers start: ``prometheus_client``'s multiprocess mode then keeps each
worker's counters and histograms in files there, and every scrape -- whichever worker
answers it -- sums all workers' files (:class:`~prometheus_client.multiprocess.MultiProcessCollector`),
so the totals are the server's, not one worker's; a worker restarted by SIGHUP leaves its
counts behind for the sums. The gauges are read from the answering worker at scrape time
(all workers serve the same artifact).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Optional

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

#: The ``Content-Type`` of ``/metrics``: what ``generate_latest`` writes (the metric names are legacy-valid).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    """Whether this process counts in ``prometheus_client``'s multiprocess files: ``PROMETHEUS_MULTIPROC_DIR``
    was set before ``prometheus_client`` was imported (as in the workers of ``--workers N``)."""
    return bool(os.environ.get(MULTIPROC_ENV)) and _values.ValueClass is not _values.MutexValue


class _ProcessCollector:
    """The gauges of the answering process: its start time and the model it serves (read at scrape time)."""

    def __init__(self, started: float, model: Callable[[], Optional[object]]):
        self.started, self.model = started, model

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("hqgnn_process_start_time_seconds", "Start time of this server process (unix seconds).")
        g.add_metric([], self.started)
        yield g
        m = self.model()
        if m is None:
            return
        s = m.summary
        info = GaugeMetricFamily("hqgnn_model_info", "The artifact being served (value 1).",
                                 labels=["model", "bits", "dim", "checksum"])
        info.add_metric([str(s["model"]), str(s["bits"]), str(s["dim"]), str(s["checksum"])], 1)
        yield info
        for name, doc, value in (
                ("hqgnn_model_loaded_timestamp_seconds", "When the served artifact was loaded.", m.loaded_at),
                ("hqgnn_model_code_bytes", "Bytes of the served user and item codes.", s["code_bytes"]),
                ("hqgnn_model_items", "Items in the served catalogue.", s["n_items"]),
                ("hqgnn_model_users", "Users known to the served model.", s["n_users"])):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g


class Metrics:
    """The server's metrics: counters and a histogram (``prometheus_client``), rendered by :meth:`render`.

    ``model``: a callable returning the served :class:`~hqgnn.serving.state.LoadedModel` (or
    None), read at each scrape. Each instance has its own registry (several apps may live in
    one process, as in the tests); in multiprocess mode (:func:`multiprocess_mode`) the
    counts go to the shared files instead and a scrape sums every worker's.
    """

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self, model: Callable[[], Optional[object]] = lambda: None):
        self.started = time.time()
        self.multiprocess = multiprocess_mode()
        # multiprocess: the values live in PROMETHEUS_MULTIPROC_DIR, collected per scrape, registered nowhere
        reg = None if self.multiprocess else CollectorRegistry()
        self.registry = reg
        self.requests = Counter("hqgnn_http_requests_total", "HTTP requests answered, by method, route and status code.",
                                ["method", "route", "status"], registry=reg)
        self.latency = Histogram("hqgnn_http_request_duration_seconds",
                                 "Time from request to the end of the response, by route.", ["route"],
                                 buckets=self.BUCKETS, registry=reg)
        self.reloads = Counter("hqgnn_reloads_total", "Artifact reloads, by result (ok, refused).", ["result"],
                               registry=reg)
        for result in ("ok", "refused"):
            self.reloads.labels(result=result)  # both shown from the start, at 0
        self.fallbacks = Counter("hqgnn_fallback_recommendations_total",
                                 "Unknown users answered with the popular items.", registry=reg)
        self._process = _ProcessCollector(self.started, model)
        if reg is not None:
            reg.register(self._process)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration (seconds)."""
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def count_reload(self, ok: bool) -> None:
        self.reloads.labels(result="ok" if ok else "refused").inc()

    def count_fallback(self, n: int = 1) -> None:
        self.fallbacks.inc(n)

    def render(self) -> bytes:
        """The Prometheus text (format 0.0.4) of every metric: this process's, or in multiprocess
        mode the sums over every worker's files plus this process's gauges."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        reg = CollectorRegistry()
        MultiProcessCollector(reg)
        reg.register(self._process)
        return generate_latest(reg)


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than ``BaseHTTPMiddleware``): counts and times every request.

    It also refuses (413) a request whose ``Content-Length`` is over ``max_body`` before its
    body is read or parsed. (A chunked body without a length is parsed, then refused by the
    ``--max-batch`` check.) Requests are labelled by route template (``/recommend``), or
    ``unmatched``.
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
