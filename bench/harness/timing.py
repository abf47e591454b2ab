"""Timing a client's track(), call by call, and the figures a benchmark reports of it.

This module owns the workload's events (:func:`payloads`), timing each call with the
client's own method and nothing around it (:func:`time_each_call`), and the mean and
percentiles (:func:`latency_figures`). It does not start servers or clients.
"""

from __future__ import annotations

import time
from typing import Callable

from .clients import Call, CallBuilder


def payloads(event_type: str, count: int, call: CallBuilder) -> list[Call]:
    """The workload: ``count`` events of ``event_type``, user ids cycling over 1,000."""
    return [call(f"user-{i % 1000}", event_type, {"path": "/home", "i": i}) for i in range(count)]


def _percentile(sorted_values: list[int], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))] / 1000


def time_each_call(track: Callable[..., object], calls: list[Call]) -> list[int]:
    """How long each ``track(*args, **kwargs)`` took, in nanoseconds, sorted."""
    clock = time.perf_counter_ns
    durations = [0] * len(calls)
    for index, (args, kwargs) in enumerate(calls):
        began = clock()
        track(*args, **kwargs)
        durations[index] = clock() - began
    durations.sort()
    return durations


def latency_figures(durations: list[int]) -> dict[str, float]:
    """Mean and percentiles, in microseconds, of sorted durations in nanoseconds."""
    return {
        "mean_us": sum(durations) / len(durations) / 1000,
        "p50_us": _percentile(durations, 0.50),
        "p99_us": _percentile(durations, 0.99),
        "p999_us": _percentile(durations, 0.999),
    }
