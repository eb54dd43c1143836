"""Prometheus metrics, with the official client library, in a registry of the app's own.

Counters move where things happen (inbound, forwarder, relay); gauges that describe the store
(outbox depth, paused routes) are refreshed from it when /metrics is scraped. The per-webhook
counts and latency are plain numbers (`SourceTally`) exposed by a collector of our own: the
client's counters take a lock on every increment, which the hot path does not need, since it runs
on the event loop's thread only.
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # Delivery outcomes by route, for the console's traffic (`bridge/operate/traffic.py`).
        self.deliveries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.inbound = InboundTallies()
        registry.register(self.inbound)
        self.rejected = Counter("bridge_events_rejected", "Requests refused, by reason",
                                ["source", "reason"], registry=registry)
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
        # An edge's channels, refreshed from the store on scrape.
        self.channel_lag = Gauge("bridge_channel_lag_events", "Deliveries waiting for an agent",
                                 ["channel"], registry=registry)
        self.channel_lag_seconds = Gauge("bridge_channel_lag_seconds",
                                         "Age of the oldest delivery waiting for an agent",
                                         ["channel"], registry=registry)
        self.channel_agents = Gauge("bridge_channel_agents_connected",
                                    "Agents that pulled in the last 10 seconds", ["channel"],
                                    registry=registry)
        self.channel_ignored = Counter(
            "bridge_channel_ignored",
            "Agent acknowledgements and reports that answer no lease of that agent",
            ["channel", "kind"], registry=registry)
        # An agent's link to its edge.
        self.agent_connected = Gauge("bridge_agent_connected",
                                     "1 while the last pull from the edge succeeded",
                                     registry=registry)
        self.agent_events = Counter("bridge_agent_events_received",
                                    "Events received from the edge and committed locally",
                                    ["outcome"], registry=registry)
        self.agent_batches = Counter("bridge_agent_batches", "Batches pulled, by outcome",
                                     ["outcome"], registry=registry)
        self.agent_reports = Counter("bridge_agent_reports_sent",
                                     "Outcomes reported to the edge", registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SourceTally:
    """One source's webhook counts and request latency histogram."""

    __slots__ = ("received", "accepted", "duplicates", "buckets", "seconds")

    def __init__(self) -> None:
        self.received = 0
        self.accepted = 0
        self.duplicates = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last is +Inf
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: at or below the bound
        self.seconds += seconds


class InboundTallies(Collector):
    """bridge_events_received/accepted/duplicate_total and bridge_request_seconds, by source."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceTally] = {}

    def source(self, name: str) -> SourceTally:
        tally = self.sources.get(name)
        if tally is None:
            tally = self.sources[name] = SourceTally()
        return tally

    def collect(self) -> Iterator[Metric]:
        counters = [
            ("bridge_events_received", "Webhook requests received", "received"),
            ("bridge_events_accepted", "Events stored as new", "accepted"),
            ("bridge_events_duplicate", "Redeliveries answered as duplicates", "duplicates"),
        ]
        sources = sorted(self.sources.items())
        for name, doc, field in counters:
            family = CounterMetricFamily(name, doc, labels=["source"])
            for source, tally in sources:
                family.add_metric([source], getattr(tally, field))
            yield family
        latency = HistogramMetricFamily("bridge_request_seconds", "Inbound request latency",
                                        labels=["source"])
        for source, tally in sources:
            running, buckets = 0, []
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), tally.buckets,
                                    strict=True):
                running += count
                buckets.append((bound, running))
            latency.add_metric([source], buckets, tally.seconds)
        yield latency


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "error"
