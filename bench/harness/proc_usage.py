"""What a process or thread has used so far, read from ``/proc`` (Linux only).

This module owns the reading of the kernel's per-process and per-thread counters that
the benchmarks turn into "CPU per request", "CPU per event" and "wake-ups per second":
CPU time from ``stat``, context switches from ``status``, a process's start time, and its
children (a pre-fork server's workers).
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(stat: Path) -> list[str]:
    """The fields of a ``stat`` file after the command name, which may hold spaces and
    parentheses: field 3 of proc(5) (the state) is element 0 here."""
    return stat.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(stat: Path) -> float:
    """User plus system time of the task or process whose ``/proc/.../stat`` this is.

    For ``/proc/PID/stat`` that is every thread of the process, the ended ones included.
    The kernel counts in clock ticks (usually 10 ms): measure over seconds, not moments.
    """
    # utime and stime are fields 14 and 15 of proc(5).
    fields = _stat_fields(stat)
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def process_cpu_seconds(pid: int) -> float:
    """User plus system time of every thread of process ``pid`` so far."""
    return cpu_seconds(Path(f"/proc/{pid}/stat"))


def cpu_seconds_by_thread(pid: int) -> dict[int, float]:
    """CPU time so far of each live thread of process ``pid``, by its id
    (``threading.get_native_id()`` in that thread). Threads that have ended are missing."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds[int(task.name)] = cpu_seconds(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
    return seconds


def context_switches(status: Path) -> int:
    """Voluntary plus involuntary context switches of the task whose ``status`` this is:
    each is the thread going off the CPU, so each is followed by one wake-up."""
    total = 0
    for line in status.read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            total += int(line.split()[1])
    return total


def children_of(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid`` (scans ``/proc``)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of proc(5), the parent's id.
            parent = int(_stat_fields(entry / "stat")[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # it ended while we looked
        if parent == pid:
            children.append(int(entry.name))
    return sorted(children)
