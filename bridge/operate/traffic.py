"""Traffic per minute, kept in the store for the console's pictures.

Webhooks (accepted, duplicate, refused, by source) and deliveries (delivered, retried, dead,
paused, by route) are already counted in memory for /metrics. Every few seconds the sampler
takes how much each count grew and adds it to the store's `traffic` rows of the current minute,
so the pictures cost one small write per interval, not one per event, survive restarts, and add
up across workers and replicas sharing the store. A sample the store could not take is kept
and added with the next one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from bridge.core.errors import StoreUnavailable
from bridge.core.metrics import Metrics
from bridge.store.records import TrafficCount
from bridge.store.roles import Traffic

log = logging.getLogger("bridge.traffic")
INTERVAL = 5.0


class TrafficSampler:
    def __init__(self, metrics: Metrics, store: Traffic, clock: Callable[[], float]) -> None:
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self.seen: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.unsent: collections.Counter[tuple[int, str, str, str]] = collections.Counter()

    def totals(self) -> collections.Counter[tuple[str, str, str]]:
        """(kind, name, outcome) -> count since this process started."""
        out: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for source, tally in self.metrics.inbound.sources.items():
            out["webhook", source, "accepted"] = tally.accepted
            out["webhook", source, "duplicate"] = tally.duplicates
            out["webhook", source, "rejected"] = max(
                0, tally.received - tally.accepted - tally.duplicates)
        for (route, outcome), count in self.metrics.deliveries.items():
            out["delivery", route, outcome] = count
        return out

    def sample(self) -> list[TrafficCount]:
        """What grew since the last sample, as counts of the current minute (plus whatever
        the store did not take last time)."""
        minute = int(self.clock() // 60)
        totals = self.totals()
        for key, count in totals.items():
            grown = count - self.seen[key]
            if grown > 0:
                self.unsent[(minute, *key)] += grown
        self.seen = totals
        return [TrafficCount(m, kind, name, outcome, n)
                for (m, kind, name, outcome), n in self.unsent.items()]

    async def flush(self) -> None:
        counts = self.sample()
        try:
            await self.store.add_traffic(counts)
        except StoreUnavailable:
            return  # kept in `unsent`, added next time
        self.unsent.clear()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            await self.flush()
