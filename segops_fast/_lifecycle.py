"""What every client must do when its process exits or forks.

This module owns one registry of live clients, held weakly so that registering never
keeps a client alive, and the process hooks that act on all of them:

* at exit, each client shuts down within its ``shutdown_timeout``: through ``atexit``,
  and, in the child processes of ``multiprocessing`` (which end with ``os._exit()`` and
  skip ``atexit``), through the finalizers that ``multiprocessing`` runs before that,
  and in Celery's prefork pool children (which skip both) through Celery's
  ``worker_process_shutdown`` signal (see ``_celery.py``);
* after a fork, each client starts over in the child: through ``os.register_at_fork``,
  and under uWSGI, which forks without running those hooks, through its post-fork hook.

It does not own what a client does then (the client's own methods decide), and it never
logs from a fork hook: logging's locks may have been inherited held.
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from typing import Any, Protocol

from . import _celery, _uwsgi


class ProcessBound(Protocol):
    def _after_fork_in_child(self) -> None: ...

    def _shutdown_at_exit(self) -> None: ...


_live_clients: weakref.WeakSet[ProcessBound] = weakref.WeakSet()


def register(client: ProcessBound) -> None:
    _live_clients.add(client)
    _hook_process_pools()


def _shutdown_all_at_exit() -> None:
    for client in list(_live_clients):
        client._shutdown_at_exit()


def _start_over_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


def _hook_process_pools() -> None:
    """Hook the exits of the process pools loaded so far; again before each fork."""
    _shut_down_before_multiprocessing_exits()
    _celery.shut_down_as_pool_children_exit(_shutdown_all_at_exit)


# -- multiprocessing's child processes --------------------------------------------------

#: The ``multiprocessing.util`` this process has hooked, if any.
_hooked_multiprocessing: Any = None


class _AfterForkAnchor:
    """multiprocessing keeps an after-fork callback only while its object lives."""


_anchor = _AfterForkAnchor()


def _shut_down_before_multiprocessing_exits() -> None:
    """Once ``multiprocessing`` is imported: shut every client down when this process, or
    a child it starts, ends the way multiprocessing ends processes.

    A child's run ends in ``util._exit_function()`` and then ``os._exit()``, so ``atexit``
    never runs there; finalizers with an exit priority do. Each child clears the
    finalizers it inherited before it runs and then calls the after-fork callbacks, so
    the finalizer is registered again from one of those (spawned and forkserver children
    call them too).
    """
    global _hooked_multiprocessing
    util = sys.modules.get("multiprocessing.util")
    if util is None or util is _hooked_multiprocessing:
        return
    _hooked_multiprocessing = util
    _register_finalizer(util)
    util.register_after_fork(_anchor, lambda _anchor: _register_finalizer(util))


def _register_finalizer(util: Any) -> None:
    util.Finalize(None, _shutdown_all_at_exit, exitpriority=0)


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(before=_hook_process_pools, after_in_child=_start_over_in_child)
_uwsgi.call_after_fork(_start_over_in_child)
