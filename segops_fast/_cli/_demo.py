"""``segops-fast demo``: a pre-fork server's life, and proof that each event arrived once.

This module owns the command's arguments and its help (:data:`_DESCRIPTION` says what
the demo does, for the user), the default mode that forks workers itself, and the table
it prints. ``--server`` is :mod:`._demo_servers`'s.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import orjson

from .._client import SegOpsClient
from ..testing import DEFAULT_SECRET_KEY, IngestServerProcess
from . import _demo_servers

#: Events the master tracks before it forks: each must be sent once, by the master.
MASTER_EVENTS = 5


@dataclass
class _WorkerReport:
    """What a worker tells the master through a pipe before it exits."""

    pid: int
    tracked: int
    seconds: float
    latencies_ns: list[int]


_DESCRIPTION = """\
A pre-fork server's life, and proof that each event arrived once.

A local ingest server starts in a process of its own. A master process creates
one client with default settings and tracks a few events, as an application
does at import; then it forks --workers workers the way gunicorn or uWSGI does,
with the client's thread running and its events possibly in flight. Each worker
tracks its share of --events events from --threads threads, flushes and
reports. The ingest server then counts, per process, the distinct events it
stored.

Exit status: 0 if every event was stored exactly once, 1 if any event was lost
or stored twice.
"""


def _epilog() -> str:
    rows = "\n".join(
        f"  {name:<9} {how}\n  {'':<9} (needs: pip install {' '.join(packages)})"
        for name, (packages, how) in _demo_servers.SERVERS.items()
    )
    return (
        "--server runs the same check under a real server instead: its workers are\n"
        "recycled after a few requests, and it is stopped gracefully with SIGTERM.\n\n" + rows
    )


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="a pre-fork server's workers track events; verify exactly-once delivery",
        description=_DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--server",
        choices=("fork", *_demo_servers.SERVERS),
        default="fork",
        help="fork workers here (default), or run the check under that real server",
    )
    parser.add_argument(
        "--events",
        type=int,
        help="events over all workers (default 200000; 20000 under a real server)",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--threads", type=int, default=4, help="producer threads per worker (default 4)"
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    if arguments.events is None:
        arguments.events = 200_000 if arguments.server == "fork" else 20_000
    if min(arguments.events, arguments.workers, arguments.threads) < 1:
        raise SystemExit("segops-fast demo: --events, --workers and --threads must be >= 1")
    if arguments.server != "fork":
        return _demo_servers.run(arguments.server, arguments.events, arguments.workers)
    with IngestServerProcess() as server:
        client = SegOpsClient(server.url, DEFAULT_SECRET_KEY)
        for index in range(MASTER_EVENTS):
            client.track(user_id="master", event_type="master", payload={"i": index})
        began = time.perf_counter()
        workers = [
            _fork_worker(client, number, start, count, arguments.threads)
            for number, (start, count) in enumerate(_split(arguments.events, arguments.workers))
        ]
        reports = [_collect(pid, reading_end) for pid, reading_end in workers]
        client.shutdown()
        elapsed = time.perf_counter() - began
        by_type = server.summary_by_event_type()
        summary = server.summary()
    return _print_table(arguments, reports, by_type, summary, elapsed)


def _fork_worker(
    client: SegOpsClient, number: int, start: int, count: int, threads: int
) -> tuple[int, int]:
    reading_end, writing_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking with threads running; forking with the
        # client's thread running is precisely what this demo shows to be safe.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid != 0:
        os.close(writing_end)
        return pid, reading_end
    code = 1
    try:
        os.close(reading_end)
        report = _work(client, number, start, count, threads)
        with os.fdopen(writing_end, "wb") as pipe:
            pipe.write(orjson.dumps(report))
        code = 0
    finally:
        # A worker never returns into the master's code.
        os._exit(code)


def _work(client: SegOpsClient, worker: int, start: int, count: int, threads: int) -> _WorkerReport:
    latencies: list[list[int]] = [[] for _ in range(threads)]
    producers = [
        threading.Thread(
            target=_produce, args=(client, f"worker-{worker}", first, share, latencies[n])
        )
        for n, (first, share) in enumerate(_split(count, threads))
    ]
    began = time.perf_counter()
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join()
    client.flush()
    seconds = time.perf_counter() - began
    merged = sorted(value for per_thread in latencies for value in per_thread)
    return _WorkerReport(os.getpid(), count, seconds, merged)


def _produce(
    client: SegOpsClient, event_type: str, start: int, count: int, latencies: list[int]
) -> None:
    clock = time.perf_counter_ns
    track = client.track
    record = latencies.append
    for index in range(start, start + count):
        payload = {"path": "/home", "i": index}
        began = clock()
        track(user_id=f"user-{index % 1000}", event_type=event_type, payload=payload)
        record(clock() - began)


def _collect(pid: int, reading_end: int) -> _WorkerReport | None:
    with os.fdopen(reading_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        return None
    return _WorkerReport(**orjson.loads(data))


def _print_table(
    arguments: argparse.Namespace,
    reports: list[_WorkerReport | None],
    by_type: dict[str, dict[str, int]],
    summary: dict[str, int],
    elapsed: float,
) -> int:
    header = ["process", "pid", "tracked", "delivered", "duplicates", "lost", "p50", "p99"]
    rows = [header]
    master = by_type.get("master", {})
    rows.append(_row("master", os.getpid(), MASTER_EVENTS, master, []))
    for number, report in enumerate(reports):
        counts = by_type.get(f"worker-{number}", {})
        if report is None:
            unique, stored_twice = _counts(counts, 0)[:2]
            rows.append([f"worker {number}", "-", "-", unique, stored_twice, "-", "failed", "-"])
        else:
            rows.append(
                _row(f"worker {number}", report.pid, report.tracked, counts, report.latencies_ns)
            )
    tracked = arguments.events + MASTER_EVENTS
    lost = tracked - summary["unique_events"]
    duplicates = summary["duplicate_events"]
    all_latencies = sorted(v for report in reports if report for v in report.latencies_ns)
    totals = {"unique_events": summary["unique_events"], "duplicate_events": duplicates}
    rows.append(_row("all", "", tracked, totals, all_latencies))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    print(
        f"\n{arguments.workers} workers x {arguments.threads} threads; "
        f"{summary['requests']:,} requests; "
        f"{summary['unique_events'] / elapsed:,.0f} delivered events/s "
        f"(first fork to the master's shutdown, {elapsed:.2f} s); "
        "p50/p99: track() timed per call"
    )
    exactly_once = lost == 0 and duplicates == 0 and all(reports)
    print("exactly once: yes" if exactly_once else "exactly once: NO")
    return 0 if exactly_once else 1


def _row(
    name: str, pid: int | str, tracked: int, counts: dict[str, int], latencies: list[int]
) -> list[str]:
    return [
        name,
        str(pid),
        f"{tracked:,}",
        *_counts(counts, tracked),
        _microseconds(latencies, 0.50),
        _microseconds(latencies, 0.99),
    ]


def _counts(counts: dict[str, int], tracked: int) -> tuple[str, str, str]:
    unique = counts.get("unique_events", 0)
    return f"{unique:,}", f"{counts.get('duplicate_events', 0):,}", f"{tracked - unique:,}"


def _microseconds(sorted_values: list[int], fraction: float) -> str:
    if not sorted_values:
        return "-"
    value = sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]
    return f"{value / 1000:.2f} us"


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
