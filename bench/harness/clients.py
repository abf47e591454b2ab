"""The clients the benchmarks compare, each behind one small adapter.

Each adapter exposes the library's own track method, unwrapped, and how to call it for an
event: a benchmark builds the arguments before it starts the clock and then times the
library's method itself, so no adapter code is measured. Each library is imported inside
its builder: a benchmark process must load only the client it measures, never another
library's threads or fork hooks.

Every client gets its own defaults, pointed at LocalIngestServer, which speaks SegOps,
Segment (``/v1/batch``) and PostHog (``/batch/``). :func:`run_fresh` runs a measurement in
a fresh process, so that no client inherits another's state.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from segops_fast.testing import DEFAULT_SECRET_KEY

Call = tuple[tuple[Any, ...], dict[str, Any]]
#: How to call a client's track for one event: (user_id, event_type, payload) -> a Call.
CallBuilder = Callable[[str, str, dict[str, Any]], Call]


@dataclass(frozen=True)
class Client:
    #: The library's method, called as ``track(*args, **kwargs)`` with a :data:`Call`.
    track: Callable[..., object]
    call: CallBuilder
    flush: Callable[[], object]
    shutdown: Callable[[], object]

    def send(self, user_id: str, event_type: str, payload: dict[str, Any]) -> None:
        args, kwargs = self.call(user_id, event_type, payload)
        self.track(*args, **kwargs)


def keywords(user_id: str, event_type: str, payload: dict[str, Any]) -> Call:
    return (), {"user_id": user_id, "event_type": event_type, "payload": payload}


def _segops_api(module_name: str, **options: Any) -> Callable[[str], Client]:
    """segops 0.2.2 and segops_fast share one API: the drop-in promise."""

    def build(url: str) -> Client:
        module = importlib.import_module(module_name)
        client = module.SegOpsClient(url, DEFAULT_SECRET_KEY, **options)
        return Client(client.track, keywords, client.flush, client.shutdown)

    return build


def _no_op(url: str) -> Client:
    """The floor: a function with segops_fast's signature that does nothing."""

    def track(
        event: object = None,
        *,
        user_id: object = None,
        event_type: object = None,
        occurred_at: object = None,
        payload: object = None,
    ) -> None:
        return None

    return Client(track, keywords, lambda: None, lambda: None)


def _segment(url: str) -> Client:
    from segment.analytics.client import Client as SegmentClient  # noqa: PLC0415

    client = SegmentClient("write-key", host=url)
    return Client(
        client.track,
        lambda user_id, event_type, payload: ((user_id, event_type, payload), {}),
        client.flush,
        client.shutdown,
    )


def _posthog(url: str) -> Client:
    from posthog import Posthog  # noqa: PLC0415

    client = Posthog("phc_project_key", host=url)
    return Client(
        client.capture,
        lambda user_id, event_type, payload: (
            (event_type,),
            {"distinct_id": user_id, "properties": payload},
        ),
        client.flush,
        client.shutdown,
    )


def segops_fast_with(**options: Any) -> Callable[[str], Client]:
    """segops_fast with non-default options (the max_in_flight sweep)."""
    return _segops_api("segops_fast", **options)


NO_OP = "no-op floor"
SEGOPS_FAST = "segops_fast"

BUILDERS: dict[str, Callable[[str], Client]] = {
    NO_OP: _no_op,
    SEGOPS_FAST: _segops_api("segops_fast"),
    "segops 0.2.2": _segops_api("segops"),
    "segment-analytics-python 2.4.0": _segment,
    "posthog 7.91.1": _posthog,
}


def run_fresh(script: str, *arguments: object, timeout: float) -> dict[str, Any]:
    """Run ``python script *arguments`` and return the JSON object its last line prints."""
    completed = subprocess.run(
        [sys.executable, script, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{script} {arguments}: failed\n{completed.stderr}")
    result: dict[str, Any] = orjson.loads(completed.stdout.splitlines()[-1])
    return result
