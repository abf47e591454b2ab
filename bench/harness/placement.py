"""Where benchmark processes run: the ingest server on a CPU of its own, clients on the rest.

On a two-core machine, a server left to the scheduler lands beside the producer thread at
random, and the faster a client delivers, the more of the producer's CPU the server
takes: the server becomes part of what is measured. Giving it a CPU of its own keeps it
out. Linux only (``os.sched_setaffinity``); elsewhere, or with one CPU, nothing is pinned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def server_and_client_cpus() -> tuple[set[int], set[int]] | tuple[None, None]:
    """The last CPU for the server, the others for the clients; None where it cannot be."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


@contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """Run this process, and every process it starts meanwhile, on ``cpus`` (None: any)."""
    if cpus is None:
        yield
        return
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)


def describe(server_cpus: set[int] | None, client_cpus: set[int] | None) -> str:
    if server_cpus is None or client_cpus is None:
        return "no CPU set aside for the server"
    return f"the server on CPU {sorted(server_cpus)}, the clients on CPU {sorted(client_cpus)}"
