"""One supervisor for the background loops of a process (the bridge's and the agent's).

The shutdown order, written once: every loop stops claiming (`stop()`, which lets in-flight
work finish within the loop's own grace), then whatever is still running is cancelled and
awaited. Leases make a cancelled claim safe to take again after a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol


class Loop(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class Supervisor:
    """Starts loops and plain tasks; `stop()` ends them in the order above."""

    def __init__(self) -> None:
        self.loops: list[Loop] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, loop: Loop, name: str | None = None) -> None:
        """Run a loop (a `run()` that `stop()` ends) until the supervisor stops."""
        self.loops.append(loop)
        self.tasks.append(asyncio.create_task(loop.run(), name=name or type(loop).__name__))

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run a task with no stop of its own: it is cancelled on stop."""
        self.tasks.append(asyncio.create_task(work, name=name))

    async def stop(self) -> None:
        await asyncio.gather(*(loop.stop() for loop in self.loops))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
