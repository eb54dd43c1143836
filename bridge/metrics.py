"""Prometheus metrics, with the official client library, in a registry of the app's own.

Counters move where things happen (inbound, forwarder, relay); gauges that describe the store
(outbox depth, paused routes) are refreshed from it when /metrics is scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.received = Counter("bridge_events_received", "Webhook requests received",
                                ["source"], registry=registry)
        self.accepted = Counter("bridge_events_accepted", "Events stored as new",
                                ["source"], registry=registry)
        self.duplicates = Counter("bridge_events_duplicate", "Redeliveries answered as duplicates",
                                  ["source"], registry=registry)
        self.rejected = Counter("bridge_events_rejected", "Requests refused, by reason",
                                ["source", "reason"], registry=registry)
        self.request_seconds = Histogram("bridge_request_seconds", "Inbound request latency",
                                         ["source"], buckets=LATENCY_BUCKETS, registry=registry)
        self.commit_seconds = Histogram("bridge_store_commit_seconds",
                                        "Time to apply and commit one batch",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("bridge_store_batch_size", "Changes committed together",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                                    registry=registry)
        self.outbox = Gauge("bridge_outbox_deliveries", "Deliveries by status", ["status"],
                            registry=registry)
        self.events = Gauge("bridge_events_stored", "Stored events by state", ["state"],
                            registry=registry)
        self.attempts = Counter("bridge_delivery_attempts", "Trigger calls by status class",
                                ["status_class"], registry=registry)
        self.retries = Counter("bridge_delivery_retries", "Deliveries scheduled for a retry",
                               registry=registry)
        self.dead = Counter("bridge_delivery_dead", "Deliveries that became dead",
                            registry=registry)
        self.paused = Gauge("bridge_route_paused", "1 while a route is paused", ["route"],
                            registry=registry)
        self.streams = Gauge("bridge_execution_streams_open", "Execution SSE streams open",
                             registry=registry)
        self.callbacks = Counter("bridge_callback_attempts", "Callback attempts by outcome",
                                 ["outcome"], registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "error"
