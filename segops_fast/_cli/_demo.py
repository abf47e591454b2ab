"""``segops-fast demo``: track many events with default settings and prove each arrived once.

It starts a LocalIngestServer in its own process, tracks ``--events`` events from
``--threads`` threads through one client with default settings, shuts the client down,
and asks the server how many distinct events it stored. Exit status 1 if any event was
lost or stored twice.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from .._client import SegOpsClient
from ..testing import DEFAULT_SECRET_KEY, IngestServerProcess


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="track events to a local server and verify exactly-once delivery",
        description=__doc__,
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="events in all (default 200000)"
    )
    parser.add_argument("--threads", type=int, default=4, help="producer threads (default 4)")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    if arguments.events < 1 or arguments.threads < 1:
        raise SystemExit("segops-fast demo: --events and --threads must be at least 1")
    with IngestServerProcess() as server:
        client = SegOpsClient(server.url, DEFAULT_SECRET_KEY)
        latencies: list[list[int]] = [[] for _ in range(arguments.threads)]
        shares = _split(arguments.events, arguments.threads)
        threads = [
            threading.Thread(
                target=_produce, args=(client, number, start, count, latencies[number])
            )
            for number, (start, count) in enumerate(shares)
        ]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        client.shutdown()
        elapsed = time.perf_counter() - began
        counts = server.summary()
        stats = client.stats()
    all_latencies = sorted(value for per_thread in latencies for value in per_thread)
    lost = arguments.events - counts["unique_events"]
    duplicates = counts["duplicate_events"]
    rows = [
        ("events tracked", f"{arguments.events:,}"),
        ("threads", f"{arguments.threads}"),
        ("delivered (distinct, at the server)", f"{counts['unique_events']:,}"),
        ("duplicates (stored twice)", f"{duplicates:,}"),
        ("lost", f"{lost:,}"),
        ("requests", f"{counts['requests']:,}"),
        ("retried requests deduplicated by key", f"{counts['repeated_key_requests']:,}"),
        ("wall time, first track() to shutdown()", f"{elapsed:.3f} s"),
        ("delivered events/s", f"{counts['unique_events'] / elapsed:,.0f}"),
        ("track() p50 (timed per call)", f"{_percentile(all_latencies, 0.50) / 1000:.2f} us"),
        ("track() p99 (timed per call)", f"{_percentile(all_latencies, 0.99) / 1000:.2f} us"),
        ("client stats", f"sent={stats.sent:,} dropped={stats.dropped} failed={stats.failed}"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    exactly_once = lost == 0 and duplicates == 0
    print("exactly once: yes" if exactly_once else "exactly once: NO")
    return 0 if exactly_once else 1


def _produce(
    client: SegOpsClient, thread_number: int, start: int, count: int, latencies: list[int]
) -> None:
    clock = time.perf_counter_ns
    track = client.track
    record = latencies.append
    for index in range(start, start + count):
        payload = {"path": "/home", "i": index, "thread": thread_number}
        began = clock()
        track(user_id=f"user-{index % 1000}", event_type="page_viewed", payload=payload)
        record(clock() - began)


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each part: as even as possible, covering 0..total exactly once."""
    size, extra = divmod(total, parts)
    shares = []
    start = 0
    for part in range(parts):
        count = size + (1 if part < extra else 0)
        shares.append((start, count))
        start += count
    return shares


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))])
