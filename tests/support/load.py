"""Sending many webhooks at once."""

from __future__ import annotations

import asyncio

import httpx

from tests.support.harness import github_headers


def body_for(i: int, size: int = 200) -> bytes:
    return (f'{{"n":{i},"pad":"' + "p" * size + '"}').encode()


async def send_many(url: str, count: int, start: int = 0,
                    concurrency: int = 16) -> dict[str, int]:
    """Send `count` signed events; return the delivery ids that got a 2xx, with status."""
    acked: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = body_for(i)
        async with gate:
            try:
                r = await client.post("/hooks/github", content=body,
                                      headers=github_headers(body, delivery=f"k-{i}"))
            except httpx.HTTPError:
                return
        if r.status_code in (200, 202):
            acked[f"github:k-{i}"] = r.status_code

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await asyncio.gather(*(one(client, i) for i in range(start, start + count)))
    return acked
