"""A WSGI application that tracks events, for the gunicorn and uWSGI tests.

The client is a module-level global, created when the application is imported: in the
master when it preloads, in each worker otherwise. ``GET /track?request=R&events=K``
tracks K events with payloads ``{"request": R, "i": 0..K-1}`` and answers with the
worker's pid and the names of its segops threads. At exit each process prints its
client's stats to stderr, which the tests show when they fail.

``SEGOPS_TEST_AT_IMPORT=N`` tracks N events at import (``event_type="at_import"``), in the
master when it preloads.

``SEGOPS_TEST_NO_THREADS=1`` under uWSGI makes it report no Python threads, as uWSGI
before 2.0.22 does without ``--enable-threads``, so the client sends on the request path.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, Callable
from urllib.parse import parse_qs

import orjson

if os.environ.get("SEGOPS_TEST_NO_THREADS") == "1":
    sys.modules["uwsgi"].has_threads = 0


def _report_at_exit() -> None:
    stats = client.stats()
    print(f"segops-stats pid={os.getpid()} {stats}", file=sys.stderr, flush=True)


# Registered before segops_fast is imported (which registers the client's exit hook), so
# that atexit, last in first out, runs it after the client has shut down.
atexit.register(_report_at_exit)
import segops_fast as segops  # noqa: E402

client = segops.SegOpsClient(os.environ["SEGOPS_TEST_API_URL"], "sk_test_local", flush_interval=0.2)
for _index in range(int(os.environ.get("SEGOPS_TEST_AT_IMPORT", "0"))):
    client.track(user_id="importer", event_type="at_import", payload={"i": _index})


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    request = int(query["request"][0])
    for index in range(int(query["events"][0])):
        client.track(
            user_id=f"user-{request % 100}",
            event_type="request_handled",
            payload={"request": request, "i": index},
        )
    threads = [t.name for t in threading.enumerate() if t.name.startswith("segops-fast")]
    body = orjson.dumps({"pid": os.getpid(), "segops_threads": threads})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
