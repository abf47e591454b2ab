"""Whether the pipeline runs on native threads or on gevent's greenlets, and refusing eventlet.

This module owns one decision and its checks: which kind of thread and lock a pipeline is
built from. It does not create the threads, locks or events itself: the pipeline's
modules create theirs through the ``threading`` module when the pipeline is built, and
gevent's ``patch_all()`` replaces exactly those names (``Thread``, ``Lock``, ``Event``,
``Condition`` through its lock, ``get_ident``; ``time.sleep`` and ``socket`` too).

The choice: under gevent, greenlets
------------------------------------
Once gevent has patched ``threading``, the flusher and its senders run as greenlets on
the process's hub, with gevent's locks and events, and send through gevent's sockets.
A real OS thread (``gevent.monkey.get_original``) was the alternative, and was rejected:

* Everything the flusher touches after patching is gevent's: the sockets urllib3 opens,
  the queue in its connection pool, the locks of the user's logging handlers that
  ``on_error`` reaches. Used from a second OS thread, each of those needs a hub of its
  own in that thread, and a gevent lock released by a native thread can leave greenlets
  parked for good (dd-trace-py#19538; Sentry's flusher deadlocked the same way until it
  became a greenlet, sentry-python#2688 and #2756).
* ``flush()`` and ``shutdown()`` are called from greenlets. Waiting on a native event
  there blocks the only OS thread, so the hub stops and nothing else runs (with a native
  flusher, until it answers; with a greenlet flusher, forever: the reported hang).
* Sending is I/O: as a greenlet it yields whenever it waits for the server, which costs
  the application nothing, and the buffer's yield above its high-water mark
  (``time.sleep(0)``) lets the flusher run in a burst.

What must never happen is a pipeline built from one kind of primitive and used with the
other: native locks waited on by greenlets. That happens when the pipeline is built before
``patch_all()`` and used after it: a client created in a master that preloads the
application and then forks gevent workers (gunicorn ``-k gevent --preload``: the fork
hook builds the worker's pipeline before the worker patches), or at import in a script
that patches afterwards. So the client notes which kind its pipeline was built from
(:func:`greenlets`), and at the first event, before any thread of ours exists, builds it
again if gevent has patched since. Patching after the first event (after our threads
started) is not supported by gevent itself; it is documented, not detected.

eventlet
--------
eventlet's ``monkey_patch()`` turns threads into green threads too, with a hub and locks
of its own that none of the above was built or tested against (eventlet itself now asks
its users to move to asyncio). Rather than risk a hang found in production, the client
refuses to start under it and says why: :func:`refuse_eventlet`.
"""

from __future__ import annotations

import sys


def greenlets() -> bool:
    """True when gevent has patched ``threading``: threads started now are greenlets."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def refuse_eventlet() -> None:
    """Raise if eventlet has patched threads: the client would hang, so it does not start."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        raise RuntimeError(
            "segops_fast does not run under eventlet's monkey_patch(): its green threads "
            "and locks do not survive a pre-fork server's fork, and the background sender "
            "would hang. Use gevent (gunicorn -k gevent), threads, or asyncio."
        )
