"""Soak: mixed faults at load, for minutes, from several processes and threads.

One LocalIngestServer runs in this process. ``--processes`` producer processes (spawned)
each run ``--threads`` threads that track ``--rate`` events/s between them, every event
distinct, through one client per process with default settings except a 1 s timeout.
Meanwhile, once a second, this process scripts a random fault into the server: 500, 502,
503 or 429 answers (some with Retry-After), resets before the body and after the batch
was stored, a hang longer than the timeout, latency, or an outage of 1 to 3 s (stop and
restart on the same port). Faults stop 10 s before the end, so that retries can finish.
At the end every producer shuts its client down and reports its stats.

    python bench/soak.py --seconds 300

The server keeps every event it stores as a dict, about 2 KB each with the exactly-once
check at the end: 1.5 million events (the defaults) need about 3 GB of memory.

It prints what was tracked, sent, dropped and failed, what the server stored twice, and
what was lost: events tracked that the server did not store and that were not handed
to ``on_drop`` either, checked event by event. It also checks the invariant that the
server's distinct events are exactly the events counted ``sent``: none given up was
stored after all. Exit status 1 if anything was lost or stored twice, or that check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import segops_fast as segops
from segops_fast.testing import LocalIngestServer

QUIET_END_SECONDS = 10


@dataclass(frozen=True)
class Load:
    threads: int
    #: Events per second from one process.
    rate: int
    seconds: float


def produce(url: str, process: int, load: Load, results: Any) -> None:
    threads = load.threads
    given_up: list[tuple[int, int, str]] = []

    def on_drop(events: list[dict[str, Any]], reason: str) -> None:
        given_up.extend(
            (event["payload"]["thread"], event["payload"]["i"], reason) for event in events
        )

    client = segops.SegOpsClient(
        url, "sk_test_local", timeout=1.0, on_error=lambda error: None, on_drop=on_drop
    )
    stop_at = time.monotonic() + load.seconds
    tracked = [0] * threads

    def run(thread: int) -> None:
        began = time.monotonic()
        per_thread = load.rate / threads
        while time.monotonic() < stop_at:
            for _ in range(100):
                client.track(
                    user_id=f"p{process}-t{thread}",
                    event_type="soak",
                    payload={"process": process, "thread": thread, "i": tracked[thread]},
                )
                tracked[thread] += 1
            ahead = tracked[thread] / per_thread - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # Whatever shutdown() raises about is counted in the stats below.
    with contextlib.suppress(segops.SegOpsApiError):
        client.shutdown(timeout=60)
    stats = client.stats()
    results.put({"process": process, "per_thread": tracked, "given_up": given_up, **stats.__dict__})


def inject_faults(server: LocalIngestServer, until: float, log: dict[str, int]) -> None:
    chooser = random.Random(1)
    while time.monotonic() < until:
        time.sleep(1.0)
        fault = chooser.choice(
            ["status", "status", "retry_after", "reset_before_body", "reset_after_store",
             "hang", "latency", "outage", "none"]
        )  # fmt: skip
        log[fault] = log.get(fault, 0) + 1
        if fault == "status":
            server.faults.respond_with(chooser.choice([500, 502, 503, 429]), count=3)
        elif fault == "retry_after":
            server.faults.respond_with(429, count=2, retry_after="1")
        elif fault == "reset_before_body":
            server.faults.reset_before_body(count=2)
        elif fault == "reset_after_store":
            server.faults.reset_after_store(count=2)
        elif fault == "hang":
            server.faults.hang(1.5)
        elif fault == "latency":
            server.faults.latency = 0.0 if server.faults.latency else 0.02
        elif fault == "outage":
            server.stop()
            time.sleep(chooser.uniform(1.0, 3.0))
            server.start()
    server.faults.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="duration (default 300)")
    parser.add_argument("--processes", type=int, default=2, help="producer processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per process")
    parser.add_argument("--rate", type=int, default=2_500, help="events/s per process")
    arguments = parser.parse_args()
    load = Load(arguments.threads, arguments.rate, arguments.seconds)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with LocalIngestServer() as server:
        producers = [
            context.Process(
                target=produce,
                args=(server.url, n, load, results),
            )
            for n in range(arguments.processes)
        ]
        began = time.monotonic()
        for producer in producers:
            producer.start()
        faults: dict[str, int] = {}
        inject_faults(server, began + arguments.seconds - QUIET_END_SECONDS, faults)
        reports = [results.get(timeout=arguments.seconds + 300) for _ in producers]
        for producer in producers:
            producer.join()
        summary = server.summary()
        stored = {
            (event["payload"]["process"], event["payload"]["thread"], event["payload"]["i"])
            for event in server.events
        }
    counted = ("sent", "dropped", "failed", "retried")
    totals = {key: sum(report[key] for report in reports) for key in counted}
    totals["tracked"] = sum(sum(report["per_thread"]) for report in reports)
    given_up = {
        (report["process"], thread, number): reason
        for report in reports
        for thread, number, reason in report["given_up"]
    }
    given_up_yet_stored = len(given_up.keys() & stored)
    stored_as_sent = len(stored) == totals["sent"] and given_up_yet_stored == 0
    lost = sum(
        1
        for report in reports
        for thread, count in enumerate(report["per_thread"])
        for number in range(count)
        if (report["process"], thread, number) not in stored
        and (report["process"], thread, number) not in given_up
    )
    reasons: dict[str, int] = {}
    for reason in given_up.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    rows = [
        ("duration", f"{arguments.seconds:.0f} s, {arguments.processes} processes x "
                     f"{arguments.threads} threads, {arguments.rate:,} events/s each"),
        ("faults injected", ", ".join(f"{name} {count}" for name, count in sorted(faults.items()))),
        ("events tracked", f"{totals['tracked']:,}"),
        ("sent (acknowledged)", f"{totals['sent']:,}"),
        ("stored by the server (distinct)", f"{summary['unique_events']:,}"),
        ("dropped (counted)", f"{totals['dropped']:,}"),
        ("failed (counted)", f"{totals['failed']:,}"),
        ("handed to on_drop, by reason", ", ".join(
            f"{reason} {count:,}" for reason, count in sorted(reasons.items())) or "none"),
        ("  of which the server had stored", f"{given_up_yet_stored:,}"),
        ("stored = sent", "yes" if stored_as_sent else "NO"),
        ("requests retried", f"{totals['retried']:,}"),
        ("retries the server deduplicated", f"{summary['repeated_key_requests']:,}"),
        ("duplicates (stored twice)", f"{summary['duplicate_events']:,}"),
        ("lost (tracked, not stored, not counted)", f"{lost:,}"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    ok = lost == 0 and summary["duplicate_events"] == 0 and stored_as_sent
    verdict = "yes" if ok else "NO"
    print(f"zero lost, zero duplicated, stored exactly what was sent: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
