"""Shutting clients down as a Celery prefork child exits, with no wiring in user code.

Celery's prefork pool is billiard's. A pool child ends in billiard's
``Worker._do_exit()``: it calls the exit callback its pool was given and then
``os._exit()``, straight from the task loop. So neither ``atexit`` nor the
``multiprocessing`` finalizers that ``_lifecycle.py`` hooks ever run there (billiard
shares multiprocessing's finalizer registry, but the pool child never reaches
``_exit_function()``), and the events of the child's last ``flush_interval`` were lost
(measured: 16 of 120 with ``--max-tasks-per-child 1``). The exit callback billiard offers
is the pool's ``on_process_exit``; Celery's is ``process_destructor``, which sends the
``worker_process_shutdown`` signal in the child. This module connects a receiver to that
signal, once per process, that shuts every client down within its ``shutdown_timeout``.

It imports nothing from Celery: it acts only once ``celery.signals`` is in
``sys.modules``. ``_lifecycle.py`` asks it when a client is created and before every fork,
so the receiver is in place in the parent before billiard forks its children, who
inherit it, whichever of the client and Celery was imported first.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

#: The ``celery.signals`` module this process has hooked, if any.
_hooked_signals: Any = None


def shut_down_as_pool_children_exit(shutdown_all: Callable[[], None]) -> None:
    """Once Celery is loaded: call ``shutdown_all`` as each of its pool children exits."""
    global _hooked_signals
    signals = sys.modules.get("celery.signals")
    if signals is None or signals is _hooked_signals:
        return
    _hooked_signals = signals

    def on_worker_process_shutdown(**_signal_arguments: Any) -> None:
        shutdown_all()

    # weak=False: nothing else holds this function. The uid keeps it to one connection.
    signals.worker_process_shutdown.connect(
        on_worker_process_shutdown, weak=False, dispatch_uid="segops_fast.shutdown"
    )
