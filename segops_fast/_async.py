"""Awaiting the client's blocking waits from asyncio without blocking the event loop.

This module owns one thing: running a blocking call (``flush()``, ``shutdown()``) on a
short-lived thread of its own and resolving an asyncio future with its outcome, so that
``await client.aflush()`` suspends only the awaiting coroutine. ``track()`` needs nothing
from here: it never blocks, so it is called straight from coroutines.

Why a thread of its own rather than ``loop.run_in_executor(None, ...)`` (or
``asyncio.to_thread``, which is 3.9's way to the same executor): the default executor is
shared with the application and bounded, so a flush could queue behind its blocking work,
or take a worker it needs; a flush is rare, and a thread costs well under a millisecond.
The flusher itself is not run on the loop: it must keep sending while the loop is busy,
and it serves synchronous callers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Callable


async def in_thread(call: Callable[[], None], name: str) -> None:
    """Run ``call`` on a new thread; return or raise as it did, without blocking the loop.

    Cancelling the awaiting coroutine does not stop ``call``: a flush or shutdown goes on
    within its own timeout, as it would had it been called from a thread.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if outcome.done():  # the awaiting coroutine was cancelled
            return
        if error is None:
            outcome.set_result(None)
        else:
            outcome.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            call()
        except BaseException as raised:
            error = raised
        # The loop may have closed meanwhile: then nobody awaits the outcome any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    await outcome
