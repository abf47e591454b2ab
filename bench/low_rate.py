"""What a client costs when events are rare: CPU per event and wake-ups at a steady pace.

    pip install -e ".[dev,bench]"
    python bench/low_rate.py          # about 4 minutes; writes bench/results/low_rate.{json,md}
    python bench/low_rate.py --seconds 5 --idle-seconds 15 --clients segops_fast

Each measurement runs in a fresh process, on the clients' CPU (the LocalIngestServer has
the other one; see ``bench/harness/placement.py``), with the client's own default settings. The
process creates the client, tracks one event and flushes (so that every thread the
client starts is running), waits a second for those threads to settle, then, for the
measured window:

* paced: tracks ``--rates`` events per second (100 and 1,000 by default) for
  ``--seconds``, sleeping until each event is due;
* idle: tracks nothing for ``--idle-seconds``.

The no-op floor (``bench/harness/clients.py``) runs the same loop as the baseline. Reported:

* CPU per event, whole process minus the baseline's: what the client adds, track()
  on the caller's thread included (``time.process_time``);
* CPU per event of the client's own threads: every thread but the main one, which is
  all the client's (the process starts no other). Read with each thread's CPU clock
  (``pthread_getcpuclockid``), to the nanosecond: ``/proc``'s ticks are 10 ms, as much
  as a 20 s window's whole budget at 3 us per event and 1,000 events/s divided by 6;
* wake-ups per second of the client's threads: voluntary plus involuntary context
  switches, from ``/proc/self/task/TID/status``.

The targets of the performance issue: idle, segops_fast's threads wake at most once per
``flush_interval``; at 1,000 events/s, segops_fast costs at most 3 us of CPU per event.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
from harness.clients import BUILDERS, NO_OP, SEGOPS_FAST, Client, run_fresh
from harness.placement import describe, on_cpus, server_and_client_cpus
from harness.proc_usage import context_switches
from harness.results import RESULTS, write_results

import segops_fast
from segops_fast.testing import IngestServerProcess
from segops_fast.testing._app_servers import started

PACED, IDLE = "paced", "idle"
#: The measured clients' short names on the command line, and the rows they make.
CLIENT_NAMES = {
    "segops_fast": SEGOPS_FAST,
    "segops": "segops 0.2.2",
    "segment": "segment-analytics-python 2.4.0",
    "posthog": "posthog 7.91.1",
}
BASELINE = NO_OP
#: After the first event is flushed, before the window opens: the threads that delivered
#: it go back to waiting, so that their last switches are not counted as idle wake-ups.
SETTLE_SECONDS = 1.0
MAX_US_PER_EVENT_AT_1000 = 3.0
FLUSH_INTERVAL: float = (
    inspect.signature(segops_fast.SegOpsClient).parameters["flush_interval"].default
)


# -- what runs in each fresh process --------------------------------------------------------


def _thread_usage() -> dict[int, dict[str, Any]]:
    """CPU nanoseconds and context switches so far of each thread but the main one."""
    usage = {}
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            usage[thread.native_id or 0] = {
                "name": thread.name,
                "cpu_ns": time.clock_gettime_ns(clock),
                "switches": context_switches(Path(f"/proc/self/task/{thread.native_id}/status")),
            }
        except (OSError, FileNotFoundError):
            continue  # the thread ended while we looked
    return usage


def _pace(client: Client, rate: int, seconds: float) -> int:
    """``rate`` events per second for ``seconds``, each sent when due; how many were sent."""
    send, clock = client.send, time.perf_counter
    count = round(rate * seconds)
    began = clock()
    for number in range(count):
        # Due times from the start, not from the last event: a late event is not carried
        # into the next one's delay, so the pace holds on average.
        delay = began + number / rate - clock()
        if delay > 0:
            time.sleep(delay)
        send(f"user-{number % 1000}", "paced", {"path": "/home", "i": number})
    return count


def measure(mode: str, name: str, url: str, rate: int, seconds: float) -> dict[str, Any]:
    client = BUILDERS[name](url)
    client.send("user-0", "first", {"path": "/home", "i": -1})
    client.flush()
    time.sleep(SETTLE_SECONDS)
    threads_before = _thread_usage()
    cpu_before = time.process_time_ns()
    began = time.perf_counter()
    if mode == PACED:
        events = _pace(client, rate, seconds)
    else:
        time.sleep(seconds)
        events = 0
    wall = time.perf_counter() - began
    cpu = time.process_time_ns() - cpu_before
    threads_after = _thread_usage()
    client.shutdown()
    threads = {}
    for native_id, after in threads_after.items():
        before = threads_before.get(native_id, {"cpu_ns": 0, "switches": 0})
        threads[f"{after['name']} ({native_id})"] = {
            "cpu_ns": after["cpu_ns"] - before["cpu_ns"],
            "switches": after["switches"] - before["switches"],
        }
    return {
        "events": events,
        "wall_seconds": wall,
        "process_cpu_ns": cpu,
        "threads": threads,
        # A thread that ended within the window took its CPU time and switches with it.
        "threads_ended": sorted(
            before["name"]
            for native_id, before in threads_before.items()
            if native_id not in threads_after
        ),
    }


# -- the parent: the server, a process per measurement, the report ----------------------------


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """Totals over the client's threads, and its segops_fast roles where it has them."""
    threads = result["threads"]
    cpu_ns = sum(thread["cpu_ns"] for thread in threads.values())
    switches = sum(thread["switches"] for thread in threads.values())
    return {
        **{key: result[key] for key in ("events", "wall_seconds", "process_cpu_ns")},
        "thread_count": len(threads),
        "threads_cpu_ns": cpu_ns,
        "wakeups_per_second": switches / result["wall_seconds"],
        "wakeups": switches,
        "threads_ended": result["threads_ended"],
        "threads": threads,
    }


