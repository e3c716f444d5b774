"""Prometheus metrics, on a registry of the app's own (never the process-global one).

Per platform (labelled with the platform's name, never its key): queries answered, queries
that matched and matches by tier, so an operator can alert on a platform whose match rate
departs from normal traffic (docs/deploy.md, "Abuse signals"). Canary matches are test traffic
and are left out of the per-platform match counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from registry.domain import QueryResult
from registry.service import Registry
from registry.service.banks import CANARY_BANK

# Platform names come only from operators (`takedown platform add`), so the label set is as
# small as the platform list; the cap only guards a process against an unforeseen flood.
MAX_PLATFORM_LABELS = 1000
OTHER_PLATFORMS = "_other"  # no platform name can start with "_"


class Metrics:
    def __init__(self, registry: Registry) -> None:
        self.collectors = CollectorRegistry()
        r = self.collectors
        self.requests = Counter("takedown_http_requests", "HTTP requests",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("takedown_http_request_seconds", "Request latency",
                                 ["endpoint"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.matches = Counter("takedown_matches", "Matches returned", ["tier", "bank"],
                               registry=r)
        self.queries = Counter("takedown_match_queries", "Queries answered", registry=r)
        self.platform_queries = Counter(
            "takedown_platform_queries", "Match queries answered, per platform", ["platform"],
            registry=r)
        self.platform_matched = Counter(
            "takedown_platform_matched_queries",
            "Match queries with at least one match outside the canary bank, per platform",
            ["platform"], registry=r)
        self.platform_matches = Counter(
            "takedown_platform_matches", "Matches returned outside the canary bank, per "
            "platform and tier", ["platform", "tier"], registry=r)
        self._platform_labels: set[str] = set()
        self.rate_limited = Counter("takedown_rate_limited", "Requests refused with 429",
                                    registry=r)
        index_size = Gauge("takedown_index_hashes", "Hashes in the in-memory index", ["kind"],
                           registry=r)
        index_age = Gauge("takedown_index_age_seconds", "Seconds since the index was loaded",
                          registry=r)
        index_position = Gauge("takedown_index_position", "Change-log position of the index",
                               registry=r)
        for kind in registry.index_status().hashes:
            index_size.labels(kind).set_function(_size_of(registry, kind))
        index_age.set_function(lambda: _age(registry.index_status().loaded_at))
        index_position.set_function(lambda: registry.index_status().position)

    def platform_label(self, name: str) -> str:
        if name in self._platform_labels:
            return name
        if len(self._platform_labels) >= MAX_PLATFORM_LABELS:
            return OTHER_PLATFORMS
        self._platform_labels.add(name)
        return name


def _size_of(registry: Registry, kind: str) -> Callable[[], float]:
    return lambda: float(registry.index_status().hashes.get(kind, 0))


def _age(loaded_at: float) -> float:
    return time.time() - loaded_at if loaded_at else 0.0


def install(app: Flask, registry: Registry) -> Metrics:
    metrics = Metrics(registry)
    app.extensions["metrics"] = metrics

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        if "started" in g:
            metrics.latency.labels(endpoint).observe(time.perf_counter() - g.started)
        if response.status_code == 429:
            metrics.rate_limited.inc()
        return response

    return metrics


def record_matches(results: Sequence[QueryResult]) -> None:
    metrics: Metrics = current_app.extensions["metrics"]
    metrics.queries.inc(len(results))
    for result in results:
        for m in result.matches:
            metrics.matches.labels(m.tier.value, m.bank).inc()
    platform = g.get("platform")  # set by the API's authentication (registry.web.api)
    if platform is None:
        return
    label = metrics.platform_label(platform.name)
    metrics.platform_queries.labels(label).inc(len(results))
    matched = 0
    for result in results:
        real = [m for m in result.matches if m.bank != CANARY_BANK]
        matched += bool(real)
        for m in real:
            metrics.platform_matches.labels(label, m.tier.value).inc()
    metrics.platform_matched.labels(label).inc(matched)


def exposition() -> Response:
    metrics: Metrics = current_app.extensions["metrics"]
    # The classic text format (0.0.4) every Prometheus version reads; passed as content_type,
    # not mimetype, so Werkzeug does not append a second charset.
    return Response(generate_latest(metrics.collectors), content_type=CONTENT_TYPE_PLAIN_0_0_4)
