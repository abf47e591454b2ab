"""What every client must do when the process exits or forks.

This module owns one registry of live clients, held weakly so that registering never keeps
a client alive, and the two process hooks installed once at import: an ``atexit`` hook
that shuts each client down within its ``shutdown_timeout``, and an
``os.register_at_fork`` child hook that tells each client it now lives in a new process.
It does not own what a client does then (the client's own methods decide), and it never
logs from the fork hook: logging's locks may have been inherited held.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Protocol


class ProcessBound(Protocol):
    def _after_fork_in_child(self) -> None: ...

    def _shutdown_at_exit(self) -> None: ...


_live_clients: weakref.WeakSet[ProcessBound] = weakref.WeakSet()


def register(client: ProcessBound) -> None:
    _live_clients.add(client)


def _shutdown_all_at_exit() -> None:
    for client in list(_live_clients):
        client._shutdown_at_exit()


def _start_over_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_start_over_in_child)
