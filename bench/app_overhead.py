"""What an analytics client costs a real web app: requests/s and latency under HTTP load.

    pip install -e ".[dev,bench]" uvicorn     # and wrk (apt install wrk)
    python bench/app_overhead.py              # about 15 minutes; writes results/app_overhead.*
    python bench/app_overhead.py --rounds 2 --servers uvicorn --rows segops_fast

Real servers, one worker each: gunicorn's sync worker, gunicorn's gthread worker (4
threads) and uvicorn (``bench/harness/app_servers.py``). Each serves a minimal app
(``bench/apps/``) that answers ``ok`` after tracking N events per request (N = 1 and 10)
through one row's client, with that client's own default settings. The rows
(``bench/apps/tracking.py``): ``none`` (no analytics), ``floor`` (an empty function of
track()'s signature), ``essence`` (the event's dict, ``orjson.dumps``, the clock, a
bounded deque: what any client must do), then segops_fast, segops 0.2.2, segment 2.4.0
and posthog 7.91.1.

For each server and N, every row gets its own app server and its own LocalIngestServer,
all started together. After ``--warmup`` seconds of load on each, the rows take turns:
``--rounds`` rounds, in each of which every row gets one window of ``wrk -t1 -c4
-d{seconds}s --latency``, in an order that rotates from round to round. This machine's
speed drifts by up to 2x over seconds (in the committed results, the essence row's
windows under gthread at 10 events per request ran at 2,693 to 5,610 requests/s);
short windows taken in turns meet the same drift, and each figure is the median of a
row's windows. "vs none" compares each window with ``none``'s in the same round.

After each window the script waits until the worker is quiet, and counts that CPU time
too: delivery after the load is the row's cost as well. Quiet is less than one clock
tick of CPU in 0.2 s, so a client that waits before sending what is left (segops_fast,
Segment and PostHog wait up to 0.5 s) may send its last request after that: about half
a millisecond of CPU, a few hundredths of a percent of a window's. At the end each
server is stopped gracefully (SIGTERM: clients flush as they do at exit; the peers whose
documentation asks for an explicit shutdown get one), and each ingest server counts the
events stored (total and distinct) and the requests received.

Placement (``bench/harness/placement.py``): the app servers on one CPU; the ingest servers, wrk
and this script on the other, wrk at a real-time priority where it may have one (see
``bench/wrk.py``: the ingest server stands in for another machine and must not delay the
load).

Writes ``app_overhead.json``, ``app_overhead.md`` (a table per server and N, and the
targets of the performance issue) and ``app_overhead.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.tracking import DELIVERING_ROWS, ESSENCE, NONE, POSTHOG, ROWS, SEGMENT, SEGOPS
from harness import wrk
from harness.app_servers import SERVERS, AppServer, RunningApp
from harness.clients import SEGOPS_FAST
from harness.load import settle, take_turns, warm_apps
from harness.placement import describe, on_cpus, server_and_client_cpus
from harness.proc_usage import process_cpu_seconds
from harness.results import RESULTS, write_results

from segops_fast.testing import IngestServerProcess

PEERS = (SEGOPS, SEGMENT, POSTHOG)
DEFAULT_EVENTS_PER_REQUEST = (1, 10)

#: The performance issue's targets, relative to the essence row.
EXTRA_LOSS_POINTS_AT_ONE_EVENT = 0.5
P99_RATIO_AT_ONE_EVENT = 1.10
LOSS_RATIO_AT_TEN_EVENTS = 1.2


def _window(app: RunningApp, seconds: float) -> dict[str, Any]:
    """One load window on ``app``: what wrk saw, and the worker's CPU per request, counted
    until it is quiet again (delivery after the window is the row's cost too)."""
    cpu_before = process_cpu_seconds(app.worker_pid)
    load = wrk.run(app.url + "/", seconds)
    settle_seconds = settle(app.worker_pid)
    cpu_seconds = process_cpu_seconds(app.worker_pid) - cpu_before
    return {
        "requests": load.requests,
        "requests_per_second": load.requests_per_second,
        "p50_us": load.p50_us,
        "p99_us": load.p99_us,
        "load_errors": load.errors,
        "cpu_us_per_request": cpu_seconds / load.requests * 1e6 if load.requests else 0.0,
        "settle_seconds": settle_seconds,
    }


def measure_cell(
    ingests: dict[str, IngestServerProcess],
    server: AppServer,
    events_per_request: int,
    plan: Plan,
    app_cpus: set[int] | None,
) -> dict[str, dict[str, Any]]:
    """Every row of one server and N: each row's app server (and ingest server) started
    together, then ``plan.rounds`` windows per row, in turns; then each stopped
    gracefully and its events counted at its ingest server."""
    for ingest in ingests.values():
        ingest.reset()
    ingest_urls = {row: ingests[row].url for row in plan.rows}
    with warm_apps(server, ingest_urls, events_per_request, plan.warmup, app_cpus) as apps:
        windows = take_turns(
            apps,
            plan.rounds,
            lambda app: _window(app, plan.seconds),
            f"{server.name} {events_per_request}/request",
        )
        tracked = {row: app.tracked() for row, app in apps.items()}
        exit_statuses = {row: app.stop() for row, app in apps.items()}
    results = {}
    for row in plan.rows:
        stored = ingests[row].summary()
        results[row] = {
            "windows": windows[row],
            "tracked": tracked[row],
            "stored": stored["events"],
            "stored_distinct": stored["unique_events"],
            "ingest_requests": stored["requests"],
            "graceful_exit": exit_statuses[row] == server.graceful_exit_status,
        }
        print(f"{server.name} {events_per_request}/request {row}: stored {stored['events']:,}"
              f" of {tracked[row]:,}", file=sys.stderr, flush=True)  # fmt: skip
    return results


@dataclass(frozen=True)
class Plan:
    """What to measure, and how long."""

    servers: list[str]
    rows: list[str]
    events_per_request: list[int]
    seconds: float
    warmup: float
    rounds: int


def run_cells(plan: Plan) -> dict[str, Any]:
    ingest_cpus, app_cpus = server_and_client_cpus()
    cells = []
    # This script, the ingest servers and wrk share one CPU; the app servers have the other.
    with on_cpus(ingest_cpus), contextlib.ExitStack() as stack:
        ingests = {row: stack.enter_context(IngestServerProcess()) for row in plan.rows}
        for server in plan.servers:
            for n in plan.events_per_request:
                measured = measure_cell(ingests, SERVERS[server], n, plan, app_cpus)
                cells.append(
                    {"server": server, "events_per_request": n, "rows": _summaries(measured)}
                )
    return {
        "seconds": plan.seconds,
        "warmup_seconds": plan.warmup,
        "rounds": plan.rounds,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "placement": describe(ingest_cpus, app_cpus).replace("clients", "app server"),
        "load": f"wrk -t{wrk.THREADS} -c{wrk.CONNECTIONS} -d{max(1, round(plan.seconds))}s"
        " --latency" + (" (real-time priority)" if wrk.runs_first() else ""),
        "cells": cells,
    }


def _summaries(by_row: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each row's medians over its windows, its loss against ``none`` in the same round,
    and its events: one lost event shows."""
    baseline = by_row[NONE]["windows"]
    summaries = {}
    for row, measured in by_row.items():
        windows = measured["windows"]
        losses = [
            (1 - window["requests_per_second"] / none["requests_per_second"]) * 100
            for window, none in zip(windows, baseline)
        ]
        # The worker's CPU per request moves less with the machine's load than requests/s
        # do: the extra over ``none`` is what the row's tracking costs each request.
        extra_cpu = [
            window["cpu_us_per_request"] - none["cpu_us_per_request"]
            for window, none in zip(windows, baseline)
        ]
        summary = {
            **{
                key: statistics.median(window[key] for window in windows)
                for key in ("requests_per_second", "p50_us", "p99_us", "cpu_us_per_request")
            },
            "loss_percent": statistics.median(losses),
            "extra_cpu_us_per_request": statistics.median(extra_cpu),
            "load_errors": sum(window["load_errors"] for window in windows),
            "retries": sum(window.get("retried", False) for window in windows),
            **{key: value for key, value in measured.items() if key != "windows"},
            "windows": windows,
        }
        expected = summary["tracked"] if row in DELIVERING_ROWS else 0
        summary["exactly_once"] = summary["stored"] == summary["stored_distinct"] == expected
        summaries[row] = summary
    return summaries


# -- the report -----------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Each target of the issue: what it asks, what was measured, met (None: not measured)."""
    outcomes: list[tuple[str, str, bool | None]] = []
    cells = {
        (cell["server"], cell["events_per_request"]): cell["rows"] for cell in results["cells"]
    }
    for server in SERVERS:
        one = cells.get((server, 1), {})
        if SEGOPS_FAST in one and ESSENCE in one:
            fast, essence = one[SEGOPS_FAST], one[ESSENCE]
            outcomes.append(
                (
                    f"{server}, 1 event/request: segops_fast loses at most"
                    f" {EXTRA_LOSS_POINTS_AT_ONE_EVENT} points more than essence",
                    f"loses {fast['loss_percent']:.1f}%, essence {essence['loss_percent']:.1f}%",
                    fast["loss_percent"]
                    <= essence["loss_percent"] + EXTRA_LOSS_POINTS_AT_ONE_EVENT,
                )
            )
            ratio = fast["p99_us"] / essence["p99_us"]
            outcomes.append(
                (
                    f"{server}, 1 event/request: segops_fast p99 at most"
                    f" {P99_RATIO_AT_ONE_EVENT - 1:.0%} above essence's",
                    f"{fast['p99_us']:,.0f} vs {essence['p99_us']:,.0f} us ({ratio - 1:+.0%})",
                    ratio <= P99_RATIO_AT_ONE_EVENT,
                )
            )
        else:
            outcomes.append((f"{server}, 1 event/request: segops_fast vs essence", "-", None))
        ten = cells.get((server, 10), {})
        if SEGOPS_FAST in ten and ESSENCE in ten:
            fast, essence = ten[SEGOPS_FAST], ten[ESSENCE]
            outcomes.append(
                (
                    f"{server}, 10 events/request: segops_fast loses at most"
                    f" {LOSS_RATIO_AT_TEN_EVENTS}x what essence loses",
                    f"loses {fast['loss_percent']:.1f}%, essence {essence['loss_percent']:.1f}%",
                    fast["loss_percent"] <= LOSS_RATIO_AT_TEN_EVENTS * essence["loss_percent"],
                )
            )
        else:
            outcomes.append((f"{server}, 10 events/request: segops_fast vs essence", "-", None))
    behind = []
    compared = 0
    for (server, n), rows in cells.items():
        if SEGOPS_FAST not in rows:
            continue
        for peer in PEERS:
            if peer in rows:
                compared += 1
                if rows[peer]["requests_per_second"] >= rows[SEGOPS_FAST]["requests_per_second"]:
                    behind.append(f"{peer} on {server} at {n}/request")
    outcomes.append(
        (
            "segops_fast serves more requests/s than every peer, on every server and N",
            f"behind {', '.join(behind)}" if behind else f"ahead in all {compared} comparisons",
            (not behind) if compared else None,
        )
    )
    return outcomes


def _stored_of_tracked(row: str, summary: dict[str, Any]) -> str:
    if row not in DELIVERING_ROWS:
        return "-" if summary["stored"] == 0 else f"{summary['stored']:,} (none expected)"
    distinct = (
        ""
        if summary["stored_distinct"] == summary["stored"]
        else f" ({summary['stored_distinct']:,} distinct)"
    )
    return f"{summary['stored']:,} / {summary['tracked']:,}{distinct}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['load']} after a {results['warmup_seconds']:g} s warm-up; one app server"
        f" per row, one worker each, Python {results['python']}, {results['cpus']} CPUs,"
        f" {results['placement']};"
        f" each figure the median of {results['rounds']} windows taken in turns (events: over"
        " each app server's whole run, warm-up included).",
        "",
        "vs none: requests/s against no analytics in the same round. CPU/request: the worker"
        " process, all its threads. Exactly once: the events stored at the ingest server"
        " after the server's graceful stop are all distinct and as many as were tracked.",
        "",
    ]
    for cell in results["cells"]:
        n = cell["events_per_request"]
        lines += [
            f"### {cell['server']}, {n} event{'s' if n > 1 else ''} per request",
            "",
            "| client | requests/s | vs none | p50 | p99 | CPU/request | CPU vs none "
            "| events stored / tracked | exactly once | ingest requests |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row, summary in cell["rows"].items():
            versus = "-" if row == NONE else f"{-summary['loss_percent']:+.1f}%"
            extra_cpu = "-" if row == NONE else f"{summary['extra_cpu_us_per_request']:+.0f} us"
            once = "yes" if summary["exactly_once"] else "**no**"
            requests = "-" if row not in DELIVERING_ROWS else f"{summary['ingest_requests']:,.0f}"
            lines.append(
                f"| {row} | {summary['requests_per_second']:,.0f} | {versus}"
                f" | {summary['p50_us'] / 1000:.2f} ms | {summary['p99_us'] / 1000:.2f} ms"
                f" | {summary['cpu_us_per_request']:.0f} us | {extra_cpu}"
                f" | {_stored_of_tracked(row, summary)}"
                f" | {once} | {requests} |"
            )
        problems = (
            [
                f"{row}: {summary['load_errors']:,} wrk errors"
                for row, summary in cell["rows"].items()
                if summary["load_errors"]
            ]
            + [
                f"{row}: its server did not stop gracefully"
                for row, summary in cell["rows"].items()
                if not summary["graceful_exit"]
            ]
            + [
                f"{row}: {summary['retries']} windows repeated (no request answered)"
                for row, summary in cell["rows"].items()
                if summary["retries"]
            ]
        )
        if problems:
            lines += ["", "Problems: " + "; ".join(problems) + "."]
        lines.append("")
    lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target, measured, met in targets(results):
        verdict = "not measured" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {verdict} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: % requests/s lost against no analytics, per row, per server and N."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    servers = list(dict.fromkeys(cell["server"] for cell in results["cells"]))
    workloads = list(dict.fromkeys(cell["events_per_request"] for cell in results["cells"]))
    rows = [row for row in results["cells"][0]["rows"] if row != NONE]
    figure, axis = plt.subplots(figsize=(max(10, 2.2 * len(servers) * len(workloads)), 5.5))
    width = 0.8 / len(rows)
    groups = [
        (cell["server"], cell["events_per_request"], cell["rows"]) for cell in results["cells"]
    ]
    for offset, row in enumerate(rows):
        axis.bar(
            [group + (offset - (len(rows) - 1) / 2) * width for group in range(len(groups))],
            [cell_rows[row]["loss_percent"] for _, _, cell_rows in groups],
            width=width,
            label=row,
        )
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(
        list(range(len(groups))),
        [f"{server}\n{n} event{'s' if n > 1 else ''}/request" for server, n, _ in groups],
    )
    axis.set_ylabel("% requests/s lost vs no analytics")
    axis.legend(ncol=3, fontsize="small")
    figure.suptitle(
        f"What an analytics client costs a one-worker web app\n{results['load']},"
        f" medians of {results['rounds']} rounds",
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# -- the command line ---------------------------------------------------------------------


def _choose(given: str | None, names: tuple[str, ...], what: str) -> list[str]:
    """Names from a comma-separated list; a row may be named by its first word."""
    if given is None:
        return list(names)
    chosen = []
    for wanted in (part.strip() for part in given.split(",")):
        matches = [name for name in names if wanted in (name, name.split()[0])]
        if len(matches) != 1:
            raise SystemExit(f"unknown {what} {wanted!r}; choose from: {', '.join(names)}")
        chosen.append(matches[0])
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="load per window")
    parser.add_argument("--warmup", type=float, default=1.0, help="load before the windows")
    parser.add_argument("--rounds", type=int, default=8, help="windows of every row")
    parser.add_argument("--servers", help=f"comma-separated, of: {', '.join(SERVERS)}")
    parser.add_argument("--rows", help=f"comma-separated, of: {', '.join(ROWS)} (none always)")
    parser.add_argument(
        "--events-per-request", default="1,10", help="comma-separated (default 1,10)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    arguments = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed (apt install wrk)")
    servers = _choose(arguments.servers, tuple(SERVERS), "server")
    chosen_rows = _choose(arguments.rows, ROWS, "row")
    rows = [row for row in ROWS if row == NONE or row in chosen_rows]
    events_per_request = [int(part) for part in arguments.events_per_request.split(",")]
    # SIGTERM ends this script as Ctrl-C does: through every finally, which ends each
    # process it started.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    began = time.monotonic()
    plan = Plan(
        servers,
        rows,
        events_per_request,
        arguments.seconds,
        arguments.warmup,
        arguments.rounds,
    )
    results = run_cells(plan)
    results["wall_seconds"] = time.monotonic() - began
    write_results(arguments.out, "app_overhead", markdown(results), results, chart)


if __name__ == "__main__":
    main()
