"""Prometheus metrics of one app instance (its own registry, so several apps can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hubless_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "hubless_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.search_queries = Counter(
            "hubless_search_queries", "Queries searched", ["method", "invgc"], registry=r
        )
        self.gallery_changes = Counter(
            "hubless_gallery_changes", "Gallery items changed", ["op"], registry=r
        )
        self.gallery_size = Gauge("hubless_gallery_size", "Items in the gallery", registry=r)
        self.gallery_version = Gauge("hubless_gallery_version", "Gallery version", registry=r)
        self.precompute_seconds = Gauge(
            "hubless_precompute_seconds", "Startup load and precompute time", registry=r
        )
        self.ready = Gauge("hubless_ready", "1 when the service is ready", registry=r)
        self.k_occurrence_skewness = Gauge(
            "hubless_k_occurrence_skewness",
            "k-occurrence skewness of the last diagnostics run",
            ["method", "invgc"],
            registry=r,
        )
        self.hub_max_z = Gauge(
            "hubless_hub_max_z",
            "Largest robust k-occurrence z-score (the top hub) of the last GET /diagnostics run",
            ["method", "invgc"],
            registry=r,
        )
        self.query_bank_size = Gauge(
            "hubless_query_bank_size", "Rows in the live query bank", registry=r
        )
        self.query_bank_pending = Gauge(
            "hubless_query_bank_pending",
            "Served queries waiting to join the live query bank",
            registry=r,
        )
