"""When the flusher sends: it lingers so that a request carries many events, wakes for a
full batch, never makes flush() wait for the linger, and sleeps for good when idle."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from segops_fast.testing import LocalIngestServer

from .conftest import (
    DEADLINE_MARGIN_SECONDS,
    MakeClient,
    assert_accounted,
    track_numbered,
    wait_until,
)


def test_events_tracked_within_the_flush_interval_travel_in_one_request(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=1.0)
    track_numbered(client, 1)
    time.sleep(0.2)
    track_numbered(client, 49)
    wait_until(lambda: server.event_count == 50)
    # The first event woke the idle flusher; it waited for the rest instead of sending it.
    assert server.request_count == 1


def test_a_full_batch_is_sent_without_waiting_for_the_flush_interval(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=10, flush_interval=600)
    track_numbered(client, 10)
    wait_until(lambda: server.event_count == 10, timeout=10)
    track_numbered(client, 9)
    time.sleep(0.3)
    # Nine are fewer than a batch: they wait for the interval, or for the tenth.
    assert server.event_count == 10
    track_numbered(client, 1)
    wait_until(lambda: server.event_count == 20, timeout=10)


def test_flush_does_not_wait_for_the_flush_interval(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=600)
    track_numbered(client, 3)
    client.flush(timeout=10)
    assert server.event_count == 3
    # Nor does shutdown(): had its threads lingered, it would raise at its deadline.
    client.shutdown(timeout=DEADLINE_MARGIN_SECONDS)
    assert_accounted(client.stats(), tracked=3, sent=3, dropped=0, failed=0)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux's /proc")
def test_an_idle_flusher_does_not_wake_up(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=0.1)
    track_numbered(client, 1)
    client.flush(timeout=10)
    (flusher,) = [
        thread for thread in threading.enumerate() if thread.name == "segops-fast-flusher"
    ]
    # Settled: it looks once more after arming, then sleeps with no timeout.
    time.sleep(0.5)
    before = _context_switches(flusher)
    time.sleep(1.5)
    # A flusher polling every flush_interval would have woken 15 times.
    assert _context_switches(flusher) - before == 0
    track_numbered(client, 1)
    wait_until(lambda: server.event_count == 2)


def _context_switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
