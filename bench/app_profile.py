"""Where segops_fast's cost goes inside a web app: per thread, and per step of delivery.

    python bench/app_profile.py                 # about 4 minutes; writes results/app_profile.md
    python bench/app_profile.py --server gunicorn-gthread --events-per-request 1

Runs three rows of ``bench/app_overhead.py`` (none, essence, segops_fast), and
segops_fast holding every event until it exits (so that its flusher does nothing while
measured), in one app server each, started together, and gives them load in turns
(``--rounds`` windows of ``--seconds`` each, the same placement, wrk at a real-time
priority). For each window it reads every thread's CPU time from ``/proc``, and reports
per request, as medians of the windows:

* the app's threads (for the sync worker, its one thread: the app and every track()
  call), against ``none``'s and ``essence``'s;
* segops_fast's own threads: the flusher, and the senders if any started.

The segops_fast worker also counts, in its own process, the CPU time of each step of
delivery (``bench/apps/flusher_profile.py``): taking events from the buffer, cutting
them into batches, rendering the bodies, and the request itself (urllib3 and the
socket). Those are reported per event and per request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import orjson
from apps.tracking import ESSENCE, FLUSHER_PROFILE_VARIABLE, NONE, SEGOPS_FAST_HELD
from harness import wrk
from harness.app_servers import SERVERS, RunningApp
from harness.clients import SEGOPS_FAST
from harness.load import settle, take_turns, warm_apps
from harness.placement import describe, on_cpus, server_and_client_cpus
from harness.proc_usage import cpu_seconds_by_thread
from harness.results import RESULTS, preformatted, write_results

from segops_fast.testing import IngestServerProcess

ROWS = (NONE, ESSENCE, SEGOPS_FAST, SEGOPS_FAST_HELD)
WARMUP_SECONDS = 1.0


def _window(app: RunningApp, seconds: float) -> dict[str, Any]:
    """The requests of one window, and the CPU time each thread of the worker used."""
    before = cpu_seconds_by_thread(app.worker_pid)
    load = wrk.run(app.url + "/", seconds)
    settle(app.worker_pid)
    after = cpu_seconds_by_thread(app.worker_pid)
    return {
        "requests": load.requests,
        "requests_per_second": load.requests_per_second,
        "threads": {thread: used - before.get(thread, 0.0) for thread, used in after.items()},
    }


def _per_request(window: dict[str, Any], client_threads: set[int]) -> dict[str, float]:
    """CPU per request of the app's threads and of segops_fast's, in one window."""
    threads = window["threads"]
    client = sum(used for thread, used in threads.items() if thread in client_threads)
    per_request = 1e6 / max(1, window["requests"])
    return {
        "requests_per_second": window["requests_per_second"],
        "app_us": (sum(threads.values()) - client) * per_request,
        "client_us": client * per_request,
    }


def measure(server: str, events_per_request: int, seconds: float, rounds: int) -> dict[str, Any]:
    ingest_cpus, app_cpus = server_and_client_cpus()
    with tempfile.TemporaryDirectory() as scratch:
        profile = Path(scratch) / "flusher_profile.json"
        os.environ[FLUSHER_PROFILE_VARIABLE] = str(profile)
        with on_cpus(ingest_cpus), IngestServerProcess() as ingest:
            ingest_urls = dict.fromkeys(ROWS, ingest.url)
            with warm_apps(
                SERVERS[server], ingest_urls, events_per_request, WARMUP_SECONDS, app_cpus
            ) as apps:
                windows = take_turns(
                    apps,
                    rounds,
                    lambda app: _window(app, seconds),
                    f"{server} {events_per_request}/request",
                )
                for app in apps.values():
                    app.stop()
        steps = orjson.loads(profile.read_bytes())
    client_threads = set(steps["threads"])
    medians = {}
    for row, measured in windows.items():
        per_request = [_per_request(window, client_threads) for window in measured]
        medians[row] = {
            key: statistics.median(window[key] for window in per_request) for key in per_request[0]
        }
    return {
        "server": server,
        "events_per_request": events_per_request,
        "rounds": rounds,
        "seconds": seconds,
        "placement": describe(ingest_cpus, app_cpus).replace("clients", "app servers"),
        "rows": medians,
        "steps": steps,
    }


def report(results: dict[str, Any]) -> str:
    rows, steps = results["rows"], results["steps"]
    n = results["events_per_request"]
    none = rows[NONE]

    def line(label: str, value: Callable[[dict[str, float]], str], columns: tuple[str, ...]) -> str:
        return f"{label:38s}" + "".join(
            f"{value(rows[row]) if row in columns else '-':>18s}" for row in ROWS
        )

    lines = [
        f"{results['server']}, {n} event{'s' if n > 1 else ''} per request; windows of"
        f" {results['seconds']:g} s in turns, medians of {results['rounds']} rounds;"
        f" {results['placement']}. {SEGOPS_FAST_HELD!r} sends nothing until it exits.",
        "",
        f"{'CPU per request (us)':38s}" + "".join(f"{row:>18s}" for row in ROWS),
        line("the app's threads (app and track())", lambda row: f"{row['app_us']:.1f}", ROWS),
        line(
            "segops_fast's threads (delivery)",
            lambda row: f"{row['client_us']:.1f}",
            (SEGOPS_FAST,),
        ),
        line(
            "more than none, in all",
            lambda row: f"{row['app_us'] + row['client_us'] - none['app_us']:+.1f}",
            ROWS[1:],
        ),
        line("requests/s", lambda row: f"{row['requests_per_second']:,.0f}", ROWS),
    ]
    events, requests = steps["events"], steps["requests"]
    if events and requests:
        request_path = steps["attempt"] - steps["render"]
        lines += [
            "",
            f"segops_fast's delivery, step by step, in the worker ({events:,} events in"
            f" {steps['cycles']:,} cycles, {requests:,} requests; thread CPU time):",
            "",
            f"take the waiting events from the buffer   {steps['take'] / events:6.0f} ns/event",
            f"cut them into batches                     {steps['cut'] / events:6.0f} ns/event",
            f"render each body (timestamps, join)       {steps['render'] / events:6.0f} ns/event",
            f"send it (urllib3, the socket, the answer) {request_path / events:6.0f} ns/event"
            f"  ({request_path / requests / 1000:,.0f} us/request)",
            f"all four                                  "
            f"{(steps['take'] + steps['cut'] + steps['attempt']) / events:6.0f} ns/event",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The steps are written at the worker's exit, which uvicorn's worker skips.
    parser.add_argument(
        "--server", default="gunicorn-sync", choices=["gunicorn-sync", "gunicorn-gthread"]
    )
    parser.add_argument("--events-per-request", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=4.0, help="load per window")
    parser.add_argument("--rounds", type=int, default=10, help="windows of every row")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    arguments = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed (apt install wrk)")
    results = measure(
        arguments.server, arguments.events_per_request, arguments.seconds, arguments.rounds
    )
    write_results(arguments.out, "app_profile", preformatted(report(results)))


if __name__ == "__main__":
    main()
