"""Prometheus metrics of one app, in the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's metrics, registered in a fresh :class:`CollectorRegistry`.

    A registry per app keeps several apps (tests, workers) from clashing in the global
    registry.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "leafid_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "leafid_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "leafid_inference_duration_seconds",
            "Time of one onnxruntime call (one request's images in one batch).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "leafid_images_classified",
            "Images decoded and run through the model.",
            registry=self.registry,
        )
        self.unknown = Counter(
            "leafid_unknown_answers",
            "Answers that were 'unknown' (best score under the threshold).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "leafid_queue_rejections",
            "Requests refused because the inference queue was full.",
            registry=self.registry,
        )
