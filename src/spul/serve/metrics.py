"""Prometheus metrics of one service instance (its own registry, so apps in one process don't mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CHECK_METRICS = ("acc", "label_acc", "margin_auc")


class ServeMetrics:
    """Request counts by route and status, latencies, batch sizes, queue depth, prompt reloads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "spul_http_requests", "HTTP requests by route and status", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "spul_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter("spul_classified_texts", "texts classified", registry=r)
        self.batch_texts = Histogram(
            "spul_batch_texts", "texts per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "spul_batch_seconds", "model time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queued = Gauge("spul_queued_requests", "requests waiting for a batch", registry=r)
        self.in_flight = Gauge("spul_in_flight_requests", "classify requests being served", registry=r)
        self.busy = Counter("spul_busy_refusals", "503s: too many texts queued", registry=r)
        self.reloads = Counter("spul_prompt_reloads", "prompt reloads by result", ["result"], registry=r)
        self.prompt = Gauge(
            "spul_prompt_info", "the prompt in use (value 1)", ["id", "fingerprint", "requests"], registry=r
        )
        self.check = Gauge(
            "spul_prompt_check",
            "the prompt in use, as its training check measured it: served-label ACC (%), label-only ACC "
            "(%, what returned probabilities give away) and label-margin ROC AUC per split",
            ["split", "metric"],
            registry=r,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model batch."""
        self.batch_texts.observe(size)
        self.batch_seconds.observe(seconds)

    def set_prompt(self, info: dict, check: dict | None = None) -> None:
        """Expose the prompt now in use and its recorded check (the previous label sets are removed)."""
        self.prompt.clear()
        self.prompt.labels(info["id"], info["fingerprint"], ",".join(info.get("requests", []))).set(1)
        self.check.clear()
        for split, values in (check or {}).items():
            for metric in CHECK_METRICS:
                if isinstance(values.get(metric), int | float):
                    self.check.labels(split, metric).set(values[metric])

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
