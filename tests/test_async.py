"""The awaitable helpers: aflush(), ashutdown() and ``async with`` never block the loop."""

from __future__ import annotations

import asyncio
import time

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
from tests.conftest import DEADLINE_MARGIN_SECONDS, MakeClient, assert_accounted, track_numbered


async def _ticking_while(awaitable: object) -> tuple[int, float, BaseException | None]:
    """Ticks of a 10 ms ticker while ``awaitable`` runs, its seconds, and what it raised."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    started = time.monotonic()
    error: BaseException | None = None
    try:
        await awaitable  # type: ignore[misc]
    except segops.SegOpsApiError as raised:
        error = raised
    seconds = time.monotonic() - started
    ticker.cancel()
    return ticks, seconds, error


def test_aflush_waits_for_a_slow_server_while_the_loop_keeps_running(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    server.faults.latency = 1.0
    client = make_client(flush_interval=60)
    track_numbered(client, 50)
    ticks, seconds, error = asyncio.run(_ticking_while(client.aflush(timeout=10)))
    assert error is None
    assert seconds >= 0.9
    # About 100 ticks of 10 ms in a second; a blocked loop would give none.
    assert ticks >= 10
    assert server.summary()["unique_events"] == 50
    assert_accounted(client.stats(), tracked=50, sent=50, dropped=0, failed=0)


def test_aflush_and_ashutdown_keep_their_deadlines_on_a_hanging_server(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    server.faults.hang(seconds=5.0, count=10)
    client = make_client(flush_interval=60)
    track_numbered(client, 10)
    ticks, seconds, error = asyncio.run(_ticking_while(client.aflush(timeout=0.3)))
    assert isinstance(error, segops.SegOpsApiError)
    assert error.undelivered == 10
    assert 0.25 < seconds < 0.3 + DEADLINE_MARGIN_SECONDS
    assert ticks >= 10
    ticks, seconds, error = asyncio.run(_ticking_while(client.ashutdown(timeout=0.5)))
    assert isinstance(error, segops.SegOpsApiError)
    assert error.undelivered == 10
    assert seconds < 0.5 + DEADLINE_MARGIN_SECONDS
    # What happened: it returned at its deadline, not when the 5 s hang ended, and handed
    # every event over as dropped.
    assert server.event_count == 0
    assert_accounted(client.stats(), tracked=10, sent=0, dropped=10, failed=0)
    assert ticks >= 10


def test_async_with_shuts_the_client_down(server: LocalIngestServer) -> None:
    async def main() -> segops.SegOpsClient:
        async with segops.SegOpsClient(server.url, DEFAULT_SECRET_KEY, flush_interval=60) as client:
            track_numbered(client, 30)
        return client

    client = asyncio.run(main())
    assert server.summary()["unique_events"] == 30
    # Shut down: a later event is refused.
    client.track(user_id="u", event_type="late")
    assert_accounted(client.stats(), tracked=31, sent=30, dropped=1, failed=0)
