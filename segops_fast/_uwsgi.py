"""What segops_fast needs from uWSGI when it runs inside it, and nothing when it does not.

uWSGI forks its workers from C and, unless started with ``--py-call-uwsgi-fork-hooks``,
runs none of Python's ``os.register_at_fork`` hooks (measured with uWSGI 2.0.30), so a
client created in the master would never learn that it lives in a worker. uWSGI calls
the callable it finds at ``uwsgi.post_fork_hook`` in every worker instead. This module
installs a hook there, keeping whatever hook was there before, and tells whether Python
threads run at all (uWSGI before 2.0.22 disables them unless ``--enable-threads``).

It also tells whether this process is the uWSGI master. Without ``--lazy-apps`` the master
imports the application, and an application that tracks at import would start our thread
there. uWSGI then forks its workers from C, where nothing re-initializes Python's thread
state: a worker forked while that thread held the GIL waits for it forever (measured with
uWSGI 2.0.30: no worker ever answered; reported: ``--py-call-osafterfork`` does not help).
So the master never gets a thread of ours (see ``_inline.py`` for how it sends instead).

It reads only the ``uwsgi`` module that uWSGI itself puts in ``sys.modules``: importing
nothing means it costs nothing outside uWSGI, and it never imports ``uwsgidecorators``,
whose import replaces the spooler and mule hooks of the application.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable


def _running_uwsgi() -> Any:
    return sys.modules.get("uwsgi")


def python_threads_disabled() -> bool:
    """True inside a uWSGI that runs no Python thread between requests."""
    uwsgi = _running_uwsgi()
    return uwsgi is not None and not getattr(uwsgi, "has_threads", True)


def warn_if_threads_disabled(*, stacklevel: int) -> None:
    """Warn the application that events are sent from its request threads, and why."""
    if python_threads_disabled():
        warnings.warn(
            "segops_fast: uWSGI runs without Python threads, so no background thread can "
            "send events; they are sent from the request's thread whenever a batch is "
            "due (batch_size events, or flush_interval after the oldest) and at worker "
            "exit. Start uWSGI with --enable-threads to send them in the background.",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )


def is_master() -> bool:
    """True in the uWSGI master process, which forks every worker from C."""
    uwsgi = _running_uwsgi()
    # masterpid() is 0 without --master; a client created at import in that layout is
    # not covered.
    masterpid = getattr(uwsgi, "masterpid", None)
    return masterpid is not None and masterpid() == os.getpid()


def call_after_fork(hook: Callable[[], None]) -> None:
    """Have uWSGI call ``hook`` in every worker it forks from now on."""
    uwsgi = _running_uwsgi()
    if uwsgi is None:
        return
    decorators = sys.modules.get("uwsgidecorators")
    if decorators is not None and uwsgi.post_fork_hook is decorators.postfork_chain_hook:
        # The application's @postfork functions run from this list; join them.
        decorators.postfork_chain.append(hook)
        return
    previous: Callable[[], None] | None = getattr(uwsgi, "post_fork_hook", None)

    def post_fork_hook() -> None:
        hook()
        if previous is not None:
            previous()

    uwsgi.post_fork_hook = post_fork_hook
