"""The flusher's side: cutting queued events into request bodies, and events/s delivered."""

from __future__ import annotations

from typing import Any

import segops_fast as segops
from segops_fast._batching import assemble_batches
from segops_fast._encoding import encode_event
from segops_fast._options import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_EVENT_BYTES
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

EVENTS = 100_000


def test_batch_assembly_of_5000_events(benchmark: Any) -> None:
    records = [
        encode_event(f"user-{i % 1000}", "page_viewed", None, {"path": "/home", "i": i},
                     DEFAULT_MAX_EVENT_BYTES)
        for i in range(5000)
    ]  # fmt: skip

    def assemble() -> int:
        batches = assemble_batches(records, DEFAULT_MAX_BATCH_BYTES)
        return sum(len(batch.render_body()) for batch in batches)

    body_bytes = benchmark(assemble)
    assert body_bytes > 5000 * 50


def test_delivered_throughput_of_100000_events(benchmark: Any, server: IngestServerProcess) -> None:
    """From the first track() until flush() returns: every event acknowledged."""

    def track_and_flush() -> None:
        client = segops.SegOpsClient(server.url, DEFAULT_SECRET_KEY)
        for i in range(EVENTS):
            client.track(user_id=f"user-{i % 1000}", event_type="page_viewed",
                         payload={"path": "/home", "i": i})  # fmt: skip
        client.flush()
        client.shutdown()
        assert client.stats().sent == EVENTS

    benchmark.pedantic(track_and_flush, rounds=3, iterations=1)
    benchmark.extra_info["events_per_second"] = round(EVENTS / benchmark.stats.stats.median)
