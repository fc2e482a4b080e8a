"""``/metrics``: the node's state in Prometheus's text exposition format, written by ``prometheus_client``.

The node gathers a list of :class:`Family` (``Node.metrics``), plain data its parts fill in as they are asked;
:func:`render` turns them into ``prometheus_client`` metric families in a registry of their own, beside the
process collector (CPU seconds, resident memory, open files), the platform collector (Python) and
``hyperion_build_info``, and lets the library write the text. Names follow Prometheus's conventions: a
``hyperion_`` prefix, base units in the name (``_seconds``, ``_bytes``), ``_total`` on counters; the tests
run ``promtool check metrics`` on a running node's answer.

:class:`ApiMetrics` is the API's own RED: requests by route template, method and status class, and their
duration, measured by an ASGI wrapper around the routes.

It needs the API token like the rest of the API (peer counts, telemetry and credits are the operator's
business), which Prometheus sends from its scrape config (``authorization: {credentials_file: ...}``);
``api.metrics_public = true`` serves it without one.
"""

from __future__ import annotations

import math
import platform
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest as _generate
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hyperion_node import __version__
from hyperion_node.tasks.metrics import Histogram

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Per-token times: from a GPU's milliseconds to a loaded CPU's second.
PER_TOKEN_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class Family:
    name: str
    kind: str  # counter, gauge or histogram
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)
    histograms: list[tuple[Mapping[str, str], Histogram]] = field(default_factory=list)

    def add(self, value: float | None, **labels: str) -> Family:
        if value is not None and math.isfinite(value):
            self.samples.append((labels, float(value)))
        return self


def _label_names(family: Family) -> list[str]:
    names = {k for labels, _ in family.samples for k in labels} | {k for labels, _ in family.histograms for k in labels}
    return sorted(names)


def _converted(family: Family) -> Metric:
    names = _label_names(family)

    def values(labels: Mapping[str, str]) -> list[str]:
        return [str(labels.get(name, "")) for name in names]

    if family.kind == "histogram":
        hist = HistogramMetricFamily(family.name, family.help, labels=names)
        for labels, h in family.histograms:
            hist.add_metric(values(labels), [(le, float(count)) for le, count in h.cumulative()], h.total)
        return hist
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = kind(family.name, family.help, labels=names)
    for labels, value in family.samples:
        metric.add_metric(values(labels), value)
    return metric


class _Snapshot(Collector):
    """The families gathered for one scrape, and the build's identity."""

    def __init__(self, families: Sequence[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("hyperion_build", "The node's version and what it runs on")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info
        for family in self._families:
            yield _converted(family)


def render(families: Sequence[Family]) -> bytes:
    """The text of one scrape: ``families``, the build info, and the process and platform collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return _generate(registry)


ASGIApp = Any  # (scope, receive, send) -> awaitable, as guard.py's


@dataclass
class ApiMetrics:
    """Requests by (route template, method, status class) and their durations by (route, method)."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def measured(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope.get("type") != "http":
                await app(scope, receive, send)
                return
            started, status = time.perf_counter(), [500]

            async def sending(message: dict[str, Any]) -> None:
                if message.get("type") == "http.response.start":
                    status[0] = int(message.get("status", 500))
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"  # the template, never the raw path
                method = str(scope.get("method", ""))
                self.requests[(route, method, f"{status[0] // 100}xx")] += 1
                self.durations.setdefault((route, method), Histogram()).observe(time.perf_counter() - started)

        return measured

    def families(self) -> list[Family]:
        requests = Family("hyperion_api_requests_total", "counter", "API requests by route, method and status class")
        for (route, method, code), n in sorted(self.requests.items()):
            requests.add(n, route=route, method=method, code=code)
        errors = Family("hyperion_api_errors_total", "counter", "API answers with a 4xx or 5xx status, by route")
        failed: Counter[tuple[str, str]] = Counter()
        for (route, method, code), n in self.requests.items():
            if code[0] in "45":
                failed[(route, method)] += n
        for (route, method), n in sorted(failed.items()):
            errors.add(n, route=route, method=method)
        durations = Family("hyperion_api_request_duration_seconds", "histogram",
                           "API request duration (streamed answers: to their last byte), by route and method")
        durations.histograms = [({"route": r, "method": m}, h) for (r, m), h in sorted(self.durations.items())]
        return [requests, errors, durations]


@dataclass
class InferenceMetrics:
    """Per model, as this node's API saw its requests served: tokens generated, time to the first token, time
    per token after it."""

    tokens: Counter[str] = field(default_factory=Counter)
    ttft: dict[str, Histogram] = field(default_factory=dict)
    per_token: dict[str, Histogram] = field(default_factory=dict)

    def observe(self, model: str, tokens: int, ttft_s: float | None, per_token_s: float | None) -> None:
        self.tokens[model] += tokens
        if ttft_s is not None:
            self.ttft.setdefault(model, Histogram()).observe(ttft_s)
        if per_token_s is not None:
            self.per_token.setdefault(model, Histogram(PER_TOKEN_BUCKETS_S)).observe(per_token_s)

    def families(self) -> list[Family]:
        tokens = Family("hyperion_inference_tokens_total", "counter", "Tokens generated for this node's requests")
        for model, n in sorted(self.tokens.items()):
            tokens.add(n, model=model)
        ttft = Family("hyperion_inference_time_to_first_token_seconds", "histogram",
                      "From a request to its first output, by model")
        ttft.histograms = [({"model": m}, h) for m, h in sorted(self.ttft.items())]
        per_token = Family("hyperion_inference_time_per_token_seconds", "histogram",
                           "Time per generated token after the first, by model")
        per_token.histograms = [({"model": m}, h) for m, h in sorted(self.per_token.items())]
        return [tokens, ttft, per_token]
