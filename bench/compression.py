"""What ``compression="gzip"`` costs and saves, over plain HTTP and over TLS.

    pip install -e ".[dev]"
    python bench/compression.py      # about 2 minutes; writes bench/results/compression.md

Two parts, on the events of bench/compare.py (``{"path": "/home", "i": i}``, user ids
cycling over 1,000) and on a richer "typical" event (a page view with a dozen fields):

* the bodies alone: the client's own batches (``max_batch_bytes``, 512 KiB, and 20-event
  batches, the default ``batch_size`` when traffic is light), compressed with gzip at
  level 1 (the client's) and at zlib's default, 6; bytes per event on the wire, and the
  CPU each event's share of compressing costs (``time.process_time``, best of 5);
* end to end: one producer thread tracks as fast as it can, then flush(); delivered
  events/s (counted at the server, a ``segops-fast serve`` process on a CPU of its own)
  and the client process's CPU per event, without compression and with each level, over
  HTTP and over HTTPS. Each figure is the median of ``--rounds`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from harness.placement import describe, on_cpus, server_and_client_cpus
from harness.results import RESULTS, write_results

import segops_fast
from segops_fast import _transport
from segops_fast._batching import assemble_batches
from segops_fast._encoding import encode_event
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

#: No compression, level 1 (the client's), and zlib's default level.
ZLIB_DEFAULT_LEVEL = 6
LEVELS: tuple[int | None, ...] = (None, 1, ZLIB_DEFAULT_LEVEL)


def _small(i: int) -> tuple[str, str, dict[str, Any]]:
    return f"user-{i % 1000}", "page_viewed", {"path": "/home", "i": i}


def _typical(i: int) -> tuple[str, str, dict[str, Any]]:
    return (
        f"user-{i % 1000:06d}",
        "page_viewed",
        {
            "path": f"/products/{i % 250}",
            "referrer": "https://www.example.com/search?q=shoes",
            "title": "Running shoes, size 42",
            "session_id": f"s-{i // 40:08x}",
            "plan": ("free", "pro", "team")[i % 3],
            "country": ("DE", "FR", "US", "JP")[i % 4],
            "device": {"os": "iOS", "version": "17.4", "model": "iPhone15,2"},
            "viewport": [390, 844],
            "price_cents": 8999 + i % 100,
            "in_stock": i % 7 != 0,
            "experiment": {"name": "checkout-v2", "variant": "b" if i % 2 else "a"},
            "i": i,
        },
    )


EVENT_KINDS = {"small (compare.py's)": _small, "typical page view": _typical}


def _gzip(body: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def bodies_alone(events: int) -> list[dict[str, Any]]:
    rows = []
    for kind, make in EVENT_KINDS.items():
        records = [encode_event(*make(i)[:2], None, make(i)[2], 32768) for i in range(events)]
        for label, max_bytes, per_batch in (("512 KiB", 512 * 1024, None), ("20 events", 0, 20)):
            if per_batch is None:
                batches = list(assemble_batches(records, max_bytes))
            else:
                batches = [
                    next(iter(assemble_batches(records[start : start + per_batch], 1 << 30)))
                    for start in range(0, len(records), per_batch)
                ]
            bodies = [batch.render_body() for batch in batches]
            plain = sum(map(len, bodies))
            row: dict[str, Any] = {"events": kind, "batches": label, "plain_bytes": plain / events}
            for level in LEVELS[1:]:
                assert level is not None
                best = float("inf")
                for _ in range(5):
                    began = time.process_time()
                    wire = sum(len(_gzip(body, level)) for body in bodies)
                    best = min(best, time.process_time() - began)
                row[f"level {level} bytes"] = wire / events
                row[f"level {level} us"] = best / events * 1e6
            rows.append(row)
    return rows


def end_to_end(url: str, ca_certs: str | None, level: int | None, events: int) -> dict[str, float]:
    if level is not None:
        _transport.GZIP_LEVEL = level
    client = segops_fast.SegOpsClient(
        url,
        DEFAULT_SECRET_KEY,
        compression=None if level is None else "gzip",
        ca_certs=ca_certs,
    )
    calls = [_small(i) for i in range(events)]
    cpu_before = time.process_time()
    began = time.perf_counter()
    for user_id, event_type, payload in calls:
        client.track(user_id=user_id, event_type=event_type, payload=payload)
    client.flush(timeout=300)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_before
    client.shutdown()
    return {"seconds": elapsed, "cpu_us_per_event": cpu / events * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    arguments = parser.parse_args()
    lines = [
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {arguments.events:,} events.",
        "",
        "Request bodies alone, gzip on one thread (bytes and CPU per event):",
        "",
        "| events | batches | plain | level 1 | CPU "
        f"| level {ZLIB_DEFAULT_LEVEL} (zlib's default) | CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    default = ZLIB_DEFAULT_LEVEL
    for row in bodies_alone(min(arguments.events, 50_000)):
        lines.append(
            f"| {row['events']} | {row['batches']} | {row['plain_bytes']:.1f} B"
            f" | {row['level 1 bytes']:.1f} B | {row['level 1 us']:.3f} us"
            f" | {row[f'level {default} bytes']:.1f} B | {row[f'level {default} us']:.3f} us |"
        )
    server_cpus, client_cpus = server_and_client_cpus()
    with on_cpus(server_cpus):
        servers = {
            "HTTP": IngestServerProcess().start(),
            "HTTPS": IngestServerProcess(["--tls"]).start(),
        }
    lines += [
        "",
        f"End to end, one producer thread, {describe(server_cpus, client_cpus)}; medians of "
        f"{arguments.rounds} rounds (CPU: the whole client process, per event):",
        "",
        "| transport | compression | delivered events/s | client CPU per event |",
        "|---|---|---|---|",
    ]
    try:
        with on_cpus(client_cpus):
            runs: dict[tuple[str, int | None], list[dict[str, float]]] = {}
            for _ in range(arguments.rounds):
                for name, server in servers.items():
                    for level in LEVELS:
                        server.reset()
                        result = end_to_end(server.url, server.ca_certs, level, arguments.events)
                        stored = server.summary()["unique_events"]
                        assert stored == arguments.events, (name, level, stored)
                        result["events_per_second"] = stored / result["seconds"]
                        runs.setdefault((name, level), []).append(result)
    finally:
        for server in servers.values():
            server.stop()
    for (name, level), results in runs.items():
        rate = statistics.median(r["events_per_second"] for r in results)
        cpu = statistics.median(r["cpu_us_per_event"] for r in results)
        label = "none" if level is None else f"gzip level {level}"
        lines.append(f"| {name} | {label} | {rate:,.0f} | {cpu:.2f} us |")
    report = "\n".join(lines) + "\n"
    write_results(arguments.out, "compression", report)


if __name__ == "__main__":
    main()
