"""The applications that ``segops-fast demo --server`` runs under real servers.

Each process that imports this module creates one client with default settings, as an
application does, against ``SEGOPS_DEMO_API_URL``; with ``SEGOPS_DEMO_AT_IMPORT=N`` it also
tracks N events of type ``at_import`` there (in the master, when the server preloads).
``GET /track?request=R&events=K`` tracks K events of type ``request`` and answers with the
worker's pid: :func:`wsgi` for gunicorn and uWSGI, :func:`asgi` for uvicorn, whose
lifespan awaits ``client.ashutdown()`` (uvicorn ends a stopped worker with the signal's
default action, skipping exit hooks). Nothing here needs a web framework.
"""

from __future__ import annotations

import os
from typing import Any, Callable
from urllib.parse import parse_qs

import orjson

from .._client import SegOpsClient
from ..testing import DEFAULT_SECRET_KEY

if "SEGOPS_DEMO_API_URL" not in os.environ:
    raise ImportError(
        "this is the application that segops-fast demo --server runs; run that command"
    )
client = SegOpsClient(os.environ["SEGOPS_DEMO_API_URL"], DEFAULT_SECRET_KEY)
for _index in range(int(os.environ.get("SEGOPS_DEMO_AT_IMPORT", "0"))):
    client.track(user_id="importer", event_type="at_import", payload={"i": _index})


def _track(query: str) -> bytes:
    fields = parse_qs(query)
    request = int(fields["request"][0])
    for index in range(int(fields["events"][0])):
        client.track(
            user_id=f"user-{request % 1000}",
            event_type="request",
            payload={"request": request, "i": index},
        )
    return orjson.dumps({"pid": os.getpid()})


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = _track(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


async def asgi(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await client.ashutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _track(scope["query_string"].decode())
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
