"""Load windows on real app servers, taken in turns by rows that run side by side.

This module owns starting one app server per row together and warming each up
(:func:`warm_apps`), waiting until a worker is quiet after a window (:func:`settle`), and
taking windows in an order that rotates from round to round (:func:`take_turns`), as
``app_overhead.py`` and ``app_profile.py`` both measure. What a window measures is the
caller's.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, Callable

from . import wrk
from .app_servers import AppServer, RunningApp, serving
from .placement import on_cpus
from .proc_usage import process_cpu_seconds

#: Waiting for a worker to be quiet after a window (:func:`settle`): quiet means less than
#: one clock tick of CPU (``/proc`` counts in ticks of 10 ms) in a step.
SETTLE_STEP = 0.2
QUIET_CPU_SECONDS = 0.01
SETTLE_AT_MOST = 30.0


def settle(pid: int) -> float:
    """Wait until process ``pid`` is quiet (``app_overhead.py``'s docstring says what that
    misses); return how long that took."""
    began = time.monotonic()
    last = process_cpu_seconds(pid)
    while time.monotonic() - began < SETTLE_AT_MOST:
        time.sleep(SETTLE_STEP)
        now = process_cpu_seconds(pid)
        if now - last < QUIET_CPU_SECONDS:
            break
        last = now
    return time.monotonic() - began


@contextlib.contextmanager
def warm_apps(
    server: AppServer,
    ingest_urls: dict[str, str],
    events_per_request: int,
    warmup: float,
    app_cpus: set[int] | None,
) -> Iterator[dict[str, RunningApp]]:
    """An app server for each row of ``ingest_urls`` (sending to its URL), started together
    on ``app_cpus``, each warmed up with ``warmup`` seconds of load and quiet again; each
    is stopped at the end of the block unless it was already."""
    with contextlib.ExitStack() as stack:
        apps: dict[str, RunningApp] = {}
        with on_cpus(app_cpus):
            for row, url in ingest_urls.items():
                apps[row] = stack.enter_context(serving(server, row, events_per_request, url))
        for app in apps.values():
            wrk.run(app.url + "/", warmup)
            settle(app.worker_pid)
        yield apps


def take_turns(
    apps: dict[str, RunningApp],
    rounds: int,
    window: Callable[[RunningApp], dict[str, Any]],
    label: str,
) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` rounds of one ``window`` per row, in an order that rotates; each row's
    windows in the order taken. ``window`` returns at least ``requests`` and
    ``requests_per_second``."""
    windows: dict[str, list[dict[str, Any]]] = {row: [] for row in apps}
    for round_number in range(rounds):
        for row in rotated(list(apps), round_number):
            measured = window(apps[row])
            if measured["requests"] == 0:
                # Seen once: gunicorn's sync worker answered nothing for a whole window,
                # with no error at wrk; a stall, not a figure of the row.
                print(f"{label} {row}: no request answered; measuring again",
                      file=sys.stderr, flush=True)  # fmt: skip
                measured = {**window(apps[row]), "retried": True}
            windows[row].append(measured)
            print(
                f"round {round_number + 1}/{rounds} {label} {row}:"
                f" {measured['requests_per_second']:,.0f} requests/s",
                file=sys.stderr,
                flush=True,
            )
    return windows


def rotated(rows: list[str], round_number: int) -> list[str]:
    """The rows in an order that starts one later each round: no row is always first."""
    shift = round_number % len(rows)
    return rows[shift:] + rows[:shift]