def _paced_round(
    server: IngestServerProcess, name: str, rate: int, seconds: float
) -> dict[str, Any]:
    server.reset()
    result = _summary(run_fresh(__file__, "--measure", PACED, name, server.url, rate, seconds,
                                timeout=seconds + 120))  # fmt: skip
    result["stored"] = server.summary_by_event_type().get("paced", {}).get("unique_events", 0)
    return result


def _idle_together(
    server: IngestServerProcess, names: list[str], seconds: float
) -> dict[str, dict[str, Any]]:
    """Every client's idle window at once: idle processes barely compete for the CPU, and
    a minute each, one after the other, would be minutes of nothing."""
    with ExitStack() as stack:
        children = {
            name: stack.enter_context(
                started(
                    [sys.executable, __file__, "--measure", IDLE, name, server.url, "0",
                     str(seconds)],
                    stdout=subprocess.PIPE,
                )
            )
            for name in names
        }  # fmt: skip
        results = {}
        for name, child in children.items():
            output, _ = child.popen.communicate(timeout=seconds + 120)
            if child.popen.returncode != 0:
                raise SystemExit(f"idle {name}: exit status {child.popen.returncode}")
            results[name] = _summary(orjson.loads(output.splitlines()[-1]))
    return results


def run(
    clients: list[str], rates: list[int], seconds: float, idle_seconds: float, rounds: int
) -> dict[str, Any]:
    server_cpus, client_cpus = server_and_client_cpus()
    names = [BASELINE, *clients]
    paced: dict[str, dict[str, list[dict[str, Any]]]] = {
        str(rate): {name: [] for name in names} for rate in rates
    }
    with on_cpus(server_cpus):
        server = IngestServerProcess().start()
    try:
        with on_cpus(client_cpus):
            idle = _idle_together(server, names, idle_seconds) if idle_seconds > 0 else {}
            for round_number in range(rounds):
                for rate in rates:
                    shift = round_number % len(names)
                    for name in names[shift:] + names[:shift]:
                        result = _paced_round(server, name, rate, seconds)
                        paced[str(rate)][name].append(result)
                        print(f"round {round_number + 1}/{rounds} {rate}/s {name}: "
                              f"{result['process_cpu_ns'] / 1e6:.0f} ms CPU",
                              file=sys.stderr, flush=True)  # fmt: skip
    finally:
        server.stop()
    return {
        "seconds": seconds,
        "idle_seconds": idle_seconds,
        "rounds": rounds,
        "flush_interval": FLUSH_INTERVAL,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "placement": describe(server_cpus, client_cpus),
        "idle": idle,
        "paced": {
            rate: {name: _paced_medians(by_name[name], by_name[BASELINE]) for name in names}
            for rate, by_name in paced.items()
        },
    }


