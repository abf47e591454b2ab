"""A FastAPI application that tracks events, for the uvicorn and gunicorn-uvicorn tests.

The client is a module-level global created at import, in each worker. ``GET
/track?request=R&events=K`` tracks K events from the async handler (track() never blocks)
and answers with the worker's pid. The lifespan awaits ``client.ashutdown()`` as the
worker stops, as the README shows.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import segops_fast as segops

client = segops.SegOpsClient(os.environ["SEGOPS_TEST_API_URL"], "sk_test_local", flush_interval=0.2)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await client.ashutdown()


app = FastAPI(lifespan=lifespan)


@app.get("/track")
async def track(request: int, events: int) -> dict[str, object]:
    for index in range(events):
        client.track(
            user_id=f"user-{request % 100}",
            event_type="request_handled",
            payload={"request": request, "i": index},
        )
    return {"pid": os.getpid(), "segops_threads": []}
