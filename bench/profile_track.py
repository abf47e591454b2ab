"""Where the CPU goes while one thread calls track() as fast as it can.

    python bench/profile_track.py        # about 20 seconds; prints a table

This is the latency pass of ``compare.py`` for segops_fast, run in this process with the
same CPU placement (the server on a CPU of its own, this process on the others). It runs
in two settings:

* delivering: default settings, so the flusher and its senders work while track() runs;
* idle: nothing is sent until the loop ends (``batch_size`` above the event count, an
  hour's ``flush_interval``), so track() runs alone.

First it times, with ``timeit``, track() as a whole (nothing sent) and each step it
takes alone, so that what the interpreter adds around them shows. Then, for each
setting, it prints track()'s mean and p50 (timer included, as in the comparison),
the loop's wall time per event, and the CPU time per event of each of this process's
threads and of the server process, read from ``/proc`` (so Linux only).

The difference between the two settings is what delivering costs the producer. With the
GIL, every microsecond that the flusher's threads spend running Python is a microsecond
the producer waits, however many cores there are.

Each figure is the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import timeit
from collections import deque
from typing import Any

import orjson
from harness.clients import BUILDERS, NO_OP, keywords
from harness.placement import describe, on_cpus, server_and_client_cpus
from harness.proc_usage import cpu_seconds_by_thread, process_cpu_seconds
from harness.timing import latency_figures, payloads, time_each_call

import segops_fast
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

#: The rows of the table: a figure's key, and how the table names it.
_ROWS = (
    ("mean_us", "track() mean, timer included (us)"),
    ("p50_us", "track() p50, timer included (us)"),
    ("loop_us", "loop wall time per event (us)"),
    ("producer_us", "CPU per event: the producer thread (us)"),
    ("flusher_us", "CPU per event: the flusher thread (us)"),
    ("senders_us", "CPU per event: the sender threads (us)"),
    ("server_us", "CPU per event: the server process (us)"),
)


_PAYLOAD = {"path": "/home", "i": 1}
_FIELDS = {"user_id": "user-1", "event_type": "profile", "payload": _PAYLOAD}
_ENCODED = orjson.dumps(_FIELDS)


def _steps(client: segops_fast.SegOpsClient) -> list[tuple[str, Any]]:
    """track() whole, then each step it takes, as (what, callable) pairs."""
    queue: deque[Any] = deque()
    record = (1, _ENCODED[1:])
    empty = BUILDERS[NO_OP]("").track
    return [
        ("track(user_id=..., event_type=..., payload=...)",
         lambda: client.track(user_id="user-1", event_type="profile", payload=_PAYLOAD)),
        ("an empty function of track()'s signature, called the same way",
         lambda: empty(user_id="user-1", event_type="profile", payload=_PAYLOAD)),
        ("the dict of fields", lambda: {"user_id": "user-1", "event_type": "profile",
                                        "payload": _PAYLOAD}),
        ("orjson.dumps of it", lambda: orjson.dumps(_FIELDS)),
        ("the slice after the opening brace", lambda: _ENCODED[1:]),
        ("the clock, time.time_ns()", time.time_ns),
        ("the record appended to a deque", lambda: queue.append(record)),
        ("a lambda that does nothing (subtracted from every row)", lambda: None),
    ]  # fmt: skip


def _time_steps(url: str, repeats: int) -> list[tuple[str, float]]:
    """Nanoseconds per call of each step, the best of ``repeats``, less the empty lambda's."""
    client = segops_fast.SegOpsClient(
        url, DEFAULT_SECRET_KEY, batch_size=10**9, flush_interval=3600.0, max_queue_size=10**9
    )
    client.track(user_id="user-0", event_type="first")
    client.flush()
    number = 100_000
    best = [
        (what, min(timeit.repeat(step, number=number, repeat=repeats)) / number * 1e9)
        for what, step in _steps(client)
    ]
    client.shutdown()
    overhead = best[-1][1]
    return [(what, nanoseconds - overhead) for what, nanoseconds in best[:-1]]


def _cpu_by_role(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of the producer, the flusher, the senders and the server."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    seconds = dict.fromkeys(("producer_us", "flusher_us", "senders_us"), 0.0)
    for thread, used in cpu_seconds_by_thread(os.getpid()).items():
        name = names.get(thread, "")
        if name == "MainThread":
            role = "producer_us"
        elif name == "segops-fast-flusher":
            role = "flusher_us"
        elif name.startswith("segops-fast-sender"):
            role = "senders_us"
        else:
            continue
        seconds[role] += used
    seconds["server_us"] = process_cpu_seconds(server_pid)
    return seconds


def _round(server: IngestServerProcess, events: int, *, delivering: bool) -> dict[str, float]:
    options: dict[str, Any] = (
        {} if delivering else {"batch_size": events + 1, "flush_interval": 3600.0,
                               "max_queue_size": 2 * events}
    )  # fmt: skip
    client = segops_fast.SegOpsClient(server.url, DEFAULT_SECRET_KEY, **options)
    # The first event starts the threads: all of them exist before the clock starts.
    client.track(user_id="user-0", event_type="first")
    client.flush()
    calls = payloads("profile", events, keywords)
    before = _cpu_by_role(server.pid)
    began = time.perf_counter()
    durations = time_each_call(client.track, calls)
    result = {"loop_us": (time.perf_counter() - began) / events * 1e6}
    after = _cpu_by_role(server.pid)
    client.shutdown()
    result.update(latency_figures(durations))
    for role, seconds in after.items():
        result[role] = (seconds - before[role]) / events * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each setting")
    arguments = parser.parse_args()
    server_cpus, client_cpus = server_and_client_cpus()
    with on_cpus(server_cpus):
        server = IngestServerProcess().start()
    settings = {"delivering": True, "idle": False}
    rounds: dict[str, list[dict[str, float]]] = {setting: [] for setting in settings}
    try:
        with on_cpus(client_cpus):
            steps = _time_steps(server.url, arguments.rounds)
            for _ in range(arguments.rounds):
                for setting, delivering in settings.items():
                    server.reset()
                    rounds[setting].append(_round(server, arguments.events, delivering=delivering))
    finally:
        server.stop()
    print(f"track() and its steps alone (timeit, best of {arguments.rounds}, ns per call):\n")
    for what, nanoseconds in steps:
        print(f"{nanoseconds:8.0f}  {what}")
    print(
        f"\ntrack() in a tight loop, {arguments.events:,} events, one producer thread,"
        f" {describe(server_cpus, client_cpus)}; medians of {arguments.rounds} rounds.\n"
    )
    print(f"{'':42} {'delivering':>11} {'idle':>11} {'difference':>11}")
    for key, label in _ROWS:
        delivering, idle = (statistics.median(r[key] for r in rounds[s]) for s in settings)
        print(f"{label:42} {delivering:11.2f} {idle:11.2f} {delivering - idle:+11.2f}")


if __name__ == "__main__":
    main()
