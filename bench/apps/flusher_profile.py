"""The CPU time of each step of segops_fast's delivery, inside an app server's worker.

For ``bench/app_profile.py``: :func:`install` wraps, in this process only, what the
flusher does each cycle (take the waiting events from the buffer, cut them into batches,
render each body, send it) with counters of the calling thread's CPU time
(``time.thread_time_ns``), notes which threads did that work (their native ids: Python
before 3.14 does not name threads for the kernel, so ``/proc`` cannot tell them apart),
and at exit writes all of it as JSON to the path given. The
wrappers cost a few microseconds per cycle, nothing per event. The counters are not
updated atomically: exact for the profiled worker, whose cycles have one batch and no
sender thread, and close otherwise. segops_fast itself has no
such hooks: this module reaches into its private modules, which is fine for a benchmark
of the version it ships with and nothing else.
"""

from __future__ import annotations

import atexit
import functools
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from segops_fast import _batching, _buffer, _cycle, _delivery
from segops_fast._encoding import Record

#: What each counter holds: CPU nanoseconds of the step, over all cycles.
STEPS = ("take", "cut", "render", "attempt")


def install(path: str) -> None:
    totals = dict.fromkeys((*STEPS, "events", "requests", "cycles"), 0)
    threads: set[int] = set()

    def timed(step: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.thread_time_ns()
            try:
                return function(*args, **kwargs)
            finally:
                totals[step] += time.thread_time_ns() - began

        return wrapper

    take = _buffer.EventBuffer.take

    def counted_take(buffer: _buffer.EventBuffer) -> list[Record]:
        began = time.thread_time_ns()
        records = take(buffer)
        threads.add(threading.get_native_id())
        totals["take"] += time.thread_time_ns() - began
        totals["events"] += len(records)
        totals["cycles"] += bool(records)
        return records

    attempt = _delivery.Delivery.attempt_batch

    def counted_attempt(delivery: _delivery.Delivery, batch: _batching.Batch) -> Any:
        totals["requests"] += 1
        threads.add(threading.get_native_id())
        return attempt(delivery, batch)

    _buffer.EventBuffer.take = counted_take  # type: ignore[method-assign, assignment]
    _cycle.cut = timed("cut", _cycle.cut)  # type: ignore[assignment]
    _batching.Batch.render_body = timed("render", _batching.Batch.render_body)  # type: ignore[method-assign]
    _delivery.Delivery.attempt_batch = timed("attempt", counted_attempt)  # type: ignore[method-assign]
    atexit.register(
        lambda: Path(path).write_bytes(orjson.dumps({**totals, "threads": sorted(threads)}))
    )
