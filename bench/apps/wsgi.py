"""The WSGI app gunicorn serves: a small plain-text answer, after the row's tracking.

``GET /`` (any path but these two) tracks the row's events and answers ``ok``;
:data:`~apps.tracking.TRACKED_PATH` answers how many events were tracked, and
:data:`~apps.tracking.READY_PATH` answers ``ok`` without tracking.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

from apps.tracking import READY_PATH, TRACKED_PATH, from_environment

#: Created at import, in the worker, as an app creates its analytics client.
TRACKER = from_environment()
_track_request = TRACKER.track_request if TRACKER.tracks else None
_OK = b"ok"
_OK_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(_OK)))]


def application(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == TRACKED_PATH:
        body = str(TRACKER.tracked()).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    if _track_request is not None and environ["PATH_INFO"] != READY_PATH:
        _track_request()
    start_response("200 OK", _OK_HEADERS)
    return [_OK]
