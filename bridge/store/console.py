"""Console sessions and traffic per minute: the `Console` and `Traffic` roles."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bridge.store.dialect import Session
from bridge.store.engine import Engine
from bridge.store.records import (
    TrafficCount,
)

log = logging.getLogger("bridge.store")


class ConsoleJobs(Engine):
    """Console sessions and traffic per minute."""

    async def start_session(self, session_id: str, token: str, csrf: str, now: float,
                            expires_at: float) -> None:
        """A signed-in console session: `session_id` is the digest of the cookie's id, `token`
        a keyed digest of the admin token that signed in (removing it ends its sessions)."""

        def job(conn: Session) -> None:
            conn.execute("DELETE FROM console_sessions WHERE expires_at < {p}", (now,))
            conn.execute("INSERT INTO console_sessions (id, token, csrf, created_at, expires_at)"
                         " VALUES ({p},{p},{p},{p},{p})", (session_id, token, csrf, now, expires_at))

        await self._write(job)

    async def find_session(self, session_id: str, now: float) -> dict[str, Any] | None:
        return await self._one("SELECT token, csrf FROM console_sessions WHERE id = {p}"
                               " AND expires_at > {p}", (session_id, now))

    async def end_session(self, session_id: str) -> None:
        def job(conn: Session) -> None:
            conn.execute("DELETE FROM console_sessions WHERE id = {p}", (session_id,))

        await self._write(job)

    async def add_traffic(self, counts: Sequence[TrafficCount]) -> None:
        def job(conn: Session) -> None:
            conn.executemany(
                "INSERT INTO traffic (minute, kind, name, outcome, n) VALUES ({p},{p},{p},{p},{p})"
                " ON CONFLICT (minute, kind, name, outcome) DO UPDATE SET n = traffic.n + excluded.n",
                [(c.minute, c.kind, c.name, c.outcome, c.n) for c in counts])

        if counts:
            await self._write(job)

    async def traffic(self, since_minute: int) -> list[TrafficCount]:
        rows = await self._all("SELECT minute, kind, name, outcome, n FROM traffic"
                               " WHERE minute >= {p} ORDER BY minute", (since_minute,))
        return [TrafficCount(**row) for row in rows]
