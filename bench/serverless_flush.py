"""What an invocation of a serverless function costs: flush_after against batch=False.

    python bench/serverless_flush.py                  # 300 invocations of 10 events each
    python bench/serverless_flush.py --invocations 1000 --events 10

The local ingest server runs in its own process (``segops-fast serve``). Each row is one
client, kept across invocations as a function instance keeps it; the rows take turns, an
invocation each, because this machine's speed drifts over seconds. Per invocation:

* ``flush_after``: ``events`` track() calls, then the flush at the end of the
  invocation (the figure the target is about: under 5 ms for 10 events);
* ``batch=False``: ``events`` track() calls, each a request on the caller's thread.

Printed: the median and 90th percentile of the wall time of each part, and the CPU time
of this process per invocation (all its threads: the flusher's work included).
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Callable

import segops_fast
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _track(client: segops_fast.SegOpsClient, events: int, invocation: int) -> None:
    for index in range(events):
        client.track(user_id=f"user-{invocation}", event_type="invoked", payload={"i": index})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=300, help="invocations per row")
    parser.add_argument("--events", type=int, default=10, help="events per invocation")
    arguments = parser.parse_args()
    count, events = arguments.invocations, arguments.events

    with IngestServerProcess() as server:
        batched = segops_fast.SegOpsClient(server.url, DEFAULT_SECRET_KEY)
        synchronous = segops_fast.SegOpsClient(server.url, DEFAULT_SECRET_KEY, batch=False)
        end_of_invocation = segops_fast.flush_after(batched)

        def invoke_batched(invocation: int) -> tuple[float, float]:
            began = time.perf_counter()
            with end_of_invocation:
                _track(batched, events, invocation)
                tracked = time.perf_counter()
            return tracked - began, time.perf_counter() - tracked

        def invoke_synchronous(invocation: int) -> tuple[float, float]:
            began = time.perf_counter()
            _track(synchronous, events, invocation)
            return time.perf_counter() - began, 0.0

        rows: dict[str, Callable[[int], tuple[float, float]]] = {
            "flush_after": invoke_batched,
            "batch=False": invoke_synchronous,
        }
        for invoke in rows.values():  # warm: connections open, code paths run once
            invoke(-1)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        cpu = dict.fromkeys(rows, 0.0)
        for invocation in range(count):
            for name, invoke in rows.items():
                cpu_before = _cpu_seconds()
                times[name].append(invoke(invocation))
                cpu[name] += _cpu_seconds() - cpu_before
        stats = {"flush_after": batched.stats(), "batch=False": synchronous.stats()}
        batched.shutdown()
        synchronous.shutdown()
        stored = server.summary()["events"]

    def milliseconds(values: list[float], fraction: float) -> str:
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000:7.3f}"

    print(f"{count} invocations of {events} events per row, in turns; times in ms")
    print(f"{'row':12} {'track p50':>10} {'track p90':>10} {'flush p50':>10} {'flush p90':>10} "
          f"{'whole p50':>10} {'CPU/inv':>8} {'requests':>9}")  # fmt: skip
    for name, pairs in times.items():
        tracking = [pair[0] for pair in pairs]
        flushing = [pair[1] for pair in pairs]
        whole = [sum(pair) for pair in pairs]
        print(
            f"{name:12} {milliseconds(tracking, 0.5):>10} {milliseconds(tracking, 0.9):>10} "
            f"{milliseconds(flushing, 0.5):>10} {milliseconds(flushing, 0.9):>10} "
            f"{milliseconds(whole, 0.5):>10} {cpu[name] / count * 1000:8.3f} "
            f"{stats[name].batches:9d}"
        )
    print(f"stored by the server: {stored} of {2 * (count + 1) * events} events tracked")


if __name__ == "__main__":
    main()
