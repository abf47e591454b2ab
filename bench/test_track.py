"""What one call costs the caller: track() in each of its forms, and identify().

Each benchmark makes 20,000 calls (200 rounds of 100) against a client whose flusher
delivers to a real server as they go: few enough that the queue never fills, so every
call takes the normal path and every event is delivered (the fixture checks that).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import segops_fast as segops

ROUNDS, ITERATIONS = 200, 100
PAYLOAD = {"path": "/home", "i": 1}


def _timed(benchmark: Any, call: Any, **kwargs: Any) -> None:
    benchmark.pedantic(call, kwargs=kwargs, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=5)


def test_track_with_keywords(benchmark: Any, client: segops.SegOpsClient) -> None:
    _timed(benchmark, client.track, user_id="user-1", event_type="page_viewed", payload=PAYLOAD)


def test_track_with_an_event(benchmark: Any, client: segops.SegOpsClient) -> None:
    event = segops.Event(user_id="user-1", event_type="page_viewed", payload=PAYLOAD)
    _timed(benchmark, client.track, event=event)


def test_track_with_a_dict(benchmark: Any, client: segops.SegOpsClient) -> None:
    event = {"user_id": "user-1", "event_type": "page_viewed", "payload": PAYLOAD}
    _timed(benchmark, client.track, event=event)


def test_identify(benchmark: Any, client: segops.SegOpsClient) -> None:
    _timed(benchmark, client.identify, user_id="user-1", traits={"plan": "pro", "seats": 3})


def test_track_while_another_thread_keeps_the_flusher_busy(
    benchmark: Any, client: segops.SegOpsClient
) -> None:
    """A second producer tracks 100,000 events/s throughout, so batches are being
    assembled and sent while the measured calls run."""
    stop = threading.Event()

    def load() -> None:
        began, sent = time.monotonic(), 0
        while not stop.is_set():
            for _ in range(1000):
                client.track(user_id="user-2", event_type="load", payload=PAYLOAD)
            sent += 1000
            time.sleep(max(0.0, sent / 100_000 - (time.monotonic() - began)))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.2)
        _timed(benchmark, client.track, user_id="user-1", event_type="page_viewed", payload=PAYLOAD)
    finally:
        stop.set()
        loader.join()
