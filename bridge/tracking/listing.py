"""Following many executions with one request: the platform's execution list, per trigger.

A stream per execution costs one request, one connection and a parser for every event, however
many run at once. Under load the tracker follows them by listing instead: one
`GET {base}/workflows/{trigger}/executions?limit=N` every `[tracking] list_every` answers for every
execution of that trigger being followed (the list is newest first). `Listing.wait(item)` joins an
execution to its trigger's roll call and returns, as the list last showed it:

- its terminal state, as soon as a list shows one with its result (`output` or `error`);
- `FETCH` when the list shows it ended but without its result (a list of summaries): the tracker
  asks for the execution itself;
- `UNSEEN` when the lists stop showing it (more newer executions than `list_limit` pushed it
  off) or the platform cannot list this trigger (then it is never listed again in this process):
  the tracker follows it as it would without listing, with a stream or polls;
- its last non-terminal state (or None) once `budget` seconds have passed, so its claim is given
  back and it is looked at again later, as after a stream.

A list is asked for a little more than the executions being followed. Newer executions this
bridge does not follow (another client's on a shared platform, or its own not yet claimed by
the tracker, as in a burst) can fill it and push older ones off: a full list that leaves some
out counts no miss against them, and the next asks for twice as many, up to `list_limit`; the
longer ask then shrinks by a quarter per list. (Counted as misses, they sent 4–6 % of a burst's
executions to a stream each.) Nor does a list count a miss against an execution followed only
after it was asked for.

A list request that fails (a timeout, a 5xx, an answer cut at the size limit or not a list)
shows nothing: twice in a row and its executions are followed alone. A 429 only waits for the
Retry-After it names: following each alone would add to the load it complains of. When the
tracker uses listing rather than streams is its choice
(`Tracker.use_listing`); docs/callbacks.md says when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from bridge.core.models import ExecutionResult, TrackedExecution
from bridge.core.retry import parse_retry_after
from bridge.delivery.results import execution_id_of, parse_result
from bridge.web.client import Client, HttpError

log = logging.getLogger("bridge.tracker")
FETCH: Final = ExecutionResult("fetch")  # it ended: ask for the execution itself
UNSEEN: Final = ExecutionResult("unseen")  # the lists do not show it: follow it alone
MISSES = 2  # lists in a row that do not show an execution before it is followed alone
UNLISTABLE = (400, 404, 405, 410, 422, 501)  # this platform cannot list this trigger


@dataclass(slots=True)
class _Watch:
    done: asyncio.Future[ExecutionResult | None]
    until: float  # monotonic
    last: ExecutionResult | None = None
    misses: int = 0
    joined: float = field(default_factory=time.monotonic)  # a list asked before says nothing


@dataclass(slots=True)
class _Roll:
    watches: dict[str, _Watch] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    ask: int = 0  # at least this many next time: a full list left some out


class Listing:
    def __init__(self, client: Client, every: float, limit: int) -> None:
        self.client = client
        self.every = every
        self.limit = limit
        self.rolls: dict[str, _Roll] = {}
        self.unlistable: set[str] = set()

    def can_list(self, trigger: str) -> bool:
        return trigger not in self.unlistable

    def listing(self, trigger: str) -> bool:
        """Whether this trigger's executions are being listed right now."""
        roll = self.rolls.get(trigger)
        return roll is not None and bool(roll.watches)

    async def wait(self, item: TrackedExecution, budget: float) -> ExecutionResult | None:
        if item.trigger in self.unlistable:
            return UNSEEN
        roll = self.rolls.setdefault(item.trigger, _Roll())
        watch = _Watch(asyncio.get_running_loop().create_future(), time.monotonic() + budget)
        roll.watches[item.id] = watch
        if roll.task is None or roll.task.done():
            roll.task = asyncio.create_task(self._run(item.trigger, roll))
        try:
            return await watch.done
        finally:
            if roll.watches.get(item.id) is watch:
                del roll.watches[item.id]

    async def close(self) -> None:
        tasks = [roll.task for roll in self.rolls.values() if roll.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.rolls.clear()

    async def _run(self, trigger: str, roll: _Roll) -> None:
        while roll.watches:
            await asyncio.sleep(self.every)
            if not roll.watches:
                break
            try:
                pause = await self._tick(trigger, roll)
            except Exception:  # a bug, or a hostile answer: never leave a watch hanging
                log.exception("listing failed: following each alone", extra={"trigger": trigger})
                for watch in list(roll.watches.values()):
                    _settle(watch, UNSEEN)
                pause = 0.0
            now = time.monotonic()
            for watch in list(roll.watches.values()):
                if now >= watch.until:
                    _settle(watch, watch.last)
            if pause:
                await asyncio.sleep(pause)

    async def _tick(self, trigger: str, roll: _Roll) -> float:
        """One list request; the seconds to wait before the next one beyond the tick."""
        # Newest first: the executions followed are mostly the newest, so a little slack past
        # their number covers them (others' executions in between, on a shared platform).
        limit = min(self.limit, max(len(roll.watches) + len(roll.watches) // 4 + 10, roll.ask))
        asked = time.monotonic()
        try:
            reply = await self.client.request(
                "GET", f"/workflows/{quote(trigger, safe='')}/executions?limit={limit}")
        except HttpError as exc:
            log.info("listing failed", extra={"trigger": trigger, "error": str(exc)})
            _missed(roll)
            return 0.0
        if reply.status in UNLISTABLE:
            log.info("the platform cannot list this trigger's executions: following each alone",
                     extra={"trigger": trigger, "status_code": reply.status})
            self.unlistable.add(trigger)
            for watch in list(roll.watches.values()):
                _settle(watch, UNSEEN)
            return 0.0
        if reply.status != 200:
            after = parse_retry_after(reply.headers.get("retry-after"), time.time())
            if reply.status != 429:  # rate limited: following each alone would only add to it
                _missed(roll)
            return min(30.0, after) if after is not None else 0.0
        try:
            items = reply.json()
        except ValueError:
            items = None
        if isinstance(items, dict):  # {"executions": [...]} or {"data": [...]}
            items = items.get("executions", items.get("data", items.get("items")))
        if not isinstance(items, list):  # not a list, or cut at the size limit: unusable
            _missed(roll)
            return 0.0
        shown = {}
        for doc in items:
            execution_id = execution_id_of(doc)
            if execution_id is not None and execution_id in roll.watches:
                shown[execution_id] = doc
        # Left out, though followed before the list was asked for: not listed by the platform,
        # or pushed off by newer ones if the list is full and short of the most it may ask.
        absent = [watch for execution_id, watch in roll.watches.items()
                  if execution_id not in shown and watch.joined < asked]
        longer = bool(absent) and len(items) >= limit and limit < self.limit
        roll.ask = min(self.limit, limit * 2) if longer else roll.ask - roll.ask // 4
        if not longer:
            for watch in absent:
                _miss(watch)
        for execution_id, doc in shown.items():
            watch = roll.watches[execution_id]
            watch.misses = 0
            result = parse_result(doc)
            if result is None:
                continue
            if result.terminal:
                whole = "output" in doc or "error" in doc
                _settle(watch, result if whole else FETCH)
            else:
                watch.last = result
        return 0.0


def _miss(watch: _Watch) -> None:
    watch.misses += 1
    if watch.misses >= MISSES:
        _settle(watch, UNSEEN)


def _missed(roll: _Roll) -> None:
    """A list that could not be read shows nothing: a miss for every execution on it."""
    for watch in list(roll.watches.values()):
        _miss(watch)


def _settle(watch: _Watch, result: ExecutionResult | None) -> None:
    if not watch.done.done():
        watch.done.set_result(result)