def _paced_medians(rounds: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """Per event, the medians over rounds; the baseline of the same round subtracted."""
    extra_us = [
        (result["process_cpu_ns"] - base["process_cpu_ns"]) / result["events"] / 1000
        for result, base in zip(rounds, baseline)
    ]
    return {
        "process_cpu_us_per_event": statistics.median(
            r["process_cpu_ns"] / r["events"] / 1000 for r in rounds
        ),
        "client_cpu_us_per_event": statistics.median(extra_us),
        "threads_cpu_us_per_event": statistics.median(
            r["threads_cpu_ns"] / r["events"] / 1000 for r in rounds
        ),
        "wakeups_per_second": statistics.median(r["wakeups_per_second"] for r in rounds),
        "thread_count": max(r["thread_count"] for r in rounds),
        "events": sum(r["events"] for r in rounds),
        "stored": sum(r["stored"] for r in rounds),
        "threads_ended": sorted({name for r in rounds for name in r["threads_ended"]}),
        "rounds": rounds,
    }


def _row_name(name: str) -> str:
    return "pacing loop alone (baseline)" if name == BASELINE else name


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    outcomes: list[tuple[str, str, bool | None]] = []
    idle = results["idle"].get(SEGOPS_FAST)
    # A timer of period P fires floor(T/P) or ceil(T/P) times in a window of T, by phase.
    allowed = math.ceil(results["idle_seconds"] / results["flush_interval"])
    outcomes.append(
        (
            f"idle: segops_fast's threads wake at most once per flush_interval"
            f" ({results['flush_interval']:g} s)",
            "-"
            if idle is None
            else f"{idle['wakeups']} in {results['idle_seconds']:g} s (at most {allowed:.0f})",
            None if idle is None else idle["wakeups"] <= allowed,
        )
    )
    fast = results["paced"].get("1000", {}).get(SEGOPS_FAST)
    outcomes.append(
        (
            f"1,000 events/s: segops_fast costs at most {MAX_US_PER_EVENT_AT_1000:g} us"
            " of CPU per event (process minus baseline)",
            "-"
            if fast is None
            else f"{fast['client_cpu_us_per_event']:.2f} us"
            f" (its threads alone: {fast['threads_cpu_us_per_event']:.2f} us)",
            None if fast is None else fast["client_cpu_us_per_event"] <= MAX_US_PER_EVENT_AT_1000,
        )
    )
    return outcomes


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Default settings, one process per measurement, Python {results['python']},"
        f" {results['cpus']} CPUs, {results['placement']}; paced windows of"
        f" {results['seconds']:g} s, medians of {results['rounds']} rounds; idle window"
        f" {results['idle_seconds']:g} s.",
        "",
        "| client | events/s | CPU per event, process | client CPU per event (minus baseline)"
        " | client threads' CPU per event | client threads' wake-ups/s | threads"
        " | events stored / tracked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate, by_name in results["paced"].items():
        for name, row in by_name.items():
            baseline = name == BASELINE
            lines.append(
                f"| {_row_name(name)} | {int(rate):,} | {row['process_cpu_us_per_event']:.2f} us"
                f" | {'-' if baseline else format(row['client_cpu_us_per_event'], '.2f') + ' us'}"
                f" | {row['threads_cpu_us_per_event']:.2f} us"
                f" | {row['wakeups_per_second']:.1f} | {row['thread_count']}"
                f" | {'-' if baseline else format(row['stored'], ',') + ' / '}"
                f"{'' if baseline else format(row['events'], ',')} |"
            )
    if results["idle"]:
        lines += [
            "",
            f"Idle for {results['idle_seconds']:g} s after one event, tracked and flushed"
            " (all clients at once, each in its own process):",
            "",
            "| client | threads | wake-ups | wake-ups/s | CPU of its threads | per thread |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in results["idle"].items():
            per_thread = ", ".join(
                f"{thread.split(' (')[0]}: {usage['switches']}"
                for thread, usage in row["threads"].items()
            )
            lines.append(
                f"| {_row_name(name)} | {row['thread_count']} | {row['wakeups']}"
                f" | {row['wakeups_per_second']:.2f} | {row['threads_cpu_ns'] / 1e6:.2f} ms"
                f" | {per_thread or '-'} |"
            )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for target, measured, met in targets(results):
        verdict = "not measured" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="paced window")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (0: none)")
    parser.add_argument("--rates", default="100,1000", help="events/s, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each paced measurement")
    parser.add_argument(
        "--clients", default=",".join(CLIENT_NAMES), help=f"of: {', '.join(CLIENT_NAMES)}"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    arguments = parser.parse_args()
    unknown = set(arguments.clients.split(",")) - set(CLIENT_NAMES)
    if unknown:
        raise SystemExit(f"unknown clients {sorted(unknown)}; choose from {list(CLIENT_NAMES)}")
    clients = [CLIENT_NAMES[short] for short in arguments.clients.split(",")]
    # SIGTERM ends this script as Ctrl-C does: through every finally, ending each child.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    results = run(
        clients,
        [int(rate) for rate in arguments.rates.split(",")],
        arguments.seconds,
        arguments.idle_seconds,
        arguments.rounds,
    )
    write_results(arguments.out, "low_rate", markdown(results), results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        mode, name, url, rate, seconds = sys.argv[2:7]
        print(orjson.dumps(measure(mode, name, url, int(rate), float(seconds))).decode())
    else:
        main()
