"""The ASGI app uvicorn serves: the same answers as :mod:`apps.wsgi`, in an event loop.

Tracking runs on the event loop, as it does in an ASGI app that calls a synchronous
analytics client from its handlers. At lifespan shutdown, after the server has stopped
taking requests, the row's client is shut down if its documentation asks for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from apps.tracking import READY_PATH, TRACKED_PATH, from_environment

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Created at import, as an app creates its analytics client.
TRACKER = from_environment()
_track_request = TRACKER.track_request if TRACKER.tracks else None
_OK = b"ok"
_PLAIN_TEXT = (b"content-type", b"text/plain")


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["path"] == TRACKED_PATH:
        body = str(TRACKER.tracked()).encode()
    else:
        if _track_request is not None and scope["path"] != READY_PATH:
            _track_request()
        body = _OK
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [_PLAIN_TEXT, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            TRACKER.shutdown_at_exit()
            await send({"type": "lifespan.shutdown.complete"})
            return
