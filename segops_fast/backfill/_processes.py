"""Input ranges sent by worker processes: ``segops-fast send --processes N`` on N cores.

This module owns the worker processes of a backfill on one machine: starting them
(``spawn``: a fresh interpreter each, nothing inherited from the coordinator's threads),
sharing the ranges and the rate among them (``--rate`` is for all of them together),
handing each report they send to the coordinator as it comes, telling them to stop, and
noticing one that died without saying so. What a worker does is
:func:`~segops_fast.backfill._worker.run_in_worker_process`; what a report means is the
coordinator's.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
from collections.abc import Callable
from typing import Any

from ._engine import SendSettings
from ._input import InputRange
from ._worker import Report, run_in_worker_process


def run_in_processes(
    to_do: list[tuple[int, InputRange, int]],
    *,
    settings: SendSettings,
    processes: int,
    max_event_bytes: int,
    apply: Report,
    should_stop: Callable[[], bool],
) -> bool:
    """Send each ``(index, range, start)`` in one of ``processes`` worker processes,
    calling ``apply`` here with each report; False if a worker died without a word."""
    context = multiprocessing.get_context("spawn")
    messages: Any = context.Queue()
    stop = context.Event()
    share = max(1, min(processes, len(to_do)))
    if settings.rate is not None:
        settings = dataclasses.replace(settings, rate=settings.rate / share)
    workers = [
        context.Process(
            target=run_in_worker_process,
            args=(to_do[n::share],),
            kwargs={
                "settings": settings,
                "max_event_bytes": max_event_bytes,
                "messages": messages,
                "stop": stop,
                "parent_pid": os.getpid(),
            },
            name=f"segops-fast-send-{n}",
        )
        for n in range(share)
    ]
    for worker in workers:
        worker.start()
    running = len(workers)
    all_said_goodbye = True
    while running:
        if should_stop() and not stop.is_set():
            stop.set()
        try:
            message = messages.get(timeout=0.2)
        except queue.Empty:
            if not any(worker.is_alive() for worker in workers):
                all_said_goodbye = False
                break
            continue
        if message[0] == "exit":
            running -= 1
        else:
            apply(message)
    for worker in workers:
        worker.join()
    return all_said_goodbye
